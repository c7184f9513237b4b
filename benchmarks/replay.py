r"""Replays the first steps of a recorded run and says whether they match to the bit.

A record is a workdir's `run.json` and `metrics.jsonl` (benchmarks/results/*).
The replay trains the record's own config (`python -m resnet_jax.main
--workdir W` with the record's run.json) in a fresh workdir, stops it with
SIGTERM once step --steps is logged, and compares every logged value up to
that step with the record's, bitwise. It prints one JSON object: the first
step that differs (or none), the values side by side, and the entries of the
record's numerics environment (run.json's `numerics`) that differ from this
machine's.

  python benchmarks/replay.py benchmarks/results/r20_pinned --data_dir ~/data
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 python benchmarks/replay.py RECORD --steps 200

Flags after `--` go to resnet_jax.main (runtime fields only: a recipe field
would be refused).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from resnet_jax.workdir import environment  # noqa: E402  pylint: disable=wrong-import-position


def _lines(path: str) -> list:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.endswith('\n')]


# Values that depend on the machine's speed, not on the numbers.
_TIMING = ('images_per_sec', 'host_ms_per_step')


def compare(want: list, got: list, steps: int) -> dict:
  """The logged values of both runs up to `steps`, and the first step where
  they differ (None when every value is equal to the bit)."""
  keep = lambda lines: [{k: v for k, v in l.items() if k not in _TIMING}
                        for l in lines if l['step'] <= steps]
  want, got = keep(want), keep(got)
  first = next((w['step'] for w, g in zip(want, got) if w != g), None)
  if first is None and len(want) != len(got):
    first = min(l['step'] for l in (want[len(got):] or got[len(want):]))
  return {'first_difference_at_step': first, 'lines_compared': min(len(want), len(got)),
          'record': want, 'replay': got}


def replay(record_dir: str, steps: int, data_dir: str, extra: list) -> dict:
  with open(os.path.join(record_dir, 'run.json')) as f:
    record = json.load(f)
  workdir = os.path.join(tempfile.mkdtemp(prefix='replay_'), 'w')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'run.json'), 'w') as f:
    json.dump({'config': record['config'], 'sessions': []}, f)
  cmd = [sys.executable, '-m', 'resnet_jax.main', '--workdir', workdir, *extra]
  if data_dir:
    cmd.append(f'--config.data_dir={data_dir}')
  log = open(os.path.join(os.path.dirname(workdir), 'log.txt'), 'w+')
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  want = _lines(os.path.join(record_dir, 'metrics.jsonl'))
  # Up to the record's last step, the replay ends by itself (its final
  # evaluation included); short of it, it is stopped.
  stop = steps < max(l['step'] for l in want)
  while proc.poll() is None:
    if stop and any(l['step'] >= steps for l in _lines(metrics)):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(1)
  proc.wait()
  log.seek(0)
  tail = log.read()[-3000:]
  got = _lines(metrics)
  if not got:
    raise SystemExit(f'error: the replay logged nothing (exit {proc.returncode}):\n{tail}')
  with open(os.path.join(workdir, 'run.json')) as f:
    here = json.load(f)['sessions'][0]
  out = compare(want, got, steps)
  theirs = record['sessions'][0].get('numerics', {})
  mine = here.get('numerics', environment.numerics())
  out['environment_differences'] = {
      k: {'record': theirs.get(k), 'replay': mine.get(k)}
      for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)}
  if not theirs:
    out['environment_differences'] = 'the record predates numerics in run.json'
  out['command'] = ' '.join(cmd)
  shutil.rmtree(os.path.dirname(workdir), ignore_errors=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('record', help='a folder with run.json and metrics.jsonl')
  parser.add_argument('--steps', type=int, default=100, help='steps to replay')
  parser.add_argument('--data_dir', default='',
                      help="where the record's dataset is here (default: the recorded data_dir)")
  parser.add_argument('main_flags', nargs='*', help='after --: flags for resnet_jax.main')
  args = parser.parse_args()
  out = replay(args.record, args.steps, args.data_dir, args.main_flags)
  print(json.dumps(out, indent=1))
  sys.exit(0 if out['first_difference_at_step'] is None else 1)


if __name__ == '__main__':
  main()
