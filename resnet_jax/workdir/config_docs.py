"""docs/config.md and docs/presets.md, generated from the config fields
(`config_fields.FIELDS`) and the shipped configs' `PRESETS`/`SOURCES`.

  python -m resnet_jax.workdir.config_docs > docs/config.md
  python -m resnet_jax.workdir.config_docs presets > docs/presets.md
"""

import ml_collections

from resnet_jax.workdir import config_fields


def reference_markdown(defaults: ml_collections.ConfigDict) -> str:
  """docs/config.md: every field, its default and meaning, from `FIELDS`."""
  rows = [f'| `{k}` | `{defaults.get(k)!r}` | {v.replace("|", "/")} |'
          for k, v in config_fields.FIELDS.items()]
  def kind(k):
    if k in config_fields.RECIPE_FIELDS:
      return 'recipe (a resume refuses a change)'
    if k == 'input_pipeline':  # 'auto' resumes with the run's own kind.
      return ("runtime, but a resumed run keeps its kind: 'auto' follows it, the "
              'other kind is refused (it would draw other batches)')
    return 'runtime (a resume may change it)'
  kinds = [f'| `{k}` | {kind(k)} |' for k in config_fields.FIELDS]
  return '\n'.join([
      '# Config reference', '',
      'Generated from `resnet_jax/workdir/config_fields.py` (`FIELDS`) and the',
      'defaults of `configs/cifar.py`; `tests/test_docs.py` fails when it is stale.',
      'Regenerate: `python -m resnet_jax.workdir.config_docs > docs/config.md`.',
      'Any field is set as `--config.FIELD=VALUE`.', '',
      '| field | default | meaning |', '|---|---|---|', *rows, '',
      '## Which fields a resume may change', '',
      '| field | kind |', '|---|---|', *kinds, ''])


def preset_changes(module, name: str) -> dict:
  """The fields preset `name` of a config module sets to other than the default."""
  defaults = module.get_config()
  return {k: v for k, v in module.PRESETS[name].items() if defaults[k] != v}


def recipe_rows(module, name: str) -> list:
  """(field, the preset's value, the source's value, where, why) of preset
  `name` against its source's recipe (`RECIPES`), and whether they differ.

  Returns:
    [(field, ours, theirs, where, why, differs)]; for a field in parentheses
    (no config field) `ours` is '-' and it differs exactly when `why` is set
    ('(reported)', the source's result, never differs: `why` says whether
    this codebase has measured it).
  """
  config = module.get_config(name)
  rows = []
  for field, theirs, where, why in module.RECIPES[name]:
    if field.startswith('('):  # '(reported)': the source's number, not a difference.
      rows.append((field, '-', theirs, where, why, bool(why) and field != '(reported)'))
      continue
    ours = config[field]
    same = (tuple(ours) == tuple(theirs) if isinstance(theirs, tuple)
            else type(ours) is type(theirs) and ours == theirs)
    rows.append((field, ours, theirs, where, why, not same))
  return rows


def _value(v) -> str:
  if isinstance(v, tuple):
    return '(' + ', '.join(f'{x:.4g}' if isinstance(x, float) else repr(x) for x in v) + ')'
  return v if isinstance(v, str) and v == '-' else f'`{v!r}`' if not isinstance(v, str) or \
      v.replace('_', '').isalnum() else v


def fidelity_markdown(module, path: str) -> list:
  """Lines of docs/presets.md: each preset with `RECIPES` beside its source."""
  lines = ['## How each preset of ' + path + ' follows its source', '',
           'Every field of the source\'s recipe, its value here and there, and where the '
           'source says so; **differs** marks a difference, with the reason. A field in '
           'parentheses is not a config field (an initialiser, a filter, a format).', '']
  for name in module.RECIPES:
    rows = recipe_rows(module, name)
    lines += [f'### `{name}`: {module.SOURCES[name]}', '',
              f'{sum(r[5] for r in rows)} of {len(rows)} rows differ.', '',
              '| field | here | source | where | |', '|---|---|---|---|---|']
    for field, ours, theirs, where, why, differs in rows:
      note = f'**differs**: {why}' if differs else why or 'same'
      lines.append(f'| {field} | {_value(ours)} | {_value(theirs)} | {where} | {note} |')
    lines.append('')
  return lines


def presets_markdown(modules: dict) -> str:
  """docs/presets.md: every preset of the config files {'configs/NAME.py':
  module}, its source and the fields it sets, from `PRESETS` and `SOURCES`."""
  sections = []
  for path, module in modules.items():
    rows = []
    for name in module.PRESETS:
      changed = ', '.join(f'`{k}={v!r}`' for k, v in preset_changes(module, name).items())
      rows.append(f'| `{name}` | {module.SOURCES.get(name, "-")} | '
                  f'{changed or "(the defaults)"} |')
    sections += [f'## {path}', '', f'`--config {path}:NAME`; the defaults are its '
                 '`get_config()` (its docstring says which recipe).', '',
                 '| preset | source | fields it sets (beyond the defaults) |',
                 '|---|---|---|', *rows, '']
    if hasattr(module, 'RECIPES'):
      sections += fidelity_markdown(module, path)
  return '\n'.join([
      '# Presets', '',
      '[Back to the README](../README.md)', '',
      'Generated from the shipped configs (`PRESETS`, `SOURCES`); `tests/test_docs.py`',
      'fails when it is stale. Regenerate:', '',
      '```bash', 'python -m resnet_jax.workdir.config_docs presets > docs/presets.md',
      '```', '',
      'A preset is `--config CONFIG:NAME`; every field it does not list keeps the',
      "config file's default ([config.md](config.md) lists configs/cifar.py's), and",
      '`--config.FIELD=...` still overrides any of them. The start-up log names the',
      'preset and these fields.', '', *sections])


def shipped_presets() -> dict:
  """{'configs/NAME.py': module} of the shipped configs that have presets."""
  import os
  from resnet_jax import config_files
  return {f'configs/{name}': config_files.load_module(
      os.path.join(config_files.shipped_dir(), name)) for name in ('cifar.py', 'imagenet.py')}


if __name__ == '__main__':
  import sys
  from resnet_jax import config_files
  if sys.argv[1:] == ['presets']:
    print(presets_markdown(shipped_presets()), end='')
  else:
    print(reference_markdown(config_files.load_default()), end='')
