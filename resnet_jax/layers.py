"""Layers the blocks need beyond Flax's own."""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


class BatchDropout(nn.Module):
  """Dropout whose mask is drawn for the whole global batch.

  Under jit the batch is global already. Under pmap each replica sees its
  own rows, and `nn.Dropout` would draw every replica the same mask from the
  same key; here each replica draws the global mask and keeps its own rows, so
  pmap trains with the masks jit draws (threefry draws do not depend on how an
  array is split). Otherwise the same as `nn.Dropout` (inverted scaling).
  """
  rate: float
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    key = self.make_rng('dropout')
    if self.axis_name is None:
      mask = jax.random.bernoulli(key, keep, x.shape)
    else:
      replicas = lax.psum(1, self.axis_name)
      full = jax.random.bernoulli(key, keep, (x.shape[0] * replicas,) + x.shape[1:])
      mask = lax.dynamic_slice_in_dim(full, lax.axis_index(self.axis_name) * x.shape[0],
                                      x.shape[0])
    return lax.select(mask, x / keep, jnp.zeros_like(x))


class StoredInputConv(nn.Conv):
  """`nn.Conv` whose input XLA must store rather than recompute.

  The weight gradient of a convolution reads its input again. Left alone,
  XLA:CPU recomputes that input (the BatchNorm, ReLU and residual adds of
  every earlier block of the stage) inside the strided transpose that feeds
  the weight-gradient convolution; on ResNet-20 that was half of the train
  step. An optimization barrier makes the forward value the one the backward
  pass reads. The arithmetic is unchanged. (JAX 0.10's XLA:CPU drops barriers
  before fusion unless compiled with `KEEP_BARRIERS_OPTIONS`, as the train
  step is.)
  """

  def __call__(self, inputs):
    return super().__call__(jax.lax.optimization_barrier(inputs))


# XLA options under which JAX 0.10's XLA:CPU keeps the barriers above until
# after fusion (later versions keep them there anyway).
KEEP_BARRIERS_OPTIONS = {'xla_disable_hlo_passes': 'cse_barrier_expander'}


class GroupBatchNorm(nn.Module):
  """BatchNorm whose training statistics are those of groups of `group_size`
  consecutive examples ("ghost batch norm"; Goyal et al. 2017 compute them per
  worker over n = 32 images and keep n fixed as the batch grows).

  In training, each group of `group_size` consecutive rows of the global batch
  is normalised by its own mean and (biased) variance over the group's rows
  and positions, then scaled and shifted by the shared `scale` and `bias`.
  The running averages take the mean over all groups of the global batch:

    mean <- momentum * mean + (1 - momentum) * (mean of the group means)
    var  <- momentum * var  + (1 - momentum) * (mean of the group variances)

  the variances biased (divided by the group's count), as `nn.BatchNorm`'s
  running variance is. With one group (group_size = the batch) this is
  `nn.BatchNorm` with `use_fast_variance=False`, to float rounding; evaluation
  (`use_running_average`) is `nn.BatchNorm`'s. The variables ('mean', 'var',
  'scale', 'bias') are named and shaped as `nn.BatchNorm`'s.

  The batch axis is reshaped to [groups, group_size]: under jit the sharded
  global batch gives the same groups on any device count (groups must not
  straddle devices: the per-device batch is a multiple of `group_size`).
  Under pmap (`axis_name`) each replica holds whole groups of its rows; only
  the running averages are averaged over the replicas (equal group counts,
  so the mean of the replicas' means is the mean over all groups).
  """
  group_size: int
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Optional[Any] = None
  axis_name: Optional[str] = None
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', self.scale_init, features, jnp.float32)
    bias = self.param('bias', self.bias_init, features, jnp.float32)
    dtype = self.dtype or jnp.result_type(x, jnp.float32)
    if self.use_running_average:
      return jnp.asarray(_normalize(x, ra_mean.value, ra_var.value, scale, bias,
                                    self.epsilon), dtype)
    n = self.group_size
    if n <= 0 or x.shape[0] % n:
      raise ValueError(f'GroupBatchNorm: a batch of {x.shape[0]} rows does not split '
                       f'into groups of {n}')
    groups = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    stats = groups.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(1, groups.ndim - 1))  # Each group's rows and positions.
    mean = stats.mean(axes, keepdims=True)
    # Two-pass variance, as the models' nn.BatchNorm (use_fast_variance=False).
    var = jnp.square(stats - mean).mean(axes, keepdims=True)
    y = _normalize(groups, mean, var, scale, bias, self.epsilon).reshape(x.shape)
    if not self.is_initializing():
      batch_mean = mean.reshape(-1, features[0]).mean(0)
      batch_var = var.reshape(-1, features[0]).mean(0)
      if self.axis_name is not None:
        batch_mean, batch_var = lax.pmean(jnp.stack([batch_mean, batch_var]),
                                          self.axis_name)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * batch_mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * batch_var
    return jnp.asarray(y, dtype)


def _normalize(x, mean, var, scale, bias, epsilon):
  """(x - mean) / sqrt(var + epsilon) * scale + bias, in flax's order of
  operations (so one group gives nn.BatchNorm's numbers)."""
  y = x - mean
  mul = lax.rsqrt(var + epsilon) * scale
  return y * mul + bias


# FFCV's BlurPool blurs the input of convolutions with at least this many
# input channels (so not an RGB stem).
BLURPOOL_MIN_CHANNELS = 16


def with_blurpool(conv: Callable) -> Callable:
  """A conv factory (`conv(features, kernel_size, strides, ...)`) whose strided
  convolutions blur their input first.

  FFCV (ffcv-imagenet train_imagenet.py, `apply_blurpool`) wraps every
  `Conv2d` with stride > 1 and at least 16 input channels in `BlurPoolConv2d`:
  on a torchvision ResNet that is the strided 3x3 of each stage's first block
  and its strided 1x1 projection shortcut, not the 7x7 stem (3 channels).
  The same rule here, for every family. The blur (`BlurPool`, named
  `<conv>_blurpool`) has no parameters: the variables stay the same.
  """
  def make(features, kernel_size, strides, name=None, **kwargs):
    module = conv(features, kernel_size, strides, name=name, **kwargs)
    if max(strides) == 1:
      return module

    def blurred(x):
      if x.shape[-1] >= BLURPOOL_MIN_CHANNELS:
        x = BlurPool(name=name and f'{name}_blurpool')(x)
      return module(x)
    return blurred
  return make


class BlurPool(nn.Module):
  """FFCV's low-pass filter before a strided convolution (ffcv-imagenet
  train_imagenet.py, `BlurPoolConv2d`, after Zhang 2019): each channel
  convolved with the fixed [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16, stride 1,
  zero padding 1 (PyTorch `F.conv2d(padding=(1, 1))`), so the size is kept.
  No parameters. Computed as the separable [1, 2, 1] / 4 along the height,
  then the width (float32 at least), in the input's dtype out.
  """

  @nn.compact
  def __call__(self, x):
    y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = jnp.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = (y[:, :-2] + 2 * y[:, 1:-1] + y[:, 2:]) / 4
    y = (y[:, :, :-2] + 2 * y[:, :, 1:-1] + y[:, :, 2:]) / 4
    return y.astype(x.dtype)
