r"""How long a run takes to stop after SIGTERM (a scheduler's preemption notice).

Starts `python -m resnet_jax.main` (ResNet-20, the default recipe and log
cadence unless flags say otherwise), waits until the first step is done plus
--wait_seconds, sends SIGTERM, and measures the time until the process exits
with its checkpoint saved. Prints one JSON record.

  python benchmarks/stop_latency.py --data_dir DATA --dataset cifar10-jpeg
  python benchmarks/stop_latency.py --data_dir DATA --dataset cifar10-jpeg \
      --code /path/to/an/older/checkout        # the same for other code

A cluster's grace period after SIGTERM is often 30-90 s (preemptible cloud VMs:
30 s): a run must save its checkpoint well inside it.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def measure(code: str, data_dir: str, dataset: str, wait_seconds: float,
            extra: list) -> dict:
  workdir = tempfile.mkdtemp(prefix='stop_latency_')
  env = dict(os.environ, PYTHONPATH=code, PYTHONUNBUFFERED='1')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py',
       '--workdir', os.path.join(workdir, 'w'), f'--config.dataset={dataset}',
       f'--config.data_dir={data_dir}', *extra],
      cwd=code, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  started = time.perf_counter()
  first_step = None
  lines = []
  for line in proc.stderr:  # Until the first step is done (compilation included).
    lines.append(line)
    if line.split(' ', 1)[-1].startswith('Step 1/'):
      first_step = time.perf_counter() - started
      break
  if first_step is None:
    raise SystemExit('error: the run ended before its first step:\n' + ''.join(lines[-20:]))
  time.sleep(wait_seconds)
  signalled = time.perf_counter()
  proc.send_signal(signal.SIGTERM)
  tail = proc.stderr.read()
  code_ = proc.wait()
  stopped = time.perf_counter() - signalled
  last = tail.strip().splitlines()[-1] if tail.strip() else ''
  saved = int(last.split('at step ')[1].split(';')[0]) if 'at step ' in last else None
  return {'seconds_to_exit': round(stopped, 2), 'exit_code': code_, 'saved_step': saved,
          'first_step_seconds': round(first_step, 1), 'signalled_after_first_step':
          wait_seconds, 'last_line': last, 'code': code}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--dataset', default='cifar10')
  parser.add_argument('--code', default=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), help='checkout whose resnet_jax to run')
  parser.add_argument('--wait_seconds', type=float, default=30.0)
  args, extra = parser.parse_known_args()
  print(json.dumps(measure(args.code, args.data_dir, args.dataset, args.wait_seconds,
                           extra), indent=1))


if __name__ == '__main__':
  main()
