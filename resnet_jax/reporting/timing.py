"""Throughput timing shared by the JAX benchmark and the PyTorch baseline."""

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
