r"""Training-crop throughput on real JPEGs: this project's decoder beside the
pipelines researchers compare with, on the same core, in one run.

  python benchmarks/jpeg_decoding.py DIR [--size 224] [--repeats 3] [--core 0]

DIR: a folder of image files, searched recursively (the 1,000-image ImageNet
sample, an image-folder dataset's train/). The files are read into memory
first (no disk time), then every pipeline turns each file into a `size` x
`size` uint8 random-resized crop (area 8-100%, aspect 3/4-4/3) with a random
flip, pinned to one core:

- resnet_jax: `image_decoding.train_image` (libjpeg-turbo through simplejpeg,
  scaled-DCT decoding at 1/2..1/8 where the window allows, OpenCV bilinear
  after an antialiasing blur where the window shrinks).
- torchvision: `RandomResizedCrop` + `RandomHorizontalFlip` on a PIL image
  decoded by Pillow; where torchvision is not installed, the same operations
  written with Pillow (decode, convert to RGB, crop + antialiased bilinear
  resize in one `resize(box=...)`, flip), labelled as such.
- Pillow + draft: the same with JPEG's scaled decoding (`Image.draft`).
- tf.data: the Flax ImageNet example's training map, one thread:
  `sample_distorted_bounding_box` on `extract_jpeg_shape`,
  `decode_and_crop_jpeg`, bicubic resize, flip (where TensorFlow is installed).

The one-core pipelines take turns on each chunk of 50 files, and every chunk
is timed `--repeats` times with the same draws; a row's time is the sum of
its chunks' best times, so a pass that another process slowed (the machine
is shared) costs only that chunk, and every row meets the same moments of
load. Then the whole loader (`file_loader`, grain) over every core: batches
of 64 from the files on disk (4 passes, after each worker's first batches),
threads in one process and worker processes, the best of `--repeats` passes.
Images/s. Prints a Markdown table and one JSON line.
"""

import argparse
import io
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_jax.data import file_loader  # pylint: disable=wrong-import-position
from resnet_jax.data import image_decoding  # pylint: disable=wrong-import-position

SUFFIXES = ('.jpeg', '.jpg', '.png')


def _files(folder):
  found = []
  for top, _, names in os.walk(folder):
    found += [os.path.join(top, n) for n in sorted(names) if n.lower().endswith(SUFFIXES)]
  return sorted(found)


def _ours(size):
  def run(data, rng):
    return image_decoding.train_image(data, size, rng)
  return run


def _pillow(size, draft):
  from PIL import Image
  def run(data, rng):
    im = Image.open(io.BytesIO(data))
    width, height = im.size
    top, left, h, w = image_decoding.crop_window(width, height, rng)
    flip = rng.random() < 0.5
    box = (left, top, left + w, top + h)
    if draft:
      im.draft('RGB', (math.ceil(width * size / w), math.ceil(height * size / h)))
      sx, sy = im.size[0] / width, im.size[1] / height
      box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    im = im.convert('RGB').resize((size, size), Image.BILINEAR, box=box)
    if flip:
      im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(im)
  return run


def _torchvision(size):
  try:
    import torch
    from torchvision import transforms
  except ImportError:
    return None
  from PIL import Image
  torch.set_num_threads(1)
  transform = transforms.Compose([transforms.RandomResizedCrop(size),
                                  transforms.RandomHorizontalFlip()])
  def run(data, rng):
    del rng  # torchvision draws from torch's generator.
    return np.asarray(transform(Image.open(io.BytesIO(data)).convert('RGB')))
  return run


def _tf_data(files, size):
  """A chunk timer of the Flax example's training map on one tf.data thread
  (None without TensorFlow); `files` are all the chunks', traced ahead."""
  try:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf
  except ImportError:
    return None
  tf.config.set_visible_devices([], 'GPU')

  def crop(data):
    shape = tf.image.extract_jpeg_shape(data)
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(crop_size)
    image = tf.image.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3)
    image = tf.image.resize([image], [size, size], method='bicubic')[0]
    image = tf.image.random_flip_left_right(image)
    return tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  # A plain map, run when the iterator asks: nothing is computed ahead, so
  # the iterator (~20 ms to create) is made before the clock starts.
  options.experimental_optimization.inject_prefetch = False
  options.experimental_optimization.map_parallelization = False
  datasets = {}

  def dataset(part):
    # PNG files named .JPEG would fail decode_and_crop_jpeg: JPEGs only.
    jpegs = [d for d in part if d[:3] == b'\xff\xd8\xff']
    return len(jpegs), (tf.data.Dataset.from_tensor_slices(tf.constant(jpegs))
                        .map(crop).with_options(options))

  def run(part, seed):
    del seed  # TensorFlow draws from its own generator.
    if id(part) not in datasets:  # Built and traced once, untimed.
      datasets[id(part)] = dataset(part)
    count, chunk = datasets[id(part)]
    images = iter(chunk)
    started = time.perf_counter()
    for _ in images:
      pass
    return time.perf_counter() - started, count
  del files
  return run


def _timed(fn):
  """fn(data, rng) -> a chunk timer: (files, seed) -> (seconds, images)."""
  def run(files, seed):
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for data in files:
      out = fn(data, rng)
    assert out.dtype == np.uint8
    return time.perf_counter() - started, len(files)
  return run


def _one_core_rates(rows, files, repeats, chunk=50):
  """Images/s of each chunk timer in `rows`: they take turns on each chunk,
  each chunk timed `repeats` times; a row's time is the sum of its chunks'
  best."""
  chunks = [files[i:i + chunk] for i in range(0, len(files), chunk)]
  best = {name: [math.inf] * len(chunks) for name in rows}
  images = {name: [0] * len(chunks) for name in rows}
  for _ in range(repeats):
    for c, part in enumerate(chunks):
      for name, run in rows.items():
        seconds, images[name][c] = run(part, c)
        best[name][c] = min(best[name][c], seconds)
  return {name: sum(images[name]) / sum(best[name]) for name in rows}


def _loader_rate(paths, size, workers, threads, batch=64):
  root = os.path.commonpath(paths)
  split = file_loader.FileSplit(
      root, np.asarray([os.path.relpath(p, root) for p in paths], dtype=bytes),
      np.zeros(len(paths), np.int32), ('all',))
  examples = file_loader.TrainExamples(split, batch, 0, size)
  warmup = 2 * max(1, workers)  # Every worker started and delivering.
  steps = warmup + max(8, 4 * len(paths) // batch)
  loader = file_loader.TrainBatches(examples, steps, 0, workers, threads)
  batches = loader.map(range(steps))
  for _ in range(warmup):
    next(batches)
  started = time.perf_counter()
  count = sum(len(b['label']) for b in batches)
  rate = count / (time.perf_counter() - started)
  loader.close()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('folder')
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--core', type=int, default=0, help='the core of the one-core rows')
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags.
  paths = _files(args.folder)
  if not paths:
    sys.exit(f'error: no .jpeg, .jpg or .png files under {args.folder}')
  files = []
  for path in paths:
    with open(path, 'rb') as f:
      files.append(f.read())
  cores = sorted(os.sched_getaffinity(0))
  import cv2
  cv2.setNumThreads(1)
  os.sched_setaffinity(0, {args.core})
  torchvision = _torchvision(args.size)
  rows = {'resnet_jax (simplejpeg scaled DCT + OpenCV)': _timed(_ours(args.size)),
          ('torchvision RandomResizedCrop on PIL' if torchvision else
           'Pillow, as torchvision RandomResizedCrop does it'):
              _timed(torchvision or _pillow(args.size, draft=False)),
          'Pillow + draft (scaled DCT)': _timed(_pillow(args.size, draft=True))}
  tf_data = _tf_data(files, args.size)
  if tf_data is not None:
    rows['tf.data decode_and_crop_jpeg (Flax example), 1 thread'] = tf_data
  results = _one_core_rates(rows, files, args.repeats)
  os.sched_setaffinity(0, cores)
  n = len(cores)
  loaders = {f'loader: {n} threads in the training process': (0, n),
             f'loader: {n} grain worker processes': (n, 1)}
  for name, (workers, threads) in loaders.items():
    results[name] = max(_loader_rate(paths, args.size, workers, threads)
                        for _ in range(args.repeats))
  best_other = max(v for k, v in results.items()
                   if not k.startswith(('resnet_jax', 'loader')))
  print(f'{len(files)} files from {args.folder}, {args.size}x{args.size} training crops; '
        f'one core (core {args.core}) for the first rows, all {n} for the loader:\n')
  print('| pipeline | images/s |\n|---|---:|')
  for name, rate in results.items():
    print(f'| {name} | {rate:,.0f} |')
  ours = results['resnet_jax (simplejpeg scaled DCT + OpenCV)']
  print(f'\nresnet_jax / fastest other, per core: {ours / best_other:.2f}x')
  print(json.dumps({'files': len(files), 'size': args.size, 'cores': n,
                    'images_per_sec': {k: round(v, 1) for k, v in results.items()},
                    'ratio_to_fastest_other': round(ours / best_other, 3)}))


if __name__ == '__main__':
  main()
