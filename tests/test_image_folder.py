"""Image-folder datasets: reading, normalisation, refusals, prepare_data, and
train/eval/predict where TensorFlow cannot be imported."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from resnet_jax.data import datasets
from resnet_jax import errors
from resnet_jax.data import image_folder
from resnet_jax import prepare_data
from tests import cifar_archives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy(tiny_folder, tmp_path):
  root = tmp_path / 'data'
  shutil.copytree(os.path.join(tiny_folder['data_dir'], tiny_folder['name']),
                  root / 'ds')
  return root, root / 'ds'


def test_folder_gives_the_pixels_labels_and_sorted_classes(tiny_folder):
  source = datasets.resolve(tiny_folder['name'], tiny_folder['data_dir'])
  assert (source.kind, source.num_classes) == ('image_folder', 10)
  for split in ('train', 'test'):
    got = datasets.load_split(source, split)
    images, labels = tiny_folder['arrays'][split]
    # Class by class, files in name order: example i was written as i's file.
    order = np.lexsort((np.arange(len(labels)), labels))
    np.testing.assert_array_equal(got.labels, labels[order])
    np.testing.assert_array_equal(got.images, images[order])  # PNG is lossless.
    assert got.class_names == tuple(sorted(cifar_archives.CLASSES))


def test_normalisation_is_measured_on_the_training_images(tiny_folder):
  source = datasets.resolve(tiny_folder['name'], tiny_folder['data_dir'])
  mean, std = datasets.normalization(source, datasets.load_split(source, 'train'))
  pixels = tiny_folder['arrays']['train'][0].reshape(-1, 3) / 255.0
  # Rounded to 6 decimals when measured.
  np.testing.assert_allclose(mean, pixels.mean(0), atol=6e-7)
  np.testing.assert_allclose(std, pixels.std(0), atol=6e-7)
  # tfds's CIFAR keeps the published values.
  assert datasets.normalization(datasets.resolve('cifar10', None), None) == \
      datasets.MEAN_STD['cifar10']


def _bad_image(root):
  path = root / 'train' / 'cat' / '0001.png'
  next((root / 'train' / 'cat').iterdir()).unlink()
  path.write_bytes(b'\x89PNG\r\n not an image')
  return 'is not a readable image', 'train/cat/0001.png'


def _wrong_size(root):
  from PIL import Image
  Image.new('RGB', (40, 32)).save(root / 'test' / 'dog' / 'big.png')
  return 'is 40x32 pixels', 'test/dog/big.png'


def _missing_split(root):
  shutil.rmtree(root / 'test')
  return 'is missing', 'ds/test'


def _class_in_one_split(root):
  (root / 'train' / 'zebra').mkdir()
  from PIL import Image
  Image.new('RGB', (32, 32)).save(root / 'train' / 'zebra' / 'z.png')
  return "class 'zebra' is in", 'ds/train but not in'


def _empty_class(root):
  for f in (root / 'test' / 'frog').iterdir():
    f.unlink()
  return 'holds no .png or .jpg images', 'test/frog'


@pytest.mark.parametrize('damage', [_bad_image, _wrong_size, _missing_split,
                                    _class_in_one_split, _empty_class])
def test_bad_data_gets_one_error_naming_the_file(tiny_folder, tmp_path, damage):
  data_dir, root = _copy(tiny_folder, tmp_path)
  message, where = damage(root)
  with pytest.raises(errors.UserError) as e:
    source = datasets.resolve('ds', str(data_dir))
    for split in ('train', 'test'):
      datasets.load_split(source, split)
  assert message in str(e.value) and where in str(e.value), str(e.value)
  assert len(str(e.value).splitlines()) == 1


def test_unknown_dataset_names_both_kinds(tmp_path):
  with pytest.raises(errors.UserError, match='image-folder dataset'):
    datasets.resolve('mydata', str(tmp_path))


def _tar(folder, path):
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(folder, arcname=os.path.basename(folder))
  return path


def test_kaggles_folder_given_to_training_points_to_prepare_data(tmp_path):
  # Kaggle's ILSVRC/Data/CLS-LOC: train/<wnid>/, but val/ flat (labels in a
  # CSV) and test/ flat and unlabelled; the plain "no class folders" line
  # would ask the user to sort test/ by hand.
  cls_loc = tmp_path / 'kaggle' / 'ILSVRC' / 'Data' / 'CLS-LOC'
  for folder in ('train/n01440764', 'val', 'test'):
    (cls_loc / folder).mkdir(parents=True)
  (cls_loc / 'val' / 'ILSVRC2012_val_00000001.JPEG').write_bytes(b'')
  with pytest.raises(errors.UserError) as e:
    datasets.resolve('CLS-LOC', str(cls_loc.parent))
  assert str(e.value) == (
      f"{cls_loc} is Kaggle's copy of ImageNet, whose val/ is not sorted by class and "
      'whose test/ has no labels; arrange it once with python -m resnet_jax.prepare_data '
      f'--imagenet {tmp_path / "kaggle"} --data_dir DIR, then train with --config '
      'configs/imagenet.py --config.data_dir=DIR')


@pytest.mark.slow
def test_prepare_data_places_a_checked_archive_and_says_how_to_train(tiny_folder,
                                                                      tmp_path):
  archive = _tar(os.path.join(tiny_folder['data_dir'], tiny_folder['name']),
                 tmp_path / 'tinyfolder.tar.gz')
  out = tmp_path / 'out'
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.prepare_data', '--archive',
                           str(archive), '--data_dir', str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == (
      f'Train with --config.dataset=tinyfolder --config.data_dir={out}')
  assert '64 train and 20 test images of 10 classes' in result.stdout
  assert sorted(os.listdir(out)) == ['tinyfolder']
  got = image_folder.load_split(str(out / 'tinyfolder'), 'test')
  assert len(got) == 20
  # Run again: refused, the first copy left alone.
  again = subprocess.run([sys.executable, '-m', 'resnet_jax.prepare_data', '--archive',
                          str(archive), '--data_dir', str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
  assert again.returncode == 2 and again.stderr.strip() == (
      f'error: {out / "tinyfolder"} already exists; it was left as it is. Train with '
      f'--config.dataset=tinyfolder --config.data_dir={out} (images over 32x32: --config '
      'configs/imagenet.py), or delete it (or use another --data_dir) to rebuild')


def test_prepare_data_refuses_a_bad_image_naming_it_in_the_archive(tiny_folder,
                                                                   tmp_path):
  data_dir, root = _copy(tiny_folder, tmp_path)
  _bad_image(root)
  archive = _tar(root, tmp_path / 'ds.tar.gz')
  out = tmp_path / 'out'
  with pytest.raises(errors.UserError, match='ds.tar.gz:ds/train/cat/0001.png is not'):
    prepare_data.prepare_image_folder(str(archive), 'ds', str(out))
  assert os.listdir(out) == []  # Nothing half-built left behind.


BLOCK_TF = '''raise ImportError('TensorFlow is blocked in this test')\n'''


@pytest.mark.slow
def test_train_eval_predict_without_tensorflow(tiny_folder, tmp_path):
  """The image-folder path where `import tensorflow` fails (as on accelerator
  machines without it): train, evaluate, predict, TensorBoard events."""
  blocker = tmp_path / 'no_tf'
  blocker.mkdir()
  for name in ('tensorflow', 'tensorflow_datasets'):
    (blocker / f'{name}.py').write_text(BLOCK_TF)
  env = dict(os.environ, PYTHONPATH=f'{blocker}{os.pathsep}{REPO}')
  check = subprocess.run([sys.executable, '-c', 'import tensorflow'], env=env,
                         capture_output=True, text=True)
  assert 'TensorFlow is blocked' in check.stderr
  workdir = tmp_path / 'w'
  flags = ['--config', 'configs/cifar.py', '--workdir', str(workdir),
           f'--config.data_dir={tiny_folder["data_dir"]}', '--config.dataset=tinyfolder',
           '--config.model=resnet8', '--config.batch_size=16',
           '--config.eval_batch_size=16', '--config.num_train_steps=4',
           '--config.log_every_steps=2']
  run = lambda *args: subprocess.run([sys.executable, '-m', *args], env=env, cwd=REPO,
                                     capture_output=True, text=True, timeout=300)
  result = run('resnet_jax.main', *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  result = run('resnet_jax.main', *flags, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'eval.json') as f:
    evaluated = json.load(f)
  assert evaluated['class_names'] == sorted(cifar_archives.CLASSES)
  assert evaluated['eval_examples'] == 20
  events = os.listdir(workdir / 'tensorboard')
  assert events and all(os.path.getsize(workdir / 'tensorboard' / e) > 100 for e in events)
  from PIL import Image
  image = tiny_folder['arrays']['test'][0][0]
  Image.fromarray(image).save(tmp_path / 'x.png')
  result = run('resnet_jax.predict', '--workdir', str(workdir), '--json', '--top_k=2',
               str(tmp_path / 'x.png'))
  assert result.returncode == 0, result.stderr[-3000:]
  predicted = json.loads(result.stdout)[0]['predictions']
  assert {p['class'] for p in predicted} <= set(cifar_archives.CLASSES)
  # The checkpoint carries the measured normalisation that eval and predict use.
  from resnet_jax.workdir import checkpointing
  ckpt = checkpointing.Checkpoints(str(workdir / 'checkpoints'))
  meta = ckpt.read_meta()
  ckpt.close()
  measured = image_folder.mean_std(tiny_folder['arrays']['train'][0])
  assert (tuple(meta['mean']), tuple(meta['std'])) == measured


def test_labels_follow_the_sorted_class_folders_not_their_creation_order(tmp_path):
  # docs/data.md: "Class names are the folder names in sorted order".
  from PIL import Image
  root = tmp_path / 'ds'
  names = ('zebra', 'yak', 'mango', 'kiwi', 'fig', 'apple')  # Made in this order.
  for split in ('train', 'test'):
    for value, name in enumerate(names):
      (root / split / name).mkdir(parents=True)
      Image.new('RGB', (32, 32), (value * 40,) * 3).save(root / split / name / 'a.png')
  ordered = tuple(sorted(names))
  assert image_folder.class_folders(str(root)) == ordered
  got = datasets.load_split(datasets.resolve('ds', str(tmp_path)), 'train')
  assert got.class_names == ordered and got.labels.tolist() == list(range(6))
  # Label i holds the image of the i-th folder in sorted order.
  assert got.images[:, 0, 0, 0].tolist() == [names.index(n) * 40 for n in ordered]
  files = image_folder.file_split(str(root), 'test')
  assert [files.name(i) for i in range(6)] == [f'{n}/a.png' for n in ordered]
  assert files.labels.tolist() == list(range(6))


def test_a_loc_synset_mapping_file_beside_the_splits_names_the_classes(tmp_path):
  # docs/data.md, "Layouts": "A classes.txt beside the splits (or a
  # LOC_synset_mapping.txt), lines `<folder> <name>, <more names>`".
  from tests import jpeg_files
  root = jpeg_files.write_folder(tmp_path, per_class=(1, 1), names=False)
  with open(os.path.join(root, 'LOC_synset_mapping.txt'), 'w') as f:
    f.write('n01 tench, Tinca tinca\nn02 goldfish, Carassius auratus\nn03 shark\n')
  assert image_folder.class_names(root) == ('tench', 'goldfish', 'shark')
  assert image_folder.file_split(root, 'train').class_ids == ('n01', 'n02', 'n03')


def test_eval_and_predict_normalise_with_the_mean_std_stored_with_the_checkpoints(
    tiny_folder):
  # docs/data.md: "the per-channel mean/std is measured on the training
  # images and stored with the checkpoints, so eval and predict normalise
  # the same way".
  from resnet_jax.training import run_setup
  source = datasets.resolve(tiny_folder['name'], tiny_folder['data_dir'])
  measured = image_folder.mean_std(tiny_folder['arrays']['train'][0])
  assert run_setup._mean_std(None, source, None, 0) == measured  # A new run measures.
  stored = {'mean': [0.1, 0.2, 0.3], 'std': [0.4, 0.5, 0.6]}
  want = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
  assert run_setup._mean_std(stored, source, None, 0) == want  # eval, and a resume.
  assert run_setup.stored_mean_std(stored, tiny_folder['name']) == want  # predict.


def test_a_file_split_lists_each_folder_once(tiny_folder, monkeypatch):
  # At ImageNet's scale a listing is seconds on a network filesystem: the
  # class folders were listed twice (for the ids, then again for the names).
  listed = []
  real = os.listdir
  monkeypatch.setattr(image_folder.os, 'listdir', lambda p: listed.append(p) or real(p))
  root = os.path.join(tiny_folder['data_dir'], tiny_folder['name'])
  split = image_folder.file_split(root, 'train')
  assert len(split) == 64 and len(split.class_names) == 10
  assert sorted(listed) == sorted(set(listed)), listed


def test_image_sizes_reads_headers_not_whole_files(tmp_path, monkeypatch):
  # prepare_data checks every image's size: on ImageNet, reading each file
  # whole was a second 150 GB pass where its first KBs hold the header.
  from tests import jpeg_files
  big = jpeg_files.jpeg_bytes(jpeg_files.pattern(600, 800, noise=60.0), quality=98)
  # A header behind 120 KB of comments (EXIF and ICC blocks can be that
  # large) is still found, from the whole file.
  comment = b'\xff\xfe' + (60_002).to_bytes(2, 'big') + b'x' * 60_000
  late = big[:2] + comment * 2 + big[2:]
  for split in ('train', 'test'):
    for name, data in (('big.jpg', big), ('late.jpg', late),
                       ('small.png', jpeg_files.png_bytes(jpeg_files.pattern(20, 30)))):
      (tmp_path / 'd' / split / 'c').mkdir(parents=True, exist_ok=True)
      (tmp_path / 'd' / split / 'c' / name).write_bytes(data)
  assert len(big) > 4 * image_folder.HEADER_BYTES
  read = {}
  real_open = open

  class Counting:
    def __init__(self, f, name):
      self._f, self._name = f, name

    def read(self, n=-1):
      data = self._f.read(n)
      read[self._name] = read.get(self._name, 0) + len(data)
      return data

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self._f.close()

  monkeypatch.setattr(image_folder, 'open',
                      lambda p, *a, **k: Counting(real_open(p, *a, **k), os.path.basename(p)),
                      raising=False)
  assert image_folder.image_sizes(str(tmp_path / 'd'), 'train') == [(800, 600), (800, 600),
                                                                    (30, 20)]
  assert read['big.jpg'] == image_folder.HEADER_BYTES
  assert read['late.jpg'] == len(late)
  # A file whose header is cut short is still refused by name.
  (tmp_path / 'd' / 'train' / 'c' / 'big.jpg').write_bytes(big[:300])
  with pytest.raises(errors.UserError, match=r'big\.jpg is not a readable image'):
    image_folder.image_sizes(str(tmp_path / 'd'), 'train')
