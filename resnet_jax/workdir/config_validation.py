"""Checks a config before anything is compiled, downloaded or written."""

import json
import os

import ml_collections

from resnet_jax.data import augmentations
from resnet_jax.data import datasets
from resnet_jax import errors
from resnet_jax import models
from resnet_jax import paths
from resnet_jax.workdir import config_fields


def assign(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets a field from a JSON value: JSON has no tuples, so a list becomes
  one where the field is a tuple (lr_boundaries)."""
  config[field] = tuple(value) if isinstance(config[field], tuple) else value


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> tuple:
  """(recipe changes, runtime changes): {field: (stored, requested)} of the
  fields whose value differs from the stored run's config (a JSON dict).
  A field the stored config lacks (written by an older version) counts with
  its `ADDED_LATER` value, or is skipped. Paths compare with `~` expanded
  (a run recorded before that was done)."""
  requested = paths.expand_config(json.loads(config.to_json()))
  stored = paths.expand_config({**config_fields.ADDED_LATER, **stored})
  recipe, runtime = {}, {}
  for field, value in requested.items():
    if field in stored and stored[field] != value:
      kind = recipe if field in config_fields.RECIPE_FIELDS else runtime
      kind[field] = (stored[field], value)
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
    listed = describe_changes(recipe)
    restore = ' '.join(f'--config.{k}={_flag_value(a)}' for k, (a, _) in sorted(recipe.items()))
    hint = ''
    if {'num_epochs', 'num_train_steps'} & set(recipe):
      hint = (' To train longer, start a new workdir from this one: '
              f'--config.init_from={workdir}.')
    raise errors.UserError(
        f'{workdir} holds a run with a different recipe ({listed}); to resume it, '
        f'drop --config (python -m resnet_jax.main --workdir {workdir} takes the '
        f"run's own recipe) or add {restore}; for the new recipe pass a new "
        '--workdir.' + hint)
  return runtime


def describe_changes(changes: dict) -> str:
  """{field: (stored, requested)} as `a 1 -> 2; b 'x' -> 'y'`, sorted by field."""
  return '; '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in sorted(changes.items()))


def _flag_value(value) -> str:
  """`value` as a --config.FIELD= command-line value."""
  if isinstance(value, (list, tuple)):
    return '"(' + ', '.join(map(str, value)) + (',)"' if len(value) == 1 else ')"')
  return "''" if value == '' else str(value)


def _validate_regularisers(config: ml_collections.ConfigDict) -> None:
  """The fields beyond the paper recipe: schedules, augmentations, EMA."""
  def bad(field, problem):
    return errors.UserError(f'{field} {problem}, got {config[field]!r}; set '
                            f'--config.{field}')
  if config.lr_schedule not in ('piecewise', 'cosine', 'triangular'):
    raise bad('lr_schedule', "must be 'piecewise', 'cosine' or 'triangular'")
  if config.augment_policy not in augmentations.POLICIES:
    raise bad('augment_policy', "must be '' (none) or 'trivialaugment'")
  if not isinstance(config.validation_size, int) or config.validation_size < 0:
    raise bad('validation_size', 'must be a whole number of images, 0 for none')
  _validate_image_size(config)
  if (not isinstance(config.cutout_size, int)
      or not 0 <= config.cutout_size <= IMAGE_SIZE):
    raise bad('cutout_size', f'must be an integer from 0 (off) to the image size '
              f'{IMAGE_SIZE}')
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if not config[field] >= 0:
      raise bad(field, 'must be 0 (off) or positive')
  if config.mixup_alpha > 0 and config.cutmix_alpha > 0:
    raise errors.UserError(
        f'mixup_alpha {config.mixup_alpha} and cutmix_alpha {config.cutmix_alpha} are '
        'both on, which this version does not combine; set one of them to 0')
  if not 0 <= config.label_smoothing < 1:
    raise bad('label_smoothing', 'must be in [0, 1), 0 for none')
  if not (config.ema_decay == 0 or 0 < config.ema_decay < 1):
    raise bad('ema_decay', 'must be in (0, 1), or 0 for no moving average')
  if config.lr_schedule == 'cosine' and config.warmup_steps < 0:
    raise bad('warmup_steps', 'must not be negative')
  _validate_optimizer(config, bad)


def _validate_optimizer(config: ml_collections.ConfigDict, bad) -> None:
  """The ImageNet recipes' fields: scaling, warm-up in epochs, LARS, BN groups."""
  choices = {'warmup_shape': ('constant', 'linear'),
             'weight_decay_on': ('kernels', 'all', 'ffcv'),
             'optimizer': ('sgd', 'lars'),
             'file_order': ('index_shuffle', 'permutation')}
  for field, allowed in choices.items():
    if config[field] not in allowed:
      raise bad(field, 'must be ' + ', '.join(repr(a) for a in allowed[:-1])
                + f' or {allowed[-1]!r}')
  if not isinstance(config.lr_scale_batch, int) or config.lr_scale_batch < 0:
    raise bad('lr_scale_batch', 'must be 0 (off) or a batch size')
  if not config.warmup_epochs >= 0:
    raise bad('warmup_epochs', 'must be 0 (off) or positive')
  if config.warmup_epochs > 0 and config.warmup_steps > 0:
    raise errors.UserError(
        f'warmup_steps {config.warmup_steps} and warmup_epochs {config.warmup_epochs} '
        'both set the warm-up; set one of them to 0')
  if not (isinstance(config.lr_peak_epoch, (int, float)) and config.lr_peak_epoch >= 0):
    raise bad('lr_peak_epoch', 'must be 0 or a positive number of epochs')
  if config.lr_schedule == 'triangular':
    for field in ('warmup_steps', 'warmup_epochs'):
      if config[field] != 0:
        raise errors.UserError(
            f"{field} {config[field]} sets a warm-up, which lr_schedule 'triangular' "
            f'does not have (it rises to the peak at lr_peak_epoch '
            f'{config.lr_peak_epoch}); set --config.{field}=0')
    if config.num_train_steps <= 0 and not config.lr_peak_epoch < config.num_epochs:
      raise errors.UserError(
          f'lr_peak_epoch {config.lr_peak_epoch} is not before the end of the run '
          f'(num_epochs {config.num_epochs}); set --config.lr_peak_epoch lower')
  if not config.lars_trust > 0:
    raise bad('lars_trust', 'must be positive')
  n = config.bn_group_size
  if isinstance(n, bool) or n < 0 or (n and config.batch_size % n):
    raise bad('bn_group_size', f'must be 0 or divide batch_size {config.batch_size}')


def _validate_image_size(config: ml_collections.ConfigDict) -> None:
  """image_size > 0 reads an image folder's files: the augmentations of the
  in-memory host pipeline are not drawn there."""
  size = config.image_size
  if not isinstance(size, int) or not (size == 0 or 8 <= size <= 1024):
    raise errors.UserError(f'image_size must be 0 (the in-memory 32x32 pipelines) or '
                           f'8..1024 pixels, got {size!r}; set --config.image_size')
  if not 0 < config.crop_min_area <= 1:
    raise errors.UserError(f'crop_min_area must be in (0, 1], got '
                           f'{config.crop_min_area!r}; set --config.crop_min_area')
  for field in ('final_image_size', 'eval_image_size'):
    value = config[field]
    if not isinstance(value, int) or not (value == 0 or 8 <= value <= 1024):
      raise errors.UserError(f'{field} must be 0 or 8..1024 pixels, got {value!r}; set '
                             f'--config.{field}')
    if value and not size:
      raise errors.UserError(f'{field} {value} needs --config.image_size (the images '
                             'read from files); set it, or set this to 0')
  start, end = config.resize_start_epoch, config.resize_end_epoch
  if config.final_image_size and not 0 <= start <= end:
    raise errors.UserError(f'resize_start_epoch {start} and resize_end_epoch {end} must '
                           'satisfy 0 <= start <= end; set --config.resize_start_epoch '
                           'and --config.resize_end_epoch')
  if not size:
    return
  for field, off in (('augment_policy', ''), ('cutout_size', 0), ('mixup_alpha', 0.0),
                     ('cutmix_alpha', 0.0)):
    if config[field] != off:
      raise errors.UserError(
          f'{field} {config[field]!r} is drawn by the in-memory pipelines, not with '
          f'image_size {size}; set --config.{field}={off!r} or --config.image_size=0')
  if config.input_pipeline != 'auto':
    raise errors.UserError(
        f'input_pipeline {config.input_pipeline!r} is for the in-memory pipelines; '
        f'with image_size {size} batches are decoded from the files: set '
        '--config.input_pipeline=auto')


# The most steps one call may run: the metrics of a call, and on the host
# pipeline its stacked batches, are held on the device.
MAX_STEPS_PER_CALL = 1024


def _validate_runtime(config: ml_collections.ConfigDict) -> None:
  """How batches are made and fed (the numbers do not depend on these,
  except the pipeline kind, which `run_setup.resolve_pipeline` checks)."""
  if config.input_pipeline not in ('auto', 'device', 'host'):
    raise errors.UserError(f"input_pipeline must be 'auto', 'device' or 'host', got "
                           f'{config.input_pipeline!r}; set --config.input_pipeline')
  k = config.steps_per_call
  if not isinstance(k, int) or not (k == -1 or 1 <= k <= MAX_STEPS_PER_CALL):
    raise errors.UserError(f'steps_per_call must be -1 (auto) or 1..{MAX_STEPS_PER_CALL}, '
                           f'got {k!r}; set --config.steps_per_call')
  if not isinstance(config.input_workers, int) or not (
      config.input_workers == -1 or config.input_workers >= 1):
    raise errors.UserError(f'input_workers must be -1 (one per core) or positive, got '
                           f'{config.input_workers!r}; set --config.input_workers')


# CIFAR and the image-folder datasets are 32x32.
IMAGE_SIZE = 32


def validate(config: ml_collections.ConfigDict) -> datasets.Source:
  """Checks every field; reads no images and writes nothing.

  Returns:
    The dataset the config names.

  Raises:
    errors.UserError: naming the first bad field and its fix.
  """
  unknown = sorted(set(config.keys()) - set(config_fields.FIELDS))
  if unknown:
    raise errors.UserError(f'config fields {unknown} are not known to this version; '
                           'remove them or update configs/')
  if config.model not in models.MODELS:
    raise errors.UserError(f'unknown model {config.model!r}; set --config.model '
                           f'to one of: {", ".join(models.MODELS)}')
  source = datasets.resolve(config.dataset, config.data_dir)
  if config.get('image_size', 0) and source.kind != 'image_folder':
    raise errors.UserError(
        f'image_size {config.image_size} reads an image folder\'s files, and '
        f'{config.dataset!r} is a tfds dataset; set --config.image_size=0, or '
        '--config.dataset to an image folder in --config.data_dir')
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
  _validate_regularisers(config)
  _validate_runtime(config)
  if config.store_conv_inputs not in ('auto', 'on', 'off'):
    raise errors.UserError(f'store_conv_inputs must be auto, on or off, got '
                           f'{config.store_conv_inputs!r}; set --config.store_conv_inputs')
  if config.cpu_conv not in ('auto', 'off'):
    raise errors.UserError(f'cpu_conv must be auto or off, got {config.cpu_conv!r}; '
                           'set --config.cpu_conv')
  if config.init_from and not os.path.exists(config.init_from):
    raise errors.UserError(f'init_from {config.init_from} does not exist; pass a '
                           'resnet_jax workdir, one of its checkpoints '
                           '(WORKDIR/checkpoints/STEP), or a .pth file')
  if config.init_from and os.path.isdir(config.init_from):
    # A resnet_jax run (its model is checked when it is read) or one of its
    # checkpoints.
    path = os.path.normpath(config.init_from)
    steps = os.path.join(path, 'checkpoints')
    one_step = (os.path.basename(path).isdigit() and
                os.path.basename(os.path.dirname(path)) == 'checkpoints')
    if not one_step and not (os.path.isdir(steps) and
                             any(n.isdigit() for n in os.listdir(steps))):
      raise errors.UserError(
          f'init_from {config.init_from} holds no checkpoint (nothing in '
          f'{steps}); pass the workdir of a run that saved one, or one of its '
          'checkpoints (WORKDIR/checkpoints/STEP)')
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
  _check_size_for_model(config)
  return source


def _check_size_for_model(config: ml_collections.ConfigDict) -> None:
  """Refuses images smaller than the model's downsampling: its last stages
  would see maps under a pixel (all padding), and it would still train."""
  least = models.downsampling(config.model, config.stem)
  for field in ('image_size', 'final_image_size', 'eval_image_size'):
    size = config.get(field, 0)
    if size and size < least:
      stem = f' with the {config.stem} stem' if config.model in models.IMAGENET_FAMILY else ''
      raise errors.UserError(
          f'{field} {size} is too small for {config.model}{stem}, which downsamples by '
          f'{least} (its last stage would see maps under 1 pixel); set '
          f'--config.{field} to at least {least}')
