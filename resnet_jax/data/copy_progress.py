"""The progress of a long copy into `data_dir`: files, bytes, rate and time left.

On a terminal a tqdm bar on stderr, as training shows its epochs; otherwise
(a batch job's log) a line every minute, so the log shows the copy moving.
"""

import sys
import time
from typing import Optional, TextIO

import tqdm

from resnet_jax import logs
from resnet_jax.logs import log


class Meter:
  """Counts files and bytes as a copy advances.

  Args:
    what: the bar's first words ('Arranging ILSVRC-2012').
    total: the work to do, in bytes (`by_bytes`) or files; None if unknown.
    by_bytes: measured in bytes (of an archive read) rather than files.
    stream: where the bar goes (stderr).
    enabled: show a bar; by default when `stream` is a terminal. Otherwise a
      log line every `every_s` seconds.
  """

  def __init__(self, what: str, total: Optional[float], by_bytes: bool,
               stream: Optional[TextIO] = None, enabled: Optional[bool] = None,
               every_s: float = 60.0):
    stream = stream or sys.stderr
    self.what, self.total, self.by_bytes, self.every_s = what, total, by_bytes, every_s
    self.files = 0
    self.bytes = 0
    self._start = self._last = time.monotonic()
    self._bar = None
    if stream.isatty() if enabled is None else enabled:
      self._bar = tqdm.tqdm(total=total, desc=what, file=stream, dynamic_ncols=True,
                            unit='B' if by_bytes else ' files', unit_scale=by_bytes,
                            unit_divisor=1024)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False

  def update(self, files: int, size: int) -> None:
    """Files done and bytes (read, if `by_bytes`, else copied) so far."""
    self.files, self.bytes = files, size
    if self._bar is not None:
      self._bar.update((size if self.by_bytes else files) - self._bar.n)
      if self.by_bytes:
        self._bar.set_postfix_str(f'{files:,} files', refresh=False)
      elif size:
        self._bar.set_postfix_str(f'{logs.size_text(size)} copied', refresh=False)
      return
    now = time.monotonic()
    if now - self._last >= self.every_s:
      self._last = now
      log.info('%s', self.line(now - self._start))

  def line(self, seconds: float) -> str:
    """`what: done [of total] [(percent)], rate[, time left]` after `seconds`."""
    done = self.bytes if self.by_bytes else self.files
    if self.by_bytes:
      text = f'{self.what}: {self.files:,} files, {logs.size_text(done)}'
      text += (f' of {logs.size_text(self.total)}' if self.total else '') + ' read'
      return text + logs.pace(done, self.total, seconds, 'B')
    text = f'{self.what}: {done:,}' + (f' of {self.total:,}' if self.total else '') + ' files'
    copied = f', {logs.size_text(self.bytes)} copied' if self.bytes else ''
    return text + logs.pace(done, self.total, seconds, 'files') + copied

  def close(self) -> None:
    self._bar = logs.close_bar(self._bar)
