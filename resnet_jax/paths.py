"""Paths a user gives, with `~` expanded once, where they enter.

The shell expands `~` only at the start of a word: `--workdir=~/runs/x` and
`--config.data_dir=~/data` reach the program as typed, and used as they are
they would make a folder named `~` in the current directory. Every command's
path flags, arguments and config path fields go through `expand` as they are
read, so what is used, logged and recorded (run.json, experiment.json) is
the expanded path.
"""

import os

from absl import flags

# The flags `define_flag` makes belong to the module that calls it (its
# --help lists them), not to this one.
flags.disclaim_key_flags()

# The config fields that hold a path.
CONFIG_FIELDS = ('data_dir', 'init_from')


def expand(path):
  """`path` with a leading `~` or `~user` expanded; None, '' and non-strings
  unchanged."""
  return os.path.expanduser(path) if isinstance(path, str) and path else path


def expand_config(config):
  """Expands the path fields of a config (a ConfigDict, locked or not, or a
  dict of some fields) in place.

  Returns:
    `config`.
  """
  for field in CONFIG_FIELDS:
    if field in config:
      config[field] = expand(config[field])
  return config


class _PathParser(flags.ArgumentParser):
  """A string flag's parser that expands `~`."""

  def parse(self, argument):
    return expand(argument)

  def flag_type(self) -> str:
    return 'string'


def define_flag(name: str, default, help_text: str) -> flags.FlagHolder:
  """`flags.DEFINE_string` for a path: its value has `~` expanded."""
  return flags.DEFINE(_PathParser(), name, default, help_text,
                      serializer=flags.ArgumentSerializer())
