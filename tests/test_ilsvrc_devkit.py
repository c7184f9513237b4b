"""A bad ILSVRC-2012 devkit or tar is one error line naming the file, the
member (and the line) at fault and the fix; nothing is left behind."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from scipy import io as scipy_io

from resnet_jax import errors
from resnet_jax.data import ilsvrc
from tests import ilsvrc_files
from tests import test_ilsvrc
from tests.processes import REPO

TRUTH = 'data/ILSVRC2012_validation_ground_truth.txt'
# As in the real devkit: the leaves (the classes) are ids 1..N, the inner
# nodes of the hierarchy come after them (n99 is id 4, above the 3 classes).
INNER = 4


def _devkit_with(tmp_path, truth: bytes = None, meta: bytes = None) -> str:
  """The stand-in official files, with the devkit's ground truth or meta.mat
  replaced by raw bytes (the rest as the formats define them)."""
  source = test_ilsvrc._official_files(tmp_path / 'downloads')
  devkit = os.path.join(source, ilsvrc.DEVKIT)
  with tarfile.open(devkit) as tar:
    members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
  with tarfile.open(devkit, 'w:gz') as tar:
    for name, data in members.items():
      if truth is not None and name.endswith(TRUTH):
        data = truth
      if meta is not None and name.endswith('data/meta.mat'):
        data = meta
      ilsvrc_files.add(tar, name, data)
  return source


def _cli(source, data_dir):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.prepare_data',
                         f'--imagenet={source}', f'--data_dir={data_dir}'],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize('truth, line, what', [
    # An inner node's id: was an IndexError traceback (or another class).
    (b'2\n1\n4\n', 3, f"'{INNER}', the id of a synset with subclasses (not a class)"),
    (b'2\n999\n', 2, "'999', not a class id"),
    # 0 filed the image under the last class through a negative index.
    (b'0\n1\n', 1, "'0', not a class id"),
    (b'2\n-1\n', 2, "'-1', not a class id"),
    (b'2\ncat\n', 2, "'cat', not a class id"),  # Was a ValueError traceback.
    (b'2\n\n1\n', 2, 'empty'),  # Would shift every later image's label.
    (b'', 1, 'empty'),
], ids=['inner-node', '999', 'zero', 'negative', 'text', 'blank-inside', 'empty-file'])
def test_a_ground_truth_label_that_is_not_a_class_is_refused_by_line(
    tmp_path, truth, line, what):
  source = _devkit_with(tmp_path, truth=truth)
  devkit = os.path.join(source, ilsvrc.DEVKIT)
  with pytest.raises(errors.UserError) as raised:
    ilsvrc.arrange(source, str(tmp_path / 'data'))
  assert str(raised.value) == (
      f'{devkit}: line {line} of {TRUTH} is {what}; every line must be a class id 1..3 '
      'of data/meta.mat, the label of the validation image of that number: download '
      'ILSVRC2012_devkit_t12.tar.gz from image-net.org again')
  assert not os.path.exists(tmp_path / 'data' / 'imagenet2012')


def test_trailing_blank_lines_and_spaces_are_fine(tmp_path):
  source = _devkit_with(tmp_path, truth=b'2\n1 \n3\n3\n1\n2\n2\n\n\n')
  _, _, truth = ilsvrc.read_devkit(os.path.join(source, ilsvrc.DEVKIT))
  assert truth == test_ilsvrc.VAL_IDS


def _mat(**tables) -> bytes:
  out = io.BytesIO()
  scipy_io.savemat(out, tables)
  return out.getvalue()



@pytest.mark.parametrize('meta, message', [
    # Foreign bytes: scipy raises IndexError, TypeError, MatReadError...
    (b'hello, not a MAT file at all', 'data/meta.mat is damaged (IndexError: '),
    (b'', 'data/meta.mat is damaged (MatReadError: '),
    ('half', 'data/meta.mat is damaged ('),
    (_mat(other=np.arange(3)), 'data/meta.mat has no `synsets` table'),
    (_mat(synsets=np.arange(3)), 'the `synsets` of data/meta.mat are not rows of '
                                 'ILSVRC2012_ID, WNID, words and num_children'),
], ids=['text', 'empty', 'truncated', 'no-synsets', 'no-fields'])
def test_a_damaged_meta_mat_is_one_line_naming_it(tmp_path, meta, message):
  if meta == 'half':
    good = _devkit_with(tmp_path / 'good')
    with tarfile.open(os.path.join(good, ilsvrc.DEVKIT)) as tar:
      whole = next(tar.extractfile(m).read() for m in tar if m.name.endswith('meta.mat'))
    meta = whole[:len(whole) // 2]
  source = _devkit_with(tmp_path, meta=meta)
  devkit = os.path.join(source, ilsvrc.DEVKIT)
  with pytest.raises(errors.UserError) as raised:
    ilsvrc.read_devkit(devkit)
  text = str(raised.value)
  assert text.startswith(f'{devkit}: {message}') and '\n' not in text, text
  assert text.endswith('download ILSVRC2012_devkit_t12.tar.gz from image-net.org again')
  assert 'object at 0x' not in text


@pytest.mark.slow
def test_a_corrupt_devkit_archive_is_one_line_from_the_command(tmp_path):
  # A flipped byte in the gzip stream: tarfile's `r:*` reports every method it
  # tried, one a line (it was a 5-line error).
  source = test_ilsvrc._official_files(tmp_path / 'downloads')
  devkit = os.path.join(source, ilsvrc.DEVKIT)
  with open(devkit, 'r+b') as f:
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 0xFF]))
  result = _cli(source, tmp_path / 'data')
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith(f'error: {devkit} is not a readable devkit archive (read as gzip: ')
  assert line.endswith('download ILSVRC2012_devkit_t12.tar.gz from image-net.org again')
  assert not (tmp_path / 'data').exists() or os.listdir(tmp_path / 'data') == []


def test_a_bad_label_from_the_command_is_one_line(tmp_path):
  source = _devkit_with(tmp_path, truth=b'2\n1\n4\n3\n1\n2\n2\n')
  result = _cli(source, tmp_path / 'data')
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      f'error: {os.path.join(source, ilsvrc.DEVKIT)}: line 3 of {TRUTH} is \'4\', the id '
      'of a synset with subclasses (not a class); every line must be a class id 1..3 of '
      'data/meta.mat, the label of the validation image of that number: download '
      'ILSVRC2012_devkit_t12.tar.gz from image-net.org again']


def test_a_damaged_class_tar_inside_the_train_tar_is_named(tmp_path):
  source = test_ilsvrc._official_files(tmp_path / 'downloads')
  train = os.path.join(source, ilsvrc.TRAIN_TAR)
  # n02.tar's own first header (inside the outer tar) overwritten.
  with tarfile.open(train) as tar:
    inner = next(m for m in tar if m.name == 'n02.tar')
  with open(train, 'r+b') as f:
    f.seek(inner.offset_data)
    f.write(b'\xff' * 512)
  with pytest.raises(errors.UserError) as raised:
    ilsvrc.arrange(source, str(tmp_path / 'data'))
  assert str(raised.value).startswith(f'{train} is damaged in n02.tar (')
  assert str(raised.value).endswith('; download it again')
  assert os.listdir(tmp_path / 'data') == []
