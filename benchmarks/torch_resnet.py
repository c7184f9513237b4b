"""The PyTorch twins of resnet_jax's networks, for the baseline and parity
checks (`torch_baseline.py`, tests/test_convert.py).

- The CIFAR ResNets (6n+2 layers, option-A shortcuts) and the Wide ResNets
  (pre-activation wide blocks, 1x1 projections).
- ResNet-18 ... 152 with torchvision's module and parameter names, which is
  what `convert.from_torch` reads (written here: torchvision has no wheel that
  imports beside this machine's CPU torch).

`init_like_jax` gives any of them the JAX models' initialisers, so the two
frameworks start from the same distributions (not the same numbers).
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.extra = stride, cout - cin

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    short = x
    if self.stride > 1 or self.extra:  # Option A: subsample, zero-pad channels.
      short = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
    return F.relu(out + short)


class CifarResNet(nn.Module):

  def __init__(self, depth, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for i, width in enumerate((16, 32, 64)):
      for j in range(n):
        blocks.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    return self.fc(x.mean((2, 3)))


class WideBlock(nn.Module):
  """Pre-activation wide block (Zagoruyko & Komodakis 2016): BN-ReLU-conv
  twice, dropout between the convolutions, a 1x1 conv of the activated input
  where the shape changes."""

  def __init__(self, cin, cout, stride, dropout):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.dropout = nn.Dropout(dropout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                     if stride > 1 or cin != cout else None)

  def forward(self, x):
    pre = F.relu(self.bn1(x))
    out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
    return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
  """WRN-depth-k: (depth - 4) / 6 wide blocks per stage, widths 16k/32k/64k."""

  def __init__(self, depth, k, num_classes=10, dropout=0.0):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    blocks, cin = [], 16
    for i, width in enumerate((16 * k, 32 * k, 64 * k)):
      for j in range(n):
        blocks.append(WideBlock(cin, width, 2 if i > 0 and j == 0 else 1, dropout))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.bn_final = nn.BatchNorm2d(cin)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = F.relu(self.bn_final(self.blocks(self.conv1(x))))
    return self.fc(x.mean((2, 3)))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


LAYERS = {'resnet18': (BasicBlock, [2, 2, 2, 2]), 'resnet34': (BasicBlock, [3, 4, 6, 3]),
          'resnet50': (Bottleneck, [3, 4, 6, 3]), 'resnet101': (Bottleneck, [3, 4, 23, 3]),
          'resnet152': (Bottleneck, [3, 8, 36, 3])}


class ResNet(nn.Module):

  def __init__(self, name, num_classes, stem='imagenet'):
    super().__init__()
    block, layers = LAYERS[name]
    if stem == 'imagenet':
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
      self.maxpool = nn.Identity()
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.inplanes = 64
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], layers)):
      setattr(self, f'layer{i + 1}', self._make_layer(block, planes, n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, n, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    blocks = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    blocks += [block(self.inplanes, planes) for _ in range(1, n)]
    return nn.Sequential(*blocks)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


class BlurPoolConv2d(nn.Module):
  """FFCV's (ffcv-imagenet train_imagenet.py): a fixed depthwise
  [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16 blur, stride 1, zero padding 1, then
  the wrapped convolution. The filter is a buffer, not a parameter."""

  def __init__(self, conv: nn.Conv2d):
    super().__init__()
    filt = torch.tensor([[[[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]]]) / 16.0
    self.conv = conv
    self.register_buffer('blur_filter', filt.repeat(conv.in_channels, 1, 1, 1))

  def forward(self, x):
    blurred = F.conv2d(x, self.blur_filter, stride=1, padding=(1, 1),
                       groups=self.conv.in_channels, bias=None)
    return self.conv(blurred)


def apply_blurpool(net: nn.Module) -> nn.Module:
  """FFCV's rule: every Conv2d with stride > 1 and 16+ input channels gets
  `BlurPoolConv2d` (resnet_jax's `blurpool`, `layers.with_blurpool`)."""
  for name, child in net.named_children():
    if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
      setattr(net, name, BlurPoolConv2d(child))
    else:
      apply_blurpool(child)
  return net


class GroupBatchNorm2d(nn.BatchNorm2d):
  """resnet_jax's `bn_group_size` (`layers.GroupBatchNorm`): in training each
  group of `group_size` consecutive examples is normalised by its own
  statistics, and the running averages move towards the mean over the groups
  of what `nn.BatchNorm2d` on each group alone would record (its unbiased
  variance, as the twin's plain BatchNorm keeps; resnet_jax keeps flax's
  biased one). Evaluation is `nn.BatchNorm2d`'s."""

  def __init__(self, bn: nn.BatchNorm2d, group_size: int):
    super().__init__(bn.num_features, bn.eps, bn.momentum)
    self.load_state_dict(bn.state_dict())
    self.group_size = group_size

  def forward(self, x):
    if not self.training:
      return super().forward(x)
    b, c, h, w = x.shape
    groups = x.reshape(b // self.group_size, self.group_size, c, h, w)
    mean = groups.mean((1, 3, 4), keepdim=True)
    var = groups.var((1, 3, 4), unbiased=False, keepdim=True)
    y = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(b, c, h, w)
    with torch.no_grad():
      count = self.group_size * h * w
      self.running_mean.lerp_(mean.mean(0).flatten(), self.momentum)
      self.running_var.lerp_(var.mean(0).flatten() * count / (count - 1), self.momentum)
      self.num_batches_tracked += 1
    return y * self.weight[:, None, None] + self.bias[:, None, None]


def apply_bn_groups(net: nn.Module, group_size: int) -> nn.Module:
  """Every `nn.BatchNorm2d` of `net` -> `GroupBatchNorm2d` (same values)."""
  for name, child in net.named_children():
    if isinstance(child, nn.BatchNorm2d):
      setattr(net, name, GroupBatchNorm2d(child, group_size))
    else:
      apply_bn_groups(child, group_size)
  return net


def init_like_jax(net: nn.Module, zero_init_residual: bool = False) -> nn.Module:
  """The JAX models' initialisers: He normal (fan-out) convolutions, LeCun
  normal classifier (flax's truncated normal), zero bias; BatchNorm scale 1,
  offset 0, or with `zero_init_residual` scale 0 for the last BatchNorm of
  each residual branch (Goyal et al. 2017), as `models.create_model` does.

  Returns:
    `net`, initialised in place.
  """
  for m in net.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
  std = 1 / math.sqrt(net.fc.in_features) / .87962566103423978  # flax's truncated-normal scale
  nn.init.trunc_normal_(net.fc.weight, std=std, a=-2 * std, b=2 * std)
  nn.init.zeros_(net.fc.bias)
  if zero_init_residual:
    for m in net.modules():
      if isinstance(m, (BasicBlock, Bottleneck)):
        nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)
  return net


def build(model: str, num_classes: int = 10, dropout: float = 0.0, stem: str = 'cifar',
          zero_init_residual: bool = False, blurpool: bool = False,
          bn_group_size: int = 0) -> nn.Module:
  """The PyTorch twin of a resnet_jax model name, initialised as JAX does:
  ResNet-18 ... 152 (torchvision's layout, `stem` 'cifar' or 'imagenet'), the
  CIFAR ResNets (resnet20, 32, ..., option-A shortcuts) and the Wide ResNets
  (wrn16_8, ...); with `blurpool`, FFCV's BlurPool (`apply_blurpool`); with
  `bn_group_size`, BatchNorm over groups of examples (`apply_bn_groups`).

  Raises:
    ValueError: a model the baseline does not have.
  """
  def options(net):  # After the initialisation.
    net = apply_blurpool(net) if blurpool else net
    return apply_bn_groups(net, bn_group_size) if bn_group_size else net
  if model in LAYERS:  # Before the 6n+2 rule: resnet50 and resnet152 fit it too.
    return options(init_like_jax(ResNet(model, num_classes, stem), zero_init_residual))
  name = model.removeprefix('resnet')
  if name.isdigit() and int(name) > 2 and (int(name) - 2) % 6 == 0:
    return options(init_like_jax(CifarResNet(int(name), num_classes)))
  depth, _, k = model.removeprefix('wrn').partition('_')
  if model.startswith('wrn') and depth.isdigit() and k.isdigit() and \
      int(depth) > 4 and (int(depth) - 4) % 6 == 0:
    return options(init_like_jax(WideResNet(int(depth), int(k), num_classes, dropout)))
  raise ValueError(f'the PyTorch baseline has ResNet-18 ... 152 ({", ".join(LAYERS)}), '
                   f'the CIFAR ResNets (resnet20, 32, ...) and the Wide ResNets '
                   f'(wrn16_8, wrn28_10, ...), not {model!r}')
