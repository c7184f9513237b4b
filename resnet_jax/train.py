"""Training and evaluation: state, steps, and the loop of a run.

Data flows one way: config -> input pipeline -> model -> train step ->
checkpoints and metrics. The steps are pure functions compiled by
`parallel.DataParallel`, so the jit and pmap strategies share everything but
the compiled step and the placement of state.
"""

import functools
import json
import os
import signal
import time
from typing import Any, Callable, Optional

from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import augmentations
from resnet_jax import checkpointing
from resnet_jax import config_validation
from resnet_jax import convert
from resnet_jax import datasets
from resnet_jax import errors
from resnet_jax import input_pipeline
from resnet_jax import metrics_io
from resnet_jax import models
from resnet_jax import parallel
from resnet_jax import plots
from resnet_jax import preemption
from resnet_jax import progress
from resnet_jax import run_record
from resnet_jax import summary
from resnet_jax import workdir_lock
from resnet_jax.logs import log


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm running statistics."""
  batch_stats: Any = None


class EmaTrainState(TrainState):
  """A TrainState that also keeps, with `ema_decay`, the exponential moving
  average of the parameters and BatchNorm statistics ({'params',
  'batch_stats'}). A subclass, so runs without it keep the checkpoint layout
  of `TrainState` (and checkpoints written before it existed restore)."""
  ema: Any = None


def ema_of(state: TrainState) -> Optional[dict]:
  """The moving-average weights of `state`, None when it keeps none."""
  return getattr(state, 'ema', None)


# ----------------------------------------------------------------------------
# Model, schedule, optimizer, state.
# ----------------------------------------------------------------------------

def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 axis_name: Optional[str] = None) -> models.ResNet:
  """The config's model, for `num_classes` outputs."""
  return models.create_model(
      config.model, num_classes, stem=config.stem,
      shortcut=config.shortcut or None, dropout_rate=config.dropout_rate,
      zero_init_residual=config.zero_init_residual,
      bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
      dtype=compute_dtype(config), axis_name=axis_name,
      store_conv_inputs=store_conv_inputs(config))


def store_conv_inputs(config: ml_collections.ConfigDict) -> bool:
  """Resolves `store_conv_inputs`: 'auto' turns it on where it was measured
  to help (XLA:CPU, see BENCHMARKS.md) and leaves other backends alone."""
  # .get: configs saved by checkpoints before this field existed lack it.
  value = config.get('store_conv_inputs', 'auto')
  if value == 'auto':
    return jax.default_backend() == 'cpu'
  return value == 'on'


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`num_train_steps`, or `num_epochs` worth of steps when it is -1."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, int(round(config.num_epochs * num_train_examples / config.batch_size)))


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            num_steps: int) -> optax.Schedule:
  """The learning rate of each (0-based) step.

  'piecewise' (default): constant, multiplied by `lr_decay_factor` at each of
  `lr_boundaries` (fractions of the run). With the defaults and 64k steps it is
  0.1 for steps [0, 32000), 0.01 for [32000, 48000) and 0.001 from 48000, as in
  He et al. 2015. An optional constant warmup (the paper's 0.01 for ResNet-110)
  replaces the first `warmup_steps` values.

  'cosine': linear from `warmup_lr` to `learning_rate` over `warmup_steps`,
  then half a cosine down to 0 at the end of the run (Loshchilov & Hutter 2017,
  without restarts; Goyal et al. 2017's gradual warmup).
  """
  if config.get('lr_schedule', 'piecewise') == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=config.warmup_lr if config.warmup_steps > 0 else config.learning_rate,
        peak_value=config.learning_rate, warmup_steps=max(0, config.warmup_steps),
        # (Restoring for inference builds a schedule for 1 step.)
        decay_steps=max(num_steps, config.warmup_steps + 1), end_value=0.0)
  boundaries = {int(round(f * num_steps)): config.lr_decay_factor
                for f in config.lr_boundaries}
  schedule = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  if config.warmup_steps <= 0:
    return schedule
  # A constant warmup that keeps the boundaries at their absolute steps
  # (optax.join_schedules would shift the later schedule).
  return lambda step: jnp.where(step < config.warmup_steps, config.warmup_lr,
                                schedule(step))


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay on conv and dense kernels.

  The decay is added to the gradient before momentum, as in the paper's
  Caffe/Torch training (`g + wd * w`), not decoupled as in AdamW. BatchNorm
  parameters and biases are not decayed.
  """
  kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=kernels),
      optax.sgd(learning_rate_fn, momentum=config.momentum or None,
                nesterov=config.nesterov))


def create_train_state(rng: jax.Array, model: models.ResNet,
                       tx: optax.GradientTransformation,
                       ema: bool = False) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state (and
  their moving average, starting at the initial values, with `ema`)."""
  variables = model.init(rng, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
  fields = dict(apply_fn=model.apply, params=variables['params'],
                batch_stats=variables['batch_stats'], tx=tx)
  if ema:
    return EmaTrainState.create(**fields, ema=dict(variables))
  return TrainState.create(**fields)


def ema_variables(state: TrainState) -> TrainState:
  """`state` evaluating with its moving-average weights."""
  return state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])


def _ema_update(ema: dict, params, batch_stats, step, decay: float) -> dict:
  """One moving-average step. The decay ramps up as (1 + t) / (10 + t) to
  `decay` (the warm-up of TensorFlow's ExponentialMovingAverage with
  num_updates), so short runs do not average in the random initialisation."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  new = {'params': params, 'batch_stats': batch_stats}
  return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x, ema, new)


# ----------------------------------------------------------------------------
# Steps. Pure functions of (state, batch); `axis_name` is set under pmap only.
# ----------------------------------------------------------------------------

def train_step(state: TrainState, batch: dict, *, mean_std: tuple, dtype: Any,
               seed: int, label_smoothing: float = 0.0, ema_decay: float = 0.0,
               axis_name: Optional[str] = None):
  """One SGD step on a batch of uint8 images; returns (state, metrics).

  The batch's optional keys (`input_pipeline.TrainStream.batch`) switch on
  mixup ('mix_image'), mixed labels ('mix_label', 'mix_lam') and Cutout
  ('erase'); the compiled step is specialised to the keys it is given.
  """
  images = train_images(batch, mean_std, dtype)
  # Dropout keys follow the step, so a resumed run draws the same masks.
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    return _loss(logits, batch, label_smoothing), (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = {'train_loss': loss, 'train_accuracy': _accuracy(logits, batch)}
  if axis_name is not None:
    # Equal shards per replica, so the mean of means is the global mean.
    grads, metrics = lax.pmean((grads, metrics), axis_name)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    state = state.replace(ema=_ema_update(state.ema, state.params, state.batch_stats,
                                          state.step, ema_decay))
  return state, metrics


def train_images(batch: dict, mean_std: tuple, dtype: Any) -> jnp.ndarray:
  """The network's input: normalised, mixup-blended, Cutout-erased."""
  images = input_pipeline.normalize(batch['image'], mean_std, dtype)
  if 'mix_image' in batch:
    lam = batch['mix_lam'].astype(dtype)[:, None, None, None]
    images = lam * images + (1 - lam) * input_pipeline.normalize(
        batch['mix_image'], mean_std, dtype)
  if 'erase' in batch:  # Cutout: 0 after normalisation is the mean pixel.
    images = jnp.where(batch['erase'][..., None], jnp.zeros((), dtype), images)
  return images


def _loss(logits, batch: dict, label_smoothing: float):
  """Mean cross-entropy against the (mixed, smoothed) targets."""
  if 'mix_label' not in batch and not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(batch['label'], num_classes)
  if 'mix_label' in batch:
    lam = batch['mix_lam'][:, None]
    targets = lam * targets + (1 - lam) * jax.nn.one_hot(batch['mix_label'], num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def _accuracy(logits, batch: dict):
  """Top-1 accuracy; with mixed labels each counts by its weight."""
  pred = jnp.argmax(logits, -1)
  correct = (pred == batch['label']).astype(jnp.float32)
  if 'mix_label' in batch:
    lam = batch['mix_lam']
    correct = lam * correct + (1 - lam) * (pred == batch['mix_label'])
  return jnp.mean(correct)


def eval_step(state: TrainState, batch: dict, *, mean_std: tuple, dtype: Any,
              num_classes: int, flip_tta: bool = False,
              axis_name: Optional[str] = None) -> dict:
  """Sums over the real (unmasked) examples of a padded eval batch.

  Returns:
    {'': sums of the plain view}, and with `flip_tta` also {'flip_': sums of
    the mean of the image's and its mirror's class probabilities}.
  """
  images = input_pipeline.normalize(batch['image'], mean_std, dtype)
  apply = lambda x: jax.nn.log_softmax(state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats}, x, train=False))
  log_probs = apply(images)
  views = {'': log_probs}
  if flip_tta:
    mirrored = apply(images[:, :, ::-1])
    views['flip_'] = jnp.logaddexp(log_probs, mirrored) - jnp.log(2.0)
  sums = {view: _eval_sums(lp, batch['label'], batch['mask'], num_classes)
          for view, lp in views.items()}
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums


def _eval_sums(log_probs, labels, mask, num_classes: int) -> dict:
  mask = mask.astype(jnp.float32)
  loss = -jnp.take_along_axis(log_probs, labels[:, None], -1)[:, 0]
  top5 = jnp.any(lax.top_k(log_probs, min(5, num_classes))[1] == labels[:, None], -1)
  pred = jnp.argmax(log_probs, -1)
  confusion = jnp.einsum('n,ni,nj->ij', mask, jax.nn.one_hot(labels, num_classes),
                         jax.nn.one_hot(pred, num_classes))
  return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum((pred == labels) * mask),
          'top5': jnp.sum(top5 * mask), 'count': jnp.sum(mask), 'confusion': confusion}


def evaluate(dp: parallel.DataParallel, p_eval_step: Callable, state: TrainState,
             split: input_pipeline.Split, config: ml_collections.ConfigDict,
             split_name: str = 'test') -> dict:
  """Evaluates on every example of `split` exactly once, with the raw weights
  and, when the state has them, the moving-average ones.

  Returns:
    `{weights}{view}{split}_{metric}`: weights '' (raw) or 'ema_', view ''
    or 'flip_' (flip test-time augmentation), split 'eval' (test) or 'val'
    (validation), metric loss, accuracy, top5_accuracy (fractions); also
    `{split}_examples` and the raw plain confusion matrix (rows: true class,
    columns: predicted).
  """
  prefix = SPLIT_PREFIX[split_name]
  variants = {'': state}
  if ema_of(state) is not None:
    variants['ema_'] = ema_variables(state)
  result = {}
  for weights, s in variants.items():
    totals = None
    for batch in input_pipeline.eval_batches(split, config.eval_batch_size,
                                             jax.process_index(), jax.process_count()):
      sums = p_eval_step(s, dp.put_batch(batch))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    for view, t in dp.fetch(totals).items():
      name, n = weights + view + prefix, float(t['count'])
      result.update({f'{name}_loss': float(t['loss']) / n,
                     f'{name}_accuracy': float(t['correct']) / n,
                     f'{name}_top5_accuracy': float(t['top5']) / n})
      if not weights and not view:
        result[f'{prefix}_examples'] = int(round(n))
        result['confusion'] = np.rint(t['confusion']).astype(np.int64)
  return result


# Metric-name prefixes of the evaluated splits.
SPLIT_PREFIX = {'test': 'eval', 'validation': 'val'}


# ----------------------------------------------------------------------------
# A run.
# ----------------------------------------------------------------------------

def preflight(config: ml_collections.ConfigDict):
  """Checks the config against itself, the data and the devices, before any
  work; reads no images and writes nothing.

  Returns:
    (data parallelism, dataset source).
  """
  source = config_validation.validate(config)
  dp = parallel.DataParallel(config.parallelism, config.num_devices)
  dp.check_batch(config.batch_size, 'batch_size')
  dp.check_batch(config.eval_batch_size, 'eval_batch_size')
  return dp, source


def compile_steps(dp: parallel.DataParallel, config: ml_collections.ConfigDict,
                  num_classes: int, mean_std: tuple):
  """The compiled (train_step, eval_step) of `config` under `dp`."""
  dtype = compute_dtype(config)
  mean_std = tuple(tuple(v) for v in mean_std)
  p_train = dp.compile(functools.partial(
      train_step, mean_std=mean_std, dtype=dtype, seed=config.seed,
      label_smoothing=config.get('label_smoothing', 0.0),
      ema_decay=config.get('ema_decay', 0.0), axis_name=dp.axis_name),
                       compiler_options=_train_compiler_options(config))
  p_eval = dp.compile(functools.partial(
      eval_step, mean_std=mean_std, dtype=dtype, num_classes=num_classes,
      flip_tta=config.get('flip_tta', False), axis_name=dp.axis_name),
                      donate_state=False)
  return p_train, p_eval


def _train_compiler_options(config: ml_collections.ConfigDict) -> Optional[dict]:
  """XLA options of the train step.

  XLA:CPU in JAX 0.10 expands optimization barriers before fusion, which
  undoes `store_conv_inputs` (ResNet-20: 1.0x with the pass, 1.27x without,
  benchmarks/store_conv_inputs.py); JAX 0.12 expands them after fusion, where
  skipping the pass is harmless. `jax.pmap` takes no options.
  """
  if store_conv_inputs(config) and jax.default_backend() == 'cpu':
    return models.KEEP_BARRIERS_OPTIONS
  return None


def abstract_state(init_fn: Callable[[], TrainState], dp: parallel.DataParallel):
  """Shapes, dtypes and replicated shardings of the state, for restoring."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dp.replicated),
      jax.eval_shape(init_fn))


class _Run:
  """What train and eval modes share: validated config, data, model, steps.

  Constructing it reads (config, checkpoints, data) and writes nothing, so
  every refusal leaves the workdir as it was; `hold()` then takes the workdir.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               need_train: bool):
    self.config = config
    self.workdir = workdir
    self.dp, self.source = preflight(config)
    workdir_lock.check_free(workdir)  # Refuse a busy workdir before reading data.
    self.ckpt = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                          keep=config.keep_checkpoints)
    stored = self.ckpt.read_meta()
    checkpointing.check_compatible(self.ckpt, stored, config, self.source.num_classes)
    stored_config = json.loads(stored['config']) if stored else None
    # Resuming must not blend two recipes (eval needs only the model).
    self.runtime_changes = (config_validation.check_resume(stored_config, config, workdir)
                            if stored and need_train else {})
    # The checkpoints' layout follows the run that wrote them.
    self.has_ema = (stored_config or config).get('ema_decay', 0.0) > 0
    self.test = datasets.load_split(self.source, 'test')
    self.train = datasets.load_split(self.source, 'train') if need_train else None
    self.validation = None
    if need_train and config.validation_size:
      self.train, self.validation = datasets.hold_out(
          self.train, config.validation_size, config.seed)
    self.num_classes = self.source.num_classes
    self.mean_std = _mean_std(stored, self.source, self.train)
    self.model = create_model(config, self.num_classes, self.dp.axis_name)
    self.num_steps = total_steps(config, len(self.train) if need_train else 1)
    if need_train and config.warmup_steps >= self.num_steps:
      raise errors.UserError(f'warmup_steps {config.warmup_steps} is not shorter than '
                             f'the run ({self.num_steps} steps); set '
                             '--config.warmup_steps lower')
    self.lr_fn = create_learning_rate_fn(config, self.num_steps)
    self.tx = create_optimizer(config, self.lr_fn)
    self.p_train_step, self.p_eval_step = compile_steps(
        self.dp, config, self.num_classes, self.mean_std)
    self.lock = None

  def hold(self, write_checkpoints: bool) -> None:
    """Takes the workdir (refusing if another run holds it) and, for
    training, opens the checkpoints for writing."""
    self.lock = workdir_lock.Lock(self.workdir)
    if write_checkpoints:
      self.ckpt.open_for_writing()

  def release(self) -> None:
    self.ckpt.close()
    if self.lock:
      self.lock.release()

  def init_state(self) -> TrainState:
    return create_train_state(jax.random.key(self.config.seed), self.model, self.tx,
                              ema=self.has_ema)

  def eval_split(self) -> tuple:
    """(name, split) that training evaluates: the validation split when one
    is held out (the test split is then left for one final look)."""
    if self.validation is not None:
      return 'validation', self.validation
    return 'test', self.test

  def restore(self, step: Optional[int] = None):
    """The checkpointed state at `step` (default latest), placed for the step."""
    state = self.ckpt.restore(abstract_state(self.init_state, self.dp), step)
    return self.dp.place_state(state)

  def meta(self) -> dict:
    return {'model': self.config.model, 'dataset': self.config.dataset,
            'num_classes': self.num_classes, 'config': self.config.to_json(),
            'class_names': list(self.test.class_names),
            'mean': list(self.mean_std[0]), 'std': list(self.mean_std[1])}


def _mean_std(meta: Optional[dict], source: datasets.Source, train_split) -> tuple:
  """The normalisation a run uses: its checkpoints' (so a resumed run, eval
  and predict use what training used), else the dataset's."""
  if meta:
    return stored_mean_std(meta, source.name)
  if train_split is None and source.kind == 'image_folder':
    train_split = datasets.load_split(source, 'train')
  return datasets.normalization(source, train_split)


def stored_mean_std(meta: dict, dataset: str) -> tuple:
  """(mean, std) of a checkpoint's metadata; checkpoints written before
  image-folder datasets existed are tfds CIFAR runs with the published values."""
  if 'mean' in meta:
    return tuple(meta['mean']), tuple(meta['std'])
  return datasets.MEAN_STD[dataset]


def _report_resume(run: _Run, devices: dict) -> None:
  """One line for what a resume changes: runtime fields and devices."""
  if run.runtime_changes:
    log.info('Resuming with changed settings that leave the numbers alone: %s',
             ', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b)
                       in sorted(run.runtime_changes.items())))
  record = run_record.read(run.workdir) if jax.process_index() == 0 else None
  before = record['sessions'][-1] if record and record.get('sessions') else None
  if before and (before.get('device_count'), before.get('parallelism')) != (
      devices['device_count'], devices['parallelism']):
    log.info('Resuming on %d device(s) with %s; the checkpoint was written on %s '
             'with %s. The numbers differ only by float rounding.',
             devices['device_count'], devices['parallelism'],
             before.get('device_count'), before.get('parallelism'))


def init_from_run(state: TrainState, config: ml_collections.ConfigDict,
                  num_classes: int) -> TrainState:
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
    source, _, variables, _, restored, _, _ = load_for_inference(path, step)
  except errors.UserError as e:
    raise errors.UserError(f'init_from {config.init_from}: {e}') from e
  if source.model != config.model:
    raise errors.UserError(f'init_from {config.init_from} is a {source.model} run but '
                           f'the config asks for {config.model}; set '
                           f'--config.model={source.model}')
  log.info('Initialised %s from step %d of %s', config.model, restored, path)
  return _start_from(state, variables, config, num_classes)


def init_from_torch(state: TrainState, config: ml_collections.ConfigDict,
                    num_classes: int) -> TrainState:
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


def _start_from(state: TrainState, variables: dict, config: ml_collections.ConfigDict,
                num_classes: int) -> TrainState:
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
  if ema_of(state) is not None:  # The average starts at the loaded weights.
    state = state.replace(ema={'params': params, 'batch_stats': variables['batch_stats']})
  return state


def _eval_steps(num_steps: int, batch: int, num_examples: int, every: float) -> set:
  """Steps after which a (possibly fractional) epoch multiple is completed."""
  span = num_examples * every
  return {s for s in range(1, num_steps + 1)
          if (s * batch) // span > ((s - 1) * batch) // span} | {num_steps}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`), evaluating
  after every `eval_every_epochs` epochs and at the end.

  Returns:
    The last evaluation's metrics.
  """
  run = _Run(config, workdir, need_train=True)
  if run.ckpt.latest_step() == run.num_steps:
    return _finished(run)  # Nothing to do, nothing written.
  initial = None
  if config.init_from and run.ckpt.latest_step() is None:
    # Read (and maybe refused) before the workdir is touched.
    init = init_from_run if os.path.isdir(config.init_from) else init_from_torch
    initial = init(run.init_state(), config, run.num_classes)
  run.hold(write_checkpoints=True)
  outcome = {}
  try:
    result = _train(run, initial)
    key, value = headline(result)
    outcome.update({'final_step': run.num_steps, key: value})
    return result
  except errors.Stopped as e:
    outcome['stopped'] = str(e)
    raise
  finally:
    run.release()
    if jax.process_index() == 0:
      run_record.end_session(workdir, outcome)


def _finished(run: _Run) -> dict:
  """A complete run started again: says so and returns its last evaluation."""
  evals = [l for l in metrics_io.read_lines(run.workdir) if headline(l)]
  last = evals[-1] if evals else {}
  accuracy = 'no evaluation recorded'
  if last:
    key, value = headline(last)
    split = 'validation' if key.startswith('val') else 'test'
    accuracy = f"{split} accuracy {100 * value:.2f}% at step {last['step']}"
  log.info('%s holds a complete run (step %d of %d, %s); nothing to do. '
           '--mode=eval evaluates it; a new --workdir starts a new run.',
           run.workdir, run.num_steps, run.num_steps, accuracy)
  run.release()
  return {k: v for k, v in last.items() if k.startswith(('eval_', 'val_'))}


def headline(result: dict) -> Optional[tuple]:
  """(key, value) of the accuracy that ranks checkpoints and ends a run's
  summary: raw weights, plain view, the evaluated split; None if none."""
  for key in ('eval_accuracy', 'val_accuracy'):
    if key in result:
      return key, result[key]
  return None


def _devices(dp: parallel.DataParallel, config: ml_collections.ConfigDict) -> dict:
  device = dp.devices[0]
  return {'device_kind': device.device_kind, 'platform': device.platform,
          'device_count': len(dp.devices), 'process_count': jax.process_count(),
          'parallelism': config.parallelism}


def _train(run: _Run, initial: Optional[TrainState]) -> dict:
  """The loop of `train_and_evaluate`, on a held workdir."""
  config, workdir, dp, ckpt = run.config, run.workdir, run.dp, run.ckpt
  if ckpt.latest_step() is not None:
    state = run.restore()  # The newest intact checkpoint.
    start = ckpt.restored_step
    log.info('Resuming from the checkpoint at step %d in %s', start, ckpt.directory)
  else:
    start = 0
    state = dp.place_state(initial if initial is not None else run.init_state())
  devices = _devices(dp, config)
  if start:
    _report_resume(run, devices)
  if jax.process_index() == 0:
    run_record.start_session(workdir, json.loads(config.to_json()),
                             f'jax {jax.__version__}', {**devices, 'start_step': start},
                             changed={k: {'stored': a, 'now': b} for k, (a, b)
                                      in run.runtime_changes.items()})
    for line in summary.describe(run.model, config.model):
      log.info('%s', line)
  stream = input_pipeline.TrainStream(
      run.train, config.batch_size, config.seed, config.augment,
      jax.process_index(), jax.process_count(),
      augmentations.Options.from_config(config))
  split_name, eval_split = run.eval_split()
  eval_at = _eval_steps(run.num_steps, config.batch_size, len(run.train),
                        config.eval_every_epochs)
  log.info('Training %s on %s: %d steps of %d images (%.2f epochs) on %d %s '
           'device(s), %s', config.model, config.dataset, run.num_steps,
           config.batch_size, stream.epoch_at(run.num_steps), len(dp.devices),
           jax.devices()[0].platform, config.parallelism)
  bar = progress.Progress(run.num_steps, len(run.train) / config.batch_size, start,
                          enabled=None if jax.process_index() == 0 else False)
  writer = metrics_io.MetricsWriter(workdir, resume_step=start, progress=bar)
  pending, last_time, last_step, eval_seconds = [], time.perf_counter(), start, 0.0
  result = None
  batches = input_pipeline.prefetch(stream.batch, dp.put_batch,
                                    range(start, run.num_steps))
  try:
    with preemption.Guard(ckpt) as guard:
      for step, batch in zip(range(start, run.num_steps), batches):
        state, metrics = run.p_train_step(state, batch)
        pending.append(metrics)  # Read at log time: the host never waits per step.
        done = step + 1
        bar.step(done)
        stop = guard.should_stop(done)
        log_now = done % config.log_every_steps == 0 or done == run.num_steps
        eval_now = done in eval_at
        save_now = (done % config.checkpoint_every_steps == 0 or done == run.num_steps
                    or eval_now or stop)
        if log_now or save_now:
          # Never log or checkpoint past a diverged step.
          fetched = dp.fetch(pending)
          bad = metrics_io.first_nonfinite(range(last_step + 1, done + 1),
                                           [m['train_loss'] for m in fetched])
          if bad:
            raise errors.Stopped(
                f'training loss is {bad[1]} at step {bad[0]}; the last good '
                f'checkpoint (step {ckpt.latest_step()}) is kept. Lower '
                '--config.learning_rate or check the data, then start a new workdir '
                'or resume from it', exit_code=3)
        if log_now:
          logged = metrics_io.mean_metrics(fetched)
          now = time.perf_counter()
          logged['learning_rate'] = float(f'{float(run.lr_fn(step)):.6g}')
          logged['images_per_sec'] = ((done - last_step) * config.batch_size
                                      / (now - last_time - eval_seconds))
          logged['epoch'] = stream.epoch_at(done)
          writer.write(done, logged, total=run.num_steps)
          pending, last_time, last_step, eval_seconds = [], now, done, 0.0
        if eval_now:
          eval_start = time.perf_counter()
          result = evaluate(dp, run.p_eval_step, state, eval_split, config, split_name)
          writer.write(done, {**metrics_io.scalars(result),
                              'epoch': stream.epoch_at(done)}, total=run.num_steps)
          # Evaluation time is not billed to training speed.
          eval_seconds += time.perf_counter() - eval_start
        if save_now:
          ckpt.save(done, dp.canonical_state(state), run.meta(),
                    eval_accuracy=headline(result)[1] if eval_now else None)
        if stop:
          ckpt.wait()
          name = signal.Signals(guard.signum).name
          log.info('Received %s: saved the checkpoint of step %d; run the same '
                   'command to resume', name, done)
          raise errors.Stopped(f'{name} at step {done}; checkpoint saved, run the '
                               'same command to resume', exit_code=128 + guard.signum)
    ckpt.wait()  # A failed last save stops the run here, not silently.
  finally:  # Also on a stop: bars ended, events flushed.
    bar.close()
    writer.close()
  if result is None:  # Resumed at the end: evaluate what is there.
    result = evaluate(dp, run.p_eval_step, state, eval_split, config, split_name)
  return result


def load_for_inference(workdir: str, step: Optional[int] = None,
                       prefer_ema: bool = False):
  """The model, variables and class names of a workdir's checkpoint.

  Reads the run's own config from the checkpoint, so no config is needed.

  Args:
    workdir: a run's workdir.
    step: the checkpoint; None = the latest.
    prefer_ema: return the moving-average weights when the run kept them.

  Returns:
    (config, model, {'params', 'batch_stats'}, class_names, step, (mean, std),
    weights: 'ema' or 'raw')
  """
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  meta = ckpt.read_meta(step)
  if meta is None:
    raise errors.UserError(f'no checkpoint in {workdir}/checkpoints; pass the '
                           '--workdir of a trained run')
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  dp = parallel.DataParallel('jit', 1)
  model = create_model(config, meta['num_classes'])
  tx = create_optimizer(config, create_learning_rate_fn(config, 1))
  has_ema = config.get('ema_decay', 0.0) > 0
  state = ckpt.restore(abstract_state(
      lambda: create_train_state(jax.random.key(0), model, tx, ema=has_ema), dp), step)
  ckpt.close()
  weights = 'ema' if has_ema and prefer_ema else 'raw'
  if weights == 'ema':
    state = ema_variables(state)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  names = meta.get('class_names') or [str(i) for i in range(meta['num_classes'])]
  return (config, model, variables, names, ckpt.restored_step,
          stored_mean_std(meta, config.dataset), weights)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: Optional[int] = None) -> dict:
  """Restores a checkpoint of `workdir`, evaluates the test split, writes eval.json."""
  run = _Run(config, workdir, need_train=False)
  run.hold(write_checkpoints=False)  # eval.json and confusion.png are written.
  try:
    return _evaluate_checkpoint(run, step)
  finally:
    run.release()


def _evaluate_checkpoint(run: _Run, step: Optional[int]) -> dict:
  config, workdir = run.config, run.workdir
  state = run.restore(step)
  result = evaluate(run.dp, run.p_eval_step, state, run.test, config)
  confusion = result['confusion']
  per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
  names = list(run.test.class_names)
  result = {'step': run.ckpt.restored_step, 'split': 'test',
            'weights': ['raw', 'ema'] if ema_of(state) is not None else ['raw'],
            'flip_tta': bool(config.flip_tta), **metrics_io.scalars(result),
            'per_class_accuracy': dict(zip(names, per_class.tolist())),
            'class_names': names,
            'confusion_matrix': confusion.tolist()}
  if jax.process_index() == 0:
    metrics_io.write_json(os.path.join(workdir, 'eval.json'), result)
    plots.draw_confusion(confusion, names, os.path.join(workdir, 'confusion.png'),
                         f"{config.model}, step {result['step']}: "
                         f"{100 * result['eval_accuracy']:.2f}% accuracy")
  return result
