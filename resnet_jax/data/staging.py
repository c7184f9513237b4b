"""A staging folder for a dataset written into `data_dir`, that no stop leaves behind.

A long arrangement (ILSVRC-2012: ~150 GB) writes into `data_dir/.arrange-XXXX/`
and renames the finished dataset into place, so a half-built dataset never
looks like a dataset. SIGTERM and SIGINT (Ctrl-C) remove the staging folder
and end with one `stopped:` line; a run killed outright (kill -9, a lost node)
cannot, so the next run removes what it left. A marker file inside says that
prepare_data made the folder, and its lock, held while the run lives, tells a
dead run's folder from one another run is still writing.

Also the refusal of a dataset already in place (`check_target`), and the
hard links (with a copy where linking fails) that place a download's files
without a second copy on disk.
"""

import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading

from resnet_jax import errors
from resnet_jax.logs import log

PREFIX = '.arrange-'
MARKER = '.prepare_data-staging'  # Locked by the run writing the folder.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Link refusals a copy gets past: another filesystem, a filesystem without
# hard links, a file the kernel will not link for this user, too many links.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP,
            errno.ENOTSUP}


class _Signalled(BaseException):
  """Raised by the signal handler; a BaseException, so that no `except
  Exception` on the way holds it up (as KeyboardInterrupt)."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _remove(folder: str) -> None:
  """Removes `folder`, its marker last: a removal cut short by kill -9 leaves
  a folder the next run still recognises as its own."""
  for entry in os.scandir(folder):
    if entry.name == MARKER:
      continue
    if entry.is_dir(follow_symlinks=False):
      shutil.rmtree(entry.path)
    else:
      os.unlink(entry.path)
  try:
    os.unlink(os.path.join(folder, MARKER))
  except FileNotFoundError:
    pass
  os.rmdir(folder)


def remove_leftovers(data_dir: str) -> list:
  """Removes the staging folders of earlier runs that were killed, saying so
  in one line each; a folder whose run still holds its lock, or one without
  the marker (not made by this version of prepare_data), is left alone.

  Returns:
    The folders removed.
  """
  removed = []
  for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
    if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
      continue
    marker = os.path.join(entry.path, MARKER)
    try:
      fd = os.open(marker, os.O_RDWR)
    except FileNotFoundError:
      log.warning('%s is not a staging folder of this prepare_data (it has no %s); '
                  'left alone: delete it if no prepare_data is writing there',
                  entry.path, MARKER)
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:  # Its run is alive, or this filesystem cannot tell: keep it.
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        log.warning('%s may be the partial copy of a killed prepare_data, but this '
                    'filesystem cannot lock its %s (%s) to tell; left alone: delete it '
                    'if no prepare_data is writing there', entry.path, MARKER, e.strerror)
      continue
    try:
      _remove(entry.path)
    finally:
      os.close(fd)
    log.info('Removed %s, the partial copy of an earlier prepare_data that was '
             'killed before it could clean up', entry.path)
    removed.append(entry.path)
  return removed


def _marked(folder: str) -> int:
  """Puts the marker in `folder`, locked before it takes its name (a rerun
  never finds the marker of a live run unlocked); the lock's descriptor."""
  unnamed = os.path.join(folder, MARKER + '.new')
  fd = os.open(unnamed, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      pass  # No locks here: a rerun cannot take it either, so it keeps the folder.
    os.rename(unnamed, os.path.join(folder, MARKER))
  except OSError:
    os.close(fd)
    raise
  return fd


def check_target(data_dir: str, name: str, train: str) -> str:
  """`data_dir/name`, where a dataset is to be placed; refused if it exists
  (it is left as it is), saying how to train on it: `train`, the flags or
  command."""
  target = os.path.join(data_dir, name)
  if os.path.exists(target):
    raise exists_error(target, train)
  return target


def exists_error(target: str, train: str) -> errors.UserError:
  """The refusal of a dataset already at `target`, which `train` trains on."""
  return errors.UserError(f'{target} already exists; it was left as it is. Train with '
                          f'{train}, or delete it (or use another --data_dir) to rebuild')


class Staging:
  """`with Staging(data_dir) as stage:` write under `stage.path`, then
  `stage.place(folder, target)`; the staging folder is gone afterwards,
  however the block ends.

  On SIGTERM or SIGINT inside the block, the folder is removed and
  `errors.Stopped` (exit code 128 + the signal) says so; any other exception
  leaves after the same removal (an OSError as a `UserError` naming the
  partial copy removed).
  """

  def __init__(self, data_dir: str):
    self.data_dir = data_dir
    self.path = None
    self._fd = None
    self._previous = {}
    self._signum = None
    self._closing = False

  def __enter__(self):
    try:
      os.makedirs(self.data_dir, exist_ok=True)
      remove_leftovers(self.data_dir)
      self.path = tempfile.mkdtemp(dir=self.data_dir, prefix=PREFIX)
      self._fd = _marked(self.path)
    except OSError as e:
      if self.path:  # Unmarked: no later run would remove it.
        shutil.rmtree(self.path, ignore_errors=True)
      raise errors.UserError(f'cannot write in {self.data_dir} ({e}); pass a --data_dir '
                             'you can write in') from e
    if threading.current_thread() is threading.main_thread():
      try:
        for sig in _STOP_SIGNALS:
          self._previous[sig] = signal.signal(sig, self._handle)
      except _Signalled as e:  # Before the block: `with` would not clean up.
        self.__exit__(type(e), e, None)
    return self

  def _handle(self, signum, frame):
    del frame
    if self._signum is None:
      self._signum = signum
      if not self._closing:
        raise _Signalled(signum)

  def place(self, folder: str, target: str) -> None:
    """Moves the finished `folder` (inside the staging folder) to `target`."""
    os.rename(folder, target)

  def __exit__(self, exc_type, exc, tb):
    self._closing = True  # A signal from here on cannot cut the removal short.
    try:
      _remove(self.path)
    finally:
      os.close(self._fd)
      for sig, handler in self._previous.items():
        signal.signal(sig, handler)
    if isinstance(exc, _Signalled):
      raise errors.Stopped(f'{signal.Signals(exc.signum).name}: removed the partial '
                           f'copy in {self.path}; the same command starts over',
                           128 + exc.signum) from None
    if isinstance(exc, OSError):
      raise errors.UserError(f'{exc}; the partial copy in {self.path} was removed: free '
                             f'space in {self.data_dir} (or pass another --data_dir) and '
                             'run the same command again') from exc
    return False


class Linker:
  """Places files as hard links (no second copy on disk), copying where the
  filesystem refuses (another filesystem than the source's, or none with
  hard links)."""

  def __init__(self):
    self.linked = 0
    self.copied = 0
    self.copied_bytes = 0
    self._link = True

  def __call__(self, src: str, dst: str) -> None:
    if self._link:
      try:
        os.link(src, dst)
        self.linked += 1
        return
      except OSError as e:
        if e.errno not in _NO_LINK:
          raise
        if not self.copied:
          log.info('Cannot hard-link %s (%s): copying instead, which takes the '
                   'space of the files again', src, e.strerror)
        # Another filesystem refuses every link: stop asking.
        self._link = e.errno != errno.EXDEV
    shutil.copyfile(src, dst)
    self.copied += 1
    self.copied_bytes += os.path.getsize(dst)
