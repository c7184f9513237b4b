r"""Throughput benchmark of the train step, eval step and input pipeline.

  python -m resnet_jax.benchmark --config configs/cifar.py
  python -m resnet_jax.benchmark --config configs/cifar.py --torch   # + PyTorch
  python -m resnet_jax.benchmark --config configs/cifar.py --torch_python=PY

Prints one JSON object. Inputs are synthetic (random uint8 images), so no
dataset is needed; the model, optimizer, step functions and input pipeline
are the ones training uses. Throughputs are medians over several timed windows
after warm-up. With `--torch`, the PyTorch baseline of `benchmarks/` (the same
network and recipe) runs in the same process and the ratios are added;
`--torch_python` runs it, after the JAX measurements, with another interpreter
(PyTorch may have no wheel for this one).
"""

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time

from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from resnet_jax.data import augmentations
from resnet_jax.data import datasets
from resnet_jax import errors
from resnet_jax.data import input_pipeline
from resnet_jax import logs
from resnet_jax.reporting import timing

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows per measurement.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timed window.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps before the windows.')
_TORCH = flags.DEFINE_bool('torch', False, 'Also run the PyTorch baseline.')
_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', None, 'Run the PyTorch baseline (implies --torch) with this '
    'Python interpreter, e.g. one where PyTorch installs when this one has none.')
flags.mark_flags_as_required(['config'])


def synthetic_split(n: int, num_classes: int, seed: int = 0) -> input_pipeline.Split:
  rng = np.random.default_rng(seed)
  return input_pipeline.Split(
      images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      labels=rng.integers(0, num_classes, n).astype(np.int32),
      class_names=tuple(map(str, range(num_classes))))


def compiled_train_step(config):
  """What the train benchmarks time: the real step compiled for `config`.

  Returns:
    (data parallelism, train stream, placed state, compiled train step, eval
    step, device batch, compile seconds of the train step).
  """
  from resnet_jax.training import run_setup  # Heavy.
  from resnet_jax.training import steps as train_steps
  from resnet_jax.training import train_state
  dp, source = run_setup.preflight(config)
  num_classes = source.num_classes
  b = config.batch_size
  split = synthetic_split(max(4 * b, 2048), num_classes, config.seed)
  stream = input_pipeline.TrainStream(split, b, config.seed, config.augment,
                                      jax.process_index(), jax.process_count(),
                                      augmentations.Options.from_config(config))
  model = train_state.create_model(config, num_classes, dp.axis_name)
  tx = train_state.create_optimizer(config, train_state.create_learning_rate_fn(config, 10**6))
  state = dp.place_state(train_state.create_train_state(jax.random.key(config.seed), model, tx,
                                                 ema=config.ema_decay > 0))
  # Synthetic images: any normalisation times the same.
  step_fn, eval_fn = train_steps.compile_steps(dp, config, num_classes,
                                         datasets.MEAN_STD['cifar10'])
  batch = dp.put_batch(stream.batch(0))
  start = time.perf_counter()
  step_fn = step_fn.lower(state, batch).compile()
  return dp, stream, state, step_fn, eval_fn, batch, time.perf_counter() - start


def run(config, windows: int = 5, steps: int = 10, warmup: int = 3) -> dict:
  """Measures one config; returns the benchmark record."""
  from resnet_jax.training import train_state  # Heavy.
  dp, stream, state, step_fn, eval_fn, batch, compile_s = compiled_train_step(config)
  b = config.batch_size

  # Train: a fixed device batch, so only the step is timed.
  for _ in range(warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  holder = {'state': state}

  def train_window():
    s = holder['state']
    for _ in range(steps):
      s, m = step_fn(s, batch)
    jax.block_until_ready(m)
    holder['state'] = s
  train_rate = timing.median_rate(train_window, steps * b, windows)

  eval_batch = dp.put_batch({**stream.batch(1), 'mask': np.ones(
      b // jax.process_count(), bool)})
  jax.block_until_ready(eval_fn(holder['state'], eval_batch))

  def eval_window():
    for _ in range(steps):
      out = eval_fn(holder['state'], eval_batch)
    jax.block_until_ready(out)
  eval_rate = timing.median_rate(eval_window, steps * b, windows)

  # Host pipeline alone: batch assembly + augmentation, no device.
  counter = iter(range(10**9))

  def input_window():
    for _ in range(steps):
      stream.batch(next(counter))
  input_rate = timing.median_rate(input_window, steps * b, windows)

  # The real loop: prefetching pipeline feeding the step; time spent waiting.
  waited, total_start = 0.0, time.perf_counter()
  s = holder['state']
  batches = input_pipeline.prefetch(stream.batch, dp.put_batch,
                                    range(steps * windows))
  while True:
    t = time.perf_counter()
    try:
      nxt = next(batches)
    except StopIteration:
      break
    waited += time.perf_counter() - t
    s, m = step_fn(s, nxt)
  jax.block_until_ready(m)
  total = time.perf_counter() - total_start

  device = jax.devices()[0]
  return {
      'device_kind': device.device_kind, 'platform': device.platform,
      'device_count': len(dp.devices), 'process_count': jax.process_count(),
      'model': config.model, 'batch_size': b,
      'dtype': 'bfloat16' if config.half_precision else 'float32',
      'parallelism': config.parallelism,
      'store_conv_inputs': train_state.store_conv_inputs(config),
      'compile_seconds': round(compile_s, 2),
      'train_images_per_sec': round(train_rate, 1),
      'eval_images_per_sec': round(eval_rate, 1),
      'input_pipeline_images_per_sec': round(input_rate, 1),
      # How many times what training consumes the host pipeline delivers
      # (one thread, this config's augmentations).
      'input_vs_train': round(input_rate / train_rate, 1),
      'augmentations': dataclasses.asdict(augmentations.Options.from_config(config)),
      'input_wait_fraction': round(waited / total, 4),
      'jax_version': jax.__version__, 'python': platform.python_version(),
      'cpu_count': os.cpu_count(),
  }


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_torch_baseline():
  """benchmarks/torch_baseline.py, checked before any JAX work starts."""
  sys.path.insert(0, os.path.join(_REPO, 'benchmarks'))
  try:
    import torch_baseline
  except ImportError as e:
    raise errors.UserError(f'--torch needs PyTorch ({e}); pip install -e ".[torch]" '
                           'or pass --torch_python=PYTHON_WITH_TORCH') from e
  return torch_baseline


def _torch_in(python: str, model: str, batch_size: int, windows: int, steps: int,
              warmup: int) -> dict:
  """Runs the baseline's command line with another interpreter; its record."""
  result = subprocess.run(
      [python, os.path.join(_REPO, 'benchmarks', 'torch_baseline.py'), '--model', model,
       '--batch_size', str(batch_size), '--windows', str(windows), '--steps', str(steps),
       '--warmup', str(warmup)],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=_REPO), check=False)
  if result.returncode != 0:
    last = (result.stderr.strip().splitlines() or ['no output'])[-1]
    raise errors.UserError(f'the PyTorch baseline failed under {python}: {last}')
  return json.loads(result.stdout)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}')
  logs.setup()
  config = _CONFIG.value
  python = _TORCH_PYTHON.value
  if python and not (os.path.isfile(python) and os.access(python, os.X_OK)):
    raise errors.UserError(f'--torch_python {python} is not an executable; pass the '
                           'path of a Python that has PyTorch')
  baseline = _import_torch_baseline() if _TORCH.value and not python else None
  record = run(config, _WINDOWS.value, _STEPS.value, _WARMUP.value)
  torch = None
  if python:
    torch = _torch_in(python, config.model, config.batch_size, _WINDOWS.value,
                      _STEPS.value, _WARMUP.value)
  elif baseline:
    torch = baseline.run(config.model, config.batch_size, _WINDOWS.value, _STEPS.value,
                         _WARMUP.value)
  if torch:
    record['torch'] = torch
    record['train_ratio_vs_torch'] = round(
        record['train_images_per_sec'] / torch['train_images_per_sec'], 3)
    record['eval_ratio_vs_torch'] = round(
        record['eval_images_per_sec'] / torch['eval_images_per_sec'], 3)
  print(json.dumps(record, indent=1))


if __name__ == '__main__':
  errors.run_cli(main)
