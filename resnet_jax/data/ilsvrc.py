"""The official ILSVRC-2012 files -> an ImageNet-layout image folder.

image-net.org hands out three files: `ILSVRC2012_img_train.tar` (one tar per
class inside, `n01440764.tar` ...), `ILSVRC2012_img_val.tar` (50,000 JPEGs in
one flat folder, `ILSVRC2012_val_00000001.JPEG` ...) and the development kit
`ILSVRC2012_devkit_t12.tar.gz`, whose `data/meta.mat` maps the challenge's
class ids 1..1000 to WordNet ids and names, and whose
`data/ILSVRC2012_validation_ground_truth.txt` gives the validation images'
class ids in file order. `arrange` streams the tars (no 150 GB extraction
step) into `train/<wnid>/` and `val/<wnid>/` with a `classes.txt` of readable
names, the layout `image_folder` reads and `--config.image_size` trains on.
"""

import io
import os
import re
import shutil
import tarfile
import tempfile

from resnet_jax import errors

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
DEVKIT = 'ILSVRC2012_devkit_t12.tar.gz'
_META = 'data/meta.mat'
_GROUND_TRUTH = 'data/ILSVRC2012_validation_ground_truth.txt'
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG$')


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
    errors.UserError: not a readable devkit.
  """
  from scipy import io as scipy_io
  try:
    with tarfile.open(path, 'r:*') as tar:
      meta = scipy_io.loadmat(io.BytesIO(_member(tar, _META, path)), squeeze_me=True)
      truth = _member(tar, _GROUND_TRUTH, path).decode().split()
  except (tarfile.TarError, EOFError, OSError, ValueError) as e:
    raise errors.UserError(f'{path} is not a readable devkit archive ({e}); download '
                           f'{DEVKIT} from image-net.org again') from e
  classes = sorted((int(s['ILSVRC2012_ID']), str(s['WNID']), str(s['words']))
                   for s in meta['synsets'] if int(s['num_children']) == 0)
  if [c[0] for c in classes] != list(range(1, len(classes) + 1)):
    raise errors.UserError(f'{path}: the class ids of {_META} are not 1..N; it is '
                           'not the ILSVRC-2012 devkit')
  wnids = [c[1] for c in classes]
  return wnids, {c[1]: c[2] for c in classes}, [int(t) for t in truth]


def _write(data, path: str) -> None:
  with open(path, 'wb') as f:
    shutil.copyfileobj(data, f, 1 << 20)


def arrange(source: str, data_dir: str, name: str = 'imagenet2012') -> dict:
  """Builds `data_dir/name/{train,val}/<wnid>/` and `classes.txt` from the
  three official files in `source`; nothing is written in place until all
  is done (a staging folder in `data_dir` is renamed at the end).

  Returns:
    {'path', 'train', 'val', 'classes'}.

  Raises:
    errors.UserError: a file is missing or not what it should be, or the
      target exists (it is left as it is).
  """
  paths = {f: os.path.join(source, f) for f in (TRAIN_TAR, VAL_TAR, DEVKIT)}
  missing = [f for f, p in paths.items() if not os.path.isfile(p)]
  if missing:
    raise errors.UserError(f'{source} lacks {", ".join(missing)}: put the three '
                           f'ILSVRC-2012 files from image-net.org ({TRAIN_TAR}, '
                           f'{VAL_TAR}, {DEVKIT}) in one folder and pass it')
  target = os.path.join(data_dir, name)
  if os.path.exists(target):
    raise errors.UserError(f'{target} already exists; it was left as it is. Train with '
                           f'--config.dataset={name} --config.data_dir={data_dir}, or '
                           'delete it to rebuild')
  wnids, words, truth = read_devkit(paths[DEVKIT])
  os.makedirs(data_dir, exist_ok=True)
  counts = {'train': 0, 'val': 0}
  with tempfile.TemporaryDirectory(dir=data_dir, prefix='.arrange-') as tmp:
    staging = os.path.join(tmp, name)
    for split in counts:
      for wnid in wnids:
        os.makedirs(os.path.join(staging, split, wnid))
    try:
      with tarfile.open(paths[VAL_TAR], 'r|*') as tar:
        for m in tar:
          match = _VAL_NAME.search(m.name)
          if not m.isfile() or not match:
            continue
          index = int(match[1]) - 1
          if index >= len(truth):
            raise errors.UserError(f'{paths[VAL_TAR]} holds {m.name}, beyond the '
                                   f'{len(truth)} labels of the devkit')
          wnid = wnids[truth[index] - 1]
          _write(tar.extractfile(m), os.path.join(staging, 'val', wnid,
                                                  os.path.basename(m.name)))
          counts['val'] += 1
      with tarfile.open(paths[TRAIN_TAR], 'r|*') as tar:
        for m in tar:
          wnid = os.path.basename(m.name)[:-len('.tar')]
          if not m.isfile() or not m.name.endswith('.tar'):
            continue
          if wnid not in words:
            raise errors.UserError(f'{paths[TRAIN_TAR]} holds {m.name}, a class the '
                                   'devkit does not list')
          with tarfile.open(fileobj=tar.extractfile(m), mode='r|*') as inner:
            for f in inner:
              if f.isfile():
                _write(inner.extractfile(f), os.path.join(
                    staging, 'train', wnid, os.path.basename(f.name)))
                counts['train'] += 1
    except (tarfile.TarError, EOFError) as e:
      raise errors.UserError(f'an ILSVRC-2012 tar in {source} is damaged ({e}); '
                             'download it again') from e
    if counts['val'] != len(truth):
      raise errors.UserError(f'{paths[VAL_TAR]} holds {counts["val"]} validation '
                             f'images; the devkit labels {len(truth)}')
    with open(os.path.join(staging, 'classes.txt'), 'w', encoding='utf-8') as f:
      f.writelines(f'{w} {words[w]}\n' for w in wnids)
    os.rename(staging, target)
  return {'path': target, 'classes': len(wnids), **counts}
