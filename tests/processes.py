"""Commands run in the background by tests: output to files, waits that fail loudly."""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Background(subprocess.Popen):
  """A command run from the repository with its output in files: a pipe
  nobody reads while the test waits could fill and stall a chatty run."""

  def __init__(self, cmd, env=None, new_session=False):
    """`new_session`: the command leads a process group of its own (as a
    SLURM step or a terminal's foreground job), which `killpg` signals whole."""
    self._files = (tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+'))
    # os.environ holds conftest's 8-device flag and any ISA flag of the caller.
    super().__init__(cmd, cwd=REPO, env=env or dict(os.environ), stdout=self._files[0],
                     stderr=self._files[1], text=True, start_new_session=new_session)

  def communicate(self, input=None, timeout=None):  # pylint: disable=redefined-builtin
    del input
    self.wait(timeout=timeout)
    return self.output()

  def output(self):
    """(stdout, stderr) so far."""
    for f in self._files:
      f.seek(0)
    return tuple(f.read() for f in self._files)


def main(args, env=None, new_session=False) -> Background:
  """`python -m resnet_jax.main ARGS` in the background."""
  return Background([sys.executable, '-m', 'resnet_jax.main', *args], env, new_session)


def wait_for_step(workdir, step, proc, timeout=300):
  """Blocks until metrics.jsonl reaches `step`; fails (never returns
  silently) if the run ends first or the time runs out, so a test never
  acts at another step than it says."""
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while True:
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(l)['step'] for l in f if l.endswith('\n')]
      if steps and max(steps) >= step:
        return
    if proc.poll() is not None:
      pytest.fail(f'the run ended (exit {proc.returncode}) before step {step}:\n'
                  f'{proc.output()[1][-3000:]}')
    if time.time() > deadline:
      pytest.fail(f'the run did not reach step {step} in {timeout} s')
    time.sleep(0.02)
