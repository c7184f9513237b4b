"""An arrangement stopped part-way leaves no staging folder: SIGTERM and Ctrl-C
remove it with one line; what kill -9 leaves, the next run removes, never the
folder of a run still alive."""

import errno
import os
import signal
import sys

import pytest

from resnet_jax import errors
from resnet_jax.data import staging
from tests import processes
from tests import test_ilsvrc
from tests import test_ilsvrc_kaggle

# Pauses prepare_data once it has placed 3 files (links, or the tars' members).
_AFTER_3_FILES = '''
from resnet_jax.data import ilsvrc
done = []

def placed(path):
  done.append(path)
  if len(done) == 3:
    pause(path)

real_link, real_write = os.link, ilsvrc._write
def link(src, dst, **kwargs):
  real_link(src, dst, **kwargs)
  placed(dst)
def write(data, path):
  real_write(data, path)
  placed(path)
os.link, ilsvrc._write = link, write
'''


def _start(tmp_path, name, source, data_dir):
  """The paused run and the staging folder it writes in, once it is there."""
  proc, placed = processes.start_paused(_AFTER_3_FILES, str(tmp_path / f'{name}.ready'),
                                        [f'--imagenet={source}', f'--data_dir={data_dir}'])
  try:
    folder = os.path.join(data_dir, os.path.relpath(placed, data_dir).split(os.sep)[0])
    assert os.path.basename(folder).startswith('.arrange-') and os.path.isfile(placed)
  except BaseException:
    proc.kill()  # Never left paused behind a failed test.
    raise
  return proc, folder


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_a_signal_removes_the_partial_copy_with_one_line(tmp_path, signum):
  # SIGTERM on Kaggle's download (hard links), Ctrl-C on the official tars.
  if signum == signal.SIGTERM:
    source = test_ilsvrc_kaggle.kaggle_download(tmp_path / 'kaggle')
  else:
    source = test_ilsvrc._official_files(tmp_path / 'downloads')
  before = test_ilsvrc_kaggle.files(source)
  data_dir = str(tmp_path / 'data')
  proc, folder = _start(tmp_path, 'run', source, data_dir)
  processes.stop_paused(proc, signum, folder)
  assert os.listdir(data_dir) == []
  assert test_ilsvrc_kaggle.files(source) == before  # The download is untouched.


@pytest.mark.slow
def test_a_rerun_removes_what_kill_9_left_but_not_a_live_runs_folder(tmp_path):
  source = test_ilsvrc_kaggle.kaggle_download(tmp_path / 'kaggle')
  data_dir = str(tmp_path / 'data')
  live, live_staging = _start(tmp_path, 'live', source, data_dir)
  try:
    killed, killed_staging = _start(tmp_path, 'killed', source, data_dir)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert os.path.isdir(killed_staging) and os.path.isdir(live_staging)
    # A folder of the same prefix without the marker (an older prepare_data's,
    # or someone's own) is named but kept.
    unmarked = os.path.join(data_dir, '.arrange-older')
    os.makedirs(os.path.join(unmarked, 'imagenet2012'))
    rerun = processes.Background([sys.executable, '-m', 'resnet_jax.prepare_data',
                                  f'--imagenet={source}', f'--data_dir={data_dir}'])
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    removed = [l for l in stderr.splitlines() if 'Removed' in l]
    assert len(removed) == 1 and removed[0].endswith(
        f'Removed {killed_staging}, the partial copy of an earlier prepare_data that was '
        'killed before it could clean up'), stderr
    assert f'{unmarked} is not a staging folder of this prepare_data' in stderr
    assert 'Arranged ILSVRC-2012' in stdout
    assert not os.path.exists(killed_staging)
    assert os.path.isdir(live_staging) and os.path.isdir(unmarked)
    assert live.poll() is None  # Still paused, its folder intact.
    processes.stop_paused(live, signal.SIGTERM, live_staging)
  finally:
    live.kill()
  assert sorted(os.listdir(data_dir)) == ['.arrange-older', 'imagenet2012']


def test_a_folder_this_filesystem_cannot_lock_is_named_and_kept(tmp_path, monkeypatch):
  # Without locks a dead run's folder cannot be told from a live one's.
  left = tmp_path / '.arrange-dead'
  left.mkdir()
  (left / staging.MARKER).write_text('')
  warnings = []
  monkeypatch.setattr(staging.log, 'warning', lambda fmt, *a: warnings.append(fmt % a))

  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, 'No locks available')
  monkeypatch.setattr(staging.fcntl, 'flock', no_locks)
  assert staging.remove_leftovers(str(tmp_path)) == []
  assert left.is_dir() and len(warnings) == 1 and warnings[0].startswith(
      f'{left} may be the partial copy of a killed prepare_data, but this filesystem '
      f'cannot lock its {staging.MARKER} (No locks available) to tell; left alone')


def test_a_staging_folder_that_cannot_be_marked_is_removed_in_one_line(tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'data')
  real_open = os.open

  def full(path, *args, **kwargs):
    if staging.MARKER in path:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_open(path, *args, **kwargs)
  monkeypatch.setattr(os, 'open', full)
  with pytest.raises(errors.UserError, match=f'^cannot write in {data_dir} '):
    with staging.Staging(data_dir):
      pytest.fail('entered')
  monkeypatch.undo()
  assert os.listdir(data_dir) == []  # No unmarked folder a rerun would keep.
  # A write that fails inside: the copy removed, and what to do next.
  with pytest.raises(errors.UserError, match='No space left on device; the partial copy '
                     f'in {data_dir}/.arrange-.* was removed: free space in {data_dir} '
                     r'\(or pass another --data_dir\)'):
    with staging.Staging(data_dir):
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert os.listdir(data_dir) == []
