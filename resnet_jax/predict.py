r"""Predicts the classes of image files with a trained run's checkpoint.

  python -m resnet_jax.predict --workdir runs/resnet20 cat.jpg plane.png
  python -m resnet_jax.predict --workdir runs/resnet20 --json --top_k=3 *.png

Images of any size and mode are converted to RGB, resized (Lanczos) so that
the shorter side is 32 pixels, and centre-cropped to 32x32, the CIFAR size; a
run trained with `image_size` N sees each file as its evaluation did (shorter
side to N/0.875, centre N x N crop).
An unreadable file gets an error line (or a JSON entry with "error") and the
other files are still predicted; the exit code is then 1.

Each prediction names the class readably (`class`: "tench", or "crane
(n02012849)" where two classes share a name) and by its id (`class_id`: the
class folder, e.g. the wnid; for tfds CIFAR the name itself). The names are
today's, as evaluation shows them: a `classes.txt` added to the run's data
folder after training counts, and wnids get ImageNet's names
(`inference.current_names`).

A run that kept a moving average of its weights (`ema_decay`) predicts with
it (`--noema` for the raw weights); `--flip_tta` averages the class
probabilities of each image and its mirror image. Each result says which.
"""

import json
import sys
from typing import List

from absl import flags
import jax
import numpy as np

from resnet_jax import errors
from resnet_jax.data import device_pipeline
from resnet_jax import logs
from resnet_jax.logs import log
from resnet_jax import paths

_WORKDIR = paths.define_flag('workdir', None, 'Workdir of a trained run.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many classes to print per image.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON document instead of text.')
_EMA = flags.DEFINE_bool('ema', True, 'Use the moving-average weights when the run '
                         'kept them.')
_FLIP_TTA = flags.DEFINE_bool('flip_tta', False, 'Average the predictions of each '
                              'image and its mirror image.')
flags.mark_flags_as_required(['workdir'])

SIZE = 32


def load_image(path: str, image_size: int = 0) -> np.ndarray:
  """A file -> uint8 [32, 32, 3]: RGB, shorter side resized to 32, centre crop.
  With `image_size` N: the evaluation crop of a run at N (uint8 [N, N, 3]).

  Keeps Pillow's hard limit against decompression bombs (2 x
  `Image.MAX_IMAGE_PIXELS`, ~179 megapixels, ~0.5 GB decoded as RGB): a larger
  image is refused rather than risking the host's memory for a 32x32 input.
  Below it no warning is printed (a 100-megapixel photo is simply predicted).

  Raises:
    errors.UserError: naming the file and why it could not be read.
  """
  import warnings
  from PIL import Image
  if image_size:
    return _evaluation_crop(path, image_size)
  limit = 2 * Image.MAX_IMAGE_PIXELS
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as im:
        im = im.convert('RGB')
        w, h = im.size
        scale = SIZE / min(w, h)
        im = im.resize((max(SIZE, round(w * scale)), max(SIZE, round(h * scale))),
                       Image.Resampling.LANCZOS)
        w, h = im.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        return np.asarray(im.crop((left, top, left + SIZE, top + SIZE)), np.uint8)
  except FileNotFoundError as e:
    raise errors.UserError(f'{path}: no such file') from e
  except Image.DecompressionBombError as e:
    raise errors.UserError(
        f'{path}: larger than the {limit / 1e6:.0f}-megapixel limit kept against '
        f'decompression bombs ({e}); downscale it first') from e
  except Exception as e:  # pylint: disable=broad-except
    # Pillow reports damaged files as OSError, SyntaxError, ValueError,
    # EOFError, struct.error, ...: any failure is this file's alone.
    raise errors.UserError(f'{path}: not a readable image ({type(e).__name__}: '
                           f'{e})') from e


def _evaluation_crop(path: str, image_size: int) -> np.ndarray:
  from resnet_jax.data import image_decoding
  try:
    with open(path, 'rb') as f:
      return image_decoding.eval_image(f.read(), image_size)
  except FileNotFoundError as e:
    raise errors.UserError(f'{path}: no such file') from e
  except (OSError, image_decoding.BadImage) as e:
    raise errors.UserError(f'{path}: not a readable image ({e})') from e


def predict(workdir: str, files: List[str], top_k: int = 5, step=None,
            ema: bool = True, flip_tta: bool = False) -> List[dict]:
  """Top-k classes and probabilities per file; unreadable files get 'error'.

  Args:
    workdir: a trained run.
    files: image files.
    top_k: classes per image.
    step: checkpoint step; None = the latest.
    ema: use the moving-average weights when the run kept them.
    flip_tta: average the probabilities of each image and its mirror image.
  """
  loaded = _load(workdir, step, ema)
  from resnet_jax.training import run_setup
  image_size = run_setup.eval_size(loaded.config)
  results, images, index = [], [], []
  for path in files:
    try:
      images.append(load_image(path, image_size))
      index.append(len(results))
      results.append({'file': path})
    except errors.UserError as e:
      results.append({'file': path, 'error': str(e)})
  if images:
    x = device_pipeline.normalize(np.stack(images), loaded.mean_std)
    probs = jax.nn.softmax(loaded.model.apply(loaded.variables, x, train=False))
    if flip_tta:
      flipped = loaded.model.apply(loaded.variables, x[:, :, ::-1], train=False)
      probs = (probs + jax.nn.softmax(flipped)) / 2
    probs = np.asarray(probs)
    k = min(top_k, len(loaded.names))
    for i, p in zip(index, probs):
      top = np.argsort(-p)[:k]
      results[i]['predictions'] = [{'class': loaded.names[c], 'class_id': loaded.ids[c],
                                    'probability': float(p[c])} for c in top]
  for r in results:
    r.update(step=loaded.step, weights=loaded.weights, flip_tta=flip_tta)
  return results


def _load(workdir, step, ema):
  from resnet_jax.training import inference  # Heavy; after argument checks.
  return inference.load_for_inference(workdir, step, prefer_ema=ema)


def text_lines(results: List[dict]) -> List[str]:
  """The text output of `predict`'s results without errors: each file, then
  one line per class, names in one column as wide as the longest."""
  width = max((len(p['class']) for r in results for p in r['predictions']), default=0)
  lines = []
  for r in results:
    lines.append(r['file'])
    lines += [f'  {p["class"]:<{width}}  {p["probability"]:.3f}' for p in r['predictions']]
  return lines


def main(argv):
  files = [paths.expand(f) for f in argv[1:]]
  if not files:
    raise errors.UserError('no image files given; usage: python -m '
                           'resnet_jax.predict --workdir W IMAGE...')
  if _TOP_K.value < 1:
    raise errors.UserError(f'--top_k must be at least 1, got {_TOP_K.value}')
  logs.setup()
  results = predict(_WORKDIR.value, files, _TOP_K.value, _STEP.value, _EMA.value,
                    _FLIP_TTA.value)
  if _JSON.value:
    print(json.dumps(results, indent=1))
  else:
    done = [r for r in results if 'error' not in r]
    if done:
      log.info('Step %d, %s weights%s', done[0]['step'], done[0]['weights'],
               ', flip test-time augmentation' if done[0]['flip_tta'] else '')
    for r in results:
      if 'error' in r:
        print(f'error: {r["error"]}', file=sys.stderr)
    for line in text_lines(done):
      print(line)
  if any('error' in r for r in results):
    sys.exit(1)


if __name__ == '__main__':
  errors.run_cli(main)
