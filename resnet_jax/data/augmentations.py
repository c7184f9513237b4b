"""Training augmentations beyond pad + crop + flip, each drawn per step.

Every function here is split into draws (random numbers for a whole global
batch, from a generator seeded by `(seed, step)`) and their application to
some rows of it, so that a batch is a pure function of the step whatever the
number of processes materialising it (see `input_pipeline.TrainStream`).

- TrivialAugment (Mueller & Hutter 2021, the "wide" magnitudes): one operation
  per image, drawn uniformly with a uniform magnitude. Chosen over RandAugment
  because it has no hyperparameters to search (RandAugment's N and M were
  tuned per dataset) and matched or beat it and AutoAugment on CIFAR-10 in
  that paper. Applied with Pillow, the library torchvision's version uses.
- Cutout (DeVries & Taylor 2017): a square, centred anywhere and clipped at the
  border, is set to 0 after normalisation (the dataset mean). Applied on device
  from a mask.
- mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): one mixing weight (and
  for CutMix one box) per batch, pairing each example with another of the same
  batch; the labels mix with the same weight in the loss and train accuracy.
  CutMix pastes pixels (exact on uint8, done here); mixup blends on device.
"""

import dataclasses
from typing import Optional

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# Pillow draws with this fill where a geometric operation uncovers pixels.
FILL = (128, 128, 128)
MAGNITUDE_BINS = 31

POLICIES = ('', 'trivialaugment')


@dataclasses.dataclass(frozen=True)
class Options:
  """The augmentations of a run beyond pad + crop + flip (all off by default)."""
  policy: str = ''
  cutout_size: int = 0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0

  @classmethod
  def from_config(cls, config) -> 'Options':
    # .get: configs stored by versions before these fields existed lack them.
    return cls(policy=config.get('augment_policy', ''),
               cutout_size=config.get('cutout_size', 0),
               mixup_alpha=config.get('mixup_alpha', 0.0),
               cutmix_alpha=config.get('cutmix_alpha', 0.0))

  @property
  def mixing(self) -> Optional[str]:
    """'mixup', 'cutmix' or None."""
    if self.mixup_alpha > 0:
      return 'mixup'
    if self.cutmix_alpha > 0:
      return 'cutmix'
    return None


# ----------------------------------------------------------------------------
# TrivialAugment.
# ----------------------------------------------------------------------------

# (name, largest magnitude, signed): the "wide" ranges of Mueller & Hutter.
_OPS = (
    ('identity', 0.0, False),
    ('shear_x', 0.99, True),
    ('shear_y', 0.99, True),
    ('translate_x', 32.0, True),
    ('translate_y', 32.0, True),
    ('rotate', 135.0, True),
    ('brightness', 0.99, True),
    ('color', 0.99, True),
    ('contrast', 0.99, True),
    ('sharpness', 0.99, True),
    ('posterize', 6.0, False),
    ('solarize', 255.0, False),
    ('autocontrast', 0.0, False),
    ('equalize', 0.0, False),
)
OP_NAMES = tuple(name for name, _, _ in _OPS)


def trivialaugment_draws(rng: np.random.Generator, b: int):
  """Per image: operation index and signed magnitude."""
  ops = rng.integers(0, len(_OPS), size=b)
  bins = rng.integers(0, MAGNITUDE_BINS, size=b)
  signs = np.where(rng.random(b) < 0.5, -1.0, 1.0)
  top = np.array([m for _, m, _ in _OPS])[ops]
  signed = np.array([s for _, _, s in _OPS])[ops]
  magnitudes = bins / (MAGNITUDE_BINS - 1) * top * np.where(signed, signs, 1.0)
  return ops, magnitudes


def apply_op(image: np.ndarray, op: str, magnitude: float) -> np.ndarray:
  """One TrivialAugment operation on a uint8 [H, W, 3] image."""
  im = Image.fromarray(image)
  affine = lambda coeffs: im.transform(im.size, Image.Transform.AFFINE, coeffs,
                                       fillcolor=FILL)
  if op == 'identity':
    return image
  if op == 'shear_x':
    out = affine((1, magnitude, 0, 0, 1, 0))
  elif op == 'shear_y':
    out = affine((1, 0, 0, magnitude, 1, 0))
  elif op == 'translate_x':
    out = affine((1, 0, round(magnitude), 0, 1, 0))
  elif op == 'translate_y':
    out = affine((1, 0, 0, 0, 1, round(magnitude)))
  elif op == 'rotate':
    out = im.rotate(magnitude, fillcolor=FILL)
  elif op in ('brightness', 'color', 'contrast', 'sharpness'):
    enhancer = {'brightness': ImageEnhance.Brightness, 'color': ImageEnhance.Color,
                'contrast': ImageEnhance.Contrast,
                'sharpness': ImageEnhance.Sharpness}[op]
    out = enhancer(im).enhance(1.0 + magnitude)
  elif op == 'posterize':
    out = ImageOps.posterize(im, 8 - int(magnitude))
  elif op == 'solarize':
    out = ImageOps.solarize(im, 256 - int(magnitude))
  elif op == 'autocontrast':
    out = ImageOps.autocontrast(im)
  elif op == 'equalize':
    out = ImageOps.equalize(im)
  else:
    raise ValueError(f'unknown operation {op!r}')
  return np.asarray(out, np.uint8)


def apply_trivialaugment(images: np.ndarray, ops: np.ndarray,
                         magnitudes: np.ndarray) -> np.ndarray:
  """Each image through its drawn operation (a new array)."""
  return np.stack([apply_op(im, OP_NAMES[o], m)
                   for im, o, m in zip(images, ops, magnitudes)])


# ----------------------------------------------------------------------------
# Cutout.
# ----------------------------------------------------------------------------

def cutout_draws(rng: np.random.Generator, b: int, size: int):
  """Square centres (y, x), uniform over the image."""
  return rng.integers(0, size, size=b), rng.integers(0, size, size=b)


def cutout_mask(cy: np.ndarray, cx: np.ndarray, length: int, size: int) -> np.ndarray:
  """bool [B, size, size]: True inside each length x length square, clipped."""
  lo_y, lo_x = cy - length // 2, cx - length // 2
  r = np.arange(size)
  inside_y = (r >= lo_y[:, None]) & (r < lo_y[:, None] + length)
  inside_x = (r >= lo_x[:, None]) & (r < lo_x[:, None] + length)
  return inside_y[:, :, None] & inside_x[:, None, :]


# ----------------------------------------------------------------------------
# mixup and CutMix.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MixDraws:
  """Partner of each global row, the weight of the row's own label, and for
  CutMix the pasted box (y0, y1, x0, x1)."""
  partner: np.ndarray
  lam: float
  box: Optional[tuple] = None


def mix_draws(rng: np.random.Generator, b: int, kind: str, alpha: float,
              size: int) -> MixDraws:
  """One weight (and box) for the batch, partners by a permutation."""
  partner = rng.permutation(b)
  lam = float(rng.beta(alpha, alpha))
  if kind == 'mixup':
    return MixDraws(partner, lam)
  # CutMix: a box of area (1 - lam) of the image, centred uniformly, clipped;
  # the label weight is then the uncovered fraction.
  cut = int(size * np.sqrt(1.0 - lam))
  cy, cx = rng.integers(0, size, size=2)
  y0, y1 = np.clip([cy - cut // 2, cy - cut // 2 + cut], 0, size)
  x0, x1 = np.clip([cx - cut // 2, cx - cut // 2 + cut], 0, size)
  lam = 1.0 - (y1 - y0) * (x1 - x0) / (size * size)
  return MixDraws(partner, lam, (int(y0), int(y1), int(x0), int(x1)))


def paste_box(images: np.ndarray, partners: np.ndarray, box: tuple) -> np.ndarray:
  """CutMix: each image with its partner's pixels inside `box` (a new array)."""
  y0, y1, x0, x1 = box
  out = images.copy()
  out[:, y0:y1, x0:x1] = partners[:, y0:y1, x0:x1]
  return out
