"""Residual networks in Flax linen.

One `ResNet` module covers every family in the zoo; the variants differ only in
the block class, the stage sizes and widths, the stem and the shortcut. Module
names follow torchvision's layout (`conv1`, `bn1`, `layer1_0.conv1`, ...,
`layer1_0.downsample_conv`, `fc`) so `convert.from_torch` maps one to one.

Families:
  * CIFAR ResNets of He et al. 2015 (6n+2 layers, 16/32/64 filters), shortcut
    option A (parameter-free) by default, option B (1x1 projection + BN).
  * Pre-activation ResNets of He et al. 2016 (basic and bottleneck).
  * ResNet-18 ... 152 with a CIFAR stem (3x3 conv) or the ImageNet stem.
  * ResNeXt-29 for CIFAR (Xie et al. 2017), grouped 3x3 convolutions.
  * Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation, with dropout.
"""

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax import layers

ModuleDef = Any

# Explicit symmetric padding: flax's 'SAME' pads (0, 1) for stride 2 on even
# sizes, PyTorch pads (1, 1); explicit padding keeps the two frameworks equal.
_PAD = {1: ((0, 0), (0, 0)), 3: ((1, 1), (1, 1)), 7: ((3, 3), (3, 3))}


def _conv(conv: ModuleDef, features: int, kernel: int, strides: int = 1,
          name: Optional[str] = None, **kwargs) -> nn.Module:
  return conv(features, (kernel, kernel), (strides, strides), padding=_PAD[kernel],
              name=name, **kwargs)


def _shortcut_a(x: jnp.ndarray, out_features: int, strides: int) -> jnp.ndarray:
  """Option A of He et al. 2015: subsample, then zero-pad the new channels."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = out_features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


class _Block(nn.Module):
  """Fields every block has: inner width, injected conv and norm, stride,
  and the shortcut kind used where the shape changes."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: str = 'B'


class BasicBlock(_Block):
  """Two 3x3 convolutions, post-activation (He et al. 2015)."""
  zero_init_residual: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # Dropout-free; BatchNorm mode is bound in `norm`.
    out_features = self.filters * self.expansion
    y = _conv(self.conv, self.filters, 3, self.strides, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.conv, out_features, 3, name='conv2')(y)
    y = self.norm(name='bn2', scale_init=_last_scale_init(self.zero_init_residual))(y)
    return nn.relu(y + _project(self, x, out_features))


class BottleneckBlock(_Block):
  """1x1 -> 3x3 (stride, groups) -> 1x1, post-activation (torchvision v1.5).

  `filters` is the inner width; the output has `out_filters` channels
  (default `filters * 4`, as ResNet-50; ResNeXt sets both).
  """
  zero_init_residual: bool = False
  groups: int = 1
  out_filters: Optional[int] = None
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    out_features = self.out_filters or self.filters * self.expansion
    y = _conv(self.conv, self.filters, 1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.conv, self.filters, 3, self.strides, name='conv2',
              feature_group_count=self.groups)(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = _conv(self.conv, out_features, 1, name='conv3')(y)
    y = self.norm(name='bn3', scale_init=_last_scale_init(self.zero_init_residual))(y)
    return nn.relu(y + _project(self, x, out_features))


class PreActBasicBlock(_Block):
  """BN-ReLU-conv twice (He et al. 2016); dropout between convs (WRN)."""
  dropout_rate: float = 0.0
  axis_name: Optional[str] = None  # pmap's, for the dropout mask.
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_features = self.filters * self.expansion
    pre = nn.relu(self.norm(name='bn1')(x))
    y = _conv(self.conv, self.filters, 3, self.strides, name='conv1')(pre)
    y = nn.relu(self.norm(name='bn2')(y))
    if self.dropout_rate > 0:
      # Named as nn.Dropout was: the same key, so the same masks under jit.
      y = layers.BatchDropout(self.dropout_rate, self.axis_name, name='Dropout_0')(
          y, deterministic=not train)
    y = _conv(self.conv, out_features, 3, name='conv2')(y)
    return y + _preact_project(self, x, pre, out_features)


class PreActBottleneckBlock(_Block):
  """BN-ReLU-conv 1x1 / 3x3 / 1x1 (He et al. 2016), output `filters * 4`."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    out_features = self.filters * self.expansion
    pre = nn.relu(self.norm(name='bn1')(x))
    y = _conv(self.conv, self.filters, 1, name='conv1')(pre)
    y = nn.relu(self.norm(name='bn2')(y))
    y = _conv(self.conv, self.filters, 3, self.strides, name='conv2')(y)
    y = nn.relu(self.norm(name='bn3')(y))
    y = _conv(self.conv, out_features, 1, name='conv3')(y)
    return y + _preact_project(self, x, pre, out_features)


def _last_scale_init(zero: bool):
  return nn.initializers.zeros if zero else nn.initializers.ones


def _project(block: nn.Module, x, out_features: int):
  """Shortcut of a post-activation block: identity, option A or option B."""
  if x.shape[-1] == out_features and block.strides == 1:
    return x
  if block.shortcut == 'A':
    return _shortcut_a(x, out_features, block.strides)
  x = _conv(block.conv, out_features, 1, block.strides, name='downsample_conv')(x)
  return block.norm(name='downsample_bn')(x)


def _preact_project(block: nn.Module, x, pre, out_features: int):
  """Shortcut of a pre-activation block: identity or a 1x1 conv of `pre`."""
  if x.shape[-1] == out_features and block.strides == 1:
    return x
  if block.shortcut == 'A':
    return _shortcut_a(x, out_features, block.strides)
  return _conv(block.conv, out_features, 1, block.strides, name='downsample_conv')(pre)


# Nets with more blocks than this scan over each stage's repeated blocks.
SCAN_ABOVE_BLOCKS = 100


class _Repeat(nn.Module):
  """One block as a scan body: (x, _) -> (block(x), None)."""
  block_cls: Any
  fields: Any
  train: bool

  @nn.compact
  def __call__(self, x, _):
    return self.block_cls(name='block', **self.fields)(x, train=self.train), None


class ResNet(nn.Module):
  """A residual network: stem, stages of blocks, global pool, classifier.

  Attributes:
    stage_sizes: number of blocks in each stage.
    block_cls: one of the block classes above.
    widths: `filters` of each stage's blocks.
    num_classes: classifier outputs.
    stem: 'cifar' (3x3 stride-1 conv), 'imagenet' (7x7 stride-2 conv and 3x3
      stride-2 max-pool).
    stem_width: channels of the stem convolution.
    shortcut: 'A' (zero-pad) or 'B' (projection) where shapes change.
    block_kwargs: extra block fields (groups, out_filters, dropout_rate).
    out_widths: per-stage `out_filters` for bottlenecks (ResNeXt).
    zero_init_residual: start each residual branch's last BN scale at zero.
    bn_momentum: running-average decay (PyTorch's momentum 0.1 is 0.9 here).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype (parameters stay float32).
    axis_name: pmap axis for cross-replica BatchNorm statistics (None under jit,
      where the sharded global batch already gives global statistics).
    store_conv_inputs: in training, keep every convolution's input for the
      backward pass (`layers.StoredInputConv`); faster on XLA:CPU, same numbers.
    cpu_conv: the convolutions XLA:CPU is slow at as matrix products
      (`layers.CpuConv`: CPU backend only; same numbers to float rounding).
    bn_group_size: training BatchNorm statistics over groups of this many
      examples (`layers.GroupBatchNorm`); 0 = the whole global batch.
    blurpool: FFCV's blur before strided convolutions (`layers.with_blurpool`).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  widths: Sequence[int]
  num_classes: int = 10
  stem: str = 'cifar'
  stem_width: int = 64
  shortcut: str = 'B'
  block_kwargs: Any = dataclasses.field(default_factory=dict)
  out_widths: Optional[Sequence[int]] = None
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  store_conv_inputs: bool = False
  cpu_conv: bool = False
  bn_group_size: int = 0
  blurpool: bool = False

  @property
  def preact(self) -> bool:
    return self.block_cls in (PreActBasicBlock, PreActBottleneckBlock)

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Evaluation has no backward pass to store inputs for.
    conv_cls = layers.conv_class(store_inputs=self.store_conv_inputs and train,
                                 cpu=self.cpu_conv)
    conv = functools.partial(conv_cls, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(
                                 2.0, 'fan_out', 'normal'))
    if self.blurpool:
      conv = layers.with_blurpool(conv)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, axis_name=self.axis_name,
                             # Two-pass variance: E[x^2]-E[x]^2 cancels badly
                             # when |mean| >> std, making results depend on the
                             # reduction order (device count) far above rounding.
                             use_fast_variance=False)
    if self.bn_group_size:
      norm = functools.partial(layers.GroupBatchNorm, self.bn_group_size,
                               use_running_average=not train, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, dtype=self.dtype,
                               axis_name=self.axis_name)
    x = jnp.asarray(x, self.dtype)
    if self.stem == 'imagenet':
      x = _conv(conv, self.stem_width, 7, 2, name='conv1')(x)
    elif self.stem == 'cifar':
      x = _conv(conv, self.stem_width, 3, 1, name='conv1')(x)
    else:
      raise ValueError(f"unknown stem {self.stem!r}; use 'cifar' or 'imagenet'")
    if not self.preact:
      x = nn.relu(norm(name='bn1')(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    kwargs = dict(self.block_kwargs)
    if 'dropout_rate' in kwargs:
      kwargs['axis_name'] = self.axis_name
    if not self.preact:
      kwargs['zero_init_residual'] = self.zero_init_residual
    # Very deep nets (resnet1202, preact_resnet1001) scan over the identical
    # blocks of a stage: an unrolled program of hundreds of blocks takes XLA
    # many minutes and tens of GB to compile.
    scan = sum(self.stage_sizes) > SCAN_ABOVE_BLOCKS
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      if self.out_widths is not None:
        kwargs['out_filters'] = self.out_widths[i]
      fields = dict(filters=width, conv=conv, norm=norm, shortcut=self.shortcut,
                    **kwargs)
      for j in range(1 if scan else size):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(strides=strides, name=f'layer{i + 1}_{j}',
                           **fields)(x, train=train)
      if scan and size > 1:
        repeat = nn.scan(_Repeat, variable_axes={'params': 0, 'batch_stats': 0},
                         split_rngs={'params': True, 'dropout': True},
                         length=size - 1)
        x, _ = repeat(self.block_cls, fields, train, name=f'layer{i + 1}_rest')(x, None)
    if self.preact:
      x = nn.relu(norm(name='bn_final')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(x)
    return jnp.asarray(x, jnp.float32)


def _cifar_resnet(depth: int, **kw):
  assert (depth - 2) % 6 == 0, depth
  n = (depth - 2) // 6
  return dict(stage_sizes=(n,) * 3, block_cls=BasicBlock, widths=(16, 32, 64),
              stem_width=16, shortcut='A', **kw)


def _preact_resnet(depth: int, bottleneck: bool):
  per_block = 9 if bottleneck else 6
  n = (depth - 2) // per_block
  block = PreActBottleneckBlock if bottleneck else PreActBasicBlock
  return dict(stage_sizes=(n,) * 3, block_cls=block, widths=(16, 32, 64),
              stem_width=16, shortcut='B')


def _imagenet_family(stage_sizes, bottleneck: bool):
  return dict(stage_sizes=stage_sizes,
              block_cls=BottleneckBlock if bottleneck else BasicBlock,
              widths=(64, 128, 256, 512), stem_width=64, shortcut='B')


def _resnext29(cardinality: int, base_width: int):
  # Xie et al. 2017, CIFAR template: 3 stages of 3 blocks, group-conv width
  # cardinality * base_width doubling per stage, outputs 256/512/1024.
  inner = cardinality * base_width
  return dict(stage_sizes=(3, 3, 3), block_cls=BottleneckBlock,
              widths=(inner, inner * 2, inner * 4), out_widths=(256, 512, 1024),
              stem_width=64, shortcut='B', block_kwargs={'groups': cardinality})


def _wide_resnet(depth: int, k: int):
  assert (depth - 4) % 6 == 0, depth
  n = (depth - 4) // 6
  return dict(stage_sizes=(n,) * 3, block_cls=PreActBasicBlock,
              widths=(16 * k, 32 * k, 64 * k), stem_width=16, shortcut='B')


# Each entry: architecture fields of `ResNet` and the stem it uses by default.
MODELS = {
    # resnet8 is not in the paper: a tiny member for smoke tests.
    **{f'resnet{d}': _cifar_resnet(d) for d in (8, 20, 32, 44, 56, 110, 1202)},
    'preact_resnet110': _preact_resnet(110, bottleneck=False),
    'preact_resnet164': _preact_resnet(164, bottleneck=True),
    'preact_resnet1001': _preact_resnet(1001, bottleneck=True),
    # The mixup paper's net (Zhang et al. 2018): ResNet-18's stages with the
    # pre-activation blocks of He et al. 2016 and the CIFAR stem.
    'preact_resnet18': dict(stage_sizes=(2, 2, 2, 2), block_cls=PreActBasicBlock,
                            widths=(64, 128, 256, 512), stem_width=64, shortcut='B'),
    'resnet18': _imagenet_family((2, 2, 2, 2), bottleneck=False),
    'resnet34': _imagenet_family((3, 4, 6, 3), bottleneck=False),
    'resnet50': _imagenet_family((3, 4, 6, 3), bottleneck=True),
    'resnet101': _imagenet_family((3, 4, 23, 3), bottleneck=True),
    'resnet152': _imagenet_family((3, 8, 36, 3), bottleneck=True),
    'resnext29_8x64d': _resnext29(8, 64),
    'resnext29_16x64d': _resnext29(16, 64),
    'wrn28_10': _wide_resnet(28, 10),
    'wrn10_1': _wide_resnet(10, 1),  # Not in the paper: a tiny one for tests.
    'wrn16_8': _wide_resnet(16, 8),
}

# The models that offer both stems (and convert from torchvision).
IMAGENET_FAMILY = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')


def downsampling(name: str, stem: str = 'cifar') -> int:
  """How much smaller the last stage's maps are than the input: the least
  image size that leaves them 1x1 (the ImageNet stem's /4, then /2 per stage
  after the first)."""
  return (4 if stem == 'imagenet' else 1) * 2 ** (len(MODELS[name]['stage_sizes']) - 1)


# Names whose blocks carry dropout (`dropout_rate` applies to them only).
_WIDE = ('wrn',)


def create_model(name: str, num_classes: int = 10, *, stem: str = 'cifar',
                 shortcut: Optional[str] = None, dropout_rate: float = 0.0,
                 zero_init_residual: bool = False, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, dtype: Any = jnp.float32,
                 axis_name: Optional[str] = None,
                 store_conv_inputs: bool = False, cpu_conv: bool = False,
                 bn_group_size: int = 0, blurpool: bool = False) -> ResNet:
  """Builds a model of the zoo by name.

  Args:
    name: a key of `MODELS` (e.g. 'resnet20', 'resnet50', 'wrn28_10').
    num_classes: classifier outputs.
    stem: 'cifar' or 'imagenet'; only the ResNet-18 ... 152 family uses it,
      the CIFAR families always use their papers' 3x3 stem.
    shortcut: override the shortcut ('A' or 'B'); None keeps the paper's.
    dropout_rate: dropout between the convolutions of Wide ResNet blocks.
    zero_init_residual: zero-initialise the last BatchNorm scale of each
      residual branch (post-activation blocks only).
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters are always float32.
    axis_name: pmap axis name for BatchNorm statistics, None under jit.
    store_conv_inputs: keep convolution inputs for the backward pass instead
      of letting XLA recompute them (see `layers.StoredInputConv`).
    cpu_conv: see `ResNet` (the CPU backend only).
    bn_group_size: see `ResNet`.
    blurpool: see `ResNet`.

  Returns:
    A linen Module; `init(key, x, train=False)` returns
    `{'params', 'batch_stats'}` for NHWC float input.

  Raises:
    ValueError: for an unknown name or an option the model does not have.
  """
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; choose one of: {", ".join(MODELS)}')
  fields = dict(MODELS[name])
  if stem != 'cifar' and name not in IMAGENET_FAMILY:
    raise ValueError(f"model {name!r} only has the CIFAR stem; use stem='cifar'")
  fields['stem'] = stem
  if shortcut is not None:
    if shortcut not in ('A', 'B'):
      raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    fields['shortcut'] = shortcut
  preact = fields['block_cls'] in (PreActBasicBlock, PreActBottleneckBlock)
  if dropout_rate:
    if not name.startswith(_WIDE):
      raise ValueError(f'dropout_rate applies to Wide ResNets only, not {name!r}')
    fields['block_kwargs'] = {**fields.get('block_kwargs', {}),
                              'dropout_rate': dropout_rate}
  if zero_init_residual and preact:
    raise ValueError(f'zero_init_residual needs blocks that end in BatchNorm; '
                     f'{name!r} is pre-activation')
  return ResNet(num_classes=num_classes, zero_init_residual=zero_init_residual,
                bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, dtype=dtype,
                axis_name=axis_name, store_conv_inputs=store_conv_inputs,
                cpu_conv=cpu_conv, bn_group_size=bn_group_size, blurpool=bool(blurpool),
                **fields)
