"""A progress bar per epoch on a terminal; nothing when output is a file.

The bar advances every step without touching the device; loss, accuracy and
images/s on it change at log intervals, when the loop reads metrics anyway.
"""

import sys
from typing import Optional, TextIO

import tqdm


class Progress:
  """Per-epoch bars over a run of `total_steps` steps."""

  def __init__(self, total_steps: int, steps_per_epoch: float, start: int = 0,
               stream: Optional[TextIO] = None, enabled: Optional[bool] = None):
    self.stream = stream or sys.stderr
    self.enabled = self.stream.isatty() if enabled is None else enabled
    self.total = total_steps
    self.per_epoch = steps_per_epoch
    self._bar = None
    self._epoch = None
    self._postfix = {}
    self._done = start

  def _epoch_of(self, step: int) -> int:
    return int(step / self.per_epoch)

  def _open(self, epoch: int) -> None:
    if self._bar is not None:
      self._bar.close()
    first = int(round(epoch * self.per_epoch))
    last = min(self.total, int(round((epoch + 1) * self.per_epoch)))
    self._bar = tqdm.tqdm(total=last - first, initial=max(0, self._done - first),
                          desc=f'epoch {epoch + 1}', file=self.stream,
                          dynamic_ncols=True, leave=True)
    self._bar.set_postfix(self._postfix, refresh=False)
    self._epoch = epoch

  def step(self, done: int) -> None:
    """Marks step `done` (1-based) as finished."""
    if not self.enabled:
      return
    epoch = self._epoch_of(done - 1)
    if epoch != self._epoch:
      self._open(epoch)
    self._done = done
    self._bar.update(1)

  def set_metrics(self, metrics: dict) -> None:
    """Shows the latest interval's loss, accuracy and speed on the bar."""
    self._postfix = {'loss': f"{metrics['train_loss']:.3f}",
                     'acc': f"{100 * metrics['train_accuracy']:.1f}%",
                     'img/s': f"{metrics['images_per_sec']:.0f}"}
    if self.enabled and self._bar is not None:
      self._bar.set_postfix(self._postfix)

  def write(self, line: str) -> None:
    """Prints a line above the bar (tqdm keeps the bar intact)."""
    tqdm.tqdm.write(line, file=self.stream)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
