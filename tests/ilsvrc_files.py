"""ILSVRC-2012's official files in miniature: tar members and the devkit,
for the tests and for benchmarks/imagenet_standin.py."""

import io
import tarfile

import numpy as np


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  """Adds a file member `name` holding `data`."""
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = len(data), 1336000000, 0o644
  tar.addfile(info, io.BytesIO(data))


def write_devkit(path: str, synsets: list, val_ids) -> None:
  """The devkit's .tar.gz at `path`: data/meta.mat's `synsets` table, rows
  (ILSVRC2012_ID, WNID, words, num_children), and the validation ground
  truth, one class id a line."""
  from scipy import io as scipy_io
  table = np.array(synsets, dtype=[('ILSVRC2012_ID', 'O'), ('WNID', 'O'), ('words', 'O'),
                                   ('num_children', 'O')])
  mat = io.BytesIO()
  scipy_io.savemat(mat, {'synsets': table.reshape(-1, 1)})
  with tarfile.open(path, 'w:gz') as tar:
    add(tar, 'ILSVRC2012_devkit_t12/data/meta.mat', mat.getvalue())
    add(tar, 'ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt',
        ''.join(f'{i}\n' for i in val_ids).encode())


def write_train_tar(path: str, classes: dict) -> None:
  """ILSVRC2012_img_train.tar at `path`: one `<wnid>.tar` per class of
  `classes` {wnid: [(file name, bytes), ...]}."""
  with tarfile.open(path, 'w') as tar:
    for wnid, files in classes.items():
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for name, data in files:
          add(t, name, data)
      add(tar, f'{wnid}.tar', inner.getvalue())


def write_val_tar(path: str, images) -> None:
  """ILSVRC2012_img_val.tar at `path`: `images` (bytes) as
  ILSVRC2012_val_00000001.JPEG ... in one flat folder."""
  with tarfile.open(path, 'w') as tar:
    for i, data in enumerate(images):
      add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', data)
