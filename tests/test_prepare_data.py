"""prepare_data: official archive layouts -> the tfds dataset, and bad archives."""

import logging
import os
import pickle
import subprocess
import sys

import pytest

from resnet_jax import errors
from resnet_jax.data import cifar_official
from resnet_jax.data import datasets
from tests import cifar_archives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


LAYOUTS = ['binary', 'python', 'binary100', 'python100']


def _official_archive(tmp_path, layout, cifar10, seed):
  """An archive in the official `layout`, under its official file name.

  Args:
    cifar10: makes the CIFAR-10 arrays; CIFAR-100 layouts hold 100 train and
      100 test images of fine labels 0..99 (coarse = fine // 5).
    seed: the CIFAR-100 images' seed.

  Returns:
    (path, arrays, dataset name, class names).
  """
  if layout.endswith('100'):
    arrays, dataset, names = (cifar_archives.random_cifar100(100, 100, seed=seed),
                              'cifar100', cifar_archives.FINE100)
  else:
    arrays, dataset, names = cifar10(), 'cifar10', cifar_archives.CLASSES
  name = f'cifar-{dataset[len("cifar"):]}-{layout.removesuffix("100")}.tar.gz'
  path = getattr(cifar_archives, f'write_{layout}')(tmp_path / name, arrays)
  return path, arrays, dataset, names


@pytest.mark.parametrize('layout', LAYOUTS)
def test_both_layouts_build_the_same_examples(tmp_path, layout):
  archive, arrays, dataset, names = _official_archive(
      tmp_path, layout, lambda: cifar_archives.random_cifar10(num_train=23, num_test=7, seed=1),
      seed=1)
  info = cifar_official.prepare(str(archive), str(tmp_path / 'tfds'))
  assert (info['dataset'], info['train'], info['test']) == (
      dataset, len(arrays['train'][1]), len(arrays['test'][1]))
  assert not info['official']
  for split in ('train', 'test'):
    got = datasets.load_split(datasets.resolve(dataset, str(tmp_path / 'tfds')), split)
    images, labels = arrays[split]
    # tfds stores examples in file order; compare as sets of (label, image).
    assert len(got) == len(labels)
    key = lambda ims, lbs: sorted(zip(lbs.tolist(), [im.tobytes() for im in ims]))
    assert key(got.images, got.labels) == key(images, labels)
  assert got.class_names == tuple(names)  # CIFAR-100: the 100 fine labels.
  # Nothing left behind but the dataset itself (no staging folder, `.arrange-*`).
  assert not [p for p in os.listdir(tmp_path / 'tfds') if p.startswith('.')]


def test_unofficial_archive_warns(tmp_path, caplog):
  arrays = cifar_archives.random_cifar10(num_train=5, num_test=5)
  archive = cifar_archives.write_binary(tmp_path / 'a.tar.gz', arrays)
  with caplog.at_level(logging.WARNING, logger='resnet_jax'):
    cifar_official.prepare(str(archive), str(tmp_path / 'tfds'))
  assert 'not the official cifar10 archive' in caplog.text


def test_missing_truncated_and_wrong_archives(tmp_path):
  arrays = cifar_archives.random_cifar10(num_train=50, num_test=10)
  good = cifar_archives.write_binary(tmp_path / 'good.tar.gz', arrays)
  data = good.read_bytes()
  truncated = tmp_path / 'truncated.tar.gz'
  truncated.write_bytes(data[: len(data) // 2])
  garbage = tmp_path / 'garbage.tar.gz'
  garbage.write_bytes(b'not an archive at all')
  other = tmp_path / 'other.tar.gz'
  import tarfile
  with tarfile.open(other, 'w:gz') as tar:
    tar.add(__file__, arcname='photos/readme.txt')
  cases = {tmp_path / 'nope.tar.gz': 'does not exist',
           truncated: 'truncated or damaged',
           garbage: 'not a readable',
           other: 'neither a CIFAR archive'}
  for archive, message in cases.items():
    with pytest.raises(errors.UserError, match=message):
      cifar_official.prepare(str(archive), str(tmp_path / 'tfds'))
  assert not (tmp_path / 'tfds' / 'cifar10').exists()


@pytest.mark.slow
def test_cli_reports_one_line_and_exit_code(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.prepare_data', '--archive',
       str(tmp_path / 'missing.tar.gz'), '--data_dir', str(tmp_path / 'd')],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: archive')
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_cli_on_a_prepared_folder_repeats_how_to_train(tiny_data):
  # The README's command run twice: refused, the first copy left alone, and
  # the flags to train with said again.
  data_dir = tiny_data['data_dir']
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.prepare_data', '--archive',
       str(tiny_data['archive']), '--data_dir', data_dir],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {os.path.join(data_dir, "cifar10", "3.0.2")} already exists; it was left '
      f'as it is. Train with --config.dataset=cifar10 --config.data_dir={data_dir}, or '
      'delete it (or use another --data_dir) to rebuild')


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
  """A python-layout archive whose pickle would run code if unpickled freely."""
  import io
  import tarfile
  marker = tmp_path / 'pwned'

  class Payload:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))
  arrays = cifar_archives.random_cifar10(num_train=5, num_test=5)
  good = cifar_archives.write_python(tmp_path / 'good.tar.gz', arrays)
  crafted = tmp_path / 'cifar-10-python.tar.gz'
  with tarfile.open(good) as src, tarfile.open(crafted, 'w:gz') as dst:
    for member in src.getmembers():
      data = src.extractfile(member).read()
      if member.name.endswith('data_batch_1'):
        data = pickle.dumps({b'data': Payload(), b'labels': [0]}, protocol=2)
        member.size = len(data)
      dst.addfile(member, io.BytesIO(data))
  with pytest.raises(errors.UserError, match='CIFAR pickles never hold'):
    cifar_official.prepare(str(crafted), str(tmp_path / 'tfds'))
  assert not marker.exists()
  # The official pickles (numpy arrays, Python 2 strings) still load.
  cifar_official.prepare(str(good), str(tmp_path / 'tfds2'))


@pytest.mark.parametrize('layout', LAYOUTS)
def test_an_official_archive_becomes_an_exact_png_folder(tmp_path, layout):
  # No TensorFlow on the way: the exact pixels as an image folder, which the
  # image-folder reader gives back bit for bit, in class folders by name.
  from resnet_jax.data import image_folder
  # Every class in both splits, as the image-folder reader requires.
  archive, arrays, dataset, names = _official_archive(
      tmp_path, layout, lambda: cifar_archives.random_cifar10(num_train=20, num_test=10,
                                                               seed=4, balanced=True),
      seed=4)
  info = cifar_official.prepare_png_folder(str(archive), str(tmp_path / 'data'))
  assert (info['name'], info['train'], info['test'], info['classes']) == (
      f'{dataset}-png', len(arrays['train'][1]), len(arrays['test'][1]), len(names))
  for split in ('train', 'test'):
    got = image_folder.load_split(str(tmp_path / 'data' / f'{dataset}-png'), split)
    images, labels = arrays[split]
    key = lambda ims, lbs, classes: sorted(
        zip([classes[l] for l in lbs.tolist()], [im.tobytes() for im in ims]))
    assert key(got.images, got.labels, got.class_names) == key(images, labels, names)
  assert os.listdir(tmp_path / 'data') == [f'{dataset}-png']  # No leftovers.
  with pytest.raises(errors.UserError, match='already exists; it was left as it is'):
    cifar_official.prepare_png_folder(str(archive), str(tmp_path / 'data'))


@pytest.mark.slow
def test_png_folder_command_says_how_to_train(tmp_path):
  arrays = cifar_archives.random_cifar10(num_train=5, num_test=5)
  archive = cifar_archives.write_binary(tmp_path / 'a.tar.gz', arrays)
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.prepare_data', '--archive', str(archive),
       '--data_dir', str(tmp_path / 'd'), '--as_image_folder'],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f'Built image-folder dataset cifar10-png in {tmp_path / "d" / "cifar10-png"}: 5 '
      'train and 5 test images of 10 classes, the exact pixels (from an unofficial '
      'archive).',
      f'Train with --config.dataset=cifar10-png --config.data_dir={tmp_path / "d"}']
