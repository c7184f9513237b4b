"""The error a user can fix: reported as one line, never as a traceback."""

import sys

from absl import app


class UserError(Exception):
  """A mistake in the command, config, data or workdir; the message says the fix."""


def run_cli(main_fn) -> None:
  """Runs an absl main, turning `UserError` into one line and exit code 2."""
  def wrapped(argv):
    try:
      main_fn(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  app.run(wrapped)
