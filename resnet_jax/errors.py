"""The error a user can fix: reported as one line, never as a traceback."""

import sys

from absl import app
from absl import flags


class UserError(Exception):
  """A mistake in the command, config, data or workdir; the message says the fix."""


class Stopped(Exception):
  """The run stopped early (a signal, a diverged loss); the message says why."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def run_cli(main_fn) -> None:
  """Runs an absl main: `UserError` is one line and exit code 2, `Stopped` one
  line and its own code; neither prints a traceback."""
  def wrapped(argv):
    try:
      main_fn(argv)
    except UserError as e:
      _fail(str(e))
    except Stopped as e:
      print(f'stopped: {e}', file=sys.stderr)
      sys.exit(e.exit_code)
  app.run(wrapped, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl's flag parsing, with every mistake reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e}; --helpfull lists the flags')
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for --config.FIELD naming no field.
    field = str(e).strip('"\'')
    given = [a for a in argv if a.startswith(f'--config.{field}')]
    _fail(f'the config has no field {field!r} ({" ".join(given) or field}); '
          'configs/cifar.py lists the fields')


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)
