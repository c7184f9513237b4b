"""The official ILSVRC-2012 files -> an ImageNet-layout image folder.

image-net.org hands out three files: `ILSVRC2012_img_train.tar` (one tar per
class inside, `n01440764.tar` ...), `ILSVRC2012_img_val.tar` (50,000 JPEGs in
one flat folder, `ILSVRC2012_val_00000001.JPEG` ...) and the development kit
`ILSVRC2012_devkit_t12.tar.gz`, whose `data/meta.mat` maps the challenge's
class ids 1..1000 to WordNet ids and names, and whose
`data/ILSVRC2012_validation_ground_truth.txt` gives the validation images'
class ids in file order. `arrange` streams the tars (no 150 GB extraction
step) into `train/<wnid>/` and `val/<wnid>/` with a `classes.txt` of readable
names, the layout `image_folder` reads and configs/imagenet.py trains on.
Kaggle's copy of the same images is arranged by `ilsvrc_kaggle`.
"""

import io
import os
import re
import shutil
import tarfile

import numpy as np

from resnet_jax import errors
from resnet_jax.data import archives
from resnet_jax.data import copy_progress
from resnet_jax.data import imagenet_classes
from resnet_jax.data import staging

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
DEVKIT = 'ILSVRC2012_devkit_t12.tar.gz'
_META = 'data/meta.mat'
_GROUND_TRUTH = 'data/ILSVRC2012_validation_ground_truth.txt'
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG$')
SPLITS = ('train', 'val')
_KAGGLE_ROOT = ("the root of Kaggle's download (the folder holding LOC_synset_mapping.txt "
                'and ILSVRC/Data/CLS-LOC)')


def _member(tar: tarfile.TarFile, suffix: str, archive: str) -> bytes:
  for m in tar.getmembers():
    if m.isfile() and m.name.endswith(suffix):
      return tar.extractfile(m).read()
  raise errors.UserError(f'{archive} has no {suffix}; it is not the ILSVRC-2012 '
                         f'development kit ({DEVKIT} from image-net.org)')


def read_devkit(path: str) -> tuple:
  """(wnids by class id - 1, {wnid: readable names}, validation class ids
  in file order) from the development kit.

  Raises:
    errors.UserError: not a readable devkit, naming the member at fault (and
      the line of a bad label).
  """
  try:
    with tarfile.open(path, 'r:*') as tar:
      meta, truth = (_member(tar, m, path) for m in (_META, _GROUND_TRUTH))
  except archives.READ_ERRORS as e:
    raise errors.UserError(f'{path} is not a readable devkit archive ({archives.reason(e)});'
                           f' download {DEVKIT} from image-net.org again') from e
  wnids, words, inner = _read_meta(meta, path)
  return wnids, words, _read_truth(truth, path, len(wnids), inner)


def _read_meta(data: bytes, path: str) -> tuple:
  """(wnids by class id - 1, {wnid: names}, ids of the synsets that are not
  classes) from meta.mat's `synsets` table: the 1,000 leaves are the classes
  1..1000, the inner nodes of the hierarchy (1001..1860) are not."""
  from scipy import io as scipy_io
  fix = f'download {DEVKIT} from image-net.org again'
  try:
    mat = scipy_io.loadmat(io.BytesIO(data), squeeze_me=True)
  except Exception as e:  # pylint: disable=broad-except
    # scipy raises many kinds on foreign bytes (TypeError, IndexError,
    # MatReadError, ...), and its messages never name the member.
    raise errors.UserError(f'{path}: {_META} is damaged ({type(e).__name__}: '
                           f'{" ".join(str(e).split())}); {fix}') from e
  if 'synsets' not in mat:
    raise errors.UserError(f'{path}: {_META} has no `synsets` table; it is not the '
                           f'ILSVRC-2012 devkit: {fix}')
  try:
    rows = [(int(s['ILSVRC2012_ID']), str(s['WNID']), str(s['words']),
             int(s['num_children'])) for s in np.atleast_1d(mat['synsets'])]
  except (KeyError, ValueError, TypeError, IndexError) as e:
    raise errors.UserError(f'{path}: the `synsets` of {_META} are not rows of '
                           'ILSVRC2012_ID, WNID, words and num_children; it is not the '
                           f'ILSVRC-2012 devkit: {fix}') from e
  classes = sorted(r[:3] for r in rows if r[3] == 0)
  if [c[0] for c in classes] != list(range(1, len(classes) + 1)):
    raise errors.UserError(f'{path}: the class ids of {_META} are not 1..N; it is '
                           f'not the ILSVRC-2012 devkit: {fix}')
  return ([c[1] for c in classes], {c[1]: c[2] for c in classes},
          {r[0] for r in rows if r[3] != 0})


def _read_truth(data: bytes, path: str, count: int, inner: set) -> list:
  """The class ids of the ground-truth file, line n the label of
  ILSVRC2012_val_<n>.JPEG: each must be a class, 1..count (an id out of
  range would index another class, or fail deep inside the copy)."""
  labels = []
  # Line n is image n's: a blank line inside would shift the rest, so only
  # the file's end may have them.
  lines = data.decode('utf-8', 'replace').rstrip().split('\n')
  for number, line in enumerate(lines, 1):
    text = line.strip()
    digits = re.fullmatch(r'[0-9]+', text)
    if digits and 1 <= int(text) <= count:
      labels.append(int(text))
      continue
    if not text:
      what = 'empty'
    elif digits and int(text) in inner:
      what = f'{text!r}, the id of a synset with subclasses (not a class)'
    else:
      what = f'{text[:20]!r}, not a class id'
    raise errors.UserError(f'{path}: line {number} of {_GROUND_TRUTH} is {what}; every '
                           f'line must be a class id 1..{count} of {_META}, the label of '
                           f'the validation image of that number: download {DEVKIT} from '
                           'image-net.org again')
  return labels


def _write(data, path: str) -> None:
  with open(path, 'wb') as f:
    shutil.copyfileobj(data, f, 1 << 20)


def train_command(data_dir: str, name: str = 'imagenet2012') -> str:
  """The command that trains the ImageNet recipe on the arranged folder."""
  dataset = '' if name == 'imagenet2012' else f' --config.dataset={name}'
  return (f'python -m resnet_jax.main --config configs/imagenet.py --workdir runs/r50'
          f'{dataset} --config.data_dir={data_dir}')


def summary(info: dict, data_dir: str) -> str:
  """What `prepare_data --imagenet` prints: what was built (`arrange`'s
  result, either source's) and the command that trains on it."""
  return (f"Arranged ILSVRC-2012 in {info['path']}: {info['train']} train and {info['val']} "
          f"val images of {info['classes']} classes{info.get('how', '')}.\n"
          f"Train with {train_command(data_dir)}")


def make_folders(out: str, wnids: list, words: dict) -> None:
  """`out/{train,val}/<wnid>/` of every class, and `out/classes.txt` of
  their readable names (`words`)."""
  for split in SPLITS:
    for wnid in wnids:
      os.makedirs(os.path.join(out, split, wnid))
  imagenet_classes.write_names(out, {w: words[w] for w in wnids})


def arrange(source: str, data_dir: str, name: str = 'imagenet2012') -> dict:
  """Builds `data_dir/name/{train,val}/<wnid>/` and `classes.txt` from the
  three official files in `source`; nothing is written in place until all
  is done (a staging folder in `data_dir` is renamed at the end, and removed
  however the run ends: `staging`).

  Returns:
    {'path', 'train', 'val', 'classes'}.

  Raises:
    errors.UserError: the folder or a file is missing, a file is not what it
      should be, or the target exists (it is left as it is).
    errors.Stopped: SIGTERM or SIGINT (the partial copy removed).
  """
  if not os.path.isdir(source):
    what = 'is not a folder' if os.path.exists(source) else 'does not exist'
    raise errors.UserError(f'{source} {what}; pass the folder holding {TRAIN_TAR}, '
                           f'{VAL_TAR} and {DEVKIT} (from image-net.org), or {_KAGGLE_ROOT}')
  paths = {f: os.path.join(source, f) for f in (TRAIN_TAR, VAL_TAR, DEVKIT)}
  missing = [f for f, p in paths.items() if not os.path.isfile(p)]
  if missing:
    raise errors.UserError(f'{source} lacks {", ".join(missing)}: put the three '
                           'ILSVRC-2012 files from image-net.org in one folder and pass '
                           f'it, or pass {_KAGGLE_ROOT}')
  target = staging.check_target(data_dir, name, train_command(data_dir, name))
  wnids, words, truth = read_devkit(paths[DEVKIT])
  counts = dict.fromkeys(SPLITS, 0)
  val_size = os.path.getsize(paths[VAL_TAR])
  total = val_size + os.path.getsize(paths[TRAIN_TAR])  # Progress: bytes of the tars read.
  with staging.Staging(data_dir) as stage, copy_progress.Meter(
      'Arranging ILSVRC-2012', total, by_bytes=True) as meter:
    out = os.path.join(stage.path, name)
    make_folders(out, wnids, words)
    current, where = paths[VAL_TAR], ''  # `where`: the member read last, for errors.
    try:
      with open(current, 'rb') as raw, tarfile.open(fileobj=raw, mode='r|*') as tar:
        for m in tar:
          match = _VAL_NAME.search(m.name)
          if not m.isfile() or not match:
            continue
          index = int(match[1]) - 1
          if index >= len(truth):
            raise errors.UserError(f'{current} holds {m.name}, beyond the '
                                   f'{len(truth)} labels of the devkit')
          wnid = wnids[truth[index] - 1]
          _write(tar.extractfile(m), os.path.join(out, 'val', wnid,
                                                  os.path.basename(m.name)))
          counts['val'] += 1
          meter.update(counts['val'], raw.tell())
          where = f' after {m.name}'
      current, where = paths[TRAIN_TAR], ''
      with open(current, 'rb') as raw, tarfile.open(fileobj=raw, mode='r|*') as tar:
        for m in tar:
          wnid = os.path.basename(m.name)[:-len('.tar')]
          if not m.isfile() or not m.name.endswith('.tar'):
            continue
          if wnid not in words:
            raise errors.UserError(f'{current} holds {m.name}, a class the '
                                   'devkit does not list')
          where = f' in {m.name}'  # A class's own tar.
          with tarfile.open(fileobj=tar.extractfile(m), mode='r|*') as inner:
            for f in inner:
              if f.isfile():
                _write(inner.extractfile(f), os.path.join(
                    out, 'train', wnid, os.path.basename(f.name)))
                counts['train'] += 1
                meter.update(counts['val'] + counts['train'], val_size + raw.tell())
          where = f' after {m.name}'
    except archives.READ_ERRORS as e:
      if isinstance(e, OSError) and e.errno is not None:
        raise  # Writing failed (a full disk): `Staging` says so.
      raise errors.UserError(f'{current} is damaged{where} ({archives.reason(e)}); '
                             'download it again') from e
    meter.update(counts['val'] + counts['train'], total)  # Past the tars' end blocks.
    if counts['val'] != len(truth):
      raise errors.UserError(f'{paths[VAL_TAR]} holds {counts["val"]} validation '
                             f'images; the devkit labels {len(truth)}')
    stage.place(out, target)
  return {'path': target, 'classes': len(wnids), **counts}
