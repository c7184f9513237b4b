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

The twin of `python -m resnet_jax.main` for ImageNet-style runs (any config
with `image_size`: ResNet-18 ... 152, random-resized crops decoded from the
files), with main's own flags, alone or as an experiment's program:

  python benchmarks/torch_baseline.py --config configs/imagenet.py:resnet18 \
      --workdir runs/torch_r18 --config.dataset=cifar10-jpeg --config.data_dir=DATA \
      --config.image_size=32
  python -m resnet_jax.experiment --program=benchmarks/torch_baseline.py \
      --config configs/imagenet.py:resnet18 --workdir exps/torch_r18 --seeds=0-2 ...

It reads the config as main does and uses resnet_jax's grain loader (the same
crops and flips for each step of a seed), learning-rate function, label
smoothing, weight-decay rule (`weight_decay_on`), BatchNorm momentum and
epsilon and groups (`bn_group_size`), zero-initialised residual branches,
BlurPool (FFCV's own module), evaluation crop, flip TTA and evaluation
cadence; it refuses the fields it does not implement (mixup, EMA, LARS, bf16,
...). See `train_config`.
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
from resnet_jax import paths
from resnet_jax.reporting import timing
import torch
import torch.nn.functional as F

from torch_resnet import build  # Also what resnet_jax.benchmark calls (torch_baseline.build).
import torch_resnet


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


def _decayed(name: str, p, on: str = 'kernels') -> bool:
  """resnet_jax's `weight_decay_on` rule for one torchvision-layout parameter:
  conv and dense kernels ('kernels'), every parameter ('all'), or FFCV's own
  test on the name ('ffcv', train_imagenet.py's create_optimizer)."""
  return {'kernels': p.ndim > 1, 'all': True, 'ffcv': 'bn' not in name}[on]


def _optimizer(net, lr, weight_decay, on='kernels', momentum=0.9, nesterov=False):
  """SGD with the decay added to the gradient before momentum (torch's
  `weight_decay`, optax's add_decayed_weights + sgd), on the parameters
  `_decayed` picks (resnet_jax's `weight_decay_on`)."""
  named = list(net.named_parameters())
  decay = [p for n, p in named if _decayed(n, p, on)]
  rest = [p for n, p in named if not _decayed(n, p, on)]
  return torch.optim.SGD([{'params': decay, 'weight_decay': weight_decay},
                          {'params': rest, 'weight_decay': 0.0}], lr=lr,
                         momentum=momentum, nesterov=nesterov)


def _normalizer(mean, std):
  """uint8 NHWC numpy -> float NCHW tensor, per-channel mean/std on [0, 1]."""
  mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
  std = torch.tensor(std).view(1, 3, 1, 1) * 255
  return lambda images: (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std


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
  to_tensor = _normalizer(mean, std)
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


# Config fields the twin does not implement, at the values that switch them off.
_NOT_IN_TWIN = {'dropout_rate': 0.0, 'half_precision': False, 'init_from': '',
                'validation_size': 0, 'augment_policy': '', 'cutout_size': 0,
                'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, 'ema_decay': 0.0,
                'optimizer': 'sgd', 'shortcut': ''}


def check_twin(config) -> None:
  """Refuses a config the twin cannot run as resnet_jax would.

  Raises:
    errors.UserError: naming the field and the value the twin needs.
  """
  from resnet_jax import errors
  if not config.get('image_size', 0):
    raise errors.UserError('the PyTorch twin trains runs with --config.image_size (files '
                           'decoded while training); for the in-memory CIFAR recipe use '
                           '--data DIR --workdir W')
  if config.model not in torch_resnet.LAYERS:
    raise errors.UserError(f'the PyTorch twin has {", ".join(torch_resnet.LAYERS)}, not '
                           f'--config.model={config.model}')
  for field, off in _NOT_IN_TWIN.items():
    if config.get(field, off) != off:
      raise errors.UserError(f'the PyTorch twin does not implement {field} '
                             f'(--config.{field}={config.get(field)!r}); set it to {off!r}')


def train_config(config, workdir: str) -> dict:
  """The PyTorch twin of `python -m resnet_jax.main` for a run with
  `image_size`: the same config read the same way, the same batches (resnet_jax's
  grain loader: the same files, random-resized crops and flips for each step
  of a seed), schedule (resnet_jax's own learning-rate function), loss (label
  smoothing), weight-decay rule, BatchNorm settings, evaluation crops and
  metrics files; only the initial weights (same distributions) and the
  arithmetic differ.

  A workdir holding a finished twin run is left alone; an unfinished one
  starts again from step 0 (the twin keeps no checkpoints).

  Returns:
    The last evaluation (eval_loss, eval_accuracy, eval_top5_accuracy, ...).
  """
  import jax
  from resnet_jax import errors
  from resnet_jax.data import datasets
  from resnet_jax.data import file_loader
  from resnet_jax.logs import log
  from resnet_jax.reporting import metrics_io
  from resnet_jax.training import loop
  from resnet_jax.training import run_setup
  from resnet_jax.training import train_state
  from resnet_jax.workdir import config_validation
  from resnet_jax.workdir import run_lock
  from resnet_jax.workdir import run_record
  check_twin(config)
  source = config_validation.validate(config)
  record = run_record.read(workdir)
  framework = f'torch {torch.__version__} eager'
  if record is not None and not record.get('framework', '').startswith('torch'):
    raise errors.UserError(f'{workdir} holds a {record.get("framework")} run; pass a new '
                           '--workdir for the PyTorch twin')
  if run_record.completed_step(workdir, record) is not None:
    log.info('%s holds a finished run: nothing to do', workdir)
    return {}
  run_lock.check_free(workdir)  # A busy workdir is refused before any reading.
  train = datasets.load_split(source, 'train', config.image_size)
  test = datasets.load_split(source, 'test', config.image_size)
  to_tensor = _normalizer(*datasets.normalization(source, train, config.image_size))
  num_steps = train_state.total_steps(config, len(train))
  steps_per_epoch = len(train) / config.batch_size
  run_setup.check_warmup(config, num_steps, steps_per_epoch)
  rates = np.asarray(jax.vmap(train_state.create_learning_rate_fn(
      config, num_steps, steps_per_epoch))(np.arange(num_steps)))  # float32, as in JAX.
  eval_at = loop.eval_steps(num_steps, config.batch_size, len(train),
                            config.eval_every_epochs)
  sizes = file_loader.Sizes(config.image_size, config.final_image_size,
                            config.resize_start_epoch, config.resize_end_epoch,
                            steps_per_epoch)
  workers = run_setup.file_workers(config)
  examples = file_loader.TrainExamples(train, config.batch_size, config.seed, sizes,
                                       (config.crop_min_area, 1.0), config.augment,
                                       order=config.get('file_order', 'permutation'))
  torch.manual_seed(config.seed)
  net = torch_resnet.build(config.model, source.num_classes, stem=config.stem,
                           zero_init_residual=config.zero_init_residual,
                           blurpool=config.get('blurpool', False),
                           bn_group_size=config.get('bn_group_size', 0))
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):  # flax's decay 0.9 is torch's momentum 0.1.
      m.momentum, m.eps = 1.0 - config.bn_momentum, config.bn_epsilon
  opt = _optimizer(net, float(rates[0]), config.weight_decay,
                   config.weight_decay_on, config.momentum, config.nesterov)
  lock = run_lock.Lock(workdir)  # Creates the workdir; held until the run ends.
  run_record.start_session(workdir, json.loads(config.to_json()), framework,
                           {'device_kind': 'cpu', 'platform': 'cpu', 'device_count': 1,
                            'process_count': 1, 'threads': torch.get_num_threads(),
                            'start_step': 0, 'num_steps': num_steps},
                           packages=('torch', 'numpy', 'pillow', 'jax', 'grain'))
  writer = metrics_io.MetricsWriter(workdir)
  skipped = {}
  log.info('PyTorch twin: %s on %s, %d steps of %d images at %d px (torch %s, %d threads)',
           config.model, config.dataset, num_steps, config.batch_size, config.image_size,
           torch.__version__, torch.get_num_threads())

  def evaluate():
    net.eval()
    sums = dict.fromkeys(('loss', 'correct', 'top5', 'count', 'flip_loss', 'flip_correct',
                          'flip_top5'), 0.0)
    batches = file_loader.iterate(file_loader.eval_dataset(
        test, config.eval_batch_size, run_setup.eval_size(config)), *workers)
    with torch.no_grad():
      for batch in batches:
        file_loader.report_skipped(skipped, batch.pop('skipped'))
        mask = torch.from_numpy(batch['mask'])
        x, y = to_tensor(batch['image'])[mask], torch.from_numpy(batch['label']).long()[mask]
        log_probs = F.log_softmax(net(x), -1)
        views = {'': log_probs}
        if config.flip_tta:  # The mean of the two views' probabilities, as eval_step.
          views['flip_'] = torch.logaddexp(log_probs, F.log_softmax(
              net(x.flip(3)), -1)) - math.log(2.0)
        for view, lp in views.items():
          sums[view + 'loss'] += F.nll_loss(lp, y, reduction='sum').item()
          sums[view + 'correct'] += (lp.argmax(1) == y).sum().item()
          top = lp.topk(min(5, lp.shape[1]), 1).indices
          sums[view + 'top5'] += (top == y[:, None]).any(1).sum().item()
        sums['count'] += len(y)
    batches.close()
    net.train()
    n = sums['count']
    return {f'{view}eval_{k}': sums[view + m] / n for view in [''] + ['flip_'] * config.flip_tta
            for k, m in (('loss', 'loss'), ('accuracy', 'correct'),
                         ('top5_accuracy', 'top5'))} | {'eval_examples': int(n)}

  loader = file_loader.TrainBatches(examples, num_steps, 0, *workers)
  net.train()
  window, window_start, eval_seconds, result = [], time.perf_counter(), 0.0, {}
  epoch_at = lambda step: step * config.batch_size / len(train)
  for step, batch in zip(range(num_steps), loader.map(range(num_steps))):
    file_loader.report_skipped(skipped, batch.pop('skipped'))
    for group in opt.param_groups:
      group['lr'] = float(rates[step])
    x, y = to_tensor(batch['image']), torch.from_numpy(batch['label']).long()
    opt.zero_grad(set_to_none=True)
    logits = net(x)
    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    loss.backward()
    opt.step()
    window.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
    done = step + 1
    if done % config.log_every_steps == 0 or done == num_steps:
      now = time.perf_counter()
      writer.write(done, {'train_loss': float(np.mean([w[0] for w in window])),
                          'train_accuracy': float(np.mean([w[1] for w in window])),
                          'learning_rate': float(f'{rates[step]:.6g}'),
                          'images_per_sec': len(window) * config.batch_size
                                            / (now - window_start - eval_seconds),
                          'epoch': epoch_at(done)}, total=num_steps)
      window, window_start, eval_seconds = [], now, 0.0
    if done in eval_at:
      eval_start = time.perf_counter()
      result = evaluate()
      writer.write(done, {**result, 'epoch': epoch_at(done)}, total=num_steps)
      eval_seconds += time.perf_counter() - eval_start
  loader.close()
  writer.close()
  run_record.end_session(workdir, {'final_step': num_steps,
                                   'eval_accuracy': result['eval_accuracy'],
                                   'skipped_files': sorted(skipped)})
  lock.release()
  return result


def _config_main() -> None:
  """`--config PATH[:PRESET] --workdir W [--config.FIELD=VALUE ...]`, as main."""
  from absl import flags
  from resnet_jax import config_files
  from resnet_jax import errors
  from resnet_jax import logs
  config = errors.define_config_flag(None, 'resnet_jax config file[:preset]')
  workdir = paths.define_flag('workdir', None, 'Where the run writes.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    if len(argv) > 1:
      raise errors.UserError(f'unexpected arguments {argv[1:]}; config fields go as '
                             '--config.FIELD=VALUE')
    logs.setup()
    train_config(paths.expand_config(config.value), workdir.value)

  errors.run_cli(main, prepare_argv=config_files.prepare_argv)


if __name__ == '__main__' and any(
    a in ('--config', '-config') or a.startswith(('--config=', '-config=')) for a in sys.argv):
  _config_main()
elif __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
  parser.add_argument('--data', type=paths.expand,
                      help='image-folder dataset to train on (NAME/train, NAME/test); '
                      'without it, time synthetic batches')
  parser.add_argument('--workdir', type=paths.expand,
                      help='where a training run writes (with --data)')
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
