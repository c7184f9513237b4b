"""Image-folder datasets: `NAME/train/<class>/*` and `NAME/test/<class>/*`.

The users' own data (CINIC-10, the JPEG copy of CIFAR-10, their 32x32 sets)
as folders of PNG or JPEG files. Class names are the folder names in sorted
order (for CIFAR-10 that is the official label order). Images are decoded with
Pillow into the same in-memory `Split` the tfds source gives, so the batch
stream, augmentation and evaluation never know where images came from. Nothing
here imports TensorFlow.
"""

import concurrent.futures
import os
from typing import Optional

import numpy as np

from resnet_jax import errors

SPLITS = ('train', 'test')
SUFFIXES = ('.png', '.jpg', '.jpeg')
SIZE = 32  # The models' input size; other sizes are refused, not resized.


def find(data_dir: Optional[str], name: str) -> Optional[str]:
  """`data_dir/name` if it is an image-folder dataset (has train/), else None."""
  if not data_dir or not name or os.sep in name:
    return None
  root = os.path.join(os.path.expanduser(data_dir), name)
  return root if os.path.isdir(os.path.join(root, 'train')) else None


def class_names(root: str) -> tuple:
  """The sorted class folders, checked to be the same in train and test.

  Raises:
    errors.UserError: a split is missing, has no class folders, or a class is
      in only one split.
  """
  found = {}
  for split in SPLITS:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
      raise errors.UserError(f'{folder} is missing; an image-folder dataset needs '
                             f'{root}/train/<class>/ and {root}/test/<class>/')
    found[split] = sorted(d for d in os.listdir(folder)
                          if os.path.isdir(os.path.join(folder, d)))
    if not found[split]:
      raise errors.UserError(f'{folder} has no class folders; put each class\'s '
                             f'images in {folder}/<class>/')
  only = sorted(set(found['train']) ^ set(found['test']))
  if only:
    name = only[0]
    where = 'train' if name in found['train'] else 'test'
    other = 'test' if where == 'train' else 'train'
    raise errors.UserError(f'class {name!r} is in {root}/{where} but not in '
                           f'{root}/{other}; every class needs images in both splits')
  return tuple(found['train'])


def count(root: str, split: str) -> int:
  """How many images `root/split` holds, from the file names alone."""
  return len(_files(root, split, class_names(root))[0])


def _files(root: str, split: str, names: tuple) -> tuple:
  paths, labels = [], []
  for label, name in enumerate(names):
    folder = os.path.join(root, split, name)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(SUFFIXES))
    if not files:
      raise errors.UserError(f'{folder} holds no .png or .jpg images; every class '
                             'needs images in both splits')
    paths += [os.path.join(folder, f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def decode(path: str) -> np.ndarray:
  """One file -> uint8 [32, 32, 3] RGB (Pillow's decoder).

  Raises:
    errors.UserError: unreadable, or not 32x32.
  """
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      if im.size != (SIZE, SIZE):
        raise errors.UserError(
            f'{path} is {im.size[0]}x{im.size[1]} pixels; the dataset must hold '
            f'{SIZE}x{SIZE} images: resize them (e.g. with Pillow) or remove this one')
      return np.asarray(im.convert('RGB'), np.uint8)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise errors.UserError(f'{path} is not a readable image ({e}); replace or '
                           'remove it') from e


def load_split(root: str, split: str):
  """Decodes every image of `root/split` into memory.

  Returns:
    An `input_pipeline.Split`: images in class order, files sorted by name.
  """
  from resnet_jax.data import input_pipeline
  names = class_names(root)
  paths, labels = _files(root, split, names)
  # Pillow releases the GIL while decoding: threads use every core.
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    images = np.stack(list(pool.map(decode, paths)))
  return input_pipeline.Split(images=images, labels=labels, class_names=names)


def mean_std(images: np.ndarray) -> tuple:
  """Per-channel mean and standard deviation on the [0, 1] scale."""
  flat = images.reshape(-1, images.shape[-1])
  total, squares = np.zeros(flat.shape[-1]), np.zeros(flat.shape[-1])
  for start in range(0, len(flat), 1 << 22):  # Chunks: float64 copies stay small.
    chunk = flat[start:start + (1 << 22)].astype(np.float64) / 255.0
    total += chunk.sum(0)
    squares += (chunk * chunk).sum(0)
  mean = total / len(flat)
  std = np.sqrt(np.maximum(squares / len(flat) - mean * mean, 0.0))
  return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
