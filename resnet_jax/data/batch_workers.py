"""Host batches built by a pool of worker processes (the host pipeline).

TrivialAugment runs Pillow once per image from Python, which holds the GIL:
threads do not add throughput (measured in BENCHMARKS.md), processes do. So
the host pipeline's batches (`input_pipeline.TrainStream.batch`) are built by
`workers` processes, each holding the same `TrainStream` over the split,
which they read from one shared-memory copy instead of one copy each. Every
batch is still a pure function of the step, whichever worker builds it.

Workers are started with 'spawn' (a fork of a process running JAX's threads
may deadlock) and import only numpy, Pillow and this package's data modules.
"""

import concurrent.futures
import multiprocessing
from multiprocessing import shared_memory
from typing import Iterable, Iterator, Optional

import numpy as np

from resnet_jax.data import input_pipeline

_STREAM: Optional[input_pipeline.TrainStream] = None
_SHM: Optional[shared_memory.SharedMemory] = None


def _start_worker(name: str, shape: tuple, labels, class_names, kwargs: dict) -> None:
  global _STREAM, _SHM
  _SHM = shared_memory.SharedMemory(name=name)
  images = np.ndarray(shape, np.uint8, buffer=_SHM.buf)
  split = input_pipeline.Split(images, labels, class_names)
  _STREAM = input_pipeline.TrainStream(split, **kwargs)


def _batch(step: int) -> dict:
  return _STREAM.batch(step)


class BatchWorkers:
  """`map(steps)` -> the host batches of those steps, in order.

  With one worker the batches are built in the calling thread; with more, in
  that many processes. A context manager: leaving it stops the processes and
  frees the shared memory.
  """

  def __init__(self, stream: input_pipeline.TrainStream, workers: int):
    self._stream = stream
    self._pool = None
    self._shm = None
    if workers <= 1:
      return
    images = stream.split.images
    self._shm = shared_memory.SharedMemory(create=True, size=max(1, images.nbytes))
    np.ndarray(images.shape, np.uint8, buffer=self._shm.buf)[:] = images
    kwargs = dict(global_batch=stream.global_batch, seed=stream.seed,
                  augment_images=stream.augment_images,
                  process_index=stream.process_index,
                  process_count=stream.process_count, options=stream.options)
    self._pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn'),
        initializer=_start_worker,
        initargs=(self._shm.name, images.shape, stream.split.labels,
                  stream.split.class_names, kwargs))

  def map(self, steps: Iterable[int]) -> Iterator[dict]:
    if self._pool is None:
      return map(self._stream.batch, steps)
    return self._pool.map(_batch, steps)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
      self._pool = None
    if self._shm is not None:
      self._shm.close()
      self._shm.unlink()
      self._shm = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False
