"""The error a user can fix: reported as one line, never as a traceback."""

import re
import sys

from absl import app
from absl import flags


class UserError(Exception):
  """A mistake in the command, config, data or workdir; the message says the fix."""


class Stopped(Exception):
  """The run stopped early (a signal, a diverged loss); the message says why.

  `every_process`: every process of a multi-process run stops here, at the
  same step (so they can still meet in a collective).
  """

  def __init__(self, message: str, exit_code: int, every_process: bool = False):
    super().__init__(message)
    self.exit_code = exit_code
    self.every_process = every_process


def run_cli(main_fn, prepare_argv=None) -> None:
  """Runs an absl main: `UserError` is one line and exit code 2, `Stopped` one
  line and its own code, Ctrl-C one line and 130; none prints a traceback.

  Args:
    main_fn: the absl main, called with the arguments flags left.
    prepare_argv: optional argv -> argv, run before flag parsing (may raise
      `UserError`).
  """
  def wrapped(argv):
    try:
      main_fn(argv)
    except UserError as e:
      _fail(str(e))
    except OSError as e:
      # ml_collections loads a --config file lazily, at its first use.
      if 'config file' not in str(e):
        raise
      _fail(_flag_error(str(e)))
    except Stopped as e:
      _line(f'stopped: {e}')
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      # Ctrl-C where no handler of the command's own is installed (training
      # installs one and checkpoints): a stop, not a crash.
      _line('stopped: interrupted (SIGINT)')
      sys.exit(130)
  def parse(argv):
    if prepare_argv:
      try:
        argv = prepare_argv(argv)
      except UserError as e:
        _fail(str(e))
    return _parse_flags(argv)
  app.run(wrapped, flags_parser=parse)


def _parse_flags(argv):
  """absl's flag parsing, with every mistake reported as one line."""
  try:
    rest = flags.FLAGS(argv)
    if 'config' in flags.FLAGS:
      # ml_collections loads a default --config file (and applies the
      # --config.FIELD overrides) lazily: force it here, where a mistake
      # becomes the same one line as with an explicit --config.
      flags.FLAGS['config'].value  # pylint: disable=pointless-statement
    return rest
  except flags.Error as e:
    _fail(_flag_error(str(e)))
  except (AttributeError, KeyError) as e:
    _fail(unknown_field(e))


def unknown_field(e: Exception) -> str:
  """The line for the AttributeError/KeyError ml_collections raises for a
  --config.FIELD naming no field (its suggestion is inside the message)."""
  text = str(e.args[0] if e.args else e)
  names = re.findall(r"[\w.]+", text)
  close = re.search(r'Did you mean "([\w.]+)"', text)
  return (f'the config has no field {names[0] if names else text!r}' +
          (f'; did you mean --config.{close[1]}?' if close else '') +
          ' python -m resnet_jax.main --help lists the fields')


def define_config_flag(default, help_text: str):
  """`--config` as ml_collections defines it. Defining it already applies
  the --config.FIELD flags of sys.argv to the default file: a field that
  does not exist is the one error line there, not a traceback."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file('config', default, help_text, lock_config=True)
  except (AttributeError, KeyError) as e:
    _fail(unknown_field(e))


def _flag_error(message: str) -> str:
  """One line for a flag error: the preset that is missing rather than the
  loader's whole report. (A missing config file is reported earlier, by
  `config_files.prepare_argv`.)"""
  preset = re.search(r"unknown preset '[^']*'; choose one of: [^\n]*", message)
  if preset:
    # The file the presets are of: absl's message starts with the flag as given.
    given = re.match(r'flag --config=([^:\s]+)', message)
    return f'{preset[0]}; pass --config {given[1] if given else "FILE"}:NAME'
  return message.strip().splitlines()[0] + '; --helpfull lists the flags'



def _fail(message: str):
  _line(f'error: {message}')
  sys.exit(2)


def _line(text: str) -> None:
  # One write, newline included: a line from another process sharing this
  # stderr (launch.sh) cannot land inside it (print writes the end apart).
  sys.stderr.write(text + '\n')
  sys.stderr.flush()
