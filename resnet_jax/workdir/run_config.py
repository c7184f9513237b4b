"""The config of the run a workdir holds, for commands given only `--workdir`.

`python -m resnet_jax.main --workdir W` (no `--config`) resumes or evaluates
the run in W with the config its run.json records: recipe, dataset and
data_dir need not be restated. `--config.FIELD=VALUE` flags still apply: a
runtime field (cadence, data_dir, devices) changes, a recipe field is refused.
"""

from typing import Optional

import ml_collections

from resnet_jax import errors
from resnet_jax import paths
from resnet_jax.workdir import config_fields
from resnet_jax.workdir import config_validation
from resnet_jax.workdir import run_record


def remembered(workdir: str, defaults: ml_collections.ConfigDict,
               overrides: dict) -> Optional[ml_collections.ConfigDict]:
  """The run's own config with `overrides` applied, or None for a new workdir.

  Args:
    workdir: the run's directory.
    defaults: the default config; gives fields the run's record predates and
      the types values are checked against.
    overrides: {field: value} given as `--config.FIELD=VALUE`.

  Raises:
    errors.UserError: listing every recipe field the overrides would change,
      with the way to keep the run or start a new one.
  """
  record = run_record.read(workdir)
  if not record or not record.get('config'):
    return None
  config = ml_collections.ConfigDict(defaults.to_dict())  # Unlocked copy.
  # A field the record predates takes the value the run had (`ADDED_LATER`),
  # which is not always today's default (file_order).
  for field, value in {**config_fields.ADDED_LATER, **record['config']}.items():
    if field in config:  # A field this version dropped: ignored.
      config_validation.assign(config, field, value)
  # A run recorded before `~` was expanded: `~/data` and /home/me/data are
  # one path.
  paths.expand_config(config)
  overrides = paths.expand_config(dict(overrides))
  refused = {f: (config[f], v) for f, v in sorted(overrides.items())
             if f in config_fields.RECIPE_FIELDS and config[f] != v}
  if refused:
    flags = ' '.join(f'--config.{f}' for f in refused)
    raise errors.UserError(
        f'{workdir} holds a run with a different recipe '
        f'({config_validation.describe_changes(refused)}); drop {flags} '
        f'to resume it, or pass a new --workdir for the new recipe '
        f'(--config.init_from={workdir} starts it from these weights)')
  for field, value in overrides.items():
    config[field] = value
  config.lock()
  return config
