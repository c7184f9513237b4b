r"""Issue 46's table: train-step images/s on the CPU, this codebase's model
with `cpu_conv` off and 'auto' against the PyTorch twin (`torch_resnet.py`),
interleaved in one process.

  python benchmarks/cpu_vs_torch.py                  # The issue's rows + ResNet-20.
  python benchmarks/cpu_vs_torch.py --rows resnet18@64/16,resnet20@32/128

Each row times one SGD training step (momentum 0.9, weight decay 1e-4 on the
kernels; the JAX step is the one training compiles, `steps.compile_steps`,
with the configs/cifar.py recipe) on one fixed synthetic batch. After a
warm-up, --windows rounds each time one window of every side in turn, so a
noisy machine slows all alike; a window is as many steps as last at least
--min_window_seconds. The best window of each is reported (images/s). The
ImageNet family runs with the ImageNet stem, the CIFAR ResNets with theirs.
Prints a markdown table, then the rows as JSON. Without PyTorch in this
interpreter, the JAX columns only.
"""

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)
# pylint: disable=g-import-not-at-top
from resnet_jax import config_files
from resnet_jax import models
from resnet_jax.data import datasets
from resnet_jax.parallelism import data_parallel
from resnet_jax.reporting import timing
from resnet_jax.training import steps as train_steps
from resnet_jax.training import train_state

# model@size/batch of issue 46's table, and ResNet-20 on CIFAR (no slower).
DEFAULT_ROWS = ('resnet18@32/16', 'resnet18@64/16', 'resnet18@128/16', 'resnet50@224/16',
                'resnet20@32/128')
NUM_CLASSES = 10  # The twin's default head; the classifier is a negligible part.


def parse_row(row: str) -> tuple:
  """'resnet18@64/16' -> ('resnet18', 64, 16)."""
  model, _, rest = row.partition('@')
  size, _, batch = rest.partition('/')
  return model, int(size), int(batch)


def stem_of(model: str) -> str:
  return 'imagenet' if model in models.IMAGENET_FAMILY else 'cifar'


def _config(model: str, batch: int, cpu_conv: str):
  config = config_files.load_module(
      os.path.join(os.path.dirname(_HERE), 'configs', 'cifar.py')).get_config()
  config.update(model=model, stem=stem_of(model), batch_size=batch, augment=False,
                cpu_conv=cpu_conv, parallelism='jit', num_devices=1)
  return config


def initial_state(model: str, batch: int):
  """The state both JAX columns start from: cpu_conv on and off initialise
  alike (tests/test_models.py), so the row initialises once."""
  config = _config(model, batch, 'off')
  net = train_state.create_model(config, NUM_CLASSES)
  tx = train_state.create_optimizer(config, train_state.create_learning_rate_fn(config, 10**6))
  return train_state.create_train_state(jax.random.key(0), net, tx)


def jax_step(state, model: str, size: int, batch: int, cpu_conv: str):
  """A `run(n)` that takes n training steps (blocking) of the JAX model from
  `state` (`initial_state`)."""
  config = _config(model, batch, cpu_conv)
  dp = data_parallel.DataParallel('jit', 1)
  net = train_state.create_model(config, NUM_CLASSES, dp.axis_name)
  # A host copy of its own: on the CPU, placing an array may keep its buffer,
  # and this runner's steps donate theirs.
  state = dp.place_state(jax.tree.map(np.array, state).replace(apply_fn=net.apply))
  step, _ = train_steps.compile_steps(dp, config, NUM_CLASSES, datasets.MEAN_STD['cifar10'])
  rng = np.random.default_rng(0)
  data = dp.put_batch({
      'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
      'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32)})
  return timing.StepRunner(step, state, data, jax.block_until_ready)


def torch_step(model: str, size: int, batch: int):
  """The same for the PyTorch twin (eager, float32, this machine's threads)."""
  import torch
  import torch.nn.functional as F
  import torch_baseline
  import torch_resnet
  torch.manual_seed(0)
  net = torch_resnet.build(model, NUM_CLASSES, stem=stem_of(model)).train()
  opt = torch_baseline._optimizer(net, 0.1, 1e-4)  # pylint: disable=protected-access
  x = torch.randn(batch, 3, size, size)
  y = torch.randint(0, NUM_CLASSES, (batch,))

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(net(x), y).backward()
      opt.step()
  return run, f'torch {torch.__version__} ({torch.get_num_threads()} threads)'


def measure(row: str, windows: int, min_seconds: float, with_torch: bool) -> dict:
  model, size, batch = parse_row(row)
  # Each runner places its own copy (`jax_step`), so one runner's donated
  # buffers are never the other's.
  state = initial_state(model, batch)
  runners = {'off': jax_step(state, model, size, batch, 'off'),
             'auto': jax_step(state, model, size, batch, 'auto')}
  del state
  torch_version = 'no torch'
  if with_torch:
    runners['torch'], torch_version = torch_step(model, size, batch)
  steps, rates = {}, {k: 0.0 for k in runners}
  for name, run in runners.items():
    run(1)  # Compiled and warm.
    start = time.perf_counter()
    run(1)
    steps[name] = max(1, int(np.ceil(min_seconds / (time.perf_counter() - start))))
  for _ in range(windows):
    for name, run in runners.items():
      start = time.perf_counter()
      run(steps[name])
      rates[name] = max(rates[name], steps[name] * batch / (time.perf_counter() - start))
  record = {'row': f'{model} @ {size}', 'model': model, 'image_size': size,
            'batch_size': batch, 'jax_off': round(rates['off'], 1),
            'jax_auto': round(rates['auto'], 1),
            'auto_vs_off': round(rates['auto'] / rates['off'], 2),
            'torch_version': torch_version}
  if with_torch:
    record.update(torch=round(rates['torch'], 1),
                  auto_vs_torch=round(rates['auto'] / rates['torch'], 2),
                  off_vs_torch=round(rates['off'] / rates['torch'], 2))
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rows', default=','.join(DEFAULT_ROWS),
                      help='comma-separated model@image_size/batch')
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--min_window_seconds', type=float, default=1.0)
  args = parser.parse_args()
  try:
    import torch  # pylint: disable=unused-import
    with_torch = True
  except ImportError:
    with_torch = False
  results = [measure(row, args.windows, args.min_window_seconds, with_torch)
             for row in args.rows.split(',')]
  print(f'jax {jax.__version__}, {results[0]["torch_version"]}, python '
        f'{platform.python_version()}, {os.cpu_count()} cores; train images/s, best of '
        f'{args.windows} interleaved windows')
  print('| model @ size | batch | JAX cpu_conv=off | JAX cpu_conv=auto | PyTorch | '
        'auto / PyTorch | off / PyTorch | auto / off |')
  print('|---|---|---|---|---|---|---|---|')
  for r in results:
    print(f'| {r["row"]} | {r["batch_size"]} | {r["jax_off"]} | {r["jax_auto"]} | '
          f'{r.get("torch", "-")} | {r.get("auto_vs_torch", "-")} | '
          f'{r.get("off_vs_torch", "-")} | {r["auto_vs_off"]} |')
  print(json.dumps(results))


if __name__ == '__main__':
  main()
