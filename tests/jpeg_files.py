"""Tiny image files for the file-loader tests: JPEGs of many sizes and modes,
and the bad files real datasets hold."""

import io
import os

import numpy as np
from PIL import Image


def jpeg_bytes(array: np.ndarray, mode: str = 'RGB', quality: int = 92) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).convert(mode).save(out, 'JPEG', quality=quality)
  return out.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, 'PNG')
  return out.getvalue()


def pattern(height: int, width: int, seed: int = 0, noise: float = 4.0) -> np.ndarray:
  """A smooth image with an asymmetric gradient (a flip or an offset crop
  shows) and a little noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  image = np.stack([255 * x / max(1, width - 1), 255 * y / max(1, height - 1),
                    128 + 100 * np.sin(x / 7.0) * np.cos(y / 5.0)], -1)
  image += rng.normal(0, noise, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def bomb_bytes() -> bytes:
  """A valid small JPEG whose header claims 30000 x 30000 pixels (900M)."""
  data = bytearray(jpeg_bytes(pattern(16, 16)))
  sof = data.index(b'\xff\xc0')
  data[sof + 5:sof + 9] = (30000).to_bytes(2, 'big') * 2
  return bytes(data)


BAD_FILES = {
    'empty': b'',
    'truncated': None,  # Filled by `bad_file`: half of a real JPEG.
    'text': b'this is not an image\n' * 10,
    'bomb': None,
}


def bad_file(kind: str) -> bytes:
  if kind == 'truncated':
    data = jpeg_bytes(pattern(120, 160, seed=7))
    return data[:len(data) // 2]
  if kind == 'bomb':
    return bomb_bytes()
  return BAD_FILES[kind]


def write_folder(root, name: str = 'jpegs', classes=('n01', 'n02', 'n03'),
                 per_class=(12, 4), seed: int = 0, bad: dict = None,
                 names: bool = True) -> str:
  """An ImageNet-layout folder root/name/{train,val}/<class>/*.JPEG of
  random sizes 20-90 px (a grayscale, a CMYK and a PNG named .JPEG among
  them); `bad` {relative path: kind} adds bad files. Returns its path."""
  rng = np.random.default_rng(seed)
  top = os.path.join(root, name)
  for split, n in zip(('train', 'val'), per_class):
    for c, cls in enumerate(classes):
      os.makedirs(os.path.join(top, split, cls), exist_ok=True)
      for i in range(n):
        h, w = (int(v) for v in rng.integers(20, 90, size=2))
        image = pattern(h, w, seed=int(rng.integers(1 << 30)))
        image[..., c % 3] //= 2  # Classes differ in colour.
        kind = ('L', 'CMYK', 'PNG')[i] if i < 3 and c == 0 else 'RGB'
        data = png_bytes(image) if kind == 'PNG' else jpeg_bytes(image, kind)
        with open(os.path.join(top, split, cls, f'{cls}_{i:03d}.JPEG'), 'wb') as f:
          f.write(data)
  for path, kind in (bad or {}).items():
    with open(os.path.join(top, path), 'wb') as f:
      f.write(bad_file(kind))
  if names:
    with open(os.path.join(top, 'classes.txt'), 'w') as f:
      for cls in classes:
        f.write(f'{cls} name of {cls}, another name\n')
  return top
