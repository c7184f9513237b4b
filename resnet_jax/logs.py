"""Console output: this program's lines at INFO, libraries' at WARNING.

orbax, tfds and JAX log through absl at INFO in volume; a researcher watching
a run wants the run's own lines, so those go through a separate logger.

Also the words of a progress line (rate, time left) that every long job
shares: an evaluation's, a copy's.
"""

import logging
import os
import sys
from typing import Optional

from absl import logging as absl_logging
import tqdm

log = logging.getLogger('resnet_jax')


class _AboveProgressBars(logging.Handler):
  """Writes to stderr through tqdm, so lines never break a progress bar."""

  def emit(self, record):
    try:
      # One write per line: processes sharing a stderr (launch.sh) must not
      # splice one line into another's (tqdm.write writes `end` separately).
      tqdm.tqdm.write(self.format(record) + '\n', file=sys.stderr, end='')
    except Exception:  # Never let logging take the run down.
      self.handleError(record)


# Library warnings that mislead more than they tell: tfds looks for a dataset
# in its default folder before it is built (the run's own error says what to
# do when it is missing).
_NOISE = ('has no dataset_info.json',)


class _LibraryNoise(logging.Filter):
  """Drops orbax's error logs and the `_NOISE` warnings. orbax logs a failed
  background save with tracebacks from several threads, and `checkpointing`
  reports the same failure as one `stopped:` line naming the step and cause."""

  def filter(self, record):
    if record.levelno >= logging.ERROR and f'{os.sep}orbax{os.sep}' in record.pathname:
      return False
    return not any(n in record.getMessage() for n in _NOISE)


def quiet_libraries() -> None:
  """Library INFO logs off (JAX's distributed start-up logs three lines per
  process at INFO); safe before `distributed.initialize`."""
  absl_logging.set_verbosity(absl_logging.WARNING)


def setup() -> None:
  """Routes `log` to stderr with a short format; quiets library INFO logs.

  Call after `distributed.initialize` (it asks JAX for the process index).
  """
  quiet_libraries()
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryNoise) for f in handler.filters):
    handler.addFilter(_LibraryNoise())
  if not log.handlers:
    handler = _AboveProgressBars()
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    log.addHandler(handler)
  # In a multi-process run only process 0 reports progress.
  import jax
  log.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  log.propagate = False


def duration(seconds: float) -> str:
  """'45s', '3m05s', '1h02m'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


def size_text(num: float) -> str:
  """`num` bytes as `1.20GB` (KB, MB, GB of 1,024)."""
  return tqdm.tqdm.format_sizeof(num, 'B', 1024)


def pace(done: float, total: Optional[float], seconds: float, unit: str) -> str:
  """What a progress line says after its count: ` (25%), 50 files/s, ~15s
  left`, or `, 50 files/s` where the total is unknown. `unit` names the
  rate's ('img', 'files'); 'B' writes it as bytes (`128MB/s`)."""
  rate = done / max(seconds, 1e-9)
  speed = f'{size_text(rate)}/s' if unit == 'B' else f'{rate:,.0f} {unit}/s'
  if not total:
    return f', {speed}'
  left = f'~{duration((total - done) / rate)}' if rate else '?'
  return f' ({100 * done / total:.0f}%), {speed}, {left} left'


def close_bar(bar: Optional[tqdm.tqdm]) -> None:
  """Closes a progress bar, if there is one; None, the bar's holder's new
  value (`self._bar = logs.close_bar(self._bar)`)."""
  if bar is not None:
    bar.close()
