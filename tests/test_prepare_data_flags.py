"""prepare_data's command line: flags that would be ignored or lead nowhere
are refused in one line that says what to pass; ImageNet-derived folders
get readable names; a stop leaves no extracted files behind."""

import os
import signal
import subprocess
import sys
import tarfile

import pytest

from resnet_jax import prepare_data
from resnet_jax.data import ilsvrc
from resnet_jax.data import image_folder
from tests import cifar_archives
from tests import jpeg_files
from tests import processes
from tests import test_ilsvrc
from tests import test_ilsvrc_kaggle
from tests.processes import REPO

# Three of Imagenette's ten classes, by their ImageNet wnids.
IMAGENETTE = ('n01440764', 'n02102040', 'n02979186')


def _run(*args):
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.prepare_data', *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert 'Traceback' not in result.stderr, result.stderr
  return result


def _error(*args) -> str:
  """The one line a refused command prints."""
  result = _run(*args)
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.strip().splitlines()
  return line


def _tgz(folder, path):
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(folder, arcname=os.path.basename(folder))
  return str(path)


@pytest.mark.slow
def test_archive_and_imagenet_together_are_refused(tmp_path):
  # --imagenet used to win, --archive silently ignored.
  source = test_ilsvrc._official_files(tmp_path / 'downloads')
  archive = cifar_archives.write_binary(tmp_path / 'cifar-10-binary.tar.gz',
                                        cifar_archives.random_cifar10(5, 5))
  assert _error(f'--archive={archive}', f'--imagenet={source}',
                f'--data_dir={tmp_path / "data"}') == (
      'error: pass --archive or --imagenet, not both (one would be ignored): --imagenet '
      'arranges ILSVRC-2012, --archive builds CIFAR or an image-folder dataset; run '
      'prepare_data once for each')
  assert not (tmp_path / 'data').exists()


@pytest.mark.slow
def test_ilsvrc_files_given_to_archive_point_to_imagenet(tmp_path):
  official = test_ilsvrc._official_files(tmp_path / 'downloads')
  kaggle = test_ilsvrc_kaggle.kaggle_download(tmp_path / 'kaggle', train_per_class=1, test=1)
  data = str(tmp_path / 'data')
  command = 'python -m resnet_jax.prepare_data --imagenet'
  assert _error(f'--archive={official}', f'--data_dir={data}') == (
      f'error: {official} is the official ILSVRC-2012 files, which --imagenet arranges, '
      f'not --archive: {command} {official} --data_dir {data}')
  # One of the tars: its folder is what --imagenet takes.
  train = os.path.join(official, ilsvrc.TRAIN_TAR)
  assert _error(f'--archive={train}', f'--data_dir={data}').endswith(
      f'{command} {official} --data_dir {data}')
  # Kaggle's download, from its root or from CLS-LOC (which looks like an
  # image folder, with an unlabelled flat test/).
  cls_loc = os.path.join(kaggle, *test_ilsvrc_kaggle.DATA)
  for given in (kaggle, cls_loc):
    assert _error(f'--archive={given}', f'--data_dir={data}') == (
        f"error: {given} is Kaggle's ImageNet download, which --imagenet arranges, not "
        f'--archive: {command} {kaggle} --data_dir {data}')
  assert not os.path.exists(data)


@pytest.mark.slow
def test_a_missing_archive_says_what_archive_takes(tmp_path):
  # It asked for cifar-10-binary.tar.gz whatever was meant.
  missing = tmp_path / 'imagenette2-320.tgz'
  line = _error(f'--archive={missing}', f'--data_dir={tmp_path / "data"}')
  assert line == (
      f'error: archive {missing} does not exist; --archive takes an official CIFAR archive '
      '(cifar-10-binary.tar.gz, cifar-10-python.tar.gz or their cifar-100 twins) or an '
      'image-folder dataset: a folder or .tar.gz/.tgz holding NAME/train/<class>/ and '
      "NAME/val/<class>/ or NAME/test/<class>/ (Imagenette's imagenette2-320.tgz)")


@pytest.mark.slow
def test_a_damaged_archive_is_one_line_naming_it(tmp_path):
  # tarfile listed each compression it tried, a line each.
  folder = jpeg_files.write_folder(tmp_path / 'src', name='imagenette2-320', names=False,
                                   per_class=(2, 1))
  archive = _tgz(folder, tmp_path / 'imagenette2-320.tgz')
  with open(archive, 'r+b') as f:
    f.seek(30)
    f.write(b'\x00' * 64)
  line = _error(f'--archive={archive}', f'--data_dir={tmp_path / "data"}')
  assert line.startswith(f'error: archive {archive} is not a readable .tar.gz (read as '
                         'gzip: ') and line.endswith('download it again'), line


@pytest.mark.slow
def test_an_image_folder_archive_cut_short_says_so(tmp_path):
  # Read whole to find NAME/train, it was then taken for neither CIFAR nor
  # an image folder.
  folder = jpeg_files.write_folder(tmp_path / 'src', name='imagenette2-320', names=False,
                                   per_class=(4, 2))
  archive = _tgz(folder, tmp_path / 'imagenette2-320.tgz')
  with open(archive, 'r+b') as f:
    f.truncate(os.path.getsize(archive) * 2 // 3)
  line = _error(f'--archive={archive}', f'--data_dir={tmp_path / "data"}')
  assert line.startswith(f'error: archive {archive} is truncated or damaged (') and \
      line.endswith('download it again'), line
  assert os.listdir(tmp_path / 'data') == []


@pytest.mark.slow
def test_as_image_folder_where_it_would_be_ignored_is_refused(tmp_path):
  folder = jpeg_files.write_folder(tmp_path / 'src', name='photos', names=False,
                                   per_class=(2, 1))
  source = test_ilsvrc._official_files(tmp_path / 'downloads')
  data = str(tmp_path / 'data')
  for given, what in ((f'--archive={folder}', f'{folder} is one already'),
                      (f'--imagenet={source}', '--imagenet always builds one')):
    assert _error(given, f'--data_dir={data}', '--as_image_folder') == (
        'error: --as_image_folder writes an official CIFAR archive as an image folder; '
        f'{what}: drop --as_image_folder')
  assert not os.path.exists(data)


@pytest.mark.slow
def test_imagenet_wnid_folders_get_readable_names(tmp_path):
  # Imagenette's archive has no names file: eval and predict showed wnids.
  folder = jpeg_files.write_folder(tmp_path / 'src', name='imagenette2-320',
                                   classes=IMAGENETTE, names=False, per_class=(2, 1))
  archive = _tgz(folder, tmp_path / 'imagenette2-320.tgz')
  out = tmp_path / 'data'
  result = _run(f'--archive={archive}', f'--data_dir={out}')
  assert result.returncode == 0, result.stderr
  assert ", named by ImageNet's class list (classes.txt)." in result.stdout
  root = str(out / 'imagenette2-320')
  assert image_folder.class_folders(root) == IMAGENETTE  # The ids stay the folders.
  assert image_folder.class_names(root) == ('tench', 'English springer', 'cassette player')
  with open(os.path.join(root, 'classes.txt')) as f:
    assert f.readline() == 'n01440764 tench\n'
  # From a folder: names in the copy, the user's folder left as it was.
  info = prepare_data.prepare_image_folder(folder, 'imagenette2-320', str(tmp_path / 'd2'))
  assert info['imagenet_names'] and not os.path.exists(os.path.join(folder, 'classes.txt'))
  assert image_folder.class_names(info['path'])[0] == 'tench'


def test_a_names_file_of_the_dataset_and_other_classes_are_left_alone(tmp_path):
  own = jpeg_files.write_folder(tmp_path / 'own', name='mine', classes=IMAGENETTE,
                                per_class=(2, 1))  # With its own classes.txt.
  info = prepare_data.prepare_image_folder(own, 'mine', str(tmp_path / 'data'))
  assert not info['imagenet_names']
  assert image_folder.class_names(info['path'])[0] == 'name of n01440764'
  # One folder that is not an ImageNet class: no names for any.
  mixed = jpeg_files.write_folder(tmp_path / 'mixed', name='mixed', names=False,
                                  classes=IMAGENETTE[:2] + ('cats',), per_class=(2, 1))
  info = prepare_data.prepare_image_folder(mixed, 'mixed', str(tmp_path / 'data'))
  assert not info['imagenet_names']
  assert not os.path.exists(os.path.join(info['path'], 'classes.txt'))
  assert image_folder.class_names(info['path']) == ('cats',) + IMAGENETTE[:2]


@pytest.mark.slow
def test_an_unreadable_image_names_its_file_not_a_memory_buffer(tmp_path):
  # Pillow's message named `<_io.BytesIO object at 0x...>`.
  folder = jpeg_files.write_folder(tmp_path / 'src', name='photos', names=False,
                                   per_class=(2, 1))
  bad = os.path.join(folder, 'val', 'n02', 'notes.JPEG')
  with open(bad, 'wb') as f:
    f.write(b'plain text, not an image')
  line = _error(f'--archive={folder}', f'--data_dir={tmp_path / "data"}')
  assert line.startswith(f'error: {bad} is not a readable image (') and 'object at 0x' \
      not in line, line


# Pauses prepare_data once the archive is extracted into its staging folder.
_AFTER_EXTRACTING = '''
from resnet_jax.data import archives
real = archives.extract
def extract(archive, dest):
  real(archive, dest)
  pause(dest)
archives.extract = extract
'''


@pytest.mark.parametrize('kind, signum', [('image_folder', signal.SIGTERM),
                                          ('cifar_png', signal.SIGINT)])
@pytest.mark.slow
def test_a_signal_removes_the_extracted_files_with_one_line(tmp_path, kind, signum):
  # The `.extract-` folders of these paths stayed after SIGTERM.
  if kind == 'image_folder':
    folder = jpeg_files.write_folder(tmp_path / 'src', name='imagenette2-320',
                                     names=False, per_class=(2, 1))
    args = [f'--archive={_tgz(folder, tmp_path / "imagenette2-320.tgz")}']
  else:
    archive = cifar_archives.write_binary(tmp_path / 'cifar-10-binary.tar.gz',
                                          cifar_archives.random_cifar10(5, 5))
    args = [f'--archive={archive}', '--as_image_folder']
  data_dir = str(tmp_path / 'data')
  proc, stage = processes.start_paused(_AFTER_EXTRACTING, str(tmp_path / 'ready'),
                                       [*args, f'--data_dir={data_dir}'])
  try:
    assert os.path.dirname(stage) == data_dir and os.listdir(stage)  # Extracted there.
    processes.stop_paused(proc, signum, stage)
  finally:
    proc.kill()
  assert os.listdir(data_dir) == []
