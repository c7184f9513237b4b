"""Where a run's images come from: tfds's CIFAR-10/100, or an image folder.

Every source gives the same thing, an in-memory `input_pipeline.Split`, so the
batch stream, augmentation and evaluation never know where images came from.
`--config.dataset` names either a tfds dataset ('cifar10', 'cifar100') or an
image-folder dataset `data_dir/NAME` (with `train/<class>/` and
`test/<class>/`); a folder of that name in `data_dir` takes precedence.
TensorFlow and tfds are imported only on the tfds path.
"""

import dataclasses
import difflib
import os
import socket
from typing import Optional

import numpy as np

from resnet_jax import errors
from resnet_jax.data import image_folder

# Per-channel statistics of the tfds training splits, on the [0, 1] scale.
# Image-folder datasets get theirs measured (`normalization`).
MEAN_STD = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
TFDS_CLASSES = {'cifar10': 10, 'cifar100': 100}


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset, resolved: its kind, where it is and how many classes it has."""
  name: str
  kind: str                    # 'tfds' or 'image_folder'.
  num_classes: int
  data_dir: Optional[str]      # tfds data_dir (None: tfds's default).
  root: Optional[str] = None   # The image folder.


def resolve(dataset: str, data_dir: Optional[str]) -> Source:
  """Finds `dataset`, reading no images (cheap enough for config checks).

  Raises:
    errors.UserError: neither a tfds name nor an image folder in `data_dir`,
      or an image folder whose splits or classes do not match.
  """
  root = image_folder.find(data_dir, dataset)
  if root:
    names = image_folder.class_names(root)
    return Source(dataset, 'image_folder', len(names), data_dir, root)
  if dataset in TFDS_CLASSES:
    return Source(dataset, 'tfds', TFDS_CLASSES[dataset], data_dir)
  where = (f'{os.path.join(data_dir, dataset)} has no train/ folder' if data_dir
           else 'no --config.data_dir is set')
  close = _closest(dataset, data_dir)
  hint = f'did you mean --config.dataset={close}? Otherwise set' if close else 'set'
  raise errors.UserError(
      f'unknown dataset {dataset!r}: not cifar10 or cifar100, and {where}; {hint} '
      '--config.dataset to cifar10, cifar100 or the name of an image-folder '
      'dataset in --config.data_dir (python -m resnet_jax.prepare_data makes one)')


def _closest(dataset: str, data_dir: Optional[str]) -> Optional[str]:
  """The known dataset nearest to a mistyped name ('imagenet2O12'), as
  --config.FIELD typos get one: the tfds names and `data_dir`'s image
  folders."""
  names = list(TFDS_CLASSES)
  try:
    names += [n for n in os.listdir(data_dir or '') if image_folder.find(data_dir, n)]
  except OSError:  # No data_dir, or not a folder: the tfds names alone.
    pass
  by_case = {n.lower(): n for n in names}
  close = difflib.get_close_matches(str(dataset).lower(), list(by_case), n=1, cutoff=0.6)
  return by_case[close[0]] if close else None


def split_name(source: Source, split: str) -> str:
  """`split` as the data names it: an image folder's evaluation split may be
  ImageNet's 'val'."""
  return image_folder.split_name(source.root, split) if source.root else split


def load_split(source: Source, split: str, image_size: int = 0):
  """`split` ('train' or 'test') of `source`: all of it in host memory, or
  with `image_size` > 0 (an image folder) as its files, read while training.
  """
  if image_size:
    return image_folder.file_split(source.root, split)
  if source.kind == 'image_folder':
    return image_folder.load_split(source.root, split)
  return _load_tfds(source.name, split, source.data_dir)


def count(source: Source, split: str) -> Optional[int]:
  """How many examples `split` holds, decoding no image: from an image
  folder's file names, or from a prepared tfds dataset's metadata (None when
  tfds has yet to download and prepare it)."""
  if source.kind == 'image_folder':
    return image_folder.count(source.root, split)
  tfds, _ = import_tfds()
  builder = tfds.builder(source.name, data_dir=source.data_dir)
  if not builder.is_prepared():
    return None
  return int(builder.info.splits[split].num_examples)


def normalization(source: Source, train_split, image_size: int = 0) -> tuple:
  """(mean, std) per channel on the [0, 1] scale: the published values for
  tfds's CIFAR, ImageNet's for images read from files, measured on the
  training images for an in-memory image folder."""
  if image_size:
    from resnet_jax.data import file_loader
    return file_loader.IMAGENET_MEAN_STD
  if source.kind == 'tfds':
    return MEAN_STD[source.name]
  return image_folder.mean_std(train_split.images)


def check_hold_out(size: int, examples: int) -> None:
  """Refuses a validation split that leaves no training images."""
  if size >= examples:
    raise errors.UserError(f'validation_size {size} leaves no training images (the '
                           f'training split has {examples}); set '
                           '--config.validation_size lower')


def hold_out(train, size: int, seed: int) -> tuple:
  """Splits `size` validation images off a training split, fixed by `seed`.

  Returns:
    (training split without them, validation split), each in the original
    order; the same seed always holds out the same images.

  Raises:
    errors.UserError: when `size` leaves no training images.
  """
  check_hold_out(size, len(train))
  held = np.zeros(len(train), bool)
  held[np.random.default_rng([seed, 2]).permutation(len(train))[:size]] = True
  return train.take(~held), train.take(held)


def import_tfds():
  """(tensorflow_datasets, tensorflow), imported only on the tfds path.

  Raises:
    errors.UserError: they are not installed.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    import tensorflow_datasets as tfds  # Heavy: only where tfds data is read.
    import tensorflow as tf
  except ImportError as e:
    raise errors.UserError(
        f'the tfds datasets (cifar10, cifar100) need tensorflow-datasets and '
        f'TensorFlow ({e}); pip install -e ".[tfds]", or train on an image-folder '
        'dataset, which needs neither') from e
  return tfds, tf


def _load_tfds(dataset: str, split: str, data_dir: Optional[str]):
  """Reads a whole tfds split into memory, preparing the dataset if needed.

  Raises:
    errors.UserError: the dataset is not there and cannot be downloaded.
  """
  from resnet_jax.data import input_pipeline
  tfds, tf = import_tfds()
  # tf.data must not grab an accelerator that JAX owns.
  tf.config.set_visible_devices([], 'GPU')

  builder = tfds.builder(dataset, data_dir=data_dir)
  if not builder.is_prepared():
    where = data_dir or tfds.core.constants.DATA_DIR
    advice = (f'dataset {dataset} is not in {where} and could not be downloaded '
              '({}); without internet, build it from the official archive: '
              'python -m resnet_jax.prepare_data --archive '
              f'{dataset.replace("cifar", "cifar-")}-binary.tar.gz --data_dir DIR, '
              'then pass --config.data_dir=DIR')
    # tfds retries a failed download for minutes; a closed network is told
    # in seconds.
    if not _reachable(_DOWNLOAD_HOST):
      raise errors.UserError(advice.format(f'{_DOWNLOAD_HOST} is unreachable'))
    try:
      builder.download_and_prepare()
    except Exception as e:  # tfds raises many kinds on a failed download.
      raise errors.UserError(advice.format(type(e).__name__)) from e
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  names = tuple(builder.info.features['label'].names)  # Unique: also the ids.
  return input_pipeline.Split(images=np.asarray(data['image'], np.uint8),
                              labels=np.asarray(data['label'], np.int32),
                              class_names=names, class_ids=names)


_DOWNLOAD_HOST = 'www.cs.toronto.edu'


def _reachable(host: str, timeout: float = 5.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False
