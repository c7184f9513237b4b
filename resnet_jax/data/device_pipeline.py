"""Training batches made on the device, from a split placed there once.

The uint8 training split (150 MB for CIFAR-10) sits in device memory; each
step's batch is gathered and augmented inside the compiled step, so no host
work stands between two steps. Every draw comes from `jax.random` keyed by
(seed, step[, augmentation]) and is made for the whole global batch, of which
each device then materialises only its own rows: a batch is a pure function
of (seed, step), the same on 1 or 8 devices, with jit or pmap, on any number
of processes, and after a resume.

- Order: one endless stream of epochs, each a fresh permutation of the split
  keyed by (seed, epoch); step `s` takes stream positions [s B, (s + 1) B), so
  a batch may straddle two epochs and no example is dropped.
- Pad + crop + flip (He et al. 2015): 4-pixel zero pad, uniform offsets in
  [0, 8], a mirror with p = 0.5.
- Cutout, mixup and CutMix: the distributions of `augmentations` (one weight,
  and for CutMix one box, per batch; partners by a permutation of the batch),
  drawn with `jax.random` instead of numpy.

TrivialAugment runs Pillow on the host, so it keeps the host pipeline
(`input_pipeline.TrainStream`), as does a split too large for the devices.
"""

import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import augmentations

PAD = 4

# The pipeline's keys hang off their own root, (seed, ROOT): the dropout keys
# are (seed, step) for steps below 2**31, so no key serves two purposes.
# Under it, (ORDER, epoch) for the example order and (STEPS, step,
# augmentation) for the rest, one per augmentation, so that turning one on
# leaves the others' draws alone.
_ROOT = 0xD47A0000
_ORDER, _STEPS = 0, 1
_CROP_FLIP, _CUTOUT, _MIX = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the batches of a run are: everything but the data itself."""
  num_examples: int
  global_batch: int
  seed: int
  augment: bool = True
  options: augmentations.Options = augmentations.Options()

  @classmethod
  def of(cls, config, num_examples: int) -> 'Spec':
    """The spec of a run's config over a split of `num_examples`."""
    return cls(num_examples, config.batch_size, config.seed, config.augment,
               augmentations.Options.from_config(config))

  def epochs_per_chunk(self, k: int) -> int:
    """How many epoch permutations a chunk of `k` steps can touch."""
    return (k * self.global_batch - 1) // self.num_examples + 2

  def first_epoch(self, step: int) -> int:
    """The epoch of the first example of `step` (host side)."""
    return step * self.global_batch // self.num_examples


def _key(seed: int, stream: int):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROOT), stream)


def epoch_permutations(spec: Spec, first_epoch, count: int) -> jnp.ndarray:
  """int32 [count, N]: the example order of epochs first_epoch, +1, ...

  A sort of N keys per epoch (~80 ms for CIFAR on a CPU core, as long as a
  quarter of a ResNet-20 step there): `orders` draws them once per epoch,
  not once per step.
  """
  base = _key(spec.seed, _ORDER)
  epochs = first_epoch + jnp.arange(count)
  return jax.vmap(lambda e: jax.random.permutation(
      jax.random.fold_in(base, e), spec.num_examples).astype(jnp.int32))(epochs)


_permutations = jax.jit(epoch_permutations, static_argnums=(0, 2))


def orders(spec: Spec, first_epoch: int, count: int) -> dict:
  """The example orders a call starting in `first_epoch` reads, as host
  arrays for `DataParallel.replicate`: {'order': int32 [count, N],
  'first_epoch': int32}. Drawn on the default device once per epoch and
  placed beside the split (N int32 per epoch: 0.2 MB for CIFAR)."""
  return {'order': np.asarray(_permutations(spec, first_epoch, count)),
          'first_epoch': np.int32(first_epoch)}


def example_index(spec: Spec, perms, first_epoch, step) -> jnp.ndarray:
  """int32 [B]: the split rows of the global batch of `step`."""
  pos = step * spec.global_batch + jnp.arange(spec.global_batch)
  epoch, offset = jnp.divmod(pos, spec.num_examples)
  return perms[epoch - first_epoch, offset]


def normalize(images: jnp.ndarray, mean_std: tuple, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 NHWC -> float, per-channel mean/std (runs inside the compiled step).

  Args:
    images: uint8 [..., C].
    mean_std: (mean, std), per channel on the [0, 1] scale.
    dtype: the result's dtype.
  """
  mean, std = (np.asarray(v, np.float32) * 255.0 for v in mean_std)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def crop_flip_draws(key, b: int):
  """Offsets (y, x) in [0, 2 PAD] and mirror flags for `b` images."""
  ky, kx, kf = jax.random.split(key, 3)
  return (jax.random.randint(ky, (b,), 0, 2 * PAD + 1),
          jax.random.randint(kx, (b,), 0, 2 * PAD + 1),
          jax.random.bernoulli(kf, 0.5, (b,)))


def crop_flip(images, oy, ox, flip):
  """4-pixel zero pad, a crop at (oy, ox) and an optional mirror, per image."""
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))
  out = crop(padded, oy, ox)
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


def cutout_erase(key, rows, b: int, length: int, size: int):
  """bool [len(rows), size, size]: the Cutout squares of some global rows."""
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (b,), 0, size)[rows]
  cx = jax.random.randint(kx, (b,), 0, size)[rows]
  r = jnp.arange(size)
  lo_y, lo_x = cy - length // 2, cx - length // 2
  in_y = (r >= lo_y[:, None]) & (r < lo_y[:, None] + length)
  in_x = (r >= lo_x[:, None]) & (r < lo_x[:, None] + length)
  return in_y[:, :, None] & in_x[:, None, :]


def mix_draws(key, b: int, kind: str, alpha: float, size: int):
  """(partner of each global row, weight of the row's own label, box mask or
  None): one Beta(alpha, alpha) weight per batch; CutMix's box has area
  (1 - lam), is centred uniformly and clipped, and its label weight is the
  uncovered fraction."""
  kp, kl, kc = jax.random.split(key, 3)
  partner = jax.random.permutation(kp, b)
  lam = jax.random.beta(kl, alpha, alpha)
  if kind == 'mixup':
    return partner, lam, None
  cut = jnp.floor(size * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
  cy, cx = jax.random.randint(kc, (2,), 0, size)
  y0, y1 = jnp.clip(cy - cut // 2, 0, size), jnp.clip(cy - cut // 2 + cut, 0, size)
  x0, x1 = jnp.clip(cx - cut // 2, 0, size), jnp.clip(cx - cut // 2 + cut, 0, size)
  r = jnp.arange(size)
  box = (((r >= y0) & (r < y1))[:, None] & ((r >= x0) & (r < x1))[None, :])
  lam = 1.0 - (y1 - y0) * (x1 - x0) / (size * size)
  return partner, lam, box


def make_batch(spec: Spec, images, labels, step, perms, first_epoch,
               rows, constrain=None) -> dict:
  """The rows `rows` (global indices) of the batch of `step`, on the device.

  Args:
    spec: the run's batches.
    images, labels: the device-resident split.
    step: the (traced) step; positions are int32, so a run may read up to
      2**31 examples.
    perms, first_epoch: `orders` covering this step.
    rows: int [b] global rows this device (or, under jit, the program) makes.
    constrain: optional function placing a [b, ...] array (jit: sharded over
      the mesh, so each device gathers only its own rows).

  Returns:
    The keys of `input_pipeline.TrainStream.batch`: 'image' (uint8), 'label';
    with Cutout 'erase'; with mixup/CutMix 'mix_label' and 'mix_lam', and
    with mixup 'mix_image'.
  """
  constrain = constrain or (lambda x: x)
  b, opts = spec.global_batch, spec.options
  index = example_index(spec, perms, first_epoch, step)
  step_key = jax.random.fold_in(_key(spec.seed, _STEPS), step)
  draws = (crop_flip_draws(jax.random.fold_in(step_key, _CROP_FLIP), b)
           if spec.augment else None)

  def images_of(global_rows):
    out = images[constrain(index[global_rows])]
    if draws is not None:
      out = crop_flip(out, *(d[global_rows] for d in draws))
    return out

  batch = {'image': images_of(rows), 'label': labels[index[rows]]}
  size = images.shape[1]
  if opts.cutout_size:
    batch['erase'] = cutout_erase(jax.random.fold_in(step_key, _CUTOUT), rows, b,
                                  opts.cutout_size, size)
  if opts.mixing:
    partner, lam, box = mix_draws(jax.random.fold_in(step_key, _MIX), b, opts.mixing,
                                  opts.mixup_alpha or opts.cutmix_alpha, size)
    partner_images = images_of(partner[rows])
    if box is None:
      batch['mix_image'] = partner_images
    else:
      batch['image'] = jnp.where(box[None, :, :, None], partner_images, batch['image'])
    batch['mix_label'] = labels[index[partner[rows]]]
    batch['mix_lam'] = jnp.full(rows.shape, lam, jnp.float32)
  return batch


def too_large(nbytes: int, devices) -> Optional[str]:
  """Why `nbytes` of data do not fit on each of `devices` beside training,
  or None when they do. The split may take a quarter of the smallest device's memory
  (the rest: parameters, activations, XLA's workspace)."""
  limits = []
  for d in devices:
    stats = d.memory_stats() if hasattr(d, 'memory_stats') else None
    if stats and stats.get('bytes_limit'):
      limits.append(int(stats['bytes_limit']))
  if not limits:  # The CPU backend reports none: host memory is the device's.
    limits = [host_memory_bytes()]
  budget = min(limits) // 4
  if nbytes > budget:
    return (f'the training split ({nbytes / 2**30:.2f} GiB) exceeds a quarter of '
            f'device memory ({budget / 2**30:.2f} GiB)')
  return None


def host_memory_bytes() -> int:
  """Physical memory of this machine."""
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
