"""Image files of any size -> training and evaluation batches, through grain.

For datasets too large to hold in memory (ImageNet: 1.28M JPEGs, 140 GB),
every batch is read from the files and decoded on the host by google/grain
(`--config.image_size > 0`; CIFAR-size runs keep the in-memory pipelines).
Why grain, measured (BENCHMARKS.md): its worker processes decode in parallel
beside the training loop, it is deterministic, its iterator state is a few
indices that orbax checkpoints with the run, and it needs no TensorFlow.

As in the in-memory host pipeline (`input_pipeline.TrainStream`), the batch
of step `s` is a pure function of `(seed, s)`: the stream of examples is one
fresh permutation of the files per epoch, step `s` takes stream positions
`[s * B, (s + 1) * B)`, and every example's crop and flip come from a
generator seeded by its stream position. Each process reads and decodes only
its own rows of each global batch, so the processes of a multi-host run
share one epoch's files without overlap, whatever the worker count.

A file that is bad (`image_decoding.BadImage`: empty, truncated, not an
image, a decompression bomb; or gone, a folder, unreadable for permissions)
is skipped: training takes the next file of the epoch's permutation in its
place, evaluation masks it out; either way the batch names it under
'skipped', and the loop logs it once and records it in run.json
(`skipped_files`). Any other error while reading (EIO, ESTALE, EMFILE: a
shared filesystem's hiccup, not the file's fault) is retried for about a
minute, then stops the run with `ReadFailed`: skipping such a file would make
a batch depend on the filesystem's mood, not only on (seed, step).

grain's worker processes ignore SIGTERM and SIGINT, which a cluster sends
to the whole process group (`grain_workers`); the training process
checkpoints and stops them, and they exit by themselves when it is gone.
"""

import copy
import dataclasses
import errno
import math
import os
import threading
import time
from typing import Iterator, Optional, Sequence

import numpy as np

from resnet_jax import errors
from resnet_jax.data import epoch_orders
from resnet_jax.data import grain_workers
from resnet_jax.data import image_decoding
from resnet_jax.data import shared_arrays

# ImageNet's per-channel statistics (the [0, 1] scale), the convention of
# every ImageNet codebase; measuring them would read the whole dataset.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class FileSplit:
  """A split as files: paths relative to `root`, one label each."""
  root: str
  paths: np.ndarray   # bytes ('S'), relative to root: compact for 1M+ files.
  labels: np.ndarray  # int32 [N]
  class_names: tuple  # Readable, one per label, unique.
  class_ids: tuple = ()  # The class folders (wnids); () = `class_names`.
  # (paths, labels) as `shared_arrays.Shared` when `shared()` made it.
  _shared: tuple = dataclasses.field(default=(), repr=False, compare=False)

  def __len__(self) -> int:
    return len(self.labels)

  def shared(self) -> 'FileSplit':
    """This split with its paths and labels in shared memory: grain's
    workers then map one copy instead of each unpickling its own (46 MB at
    ImageNet's size). The memory is freed with the split returned."""
    if self._shared:
      return self
    shared = shared_arrays.share_all('The file list', self.paths, self.labels)
    if not shared:  # No room (a container's small /dev/shm): a copy each.
      return self
    paths, labels = shared
    return FileSplit(self.root, paths.array, labels.array, self.class_names,
                     self.class_ids, (paths, labels))

  def __reduce__(self):
    if not self._shared:
      return FileSplit, (self.root, self.paths, self.labels, self.class_names,
                         self.class_ids)
    return _from_shared, (self.root, *self._shared, self.class_names, self.class_ids)

  def name(self, index: int) -> str:
    """The file's path relative to `root`."""
    return os.fsdecode(self.paths[index])

  def path(self, index: int) -> str:
    return os.path.join(self.root, self.name(index))

  def read(self, index: int) -> bytes:
    """The file's bytes; transient errors retried (`read_file`)."""
    return read_file(self.path(index))

  def take(self, selection) -> 'FileSplit':
    """The files at `selection` (a mask or indices), in that order."""
    return FileSplit(self.root, self.paths[selection], self.labels[selection],
                     self.class_names, self.class_ids)


def _from_shared(root, paths, labels, class_names, class_ids) -> FileSplit:
  return FileSplit(root, paths.array, labels.array, class_names, class_ids, (paths, labels))


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The training crop size of each step: `start`, or with `final`
  progressive resizing (FFCV): from `start` at epoch `start_epoch` to `final`
  at `end_epoch`, linearly in steps of 32 pixels, halves rounded up (one
  compiled shape each)."""
  start: int
  final: int = 0
  start_epoch: float = 0.0
  end_epoch: float = 0.0
  steps_per_epoch: float = 1.0

  def at(self, step: int) -> int:
    if not self.final or self.final == self.start:
      return self.start
    epoch = step / self.steps_per_epoch
    span = self.end_epoch - self.start_epoch
    t = (float(epoch >= self.start_epoch) if span <= 0
         else min(1.0, max(0.0, (epoch - self.start_epoch) / span)))
    if t >= 1.0:
      return self.final
    return self.start + 32 * int(math.floor(t * (self.final - self.start) / 32 + 0.5))

  def changes(self, first: int, end: int) -> set:
    """The steps in (first, end) whose size differs from the step before."""
    if not self.final:
      return set()
    return {s for s in range(first + 1, end) if self.at(s) != self.at(s - 1)}


# errno values that say the file itself is bad: the same on every try.
BAD_FILE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES,
                             errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP})
# Waits between the tries of a read that failed otherwise: 62 s in all,
# longer than an NFS server's usual failover.
RETRY_DELAYS = (0.5, 1.5, 4.0, 8.0, 16.0, 32.0)


class ReadFailed(Exception):
  """A read that kept failing with an error of the filesystem, not the file's."""


def read_file(path: str, delays: Optional[Sequence[float]] = None) -> bytes:
  """The bytes of `path`, retrying errors that are not the file's fault.

  Raises:
    OSError: the file is bad (`BAD_FILE_ERRNOS`): skip it.
    ReadFailed: it still failed after every retry.
  """
  delays = RETRY_DELAYS if delays is None else delays
  for attempt in range(len(delays) + 1):
    try:
      with open(path, 'rb') as f:
        return f.read()
    except OSError as e:
      if e.errno in BAD_FILE_ERRNOS:
        raise
      if attempt == len(delays):
        raise ReadFailed(f'reading {path} failed {attempt + 1} times over '
                         f'{sum(delays):.0f} s ({e}): the filesystem is failing, not '
                         'the file') from e
      from resnet_jax.logs import log
      log.warning('Reading %s failed (%s); retry %d of %d in %.1f s', path, e,
                  attempt + 1, len(delays), delays[attempt])
      time.sleep(delays[attempt])
  raise AssertionError('unreachable')


def _skipped(split: FileSplit, index: int, error: Exception) -> tuple:
  return (split.name(index), str(error))


class TrainExamples:
  """Stream position (of this process's rows) -> one augmented example.

  Picklable: grain sends it to its worker processes.
  """

  def __init__(self, split: FileSplit, global_batch: int, seed: int, size,
               area: tuple = image_decoding.AREA, augment: bool = True,
               process_index: int = 0, process_count: int = 1,
               order: str = 'index_shuffle'):
    """`size`: pixels, or a `Sizes` (progressive resizing); `order`: one of
    `epoch_orders.FILE_ORDERS`."""
    if global_batch % process_count:
      raise errors.UserError(
          f'batch_size {global_batch} is not divisible by the {process_count} '
          'processes; set --config.batch_size to a multiple of it')
    if order not in epoch_orders.FILE_ORDERS:
      raise ValueError(f'order {order!r} is not one of {epoch_orders.FILE_ORDERS}')
    self.split, self.global_batch, self.seed = split, global_batch, seed
    self.sizes = size if isinstance(size, Sizes) else Sizes(int(size))
    self.area, self.augment, self.order = tuple(area), augment, order
    self.local = global_batch // process_count
    self.offset = process_index * self.local
    self._perms = {}
    # Decoding threads call this object at once; two crossing an epoch
    # boundary together evicted the same epoch twice.
    self._lock = threading.Lock()

  def __getstate__(self):  # To grain's workers: a lock does not pickle.
    return {k: v for k, v in self.__dict__.items() if k != '_lock'}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def sharing(self) -> 'TrainExamples':
    """The same examples, with the file list in shared memory
    (`FileSplit.shared`) for grain's workers."""
    twin = copy.copy(self)  # Through __getstate__: a lock of its own.
    twin.split, twin._perms = self.split.shared(), {}
    return twin

  def _permutation(self, epoch: int) -> np.ndarray:
    """The 'permutation' order of `epoch`; the last two epochs' are kept."""
    with self._lock:
      order = self._perms.get(epoch)
      if order is None:
        order = epoch_orders.permutation(len(self.split), self.seed, epoch)
        self._perms[epoch] = order
        while len(self._perms) > 2:
          self._perms.pop(min(e for e in self._perms if e != epoch))
      return order

  def file_at(self, epoch: int, i: int) -> int:
    """The index of the file at place `i` of `epoch`'s order."""
    if self.order == 'permutation':
      return int(self._permutation(epoch)[i])
    return epoch_orders.shuffled(i, len(self.split), self.seed, epoch)

  def epoch_order(self, epoch: int) -> np.ndarray:
    """`epoch`'s whole order (for tests and tools; training never builds it)."""
    return np.array([self.file_at(epoch, i) for i in range(len(self.split))], np.int64)

  def position(self, k: int) -> int:
    """The global stream position of this process's k-th example."""
    step, row = divmod(k, self.local)
    return step * self.global_batch + self.offset + row

  def __call__(self, k: int) -> dict:
    position = self.position(k)
    size = self.sizes.at(k // self.local)
    n = len(self.split)
    epoch, offset = divmod(position, n)
    rng = np.random.default_rng([self.seed, 1, position])
    skipped = []
    for t in range(n):  # A bad file yields to the next of the epoch's order.
      index = self.file_at(epoch, (offset + t) % n)
      try:
        data = self.split.read(index)
        image = (image_decoding.train_image(data, size, rng, self.area)
                 if self.augment else image_decoding.eval_image(data, size))
        return {'image': image, 'label': self.split.labels[index],
                'skipped': tuple(skipped)}
      except (image_decoding.BadImage, OSError) as e:
        skipped.append(_skipped(self.split, index, e))
    raise errors.UserError(f'no file of {self.split.root} decodes (the first: '
                           f'{skipped[0][0]}: {skipped[0][1]}); check the dataset')


def collate(examples: Sequence[dict]) -> dict:
  """Examples -> one batch; 'skipped' is the files skipped for it."""
  batch = {key: np.stack([e[key] for e in examples])
           for key in examples[0] if key != 'skipped'}
  batch['skipped'] = tuple(s for e in examples for s in e['skipped'])
  return batch


def report_skipped(seen: dict, skipped: Sequence[tuple]) -> None:
  """Logs each skipped file once and adds it to `seen` {path: reason}."""
  from resnet_jax.logs import log
  for path, reason in skipped:
    if path not in seen:
      seen[path] = reason
      log.warning('Skipped %s: %s (it is left out; %d file(s) skipped so far)',
                  path, reason, len(seen))


def _grain():
  try:
    import grain
  except ImportError as e:  # A dependency of the package: a broken install.
    raise errors.UserError(f'the file loader needs grain ({e}); pip install -e .') from e
  grain_workers.shorten_join()
  return grain


def train_dataset(examples: TrainExamples, num_steps: int):
  """grain MapDataset whose element `s` is this process's batch of step `s`."""
  grain = _grain()
  return (grain.MapDataset.range(num_steps * examples.local)
          .map(examples)
          .batch(examples.local, drop_remainder=True, batch_fn=collate))


def iterate(dataset, workers: int, threads: int = 1):
  """A grain iterator over `dataset`: `workers` processes each decoding with
  `threads` threads (0 workers: threads in this process)."""
  grain = _grain()
  it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads),
                                                 prefetch_buffer_size=2))
  if workers > 0:
    # Batches come back pickled, not in shared memory: grain frees shared
    # segments from a background thread, and those still queued at exit were
    # reported as leaked on every run; measured no slower (BENCHMARKS.md).
    it = grain.experimental.WithOptionsIterDataset(
        it, grain.experimental.DatasetOptions(min_shm_size=1 << 62))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=2),
                        worker_init_fn=grain_workers.init_worker)
    # Started here, not inside `signals_held`: starting it unblocks the stop
    # signals of the thread that does (CPython's resource_tracker).
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
  with grain_workers.signals_held():  # grain may start its threads here already.
    return iter(it)


# grain states kept for checkpoints: the loop's feeder runs up to three calls
# of up to 1024 steps (`config_validation.MAX_STEPS_PER_CALL`) ahead of the
# step being saved.
STATES_KEPT = 4096


class TrainBatches:
  """`map(steps)` -> this process's training batches of those consecutive
  steps, from a grain iterator; keeps grain's state after each step for the
  checkpoint of that step (the iterator runs ahead of the training).

  The state saved is `{'start': first step of the iterator, 'grain': grain's
  state}`; a resume rebuilds the same iterator and sets that state. A state
  grain cannot take (the worker count changed) is not needed: the iterator
  then starts at the checkpoint's step, which draws the same batches.
  """

  def __init__(self, examples: TrainExamples, num_steps: int, start: int,
               workers: int, threads: int = 1, state: Optional[dict] = None):
    self.resumed_from_state = False
    if workers > 0:  # One copy of the file list per host, not one per worker.
      examples = examples.sharing()
    dataset = train_dataset(examples, num_steps)
    with grain_workers.signals_held():
      if state is not None and state.get('workers') == workers:
        first = int(state['start'])
        self._iterator = iterate(dataset[first:], workers, threads)
        self._iterator.set_state(state['grain'])
        self.resumed_from_state = True
      else:
        first = start
        self._iterator = iterate(dataset[first:], workers, threads)
    self._first, self._workers = first, workers
    self._next = start
    self._states = {start: self._iterator.get_state()}

  def map(self, steps) -> Iterator[dict]:
    for step in steps:
      if step != self._next:
        raise RuntimeError(f'batches must be read in order: asked for step {step}, '
                           f'next is {self._next}')
      with grain_workers.signals_held():  # A read may start grain's workers.
        batch = next(self._iterator)
      self._next += 1
      self._states[self._next] = self._iterator.get_state()
      if len(self._states) > STATES_KEPT:  # The oldest: dicts keep insertion order.
        self._states.pop(next(iter(self._states)))
      yield batch

  def state_at(self, step: int) -> dict:
    """The loader's state after the batch of step `step - 1`."""
    return {'start': self._first, 'workers': self._workers,
            'grain': self._states[step]}

  def close(self) -> None:
    """Stops grain's workers and threads now, not at garbage collection."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None


def eval_dataset(split: FileSplit, global_batch: int, size: int, process_index: int = 0,
                 process_count: int = 1):
  """grain MapDataset of this process's rows of the padded evaluation
  batches, in file order; 'mask' marks real, decoded images."""
  grain = _grain()
  local = global_batch // process_count
  n = len(split)
  num_batches = -(-n // global_batch)

  def example(k):
    batch, row = divmod(k, local)
    index = batch * global_batch + process_index * local + row
    blank = {'image': np.zeros((size, size, 3), np.uint8), 'label': np.int32(0),
             'mask': False, 'skipped': ()}
    if index >= n:
      return blank
    try:
      image = image_decoding.eval_image(split.read(index), size)
    except (image_decoding.BadImage, OSError) as e:
      return {**blank, 'skipped': (_skipped(split, index, e),)}
    return {'image': image, 'label': split.labels[index], 'mask': True, 'skipped': ()}

  return (grain.MapDataset.range(num_batches * local).map(example)
          .batch(local, drop_remainder=True, batch_fn=collate))
