"""Image-folder datasets: `NAME/train/<class>/*` and `NAME/test/<class>/*`.

The users' own data (CINIC-10, the JPEG copy of CIFAR-10, their photos) and
ImageNet's layout (`val/` instead of `test/`: ILSVRC-2012 once arranged by
`prepare_data`, Imagenette and Imagewoof as downloaded) as folders of PNG or
JPEG files. Labels follow the sorted folder names (for CIFAR-10 and ImageNet
that is the official label order); a `classes.txt` (or Kaggle's
`LOC_synset_mapping.txt`) beside the splits, lines `<folder> <name>[, more
names]`, gives each class its readable name ("tench", not "n01440764");
without one, folders that are all ImageNet wnids (Imagenette, Imagewoof) get
ImageNet's names (`imagenet_classes`). The folder stays the class's id, which
results are keyed by (ImageNet names two classes "crane").

32x32 datasets are decoded with Pillow into the same in-memory `Split` the
tfds source gives; other sizes are read from the files during training
(`file_loader`, `--config.image_size`). Nothing here imports TensorFlow.
"""

import collections
import concurrent.futures
import os
from typing import Optional

import numpy as np

from resnet_jax import errors
from resnet_jax.data import imagenet_classes

SPLITS = ('train', 'test')
# The evaluation split's folder: 'test', or ImageNet's 'val'.
EVAL_FOLDERS = ('test', 'val')
SUFFIXES = ('.png', '.jpg', '.jpeg')
SIZE = 32  # The in-memory size; others train with --config.image_size.
NAME_FILES = ('classes.txt', 'LOC_synset_mapping.txt')
# What `image_sizes` reads of a file to find its size in the header.
HEADER_BYTES = 64 * 1024


def find(data_dir: Optional[str], name: str) -> Optional[str]:
  """`data_dir/name` if it is an image-folder dataset (has train/), else None."""
  if not data_dir or not name or os.sep in name:
    return None
  root = os.path.join(data_dir, name)
  return root if os.path.isdir(os.path.join(root, 'train')) else None


def folder(root: str, split: str) -> str:
  """The folder of `split` ('train' or 'test'): 'test' is `test/`, or `val/`
  where only that exists (ImageNet's layout)."""
  if split == 'test':
    for name in EVAL_FOLDERS:
      if os.path.isdir(os.path.join(root, name)):
        return os.path.join(root, name)
  return os.path.join(root, split)


def split_name(root: str, split: str) -> str:
  """The name of `split`'s folder, which logs and eval.json report: 'val'
  where the evaluation split is ImageNet's `val/`."""
  return os.path.basename(folder(root, split))


def class_folders(root: str) -> tuple:
  """The sorted class folders, checked to be the same in train and test.

  Raises:
    errors.UserError: a split is missing, has no class folders, or a class is
      in only one split.
  """
  found = {}
  for split in SPLITS:
    where = folder(root, split)
    if not os.path.isdir(where):
      raise errors.UserError(f'{where} is missing; an image-folder dataset needs '
                             f'{root}/train/<class>/ and {root}/test/<class>/ (or '
                             f'val/<class>/)')
    found[split] = sorted(d for d in os.listdir(where)
                          if os.path.isdir(os.path.join(where, d)))
    if not found[split]:
      raise errors.UserError(_no_class_folders(root, where))
  only = sorted(set(found['train']) ^ set(found['test']))
  if only:
    name = only[0]
    here, there = ((folder(root, 'train'), folder(root, 'test')) if name in found['train']
                   else (folder(root, 'test'), folder(root, 'train')))
    raise errors.UserError(f'class {name!r} is in {here} but not in {there}; every '
                           'class needs images in both splits')
  return tuple(found['train'])


def _no_class_folders(root: str, where: str) -> str:
  if os.path.basename(os.path.normpath(root)) == 'CLS-LOC':
    # Kaggle's ImageNet: val/ is flat (its labels are in a CSV), test/ unlabelled.
    download = os.path.normpath(os.path.join(root, os.pardir, os.pardir, os.pardir))
    return (f'{root} is Kaggle\'s copy of ImageNet, whose val/ is not sorted by class '
            'and whose test/ has no labels; arrange it once with python -m '
            f'resnet_jax.prepare_data --imagenet {download} --data_dir DIR, then train '
            'with --config configs/imagenet.py --config.data_dir=DIR')
  return f'{where} has no class folders; put each class\'s images in {where}/<class>/'


def class_names(root: str) -> tuple:
  """The classes in label order: their readable names where `classes.txt`
  (or `LOC_synset_mapping.txt`) gives them, ImageNet's where there is no
  such file and every folder is a wnid, else the folder names; made unique
  by `unique_names` (`names_for`). The ids are `class_folders(root)`."""
  folders = class_folders(root)
  return names_for(folders, readable_names(root))


def names_for(ids, readable: dict) -> tuple:
  """Readable, unique names of the classes `ids`: from `readable` ({id:
  name}, a names file's), else ImageNet's own where every id is one of its
  wnids (Imagenette, Imagewoof and other subsets come with no names file),
  else the ids themselves."""
  if not readable:
    readable = imagenet_classes.names_of(ids) or {}
  return unique_names([readable.get(i, i) for i in ids], ids)


def unique_names(names, ids) -> tuple:
  """`names`, each one that several classes share followed by the class's
  id: ImageNet's two "crane"s (the bird and the machine) become `crane
  (n02012849)` and `crane (n03126707)`. Where the ids do not tell them apart
  either (a checkpoint written before ids were kept), the label does."""
  counts = collections.Counter(names)
  return tuple(
      f'{name} ({key if key != name else f"class {label}"})' if counts[name] > 1
      else name for label, (name, key) in enumerate(zip(names, ids)))


def readable_names(root: str) -> dict:
  """{folder: first readable name} from the dataset's names file, if any."""
  for name in NAME_FILES:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      names = {}
      with open(path, encoding='utf-8') as f:
        for line in f:
          key, _, rest = line.strip().partition(' ')
          if key and rest.strip():
            names[key] = rest.split(',')[0].strip()
      return names
  return {}


def count(root: str, split: str) -> int:
  """How many images `root/split` holds, from the file names alone."""
  return len(_files(root, split, class_folders(root))[0])


def _files(root: str, split: str, folders: tuple) -> tuple:
  """(paths relative to the split's folder, int32 labels), class by class,
  files sorted by name."""
  paths, labels = [], []
  top = folder(root, split)
  for label, name in enumerate(folders):
    with os.scandir(os.path.join(top, name)) as entries:
      files = sorted(e.name for e in entries if e.name.lower().endswith(SUFFIXES))
    if not files:
      raise errors.UserError(f'{os.path.join(top, name)} holds no .png or .jpg images; '
                             'every class needs images in both splits')
    paths += [f'{name}/{f}' for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def file_split(root: str, split: str):
  """`split` as a `file_loader.FileSplit`, reading no image (ImageNet's
  1.28M training files: one directory listing per class, the class folders
  listed once)."""
  from resnet_jax.data import file_loader
  folders = class_folders(root)
  paths, labels = _files(root, split, folders)
  # The file system's own bytes (os.fsencode): any name it holds, 'café_1.jpg'
  # or bytes that are not UTF-8, round-trips through os.fsdecode.
  return file_loader.FileSplit(folder(root, split),
                               np.asarray([os.fsencode(p) for p in paths], dtype=bytes),
                               labels, names_for(folders, readable_names(root)), folders)


def image_sizes(root: str, split: str) -> list:
  """(width, height) of every image of `root/split`, from the headers.

  Raises:
    errors.UserError: naming the first file that is not a readable image.
  """
  from resnet_jax.data import image_decoding
  paths, _ = _files(root, split, class_folders(root))
  top = folder(root, split)

  def size(path):
    try:
      with open(os.path.join(top, path), 'rb') as f:
        # The header is within the first KBs: reading whole files would be a
        # second pass over ImageNet's 150 GB. A header past them (a large
        # EXIF or ICC block) is read from the whole file.
        head = f.read(HEADER_BYTES)
        try:
          return image_decoding.image_size(head)
        except image_decoding.BadImage:
          rest = f.read()
          if not rest:
            raise
          return image_decoding.image_size(head + rest)
    except (image_decoding.BadImage, OSError) as e:
      raise errors.UserError(f'{os.path.join(top, path)} is not a readable image ({e}); '
                             'replace or remove it') from e
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(size, paths))


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
            f'{path} is {im.size[0]}x{im.size[1]} pixels, not {SIZE}x{SIZE}: set '
            '--config.image_size (e.g. 224) to train on crops decoded from the files '
            'at that size')
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
  folders = class_folders(root)
  paths, labels = _files(root, split, folders)
  top = folder(root, split)
  # Pillow releases the GIL while decoding: threads use every core.
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    images = np.stack(list(pool.map(decode, [os.path.join(top, p) for p in paths])))
  return input_pipeline.Split(images=images, labels=labels,
                              class_names=class_names(root), class_ids=folders)


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
