"""Checks a config before anything is compiled, downloaded or written."""

import json
import os

import ml_collections

from resnet_jax.data import augmentations
from resnet_jax.data import datasets
from resnet_jax import errors
from resnet_jax import models


# One line per config field: the public interface of a run (see --help).
FIELDS = {
    'model': 'network name: resnet20..1202, preact_resnet18/110/164/1001, '
             'resnet18..152, resnext29_8x64d/16x64d, wrn28_10, wrn16_8 (tiny, for tests: '
             'resnet8, wrn10_1)',
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
    'augment': 'pad 4 + random 32x32 crop + horizontal flip on training images '
               '(with image_size: random-resized crop + flip)',
    'image_size': '0 = the in-memory 32x32 pipelines; N > 0 = an image folder of any '
                  'size read from its files: training takes random-resized N x N crops, '
                  'evaluation resizes the shorter side to N/0.875 and centre-crops N '
                  '(224 for ImageNet)',
    'crop_min_area': 'with image_size: the smallest random-resized crop, as a fraction '
                     'of the image area (0.08: Inception, torchvision)',
    'final_image_size': 'progressive resizing (FFCV): the training size grows linearly '
                        'from image_size at resize_start_epoch to this at '
                        'resize_end_epoch, in steps of 32 pixels; 0 = off',
    'resize_start_epoch': 'progressive resizing: the epoch the growth starts',
    'resize_end_epoch': 'progressive resizing: the epoch final_image_size is reached',
    'eval_image_size': 'with image_size: the evaluation crop size; 0 = the last '
                       'training size',
    'validation_size': 'training images held out (chosen by seed) and evaluated during '
                       'training instead of the test split; 0 = none',
    'augment_policy': "'' or 'trivialaugment' (one random operation per training "
                      'image, after crop and flip)',
    'cutout_size': 'side of the square Cutout sets to the mean pixel; 0 = off',
    'mixup_alpha': 'mixup Beta(alpha, alpha) mixing weight; 0 = off',
    'cutmix_alpha': 'CutMix Beta(alpha, alpha) box area; 0 = off (not with mixup)',
    'label_smoothing': 'weight of the uniform distribution in the targets; 0 = off',
    'ema_decay': 'decay of the moving average of parameters and BatchNorm statistics, '
                 'evaluated beside the raw weights; 0 = off',
    'flip_tta': 'evaluation also averages the class probabilities of each image '
                'and its mirror image (reported beside the plain view)',
    'batch_size': 'global training batch, over all devices and processes',
    'eval_batch_size': 'global evaluation batch; the last batch is padded and masked',
    'num_epochs': 'run length in epochs (may be fractional), when num_train_steps is -1',
    'num_train_steps': 'run length in steps; -1 derives it from num_epochs',
    'learning_rate': 'peak learning rate (for a batch of lr_scale_batch when that is '
                     'set)',
    'lr_scale_batch': 'linear scaling rule (Goyal et al. 2017): the peak is '
                      'learning_rate x batch_size / lr_scale_batch (256 for ImageNet); '
                      '0 = learning_rate as given',
    'lr_schedule': "'piecewise' (lr_boundaries) or 'cosine' (linear warm-up over "
                   'warmup_steps, then cosine decay to 0)',
    'lr_boundaries': 'piecewise: fractions of the run where the learning rate is '
                     'multiplied',
    'lr_decay_factor': 'piecewise: the factor applied at each boundary',
    'warmup_steps': 'warm-up steps (0 = none): piecewise holds warmup_lr, cosine '
                    'rises linearly from warmup_lr to learning_rate',
    'warmup_epochs': 'warm-up length in epochs (any batch size); 0 = warmup_steps',
    'warmup_shape': "piecewise warm-up: 'constant' (holds warmup_lr) or 'linear' "
                    '(warmup_lr rising to the peak, Goyal et al. 2017); cosine is linear',
    'warmup_lr': 'learning rate during (piecewise) or at the start of (cosine) warm-up',
    'momentum': 'SGD momentum',
    'nesterov': 'Nesterov momentum',
    'weight_decay': 'L2 coefficient added to the gradient (coupled, before momentum)',
    'weight_decay_on': "'kernels' (conv and dense kernels: BatchNorm and biases left "
                       "out) or 'all' parameters",
    'optimizer': "'sgd' (momentum) or 'lars' (optax's LARS, for batches of 8k+; "
                 'weight_decay_on also masks its trust ratio)',
    'lars_trust': "LARS trust coefficient (the ratio's eta)",
    'parallelism': "'jit' (one program over a device mesh) or 'pmap'",
    'num_devices': 'devices used per process; -1 = all',
    'input_pipeline': "'auto', 'device' (the split lives on the devices; batches are "
                      "made inside the compiled step) or 'host' (batches made by host "
                      "workers); auto = device unless TrivialAugment is on or the split "
                      "does not fit, and a resumed run keeps its own",
    'steps_per_call': 'training steps per compiled call; -1 = the largest divisor of '
                      'log_every_steps up to 32; any value gives the same numbers',
    'input_workers': 'host pipeline: processes building batches; -1 = one per core '
                     'less one with TrivialAugment, else 1. With image_size: grain '
                     'worker processes decoding files, the cores shared among them as '
                     'threads; -1 = threads in the training process up to 8 cores, '
                     'else one process per 4 cores',
    'seed': 'initialisation, example order, augmentation and dropout seed',
    'log_every_steps': 'steps between training-metric lines',
    'checkpoint_every_steps': 'steps between checkpoints (also at evals and the end)',
    'eval_every_epochs': 'epochs between evaluations on the whole test split (the '
                         'validation split when validation_size > 0)',
    'keep_checkpoints': 'how many recent checkpoints to keep (the best is kept too)',
    'eval_step': 'checkpoint step that --mode=eval restores; -1 = latest',
}


# Resuming a workdir with a different value of one of these would blend two
# recipes: refused. (store_conv_inputs is bitwise neutral, tested.)
RECIPE_FIELDS = (
    'model', 'stem', 'shortcut', 'zero_init_residual', 'dropout_rate', 'bn_momentum',
    'bn_epsilon', 'half_precision', 'init_from', 'dataset', 'augment', 'image_size',
    'crop_min_area', 'final_image_size', 'resize_start_epoch', 'resize_end_epoch',
    'batch_size', 'lr_scale_batch', 'warmup_epochs', 'warmup_shape', 'weight_decay_on',
    'optimizer', 'lars_trust',
    'validation_size', 'augment_policy', 'cutout_size', 'mixup_alpha', 'cutmix_alpha',
    'label_smoothing', 'ema_decay', 'num_epochs', 'num_train_steps', 'learning_rate',
    'lr_schedule', 'lr_boundaries', 'lr_decay_factor', 'warmup_steps', 'warmup_lr',
    'momentum', 'nesterov', 'weight_decay', 'seed')
# These change where and how often things happen, never the training numbers
# (device count and jit/pmap: only by float rounding; flip_tta adds an
# evaluation view): a resume may change them.
RUNTIME_FIELDS = (
    'store_conv_inputs', 'data_dir', 'eval_batch_size', 'parallelism', 'num_devices',
    'input_pipeline', 'steps_per_call', 'input_workers',
    'log_every_steps', 'checkpoint_every_steps', 'eval_every_epochs',
    'keep_checkpoints', 'eval_step', 'flip_tta', 'eval_image_size')


# Fields added after runs existed, with the value those runs had implicitly.
ADDED_LATER = {'validation_size': 0, 'augment_policy': '', 'cutout_size': 0,
               'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, 'label_smoothing': 0.0,
               'ema_decay': 0.0, 'lr_schedule': 'piecewise', 'flip_tta': False,
               'image_size': 0, 'crop_min_area': 0.08, 'final_image_size': 0,
               'resize_start_epoch': 0.0, 'resize_end_epoch': 0.0, 'eval_image_size': 0,
               'lr_scale_batch': 0, 'warmup_epochs': 0.0, 'warmup_shape': 'constant',
               'weight_decay_on': 'kernels', 'optimizer': 'sgd', 'lars_trust': 0.001}


def assign(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets a field from a JSON value: JSON has no tuples, so a list becomes
  one where the field is a tuple (lr_boundaries)."""
  config[field] = tuple(value) if isinstance(config[field], tuple) else value


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> tuple:
  """(recipe changes, runtime changes): {field: (stored, requested)} of the
  fields whose value differs from the stored run's config (a JSON dict).
  A field the stored config lacks (written by an older version) counts with
  its `ADDED_LATER` value, or is skipped."""
  requested = json.loads(config.to_json())
  stored = {**ADDED_LATER, **stored}
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
  if config.lr_schedule not in ('piecewise', 'cosine'):
    raise bad('lr_schedule', "must be 'piecewise' or 'cosine'")
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
  """The ImageNet recipes' fields: scaling, warm-up in epochs, LARS."""
  choices = {'warmup_shape': ('constant', 'linear'), 'weight_decay_on': ('kernels', 'all'),
             'optimizer': ('sgd', 'lars')}
  for field, allowed in choices.items():
    if config[field] not in allowed:
      raise bad(field, 'must be ' + ' or '.join(repr(a) for a in allowed))
  if not isinstance(config.lr_scale_batch, int) or config.lr_scale_batch < 0:
    raise bad('lr_scale_batch', 'must be 0 (off) or a batch size')
  if not config.warmup_epochs >= 0:
    raise bad('warmup_epochs', 'must be 0 (off) or positive')
  if config.warmup_epochs > 0 and config.warmup_steps > 0:
    raise errors.UserError(
        f'warmup_steps {config.warmup_steps} and warmup_epochs {config.warmup_epochs} '
        'both set the warm-up; set one of them to 0')
  if not config.lars_trust > 0:
    raise bad('lars_trust', 'must be positive')


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
  unknown = sorted(set(config.keys()) - set(FIELDS))
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
  return source
