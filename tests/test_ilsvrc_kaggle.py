"""Kaggle's copy of ILSVRC-2012 (the "ImageNet Object Localization Challenge"
download) arranged into the same class folders as the official files."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.data import ilsvrc_kaggle
from resnet_jax.data import image_folder
from tests import jpeg_files
from tests.processes import REPO

# Three real classes, in the mapping file's (the official) order.
CLASSES = [('n01440764', 'tench, Tinca tinca'), ('n01443537', 'goldfish, Carassius auratus'),
           ('n01484850', 'great white shark, white shark, man-eater, man-eating shark, '
                         'Carcharodon carcharias')]
# Validation image number -> its class; the CSV lists them out of order, as Kaggle's does.
VAL = {1: 'n01484850', 2: 'n01440764', 3: 'n01443537', 4: 'n01440764', 5: 'n01484850'}
DATA = ('ILSVRC', 'Data', 'CLS-LOC')


def _image(seed):
  return jpeg_files.jpeg_bytes(jpeg_files.pattern(12, 16, seed=seed))


def kaggle_download(root, val=VAL, train_per_class=3, test=4):
  """The unzipped download's layout, with its files in their formats."""
  data = os.path.join(root, *DATA)
  for i, (wnid, _) in enumerate(CLASSES):
    os.makedirs(os.path.join(data, 'train', wnid))
    for j in range(train_per_class):
      with open(os.path.join(data, 'train', wnid, f'{wnid}_{1000 + j}.JPEG'), 'wb') as f:
        f.write(_image(10 * i + j))
  for split in ('val', 'test'):
    os.makedirs(os.path.join(data, split))
  for number in val:
    with open(os.path.join(data, 'val', f'ILSVRC2012_val_{number:08d}.JPEG'), 'wb') as f:
      f.write(_image(100 + number))
  for number in range(1, test + 1):  # Unlabelled: never a split.
    with open(os.path.join(data, 'test', f'ILSVRC2012_test_{number:08d}.JPEG'), 'wb') as f:
      f.write(_image(200 + number))
  for folder in ('Annotations/CLS-LOC/val', 'ImageSets/CLS-LOC'):
    os.makedirs(os.path.join(root, 'ILSVRC', folder))
  with open(os.path.join(root, 'LOC_synset_mapping.txt'), 'w') as f:
    f.writelines(f'{wnid} {names}\n' for wnid, names in CLASSES)
  with open(os.path.join(root, 'LOC_val_solution.csv'), 'w') as f:
    f.write('ImageId,PredictionString\n')
    for number in sorted(val, reverse=True):  # Boxes: `wnid x0 y0 x1 y1`, repeated.
      f.write(f'ILSVRC2012_val_{number:08d},{val[number]} 1 2 11 9 {val[number]} 0 0 5 5 \n')
  with open(os.path.join(root, 'LOC_train_solution.csv'), 'w') as f:
    f.write('ImageId,PredictionString\nn01440764_1000,n01440764 1 1 5 5 \n')
  with open(os.path.join(root, 'LOC_sample_submission.csv'), 'w') as f:
    f.write('ImageId,PredictionString\nILSVRC2012_test_00000001,n01440764 n01443537\n')
  return str(root)


def files(folder):
  """The files under `folder`, as paths relative to it."""
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize('below', ['', 'ILSVRC', 'ILSVRC/Data', 'ILSVRC/Data/CLS-LOC'])
def test_the_root_or_a_folder_below_it_is_found(tmp_path, below):
  root = kaggle_download(tmp_path / 'kaggle', train_per_class=1, test=0)
  assert ilsvrc_kaggle.find(os.path.join(root, below)) == (root, os.path.join(root, *DATA))
  assert ilsvrc_kaggle.find(os.path.join(root, 'ILSVRC', 'Annotations')) is None
  assert ilsvrc_kaggle.find(str(tmp_path)) is None


def test_kaggle_download_becomes_class_folders_of_hard_links(tmp_path):
  root = kaggle_download(tmp_path / 'kaggle')
  before = {p: open(os.path.join(root, p), 'rb').read() for p in files(root)}
  out = tmp_path / 'data'
  info = ilsvrc_kaggle.arrange(os.path.join(root, *DATA), str(out))
  target = out / 'imagenet2012'
  assert (info['path'], info['train'], info['val'], info['classes'], info['linked'],
          info['copied']) == (str(target), 9, 5, 3, 14, 0)
  assert sorted(os.listdir(out)) == ['imagenet2012']  # No staging left.
  data = os.path.join(root, *DATA)
  # Validation images in the class their CSV row names; test/ nowhere.
  for number, wnid in VAL.items():
    name = f'ILSVRC2012_val_{number:08d}.JPEG'
    placed = target / 'val' / wnid / name
    assert os.stat(placed).st_ino == os.stat(os.path.join(data, 'val', name)).st_ino
  assert sorted(os.listdir(target)) == ['classes.txt', 'train', 'val']
  assert not [p for p in files(target) if 'test' in p]
  for wnid, _ in CLASSES:
    names = sorted(os.listdir(target / 'train' / wnid))
    assert names == sorted(os.listdir(os.path.join(data, 'train', wnid)))
    for name in names:  # Hard links: the same file, no second copy.
      assert (os.stat(target / 'train' / wnid / name).st_ino ==
              os.stat(os.path.join(data, 'train', wnid, name)).st_ino)
  with open(target / 'classes.txt') as f:
    assert f.read() == ''.join(f'{w} {n}\n' for w, n in CLASSES)
  # Labels in the official order; the evaluation split is val/.
  assert image_folder.class_folders(str(target)) == tuple(w for w, _ in CLASSES)
  val = image_folder.file_split(str(target), 'test')
  assert sorted(np.bincount(val.labels).tolist()) == [1, 2, 2]
  # The download is as it was.
  assert {p: open(os.path.join(root, p), 'rb').read() for p in files(root)} == before


def test_another_filesystem_gets_a_copy(tmp_path, monkeypatch):
  root = kaggle_download(tmp_path / 'kaggle')
  calls = []

  def refuse(src, dst, **kwargs):
    del dst, kwargs
    calls.append(src)
    raise OSError(errno.EXDEV, 'Invalid cross-device link')
  monkeypatch.setattr(os, 'link', refuse)
  info = ilsvrc_kaggle.arrange(root, str(tmp_path / 'data'))
  assert (info['linked'], info['copied']) == (0, 14) and 'copied' in info['how']
  assert len(calls) == 1  # EXDEV holds for every file: asked once.
  target = tmp_path / 'data' / 'imagenet2012'
  name = 'ILSVRC2012_val_00000001.JPEG'
  copy, original = target / 'val' / VAL[1] / name, os.path.join(root, *DATA, 'val', name)
  assert os.stat(copy).st_ino != os.stat(original).st_ino
  assert copy.read_bytes() == open(original, 'rb').read()


def _refused(source, out, message):
  with pytest.raises(errors.UserError, match=message):
    ilsvrc_kaggle.arrange(source, out)
  assert not os.path.exists(out) or os.listdir(out) == []  # Nothing left.


def test_missing_or_wrong_label_files_are_refused_by_name(tmp_path):
  root = kaggle_download(tmp_path / 'kaggle', train_per_class=1, test=0)
  out = str(tmp_path / 'data')
  csv_path = os.path.join(root, 'LOC_val_solution.csv')
  mapping = os.path.join(root, 'LOC_synset_mapping.txt')
  good_csv = open(csv_path).read()
  os.rename(csv_path, csv_path + '.away')
  _refused(root, out, f'{csv_path} is missing .*the validation labels.*unzip')
  os.rename(csv_path + '.away', csv_path)
  os.rename(mapping, mapping + '.away')
  _refused(root, out, f'{mapping} is missing .*the class list')
  os.rename(mapping + '.away', mapping)
  # A row naming a class the mapping does not list: its line.
  with open(csv_path, 'w') as f:
    f.write(good_csv.replace('ILSVRC2012_val_00000004,n01440764',
                             'ILSVRC2012_val_00000004,n09999999'))
  _refused(root, out, 'line 3 labels ILSVRC2012_val_00000004 n09999999, which is not a '
           'class of LOC_synset_mapping.txt')
  with open(csv_path, 'w') as f:
    f.write('image,label\n')
  _refused(root, out, 'does not start with `ImageId,PredictionString`')


def test_a_validation_image_without_a_label_is_refused(tmp_path):
  root = kaggle_download(tmp_path / 'kaggle', train_per_class=1, test=0)
  out = str(tmp_path / 'data')
  stray = os.path.join(root, *DATA, 'val', 'ILSVRC2012_val_00000099.JPEG')
  with open(stray, 'wb') as f:
    f.write(_image(0))
  _refused(root, out, f'{stray} has no label in .*LOC_val_solution.csv')
  os.remove(stray)
  os.remove(os.path.join(root, *DATA, 'val', 'ILSVRC2012_val_00000003.JPEG'))
  _refused(root, out, 'lacks ILSVRC2012_val_00000003, labelled in .*LOC_val_solution.csv; '
           'the download is incomplete')
  assert os.path.isfile(os.path.join(root, 'LOC_val_solution.csv'))  # Nothing of theirs gone.


def test_a_train_folder_the_mapping_does_not_list_is_refused_with_the_fix(tmp_path):
  root = kaggle_download(tmp_path / 'kaggle', train_per_class=1, test=0)
  os.makedirs(os.path.join(root, *DATA, 'train', 'n09999999'))
  _refused(root, str(tmp_path / 'data'), 'train/n09999999 is not a class of '
           'LOC_synset_mapping.txt: move it out of train/ if you added it, else unzip')


@pytest.mark.slow
def test_the_command_arranges_kaggle_and_names_the_imagenet_recipe(tmp_path):
  kaggle_download(tmp_path / 'kaggle', train_per_class=1, test=1)
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.prepare_data', '--imagenet=~/kaggle',
       '--data_dir=~/data'], capture_output=True, text=True, cwd=cwd, timeout=300,
      env={**os.environ, 'HOME': str(tmp_path), 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  out = tmp_path / 'data'
  assert result.stdout.splitlines() == [
      f'Arranged ILSVRC-2012 in {out / "imagenet2012"}: 3 train and 5 val images of 3 '
      "classes from Kaggle's copy, as hard links (no space taken).",
      'Train with python -m resnet_jax.main --config configs/imagenet.py --workdir runs/r50 '
      f'--config.data_dir={out}']
  assert os.listdir(cwd) == [] and sorted(os.listdir(out)) == ['imagenet2012']
