"""The host pipeline: an in-memory split -> per-step augmented batches.

The default pipeline makes batches on the device (`device_pipeline`); this
one serves TrivialAugment (Pillow) and splits too large for device memory,
and holds the `Split` every source returns.

CIFAR is small (150 MB of uint8 for the train split), so the split is read
once into host memory (`datasets` says from where) and every batch is a pure
function of `(seed, step)`: the example order is a fresh permutation per epoch
and the augmentation draws come from a generator seeded by the step. That makes runs
reproducible, lets a resumed run continue at the exact example it stopped at,
and gives every process of a multi-host run the same global batch, of which it
materialises only its own rows.

Images stay uint8 on the host; `device_pipeline.normalize` (inside the compiled
step) converts to float and applies the per-channel mean/std. The options
beyond crop and flip (TrivialAugment, Cutout, mixup, CutMix) are drawn here
too, by `augmentations`.
"""

import collections
import concurrent.futures
import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np

from resnet_jax.data import augmentations
from resnet_jax import errors

PAD = 4


@dataclasses.dataclass(frozen=True)
class Split:
  """A dataset split held in host memory."""
  images: np.ndarray  # uint8 [N, 32, 32, 3]
  labels: np.ndarray  # int32 [N]
  class_names: tuple  # Readable, one per label, unique.
  # What results are keyed by: the class folders (wnids), tfds's label names;
  # () = `class_names`.
  class_ids: tuple = ()

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, selection) -> 'Split':
    """The examples at `selection` (a mask or indices), in that order."""
    return Split(self.images[selection], self.labels[selection], self.class_names,
                 self.class_ids)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """4-pixel zero pad, random 32x32 crop and random horizontal flip.

  Args:
    images: uint8 [B, H, W, C].
    rng: the generator of this batch's draws.

  Returns:
    uint8 [B, H, W, C], augmented.
  """
  return _apply_draws(images, *augment_draws(rng, len(images)))


class TrainStream:
  """The training batches of a run, each a pure function of the step.

  The examples form one endless stream of epochs, each a fresh permutation of
  the split; step `s` takes stream positions `[s * B, (s + 1) * B)`, so a
  batch may straddle two epochs and no example is ever dropped.
  """

  def __init__(self, split: Split, global_batch: int, seed: int,
               augment_images: bool = True, process_index: int = 0,
               process_count: int = 1,
               options: augmentations.Options = augmentations.Options()):
    if global_batch % process_count:
      raise errors.UserError(
          f'batch_size {global_batch} is not divisible by the {process_count} '
          'processes; set --config.batch_size to a multiple of it')
    self.split = split
    self.global_batch = global_batch
    self.seed = seed
    self.augment_images = augment_images
    self.options = options
    self.process_index, self.process_count = process_index, process_count
    local = global_batch // process_count
    self._rows = np.arange(process_index * local, (process_index + 1) * local)
    self._perms = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 2:
        self._perms.pop(min(self._perms))
      rng = np.random.default_rng([self.seed, 0, epoch])
      self._perms[epoch] = rng.permutation(len(self.split))
    return self._perms[epoch]

  def epoch_at(self, step: int) -> float:
    """Epochs completed after `step` steps."""
    return step * self.global_batch / len(self.split)

  def batch(self, step: int) -> dict:
    """This process's rows of the global batch of `step` (0-based).

    Keys: 'image' (uint8) and 'label'; with Cutout 'erase' (bool [B, H, W]);
    with mixup or CutMix 'mix_label' and 'mix_lam' (the weight of 'label'), and
    with mixup 'mix_image' (the partner images, blended on device).
    """
    n = len(self.split)
    pos = step * self.global_batch + np.arange(self.global_batch)
    epochs, offsets = np.divmod(pos, n)
    index = np.empty(self.global_batch, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      index[sel] = self._permutation(int(epoch))[offsets[sel]]
    opts = self.options
    # Each augmentation draws for the whole global batch from its own
    # generator, so the result does not depend on how many processes share
    # the batch, and turning one option on leaves the others' draws alone.
    rng = lambda k: np.random.default_rng([self.seed, 1, step] + k)
    draws = augment_draws(rng([]), self.global_batch) if self.augment_images else None
    policy = (augmentations.trivialaugment_draws(rng([1]), self.global_batch)
              if opts.policy else None)

    def images_of(rows):  # The augmented images of some global rows.
      images = self.split.images[index[rows]]
      if draws is not None:
        images = _apply_draws(images, *(d[rows] for d in draws))
      if policy is not None:
        images = augmentations.apply_trivialaugment(images, *(d[rows] for d in policy))
      return images

    rows = self._rows
    batch = {'image': images_of(rows), 'label': self.split.labels[index[rows]]}
    size = batch['image'].shape[1]
    if opts.cutout_size:
      cy, cx = augmentations.cutout_draws(rng([2]), self.global_batch, size)
      batch['erase'] = augmentations.cutout_mask(cy[rows], cx[rows], opts.cutout_size,
                                                 size)
    if opts.mixing:
      alpha = opts.mixup_alpha or opts.cutmix_alpha
      mix = augmentations.mix_draws(rng([3]), self.global_batch, opts.mixing, alpha, size)
      partners = mix.partner[rows]
      partner_images = (batch['image'][partners - rows[0]]
                        if len(rows) == self.global_batch else images_of(partners))
      if mix.box is None:
        batch['mix_image'] = partner_images
      else:
        batch['image'] = augmentations.paste_box(batch['image'], partner_images, mix.box)
      batch['mix_label'] = self.split.labels[index[partners]]
      batch['mix_lam'] = np.full(len(rows), mix.lam, np.float32)
    return batch


def augment_draws(rng: np.random.Generator, b: int):
  """Crop offsets (y, x) and flips for `b` images."""
  return (rng.integers(0, 2 * PAD + 1, size=b), rng.integers(0, 2 * PAD + 1, size=b),
          rng.random(b) < 0.5)


def _apply_draws(images, oy, ox, flip):
  """Crops and flips as one gather over the zero-padded batch."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  rows = oy[:, None] + np.arange(h)
  cols = np.where(flip[:, None], np.arange(w)[::-1], np.arange(w)) + ox[:, None]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def eval_batches(split: Split, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """The whole split in order, the last batch padded; `mask` marks real rows."""
  local = global_batch // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  n = len(split)
  for start in range(0, n, global_batch):
    index = np.arange(start, start + global_batch)
    mask = index < n
    index = np.where(mask, index, 0)[rows]
    yield {'image': split.images[index], 'label': split.labels[index],
           'mask': mask[rows]}


def prefetch_chunks(make_batches: Callable[[Iterable[int]], Iterable[dict]],
                    put: Callable[[dict], dict], chunks: Iterable[tuple], k: int,
                    depth: int = 2) -> Iterator[dict]:
  """Yields `put(k stacked batches)` for each chunk (start, n) of steps,
  built `depth` chunks ahead while the device trains.

  Args:
    make_batches: steps -> their host batches, in order (e.g.
      `batch_workers.BatchWorkers.map`).
    put: stacked host batches -> device arrays.
    chunks: (first step, n) of each call.
    k: the calls' length; a chunk shorter than `k` is padded with copies of
      its last batch (the compiled call runs only its first n steps), so every
      call has one shape.
    depth: chunks built ahead.
  """
  def build(start, n):
    batches = list(make_batches(range(start, start + n)))
    batches += batches[-1:] * (k - n)
    return put({key: np.stack([b[key] for b in batches]) for key in batches[0]})

  feeder = concurrent.futures.ThreadPoolExecutor(1)
  try:
    futures = collections.deque()
    for chunk in chunks:
      futures.append(feeder.submit(build, *chunk))
      if len(futures) > depth:
        yield futures.popleft().result()
    while futures:
      yield futures.popleft().result()
  finally:
    # On an error or a stop, the chunks not yet begun are dropped: each would
    # read the files again (a failing filesystem retries for a minute a file).
    feeder.shutdown(wait=True, cancel_futures=True)
