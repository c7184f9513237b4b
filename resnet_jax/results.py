r"""Rows of the README's Results table, read from run workdirs.

  python -m resnet_jax.results runs/r20 runs/torch_r20
  python -m resnet_jax.results --format=json runs/*
  python -m resnet_jax.results runs/          # every run inside runs/
  python -m resnet_jax.results exps/ls        # an experiment: one row per recipe
  python -m resnet_jax.results exps/ls --compare=1,2

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
trained with a validation split reports the test accuracy of its one look. A
run that lacks the metric shows `-`.

Groups (`--table=groups`; the default when a path is an experiment folder or
with --compare): runs that differ only in their seed (and runtime fields) are
one group, one row each: runs, n finished, mean ± std, the 95% interval of
the mean and min-max of the final evaluation (`--best`: each run's best), and
the runs not in those numbers (diverged, unfinished, missing the metric),
counted, never dropped. `--compare=I,J`: group J minus group I, its 95%
interval (paired over seeds when both ran the same seeds, else Welch), a
p-value, and a warning when n cannot tell the difference from noise. A PNG of
each group's test-accuracy curve (mean ± std against epoch) goes to --plot,
by default accuracy_bands.png inside a single experiment folder given.
"""

import json
import os
import statistics
import sys

from absl import flags

from resnet_jax import errors
from resnet_jax.experiments import groups as groups_lib
from resnet_jax.experiments import plan as plan_lib
from resnet_jax.experiments import run_status
from resnet_jax.experiments import statistics as group_stats
from resnet_jax import paths
from resnet_jax.reporting import metrics_io
from resnet_jax.workdir import run_record

# Not --json: resnet_jax.predict defines that, and absl flags are global.
_FORMAT = flags.DEFINE_enum('format', 'markdown', ['markdown', 'json'],
                            'Markdown table rows, or one JSON record per workdir.')

_METRIC = flags.DEFINE_string('metric', 'eval_accuracy',
                             'Which test accuracy to report (see above).')
_TABLE = flags.DEFINE_enum('table', 'auto', ['auto', 'runs', 'groups'],
                           'One row per run, or per recipe group; auto: groups for '
                           'experiment folders and --compare.')
_COMPARE = flags.DEFINE_string('compare', None, 'I,J: compare group J with group I '
                               '(the # column of the groups table).')
_BEST = flags.DEFINE_bool('best', False, "Groups: each run's best evaluation instead "
                          'of its final one.')
_PLOT = paths.define_flag('plot', None, 'Groups: where the accuracy bands PNG goes.')

COLUMNS = ('model', 'framework', 'recipe', 'steps', 'test accuracy (final / best)',
           'wall time', 'train img/s', 'device', 'data', 'date')


def _recipe(c: dict, seed: bool = True) -> str:
  length = (f"{c['num_train_steps']} steps" if c.get('num_train_steps', -1) > 0
            else f"{c['num_epochs']:g} epochs")
  optimizer = 'LARS' if c.get('optimizer') == 'lars' else 'SGD'
  per = f" per {c['lr_scale_batch']}" if c.get('lr_scale_batch') else ''
  parts = [length, f"batch {c['batch_size']}", f"{optimizer} lr {c['learning_rate']:g}{per}"]
  bounds = c.get('lr_boundaries') or ()
  warmup = (f"{c['warmup_epochs']:g} epochs" if c.get('warmup_epochs')
            else f"{c.get('warmup_steps', 0)} steps")
  if c.get('lr_schedule', 'piecewise') == 'cosine':
    parts.append(f"cosine, warm-up {warmup}")
  elif c.get('lr_schedule') == 'triangular':
    parts.append(f"triangular, peak at epoch {c.get('lr_peak_epoch', 2.0):g}")
  elif bounds:
    parts.append(f"x{c.get('lr_decay_factor', 0.1):g} at "
                 + '/'.join(f'{100 * b:g}%' for b in bounds))
    if c.get('warmup_epochs') or c.get('warmup_steps'):
      parts.append(f"{c.get('warmup_shape', 'constant')} warm-up {warmup}")
  parts.append(f"wd {c['weight_decay']:g}" + {'all': ' (all)', 'ffcv': ' (FFCV rule)'}.get(
      c.get('weight_decay_on'), ''))
  if c.get('image_size'):
    size = str(c['image_size']) + (f"->{c['final_image_size']}"
                                   if c.get('final_image_size') else '')
    parts.append(f'random-resized crop {size}+flip' if c.get('augment', True)
                 else f'centre crop {size}')
  elif c.get('augment', True):
    parts.append('crop+flip')
  extras = (('augment_policy', '{}'), ('cutout_size', 'Cutout {}'),
            ('mixup_alpha', 'mixup {:g}'), ('cutmix_alpha', 'CutMix {:g}'),
            ('label_smoothing', 'label smoothing {:g}'), ('ema_decay', 'EMA {:g}'),
            ('validation_size', '{} held out'))
  parts += [form.format(c[k]) for k, form in extras if c.get(k)]
  if seed and 'seed' in c:
    parts.append(f"seed {c['seed']}")
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
      # Top-5 beside it on runs of ImageNet-size images (image_size), where
      # it is the standard second number.
      'final_top5': (evals[-1].get(metric.replace('_accuracy', '_top5_accuracy'))
                     if evals and config.get('image_size') else None),
      'best_accuracy': max(l[metric] for l in evals) if evals else None,
      'wall_seconds': sum(s.get('wall_seconds', 0) for s in sessions),
      'complete': bool(finished), 'seed': config.get('seed'), 'config': config,
      'recorded': recorded,
      'status': run_status.of(workdir).kind,
      'curve': [(l['epoch'], l[metric]) for l in lines if metric in l and 'epoch' in l],
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
  if s.get('final_top5') is not None:
    accuracy += f", top-5 {pct(s['final_top5'])}"
  if s['metric'] != 'eval_accuracy':  # Say which weights and view.
    accuracy += f" ({s['metric']})"
  data = s['dataset'] + (f", {s['train_images']:,} train images"
                         if s.get('train_images') else '')
  cells = (s['model'], s['framework'], s['recipe'], str(s['steps']), accuracy, wall, rate,
           s['device'], data, s['date'])
  return '| ' + ' | '.join(cells) + ' |'


def expand(folders: list) -> list:
  """Workdirs: each path that holds a run, and for a folder of runs (`runs/`,
  an experiment) the runs directly inside it, sorted; an experiment's runs
  not started yet are included (`summarize` of them is `planned`)."""
  out = []
  for path in folders:
    if os.path.isfile(os.path.join(path, run_record.FILE)) or not os.path.isdir(path):
      out.append(path)  # A run, or a path `summarize` reports on.
      continue
    inside = sorted(os.path.join(path, n) for n in os.listdir(path)
                    if os.path.isfile(os.path.join(path, n, run_record.FILE)))
    stored = plan_lib.read(path)
    if stored:
      planned = [os.path.join(path, r['name']) for r in stored['runs']]
      inside = planned + [w for w in inside if w not in planned]
    out += inside or [path]
  return out


def planned(workdir: str) -> dict:
  """The summary of an experiment's run that has not started: its recipe
  from experiment.json, no accuracy."""
  stored = plan_lib.read(os.path.dirname(workdir))
  run = next(r for r in stored['runs'] if r['name'] == os.path.basename(workdir))
  return {'workdir': workdir, 'framework': 'jax', 'config': run['recipe'],
          'seed': run['seed'], 'model': run['recipe'].get('model'),
          'status': run_status.of(workdir).kind, 'final_accuracy': None,
          'best_accuracy': None, 'curve': [], 'recorded': [], 'complete': False}


def _summaries(workdirs: list, metric: str) -> list:
  out = []
  for w in workdirs:
    if run_record.read(w) is None and plan_lib.read(os.path.dirname(w)):
      out.append(planned(w))
    else:
      out.append(summarize(w, metric))
  return out


def _check_metric(rows: list, metric: str) -> None:
  """A metric no run records is a mistake; one some runs lack shows as '-'."""
  if any(r['final_accuracy'] is not None for r in rows):
    return
  recorded = sorted({k for r in rows for k in r['recorded']})
  if recorded:
    if len(rows) == 1:
      raise errors.UserError(f'{rows[0]["workdir"]} records no {metric}; its evaluations '
                             f'have {", ".join(recorded)}: pass one as --metric')
    raise errors.UserError(f'no run records {metric}; their evaluations have '
                           f'{", ".join(recorded)}: pass one as --metric')


def group_table(groups: list, best: bool) -> list:
  """Markdown lines: one row per group, then the recipe the groups share."""
  pct = lambda v: '-' if v is None else f'{100 * v:.2f}'
  key = 'best_accuracy' if best else 'final_accuracy'
  lines = ['| # | group | framework | model | runs | n | test accuracy % (mean ± std) | '
           '95% interval of the mean | min - max | seeds | not in n |',
           '|' + '---|' * 11]
  for i, g in enumerate(groups, 1):
    counted = _counted(g.runs, key)
    s = group_stats.summarize(r[key] for r in counted)
    mean = '-' if not s.n else pct(s.mean) + (f' ± {pct(s.std)}' if s.std is not None
                                              else '')
    interval = '-' if s.low is None else f'{pct(s.low)} - {pct(s.high)}'
    span = '-' if not s.n else f'{pct(s.min)} - {pct(s.max)}'
    seeds = plan_lib.format_seeds(sorted(r['seed'] for r in counted
                                         if isinstance(r.get('seed'), int)))
    top5 = [r['final_top5'] for r in counted if r.get('final_top5') is not None]
    if top5 and not best and len(top5) == s.n:  # ImageNet-size runs: top-5 too.
      t = group_stats.summarize(top5)
      mean += f' (top-5 {pct(t.mean)}' + (f' ± {pct(t.std)})' if t.std is not None
                                          else ')')
    lines.append(f"| {i} | {g.name} | {g.framework} | {g.runs[0].get('model')} | "
                 f"{len(g.runs)} | {s.n} | {mean} | {interval} | {span} | "
                 f"{seeds or '-'} | {_left_out(g.runs, counted)} |")
  return lines


def _counted(runs: list, key: str) -> list:
  """The runs a group's statistics count: complete, with the metric, and one
  per seed (the same recipe and seed read through several folders, copies,
  is one sample, not several)."""
  out, seeds = [], set()
  for r in runs:
    if r['status'] != run_status.COMPLETE or r[key] is None:
      continue
    if isinstance(r.get('seed'), int):
      if r['seed'] in seeds:
        continue
      seeds.add(r['seed'])
    out.append(r)
  return out


def _left_out(runs: list, counted: list) -> str:
  kinds = {}
  seeds, ids = {r.get('seed') for r in counted}, {id(r) for r in counted}
  for r in runs:
    if id(r) not in ids:  # By identity: a copy read twice is equal, not counted.
      kind = r['status']
      if kind == run_status.COMPLETE:
        kind = 'same seed again' if r.get('seed') in seeds else 'no metric'
      kinds.setdefault(kind, []).append(str(r.get('seed')))
  return '; '.join(f'{len(v)} {k} (seed {",".join(v)})' for k, v in kinds.items()) or '-'


def comparison_lines(groups: list, which: str, best: bool) -> list:
  """`--compare=I,J`: the difference of group J from group I, and a warning
  when the runs cannot tell it from noise."""
  try:
    i, j = (int(x) for x in which.split(','))
    a, b = groups[i - 1], groups[j - 1]
    if min(i, j) < 1 or i == j:
      raise ValueError
  except (ValueError, IndexError):
    raise errors.UserError(f'--compare={which} names no two groups; pass two numbers '
                           f'of the # column (1 to {len(groups)}), e.g. --compare=1,2') from None
  key = 'best_accuracy' if best else 'final_accuracy'
  values = lambda g: {r['seed']: 100 * r[key] for r in _counted(g.runs, key)}
  va, vb = values(a), values(b)
  title = f'{j} ({b.name}) - {i} ({a.name})'
  try:
    c = group_stats.compare(va, vb)
  except ValueError as e:
    return [f'{title}: not compared: {e}']
  how = (f'paired over seeds {plan_lib.format_seeds(sorted(va))}, n = {c.n_a}'
         if c.test == 'paired' else f"Welch's t-test, n = {c.n_a} and {c.n_b}")
  if c.no_spread:
    what = ('every paired difference is the same' if c.test == 'paired' else
            'each group gave one value on every seed')
    return [f'{title}: {c.difference:+.2f} points ({how}); not tested: {what}, and runs '
            'without spread cannot support a test (no interval, no p-value); run more '
            'seeds']
  lines = [f'{title}: {c.difference:+.2f} points, 95% interval [{c.low:+.2f}, '
           f'{c.high:+.2f}] ({how}); p = {c.p:.3g}']
  if not c.resolved:
    n = min(c.n_a, c.n_b)
    if c.seeds_needed and c.seeds_needed > n:
      more = (f'; about {c.seeds_needed} seeds per group would find a real difference of '
              'this size 80% of the time, if the spread stays as it is')
    elif c.seeds_needed:
      more = ('; at this spread n would usually find a real difference of this size, so '
              'the true one is likely smaller')
    else:
      more = ''
    lines.append(f'warning: n = {n} cannot tell this difference from noise (the '
                 f'interval includes 0){more}')
  return lines


def main(argv):
  folders = [paths.expand(p) for p in argv[1:]]
  if not folders:
    raise errors.UserError('no workdirs given; usage: python -m resnet_jax.results '
                           'WORKDIR...')
  rows = _summaries(expand(folders), _METRIC.value)
  _check_metric(rows, _METRIC.value)
  experiments = [p for p in folders if plan_lib.read(p)]
  grouped = _TABLE.value == 'groups' or (_TABLE.value == 'auto' and (
      experiments or _COMPARE.value))
  if _FORMAT.value == 'json':
    for row in rows:
      row.pop('curve', None)
    print(json.dumps(rows, indent=1, default=str))
    return
  if not grouped:
    print('| ' + ' | '.join(COLUMNS) + ' |')
    print('|' + '---|' * len(COLUMNS))
    for row in rows:
      print(markdown_row(row))
    for row in rows:
      print(f"{row['workdir']}: {row['command']}", file=sys.stderr)
    return
  groups = groups_lib.group(rows)
  for line in group_table(groups, _BEST.value):
    print(line)
  started = [r for g in groups for r in g.runs if 'recipe' in r]
  if len(groups) == 1 and started:
    print(f"\nRecipe: {_recipe(started[0]['config'], seed=False)}; "
          f"{_METRIC.value}, {'best' if _BEST.value else 'final'} evaluation of each run")
  else:
    print(f"\n{_METRIC.value}, {'best' if _BEST.value else 'final'} evaluation of each run")
  if _COMPARE.value:
    print()
    for line in comparison_lines(groups, _COMPARE.value, _BEST.value):
      print(line)
  plot = _PLOT.value or (os.path.join(experiments[0], 'accuracy_bands.png')
                         if len(experiments) == 1 and len(folders) == 1 else None)
  if plot:
    from resnet_jax.reporting import plots
    plots.draw_bands([(f'{i}: {g.name}', [r['curve'] for r in g.runs if r['curve']])
                      for i, g in enumerate(groups, 1)], plot, _METRIC.value)
    print(f'Accuracy bands: {plot}', file=sys.stderr)


if __name__ == '__main__':
  errors.run_cli(main)
