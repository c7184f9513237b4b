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
  # No spread at all (every paired difference the same, or both groups
  # constant): n runs then cannot support a test, whatever scipy would say.
  no_spread: bool = False

  @property
  def resolved(self) -> bool:
    """Whether the 95% interval excludes 0 (never without spread)."""
    return not self.no_spread and (self.low > 0 or self.high < 0)


def compare(a: dict, b: dict) -> Comparison:
  """b - a for two groups given as {seed: value}: paired on the seeds when
  both have the same seeds (at least 2), else Welch's test.

  Raises:
    ValueError: a group with fewer than 2 values.
  """
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f'a comparison needs at least 2 finished runs per group, got '
                     f'{len(a)} and {len(b)}')
  paired = set(a) == set(b)
  if paired:
    seeds = sorted(a)
    xa = np.array([a[s] for s in seeds], dtype=np.float64)
    xb = np.array([b[s] for s in seeds], dtype=np.float64)
    samples = [xb - xa]
  else:
    xa = np.array(list(a.values()), dtype=np.float64)
    xb = np.array(list(b.values()), dtype=np.float64)
    samples = [xa, xb]
  difference = float(xb.mean() - xa.mean())
  test = 'paired' if paired else 'Welch'
  # Equal up to float rounding (accuracies are k/N; their differences carry
  # rounding of ~1e-15): no spread to test against.
  scale = max(1.0, float(np.abs(np.concatenate([xa, xb])).max()))
  if all(np.ptp(x) <= 1e-9 * scale for x in samples):
    return Comparison(test, len(xa), len(xb), difference, math.nan, math.nan, math.nan,
                      None, no_spread=True)
  if paired:
    result = stats.ttest_rel(xb, xa)
    spread = (xb - xa).std(ddof=1) / math.sqrt(2)
  else:
    result = stats.ttest_ind(xb, xa, equal_var=False)
    spread = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
  interval = result.confidence_interval(LEVEL)
  return Comparison(test, len(xa), len(xb), difference, float(interval.low),
                    float(interval.high), float(result.pvalue),
                    seeds_needed(difference, spread, paired))


def power(n: int, difference: float, spread: float, paired: bool) -> float:
  """The chance that a two-sided 5% t-test with n runs per group finds a true
  `difference` when each run's spread is `spread` (the noncentral t: exact
  for normal runs; the normal approximation overstates small n)."""
  df = n - 1 if paired else 2 * n - 2
  ncp = abs(difference) / (spread * math.sqrt(2 / n))
  t = stats.t.ppf(0.5 + LEVEL / 2, df)
  return float(stats.nct.sf(t, df, ncp) + stats.nct.cdf(-t, df, ncp))


def seeds_needed(difference: float, spread: float, paired: bool = False,
                 limit: int = 10_000) -> Optional[int]:
  """The fewest runs per group (at least 2) with `POWER` to find a true
  `difference` at the 5% level, if the per-run spread stays `spread`. None
  when there is no difference to find, or more than `limit` would be needed."""
  if difference == 0 or not np.isfinite(spread) or spread <= 0:
    return None
  n = 2
  while power(n, difference, spread, paired) < POWER:
    n = n + 1 if n < 64 else int(n * 1.25)
    if n > limit:
      return None
  return n
