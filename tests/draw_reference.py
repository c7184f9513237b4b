"""The random draws of the regularisers as their papers define them, written
independently of the code under test: what the host and device pipelines'
draws are compared against (by frequencies and Kolmogorov-Smirnov tests)."""

import numpy as np
from scipy import stats

SIZE = 32
# Two mixing alphas far apart: code that ignores the configured one matches
# at most one of them.
ALPHAS = (0.2, 2.0)


def cutmix(alpha: float, n: int, seed: int = 0) -> dict:
  """n CutMix draws (Yun et al. 2019): lam ~ Beta(alpha, alpha), a box of side
  floor(SIZE sqrt(1 - lam)) centred uniformly and clipped at the border; the
  label weight is the uncovered fraction. Arrays 'lam', 'y0', 'y1', 'x0', 'x1'."""
  rng = np.random.default_rng(seed)
  cut = np.floor(SIZE * np.sqrt(1 - rng.beta(alpha, alpha, n))).astype(int)
  cy, cx = rng.integers(0, SIZE, n), rng.integers(0, SIZE, n)
  y0, y1 = np.clip(cy - cut // 2, 0, SIZE), np.clip(cy - cut // 2 + cut, 0, SIZE)
  x0, x1 = np.clip(cx - cut // 2, 0, SIZE), np.clip(cx - cut // 2 + cut, 0, SIZE)
  return {'lam': 1 - (y1 - y0) * (x1 - x0) / SIZE**2, 'y0': y0, 'y1': y1, 'x0': x0,
          'x1': x1}


def box_edges(masks: np.ndarray) -> dict:
  """'y0', 'y1', 'x0', 'x1' of the non-empty rectangles among bool [n, H, W]."""
  masks = masks[masks.any((1, 2))]
  rows, cols = masks.any(2), masks.any(1)
  first = lambda m: m.argmax(1)
  last = lambda m: m.shape[1] - m[:, ::-1].argmax(1)
  return {'y0': first(rows), 'y1': last(rows), 'x0': first(cols), 'x1': last(cols)}


def cutout_row_coverage(length: int) -> np.ndarray:
  """P(row i lies in the Cutout square) for a centre uniform over 0..SIZE-1
  (DeVries & Taylor 2017): the square spans rows c - length//2 .. + length - 1."""
  centres = np.arange(SIZE)
  lo = centres - length // 2
  rows = np.arange(SIZE)[:, None]
  return ((rows >= lo) & (rows < lo + length)).mean(1)


def beta_pvalue(samples: np.ndarray, alpha: float) -> float:
  """Kolmogorov-Smirnov p-value of samples against Beta(alpha, alpha)."""
  return float(stats.kstest(samples, stats.beta(alpha, alpha).cdf).pvalue)


def same_distribution_pvalue(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sample Kolmogorov-Smirnov p-value."""
  return float(stats.ks_2samp(a, b).pvalue)


def assert_weights_follow_alpha(kind: str, weights: dict):
  """Each alpha's mixing weights ({alpha: [n]}) match the distribution of
  its own alpha (mixup: Beta; CutMix: the clipped box's uncovered area) and
  not the other's."""
  for alpha, lams in weights.items():
    for reference in ALPHAS:
      p = (beta_pvalue(lams, reference) if kind == 'mixup' else
           same_distribution_pvalue(lams, cutmix(reference, 4000)['lam']))
      print(kind, alpha, 'vs', reference, 'p =', p)
      assert p > 1e-3 if alpha == reference else p < 1e-6, (alpha, reference, p)
