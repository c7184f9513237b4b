"""`run.json`: what produced a workdir, readable without the checkpoints.

Written by process 0 once a run is accepted: the config, and per session (the
first start and every resume) the command line, versions, git commit, host,
devices, start and end time, and `numerics` (CPU model and features, XLA
flags, every numeric library's version: what decides the bits besides the
config, `environment.py`). A resume appends its session; nothing earlier is
rewritten. `python -m resnet_jax.results` reads it to build the README table.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from typing import Optional

from resnet_jax.workdir import environment

FILE = 'run.json'
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint')


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def process_started() -> str:
  """When this process started (Linux: from /proc), so a session's wall time
  includes imports, reading the data and compilation; now elsewhere."""
  try:
    with open('/proc/self/stat') as f:
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # Field 22, starttime.
    with open('/proc/stat') as f:
      boot = int(next(l for l in f if l.startswith('btime')).split()[1])
    started = boot + ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError, StopIteration):
    return now()
  return datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(
      timespec='seconds')


def versions(packages=PACKAGES) -> dict:
  """Python and the installed versions of `packages` ('missing' if absent)."""
  out = {'python': platform.python_version()}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'missing'
  return out


def git_state() -> dict:
  """The commit of this checkout and whether its tree had changes.

  'unknown' when the package is not run from a git checkout.
  """
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    run = lambda *a: subprocess.run(['git', '-C', repo, *a], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
    commit = run('rev-parse', 'HEAD')
    dirty = bool(run('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return {'commit': 'unknown', 'dirty': 'unknown'}
  return {'commit': commit, 'dirty': dirty}


def command_line() -> str:
  """This process's command, as typed: `python -m resnet_jax.main --config ...`."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  program = ['-m', spec.name] if spec is not None and spec.name else sys.argv[:1]
  return ' '.join(['python', *program, *sys.argv[1:]])


def host_cpu() -> str:
  """The CPU model, e.g. 'AMD EPYC 9B14' (JAX calls every CPU just 'cpu')."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_cores() -> int:
  """The cores this process may run on (fewer than the machine's when pinned)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def read(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write(workdir: str, record: dict) -> None:
  path = os.path.join(workdir, FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1)
    f.write('\n')
  os.replace(tmp, path)


def start_session(workdir: str, config: dict, framework: str, devices: dict,
                  changed: Optional[dict] = None,
                  packages=PACKAGES) -> dict:
  """Adds this session to the record (creating it for a new run).

  Args:
    workdir: the run's directory.
    config: the full config, as a JSON-able dict.
    framework: e.g. 'jax 0.12.0'.
    devices: device kind, count, process count, ... of this session.
    changed: config fields that differ from the stored config, if resuming.
    packages: whose versions to record.

  Returns:
    The record as written.
  """
  record = read(workdir) or {'framework': framework, 'config': config,
                             'created': now(), 'sessions': []}
  session = {'started': process_started(), 'command': command_line(),
             'host': socket.gethostname(), 'host_cpu': host_cpu(),
             'cpu_cores': cpu_cores(),
             'versions': versions(packages), 'git': git_state(), **devices,
             'numerics': environment.numerics(devices)}
  if changed:
    session['changed'] = changed
  record['sessions'].append(session)
  record['config'] = config
  _write(workdir, record)
  return record


def checkpoint_steps(workdir: str) -> list:
  """The steps of the checkpoint folders in `workdir` (no checkpoint is read)."""
  folder = os.path.join(workdir, 'checkpoints')
  return ([int(n) for n in os.listdir(folder) if n.isdigit()]
          if os.path.isdir(folder) else [])


def completed_step(workdir: str, record: Optional[dict] = None) -> Optional[int]:
  """The last step of the run in `workdir` if it is complete, else None.

  Complete: a session ended with its final step, or the checkpoint of the
  run's last step (`num_steps`, which each session records) is on disk: a
  signal or a kill that arrives after the final checkpoint must not leave a
  finished run looking stopped or crashed.
  """
  record = record if record is not None else read(workdir)
  if not record or not record.get('sessions'):
    return None
  done = [s['final_step'] for s in record['sessions'] if 'final_step' in s]
  if done:
    return done[-1]
  num_steps = record['sessions'][-1].get('num_steps')
  steps = checkpoint_steps(workdir)
  if num_steps and steps and max(steps) == num_steps:
    return num_steps
  return None


def end_session(workdir: str, outcome: dict) -> None:
  """Stamps the latest session with its end time, wall seconds and `outcome`."""
  record = read(workdir)
  if not record or not record['sessions']:
    return
  session = record['sessions'][-1]
  started = datetime.datetime.fromisoformat(session['started'])
  ended = datetime.datetime.now(datetime.timezone.utc)
  session.update(ended=ended.isoformat(timespec='seconds'),
                 wall_seconds=round((ended - started).total_seconds(), 1), **outcome)
  _write(workdir, record)
