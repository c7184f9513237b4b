"""Checks a config before anything is compiled, downloaded or written."""

import os

import ml_collections

from resnet_jax import errors
from resnet_jax import input_pipeline
from resnet_jax import models
from resnet_jax import parallel


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `errors.UserError` naming the first bad field and its fix."""
  if config.model not in models.MODELS:
    raise errors.UserError(f'unknown model {config.model!r}; set --config.model '
                           f'to one of: {", ".join(models.MODELS)}')
  if config.dataset not in input_pipeline.NUM_CLASSES:
    raise errors.UserError(f'unknown dataset {config.dataset!r}; set '
                           '--config.dataset to cifar10 or cifar100')
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
  if config.parallelism not in parallel.STRATEGIES:
    raise errors.UserError(f'parallelism {config.parallelism!r} is not one of '
                           f'{parallel.STRATEGIES}; set --config.parallelism')
  if config.init_from:
    if config.model not in models.IMAGENET_FAMILY:
      raise errors.UserError(f'init_from loads torchvision-layout weights, which '
                             f'exist for {models.IMAGENET_FAMILY}, not {config.model!r}')
    if not os.path.isfile(config.init_from):
      raise errors.UserError(f'init_from file {config.init_from} does not exist; '
                             'pass the path of a .pth state dict')
  try:
    models.create_model(config.model, input_pipeline.NUM_CLASSES[config.dataset],
                        stem=config.stem, shortcut=config.shortcut or None,
                        dropout_rate=config.dropout_rate,
                        zero_init_residual=config.zero_init_residual)
  except ValueError as e:
    raise errors.UserError(f'{e} (check --config.stem, shortcut, dropout_rate, '
                           'zero_init_residual)') from e
