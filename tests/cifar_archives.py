"""Writes small archives in the official CIFAR layouts (binary and python)."""

import io
import pickle
import tarfile

import numpy as np

CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
           'horse', 'ship', 'truck']


def random_cifar10(num_train: int, num_test: int, seed: int = 0,
                   balanced: bool = False) -> dict:
  """Learnable random data: each class a random template plus noise (uint8 NHWC).

  Structure in the data keeps training well-conditioned, so runs that differ
  only in float rounding (device counts, strategies) stay close. `balanced`
  gives every class the same share (each split then holds every class).
  """
  rng = np.random.default_rng(seed)
  templates = rng.integers(0, 256, (10, 32, 32, 3))

  def make(n):
    labels = rng.permutation(np.arange(n) % 10) if balanced else rng.integers(0, 10, n)
    noise = rng.normal(0, 40, (n, 32, 32, 3))
    return (np.clip(templates[labels] + noise, 0, 255).astype(np.uint8),
            labels.astype(np.int64))
  return {'train': make(num_train), 'test': make(num_test)}


def _planes(images):
  """NHWC -> N x 3072 in the official R, G, B plane order."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _train_chunks(arrays):
  images, labels = arrays['train']
  return zip(np.array_split(images, 5), np.array_split(labels, 5))


def write_binary(path, arrays):
  """cifar-10-binary.tar.gz: label byte + 3072 pixel bytes per record."""
  record = lambda im, lb: np.concatenate(
      [lb.astype(np.uint8)[:, None], _planes(im)], axis=1).tobytes()
  with tarfile.open(path, 'w:gz') as tar:
    top = 'cifar-10-batches-bin/'
    _add(tar, top + 'batches.meta.txt', ('\n'.join(CLASSES) + '\n').encode())
    for i, (im, lb) in enumerate(_train_chunks(arrays), 1):
      _add(tar, f'{top}data_batch_{i}.bin', record(im, lb))
    _add(tar, top + 'test_batch.bin', record(*arrays['test']))
  return path


def write_python(path, arrays):
  """cifar-10-python.tar.gz: Python-2-style pickles of dicts with bytes keys."""
  def batch(im, lb, name):
    return pickle.dumps({b'batch_label': name.encode(), b'labels': lb.tolist(),
                         b'data': _planes(im),
                         b'filenames': [b'x.png'] * len(lb)}, protocol=2)
  with tarfile.open(path, 'w:gz') as tar:
    top = 'cifar-10-batches-py/'
    _add(tar, top + 'batches.meta', pickle.dumps(
        {b'label_names': [c.encode() for c in CLASSES], b'num_cases_per_batch': 10}))
    for i, (im, lb) in enumerate(_train_chunks(arrays), 1):
      _add(tar, f'{top}data_batch_{i}', batch(im, lb, f'training batch {i} of 5'))
    _add(tar, top + 'test_batch', batch(*arrays['test'], 'testing batch 1 of 1'))
  return path


def write_image_folder(root, arrays, name='tinyfolder', fmt='png'):
  """root/name/{train,test}/<class>/NNNN.<fmt>: an image-folder dataset."""
  from PIL import Image
  for split, (images, labels) in arrays.items():
    for i, (image, label) in enumerate(zip(images, labels)):
      folder = root / name / split / CLASSES[label]
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(folder / f'{i:04d}.{fmt}')
  return root / name


FINE100 = [f'fine{i:02d}' for i in range(100)]


def write_binary100(path, arrays):
  """cifar-100-binary.tar.gz: coarse label byte, fine label byte, 3072 pixels;
  `arrays` hold fine labels 0..99 (coarse = fine // 5)."""
  record = lambda im, lb: np.concatenate(
      [(lb // 5).astype(np.uint8)[:, None], lb.astype(np.uint8)[:, None], _planes(im)],
      axis=1).tobytes()
  with tarfile.open(path, 'w:gz') as tar:
    top = 'cifar-100-binary/'
    _add(tar, top + 'fine_label_names.txt', ('\n'.join(FINE100) + '\n').encode())
    _add(tar, top + 'coarse_label_names.txt',
         ('\n'.join(f'coarse{i:02d}' for i in range(20)) + '\n').encode())
    _add(tar, top + 'train.bin', record(*arrays['train']))
    _add(tar, top + 'test.bin', record(*arrays['test']))
  return path


def random_cifar100(num_train: int, num_test: int, seed: int = 0) -> dict:
  """Random images with fine labels 0..99, each split holding every class
  once per 100 images (num_train, num_test multiples of 100)."""
  rng = np.random.default_rng(seed)
  make = lambda n: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                    rng.permutation(np.arange(n) % 100).astype(np.int64))
  return {'train': make(num_train), 'test': make(num_test)}


def write_python100(path, arrays):
  """cifar-100-python.tar.gz: pickles 'train', 'test' with fine and coarse
  labels (coarse = fine // 5) and 'meta' with both name lists."""
  def split(im, lb, name):
    return pickle.dumps({b'filenames': [b'x.png'] * len(lb), b'batch_label': name.encode(),
                         b'fine_labels': lb.tolist(), b'coarse_labels': (lb // 5).tolist(),
                         b'data': _planes(im)}, protocol=2)
  with tarfile.open(path, 'w:gz') as tar:
    top = 'cifar-100-python/'
    _add(tar, top + 'meta', pickle.dumps(
        {b'fine_label_names': [n.encode() for n in FINE100],
         b'coarse_label_names': [f'coarse{i:02d}'.encode() for i in range(20)]}, protocol=2))
    _add(tar, top + 'train', split(*arrays['train'], 'training batch 1 of 1'))
    _add(tar, top + 'test', split(*arrays['test'], 'testing batch 1 of 1'))
  return path
