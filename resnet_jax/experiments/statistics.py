"""The statistics of a group of runs and of two groups compared (scipy).

Final test accuracies of runs that differ only in their seed are samples of
one distribution: its mean is estimated with a t interval, two means are
compared with Welch's t-test (unequal spreads), or a paired t-test when both
groups ran the same seeds (the seed fixes the initial weights and the data
order, which Jordan 2024 finds is most of the spread).
"""

import dataclasses
import math
from typing import Optional

import numpy as np
from scipy import stats

LEVEL = 0.95
# Power the seed count suggestion aims at: a real difference of the size
# seen is found 80% of the time at the 5% level.
POWER = 0.8


@dataclasses.dataclass
class Summary:
  n: int
  mean: Optional[float] = None
  std: Optional[float] = None  # Sample standard deviation (n - 1); None for n < 2.
  low: Optional[float] = None  # 95% interval of the mean.
  high: Optional[float] = None
  min: Optional[float] = None
  max: Optional[float] = None


def summarize(values) -> Summary:
  """n, mean, std, the 95% t interval of the mean, min and max of `values`."""
  x = np.asarray(list(values), dtype=np.float64)
  if not len(x):
    return Summary(0)
  out = Summary(len(x), float(x.mean()), min=float(x.min()), max=float(x.max()))
  if len(x) > 1:
    out.std = float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * out.std / math.sqrt(len(x))
    out.low, out.high = out.mean - half, out.mean + half
  return out


@dataclasses.dataclass
class Comparison:
  test: str          # 'paired' or 'Welch'
  n_a: int
  n_b: int
  difference: float  # mean(b) - mean(a)
  low: float         # 95% interval of the difference.
  high: float
  p: float
  seeds_needed: Optional[int]  # Per group, to tell this difference from noise.

  @property
  def resolved(self) -> bool:
    """Whether the 95% interval excludes 0."""
    return self.low > 0 or self.high < 0


def compare(a: dict, b: dict) -> Comparison:
  """b - a for two groups given as {seed: value}: paired on the seeds when
  both have the same seeds (at least 2), else Welch's test.

  Raises:
    ValueError: a group with fewer than 2 values.
  """
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f'a comparison needs at least 2 finished runs per group, got '
                     f'{len(a)} and {len(b)}')
  if set(a) == set(b):
    seeds = sorted(a)
    xa = np.array([a[s] for s in seeds], dtype=np.float64)
    xb = np.array([b[s] for s in seeds], dtype=np.float64)
    result = stats.ttest_rel(xb, xa)
    test, spread = 'paired', (xb - xa).std(ddof=1) / math.sqrt(2)
  else:
    xa = np.array(list(a.values()), dtype=np.float64)
    xb = np.array(list(b.values()), dtype=np.float64)
    result = stats.ttest_ind(xb, xa, equal_var=False)
    test = 'Welch'
    spread = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
  interval = result.confidence_interval(LEVEL)
  difference = float(xb.mean() - xa.mean())
  p = float(result.pvalue)
  if math.isnan(p):  # Both groups constant (or identical pairs).
    p = 1.0 if difference == 0 else 0.0
  return Comparison(test, len(xa), len(xb), difference, float(interval.low),
                    float(interval.high), p, seeds_needed(difference, spread))


def seeds_needed(difference: float, spread: float) -> Optional[int]:
  """Runs per group for a two-sided 5% test to find a true `difference` with
  80% power, if the per-run spread stays `spread` (normal approximation:
  n = 2 (z_0.975 + z_0.8)^2 spread^2 / difference^2). None when there is no
  difference to find."""
  if difference == 0 or not np.isfinite(spread):
    return None
  z = stats.norm.ppf(0.5 + LEVEL / 2) + stats.norm.ppf(POWER)
  return max(2, math.ceil(2 * (z * spread / difference) ** 2))
