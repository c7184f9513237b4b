"""Where `--config` files come from: the path given, or the copy of configs/
that ships inside the package, so the README's commands work from any folder."""

import importlib.util
import os

from resnet_jax import errors
from resnet_jax import paths

DEFAULT = 'cifar.py'


def shipped_dir() -> str:
  """The configs/ folder: the checkout's own (a clone or an editable install)
  or the copy installed as resnet_jax/configs (pyproject.toml maps it)."""
  package = os.path.dirname(os.path.abspath(__file__))
  for folder in (os.path.join(os.path.dirname(package), 'configs'),
                 os.path.join(package, 'configs')):
    if os.path.isfile(os.path.join(folder, DEFAULT)):
      return folder
  raise errors.UserError(f'no configs/ folder beside or inside {package}; reinstall '
                         'resnet_jax (pip install -e .) or pass --config with a full path')


def default_path() -> str:
  """The config `--config` means when omitted: the shipped configs/cifar.py."""
  return os.path.join(shipped_dir(), DEFAULT)


def default_or_none():
  """`default_path()`, or None when no configs/ folder is found (reported
  once a config is needed): the default of the commands' --config flag."""
  try:
    return default_path()
  except errors.UserError:
    return None


def load_default():
  """The default config (configs/cifar.py's `get_config()`), loaded from its file."""
  return load_module(default_path()).get_config()


def load_module(path: str):
  """The config file at `path` as a module (its `get_config`, maybe `get_sweep`)."""
  spec = importlib.util.spec_from_file_location(
      'resnet_jax_config_' + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(argument: str):
  """(config, module) of a `--config` value `PATH[:PRESET]`, as the flag loads it.

  Raises:
    errors.UserError: the file does not exist or the preset is unknown.
  """
  resolved = resolve(argument)
  path, _, preset = resolved.partition(':')
  module = load_module(path)
  try:
    config = module.get_config(preset) if preset else module.get_config()
  except ValueError as e:  # An unknown preset: the config file's own message.
    raise errors.UserError(f'{e}; pass --config {path}:NAME') from e
  return config, module


def prepare_argv(argv: list) -> list:
  """Rewrites a `--config PATH[:PRESET]` that does not exist here to the
  shipped copy (see `resolve`); other arguments pass unchanged."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg in ('--config', '-config') and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
    elif arg.startswith(('--config=', '-config=')):
      name, value = arg.split('=', 1)
      out[i] = f'{name}={resolve(value)}'
  return out


def resolve(argument: str) -> str:
  """Maps a `--config` value, `PATH[:PRESET]`, to a file that exists.

  A path that does not exist here but names a shipped config (`configs/cifar.py`
  run outside the checkout, or plain `cifar.py`) means the shipped copy; `~`
  is expanded.

  Returns:
    The argument to load.

  Raises:
    errors.UserError: when neither the path nor a shipped config matches.
  """
  path, colon, preset = argument.partition(':')
  path = paths.expand(path)
  if os.path.isfile(path):
    return path + colon + preset
  folder = shipped_dir()
  shipped = os.path.join(folder, os.path.basename(path))
  if os.path.dirname(path) in ('', 'configs') and os.path.isfile(shipped):
    return shipped + colon + preset
  known = ', '.join(sorted(f for f in os.listdir(folder) if f.endswith('.py')
                           and not f.startswith('_')))
  raise errors.UserError(f'config file {path} does not exist; the configs that ship '
                         f'with resnet_jax are {known} (pass configs/{DEFAULT}, from '
                         'any folder), or pass the path of your own')
