"""Two real processes joined by resnet_jax.parallelism.distributed, without
training: host values gathered (run.json lists the files every process
skipped, not only process 0's), and a process that fails alone telling the
other at once."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests import processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each process skipped other files (one of them none, one with a long list):
# the texts differ in length, and names need not be ASCII.
SCRIPT = r'''
import json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]), initialization_timeout=120)
from resnet_jax.parallelism import process_gather
mine = ({} if jax.process_index() == 0 else
        {f'n02/café_{i}.JPEG': 'empty file' for i in range(40)})
print('RESULT ' + json.dumps(process_gather.allgather_json(mine)))
'''


def _two(script):
  """`script` as processes 0 and 1 of one run, and their (stdout, stderr)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'XLA_FLAGS': processes.xla_flags(1), 'JAX_PLATFORMS': 'cpu'}
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # Not shared between processes.
  procs = [subprocess.Popen([sys.executable, '-c', script, f'localhost:{port}', str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  return procs, [p.communicate(timeout=240) for p in procs]


# Process 1 fails alone (as after a ReadFailed) and then takes its time to
# exit; process 0 would wait for it in a collective.
ALONE = r'''
import sys, time
from resnet_jax.parallelism import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax
time.sleep(2)  # Both watches connected.
if jax.process_index() == 1:
  distributed.leave_alone(own_fault=True)
time.sleep(60)
print('not stopped')
'''


@pytest.mark.slow
def test_a_process_that_fails_alone_stops_the_other_at_once():
  start = time.time()
  procs, outputs = _two(ALONE)
  (out0, err0), _ = outputs
  assert procs[0].returncode == 75, err0[-2000:]
  assert 'error: process 1 of 2 is gone' in err0 and 'not stopped' not in out0
  assert time.time() - start < 50  # Not the 60 s sleep, nor JAX's heartbeat.


@pytest.mark.slow
def test_every_process_gets_every_process_value():
  procs, outputs = _two(SCRIPT)
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  results = [json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
             for out, _ in outputs]
  want = [{}, {f'n02/café_{i}.JPEG': 'empty file' for i in range(40)}]
  assert results == [want, want]


class _TwoProcesses:
  """`jax` as the training loop of process 0 of 2 sees it."""

  def __getattr__(self, name):
    import jax
    return getattr(jax, name)

  @staticmethod
  def process_count():
    return 2

  @staticmethod
  def process_index():
    return 0


def test_run_json_gathers_every_processs_skipped_files_unless_one_failed_alone(
    tiny_folder, tmp_path, monkeypatch):
  # docs/data.md, "Multi-host": at the end of a session that every process
  # reaches together (complete, a stop signal, a diverged loss) process 0
  # gathers all the skipped files into run.json; a session that ends
  # because one process failed lists that process 0's own only. (The
  # gathering itself, over two real processes: the test above.)
  from resnet_jax import errors
  from resnet_jax.training import loop
  from resnet_jax.workdir import run_record
  from tests.conftest import tiny_config
  mine, theirs = {'n01/a.png': 'empty file'}, {'n02/b.png': 'does not decode (x)'}
  left = []
  monkeypatch.setattr(loop, 'jax', _TwoProcesses())
  monkeypatch.setattr(loop.process_gather, 'allgather_json', lambda value: [value, theirs])
  monkeypatch.setattr(loop.distributed, 'leave_alone', left.append)
  config = tiny_config(tiny_folder['data_dir'], dataset=tiny_folder['name'])
  outcomes = {
      'complete': None,
      'signal': errors.Stopped('SIGTERM at step 3', 143, every_process=True),
      'diverged': errors.Stopped('training loss is nan at step 3', 3, every_process=True),
      'read_failed': errors.Stopped('reading x failed 7 times over 62 s', 74),
      'refused': errors.UserError('refused'),
  }
  for name, outcome in outcomes.items():
    def train(run, initial, outcome=outcome):
      del initial
      run_record.start_session(run.workdir, {}, 'jax', {})
      run.skipped.update(mine)  # This process's own, as the loop collects them.
      if outcome is not None:
        raise outcome
      return {'eval_accuracy': 0.5}
    monkeypatch.setattr(loop, '_train', train)
    workdir = str(tmp_path / name)
    try:
      loop.train_and_evaluate(config, workdir)
    except (errors.Stopped, errors.UserError):
      pass
    together = outcome is None or getattr(outcome, 'every_process', False)
    want = {**mine, **theirs} if together else mine
    assert run_record.read(workdir)['sessions'][-1]['skipped_files'] == want, name
  assert left == [True, True]  # Those that failed alone told the others.
