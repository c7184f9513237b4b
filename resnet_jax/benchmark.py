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

from resnet_jax import config_files
from resnet_jax.data import augmentations
from resnet_jax.data import batch_workers
from resnet_jax.data import datasets
from resnet_jax.data import device_pipeline
from resnet_jax import errors
from resnet_jax.data import input_pipeline
from resnet_jax import logs
from resnet_jax import paths
from resnet_jax.reporting import metrics_io
from resnet_jax.reporting import timing

_CONFIG = errors.define_config_flag(None, 'Config file.')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows per measurement.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timed window.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps before the windows.')
_MIN_WINDOW = flags.DEFINE_float(
    'min_window_seconds', 1.0, 'Scale --steps up until one window lasts this long, '
    'so that a fast device is timed over more than its dispatch latency.')
_LOOP = flags.DEFINE_bool(
    'loop', True, 'Also time the whole training loop, before and after data moved '
    'to the device (--noloop: the steps and the input pipeline only).')
_TA_WORKERS = flags.DEFINE_list(
    'trivialaugment_workers', [], 'Worker process counts to time the TrivialAugment '
    'host pipeline with, e.g. 1,2.')
_TORCH = flags.DEFINE_bool('torch', False, 'Also run the PyTorch baseline.')
_TORCH_PYTHON = paths.define_flag(
    'torch_python', None, 'Run the PyTorch baseline (implies --torch) with this '
    'Python interpreter, e.g. one where PyTorch installs when this one has none.')
flags.mark_flags_as_required(['config'])


def synthetic_split(n: int, num_classes: int, seed: int = 0,
                    size: int = 32) -> input_pipeline.Split:
  rng = np.random.default_rng(seed)
  return input_pipeline.Split(
      images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      labels=rng.integers(0, num_classes, n).astype(np.int32),
      class_names=tuple(map(str, range(num_classes))))


def compiled_train_step(config):
  """What the train benchmarks time: the real step compiled for `config`.

  Returns:
    (data parallelism, train stream, placed state, compiled train step, eval
    step, device batch, compile seconds of the train step, synthetic split).
  """
  from resnet_jax.training import run_setup  # Heavy.
  from resnet_jax.training import steps as train_steps
  dp, source = run_setup.preflight(config)
  num_classes = source.num_classes
  b = config.batch_size
  size = config.get('image_size', 0)
  # With image_size: uint8 images of that size, as the file loader sends
  # them (its own speed is benchmarks/jpeg_decoding.py's).
  split = synthetic_split(max(2 * b, 256) if size else max(4 * b, 2048), num_classes,
                          config.seed, size or 32)
  stream = input_pipeline.TrainStream(split, b, config.seed, config.augment and not size,
                                      jax.process_index(), jax.process_count(),
                                      augmentations.Options.from_config(config))
  state = _state_of(config, dp, num_classes)
  # Synthetic images: any normalisation times the same.
  step_fn, eval_fn = train_steps.compile_steps(dp, config, num_classes,
                                         datasets.MEAN_STD['cifar10'])
  batch = dp.put_batch(stream.batch(0))
  start = time.perf_counter()
  step_fn = step_fn.lower(state, batch).compile()
  return dp, stream, state, step_fn, eval_fn, batch, time.perf_counter() - start, split


def _state_of(config, dp, num_classes):
  from resnet_jax.training import train_state
  model = train_state.create_model(config, num_classes, dp.axis_name)
  tx = train_state.create_optimizer(config, train_state.create_learning_rate_fn(config, 10**6))
  return dp.place_state(train_state.create_train_state(
      jax.random.key(config.seed), model, tx, ema=config.ema_decay > 0, compiled=True))


def loop_rate(config, split, windows: int, steps: int, warmup: int,
              min_seconds: float, initial) -> dict:
  """The training loop as `train_and_evaluate` runs it (the pipeline `config`
  resolves to, k steps per call, metrics fetched and formatted every
  `log_every_steps`), without evaluations and checkpoints, from the host
  state `initial` (canonical: `DataParallel.canonical_state`).

  Returns:
    {'pipeline', 'steps_per_call', 'images_per_sec' (median of the windows),
    'host_ms_per_step': the loop thread's own CPU time per step (dispatch,
    Python, fetching and formatting the logs; XLA runs the steps on its own
    threads, so this is what an accelerator would wait for), 'input_workers'}.
  """
  from resnet_jax.training import chunks, loop, run_setup, steps as train_steps
  dp, source = run_setup.preflight(config)
  pipeline = run_setup.resolve_pipeline(config, None, split, dp)
  k = chunks.steps_per_call(config)
  train_fn, _ = train_steps.step_functions(dp, config, source.num_classes,
                                           datasets.MEAN_STD['cifar10'])
  spec = None
  if pipeline == 'device':
    spec = device_pipeline.Spec.of(config, len(split))
  chunk = chunks.compile_train_chunk(dp, train_fn, k, spec,
                                     train_steps.train_compiler_options(config))
  # One plan and one feed for every window, as one run has: the split is
  # placed once, the orders drawn once an epoch.
  plan = loop.chunk_plan(0, 10**5, k, config.log_every_steps, 10**9, set())
  feed = loop.feed(pipeline, dp, split, config, plan, k)
  calls = zip(plan, feed)
  holder = {'state': dp.place_state(initial), 'pending': [],
            'host': 0.0}

  def run_steps(n):
    """At least n steps of the loop, from where the last window stopped."""
    cpu_start = time.thread_time()
    state, pending, done = holder['state'], holder['pending'], 0
    while done < n:
      (first, m), data = next(calls)
      state, metrics = chunk(state, data, m)
      pending.append((m, metrics))
      done += m
      if (first + m) % config.log_every_steps == 0:
        fetched = loop.fetch_steps(dp, pending)
        metrics_io.format_line({'step': first + m, **metrics_io.mean_metrics(fetched)})
        pending = []
    # The loop's own host time: not the wait that ends the timing window,
    # which a training run does not have.
    holder['host'] += time.thread_time() - cpu_start
    jax.block_until_ready(state)
    holder['state'], holder['pending'] = state, pending
    return done

  try:
    run_steps(max(warmup, 1) * k)  # Compiles.
    steps = -(-timing.steps_for(run_steps, steps, min_seconds) // k) * k  # Whole calls.
    holder['host'] = 0.0
    rate = timing.median_rate(lambda: run_steps(steps), steps * config.batch_size, windows)
    host_ms = 1000 * holder['host'] / (steps * windows)
  finally:
    feed.close()  # Stops the host pipeline's workers.
  return {'pipeline': pipeline, 'steps_per_call': k, 'images_per_sec': rate,
          'host_ms_per_step': host_ms,
          'input_workers': run_setup.input_workers(config) if pipeline == 'host' else 0}


def trivialaugment_rates(batch_size: int, worker_counts, min_seconds: float) -> dict:
  """TrivialAugment batches/s of the host pipeline by worker processes:
  {workers: images/s} (crop, flip and TrivialAugment per image)."""
  split = synthetic_split(4096, 10)
  stream = input_pipeline.TrainStream(split, batch_size, 0, True,
                                      options=augmentations.Options(policy='trivialaugment'))
  rates = {}
  for workers in worker_counts:
    with batch_workers.BatchWorkers(stream, workers) as pool:
      list(pool.map(range(workers)))  # Started.
      counter = iter(range(10**9))
      run = lambda n: list(pool.map([next(counter) for _ in range(n)]))
      n = timing.steps_for(run, max(2, 2 * workers), min_seconds)
      rates[str(workers)] = round(timing.median_rate(lambda: run(n), n * batch_size, 3), 1)
  return rates


def run(config, windows: int = 5, steps: int = 10, warmup: int = 3,
        min_window_seconds: float = 1.0, loop: bool = True,
        trivialaugment_workers=()) -> dict:
  """Measures one config; returns the benchmark record.

  Args:
    config: the config to time.
    windows: timed windows per measurement (the median is reported).
    steps: steps per window, scaled up until a window lasts
      `min_window_seconds`.
    warmup: untimed steps first.
    min_window_seconds: see `steps`.
    loop: also time the whole training loop, with this config's pipeline
      and steps per call, and with the host pipeline one step per call.
    trivialaugment_workers: worker counts to time TrivialAugment with.
  """
  from resnet_jax.training import train_state  # Heavy.
  (dp, stream, state, step_fn, eval_fn, batch, compile_s,
   split) = compiled_train_step(config)
  b = config.batch_size
  # With image_size the loop is not timed: its batches come from files.
  loop_timed = loop and not config.get('image_size', 0)
  if loop_timed:  # The loop's windows start from it too: a copy, as steps donate it.
    initial = jax.tree.map(np.array, jax.device_get(dp.canonical_state(state)))

  # Train: a fixed device batch, so only the step is timed.
  for _ in range(warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  train_steps = timing.StepRunner(step_fn, state, batch, jax.block_until_ready)
  n = timing.steps_for(train_steps, steps, min_window_seconds)
  train_rate = timing.median_rate(lambda: train_steps(n), n * b, windows)

  eval_batch = dp.put_batch({**stream.batch(1), 'mask': np.ones(
      b // jax.process_count(), bool)})
  jax.block_until_ready(eval_fn(train_steps.state, eval_batch))

  def eval_steps(n):
    for _ in range(n):
      out = eval_fn(train_steps.state, eval_batch)
    jax.block_until_ready(out)
  n = timing.steps_for(eval_steps, steps, min_window_seconds)
  eval_rate = timing.median_rate(lambda: eval_steps(n), n * b, windows)

  # Host pipeline alone: batch assembly + augmentation, one thread, no device.
  counter = iter(range(10**9))

  def input_steps(n):
    for _ in range(n):
      stream.batch(next(counter))
  n = timing.steps_for(input_steps, steps, min_window_seconds)
  input_rate = timing.median_rate(lambda: input_steps(n), n * b, windows)
  train_steps.state = None  # Frees the step's state before the loop's own.
  del state

  device = jax.devices()[0]
  record = {
      'device_kind': device.device_kind, 'platform': device.platform,
      'device_count': len(dp.devices), 'process_count': jax.process_count(),
      'model': config.model, 'batch_size': b,
      'dtype': 'bfloat16' if config.half_precision else 'float32',
      'parallelism': config.parallelism,
      'store_conv_inputs': train_state.store_conv_inputs(config),
      'cpu_conv': train_state.cpu_conv(config),
      'compile_seconds': round(compile_s, 2),
      'train_images_per_sec': round(train_rate, 1),
      'eval_images_per_sec': round(eval_rate, 1),
      'input_pipeline_images_per_sec': round(input_rate, 1),
      # How many times what training consumes one host thread delivers.
      'input_vs_train': round(input_rate / train_rate, 2),
      'augmentations': dataclasses.asdict(augmentations.Options.from_config(config)),
      'jax_version': jax.__version__, 'python': platform.python_version(),
      'cpu_count': os.cpu_count(), 'image_size': config.get('image_size', 0) or 32,
      'batch_per_device': b // len(dp.devices),
  }
  if config.get('image_size', 0):  # The synthetic gather says nothing of files.
    for key in ('input_pipeline_images_per_sec', 'input_vs_train', 'augmentations'):
      record.pop(key)
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    record['peak_memory_gib'] = round(stats['peak_bytes_in_use'] / 2**30, 2)
  if loop and not loop_timed:
    record['loop'] = 'not timed with image_size (benchmarks/jpeg_decoding.py times the loader)'
  if loop_timed:
    after = loop_rate(config, split, windows, steps, warmup, min_window_seconds, initial)
    # The loop before data moved to the device: host batches, one step per call.
    before_config = config.copy_and_resolve_references()
    before_config.unlock()
    before_config.update(input_pipeline='host', steps_per_call=1)
    before = loop_rate(before_config, split, windows, steps, warmup, min_window_seconds,
                       initial)
    record.update({
        'input_pipeline': after['pipeline'], 'steps_per_call': after['steps_per_call'],
        'loop_images_per_sec': round(after['images_per_sec'], 1),
        # The loop's cost over the step alone (input, dispatch, logging).
        'loop_overhead_percent': round(100 * (train_rate / after['images_per_sec'] - 1), 1),
        'host_ms_per_step': round(after['host_ms_per_step'], 4),
        'host_loop_images_per_sec': round(before['images_per_sec'], 1),
        'host_loop_host_ms_per_step': round(before['host_ms_per_step'], 4),
        # What one host thread spends building a batch, which the host
        # pipeline adds on its worker(s).
        'host_input_ms_per_step': round(1000 * b / input_rate, 3),
    })
  if trivialaugment_workers:
    record['trivialaugment_images_per_sec'] = trivialaugment_rates(
        b, trivialaugment_workers, min_window_seconds)
  return record


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
              warmup: int, bf16: bool) -> dict:
  """Runs the baseline's command line with another interpreter; its record."""
  result = subprocess.run(
      [python, os.path.join(_REPO, 'benchmarks', 'torch_baseline.py'), '--model', model,
       '--batch_size', str(batch_size), '--windows', str(windows), '--steps', str(steps),
       '--warmup', str(warmup)] + (['--bf16'] if bf16 else []),
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=_REPO), check=False)
  if result.returncode != 0:
    last = (result.stderr.strip().splitlines() or ['no output'])[-1]
    raise errors.UserError(f'the PyTorch baseline failed under {python}: {last}')
  return json.loads(result.stdout)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}')
  logs.setup()
  config = paths.expand_config(_CONFIG.value)
  python = _TORCH_PYTHON.value
  if python and not (os.path.isfile(python) and os.access(python, os.X_OK)):
    raise errors.UserError(f'--torch_python {python} is not an executable; pass the '
                           'path of a Python that has PyTorch')
  baseline = _import_torch_baseline() if _TORCH.value and not python else None
  if baseline:
    try:
      baseline.build(config.model)  # Before the JAX measurements, not after.
    except ValueError as e:
      raise errors.UserError(f'--torch: {e}') from e
  try:
    workers = [int(w) for w in _TA_WORKERS.value]
  except ValueError as e:
    raise errors.UserError(f'--trivialaugment_workers takes whole numbers, got '
                           f'{_TA_WORKERS.value}') from e
  record = run(config, _WINDOWS.value, _STEPS.value, _WARMUP.value, _MIN_WINDOW.value,
               loop=_LOOP.value, trivialaugment_workers=workers)
  torch = None
  if python:
    torch = _torch_in(python, config.model, config.batch_size, _WINDOWS.value,
                      _STEPS.value, _WARMUP.value, config.half_precision)
  elif baseline:
    # The same device and dtype as the JAX side (bfloat16 autocast with
    # half_precision).
    torch = baseline.run(config.model, config.batch_size, _WINDOWS.value, _STEPS.value,
                         _WARMUP.value, bf16=config.half_precision)
  if torch:
    record['torch'] = torch
    record['train_ratio_vs_torch'] = round(
        record['train_images_per_sec'] / torch['train_images_per_sec'], 3)
    record['eval_ratio_vs_torch'] = round(
        record['eval_images_per_sec'] / torch['eval_images_per_sec'], 3)
  print(json.dumps(record, indent=1))


if __name__ == '__main__':
  errors.run_cli(main, prepare_argv=config_files.prepare_argv)
