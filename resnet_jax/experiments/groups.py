"""Runs grouped by recipe: every recipe field but the seed, and the framework.

Two runs belong to one group when they would be the same run but for their
seed (runtime fields such as data_dir, cadence or device count never split a
group). JAX runs and the PyTorch twin's (`benchmarks/torch_baseline.py`) are
grouped alike, each in groups of its own framework, so the two compare as
two groups. A group is named by the fields that tell it apart from the
other groups shown (`label_smoothing=0.1`), or by its framework.
"""

import dataclasses
import json

from resnet_jax.workdir import config_fields

# Fields in the PyTorch twin's run.json that describe its data, not its recipe.
_NOT_RECIPE = {'seed', 'mean', 'std', 'data_dir'}


def framework_family(framework: str) -> str:
  """'jax 0.12.0' -> 'jax'; 'torch 2.13.0+cpu eager' -> 'torch'."""
  return (framework or '?').split()[0]


def recipe_key(config: dict, framework: str) -> tuple:
  """What must match for two runs to be seeds of one recipe."""
  fields = {k: v for k, v in config.items()
            if k not in _NOT_RECIPE and k not in config_fields.RUNTIME_FIELDS}
  if framework_family(framework) == 'jax':
    # Fields older runs lack count with the value they had implicitly.
    fields = {**config_fields.ADDED_LATER, **fields}
    fields = {k: v for k, v in fields.items() if k in config_fields.RECIPE_FIELDS}
  return (framework_family(framework),
          json.dumps(fields, sort_keys=True, default=str))


@dataclasses.dataclass
class Group:
  key: tuple
  runs: list           # The runs' summaries (dicts with 'seed', 'status', ...).
  name: str = ''

  @property
  def recipe(self) -> dict:
    return json.loads(self.key[1])

  @property
  def framework(self) -> str:
    return self.key[0]


def group(summaries: list) -> list:
  """Groups run summaries (each with 'config' and 'framework') by recipe, in
  the order their first runs come, and names each group."""
  found = {}
  for s in summaries:
    key = recipe_key(s['config'], s['framework'])
    found.setdefault(key, Group(key, [])).runs.append(s)
  out = list(found.values())
  _name(out)
  return out


def _name(groups: list) -> None:
  """Names each group by the fields (all groups have) whose values differ."""
  if len(groups) == 1:
    groups[0].name = 'all runs'
    return
  recipes = [g.recipe for g in groups]
  common = sorted(set.intersection(*(set(r) for r in recipes)))
  varying = [k for k in common
             if len({json.dumps(r[k], sort_keys=True) for r in recipes}) > 1]
  frameworks = len({g.framework for g in groups}) > 1
  for g in groups:
    parts = ([g.framework] if frameworks else []) + [
        f'{k}={_show(g.recipe[k])}' for k in varying]
    g.name = ', '.join(parts) or g.framework


def _show(value) -> str:
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, list):
    return '(' + ','.join(_show(v) for v in value) + ')'
  return str(value)
