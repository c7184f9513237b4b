"""PyTorch baseline for `python -m resnet_jax.benchmark --torch`.

The same CIFAR ResNet (6n+2 layers, option-A shortcuts, BatchNorm) and recipe
(SGD, momentum 0.9, weight decay 1e-4, cross-entropy) in PyTorch eager,
float32, on synthetic batches held in memory; throughput is the median over
timed windows after warm-up, as for the JAX side.

  python benchmarks/torch_baseline.py --model resnet20 --batch_size 128
"""

import argparse
import json
import platform

from resnet_jax import timing
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


def run(model: str, batch_size: int, windows: int = 5, steps: int = 10,
        warmup: int = 3) -> dict:
  """Train and eval images/s of the CIFAR ResNet `model` (e.g. 'resnet20')."""
  depth = int(model.removeprefix('resnet')) if model.removeprefix('resnet').isdigit() else 0
  if not depth or (depth - 2) % 6:
    raise ValueError(f'the PyTorch baseline has the CIFAR ResNets (resnet20, 32, ...), '
                     f'not {model!r}')
  torch.manual_seed(0)
  net = CifarResNet(depth)
  decay = [p for p in net.parameters() if p.ndim > 1]
  rest = [p for p in net.parameters() if p.ndim <= 1]
  opt = torch.optim.SGD([{'params': decay, 'weight_decay': 1e-4},
                         {'params': rest, 'weight_decay': 0.0}], lr=0.1, momentum=0.9)
  x = torch.randn(batch_size, 3, 32, 32)
  y = torch.randint(0, 10, (batch_size,))

  def train_window(n=steps):
    net.train()
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(net(x), y).backward()
      opt.step()

  def eval_window():
    net.eval()
    with torch.no_grad():
      for _ in range(steps):
        net(x)

  train_window(warmup)
  train_rate = timing.median_rate(train_window, steps * batch_size, windows)
  eval_window()
  eval_rate = timing.median_rate(eval_window, steps * batch_size, windows)
  return {'framework': f'torch {torch.__version__} eager', 'threads': torch.get_num_threads(),
          'python': platform.python_version(),
          'model': model, 'batch_size': batch_size,
          'train_images_per_sec': round(train_rate, 1),
          'eval_images_per_sec': round(eval_rate, 1)}


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  args = parser.parse_args()
  print(json.dumps(run(args.model, args.batch_size, args.windows, args.steps, args.warmup),
                   indent=1))
