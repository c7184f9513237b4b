"""PyTorch baseline: throughput for `python -m resnet_jax.benchmark --torch`,
and full training runs on an image-folder dataset.

The same networks (the CIFAR ResNets: 6n+2 layers, option-A shortcuts; the
Wide ResNets: pre-activation wide blocks, 1x1 projections; BatchNorm, He-normal
fan-out convolutions) and recipe (SGD, momentum 0.9, weight decay 1e-4 on the
kernels, cross-entropy) in PyTorch eager, float32 (bfloat16 autocast with --bf16).

Throughput, on synthetic batches held in memory (the median over timed
windows after warm-up, as for the JAX side):

  python benchmarks/torch_baseline.py --model resnet20 --batch_size 128

Training, with `--data` (an image-folder dataset, `NAME/train/<class>/*`):

  python benchmarks/torch_baseline.py --data DIR/cifar10-jpeg --workdir runs/torch_r20 \
      --epochs 10

The training images are decoded by resnet_jax's own reader and batched by its
host pipeline's `TrainStream` (same seed: the same example order and the same
crop and flip draws as `python -m resnet_jax.main --config.input_pipeline=host`;
the default device pipeline draws from the same distributions with
`jax.random`), normalised with the mean/std measured on
the training split, and the learning rate is divided by 10 at 50% and 75% of
the run. So the two frameworks see identical pixels and batches; only the
initial weights and the arithmetic differ. The workdir gets `metrics.jsonl` and
`run.json` in resnet_jax's format, which `python -m resnet_jax.results` reads.
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
from resnet_jax.reporting import timing
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
    _init_like_jax(self)

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
    _init_like_jax(self)

  def forward(self, x):
    x = F.relu(self.bn_final(self.blocks(self.conv1(x))))
    return self.fc(x.mean((2, 3)))


def _init_like_jax(net: nn.Module) -> None:
  """The JAX models' initialisers: He normal (fan-out) convolutions, LeCun
  normal classifier, zero bias; BatchNorm scale 1, offset 0."""
  for m in net.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
  std = 1 / math.sqrt(net.fc.in_features) / .87962566103423978  # flax's truncated-normal scale
  nn.init.trunc_normal_(net.fc.weight, std=std, a=-2 * std, b=2 * std)
  nn.init.zeros_(net.fc.bias)


def build(model: str, num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
  """The PyTorch twin of a resnet_jax model name: the CIFAR ResNets
  (resnet20, 32, ..., option-A shortcuts) and the Wide ResNets (wrn16_8, ...).

  Raises:
    ValueError: a model the baseline does not have.
  """
  name = model.removeprefix('resnet')
  if name.isdigit() and int(name) > 2 and (int(name) - 2) % 6 == 0:
    return CifarResNet(int(name), num_classes)
  depth, _, k = model.removeprefix('wrn').partition('_')
  if model.startswith('wrn') and depth.isdigit() and k.isdigit() and \
      int(depth) > 4 and (int(depth) - 4) % 6 == 0:
    return WideResNet(int(depth), int(k), num_classes, dropout)
  raise ValueError(f'the PyTorch baseline has the CIFAR ResNets (resnet20, 32, ...) '
                   f'and the Wide ResNets (wrn16_8, wrn28_10, ...), not {model!r}')


def device() -> torch.device:
  """CUDA when present (the comparison a GPU user makes), else the CPU."""
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def run(model: str, batch_size: int, windows: int = 5, steps: int = 10,
        warmup: int = 3, bf16: bool = False) -> dict:
  """Train and eval images/s of `model` (e.g. 'resnet20', 'wrn16_8'),
  on `device()`: on a GPU with its usual fast settings (channels_last memory
  layout, cuDNN autotuning) and, with `bf16`, bfloat16 autocast."""
  torch.manual_seed(0)
  dev = device()
  layout = torch.channels_last if dev.type == 'cuda' else torch.contiguous_format
  torch.backends.cudnn.benchmark = True
  net = build(model).to(dev, memory_format=layout)
  opt = _optimizer(net, 0.1, 1e-4)
  x = torch.randn(batch_size, 3, 32, 32, device=dev).contiguous(memory_format=layout)
  y = torch.randint(0, 10, (batch_size,), device=dev)
  autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
  sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)

  def train_window(n=steps):
    net.train()
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = F.cross_entropy(net(x), y)
      loss.backward()
      opt.step()
    sync()  # The window ends when the device is done.

  def eval_window():
    net.eval()
    with torch.no_grad(), autocast():
      for _ in range(steps):
        net(x)
    sync()

  train_window(warmup)
  train_rate = timing.median_rate(train_window, steps * batch_size, windows)
  eval_window()
  eval_rate = timing.median_rate(eval_window, steps * batch_size, windows)
  name = torch.cuda.get_device_name() if dev.type == 'cuda' else platform.processor() or 'cpu'
  return {'framework': f'torch {torch.__version__} eager', 'threads': torch.get_num_threads(),
          'python': platform.python_version(), 'device': dev.type, 'device_name': name,
          'dtype': 'bfloat16' if bf16 else 'float32',
          'memory_format': 'channels_last' if dev.type == 'cuda' else 'contiguous',
          'model': model, 'batch_size': batch_size,
          'train_images_per_sec': round(train_rate, 1),
          'eval_images_per_sec': round(eval_rate, 1)}


def _optimizer(net, lr, weight_decay):
  decay = [p for p in net.parameters() if p.ndim > 1]
  rest = [p for p in net.parameters() if p.ndim <= 1]
  return torch.optim.SGD([{'params': decay, 'weight_decay': weight_decay},
                          {'params': rest, 'weight_decay': 0.0}], lr=lr, momentum=0.9)


def train(data: str, workdir: str, model: str = 'resnet20', epochs: float = 10.0,
          batch_size: int = 128, lr: float = 0.1, weight_decay: float = 1e-4,
          seed: int = 0, eval_batch_size: int = 500, log_every: int = 100) -> dict:
  """Trains on the image-folder dataset `data` and tests after every epoch.

  Returns:
    The last evaluation: eval_loss, eval_accuracy, eval_examples.
  """
  from resnet_jax.data import image_folder
  from resnet_jax.data import input_pipeline
  from resnet_jax.reporting import metrics_io
  from resnet_jax.workdir import run_record
  if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    raise SystemExit(f'error: {workdir} already holds a run; pass a new --workdir')
  build(model)  # A bad name fails before the data is read.
  started = time.perf_counter()
  train_split = image_folder.load_split(data, 'train')
  test = image_folder.load_split(data, 'test')
  mean, std = image_folder.mean_std(train_split.images)
  to_tensor = lambda images: ((torch.from_numpy(images).permute(0, 3, 1, 2).float()
                               - torch.tensor(mean).view(1, 3, 1, 1) * 255)
                              / (torch.tensor(std).view(1, 3, 1, 1) * 255))
  n = len(train_split)
  steps = max(1, round(epochs * n / batch_size))
  boundaries = [round(0.5 * steps), round(0.75 * steps)]
  stream = input_pipeline.TrainStream(train_split, batch_size, seed, True)
  torch.manual_seed(seed)
  net = build(model, len(train_split.class_names))
  opt = _optimizer(net, lr, weight_decay)
  os.makedirs(workdir, exist_ok=True)
  config = dict(model=model, dataset=os.path.basename(os.path.normpath(data)),
                data_dir=os.path.dirname(os.path.normpath(data)), batch_size=batch_size,
                num_epochs=epochs, num_train_steps=-1, learning_rate=lr,
                lr_boundaries=[0.5, 0.75], lr_decay_factor=0.1, momentum=0.9,
                weight_decay=weight_decay, augment=True, seed=seed, mean=mean, std=std)
  run_record.start_session(
      workdir, config, f'torch {torch.__version__} eager',
      {'device_kind': 'cpu', 'platform': 'cpu', 'device_count': 1,
       'process_count': 1, 'threads': torch.get_num_threads()},
      packages=('torch', 'numpy', 'pillow'))
  writer = metrics_io.JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))

  def evaluate():
    net.eval()
    loss = correct = 0.0
    with torch.no_grad():
      for i in range(0, len(test), eval_batch_size):
        logits = net(to_tensor(test.images[i:i + eval_batch_size]))
        labels = torch.from_numpy(test.labels[i:i + eval_batch_size]).long()
        loss += F.cross_entropy(logits, labels, reduction='sum').item()
        correct += (logits.argmax(1) == labels).sum().item()
    net.train()
    return {'eval_loss': loss / len(test), 'eval_accuracy': correct / len(test),
            'eval_examples': len(test)}

  net.train()
  window, window_start, result = [], time.perf_counter(), None
  eval_seconds = 0.0
  for step in range(steps):
    rate = lr * 0.1 ** sum(step >= b for b in boundaries)
    for group in opt.param_groups:
      group['lr'] = rate
    batch = stream.batch(step)
    x, y = to_tensor(batch['image']), torch.from_numpy(batch['label']).long()
    opt.zero_grad(set_to_none=True)
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    window.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
    done = step + 1
    if done % log_every == 0 or done == steps:
      now = time.perf_counter()
      writer.write({'step': done, 'train_loss': float(np.mean([w[0] for w in window])),
                    'train_accuracy': float(np.mean([w[1] for w in window])),
                    'learning_rate': rate,
                    'images_per_sec': len(window) * batch_size / (now - window_start
                                                                  - eval_seconds),
                    'epoch': stream.epoch_at(done)})
      window, window_start, eval_seconds = [], now, 0.0
    if (done * batch_size) // n > (step * batch_size) // n or done == steps:
      eval_start = time.perf_counter()
      result = evaluate()
      writer.write({'step': done, **result, 'epoch': stream.epoch_at(done)})
      eval_seconds += time.perf_counter() - eval_start
      print(f'step {done}/{steps}: test accuracy {100 * result["eval_accuracy"]:.2f}%',
            file=sys.stderr, flush=True)
  run_record.end_session(workdir, {'final_step': steps,
                                   'eval_accuracy': result['eval_accuracy']})
  print(f'{time.perf_counter() - started:.0f} s', file=sys.stderr)
  return result


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
  parser.add_argument('--data', help='image-folder dataset to train on (NAME/train, '
                      'NAME/test); without it, time synthetic batches')
  parser.add_argument('--workdir', help='where a training run writes (with --data)')
  parser.add_argument('--epochs', type=float, default=10.0)
  parser.add_argument('--learning_rate', type=float, default=0.1)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  try:
    build(args.model)
  except ValueError as e:
    parser.error(str(e))  # One line and exit code 2.
  if args.data:
    if not args.workdir:
      parser.error('--data needs --workdir')
    print(json.dumps(train(args.data, args.workdir, args.model, args.epochs,
                           args.batch_size, args.learning_rate, seed=args.seed)))
  else:
    print(json.dumps(run(args.model, args.batch_size, args.windows, args.steps,
                         args.warmup, args.bf16), indent=1))
