"""Each epoch's order of an image folder's files (`config.file_order`).

'index_shuffle': grain's index_shuffle, the permutation behind grain's own
global shuffle (a Feistel network), gives the file at each position on its
own, so no process holds an epoch's order (numpy's is 10 MB an epoch at
ImageNet's size, cached in every worker). 'permutation': numpy's
permutation of the files, one array per epoch, as runs made before
2026-12-07 were ordered (their records keep it).
"""

import functools

import numpy as np

FILE_ORDERS = ('index_shuffle', 'permutation')


@functools.lru_cache(maxsize=64)
def _epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed per (seed, epoch): index_shuffle's seed for the epoch."""
  return int(np.random.SeedSequence([seed, 0, epoch]).generate_state(1)[0])


def shuffled(position: int, n: int, seed: int, epoch: int) -> int:
  """The file at `position` of `epoch`'s 'index_shuffle' order of `n` files."""
  from grain.experimental import index_shuffle  # pylint: disable=import-outside-toplevel
  return index_shuffle(position, max_index=n - 1, seed=_epoch_seed(seed, epoch), rounds=4)


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """`epoch`'s whole 'permutation' order of `n` files."""
  return np.random.default_rng([seed, 0, epoch]).permutation(n)
