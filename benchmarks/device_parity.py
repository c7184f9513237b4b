"""One training step on the accelerator against the same step on the CPU.

  python benchmarks/device_parity.py            # default backend vs CPU, resnet20
  python benchmarks/device_parity.py --smoke    # resnet8 (on a CPU-only machine:
                                                # CPU vs CPU, the script's own check)
  python benchmarks/device_parity.py --imagenet [--batch_size 8]   # ResNet-50, 224 px

From the same initial state and batch, at the highest matmul precision (so
TF32 or bf16 passes of the accelerator's matrix units do not stand in for
float32), the two steps must agree to float rounding: loss, parameters and
BatchNorm statistics within `RTOL` of each leaf's largest value (the largest
relative difference of a leaf, as `tests/conftest.py` measures layouts). A
bfloat16 step (`half_precision`) must give a finite loss, keep its
parameters in float32, and, with `--imagenet` (ResNet-50, ImageNet stem, 224
px, 1,000 classes), give the float32 step's loss to `BF16_RTOL`. Prints one
JSON object; exits 1 when a check fails.
"""

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import cifar  # noqa: E402
from resnet_jax.data import datasets  # noqa: E402
from resnet_jax.training import steps  # noqa: E402
from resnet_jax.training import train_state  # noqa: E402

# cuDNN and XLA:CPU convolutions sum in different orders; float32 rounding of
# one step is ~1e-6 relative (CPU layouts, tests/conftest.py). A wrong kernel
# or a silent TF32 pass is 1e-3 or more.
RTOL = 1e-4
# bfloat16 keeps 8 bits of mantissa (2^-9 = 0.2% per rounding), and the
# roundings of 50 layers add up: the first step's loss of a ResNet-50 at 224
# px (batch 4, random images) was 1.1% off float32 on this project's CPU
# (docs/imagenet.md). The bound leaves 4x that; NaN/inf (an overflow) and
# float16/bfloat16 parameters are checked on their own.
BF16_RTOL = 5e-2


def _config(model: str, half: bool = False, stem: str = 'cifar'):
  config = cifar.get_config()
  config.update(model=model, half_precision=half, stem=stem)
  return config


def initial_state(model: str, stem: str = 'cifar', classes: int = 10):
  """The state every step starts from, initialised on the CPU. The three
  steps share it: a bfloat16 model's parameters are float32 and initialise
  to the same values, and initialising costs more than a step."""
  config = _config(model, stem=stem)
  net = train_state.create_model(config, classes)
  tx = train_state.create_optimizer(config, train_state.create_learning_rate_fn(config, 100))
  with jax.default_device(jax.devices('cpu')[0]):
    return train_state.create_train_state(jax.random.key(0), net, tx,
                                          compiled=True)


def one_step(state, model: str, batch_size: int, device, half: bool = False,
             size: int = 32, stem: str = 'cifar', classes: int = 10):
  """(loss, parameters, BatchNorm statistics) after one step from `state` on
  `device`."""
  config = _config(model, half, stem)
  state = state.replace(apply_fn=train_state.create_model(config, classes).apply)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
           'label': rng.integers(0, classes, batch_size).astype(np.int32)}
  state, batch = jax.device_put((state, batch), device)
  step = jax.jit(functools.partial(
      steps.train_step, mean_std=datasets.MEAN_STD['cifar10'],
      dtype=train_state.compute_dtype(config), seed=0))
  state, metrics = step(state, batch)
  return (float(metrics['train_loss']), jax.device_get(state.params),
          jax.device_get(state.batch_stats))


def largest_relative_difference(a, b) -> float:
  return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x) > 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--smoke', action='store_true', help='resnet8, batch 16')
  parser.add_argument('--imagenet', action='store_true',
                      help='ResNet-50, ImageNet stem, 224 px, 1,000 classes')
  parser.add_argument('--batch_size', type=int, default=0, help='default: 16 with '
                      '--smoke, 8 with --imagenet, else 128')
  args = parser.parse_args()
  model, batch = ('resnet8', 16) if args.smoke else ('resnet20', 128)
  shape = {}
  if args.imagenet:
    model, batch, shape = 'resnet50', 8, dict(size=224, stem='imagenet', classes=1000)
  batch = args.batch_size or batch
  accel, cpu = jax.devices()[0], jax.devices('cpu')[0]
  state = initial_state(model, shape.get('stem', 'cifar'), shape.get('classes', 10))
  with jax.default_matmul_precision('highest'):
    a = one_step(state, model, batch, accel, **shape)
    c = one_step(state, model, batch, cpu, **shape)
  half_loss, half_params, _ = one_step(state, model, batch, accel, half=True, **shape)
  record = {
      'device': f'{accel.platform} {accel.device_kind}', 'model': model,
      'image_size': shape.get('size', 32),
      'batch_size': batch, 'loss': a[0], 'cpu_loss': c[0],
      'loss_relative_difference': abs(a[0] - c[0]) / abs(c[0]),
      'params_relative_difference': largest_relative_difference(c[1], a[1]),
      'batch_stats_relative_difference': largest_relative_difference(c[2], a[2]),
      'bfloat16_loss': half_loss,
      'bfloat16_loss_relative_difference': abs(half_loss - a[0]) / abs(a[0]),
      'bfloat16_params_float32': all(x.dtype == np.float32
                                     for x in jax.tree.leaves(half_params)),
      'rtol': RTOL, 'bf16_rtol': BF16_RTOL}
  record['parity'] = bool(max(record['loss_relative_difference'],
                              record['params_relative_difference'],
                              record['batch_stats_relative_difference']) <= RTOL)
  record['bfloat16_finite'] = bool(np.isfinite(half_loss))
  record['bfloat16_ok'] = bool(record['bfloat16_finite'] and record['bfloat16_params_float32']
                               and record['bfloat16_loss_relative_difference'] <= BF16_RTOL)
  print(json.dumps(record, indent=1))
  return 0 if record['parity'] and record['bfloat16_ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
