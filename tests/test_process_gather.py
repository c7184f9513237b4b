"""Host values gathered over real processes: run.json lists the files every
process skipped, not only process 0's."""

import json
import os
import socket
import subprocess
import sys

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


def test_every_process_gets_every_process_value():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # Not shared between processes.
  procs = [subprocess.Popen([sys.executable, '-c', SCRIPT, f'localhost:{port}', str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  results = [json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
             for out, _ in outputs]
  want = [{}, {f'n02/café_{i}.JPEG': 'empty file' for i in range(40)}]
  assert results == [want, want]
