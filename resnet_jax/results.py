r"""Rows of the README's Results table, read from run workdirs.

  python -m resnet_jax.results runs/r20 runs/torch_r20
  python -m resnet_jax.results --format=json runs/*
  python -m resnet_jax.results runs/          # every run inside runs/

Reads each workdir's `run.json` (config, devices, sessions) and
`metrics.jsonl` (evaluations, training speed); works for resnet_jax runs and
for the PyTorch baseline's (`benchmarks/torch_baseline.py --data`), which
write the same two files. Prints one Markdown row per workdir:

  model | framework | recipe | steps | final / best test accuracy | wall time |
  train images/s | device | data | date

Wall time is the sum of the run's sessions (start-up, compilation and
evaluation included); images/s is the median of the logged training
intervals (evaluation excluded).

`--metric` picks the accuracy: `eval_accuracy` (raw weights) by default, or
e.g. `ema_eval_accuracy`, `flip_eval_accuracy`, `ema_flip_eval_accuracy`.
A run's `eval.json` (`--mode=eval`) counts as its final evaluation, so a run
trained with a validation split reports the test accuracy of its one look.
"""

import json
import os
import statistics
import sys

from absl import flags

from resnet_jax import errors
from resnet_jax.reporting import metrics_io
from resnet_jax.workdir import run_record

# Not --json: resnet_jax.predict defines that, and absl flags are global.
_FORMAT = flags.DEFINE_enum('format', 'markdown', ['markdown', 'json'],
                            'Markdown table rows, or one JSON record per workdir.')

_METRIC = flags.DEFINE_string('metric', 'eval_accuracy',
                             'Which test accuracy to report (see above).')

COLUMNS = ('model', 'framework', 'recipe', 'steps', 'test accuracy (final / best)',
           'wall time', 'train img/s', 'device', 'data', 'date')


def _recipe(c: dict) -> str:
  length = (f"{c['num_train_steps']} steps" if c.get('num_train_steps', -1) > 0
            else f"{c['num_epochs']:g} epochs")
  parts = [length, f"batch {c['batch_size']}", f"SGD lr {c['learning_rate']:g}"]
  bounds = c.get('lr_boundaries') or ()
  if c.get('lr_schedule', 'piecewise') == 'cosine':
    parts.append(f"cosine, warm-up {c['warmup_steps']} steps")
  elif bounds:
    parts.append(f"x{c.get('lr_decay_factor', 0.1):g} at "
                 + '/'.join(f'{100 * b:g}%' for b in bounds))
  parts.append(f"wd {c['weight_decay']:g}")
  if c.get('augment', True):
    parts.append('crop+flip')
  extras = (('augment_policy', '{}'), ('cutout_size', 'Cutout {}'),
            ('mixup_alpha', 'mixup {:g}'), ('cutmix_alpha', 'CutMix {:g}'),
            ('label_smoothing', 'label smoothing {:g}'), ('ema_decay', 'EMA {:g}'),
            ('validation_size', '{} held out'))
  parts += [form.format(c[k]) for k, form in extras if c.get(k)]
  return ', '.join(parts)


def _device(session: dict) -> str:
  if session.get('platform') == 'cpu' or session.get('device_kind') == 'cpu':
    cores = session.get('cpu_cores')
    return f"CPU {session.get('host_cpu', '?')}" + (f', {cores} core(s)' if cores else '')
  return f"{session.get('device_count', 1)}x {session.get('device_kind', '?')}"


def summarize(workdir: str, metric: str = 'eval_accuracy') -> dict:
  """The table's facts about one run.

  Raises:
    errors.UserError: `workdir` has no run.json or metrics.jsonl.
  """
  record = run_record.read(workdir)
  lines = metrics_io.read_lines(workdir)
  if record is None or not lines:
    raise errors.UserError(f'{workdir} has no run.json and metrics.jsonl; pass the '
                           'workdir of a run')
  evals = [l for l in lines if metric in l]
  path = os.path.join(workdir, 'eval.json')
  final = {}
  if os.path.exists(path):
    with open(path) as f:
      final = json.load(f)
    if metric in final and (not evals or final['step'] >= evals[-1]['step']):
      evals.append(final)
  recorded = sorted({k for l in lines + [final] for k in l
                     if k.endswith('_accuracy') and not k.startswith('train')})
  if not evals and recorded:
    raise errors.UserError(f'{workdir} records no {metric}; its evaluations have '
                           f'{", ".join(recorded)}: pass one as --metric')
  rates = [l['images_per_sec'] for l in lines if 'images_per_sec' in l]
  sessions = record['sessions']
  config = record['config']
  # The training split's size, from any line that has both step and epoch:
  # a subset of a dataset shows as one.
  sized = [l for l in lines if l.get('epoch') and 'train_loss' in l]
  train_images = (round(sized[-1]['step'] * config['batch_size'] / sized[-1]['epoch'])
                  if sized else None)
  finished = [s for s in sessions if 'final_step' in s]
  return {
      'workdir': workdir, 'model': config['model'], 'framework': record['framework'],
      'recipe': _recipe(config),
      'steps': max((l['step'] for l in lines), default=0),
      'metric': metric,
      'final_accuracy': evals[-1][metric] if evals else None,
      'best_accuracy': max(l[metric] for l in evals) if evals else None,
      'wall_seconds': sum(s.get('wall_seconds', 0) for s in sessions),
      'complete': bool(finished),
      'images_per_sec': statistics.median(rates) if rates else None,
      'device': _device(sessions[-1]), 'dataset': config['dataset'],
      'train_images': train_images,
      'date': sessions[0]['started'][:10], 'command': sessions[0]['command'],
  }


def markdown_row(s: dict) -> str:
  pct = lambda v: '-' if v is None else f'{100 * v:.2f}%'
  wall = f"{s['wall_seconds'] / 60:.1f} min" + ('' if s['complete'] else ' (unfinished)')
  rate = '-' if s['images_per_sec'] is None else f"{s['images_per_sec']:.0f}"
  accuracy = f"{pct(s['final_accuracy'])} / {pct(s['best_accuracy'])}"
  if s['metric'] != 'eval_accuracy':  # Say which weights and view.
    accuracy += f" ({s['metric']})"
  data = s['dataset'] + (f", {s['train_images']:,} train images"
                         if s.get('train_images') else '')
  cells = (s['model'], s['framework'], s['recipe'], str(s['steps']), accuracy, wall, rate,
           s['device'], data, s['date'])
  return '| ' + ' | '.join(cells) + ' |'


def expand(paths: list) -> list:
  """Workdirs: each path that holds a run, and for a folder of runs (`runs/`)
  the runs directly inside it, sorted."""
  out = []
  for path in paths:
    if os.path.isfile(os.path.join(path, run_record.FILE)) or not os.path.isdir(path):
      out.append(path)  # A run, or a path `summarize` reports on.
      continue
    inside = sorted(os.path.join(path, n) for n in os.listdir(path)
                    if os.path.isfile(os.path.join(path, n, run_record.FILE)))
    out += inside or [path]
  return out


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise errors.UserError('no workdirs given; usage: python -m resnet_jax.results '
                           'WORKDIR...')
  rows = [summarize(w, _METRIC.value) for w in expand(workdirs)]
  if _FORMAT.value == 'json':
    print(json.dumps(rows, indent=1))
    return
  print('| ' + ' | '.join(COLUMNS) + ' |')
  print('|' + '---|' * len(COLUMNS))
  for row in rows:
    print(markdown_row(row))
  for row in rows:
    print(f"{row['workdir']}: {row['command']}", file=sys.stderr)


if __name__ == '__main__':
  errors.run_cli(main)
