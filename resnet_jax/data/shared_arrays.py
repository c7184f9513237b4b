"""Read-only numpy arrays in shared memory that pickle as their name.

grain pickles the dataset, file list included, into each of its worker
processes: at ImageNet's 1.28M files that is 46 MB of paths and labels per
worker, 16 copies on a 64-core node. A `Shared` array is written once into
POSIX shared memory by the process that makes it; a worker that unpickles it
maps the same pages, so the host holds one copy whatever the worker count.

The segment lives as long as the `Shared` object of the process that made
it (and is removed by multiprocessing's resource tracker if that process is
killed); workers only map it. A kill of the whole process group (a
scheduler's SIGKILL after the grace period) takes the tracker too: the
segment is named after its process (`PREFIX<pid>_...`), and the next one
made on the host removes those whose process is gone.
"""

import errno
import os
import secrets
import sys
import weakref
from multiprocessing import shared_memory
from typing import Optional

import numpy as np

# Where Linux keeps POSIX shared memory.
SHM_FOLDER = '/dev/shm'
# Segment names: PREFIX<pid of the process that made it>_<random>.
PREFIX = 'resnet_jax_'


class Shared:
  """`array`: a read-only copy of an array in shared memory.

  Pickles as the segment's name: unpickling (in a grain worker) maps the
  same memory instead of copying the data.
  """

  def __init__(self, array: np.ndarray):
    """Raises OSError (ENOSPC) where shared memory has no room for it."""
    array = np.ascontiguousarray(array)
    remove_orphans()
    _check_room(array.nbytes)
    name = f'{PREFIX}{os.getpid()}_{secrets.token_hex(4)}'
    self._segment = shared_memory.SharedMemory(name, create=True, size=max(1, array.nbytes))
    self.array = np.ndarray(array.shape, array.dtype, buffer=self._segment.buf)
    self.array[...] = array
    self.array.flags.writeable = False
    # Removed with this object; `unlink` also unregisters it from the tracker.
    weakref.finalize(self, _remove, self._segment)

  def __reduce__(self):
    return _attach, (self._segment.name, self.array.shape, self.array.dtype.str)


def remove_orphans() -> list:
  """Removes the segments whose process is gone (killed with its whole
  process group, resource tracker included); returns their names."""
  try:
    names = os.listdir(SHM_FOLDER)
  except OSError:  # No /dev/shm (not Linux): the tracker is all there is.
    return []
  removed = []
  for name in names:
    pid = name[len(PREFIX):].split('_')[0]
    if not (name.startswith(PREFIX) and pid.isdigit()):
      continue
    try:
      os.kill(int(pid), 0)
      continue  # Alive (or another user's): not ours to remove.
    except ProcessLookupError:
      pass
    except PermissionError:
      continue
    try:
      os.unlink(os.path.join(SHM_FOLDER, name))
      removed.append(name)
    except OSError:
      pass
  return removed


def share_all(what: str, *arrays: np.ndarray) -> Optional[tuple]:
  """`Shared` copies of `arrays`, or None (logged, naming `what`) where
  shared memory has no room for them: each worker then gets its own copy."""
  try:
    return tuple(Shared(a) for a in arrays)
  except OSError as e:
    from resnet_jax.logs import log  # pylint: disable=import-outside-toplevel
    log.warning('%s stays in each worker (%d bytes each): no shared memory for it (%s)',
                what, sum(a.nbytes for a in arrays), e)
    return None


def _check_room(size: int) -> None:
  """A segment is a sparse file in /dev/shm: writing past the room there
  (64 MB in a default Docker container) kills the process with SIGBUS, so
  the room is checked first."""
  if os.path.isdir(SHM_FOLDER):
    fs = os.statvfs(SHM_FOLDER)
    if fs.f_bavail * fs.f_frsize < size:
      raise OSError(errno.ENOSPC, f'{SHM_FOLDER} has {fs.f_bavail * fs.f_frsize:,} bytes '
                    f'free, not the {size:,} bytes asked for')


def _close(segment: shared_memory.SharedMemory) -> None:
  try:
    segment.close()
  except BufferError:  # A view of it outlived this object: unmapped at exit.
    pass


def _remove(segment: shared_memory.SharedMemory) -> None:
  _close(segment)
  try:
    segment.unlink()
  except FileNotFoundError:
    pass


class _Attached(Shared):
  """A `Shared` mapped by another process: it never removes the segment."""

  def __init__(self, name: str, shape: tuple, dtype: str):  # pylint: disable=super-init-not-called
    # Python 3.13 can map without telling the resource tracker; before, a
    # worker shares its parent's tracker (spawn passes it on), where the
    # name is registered already.
    kwargs = {'track': False} if sys.version_info >= (3, 13) else {}
    self._segment = shared_memory.SharedMemory(name=name, **kwargs)
    self.array = np.ndarray(shape, np.dtype(dtype), buffer=self._segment.buf)
    self.array.flags.writeable = False
    weakref.finalize(self, _close, self._segment)


def _attach(name: str, shape: tuple, dtype: str) -> Shared:
  return _Attached(name, shape, dtype)
