"""One run per workdir: an OS file lock that ends with the process holding it.

Two runs on one workdir (a double submit, a requeue while the old job still
runs) would delete each other's unfinished checkpoints. A run that writes to a
workdir holds `flock` on `WORKDIR/run.lock`; a second run is refused with the
holder's host, pid and start time. The kernel drops the lock when its holder
exits in any way (kill -9 included), so a dead run never blocks the next one;
on NFS, Linux maps `flock` to byte-range locks that the server releases when
the client's lease ends (a lost node). The file itself stays, holding the
last holder's description; only the lock matters.

In a multi-process run, process 0 takes the lock and tells the others, and
every process then reads the lock file back: all of them must see the file
process 0 wrote (one shared filesystem), or the run is refused before any
process writes a checkpoint or metric to a disk of its own.
"""

import datetime
import errno
import fcntl
import json
import os
import secrets
import socket
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from resnet_jax import errors
from resnet_jax.workdir import run_record

FILE = 'run.lock'


def _busy_error(workdir: str) -> errors.UserError:
  try:
    with open(os.path.join(workdir, FILE)) as f:
      holder = json.load(f)
    who = (f"pid {holder['pid']} on {holder['host']}, running since "
           f"{holder['since']}")
  except (OSError, ValueError, KeyError):
    who = 'another process'
  return errors.UserError(f'workdir {workdir} is in use by {who}; wait for that run '
                          'to end (or stop it), or pass another --workdir')


def _try_lock(path: str) -> Optional[int]:
  """An fd holding the lock on `path` (created if missing), or None if
  another process holds it."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return None
    raise
  return fd


def _agree(ok: bool) -> bool:
  """Process 0's answer, on every process."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def check_free(workdir: str) -> None:
  """Refuses a workdir another run holds, changing nothing on disk.

  Raises:
    errors.UserError: naming the holder.
  """
  ok = jax.process_index() != 0 or not is_held(workdir)
  if not _agree(ok):
    raise _busy_error(workdir)


def is_held(workdir: str) -> bool:
  """Whether a live process holds `workdir`'s lock; probes, changes nothing."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):  # No file: nobody holds it.
    return False
  fd = _try_lock(path)
  if fd is None:
    return True
  os.close(fd)  # Closing drops the probe's lock.
  return False


class Lock:
  """Holds `workdir` for this run; `release()` (or process exit) frees it."""

  def __init__(self, workdir: str):
    """Creates `workdir` if needed and locks it.

    Raises:
      errors.UserError: the workdir cannot be created or written, or another
        run holds it.
    """
    self.workdir = workdir
    self._fd = None
    ok, problem = True, None
    created = not os.path.isdir(workdir)
    if jax.process_index() == 0:
      try:
        os.makedirs(workdir, exist_ok=True)
        self._fd = _try_lock(os.path.join(workdir, FILE))
        ok = self._fd is not None
      except OSError as e:
        ok, problem = False, e
    if not _agree(ok):
      if problem is not None or jax.process_index() != 0 and not os.path.isdir(workdir):
        reason = problem.strerror if problem else 'see process 0'
        raise errors.UserError(f'cannot write to workdir {workdir} ({reason}); '
                               'choose a writable --workdir')
      raise _busy_error(workdir)
    token = secrets.token_hex(8)  # Process 0's is the one that counts.
    if self._fd is not None:
      since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
      holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': since,
                'command': run_record.command_line(), 'token': token}
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, (json.dumps(holder) + '\n').encode(), 0)
      os.fsync(self._fd)  # Visible to the other hosts of a network filesystem.
    if jax.process_count() > 1:
      self._check_shared(token, created)

  def _check_shared(self, token: str, created: bool) -> None:
    """Refuses a run whose processes do not all see process 0's lock file."""
    token = bytes(multihost_utils.broadcast_one_to_all(
        np.frombuffer(bytes.fromhex(token), np.uint8))).hex()
    try:
      with open(os.path.join(self.workdir, FILE)) as f:
        seen = json.load(f).get('token')
    except (OSError, ValueError):
      seen = None
    oks = np.asarray(multihost_utils.process_allgather(np.int32(seen == token)))
    if oks.all():
      return
    blind = [i for i, ok in enumerate(oks.reshape(-1)) if not ok]
    if self._fd is not None:
      self.release()
      os.remove(os.path.join(self.workdir, FILE))
      if created and not os.listdir(self.workdir):
        os.rmdir(self.workdir)  # Leave no trace of a refused run.
    raise errors.UserError(
        f'process(es) {", ".join(map(str, blind))} do not see the workdir {self.workdir} '
        'that process 0 writes (its run.lock is missing or another one there); every '
        'process needs the same --workdir on a shared filesystem (an absolute path '
        'on NFS, Lustre or a mounted bucket), not a disk of its own')

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
