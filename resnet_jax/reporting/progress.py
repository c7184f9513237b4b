"""A progress bar per epoch on a terminal; nothing when output is a file.

The bar advances every step without touching the device; loss, accuracy and
images/s on it change at log intervals, when the loop reads metrics anyway.
A long evaluation logs a line every `EvalProgress.EVERY` seconds.
"""

import sys
import time
from typing import Callable, Optional, TextIO

import tqdm

from resnet_jax import logs
from resnet_jax.logs import log


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
    logs.close_bar(self._bar)
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
    self._bar = logs.close_bar(self._bar)


class EvalProgress:
  """A line every `every` seconds of an evaluation (images done, rate, time
  left), in a log file as on a terminal: ImageNet's 50,000 images take
  minutes, and 80 at 224 px with flip TTA on a CPU tens of seconds. No line
  for an evaluation shorter than `every` (CIFAR's on an accelerator, the tests').

  Args:
    what: the line's start, e.g. 'Evaluating 50,000 val images'.
    images: the images the evaluation computes (each weight set counts).
    calls: the device calls it makes, reported one by one to `call_done`.
  """

  EVERY = 20.0

  def __init__(self, what: str, images: int, calls: int, every: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic,
               emit: Optional[Callable[[str], None]] = None):
    self.what, self.images, self.calls = what, images, max(1, calls)
    self.every = self.EVERY if every is None else every
    self._clock = clock
    self._emit = emit or (lambda line: log.info('%s', line))
    self._start = self._last = clock()
    self._done = 0

  def call_done(self, wait: Callable[[], None]) -> None:
    """Counts a dispatched call; when a line is due, `wait`s for it first
    (calls are asynchronous: a rate of dispatched work would be a guess; one
    wait per line idles the device a moment at most)."""
    self._done += 1
    if self._done >= self.calls or self._clock() - self._last < self.every:
      return
    wait()
    now = self._clock()
    self._last = now
    fraction = self._done / self.calls
    self._emit(f'{self.what}: {round(fraction * self.images):,} of {self.images:,} done'
               + logs.pace(fraction * self.images, self.images, now - self._start, 'img'))
