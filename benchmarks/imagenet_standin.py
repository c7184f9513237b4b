r"""A stand-in of ILSVRC-2012's shape: its folders and files, tiny images.

`write_standin(root, shape, official)` writes, once (ROOT/standin.json
records the shape):
- ROOT/imagenet2012/{train,val}/<wnid>/*.JPEG and classes.txt, the folder
  `prepare_data --imagenet` arranges and `--config configs/imagenet.py
  --config.data_dir=ROOT` trains on;
- with `official`, ROOT/official/: the three files image-net.org hands out
  in their layouts (`resnet_jax/data/ilsvrc.py`): ILSVRC2012_img_train.tar of
  one tar per class, the flat ILSVRC2012_img_val.tar, and the devkit's
  meta.mat and validation ground truth.
File k of either layout holds the same bytes, so prepare_data's result can
be compared with the arranged folder. The images are `shape['sizes']` px a
side, one in 32 grayscale and one in 64 CMYK, as ImageNet has some: a pool of
distinct JPEGs encoded once and cycled through, so writing costs what the
file system costs (1.33M files: minutes), not encoding. The real wnids and
names for up to 1,000 classes, made-up ones beyond.
"""

import concurrent.futures
import io
import json
import os
import shutil
import time

import numpy as np

POOL = 256


def _pool(sizes: tuple, seed: int, noise: float = 6.0) -> list:
  """POOL distinct JPEGs of `sizes[0]`..`sizes[1]` px a side: smooth colour
  ramps with a little noise (photo-like sizes for their pixel count; more
  `noise`, larger files: 48 at 350-500 px gives ImageNet's ~110 KB); one in
  32 grayscale, one in 64 CMYK (ImageNet has both)."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  pool = []
  for i in range(POOL):
    h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    ramp = np.einsum('cd,dhw->hwc', rng.uniform(-120, 120, (3, 2)), np.stack([y, x]))
    pixels = rng.uniform(0, 255, 3) + ramp + rng.normal(0, noise, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image = image.convert('CMYK' if i % 64 == 7 else 'L' if i % 32 == 3 else 'RGB')
    out = io.BytesIO()
    image.save(out, 'JPEG', quality=int(rng.integers(75, 96)))
    pool.append(out.getvalue())
  return pool


def _classes(count: int) -> dict:
  """{wnid: readable name}: ImageNet's first `count`, else made-up wnids."""
  from resnet_jax.data import imagenet_classes
  real = imagenet_classes.names()
  if count <= len(real):
    return dict(list(real.items())[:count])
  return {f'n{90000000 + i:08d}': f'class {i}' for i in range(count)}


def _put(path: str, data: bytes) -> None:
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  try:
    os.write(fd, data)
  finally:
    os.close(fd)


def remove(root: str) -> None:
  """Removes what `write_standin` and imagenet_scale.py wrote in `root`."""
  for name in ('imagenet2012', 'official', 'prepared', 'runs', 'standin.json'):
    path = os.path.join(root, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def write_standin(root: str, shape: dict, official: bool) -> dict:
  """Writes what `shape` asks (see the module's docstring) unless
  ROOT/standin.json says it is there; returns that record."""
  marker = os.path.join(root, 'standin.json')
  record = json.load(open(marker)) if os.path.isfile(marker) else None
  if record and {k: record.get(k) for k in shape} != shape:
    raise SystemExit(f'error: {root} holds a stand-in of another shape ({marker}); '
                     'pass --rewrite or another folder')
  if record and (record['official_seconds'] is not None or not official):
    return record
  arranged, flat = os.path.join(root, 'imagenet2012'), os.path.join(root, 'official')
  if not record and os.path.exists(arranged):
    raise SystemExit(f'error: {arranged} exists without {marker} (a write cut short?); '
                     'pass --rewrite or another folder')
  pool = _pool(tuple(shape['sizes']), shape['seed'], shape.get('noise', 6.0))
  words = _classes(shape['classes'])
  wnids, n, per = list(words), shape['classes'], shape['per_class']
  rng = np.random.default_rng(shape['seed'])
  val_label = rng.permutation(np.arange(shape['val']) % n)  # Equal shares, shuffled.
  ids = rng.permutation(n) + 1  # The devkit's class ids are not in wnid order.
  train_bytes = sum(len(pool[k % POOL]) for k in range(n * per))
  val_bytes = sum(len(pool[(n * per + i) % POOL]) for i in range(shape['val']))
  if not record:
    started = time.perf_counter()
    from resnet_jax.data import ilsvrc
    ilsvrc.make_folders(arranged, wnids, words)

    def one_class(c):
      for j in range(per):
        _put(os.path.join(arranged, 'train', wnids[c], f'{wnids[c]}_{j}.JPEG'),
             pool[(c * per + j) % POOL])
    # Creating files is system calls, which release the GIL.
    with concurrent.futures.ThreadPoolExecutor(4) as threads:
      list(threads.map(one_class, range(n)))
      list(threads.map(lambda i: _put(
          os.path.join(arranged, 'val', wnids[val_label[i]], f'ILSVRC2012_val_{i + 1:08d}.JPEG'),
          pool[(n * per + i) % POOL]), range(shape['val'])))
    record = dict(shape, train=n * per, val_files=shape['val'], train_bytes=train_bytes,
                  val_bytes=val_bytes, arranged_seconds=round(time.perf_counter() - started, 1),
                  official_seconds=None)
  if official:
    started = time.perf_counter()
    _write_official(flat, words, ids, val_label, pool, per)
    record['official_seconds'] = round(time.perf_counter() - started, 1)
  with open(marker, 'w') as f:
    json.dump(record, f)
  return record


def _write_official(folder, words, ids, val_label, pool, per) -> None:
  """ILSVRC2012_img_train.tar (a tar per class), _img_val.tar (flat), the
  devkit; `words` {wnid: name} in label order, `ids` their devkit ids."""
  from resnet_jax.data import ilsvrc
  from tests import ilsvrc_files
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  wnids, n = list(words), len(words)
  ilsvrc_files.write_train_tar(os.path.join(folder, ilsvrc.TRAIN_TAR), {
      wnid: [(f'{wnid}_{j}.JPEG', pool[(c * per + j) % POOL]) for j in range(per)]
      for c, wnid in enumerate(wnids)})
  ilsvrc_files.write_val_tar(os.path.join(folder, ilsvrc.VAL_TAR),
                             (pool[(n * per + i) % POOL] for i in range(len(val_label))))
  # meta.mat: the leaves (classes) by id, and one inner node, as the devkit has.
  rows = [(int(ids[c]), w, words[w], 0) for c, w in enumerate(wnids)] + [
      (n + 1, 'n00001740', 'entity', n)]
  ilsvrc_files.write_devkit(os.path.join(folder, ilsvrc.DEVKIT), rows,
                            [ids[c] for c in val_label])
