"""Checks a config before anything is compiled, downloaded or written."""

import json
import os

import ml_collections

from resnet_jax import datasets
from resnet_jax import errors
from resnet_jax import models


# One line per config field: the public interface of a run (see --help).
FIELDS = {
    'model': 'network name: resnet20..1202, preact_resnet110/164/1001, '
             'resnet18..152, resnext29_8x64d/16x64d, wrn28_10, wrn16_8, resnet8',
    'stem': "'cifar' (3x3 conv) or 'imagenet' (7x7/2 conv + max-pool); resnet18..152 only",
    'shortcut': "'' keeps the paper's shortcut; 'A' (zero-pad) or 'B' (1x1 projection)",
    'zero_init_residual': "start each residual branch's last BatchNorm scale at 0",
    'dropout_rate': 'dropout between the convolutions of Wide ResNet blocks',
    'bn_momentum': "BatchNorm running-average decay (PyTorch's momentum 0.1 = 0.9 here)",
    'bn_epsilon': 'BatchNorm epsilon',
    'half_precision': 'bfloat16 computation; parameters and statistics stay float32',
    'store_conv_inputs': "'auto' (on for CPU), 'on' or 'off': keep conv inputs for "
                         'the backward pass instead of recomputing them; same numbers',
    'init_from': 'weights to start from: a resnet_jax workdir or one of its '
                 'checkpoints (WORKDIR/checkpoints/STEP), or a torchvision-layout .pth '
                 '(resnet18..152)',
    'dataset': "'cifar10' or 'cifar100' (tfds), or the name of an image-folder "
               'dataset in data_dir (NAME/train/<class>/*, NAME/test/<class>/*)',
    'data_dir': 'tfds data directory, or the folder holding image-folder datasets; '
                'unset = tfds default (see prepare_data)',
    'augment': 'pad 4 + random 32x32 crop + horizontal flip on training images',
    'batch_size': 'global training batch, over all devices and processes',
    'eval_batch_size': 'global evaluation batch; the last batch is padded and masked',
    'num_epochs': 'run length in epochs (may be fractional), when num_train_steps is -1',
    'num_train_steps': 'run length in steps; -1 derives it from num_epochs',
    'learning_rate': 'peak learning rate (not rescaled with batch_size)',
    'lr_boundaries': 'fractions of the run where the learning rate is multiplied',
    'lr_decay_factor': 'the factor applied at each boundary',
    'warmup_steps': 'steps at warmup_lr before learning_rate (0 = none)',
    'warmup_lr': 'learning rate during warmup',
    'momentum': 'SGD momentum',
    'nesterov': 'Nesterov momentum',
    'weight_decay': 'L2 coefficient added to the gradient of conv and dense kernels',
    'parallelism': "'jit' (one program over a device mesh) or 'pmap'",
    'num_devices': 'devices used per process; -1 = all',
    'seed': 'initialisation, example order, augmentation and dropout seed',
    'log_every_steps': 'steps between training-metric lines',
    'checkpoint_every_steps': 'steps between checkpoints (also at evals and the end)',
    'eval_every_epochs': 'epochs between evaluations on the whole test split',
    'keep_checkpoints': 'how many recent checkpoints to keep (the best is kept too)',
    'eval_step': 'checkpoint step that --mode=eval restores; -1 = latest',
}


# Resuming a workdir with a different value of one of these would blend two
# recipes: refused. (store_conv_inputs is bitwise neutral, tested.)
RECIPE_FIELDS = (
    'model', 'stem', 'shortcut', 'zero_init_residual', 'dropout_rate', 'bn_momentum',
    'bn_epsilon', 'half_precision', 'init_from', 'dataset', 'augment', 'batch_size',
    'num_epochs', 'num_train_steps', 'learning_rate', 'lr_boundaries',
    'lr_decay_factor', 'warmup_steps', 'warmup_lr', 'momentum', 'nesterov',
    'weight_decay', 'seed')
# These change where and how often things happen, never the numbers (device
# count and jit/pmap: only by float rounding): a resume may change them.
RUNTIME_FIELDS = (
    'store_conv_inputs', 'data_dir', 'eval_batch_size', 'parallelism', 'num_devices',
    'log_every_steps', 'checkpoint_every_steps', 'eval_every_epochs',
    'keep_checkpoints', 'eval_step')


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> tuple:
  """(recipe changes, runtime changes): {field: (stored, requested)} of the
  fields whose value differs from the stored run's config (a JSON dict).
  Fields the stored config lacks (written by an older version) are skipped."""
  requested = json.loads(config.to_json())
  recipe, runtime = {}, {}
  for field, value in requested.items():
    if field in stored and stored[field] != value:
      (recipe if field in RECIPE_FIELDS else runtime)[field] = (stored[field], value)
  return recipe, runtime


def check_resume(stored: dict, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Refuses a resume whose recipe differs from the run in `workdir`.

  Returns:
    The runtime fields that differ, {field: (stored, requested)}.

  Raises:
    errors.UserError: naming each differing recipe field and both values.
  """
  recipe, runtime = config_changes(stored, config)
  if recipe:
    listed = '; '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in sorted(recipe.items()))
    hint = ''
    if {'num_epochs', 'num_train_steps'} & set(recipe):
      hint = (' To train longer, start a new workdir from this one: '
              f'--config.init_from={workdir}.')
    raise errors.UserError(
        f'{workdir} holds a run with a different recipe ({listed}); pass a new '
        '--workdir for a new run, or drop those flags to resume this one.' + hint)
  return runtime


def validate(config: ml_collections.ConfigDict) -> datasets.Source:
  """Checks every field; reads no images and writes nothing.

  Returns:
    The dataset the config names.

  Raises:
    errors.UserError: naming the first bad field and its fix.
  """
  unknown = sorted(set(config.keys()) - set(FIELDS))
  if unknown:
    raise errors.UserError(f'config fields {unknown} are not known to this version; '
                           'remove them or update configs/')
  if config.model not in models.MODELS:
    raise errors.UserError(f'unknown model {config.model!r}; set --config.model '
                           f'to one of: {", ".join(models.MODELS)}')
  source = datasets.resolve(config.dataset, config.data_dir)
  for field in ('batch_size', 'eval_batch_size', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints'):
    value = config[field]
    if not isinstance(value, int) or value <= 0:
      raise errors.UserError(f'{field} must be a positive integer, got {value!r}; '
                             f'set --config.{field}')
  for field in ('learning_rate', 'eval_every_epochs'):
    if not config[field] > 0:
      raise errors.UserError(f'{field} must be positive, got {config[field]!r}; '
                             f'set --config.{field}')
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise errors.UserError('num_epochs must be positive when num_train_steps is '
                           f'-1, got {config.num_epochs!r}')
  if not all(0 < f < 1 for f in config.lr_boundaries):
    raise errors.UserError('lr_boundaries are fractions of the run, each in (0, 1); '
                           f'got {tuple(config.lr_boundaries)}')
  if config.store_conv_inputs not in ('auto', 'on', 'off'):
    raise errors.UserError(f'store_conv_inputs must be auto, on or off, got '
                           f'{config.store_conv_inputs!r}; set --config.store_conv_inputs')
  if config.init_from and os.path.isdir(config.init_from):
    pass  # A resnet_jax run: its model is checked when it is read.
  elif config.init_from:
    if config.model not in models.IMAGENET_FAMILY:
      raise errors.UserError(f'init_from loads torchvision-layout weights, which '
                             f'exist for {models.IMAGENET_FAMILY}, not {config.model!r}')
    if not os.path.isfile(config.init_from):
      raise errors.UserError(f'init_from {config.init_from} does not exist; pass a '
                             'resnet_jax workdir, one of its checkpoints, or a .pth file')
  try:
    models.create_model(config.model, source.num_classes,
                        stem=config.stem, shortcut=config.shortcut or None,
                        dropout_rate=config.dropout_rate,
                        zero_init_residual=config.zero_init_residual)
  except ValueError as e:
    raise errors.UserError(f'{e} (check --config.stem, shortcut, dropout_rate, '
                           'zero_init_residual)') from e
  return source
