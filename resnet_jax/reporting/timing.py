"""Throughput timing shared by the JAX benchmark and the PyTorch baseline."""

import math
import statistics
import time
from typing import Callable


def median_rate(run_window: Callable[[], None], items_per_window: int,
                windows: int) -> float:
  """Median items/s over `windows` calls of `run_window` (which must block
  until its work is done)."""
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    run_window()
    rates.append(items_per_window / (time.perf_counter() - start))
  return statistics.median(rates)


def steps_for(run_steps: Callable[[int], None], steps: int, min_seconds: float) -> int:
  """`steps`, scaled up so that `run_steps(steps)` (blocking) lasts at least
  `min_seconds`: windows long enough to time a fast device."""
  start = time.perf_counter()
  run_steps(steps)
  took = time.perf_counter() - start
  if took >= min_seconds:
    return steps
  return max(steps, math.ceil(steps * min_seconds / max(took, 1e-6)))


class StepRunner:
  """`runner(n)`: `n` training steps on one fixed batch, each from the state
  the last left (`runner.state`), then `block` on the last metrics, so that a
  timer sees the work done."""

  def __init__(self, step_fn: Callable, state, batch, block: Callable):
    self.state, self._step, self._batch, self._block = state, step_fn, batch, block

  def __call__(self, n: int) -> None:
    s, metrics = self.state, None
    for _ in range(n):
      s, metrics = self._step(s, self._batch)
    self._block(metrics)
    self.state = s
