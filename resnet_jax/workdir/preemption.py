"""SIGTERM/SIGINT: finish the step, checkpoint, exit; the next start resumes.

In a single process a signal handler raises a flag the loop reads after each
step. With several processes, JAX's distributed runtime (which orbax's
`reached_preemption` asks) makes all processes stop at the same step.
"""

import signal
from typing import Optional

import jax


class Guard:
  """Context manager: `should_stop(step)` once a stop signal has arrived."""

  def __init__(self, ckpt):
    self._ckpt = ckpt
    self.signum: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if self._ckpt.reached_preemption(step):
      self.signum = signal.SIGTERM
      return True
    return False

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
