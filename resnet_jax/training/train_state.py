"""The train state and what creates it: model, schedule, optimizer, EMA."""

from typing import Any, Callable, Optional

from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import models
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import convert


class TrainState(flax_train_state.TrainState):
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
      store_conv_inputs=store_conv_inputs(config), cpu_conv=cpu_conv(config),
      # .get: configs saved by checkpoints before these fields existed lack them.
      bn_group_size=config.get('bn_group_size', 0), blurpool=config.get('blurpool', False))


def store_conv_inputs(config: ml_collections.ConfigDict) -> bool:
  """Resolves `store_conv_inputs`: 'auto' turns it on where it was measured
  to help (XLA:CPU, see BENCHMARKS.md) and leaves other backends alone."""
  # .get: configs saved by checkpoints before this field existed lack it.
  value = config.get('store_conv_inputs', 'auto')
  if value == 'auto':
    return jax.default_backend() == 'cpu'
  return value == 'on'


def cpu_conv(config: ml_collections.ConfigDict) -> bool:
  """Resolves `cpu_conv`: 'auto' takes `layers.CpuConv`'s measured path on
  the CPU backend; any other backend (and 'off') compiles `nn.Conv`, the
  program it always had."""
  # .get: configs saved by checkpoints before this field existed lack it.
  return config.get('cpu_conv', 'auto') == 'auto' and jax.default_backend() == 'cpu'


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """`num_train_steps`, or `num_epochs` worth of steps when it is -1."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, int(round(config.num_epochs * num_train_examples / config.batch_size)))


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`learning_rate`, scaled by `batch_size / lr_scale_batch` when that is set
  (the linear scaling rule of Goyal et al. 2017: 0.1 per 256 images)."""
  scale_batch = config.get('lr_scale_batch', 0)
  return config.learning_rate * (config.batch_size / scale_batch if scale_batch else 1.0)


def warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: float) -> int:
  """`warmup_steps`, or `warmup_epochs` of `steps_per_epoch` steps."""
  epochs = config.get('warmup_epochs', 0.0)
  if epochs > 0:
    return int(round(epochs * steps_per_epoch))
  return max(0, int(config.warmup_steps))


def warmup_start(config: ml_collections.ConfigDict) -> float:
  """The rate a warm-up starts at (linear, cosine) or holds (constant):
  `warmup_lr`, or the peak where that is lower, so a warm-up never runs
  downward. Goyal et al. 2017 ramp from the base rate 0.1 to k x 0.1 (k =
  batch / 256); with k <= 1 there is nothing to ramp: the peak from step 0."""
  return min(config.warmup_lr, peak_learning_rate(config))


# FFCV's cyclic schedule starts at this fraction of the peak (train_imagenet.py,
# get_cyclic_lr).
TRIANGULAR_START = 1e-4


def create_learning_rate_fn(config: ml_collections.ConfigDict, num_steps: int,
                            steps_per_epoch: float = 1.0) -> optax.Schedule:
  """The learning rate of each (0-based) step.

  'piecewise' (default): constant, multiplied by `lr_decay_factor` at each of
  `lr_boundaries` (fractions of the run, so epochs at any batch size). With
  the defaults and 64k steps it is 0.1 for steps [0, 32000), 0.01 for [32000,
  48000) and 0.001 from 48000, as in He et al. 2015. A warm-up replaces the
  first steps: constant at `warmup_start` (the paper's 0.01 for ResNet-110),
  or with `warmup_shape='linear'` rising from it to the peak (Goyal et al.
  2017's gradual warm-up), the boundaries staying at their steps.

  'cosine': linear from `warmup_start` to the peak over the warm-up, then half
  a cosine down to 0 at the end of the run (Loshchilov & Hutter 2017, without
  restarts).

  'triangular': FFCV's `cyclic` schedule (ffcv-imagenet's train_imagenet.py):
  `np.interp(epoch, [0, lr_peak_epoch, epochs], [1e-4 x peak, peak, 0])` at
  the step's epoch `step / steps_per_epoch`, `epochs` the run's length, so 0
  at the step after the last. FFCV interpolates linearly between its whole
  epochs' values, which is the same line. No separate warm-up.

  The peak is `peak_learning_rate`; the warm-up lasts `warmup_steps(config,
  steps_per_epoch)` steps.
  """
  peak = peak_learning_rate(config)
  warmup = warmup_steps(config, steps_per_epoch)
  schedule_kind = config.get('lr_schedule', 'piecewise')
  if schedule_kind == 'triangular':
    return _triangular(peak, config.lr_peak_epoch * steps_per_epoch, num_steps)
  if schedule_kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=warmup_start(config) if warmup > 0 else peak,
        peak_value=peak, warmup_steps=warmup,
        # (Restoring for inference builds a schedule for 1 step.)
        decay_steps=max(num_steps, warmup + 1), end_value=0.0)
  boundaries = {int(round(f * num_steps)): config.lr_decay_factor
                for f in config.lr_boundaries}
  schedule = optax.piecewise_constant_schedule(peak, boundaries)
  if warmup <= 0:
    return schedule
  start = warmup_start(config)
  if config.get('warmup_shape', 'constant') == 'linear':
    ramp = lambda step: start + (peak - start) * step / warmup
  else:
    ramp = lambda step: start
  # The warm-up keeps the boundaries at their absolute steps
  # (optax.join_schedules would shift the later schedule).
  return lambda step: jnp.where(step < warmup, ramp(step), schedule(step))


def _triangular(peak: float, peak_step: float, num_steps: int) -> optax.Schedule:
  """Linear from `TRIANGULAR_START x peak` at step 0 to `peak` at `peak_step`,
  then linear to 0 at `num_steps`, 0 after."""
  start = TRIANGULAR_START * peak
  # (Restoring for inference builds a schedule for 1 step.)
  end = max(num_steps, peak_step + 1)
  def schedule(step):
    # Counted in steps from the end (exact integers), not as float32 epochs,
    # whose rounding would be a percent of the last steps' small rates.
    up = start + (peak - start) * step / max(peak_step, 1e-9)
    down = peak * (end - step) / (end - peak_step)
    return jnp.clip(jnp.where(step < peak_step, up, down), 0.0, peak)
  return schedule


def decay_mask(config: ml_collections.ConfigDict) -> Callable:
  """params -> which leaves weight decay (and LARS's trust ratio) applies
  to: conv and dense kernels ('kernels'), every parameter ('all'), or FFCV's
  rule ('ffcv': every parameter whose torchvision name lacks 'bn', so the
  kernels, the classifier's bias and the shortcut BatchNorm, torchvision's
  `downsample.1`; train_imagenet.py's `create_optimizer`)."""
  on = config.get('weight_decay_on', 'kernels')
  if on == 'all':
    return lambda params: jax.tree.map(lambda p: True, params)
  if on == 'ffcv':
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, p: 'bn' not in convert.torch_name(path), params)
  return lambda params: jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay, or LARS.

  SGD: the decay is added to the gradient before momentum, as in the paper's
  Caffe/Torch training (`g + wd * w`), not decoupled as in AdamW; by default
  BatchNorm parameters and biases are not decayed (`weight_decay_on`).

  LARS (You et al. 2017; `optimizer='lars'`, for batches of 8k and more):
  optax's, each decayed leaf's update scaled by the trust ratio
  `lars_trust * |w| / |g + wd * w|` before the learning rate and momentum;
  the leaves left out of the decay (BatchNorm, biases) are left out of the
  trust ratio too, as MLPerf's ResNet-50 does.
  """
  mask = decay_mask(config)
  if config.get('optimizer', 'sgd') == 'lars':
    return optax.lars(learning_rate_fn, weight_decay=config.weight_decay,
                      weight_decay_mask=mask, trust_coefficient=config.lars_trust,
                      trust_ratio_mask=mask, momentum=config.momentum,
                      nesterov=config.nesterov)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=mask),
      optax.sgd(learning_rate_fn, momentum=config.momentum or None,
                nesterov=config.nesterov))


def create_train_state(rng: jax.Array, model: models.ResNet,
                       tx: optax.GradientTransformation,
                       ema: bool = False, compiled: bool = False) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state (and
  their moving average, starting at the initial values, with `ema`).

  With `compiled`, the variables come from one compiled program: for
  benchmarks, which time steps, not values. XLA then fuses the initializers'
  ops, so some values differ from the eager ones in the last bit (7 of 62
  leaves, measured in docs/testing.md); training keeps eager
  initialisation, so its starting values stay what they were. Compiled, a
  cold ResNet-18 initialises in 3.5 s instead of 7.1 s (docs/testing.md).
  """
  def init(key):
    return model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
  variables = (jax.jit(init) if compiled else init)(rng)
  fields = dict(apply_fn=model.apply, params=variables['params'],
                batch_stats=variables['batch_stats'], tx=tx)
  if ema:
    return EmaTrainState.create(**fields, ema=dict(variables))
  return TrainState.create(**fields)


def ema_variables(state: TrainState) -> TrainState:
  """`state` evaluating with its moving-average weights."""
  return state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])


def ema_update(ema: dict, params, batch_stats, step, decay: float) -> dict:
  """One moving-average step. The decay ramps up as (1 + t) / (10 + t) to
  `decay` (the warm-up of TensorFlow's ExponentialMovingAverage with
  num_updates), so short runs do not average in the random initialisation."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  new = {'params': params, 'batch_stats': batch_stats}
  return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x, ema, new)



def abstract_state(init_fn: Callable[[], TrainState], dp: data_parallel.DataParallel):
  """Shapes, dtypes and replicated shardings of the state, for restoring."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dp.replicated),
      jax.eval_shape(init_fn))
