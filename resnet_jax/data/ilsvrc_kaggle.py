"""Kaggle's copy of ILSVRC-2012 -> the same image folder as the official files.

Kaggle's "ImageNet Object Localization Challenge" download unzips to
`ILSVRC/Data/CLS-LOC/{train/<wnid>/*.JPEG, val/*.JPEG, test/*.JPEG}` (val/
and test/ flat), with at its top `LOC_synset_mapping.txt` (lines `n01440764
tench, Tinca tinca`, the 1,000 classes in the official order) and
`LOC_val_solution.csv` (`ImageId,PredictionString`; the first word of the
PredictionString is the image's wnid). `arrange` places train/ and val/ into
`train/<wnid>/` and `val/<wnid>/` as hard links (the 150 GB are not copied
again; a copy where linking fails) with a `classes.txt`; test/ is unlabelled
and never an evaluation split, so it is left out.
"""

import csv
import os
from typing import Optional

from resnet_jax import errors
from resnet_jax import logs
from resnet_jax.data import copy_progress
from resnet_jax.data import ilsvrc
from resnet_jax.data import image_folder
from resnet_jax.data import staging
from resnet_jax.logs import log

MAPPING = 'LOC_synset_mapping.txt'
VAL_SOLUTION = 'LOC_val_solution.csv'
_DATA = ('ILSVRC', 'Data', 'CLS-LOC')
ZIP = 'imagenet-object-localization-challenge.zip'  # The download, before unzipping.
_UNZIP = f"unzip Kaggle's whole download ({ZIP}) and pass its root folder"


def find(source: str) -> Optional[tuple]:
  """(root, CLS-LOC folder) if `source` is the root of Kaggle's download or a
  folder on the way down to `ILSVRC/Data/CLS-LOC` (that one included)."""
  parts = os.path.abspath(source).split(os.sep)
  for depth in range(len(_DATA) + 1):  # source = root/ILSVRC/Data/CLS-LOC[:depth]
    if depth and tuple(parts[-depth:]) != _DATA[:depth]:
      continue
    root = os.sep.join(parts[:len(parts) - depth]) or os.sep
    if os.path.isdir(os.path.join(root, *_DATA, 'train')):
      return root, os.path.join(root, *_DATA)
  return None


def read_mapping(path: str) -> tuple:
  """(wnids in file order, {wnid: readable names}) from LOC_synset_mapping.txt."""
  if not os.path.isfile(path):
    raise errors.UserError(f'{path} is missing (the class list of Kaggle\'s '
                           f'ImageNet download); {_UNZIP}')
  words = {}
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      wnid, _, names = line.strip().partition(' ')
      if not names.strip() or wnid in words:
        raise errors.UserError(f'{path} line {number} is not `<wnid> <names>` of a new '
                               f'class: {line.strip()!r}; {_UNZIP}')
      words[wnid] = names.strip()
  if not words:
    raise errors.UserError(f'{path} lists no classes; {_UNZIP}')
  return list(words), words


def read_val_solution(path: str, words: dict) -> dict:
  """{image id: wnid} from LOC_val_solution.csv, every wnid one of `words`."""
  if not os.path.isfile(path):
    raise errors.UserError(f'{path} is missing (the validation labels of Kaggle\'s '
                           f'ImageNet download); {_UNZIP}')
  labels = {}
  with open(path, newline='', encoding='utf-8-sig') as f:
    rows = csv.reader(f)
    if next(rows, None) != ['ImageId', 'PredictionString']:
      raise errors.UserError(f'{path} does not start with `ImageId,PredictionString`; '
                             f'it is not Kaggle\'s {VAL_SOLUTION}: {_UNZIP}')
    for number, row in enumerate(rows, 2):
      if len(row) != 2 or not row[1].split():
        raise errors.UserError(f'{path} line {number} is not `ImageId,PredictionString`: '
                               f'{",".join(row)!r}; {_UNZIP}')
      wnid = row[1].split()[0]
      if wnid not in words:
        raise errors.UserError(f'{path} line {number} labels {row[0]} {wnid}, which is not '
                               f'a class of {MAPPING}; {_UNZIP}')
      labels[row[0]] = wnid
  return labels


def _images(folder: str) -> list:
  """The image files of `folder`, sorted."""
  return sorted(e.path for e in os.scandir(folder)
                if e.is_file() and e.name.lower().endswith(image_folder.SUFFIXES))


def _files(data: str, wnids: list, labels: dict, csv_path: str) -> tuple:
  """([(path, wnid)] of train/, the same of val/), checked against the labels."""
  train_dir, val_dir = os.path.join(data, 'train'), os.path.join(data, 'val')
  folders = {e.name for e in os.scandir(train_dir) if e.is_dir()}
  odd = sorted(folders ^ set(wnids))
  if odd:
    raise errors.UserError(
        f'{train_dir}/{odd[0]} is not a class of {MAPPING}: move it out of train/ if you '
        f'added it, else {_UNZIP}' if odd[0] in folders else
        f'{train_dir} lacks {odd[0]}, a class of {MAPPING}; the download is incomplete: '
        f'{_UNZIP}')
  train = [(p, w) for w in wnids for p in _images(os.path.join(train_dir, w))]
  if not os.path.isdir(val_dir):
    raise errors.UserError(f'{val_dir} is missing; {_UNZIP}')
  val = []
  for path in _images(val_dir):
    image_id = os.path.splitext(os.path.basename(path))[0]
    if image_id not in labels:
      raise errors.UserError(f'{path} has no label in {csv_path}; it is not an image of '
                             'the validation set: move it out of val/')
    val.append((path, labels[image_id]))
  if len(val) != len(labels):
    found = {os.path.splitext(os.path.basename(p))[0] for p, _ in val}
    lost = sorted(set(labels) - found)
    more = f' (and {len(lost) - 1:,} more)' if len(lost) > 1 else ''
    raise errors.UserError(f'{val_dir} lacks {lost[0]}{more}, labelled in {csv_path}; the '
                           f'download is incomplete: {_UNZIP}')
  return train, val


def arrange(source: str, data_dir: str, name: str = 'imagenet2012') -> dict:
  """Builds `data_dir/name/{train,val}/<wnid>/` and `classes.txt` from
  Kaggle's download at (or below) `source`, as `ilsvrc.arrange` does from
  the official files.

  Returns:
    {'path', 'train', 'val', 'classes', 'linked', 'copied', 'how'}: `how`
    says how the files were placed, for `ilsvrc.summary`.

  Raises:
    errors.UserError: not Kaggle's layout, a file missing or not what it
      should be, or the target exists (it is left as it is).
    errors.Stopped: SIGTERM or SIGINT (the partial copy removed).
  """
  found = find(source)
  if not found:
    raise errors.UserError(f'{source} is not Kaggle\'s ImageNet download (no '
                           f'{"/".join(_DATA)}/train); {_UNZIP}')
  root, data = found
  target = staging.check_target(data_dir, name, ilsvrc.train_command(data_dir, name))
  wnids, words = read_mapping(os.path.join(root, MAPPING))
  csv_path = os.path.join(root, VAL_SOLUTION)
  labels = read_val_solution(csv_path, words)
  linker = staging.Linker()
  with staging.Staging(data_dir) as stage:
    log.info('Listing the images of %s', data)
    splits = dict(zip(ilsvrc.SPLITS, _files(data, wnids, labels, csv_path)))
    out = os.path.join(stage.path, name)
    ilsvrc.make_folders(out, wnids, words)
    total = sum(map(len, splits.values()))
    with copy_progress.Meter("Arranging Kaggle's ILSVRC-2012", total,
                             by_bytes=False) as meter:
      done = 0
      for split, files in splits.items():
        for path, wnid in files:
          linker(path, os.path.join(out, split, wnid, os.path.basename(path)))
          done += 1
          meter.update(done, linker.copied_bytes)
    stage.place(out, target)
  how = (', as hard links (no space taken)' if not linker.copied else
         f', {linker.linked:,} as hard links and {linker.copied:,} copied'
         f' ({logs.size_text(linker.copied_bytes)})')
  return {'path': target, 'classes': len(wnids), 'linked': linker.linked,
          'copied': linker.copied, 'how': f" from Kaggle's copy{how}",
          **{s: len(f) for s, f in splits.items()}}
