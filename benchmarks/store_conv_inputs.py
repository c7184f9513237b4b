r"""Train-step speed with `store_conv_inputs` on and off, in one process.

  python benchmarks/store_conv_inputs.py --config configs/cifar.py [--config.x=y]
      [--windows=5] [--steps=10]

Both steps are compiled first; then timed windows alternate between them, so
a noisy machine slows both alike. Prints the median images/s of each and
their ratio as one JSON object.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Defines --config, --windows and --steps, used here as there.
from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS


def main(argv):
  del argv
  runs = {}
  for setting in ('on', 'off'):
    config = FLAGS.config.copy_and_resolve_references()
    config.store_conv_inputs = setting
    _, _, state, step, _, batch, _, _ = benchmark.compiled_train_step(config)
    for _ in range(2):  # Warm-up.
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    runs[setting] = {'state': state, 'step': step, 'batch': batch, 'rates': []}
  for _ in range(FLAGS.windows):
    for run in runs.values():
      start = time.perf_counter()
      state = run['state']
      for _ in range(FLAGS.steps):
        state, metrics = run['step'](state, run['batch'])
      jax.block_until_ready(metrics)
      run['state'] = state
      run['rates'].append(FLAGS.steps * config.batch_size / (time.perf_counter() - start))
  medians = {k: round(statistics.median(v['rates']), 1) for k, v in runs.items()}
  print(json.dumps({'model': config.model, 'batch_size': config.batch_size,
                    'jax_version': jax.__version__, 'windows': FLAGS.windows,
                    'steps_per_window': FLAGS.steps,
                    'train_images_per_sec_store_on': medians['on'],
                    'train_images_per_sec_store_off': medians['off'],
                    'speedup': round(medians['on'] / medians['off'], 3)}, indent=1))


if __name__ == '__main__':
  app.run(main)
