r"""An experiment declared with its config: does label smoothing help ResNet-8?

The experiment of docs/results.md ("Seeds and a sweep"): ResNet-8, the paper
recipe (He et al. 2015) compressed to 2 epochs, label smoothing 0 vs 0.1:

  python -m resnet_jax.experiment --config configs/label_smoothing.py \
      --workdir exps/ls --seeds=0-3 \
      --config.dataset=cifar10-jpeg --config.data_dir=DATA
  python -m resnet_jax.results exps/ls --compare=1,2

`get_sweep` is what makes this file an experiment: `resnet_jax.experiment`
runs every point it returns for every seed (a `--sweep` flag replaces it);
`resnet_jax.main` ignores it and trains the base config.
"""

import os

from resnet_jax import config_files


def get_config(preset: str = ''):
  """ResNet-8, 2 epochs of the paper recipe; a preset of cifar.py if named."""
  cifar = config_files.load_module(os.path.join(os.path.dirname(__file__), 'cifar.py'))
  config = cifar.get_config(preset)
  if not preset:
    config.model = 'resnet8'
    config.num_epochs = 2.0
  return config


def get_sweep(preset: str = ''):
  """The sweep: a grid {field: [values]} (or a list of {field: value} points)."""
  del preset
  return {'label_smoothing': [0.0, 0.1]}
