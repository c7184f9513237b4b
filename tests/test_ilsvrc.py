"""Preparing ImageNet-size data: the official ILSVRC-2012 files arranged into
class folders, and image-folder archives of any size (Imagenette's layout)."""

import io
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax import prepare_data
from resnet_jax.data import copy_progress
from resnet_jax.data import ilsvrc
from resnet_jax.data import image_folder
from tests import ilsvrc_files
from tests import jpeg_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Three leaf classes in challenge-id order (not wnid order, as in the real
# devkit), and one inner node the arrangement must ignore.
SYNSETS = [(1, 'n02', 'goldfish, Carassius auratus', 0), (2, 'n01', 'tench, Tinca tinca', 0),
           (3, 'n03', 'great white shark', 0), (4, 'n99', 'fish', 3)]
VAL_IDS = [2, 1, 3, 3, 1, 2, 2]


def _official_files(folder, val_ids=VAL_IDS):
  """Tiny stand-ins for the three official files, in their layouts."""
  os.makedirs(folder, exist_ok=True)
  ilsvrc_files.write_devkit(os.path.join(folder, ilsvrc.DEVKIT), SYNSETS, val_ids)
  # The images; the devkit may label fewer.
  ilsvrc_files.write_val_tar(os.path.join(folder, ilsvrc.VAL_TAR), [
      jpeg_files.jpeg_bytes(jpeg_files.pattern(30 + i, 40, seed=i)) for i in range(len(VAL_IDS))])
  ilsvrc_files.write_train_tar(os.path.join(folder, ilsvrc.TRAIN_TAR), {
      wnid: [(f'{wnid}_{j}.JPEG', jpeg_files.jpeg_bytes(jpeg_files.pattern(50, 60 + j)))
             for j in range(2)] for wnid in ('n01', 'n02', 'n03')})
  return str(folder)


@pytest.mark.slow
def test_the_official_files_become_class_folders_with_readable_names(tmp_path):
  source = _official_files(tmp_path / 'downloads')
  out = tmp_path / 'data'
  # `~` after `=` reaches the program unexpanded (the shell expands it only at
  # a word's start): it means HOME, never a folder named `~`.
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.prepare_data',
                           '--imagenet=~/downloads', '--data_dir=~/data'],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, 'HOME': str(tmp_path), 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.listdir(cwd) == []
  # The hint trains the ImageNet recipe (without --config: CIFAR's ResNet-20).
  assert result.stdout.splitlines() == [
      f'Arranged ILSVRC-2012 in {out / "imagenet2012"}: 6 train and 7 val images of 3 '
      'classes.',
      'Train with python -m resnet_jax.main --config configs/imagenet.py --workdir runs/r50 '
      f'--config.data_dir={out}']
  root = out / 'imagenet2012'
  # Validation images sit in the class their ground-truth id names.
  wnid_of = {s[0]: s[1] for s in SYNSETS}
  for i, class_id in enumerate(VAL_IDS):
    assert (root / 'val' / wnid_of[class_id] / f'ILSVRC2012_val_{i + 1:08d}.JPEG').is_file()
  assert sorted(os.listdir(root / 'train' / 'n01')) == ['n01_0.JPEG', 'n01_1.JPEG']
  assert image_folder.class_names(str(root)) == ('tench', 'goldfish', 'great white shark')
  val = image_folder.file_split(str(root), 'test')
  assert len(val) == 7 and sorted(np.bincount(val.labels)) == [2, 2, 3]
  assert sorted(os.listdir(out)) == ['imagenet2012']  # No staging left.
  # Run again: refused, the first copy left alone, the same command said again.
  with pytest.raises(errors.UserError, match='already exists; it was left as it is. Train '
                     'with python -m resnet_jax.main --config configs/imagenet.py '):
    ilsvrc.arrange(source, str(out))


def test_missing_or_mismatched_official_files_are_refused_leaving_nothing(tmp_path):
  source = _official_files(tmp_path / 'downloads', val_ids=VAL_IDS[:-1])
  out = tmp_path / 'data'
  with pytest.raises(errors.UserError, match='beyond the 6 labels of the devkit'):
    ilsvrc.arrange(source, str(out))
  assert os.listdir(out) == []
  # A truncated tar is named, and nothing is left of the partial copy.
  source = _official_files(tmp_path / 'truncated')
  train = os.path.join(source, ilsvrc.TRAIN_TAR)
  with open(train, 'r+b') as f:
    f.truncate(os.path.getsize(train) // 2)
  with pytest.raises(errors.UserError, match=f'{train} is damaged .*download it again'):
    ilsvrc.arrange(source, str(out))
  assert os.listdir(out) == []
  os.remove(train)
  with pytest.raises(errors.UserError, match=f'lacks {ilsvrc.TRAIN_TAR}: put the three'):
    ilsvrc.arrange(source, str(out))
  # A mistyped --imagenet: said so, not taken for a folder lacking the files.
  typo = str(tmp_path / 'downlaods')
  with pytest.raises(errors.UserError, match=re.escape(
      f'{typo} does not exist; pass the folder holding {ilsvrc.TRAIN_TAR}, ')):
    ilsvrc.arrange(typo, str(out))


@pytest.mark.slow
def test_an_image_folder_archive_of_any_size_is_checked_and_placed(tmp_path):
  # Imagenette's layout: NAME/train/<wnid>/*.JPEG and NAME/val/<wnid>/*.JPEG.
  jpeg_files.write_folder(tmp_path / 'src', name='imagenette2-320', names=False)
  archive = tmp_path / 'imagenette2-320.tgz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tmp_path / 'src' / 'imagenette2-320', arcname='imagenette2-320')
  out = tmp_path / 'data'
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.prepare_data', '--archive',
                           str(archive), '--data_dir', str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '36 train and 12 test images of 3 classes (' in result.stdout
  # Images larger than 32x32 train with the ImageNet recipes, not the default CIFAR one.
  assert result.stdout.splitlines()[-1].startswith(
      f'Train with --config configs/imagenet.py --config.dataset=imagenette2-320 '
      f'--config.data_dir={out} (the ImageNet recipes at 224 px')
  assert (out / 'imagenette2-320' / 'val' / 'n01').is_dir()
  with pytest.raises(errors.UserError, match='already exists.*configs/imagenet.py'):
    prepare_data.prepare_image_folder(str(archive), 'imagenette2-320', str(out))
  # A file that is not an image is refused by name, nothing placed.
  (tmp_path / 'src' / 'imagenette2-320' / 'val' / 'n02' / 'bad.JPEG').write_bytes(b'')
  with pytest.raises(errors.UserError, match='val/n02/bad.JPEG is not a readable image'):
    prepare_data.prepare_image_folder(str(tmp_path / 'src' / 'imagenette2-320'),
                                      'other', str(out))
  assert sorted(os.listdir(out)) == ['imagenette2-320']


def test_arranging_the_tars_reports_bytes_read_of_their_total(tmp_path, monkeypatch):
  source = _official_files(tmp_path / 'downloads')
  meters = []

  class Recording(copy_progress.Meter):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.seen = []
      meters.append(self)

    def update(self, files, size):
      super().update(files, size)
      self.seen.append((files, size))
  monkeypatch.setattr(copy_progress, 'Meter', Recording)
  ilsvrc.arrange(source, str(tmp_path / 'data'))
  (meter,) = meters
  tars = sum(os.path.getsize(os.path.join(source, f)) for f in (ilsvrc.VAL_TAR, ilsvrc.TRAIN_TAR))
  assert meter.by_bytes and meter.total == tars
  # Every file advances it, the bytes never go back, and it ends at the total.
  files, sizes = zip(*meter.seen)
  assert list(files[:13]) == list(range(1, 14)) and list(sizes) == sorted(sizes)
  assert 0 < sizes[0] < tars and meter.seen[-1] == (13, tars)


def test_the_progress_line_says_files_bytes_rate_and_time_left(monkeypatch):
  gib = 1024 ** 3
  # On a terminal: a bar of bytes with the files beside it.
  stream = io.StringIO()
  with copy_progress.Meter('Arranging ILSVRC-2012', 4 * gib, by_bytes=True, stream=stream,
                           enabled=True) as meter:
    meter.update(1200, gib)
  assert '1.00G/4.00G' in stream.getvalue() and '1,200 files' in stream.getvalue()
  # In a log: a line a minute.
  lines = []
  monkeypatch.setattr(copy_progress.log, 'info', lambda fmt, *a: lines.append(fmt % a))
  meter = copy_progress.Meter('Arranging ILSVRC-2012', 4 * gib, by_bytes=True,
                              enabled=False, every_s=0)
  meter.update(1200, gib)
  assert len(lines) == 1 and lines[0].startswith('Arranging ILSVRC-2012: 1,200 files, 1.00GB '
                                                 'of 4.00GB read (25%), ')
  assert meter.line(8.0) == ('Arranging ILSVRC-2012: 1,200 files, 1.00GB of 4.00GB read '
                             '(25%), 128MB/s, ~24s left')
  files = copy_progress.Meter('Arranging', 1000, by_bytes=False, enabled=False)
  files.update(250, 0)
  assert files.line(5.0) == 'Arranging: 250 of 1,000 files (25%), 50 files/s, ~15s left'
  unknown = copy_progress.Meter('Arranging', None, by_bytes=False, enabled=False)
  unknown.update(250, 3 * 1024 ** 2)
  assert unknown.line(5.0) == 'Arranging: 250 files, 50 files/s, 3.00MB copied'
