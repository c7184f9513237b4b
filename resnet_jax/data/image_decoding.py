"""Image files of any size -> fixed-size uint8 crops, for training and evaluation.

Training takes the Inception-style random-resized crop (Szegedy et al. 2015)
as torchvision's `RandomResizedCrop` defines it: up to 10 tries at a window
of 8-100% of the area with aspect ratio 3/4-4/3 (log-uniform), else a centre
crop at the nearest allowed aspect, then a horizontal flip with probability
1/2. (tf's `sample_distorted_bounding_box` draws otherwise: the aspect
uniformly, the height uniformly, a `min_object_covered` share of the box,
the whole image as the fallback; docs/data.md.) Evaluation resizes the shorter
side to `floor(size / 0.875)` (256 for 224) and takes the centre crop: the
standard evaluation, with Pillow's antialiased bilinear filter, pixel for
pixel what torchvision's `Resize` + `CenterCrop` give on a PIL image.

Speed (BENCHMARKS.md, "JPEG decoding"): a training crop decodes a JPEG with
libjpeg-turbo through simplejpeg, at 1/2, 1/4 or 1/8 of its size when the
window would still be at least `size` pixels there (JPEG's scaled DCT:
cheaper decoding, and a low-pass filter before the resize), then resizes the
window with OpenCV's bilinear filter (the factor left is then up to 2.67:
below 2 on the shorter side, times the aspect 4/3 on the longer), after a
Gaussian blur along each axis that shrinks (`antialias`), so that training
filters like evaluation's antialiased Pillow resize instead of aliasing. Files
that are not baseline/progressive JPEGs (PNG, anything Pillow opens) take
Pillow's decoder; grayscale and CMYK become RGB either way.

A file that cannot be decoded (empty, truncated, not an image, over
`MAX_PIXELS`) raises `BadImage`; the loader skips it and counts it
(`file_loader`). Training and evaluation agree on which files those are:
Pillow decides (a JPEG that simplejpeg's strict mode refuses for a libjpeg
warning takes Pillow's decoder).
"""

import io
import math
from typing import Tuple

import numpy as np

# Pillow's own decompression-bomb limit (89.5M pixels, about 9500x9500): a
# file claiming more is refused before any pixel is decoded.
MAX_PIXELS = 89_478_485
# The centre crop's share of the resized shorter side at evaluation.
EVAL_CROP_FRACTION = 0.875
AREA = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


class BadImage(Exception):
  """A file that does not decode to an image; the message says why."""


def _is_jpeg(data: bytes) -> bool:
  return data[:3] == b'\xff\xd8\xff'


def image_size(data: bytes) -> Tuple[int, int]:
  """(width, height) from the file's header, decoding no pixel.

  Raises:
    BadImage: not an image, or over `MAX_PIXELS`.
  """
  if not data:
    raise BadImage('empty file')
  if _is_jpeg(data):
    import simplejpeg
    try:
      height, width = simplejpeg.decode_jpeg_header(data)[:2]
    except ValueError as e:
      raise BadImage(f'not a readable JPEG ({e})') from e
  else:
    with _open_pil(data) as im:
      width, height = im.size
  _check_pixels(width, height)
  return int(width), int(height)


def _check_pixels(width: int, height: int) -> None:
  if width * height > MAX_PIXELS:
    raise BadImage(f'{width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit '
                   '(a decompression bomb, or a scan to downsize first)')
  if width < 1 or height < 1:
    raise BadImage(f'{width}x{height} pixels')


def _open_pil(data: bytes):
  from PIL import Image
  try:
    im = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise BadImage(f'over Pillow\'s pixel limit ({e})') from e
  except Image.UnidentifiedImageError as e:
    # Its message names the buffer (`<_io.BytesIO object at 0x...>`), not the
    # file: the caller names the file.
    raise BadImage('not an image Pillow can read (no format it knows starts this '
                   'way)') from e
  except Exception as e:  # Pillow raises many kinds on foreign bytes.
    raise BadImage(f'not an image Pillow can read ({type(e).__name__}: {e})') from e
  _check_pixels(*im.size)
  return im


def decode_rgb(data: bytes) -> np.ndarray:
  """The whole image as uint8 [H, W, 3] RGB (Pillow; any format it reads).

  Raises:
    BadImage: it does not decode.
  """
  with _open_pil(data) as im:
    try:
      return np.asarray(im.convert('RGB'))
    except Exception as e:  # Truncated data surfaces at load time.
      raise BadImage(f'does not decode ({type(e).__name__}: {e})') from e


def crop_window(width: int, height: int, rng: np.random.Generator,
                area: Tuple[float, float] = AREA,
                ratio: Tuple[float, float] = RATIO) -> Tuple[int, int, int, int]:
  """A random-resized-crop window (top, left, height, width) of an image.

  Up to 10 tries draw an area fraction uniformly from `area` and a log aspect
  ratio uniformly from log `ratio`; the first window that fits is placed
  uniformly. If none fits, the centre crop of the whole image clamped to
  `ratio` (torchvision's definition).
  """
  total = width * height
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = total * rng.uniform(area[0], area[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _reduction(window_h: int, window_w: int, size: int) -> int:
  """The largest JPEG scale-down (1, 2, 4 or 8) that keeps the window at
  least `size` pixels on each side."""
  f = 1
  while f < 8 and window_h >= 2 * f * size and window_w >= 2 * f * size:
    f *= 2
  return f


def train_image(data: bytes, size: int, rng: np.random.Generator,
                area: Tuple[float, float] = AREA) -> np.ndarray:
  """A random-resized crop of `size` x `size`, flipped with probability 1/2.

  Args:
    data: the file's bytes.
    size: output side in pixels.
    rng: the example's generator (the window, then the flip).
    area: the window's area fraction range.

  Returns:
    uint8 [size, size, 3] RGB.

  Raises:
    BadImage: the file does not decode.
  """
  import cv2
  width, height = image_size(data)
  top, left, h, w = crop_window(width, height, rng, area)
  flip = rng.random() < 0.5
  if _is_jpeg(data):
    import simplejpeg
    f = _reduction(h, w, size)
    try:
      pixels = simplejpeg.decode_jpeg(data, colorspace='RGB', min_height=-(-height // f),
                                      min_width=-(-width // f))
    except ValueError:
      # simplejpeg refuses what libjpeg only warns about ("extraneous bytes
      # before marker"); Pillow, which evaluation uses, decodes those and
      # refuses truncated files: one definition of a bad file for both.
      pixels = decode_rgb(data)
  else:
    pixels = decode_rgb(data)
  # The window in the decoded image's pixels (a scaled decode is ceil(side / f)).
  sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
  y0, x0 = int(top * sy), int(left * sx)
  y1 = max(y0 + 1, min(pixels.shape[0], int(round((top + h) * sy))))
  x1 = max(x0 + 1, min(pixels.shape[1], int(round((left + w) * sx))))
  out = cv2.resize(antialias(pixels[y0:y1, x0:x1], size), (size, size),
                   interpolation=cv2.INTER_LINEAR)
  # cv2.flip: numpy's copy of a reversed view took 0.2-0.5 ms per 224 px crop.
  return cv2.flip(out, 1) if flip else out


def _blur_sigma(scale: float) -> float:
  """The Gaussian blur (in input pixels) that, followed by bilinear
  interpolation, has the variance of Pillow's antialiased bilinear filter
  when shrinking by `scale`: a triangle of half-width `scale`, variance
  scale^2 / 6, of which bilinear interpolation gives 1/6 on average."""
  return math.sqrt((scale * scale - 1.0) / 6.0) if scale > 1 else 0.0


def antialias(window: np.ndarray, size: int) -> np.ndarray:
  """`window` blurred along each axis it will shrink along to `size` pixels
  (`_blur_sigma`), so that OpenCV's bilinear resize, which interpolates
  without antialiasing, then filters like Pillow's (evaluation's) instead of
  aliasing; unchanged along an axis that grows or keeps its size."""
  import cv2
  sy, sx = (_blur_sigma(n / size) for n in window.shape[:2])
  if not (sx or sy):
    return window
  # Taps out to ceil(2 sigma): up to sigma 1 (shrinking by 2.65, beyond any
  # crop of a JPEG decoded at scale) the weights left out are under 1.1% of
  # the centre's.
  kx, ky = (2 * math.ceil(2 * s) + 1 if s else 1 for s in (sx, sy))
  return cv2.GaussianBlur(window, (kx, ky), sx or 1.0, sigmaY=sy or 1.0,
                          borderType=cv2.BORDER_REFLECT_101)


def eval_image(data: bytes, size: int,
               crop_fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """Shorter side resized to `floor(size / crop_fraction)`, then the centre
  `size` x `size` crop (Pillow, antialiased bilinear).

  Returns:
    uint8 [size, size, 3] RGB.

  Raises:
    BadImage: the file does not decode.
  """
  from PIL import Image
  short = int(math.floor(size / crop_fraction + 1e-9))
  image_size(data)  # The same refusals as training, before Pillow decodes.
  with _open_pil(data) as im:
    try:
      im = im.convert('RGB')
    except Exception as e:
      raise BadImage(f'does not decode ({type(e).__name__}: {e})') from e
    width, height = im.size
    if width <= height:
      new = (short, int(short * height / width))
    else:
      new = (int(short * width / height), short)
    im = im.resize(new, Image.BILINEAR)
  top = int(round((new[1] - size) / 2.0))
  left = int(round((new[0] - size) / 2.0))
  return np.asarray(im)[top:top + size, left:left + size]
