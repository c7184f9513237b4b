"""The compiled steps: pure functions of (state, batch).

`axis_name` is set under pmap only; `data_parallel.DataParallel` compiles
them, so the jit and pmap strategies share everything but the compiled step
and the placement of state.
"""

import functools
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import layers
from resnet_jax.data import device_pipeline
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import train_state


def train_step(state: train_state.TrainState, batch: dict, *, mean_std: tuple, dtype: Any,
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
    state = state.replace(ema=train_state.ema_update(state.ema, state.params, state.batch_stats,
                                          state.step, ema_decay))
  return state, metrics


def train_images(batch: dict, mean_std: tuple, dtype: Any) -> jnp.ndarray:
  """The network's input: normalised, mixup-blended, Cutout-erased."""
  images = device_pipeline.normalize(batch['image'], mean_std, dtype)
  if 'mix_image' in batch:
    lam = batch['mix_lam'].astype(dtype)[:, None, None, None]
    images = lam * images + (1 - lam) * device_pipeline.normalize(
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


def eval_step(state: train_state.TrainState, batch: dict, *, mean_std: tuple, dtype: Any,
              num_classes: int, flip_tta: bool = False,
              axis_name: Optional[str] = None) -> dict:
  """Sums over the real (unmasked) examples of a padded eval batch.

  Returns:
    {'': sums of the plain view}, and with `flip_tta` also {'flip_': sums of
    the mean of the image's and its mirror's class probabilities}.
  """
  images = device_pipeline.normalize(batch['image'], mean_std, dtype)
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


def step_functions(dp: data_parallel.DataParallel, config: ml_collections.ConfigDict,
                   num_classes: int, mean_std: tuple) -> tuple:
  """(train_step, eval_step) with the options of `config` bound, uncompiled."""
  dtype = train_state.compute_dtype(config)
  mean_std = tuple(tuple(v) for v in mean_std)
  train = functools.partial(
      train_step, mean_std=mean_std, dtype=dtype, seed=config.seed,
      label_smoothing=config.get('label_smoothing', 0.0),
      ema_decay=config.get('ema_decay', 0.0), axis_name=dp.axis_name)
  evaluate = functools.partial(
      eval_step, mean_std=mean_std, dtype=dtype, num_classes=num_classes,
      flip_tta=config.get('flip_tta', False), axis_name=dp.axis_name)
  return train, evaluate


def compile_steps(dp: data_parallel.DataParallel, config: ml_collections.ConfigDict,
                  num_classes: int, mean_std: tuple):
  """The compiled one-step (train_step, eval_step) of `config` under `dp`."""
  train, evaluate = step_functions(dp, config, num_classes, mean_std)
  return (dp.compile(train, compiler_options=train_compiler_options(config)),
          dp.compile(evaluate, donate_state=False))


def train_compiler_options(config: ml_collections.ConfigDict) -> Optional[dict]:
  """XLA options of the train step.

  XLA:CPU in JAX 0.10 expands optimization barriers before fusion, which
  undoes `store_conv_inputs` (ResNet-20: 1.0x with the pass, 1.27x without,
  benchmarks/store_conv_inputs.py); JAX 0.12 expands them after fusion, where
  skipping the pass is harmless. `jax.pmap` takes no options.
  """
  if train_state.store_conv_inputs(config) and jax.default_backend() == 'cpu':
    return layers.KEEP_BARRIERS_OPTIONS
  return None
