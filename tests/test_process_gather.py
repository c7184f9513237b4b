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
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
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
  distributed.leave_alone()
time.sleep(60)
print('not stopped')
'''


def test_a_process_that_fails_alone_stops_the_other_at_once():
  start = time.time()
  procs, outputs = _two(ALONE)
  (out0, err0), _ = outputs
  assert procs[0].returncode == 75, err0[-2000:]
  assert 'error: process 1 of 2 is gone' in err0 and 'not stopped' not in out0
  assert time.time() - start < 50  # Not the 60 s sleep, nor JAX's heartbeat.


def test_every_process_gets_every_process_value():
  procs, outputs = _two(SCRIPT)
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  results = [json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
             for out, _ in outputs]
  want = [{}, {f'n02/café_{i}.JPEG': 'empty file' for i in range(40)}]
  assert results == [want, want]
