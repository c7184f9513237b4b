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


def im2col_conv(x, kernel, strides, padding, precision=None):
  """A 2-D convolution as one matrix product: each output position's patch
  gathered by strided slices ("im2col"), then one dot with the kernel.

  The same sums as `lax.conv_general_dilated(x, kernel, strides, padding,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`, in another order (so equal to
  float rounding). Its gradients are matrix products and the slices'
  transposes (pads and adds), which XLA:CPU runs at matrix speed where its
  own convolution kernels are slow (tiny maps, 1x1 weight gradients;
  benchmarks/cpu_conv_shapes.py).

  Args:
    x: [N, H, W, C] input.
    kernel: [KH, KW, C, F] (HWIO).
    strides: (SH, SW).
    padding: ((top, bottom), (left, right)).
    precision: as `lax.dot_general`'s.

  Returns:
    [N, HO, WO, F].
  """
  kh, kw, c, f = kernel.shape
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  # Tap (i, j) of every output position, in the kernel's (row, column,
  # channel) order, so the HWIO kernel reshapes to the matrix as it is.
  taps = [lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  y = lax.dot_general(patches.reshape(n * ho * wo, kh * kw * c),
                      kernel.reshape(kh * kw * c, f), (((1,), (0,)), ((), ())),
                      precision=precision)
  return y.reshape(n, ho, wo, f)


def cpu_conv_takes_im2col(x_shape, kernel_shape, strides, padding) -> bool:
  """Whether `CpuConv` computes a convolution as `im2col_conv` (one matrix
  product) rather than as XLA:CPU's convolution.

  From benchmarks/cpu_conv_shapes.py (JAX 0.10 and 0.12, 2-core AMD EPYC,
  ResNet-18 at 32-128 px and ResNet-50 at 224 px, batch 16; ResNet-20 and
  PreAct-ResNet-164 at 128), forward + input gradient + weight gradient:
  * 1x1 kernels: always. XLA:CPU's weight gradient of a 1x1 convolution is
    up to 19x slower than the matrix product it is (ResNet-50's 256->128 at
    56x56: 817 ms against 59); the three passes together were faster as
    matrix products at every 1x1 shape measured (also PreAct-ResNet-164's).
  * Larger kernels whose output map is 2x2 or smaller: XLA:CPU's forward pass
    or input gradient (or both) there take 10-90x the matrix product's time
    (ResNet-18's 512->512 3x3 at 2x2: 445 + 275 ms against 5 + 8).
  * Otherwise XLA:CPU's convolution: on larger maps the im2col copies cost
    more than they save (the 7x7 stem, ResNet-20's 16-channel layers: 2-5x
    slower as im2col).

  Args:
    x_shape: the input's [N, H, W, C].
    kernel_shape: [KH, KW, C, F].
    strides: (SH, SW).
    padding: ((top, bottom), (left, right)).
  """
  kh, kw = kernel_shape[:2]
  if kh == kw == 1:
    return True
  out = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in
         zip(x_shape[1:3], padding, (kh, kw), strides)]
  return out[0] * out[1] <= 4


class CpuConv(nn.Conv):
  """`nn.Conv` that takes `im2col_conv` where XLA:CPU's own convolution is
  slow (`cpu_conv_takes_im2col`, measured per layer shape), for the CPU
  backend only (the model uses it where `cpu_conv` resolves on).

  The same parameters as `nn.Conv` (the 'kernel', HWIO, drawn by the same
  initialiser from the same key), so checkpoints and `init_from` are shared;
  the outputs equal `nn.Conv`'s to float rounding. Shapes the rule leaves
  alone, and any options the rule was not measured with (groups, dilation,
  string padding, a mask, unshared weights), are `nn.Conv`'s own.
  """

  @nn.compact
  def __call__(self, inputs):
    kernel_size = tuple(self.kernel_size)
    strides = _pair(self.strides)
    plain = (inputs.ndim != 4 or len(kernel_size) != 2 or isinstance(self.padding, (str, int))
             or self.feature_group_count != 1 or self.mask is not None
             or _pair(self.input_dilation) != (1, 1)
             or _pair(self.kernel_dilation) != (1, 1))
    kernel_shape = kernel_size + (inputs.shape[-1], self.features)
    if plain:
      return super().__call__(inputs)
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in self.padding)
    if not cpu_conv_takes_im2col(inputs.shape, kernel_shape, strides, padding):
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init, kernel_shape, self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = im2col_conv(inputs, kernel, strides, padding, self.precision)
    return y if bias is None else y + bias


def _pair(value):
  return (1, 1) if value is None else (value, value) if isinstance(value, int) else tuple(value)


class StoredInputCpuConv(StoredInputConv, CpuConv):
  """`CpuConv` whose input is stored (`StoredInputConv`), on either path."""


def conv_class(store_inputs: bool = False, cpu: bool = False):
  """The convolution module of a model: `nn.Conv`, or with stored inputs
  (`StoredInputConv`), the CPU path (`CpuConv`) or both."""
  return {(False, False): nn.Conv, (True, False): StoredInputConv,
          (False, True): CpuConv, (True, True): StoredInputCpuConv}[bool(store_inputs),
                                                                      bool(cpu)]


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
