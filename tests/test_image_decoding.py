"""Decoding and cropping image files of any size (data/image_decoding.py)."""

import math
import random

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from resnet_jax.data import image_decoding
from tests import jpeg_files


def _reference_window(width, height, rnd, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """The random-resized-crop window as torchvision documents it, written
  from that definition with Python's own generator."""
  for _ in range(10):
    target = width * height * rnd.uniform(*area)
    aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
  if width / height < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif width / height > ratio[1]:
    w, h = round(height * ratio[1]), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _features(windows, width, height):
  w = np.array(windows, float)
  top, left, h, wd = w.T
  return {'area': h * wd / (width * height), 'log_aspect': np.log(wd / h),
          'top': top / np.maximum(1, height - h), 'left': left / np.maximum(1, width - wd)}


@pytest.mark.parametrize('width,height', [(500, 375), (120, 400)])
def test_crop_windows_follow_the_reference_distribution(width, height):
  # Two-sample KS tests of area fraction, aspect and placement against an
  # independent implementation: with 4000 windows each a fault of a few
  # percent in any of them is rejected (the same test rejects the
  # reference drawn from a 12%-100% area range, below).
  rng = np.random.default_rng(0)
  ours = [image_decoding.crop_window(width, height, rng) for _ in range(4000)]
  rnd = random.Random(1)
  ref = [_reference_window(width, height, rnd) for _ in range(4000)]
  shifted = [_reference_window(width, height, rnd, area=(0.12, 1.0)) for _ in range(4000)]
  a, b, c = (_features(x, width, height) for x in (ours, ref, shifted))
  for key in a:
    assert stats.ks_2samp(a[key], b[key]).pvalue > 1e-3, key
  assert stats.ks_2samp(a['area'], c['area']).pvalue < 1e-6
  # Every window lies inside the image, within the area and aspect ranges.
  w = np.array(ours)
  assert (w[:, 0] >= 0).all() and (w[:, 0] + w[:, 2] <= height).all()
  assert (w[:, 1] >= 0).all() and (w[:, 1] + w[:, 3] <= width).all()


def test_a_window_that_never_fits_falls_back_to_the_clamped_centre_crop():
  # 1000x10: no window of >= 8% of the area has a height <= 10 at aspect
  # <= 4/3, so all 10 tries fail: the centre crop at aspect 4/3.
  rng = np.random.default_rng(0)
  assert image_decoding.crop_window(1000, 10, rng) == (0, (1000 - 13) // 2, 10, 13)
  assert image_decoding.crop_window(10, 1000, rng) == ((1000 - 13) // 2, 0, 13, 10)


@pytest.mark.parametrize('width,height,size', [(500, 375, 224), (375, 500, 64),
                                               (100, 100, 64), (50, 30, 64), (33, 97, 24)])
def test_evaluation_crop_is_a_plain_pil_resize_and_centre_crop(width, height, size):
  data = jpeg_files.jpeg_bytes(jpeg_files.pattern(height, width))
  short = math.floor(size / 0.875)
  image = Image.open(__import__('io').BytesIO(data)).convert('RGB')
  scale = short / min(width, height)
  new = ((short, int(height * scale)) if width <= height else (int(width * scale), short))
  resized = image.resize(new, Image.BILINEAR)
  left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
  expected = np.asarray(resized.crop((left, top, left + size, top + size)))
  got = image_decoding.eval_image(data, size)
  assert got.shape == (size, size, 3) and got.dtype == np.uint8
  np.testing.assert_array_equal(got, expected)


def _draws(seed, width, height):
  rng = np.random.default_rng(seed)
  window = image_decoding.crop_window(width, height, rng)
  return window, rng.random() < 0.5


def test_training_crop_is_the_drawn_window_resized_and_flipped_as_drawn():
  height, width, size = 150, 200, 48
  source = jpeg_files.pattern(height, width, seed=3, noise=0)
  data = jpeg_files.jpeg_bytes(source, quality=98)
  decoded = image_decoding.decode_rgb(data)
  flips = []
  for seed in range(40):
    (top, left, h, w), flip = _draws(seed, width, height)
    got = image_decoding.train_image(data, size, np.random.default_rng(seed))
    expected = np.asarray(Image.fromarray(decoded[top:top + h, left:left + w]).resize(
        (size, size), Image.BILINEAR)).astype(float)
    if flip:
      expected = expected[:, ::-1]
    # Pillow's antialiased filter vs OpenCV's bilinear: a few levels apart
    # on this smooth image; the wrong window or flip is tens of levels off.
    assert np.abs(got - expected).mean() < 4, seed
    assert np.abs(got - expected[:, ::-1]).mean() > 10, seed
    flips.append(flip)
  assert 10 < sum(flips) < 30


def test_a_large_jpeg_is_decoded_at_reduced_size_to_nearly_the_same_crop():
  # 1600x1200 to 64 px: small windows decode at 1/2..1/8 of the size.
  height, width, size = 1200, 1600, 64
  data = jpeg_files.jpeg_bytes(jpeg_files.pattern(height, width, seed=4, noise=0),
                                quality=95)
  full = image_decoding.decode_rgb(data)
  reduced = 0
  for seed in range(12):
    (top, left, h, w), flip = _draws(seed, width, height)
    reduced += image_decoding._reduction(h, w, size) > 1
    expected = np.asarray(Image.fromarray(full[top:top + h, left:left + w]).resize(
        (size, size), Image.BILINEAR)).astype(float)
    got = image_decoding.train_image(data, size, np.random.default_rng(seed))
    if flip:
      got = got[:, ::-1]
    # The gradients (channels 0, 1) place the window; the third channel's
    # ripples are above the crop's resolution, where a scaled DCT and
    # Pillow's filter alias differently.
    assert np.abs(got - expected)[..., :2].mean() < 2, seed
  assert reduced >= 10


@pytest.mark.parametrize('kind', ['png', 'jpeg'])
def test_the_training_resize_antialiases_white_noise_as_evaluation_does(kind):
  # 426 -> 224 px, a factor of 1.9. OpenCV's bilinear interpolation alone
  # keeps most of the noise (std 49 on the PNG, 36 on the JPEG); Pillow's
  # antialiased filter, evaluation's, averages it down (26, 21). Training
  # blurs before interpolating: 27, 22.
  noise = np.random.default_rng(0).integers(0, 256, (426, 426, 3), dtype=np.uint8)
  data = (jpeg_files.png_bytes(noise) if kind == 'png'
          else jpeg_files.jpeg_bytes(noise, quality=100))
  rng = np.random.default_rng(0)
  assert image_decoding.crop_window(426, 426, rng, (1.0, 1.0)) == (0, 0, 426, 426)
  got = image_decoding.train_image(data, 224, np.random.default_rng(0), area=(1.0, 1.0))
  pillow = np.asarray(Image.fromarray(image_decoding.decode_rgb(data)).resize(
      (224, 224), Image.BILINEAR))
  assert got.std() == pytest.approx(pillow.std(), rel=0.1)


@pytest.mark.parametrize('height,width', [(426, 426), (426, 300), (300, 520), (150, 200)])
def test_a_training_crop_of_a_smooth_image_matches_the_evaluation_filter(height, width):
  # Shrinking 1.3-1.9x along one or both axes, or growing (150x200 to 224):
  # a fraction of a level apart from Pillow's antialiased bilinear resize of
  # the same window (the blur changes only what aliasing would).
  image = jpeg_files.pattern(height, width, seed=6, noise=0)
  data = jpeg_files.png_bytes(image)
  rng = np.random.default_rng(0)
  top, left, h, w = image_decoding.crop_window(width, height, rng, (1.0, 1.0))
  flip = rng.random() < 0.5
  got = image_decoding.train_image(data, 224, np.random.default_rng(0), area=(1.0, 1.0))
  expected = np.asarray(Image.fromarray(image[top:top + h, left:left + w]).resize(
      (224, 224), Image.BILINEAR)).astype(float)
  if flip:
    expected = expected[:, ::-1]
  assert np.abs(got - expected).mean() < 0.4
  assert np.abs(got - expected).max() <= 3


def test_antialiasing_leaves_a_window_alone_where_it_does_not_shrink():
  window = jpeg_files.pattern(200, 100, seed=2)
  assert image_decoding.antialias(window, 224) is window
  assert image_decoding.antialias(window, 200) is window
  # Only the axis that shrinks is blurred: columns (growing) keep their
  # values where every row is the same.
  rows = np.repeat(jpeg_files.pattern(1, 100, seed=2), 300, axis=0)
  np.testing.assert_array_equal(image_decoding.antialias(rows, 224), rows)


@pytest.mark.parametrize('mode', ['L', 'CMYK', 'PNG'])
def test_grayscale_cmyk_and_png_named_jpeg_become_rgb(mode):
  source = jpeg_files.pattern(60, 80, seed=5)
  data = (jpeg_files.png_bytes(source) if mode == 'PNG'
          else jpeg_files.jpeg_bytes(source, mode, quality=95))
  for image in (image_decoding.train_image(data, 32, np.random.default_rng(0)),
                image_decoding.eval_image(data, 32)):
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    if mode == 'L':
      assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
  # The colours survive: CMYK decoded as RGB, not as inverted or raw ink.
  whole = image_decoding.eval_image(data, 60)
  reference = np.asarray(Image.fromarray(source).convert('L').convert('RGB')) if (
      mode == 'L') else source
  expected = image_decoding.eval_image(jpeg_files.png_bytes(reference), 60).astype(float)
  assert np.abs(whole - expected).mean() < 6


def test_an_image_smaller_than_the_crop_is_upsampled():
  data = jpeg_files.jpeg_bytes(jpeg_files.pattern(12, 9))
  assert image_decoding.train_image(data, 64, np.random.default_rng(0)).shape == (64, 64, 3)
  assert image_decoding.eval_image(data, 64).shape == (64, 64, 3)


@pytest.mark.parametrize('kind,reason', [('empty', 'empty file'),
                                         ('truncated', 'does not decode'),
                                         ('text', 'not an image'),
                                         ('bomb', '30000x30000 pixels, over the')])
def test_a_bad_file_raises_bad_image_naming_why(kind, reason):
  data = jpeg_files.bad_file(kind)
  for decode in (lambda: image_decoding.train_image(data, 32, np.random.default_rng(0)),
                 lambda: image_decoding.eval_image(data, 32)):
    with pytest.raises(image_decoding.BadImage) as e:
      decode()
    assert reason in str(e.value)


def _claiming(width, height):
  """A small valid JPEG whose header claims `width` x `height` pixels."""
  data = bytearray(jpeg_files.jpeg_bytes(jpeg_files.pattern(16, 16)))
  sof = data.index(b'\xff\xc0')
  data[sof + 5:sof + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
  return bytes(data)


def test_the_pixel_limit_is_pillows_89_5_megapixels():
  # docs/data.md, "Bad files": "a header over 89.5 megapixels, Pillow's
  # decompression-bomb limit" is bad; one under it is not.
  assert image_decoding.MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
  assert image_decoding.image_size(_claiming(9000, 9000)) == (9000, 9000)
  over = _claiming(9460, 9459)  # 89,482,140 pixels.
  for decode in (lambda: image_decoding.image_size(over),
                 lambda: image_decoding.eval_image(over, 32),
                 lambda: image_decoding.train_image(over, 32, np.random.default_rng(0))):
    with pytest.raises(image_decoding.BadImage, match='9460x9459 pixels, over the '
                                                     '89,478,485-pixel limit'):
      decode()


def test_predict_sees_a_file_as_evaluation_does(tmp_path):
  # docs/data.md, "Evaluation": "`predict` sees files the same way", at the
  # size evaluation uses (eval_image_size, else the last training size).
  from resnet_jax import predict
  from resnet_jax.training import run_setup
  from tests.conftest import tiny_config
  for name, data in (('a.JPEG', jpeg_files.jpeg_bytes(jpeg_files.pattern(70, 90, seed=1))),
                     ('b.png', jpeg_files.png_bytes(jpeg_files.pattern(90, 50, seed=2)))):
    (tmp_path / name).write_bytes(data)
    for size in (24, 48):
      np.testing.assert_array_equal(predict.load_image(str(tmp_path / name), size),
                                    image_decoding.eval_image(data, size))
  size = lambda **c: run_setup.eval_size(tiny_config(None, image_size=32, **c))
  assert (size(), size(final_image_size=64), size(final_image_size=64, eval_image_size=48)
          ) == (32, 64, 48)


def test_a_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_window_n_pixels():
  # docs/data.md, "Decoding": 1/2, 1/4 or 1/8 of its size when the window
  # stays at least N pixels there, so the window still shrinks by less than
  # 2 on its shorter side (unless 1/8 is reached).
  rng = np.random.default_rng(0)
  for _ in range(2000):
    size = int(rng.integers(8, 300))
    h, w = (int(v) for v in rng.integers(1, 40 * size, 2))
    f = image_decoding._reduction(h, w, size)  # pylint: disable=protected-access
    assert f in (1, 2, 4, 8)
    if f > 1:
      assert min(h, w) / f >= size, (h, w, size, f)
    if f < 8:
      assert min(h, w) / f < 2 * size, (h, w, size, f)
  assert image_decoding._reduction(448, 600, 224) == 2  # pylint: disable=protected-access
  assert image_decoding._reduction(447, 600, 224) == 1  # pylint: disable=protected-access
