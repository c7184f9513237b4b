"""The official CIFAR archives (https://www.cs.toronto.edu/~kriz/cifar.html)
-> tfds's own `cifar10` / `cifar100` dataset, or an image folder of the exact
pixels.

Either layout of either dataset is accepted: binary (`*-binary.tar.gz`, what
tfds's builders read) or python (`*-python.tar.gz`, pickles, rewritten here as
the binary layout's records). The tfds dataset is built by tfds's own builder
(same version, features and example order as a download would give), only
its download replaced by the extracted archive. The extraction happens in a
`staging` folder inside `data_dir`, which no stop leaves behind.
"""

import hashlib
import io
import os
import pickle
import tarfile
from typing import NamedTuple

import numpy as np

from resnet_jax import errors
from resnet_jax.data import archives
from resnet_jax.data import image_folder
from resnet_jax.data import staging
from resnet_jax.logs import log


class Layout(NamedTuple):
  dataset: str
  folder: str          # Top folder inside the archive.
  binary: bool
  md5: str             # Of the official archive (cs.toronto.edu/~kriz).


# The official archives; tfds's cifar builders read the binary layout.
LAYOUTS = (
    Layout('cifar10', 'cifar-10-batches-bin', True, 'c32a1d4ab5d03f1284b67883e8d87530'),
    Layout('cifar10', 'cifar-10-batches-py', False, 'c58f30108f718f92721af3b95e74349a'),
    Layout('cifar100', 'cifar-100-binary', True, '03b5dce01913d631647c71ecec9e9cb8'),
    Layout('cifar100', 'cifar-100-python', False, 'eb9058c3a382ffc7106e4002c42a8d85'),
)
# Binary-layout files, as tfds's builders expect them.
_BIN_FILES = {
    'cifar10': {'train': [f'data_batch_{i}.bin' for i in range(1, 6)],
                'test': ['test_batch.bin'], 'label_bytes': 1},
    'cifar100': {'train': ['train.bin'], 'test': ['test.bin'], 'label_bytes': 2},
}
_BINARY_FOLDER = {'cifar10': 'cifar-10-batches-bin', 'cifar100': 'cifar-100-binary'}
_RECORD_PIXELS = 32 * 32 * 3


def _md5(path: str) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def detect_layout(archive: str) -> Layout:
  """Opens the archive far enough to tell which official layout it has."""
  if not os.path.isfile(archive):
    raise errors.UserError(f'archive {archive} does not exist; pass the path of an '
                           'official CIFAR archive: cifar-10-binary.tar.gz, '
                           'cifar-10-python.tar.gz or their cifar-100 twins')
  try:
    with tarfile.open(archive, 'r:*') as tar:
      first = tar.next()
  except archives.READ_ERRORS as e:
    raise errors.UserError(f'archive {archive} is not a readable .tar.gz '
                           f'({archives.reason(e)}); download it again') from e
  top = first.name.split('/')[0] if first else ''
  for layout in LAYOUTS:
    if top == layout.folder:
      return layout
  raise errors.UserError(
      f'archive {archive} is neither a CIFAR archive (top folder {top!r}; expected '
      'one of: ' + ', '.join(l.folder for l in LAYOUTS) + ') nor an image-folder '
      'dataset (NAME/train/<class>/*, NAME/test/<class>/*)')


def _python_to_binary(layout: Layout, src: str, dst: str) -> None:
  """Rewrites the python layout's pickles as the binary layout's records."""
  os.makedirs(dst)
  if layout.dataset == 'cifar10':
    pairs = [(f'data_batch_{i}', f'data_batch_{i}.bin') for i in range(1, 6)]
    pairs.append(('test_batch', 'test_batch.bin'))
    meta, meta_keys = 'batches.meta', [(b'label_names', 'batches.meta.txt')]
    label_keys = [b'labels']
  else:
    pairs = [('train', 'train.bin'), ('test', 'test.bin')]
    meta = 'meta'
    meta_keys = [(b'coarse_label_names', 'coarse_label_names.txt'),
                 (b'fine_label_names', 'fine_label_names.txt')]
    label_keys = [b'coarse_labels', b'fine_labels']
  for name, out in pairs:
    d = _unpickle(os.path.join(src, name))
    data = np.asarray(d[b'data'], np.uint8).reshape(-1, _RECORD_PIXELS)
    labels = [np.asarray(d[k], np.uint8).reshape(-1, 1) for k in label_keys]
    if any(len(l) != len(data) for l in labels):
      raise errors.UserError(f'{name} in the archive has {len(data)} images but '
                             'a different number of labels; the archive is damaged')
    np.concatenate(labels + [data], axis=1).tofile(os.path.join(dst, out))
  m = _unpickle(os.path.join(src, meta))
  for key, out in meta_keys:
    names = [n.decode() if isinstance(n, bytes) else n for n in m[key]]
    with open(os.path.join(dst, out), 'w') as f:
      f.write('\n'.join(names) + '\n')


# Everything the official CIFAR pickles (Python 2, numpy arrays) and this
# project's test archives need; any other global would be a crafted pickle's
# way to run code.
_PICKLE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('_codecs', 'encode'),
}


class _CifarUnpickler(pickle.Unpickler):
  """Loads dicts, lists, strings, bytes, numbers and numpy arrays only."""

  def find_class(self, module, name):
    if (module, name) in _PICKLE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f'it asks for {module}.{name}, which CIFAR pickles never hold (a crafted '
        'archive can run code this way); nothing was run')


def _unpickle(path: str) -> dict:
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise errors.UserError(f'{os.path.basename(path)} is missing from the '
                           f'archive ({e.strerror}); download it again') from e
  try:
    return _CifarUnpickler(io.BytesIO(data), encoding='bytes').load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise errors.UserError(f'{os.path.basename(path)} in the archive is not a '
                           f'CIFAR pickle ({e}); use the official archive') from e


def _check_binary(dataset: str, folder: str) -> dict:
  """Checks every record file of the binary layout; returns split sizes."""
  spec = _BIN_FILES[dataset]
  record = spec['label_bytes'] + _RECORD_PIXELS
  num_classes = 10 if dataset == 'cifar10' else 100
  sizes = {}
  for split in ('train', 'test'):
    total = 0
    for name in spec[split]:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise errors.UserError(f'{name} is missing from the archive; it is '
                               'incomplete, download it again')
      raw = np.fromfile(path, np.uint8)
      if raw.size == 0 or raw.size % record:
        raise errors.UserError(f'{name} in the archive is truncated ({raw.size} '
                               f'bytes, not a multiple of {record}); download it again')
      labels = raw.reshape(-1, record)[:, spec['label_bytes'] - 1]
      if labels.max() >= num_classes:
        raise errors.UserError(f'{name} has label {labels.max()} outside '
                               f'0..{num_classes - 1}; not a {dataset} archive')
      total += len(labels)
    sizes[split] = total
  return sizes


def _train_flags(dataset: str, data_dir: str) -> str:
  return f'--config.dataset={dataset} --config.data_dir={data_dir}'


class _LocalFiles:
  """Stands in for tfds's download manager: the archive is already extracted."""

  def __init__(self, root: str):
    self._root = root

  def download_and_extract(self, url):
    del url
    return self._root


def prepare(archive: str, data_dir: str) -> dict:
  """Builds the tfds dataset of `archive` in `data_dir`.

  Args:
    archive: path of an official CIFAR-10/100 archive, either layout.
    data_dir: tfds data_dir to build into.

  Returns:
    {'dataset', 'path', 'train', 'test', 'official'}: what was built.

  Raises:
    errors.UserError: a missing, unreadable, truncated or non-CIFAR archive.
    errors.Stopped: SIGTERM or SIGINT (the extracted files removed).
  """
  layout = detect_layout(archive)
  official = _md5(archive) == layout.md5
  if not official:
    log.warning('%s is not the official %s archive (its MD5 differs); '
                'building from it anyway', archive, layout.dataset)
  from resnet_jax.data import datasets
  tfds, _ = datasets.import_tfds()  # Heavy import, after the cheap checks.

  builder = tfds.builder(layout.dataset, data_dir=data_dir)
  if builder.is_prepared():
    raise staging.exists_error(builder.data_dir, _train_flags(layout.dataset, data_dir))
  with staging.Staging(data_dir) as stage:
    tmp = stage.path
    archives.extract(archive, tmp)
    src = os.path.join(tmp, layout.folder)
    binary_folder = _BINARY_FOLDER[layout.dataset]
    if not layout.binary:
      _python_to_binary(layout, src, os.path.join(tmp, binary_folder))
    sizes = _check_binary(layout.dataset, os.path.join(tmp, binary_folder))
    # tfds's own builder writes the dataset; only the download is replaced.
    generators = type(builder)._split_generators
    builder._split_generators = lambda _: generators(builder, _LocalFiles(tmp))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False))
  return dict(dataset=layout.dataset, path=str(builder.data_dir),
              official=official, **sizes)


def prepare_png_folder(archive: str, data_dir: str) -> dict:
  """Writes an official CIFAR archive as the image folder `data_dir/NAME-png`
  (PNG: lossless, the exact pixels; CIFAR-100 with its 100 fine classes).

  Returns:
    {'name', 'path', 'train', 'test', 'classes', 'official'}.

  Raises:
    errors.UserError: a bad archive, or a folder of that name already there.
    errors.Stopped: SIGTERM or SIGINT (the partial folder removed).
  """
  from PIL import Image
  layout = detect_layout(archive)
  name = f'{layout.dataset}-png'
  path = staging.check_target(data_dir, name, _train_flags(name, data_dir))
  spec = _BIN_FILES[layout.dataset]
  with staging.Staging(data_dir) as stage:
    tmp = stage.path
    archives.extract(archive, tmp)
    binary = os.path.join(tmp, _BINARY_FOLDER[layout.dataset])
    if not layout.binary:
      _python_to_binary(layout, os.path.join(tmp, layout.folder), binary)
    sizes = _check_binary(layout.dataset, binary)
    names_file = 'batches.meta.txt' if layout.dataset == 'cifar10' else 'fine_label_names.txt'
    with open(os.path.join(binary, names_file)) as f:
      classes = [l.strip() for l in f if l.strip()]
    built = os.path.join(tmp, name)  # Moved into place once complete.
    for split in image_folder.SPLITS:
      records = np.concatenate([np.fromfile(os.path.join(binary, n), np.uint8)
                                .reshape(-1, spec['label_bytes'] + _RECORD_PIXELS)
                                for n in spec[split]])
      labels = records[:, spec['label_bytes'] - 1]  # CIFAR-100: the fine label.
      images = records[:, spec['label_bytes']:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      for c in classes:
        os.makedirs(os.path.join(built, split, c))
      for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(os.path.join(built, split, classes[label],
                                                 f'{i:05d}.png'))
    stage.place(built, path)
  return dict(name=name, path=path, classes=len(classes),
              official=_md5(archive) == layout.md5, **sizes)
