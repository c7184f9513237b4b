"""Commands run in the background by tests: output to files, waits that fail loudly."""

import json
import os
import signal
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


def xla_flags(devices: int) -> str:
  """This process's XLA flags (an ISA limit the caller set, say) with
  `devices` fake CPU devices in place of conftest's 8."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  return ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])


def config_of(args):
  """The config `python -m resnet_jax.main ARGS` trains: its --config
  FILE[:PRESET] with each --config.FIELD=VALUE, typed like the field's default
  (`plan.parse_value`, as a sweep's values are). A reference run trained on
  it in the test's process saves a launch."""
  from resnet_jax import config_files
  from resnet_jax.experiments import plan
  config, _ = config_files.load(args[args.index('--config') + 1])
  for arg in args:
    if arg.startswith('--config.'):
      key, value = arg[len('--config.'):].split('=', 1)
      config[key] = plan.parse_value(key, value, config[key])
  return config


def main(args, env=None, new_session=False) -> Background:
  """`python -m resnet_jax.main ARGS` in the background."""
  return Background([sys.executable, '-m', 'resnet_jax.main', *args], env, new_session)


def _wait_until(done, proc, who: str, goal: str, timeout: float) -> None:
  """Polls `done()` until it is true; fails (never returns silently) if
  `proc` ends first or the time runs out."""
  deadline = time.time() + timeout
  while not done():
    if proc.poll() is not None:
      pytest.fail(f'{who} ended (exit {proc.returncode}) and did not {goal}:\n'
                  f'{proc.output()[1][-3000:]}')
    if time.time() > deadline:
      pytest.fail(f'{who} did not {goal} in {timeout} s')
    time.sleep(0.02)


def wait_for_step(workdir, step, proc, timeout=300):
  """Blocks until metrics.jsonl reaches `step`; fails if the run ends first
  or the time runs out, so a test never acts at another step than it says."""
  path = os.path.join(workdir, 'metrics.jsonl')

  def reached():
    if not os.path.exists(path):
      return False
    with open(path) as f:
      steps = [json.loads(l)['step'] for l in f if l.endswith('\n')]
    return bool(steps) and max(steps) >= step
  _wait_until(reached, proc, 'the run', f'reach step {step}', timeout)


def freeze(proc) -> None:
  """SIGSTOPs `proc` and returns once every thread of it has stopped: the
  signal only asks, and a thread in the middle of a write (an async
  checkpoint, a TensorBoard flush) finishes it first."""
  proc.send_signal(signal.SIGSTOP)
  _, status = os.waitpid(proc.pid, os.WUNTRACED)
  if not os.WIFSTOPPED(status):
    pytest.fail(f'the run ended (wait status {status}) instead of stopping')


# prepare_data with a test's patch run first: the patch calls `pause(path)`
# where the test is to act, which writes `path` to the file READY (argv[1])
# and waits there for the test's signal.
_PAUSED_BEFORE = '''
import os, sys, time
from resnet_jax import errors, prepare_data
ready = sys.argv[1]

def pause(path):
  with open(ready + '.new', 'w') as f:
    f.write(path)
  os.rename(ready + '.new', ready)
  # Short sleeps: a signal the kernel hands to another thread (one is
  # idle in a pool) runs its handler only when the main thread wakes.
  for _ in range(1200):
    time.sleep(0.1)
'''
_PAUSED_AFTER = '''
sys.argv = ['prepare_data'] + sys.argv[2:]
errors.run_cli(prepare_data.main)
'''


def start_paused(patch: str, ready: str, args, timeout=120) -> tuple:
  """(the process, the path it paused at) of `python -m resnet_jax.prepare_data
  ARGS` with `patch` applied, once it pauses; fails (never returns silently)
  if it ends first or the time runs out, and never leaves it paused behind."""
  proc = Background([sys.executable, '-c', _PAUSED_BEFORE + patch + _PAUSED_AFTER, ready,
                     *args])
  try:
    _wait_until(lambda: os.path.exists(ready), proc, 'prepare_data', 'pause', timeout)
    with open(ready) as f:
      return proc, f.read()
  except BaseException:
    proc.kill()
    raise


def stop_paused(proc, signum, staging) -> None:
  """Sends `signum` to a paused prepare_data and asserts that it stops as it
  should: exit 128 + signum, its partial copy `staging` removed, and one
  last `stopped:` line saying so, with no traceback."""
  try:
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signum, stderr
  assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == (
      f'stopped: {signal.Signals(signum).name}: removed the partial copy in {staging}; '
      'the same command starts over')
  assert not os.path.exists(staging)
