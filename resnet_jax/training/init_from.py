"""Starting a run from trained weights: another run's checkpoint or a
torchvision-layout `.pth`."""

import os

import jax
import ml_collections
import numpy as np

from resnet_jax import errors
from resnet_jax.logs import log
from resnet_jax.training import convert
from resnet_jax.training import inference
from resnet_jax.training import train_state


def init_from_run(state: train_state.TrainState, config: ml_collections.ConfigDict,
                  num_classes: int) -> train_state.TrainState:
  """Starts from a resnet_jax run: `init_from` is a workdir (its latest
  checkpoint) or `WORKDIR/checkpoints/STEP`. Loads parameters and BatchNorm
  statistics, not the optimizer state or the step; a classifier whose class
  count differs is replaced by the fresh one (e.g. CIFAR-10 -> CIFAR-100)."""
  path = os.path.normpath(config.init_from)
  step = None
  if os.path.basename(path).isdigit() and os.path.basename(
      os.path.dirname(path)) == 'checkpoints':
    step, path = int(os.path.basename(path)), os.path.dirname(os.path.dirname(path))
  try:
    source = inference.load_for_inference(path, step)
  except errors.UserError as e:
    raise errors.UserError(f'init_from {config.init_from}: {e}') from e
  model = source.config.model
  if model != config.model:
    raise errors.UserError(f'init_from {config.init_from} is a {model} run but the config '
                           f'asks for {config.model}; set --config.model={model}')
  log.info('Initialised %s from step %d of %s', config.model, source.step, path)
  return _start_from(state, source.variables, config, num_classes)


def init_from_torch(state: train_state.TrainState, config: ml_collections.ConfigDict,
                    num_classes: int) -> train_state.TrainState:
  """Starts from a torchvision-layout `.pth`, replacing a classifier whose
  class count differs (e.g. an ImageNet ResNet-50 fine-tuned on CIFAR-10)."""
  state_dict = convert.load_torch_file(config.init_from)
  stem = convert.infer_stem(state_dict)
  if stem != config.stem:
    raise errors.UserError(f'{config.init_from} has the {stem} stem but the config '
                           f'has {config.stem!r}; set --config.stem={stem}')
  variables = convert.from_torch(config.model, state_dict, stem=stem)
  log.info('Initialised %s from %s', config.model, config.init_from)
  return _start_from(state, variables, config, num_classes)


def _start_from(state: train_state.TrainState, variables: dict, config: ml_collections.ConfigDict,
                num_classes: int) -> train_state.TrainState:
  """`state` with loaded parameters and BatchNorm statistics and a fresh
  optimizer; the fresh classifier replaces one whose class count differs."""
  params = variables['params']
  source_classes = params['fc']['kernel'].shape[-1]
  if source_classes != num_classes:
    log.info('Replacing the %d-class classifier of %s with a new %d-class one',
             source_classes, config.init_from, num_classes)
    params = {**params, 'fc': state.params['fc']}
  shapes = lambda tree: {jax.tree_util.keystr(k): np.shape(x)
                         for k, x in jax.tree_util.tree_leaves_with_path(tree)}
  if shapes(params) != shapes(state.params):
    raise errors.UserError(f'init_from {config.init_from} holds a {config.model} of '
                           'another shape; check --config.stem and --config.shortcut '
                           "against the run it came from (its run.json)")
  state = state.replace(params=params, batch_stats=variables['batch_stats'],
                        opt_state=state.tx.init(params))
  if train_state.ema_of(state) is not None:  # The average starts at the loaded weights.
    state = state.replace(ema={'params': params, 'batch_stats': variables['batch_stats']})
  return state
