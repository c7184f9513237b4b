"""An experiment's plan: sweep points x seeds -> runs, and the folder that keeps it.

An experiment folder holds one ordinary workdir per (sweep point, seed), named
after them (`label_smoothing=0.1,seed=3`), and `experiment.json`: the config,
the fixed overrides, the sweep, the seeds and each run's recipe. A second
invocation on the folder must plan the same runs with the same recipes
(runtime fields such as data_dir may change, as a resumed workdir allows);
anything else is refused with every difference listed.
"""

import dataclasses
import difflib
import functools
import itertools
import json
import os
import re
import sys
from typing import Optional

import ml_collections

from resnet_jax import config_files
from resnet_jax import errors
from resnet_jax import paths
from resnet_jax.reporting import metrics_io
from resnet_jax.workdir import config_fields
from resnet_jax.workdir import config_validation
from resnet_jax.workdir import run_record

FILE = 'experiment.json'


def parse_seeds(text: str) -> list:
  """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7' and '0-2,10' too, in the order given.

  Raises:
    errors.UserError: empty, malformed, negative, reversed or repeated.
  """
  seeds = []
  for part in (text or '').split(','):
    m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
    if not m or (m[2] is not None and int(m[2]) < int(m[1])):
      raise errors.UserError(
          f'--seeds={text!r} is not a seed list; pass e.g. --seeds=0-4 (five seeds), '
          '--seeds=0,3,7 or --seeds=0-2,10')
    seeds += range(int(m[1]), int(m[2] or m[1]) + 1)
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    raise errors.UserError(f'--seeds={text!r} names seed(s) {repeated} twice; list '
                           'each seed once')
  return seeds


def format_seeds(seeds: list) -> str:
  """[0, 1, 2, 5] -> '0-2,5' (the inverse of `parse_seeds`)."""
  parts, i = [], 0
  while i < len(seeds):
    j = i
    while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
      j += 1
    parts.append(str(seeds[i]) if i == j else f'{seeds[i]}-{seeds[j]}')
    i = j + 1
  return ','.join(parts)


def check_field(field: str, defaults: ml_collections.ConfigDict, what: str) -> None:
  """Refuses sweeping a field that is unknown, a runtime field, or the seed."""
  if field == 'seed':
    raise errors.UserError(f'{what} sweeps seed; give seeds as --seeds=0-4 instead')
  if field not in defaults:
    close = difflib.get_close_matches(field, list(defaults.keys()), n=3, cutoff=0.5)
    raise errors.UserError(
        f'{what} names no config field {field!r}' +
        (f'; nearest: {", ".join(close)}' if close else '') +
        '; python -m resnet_jax.main --help lists the fields')
  if field in config_fields.RUNTIME_FIELDS:
    raise errors.UserError(
        f'{what} sweeps {field}, a runtime field: it changes no result (a run may '
        f'change it on resume); sweep a recipe field, or set --config.{field} for all')


def _split_top_level(text: str) -> list:
  """'0,0.1' -> ['0', '0.1'] but '(0.5,0.75),(0.3,0.6)' keeps each tuple whole."""
  parts, depth, current = [], 0, ''
  for ch in text:
    depth += ch in '([' and 1 or ch in ')]' and -1 or 0
    if ch == ',' and depth == 0:
      parts.append(current)
      current = ''
    else:
      current += ch
  return parts + [current]


def parse_value(field: str, text: str, default):
  """A command-line value converted to the type of the field's default."""
  text = text.strip()
  try:
    if isinstance(default, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError
      return text.lower() in ('true', '1')
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
    if isinstance(default, (tuple, list)):
      import ast
      value = ast.literal_eval(text)
      return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  except (ValueError, SyntaxError):
    raise errors.UserError(f'--sweep value {text!r} of {field} is not a '
                           f'{type(default).__name__} like its default {default!r}; '
                           'fix the value') from None
  return paths.expand(text) if field in paths.CONFIG_FIELDS else text


def parse_sweeps(items: list, defaults: ml_collections.ConfigDict) -> dict:
  """['label_smoothing=0,0.1', 'model=resnet8,resnet20'] -> {field: [values]}
  (a grid), each field checked and each value typed like the field."""
  axes = {}
  for item in items:
    field, eq, values = item.partition('=')
    field = field.strip().removeprefix('config.')
    if not eq or not field or not values.strip():
      raise errors.UserError(f'--sweep={item!r} is not FIELD=V1,V2,...; pass e.g. '
                             '--sweep=label_smoothing=0,0.1')
    check_field(field, defaults, f'--sweep={item}')
    if field in axes:
      raise errors.UserError(f'--sweep gives {field} twice; give all its values in '
                             f'one --sweep={field}=V1,V2,...')
    parsed = [parse_value(field, v, defaults[field]) for v in _split_top_level(values)]
    if len(set(map(repr, parsed))) < len(parsed):
      raise errors.UserError(f'--sweep={item} repeats a value; list each value once')
    axes[field] = parsed
  return axes


def points_of(sweep, defaults: ml_collections.ConfigDict, what: str) -> list:
  """The sweep's points, [{field: value}]: a grid {field: [values]} expands
  to its product; a list of dicts (a config file's explicit points) is taken
  as is. No sweep is one point, {}."""
  if not sweep:
    return [{}]
  if isinstance(sweep, dict):
    fields = list(sweep)
    points = [dict(zip(fields, combo)) for combo in itertools.product(
        *(list(sweep[f]) for f in fields))]
  else:
    points = [dict(p) for p in sweep]
  for point in points:
    for field in point:
      check_field(field, defaults, what)
  return points


def run_name(point: dict, seed: int) -> str:
  """The folder of a run: 'label_smoothing=0.1,seed=3' (no '/', no spaces)."""
  def show(v):
    if isinstance(v, (tuple, list)):
      return '(' + ','.join(map(show, v)) + ')'
    return f'{v:g}' if isinstance(v, float) else str(v)
  parts = [f'{k}={show(v)}' for k, v in point.items()] + [f'seed={seed}']
  return re.sub(r'[^\w.=,()+-]', '_', ','.join(parts))


@dataclasses.dataclass
class Run:
  name: str
  seed: int
  point: dict
  recipe: dict  # The recipe fields of the run's config (JSON values).


def _json(value):
  return json.loads(json.dumps(value))


@dataclasses.dataclass
class Plan:
  """What an experiment runs: config + overrides, sweep points, seeds."""
  config: str       # The --config argument, PATH[:PRESET].
  overrides: dict   # --config.FIELD=VALUE given for every run.
  points: list      # [{field: value}], one per sweep point.
  seeds: list
  sweep: object = None  # As given: a grid {field: [values]} or explicit points.
  program: str = ''  # A script run instead of resnet_jax.main (absolute path).

  @functools.cached_property
  def _loaded(self) -> ml_collections.ConfigDict:
    """The config file with its preset, loaded once per plan."""
    return config_files.load(self.config)[0]

  def base_config(self) -> ml_collections.ConfigDict:
    """The config every run starts from (file, preset, overrides): a copy."""
    config = ml_collections.ConfigDict(self._loaded.to_dict())
    for field, value in self.overrides.items():
      config_validation.assign(config, field, value)
    return paths.expand_config(config)  # A config file's own `~/data` too.

  def run_config(self, run_point: dict, seed: int) -> ml_collections.ConfigDict:
    config = self.base_config()
    for field, value in run_point.items():
      config_validation.assign(config, field, value)
    config.seed = seed
    return config

  def runs(self) -> list:
    """Every run, sweep point by sweep point, seeds within a point."""
    base = json.loads(self.base_config().to_json())
    out = []
    for point in self.points:
      for seed in self.seeds:
        recipe = {k: base[k] for k in config_fields.RECIPE_FIELDS if k in base}
        recipe.update({k: _json(v) for k, v in point.items()}, seed=seed)
        out.append(Run(run_name(point, seed), seed, point, recipe))
    return out

  def validate(self) -> None:
    """Every run's config passes the checks `main` makes before any work
    (reads no images, writes nothing); the first failure names its run."""
    config_validation.validate(self.base_config())  # A mistake of every run.
    for run in self.runs():
      try:
        config_validation.validate(self.run_config(run.point, run.seed))
      except errors.UserError as e:
        raise errors.UserError(f'run {run.name}: {e}') from None

  def command(self, workdir: str, python: str = sys.executable) -> list:
    """`python -m resnet_jax.main` (or `python PROGRAM`, which takes main's
    flags) for one run of this plan, in `workdir`."""
    name = os.path.basename(os.path.normpath(workdir))
    run = next(r for r in self.runs() if r.name == name)
    fields = {**self.overrides, **run.point, 'seed': run.seed}
    program = [self.program] if self.program else ['-m', 'resnet_jax.main']
    return [python, *program, '--config', self.config,
            '--workdir', workdir] + [f'--config.{k}={_flag(v)}' for k, v in fields.items()
                                     if v is not None]

  def to_json(self) -> dict:
    return {'config': self.config, 'program': self.program,
            'overrides': _json(self.overrides),
            'sweep': _json(self.sweep), 'points': _json(self.points),
            'seeds': list(self.seeds),
            'runs': [dataclasses.asdict(r) for r in self.runs()]}

  def describe(self) -> str:
    """'2 sweep points x 4 seeds (0-3)'."""
    return (f'{len(self.points)} sweep point(s) x {len(self.seeds)} seed(s) '
            f'({format_seeds(self.seeds)})')


def _flag(value) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ', '.join(map(str, value)) + (',)' if len(value) == 1 else ')')
  return str(value)


def read(folder: str) -> Optional[dict]:
  """The stored plan of an experiment folder, or None."""
  path = os.path.join(folder, FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write(folder: str, plan: Plan, launches: Optional[list] = None,
          launch_options: Optional[dict] = None) -> None:
  """Writes experiment.json (atomically), keeping the launches recorded so far
  and, unless given, the launcher options (launcher, partition, ...)."""
  stored = read(folder) or {}
  record = {**plan.to_json(), 'created': stored.get('created', run_record.now()),
            'launches': launches if launches is not None else stored.get('launches', []),
            'launch_options': (launch_options if launch_options is not None
                               else stored.get('launch_options', {}))}
  os.makedirs(folder, exist_ok=True)
  metrics_io.write_json(os.path.join(folder, FILE), record)


def differences(stored: dict, plan: Plan) -> list:
  """What differs between a stored plan and `plan`: runs only in one of
  them, and recipe fields that differ in runs both have."""
  # A plan stored before `~` was expanded names the same paths.
  old = {r['name']: paths.expand_config(dict(r['recipe'])) for r in stored['runs']}
  new = {r.name: _json(r.recipe) for r in plan.runs()}
  out = []
  gone = [n for n in old if n not in new]
  added = [n for n in new if n not in old]
  if stored.get('program', '') != plan.program:
    out.append(f"program {stored.get('program') or 'resnet_jax.main'} -> "
               f"{plan.program or 'resnet_jax.main'}")
  if stored.get('seeds') != list(plan.seeds):
    out.append(f"seeds {format_seeds(stored['seeds'])} -> {format_seeds(plan.seeds)}")
  if _json(stored.get('sweep')) != _json(plan.sweep):
    out.append(f"sweep {_show_sweep(stored.get('sweep'))} -> {_show_sweep(plan.sweep)}")
  if gone:
    out.append(f'runs only in the stored plan: {", ".join(gone)}')
  if added:
    out.append(f'runs only in the new plan: {", ".join(added)}')
  changed = {}
  for name in (n for n in new if n in old):
    for field in sorted(set(old[name]) | set(new[name])):
      a, b = old[name].get(field), new[name].get(field)
      if a != b:
        changed.setdefault(field, set()).add((json.dumps(a), json.dumps(b)))
  for field, pairs in sorted(changed.items()):
    out.append(f'{field} ' + ', '.join(f'{a} -> {b}' for a, b in sorted(pairs)))
  return out


def _show_sweep(sweep) -> str:
  if not sweep:
    return 'none'
  if isinstance(sweep, dict):
    return ' '.join(f'{k}=' + ','.join(map(str, v)) for k, v in sweep.items())
  return f'{len(sweep)} explicit point(s)'


def check_same(folder: str, stored: dict, plan: Plan) -> None:
  """Refuses a plan that differs from the one `folder` holds.

  Raises:
    errors.UserError: listing every difference, with the two ways forward.
  """
  diffs = differences(stored, plan)
  if diffs:
    raise errors.UserError(
        f'{folder} holds an experiment with a different plan ({"; ".join(diffs)}); '
        f'rerun it with its own plan (python -m resnet_jax.experiment --workdir '
        f'{folder}), or pass a new --workdir for the new plan (results reads '
        'several experiment folders together)')
