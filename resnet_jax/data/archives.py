"""Tar archives a user hands in (CIFAR's, Imagenette's, ILSVRC's devkit):
extracted, or refused with a one-line reason that names the archive."""

import re
import tarfile
import zlib

from resnet_jax import errors

# What reading a damaged or foreign archive raises (gzip's BadGzipFile is an
# OSError; a bad deflate stream read in pieces can surface as zlib.error).
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
# tarfile's `r:*` tries every compression and lists each one's refusal on a
# line of its own (`- method gz: ReadError('invalid header')`); a method whose
# magic bytes do not match says so, as below.
_MAGIC_REFUSALS = {'gz': ('gzip', 'not a gzip file'), 'bz2': ('bzip2', 'not a bzip2 file'),
                   'xz': ('xz', 'not an lzma file')}


def reason(e: BaseException) -> str:
  """The one line of `e` worth showing: of the refusals `tarfile.open(...,
  'r:*')` lists, the one of the compression the file is in."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  tried = {}
  for line in lines:
    method, _, why = line.removeprefix('- method ').partition(': ')
    if line.startswith('- method '):
      unwrapped = re.fullmatch(r"\w+\(['\"](.*)['\"]\)", why)
      tried[method] = unwrapped[1] if unwrapped else why
  if not tried:
    return ' '.join(lines) or type(e).__name__
  if 'empty file' in tried.values():
    return 'an empty file'
  for method, (name, refusal) in _MAGIC_REFUSALS.items():
    if method in tried and tried[method] != refusal:  # The file is in this one.
      return f'read as {name}: {tried[method]}'
  return f'not a tar file, plain or compressed: {tried.get("tar", "unreadable")}'


def extract(archive: str, dest: str) -> None:
  """Extracts `archive` into `dest` (tarfile's `data` filter: no member
  lands outside `dest`, no device files, no setuid bits).

  Raises:
    errors.UserError: the archive cannot be read to its end.
    OSError: writing into `dest` failed.
  """
  try:
    with tarfile.open(archive, 'r:*') as tar:
      tar.extractall(dest, filter='data')
  except tarfile.FilterError as e:
    raise errors.UserError(f'archive {archive} holds a member that extraction refuses '
                           f'({e}); it is not a dataset archive') from e
  except READ_ERRORS as e:
    if isinstance(e, OSError) and e.errno is not None:
      raise  # The disk (full, not writable), not the archive: the caller says so.
    raise errors.UserError(f'archive {archive} is truncated or damaged ({reason(e)}); '
                           'download it again') from e
