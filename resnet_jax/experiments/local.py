"""The local launcher: an experiment's runs on this machine, each an ordinary
`python -m resnet_jax.main` process with its console in `EXP/logs/NAME.log`.

One run at a time, or, on a host with several GPUs, one run per group of
`gpus_per_run` GPUs at a time (each run sees only its own through
CUDA_VISIBLE_DEVICES). Stopping the launcher stops the runs the way a
scheduler would (SIGTERM: each saves a checkpoint and exits), including when
the launcher itself is killed outright (the kernel sends the runs SIGTERM when
their parent dies), so the next invocation resumes every run where it stopped.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from resnet_jax import errors

_PR_SET_PDEATHSIG = 1


def visible_gpus(env=None) -> list:
  """The GPU ids runs may use: CUDA_VISIBLE_DEVICES when set, else the GPUs
  `nvidia-smi -L` lists; [] on a host without GPUs."""
  env = os.environ if env is None else env
  if 'CUDA_VISIBLE_DEVICES' in env:
    return [g for g in env['CUDA_VISIBLE_DEVICES'].split(',') if g.strip()]
  try:
    listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True,
                             timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(l for l in listing.splitlines()
                                          if l.startswith('GPU '))]


def slots(gpus: list, gpus_per_run: int) -> list:
  """The environment changes of each run slot: one slot (no change) without
  GPUs, else CUDA_VISIBLE_DEVICES for each group of `gpus_per_run` GPUs.

  Raises:
    errors.UserError: more GPUs per run than the host has.
  """
  if not gpus:
    return [{}]
  if gpus_per_run > len(gpus):
    raise errors.UserError(f'--gpus_per_run={gpus_per_run} but this host shows '
                           f'{len(gpus)} GPU(s); pass at most {len(gpus)}')
  return [{'CUDA_VISIBLE_DEVICES': ','.join(gpus[i:i + gpus_per_run])}
          for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]


def _die_with_parent() -> None:
  """In the child before exec: SIGTERM when the launcher dies (Linux)."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):  # Not Linux: Ctrl-C still reaches the group.
    pass


def _spawn(command: list, env: dict, log_path: str) -> subprocess.Popen:
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'a') as log_file:
    return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent if sys.platform == 'linux' else None)


class _Stop:
  """SIGTERM/SIGINT to the launcher: start nothing new, stop the runs."""

  def __init__(self):
    self.signum = None

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle)
                      for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def launch(jobs: list, env_slots: list, log_dir: str,
           on_start: Callable, on_end: Callable, spawn=_spawn,
           poll_seconds: float = 0.5) -> Optional[int]:
  """Runs `jobs` [(name, command)] at most one per slot at a time.

  Args:
    jobs: (name, argv) of each run, in order.
    env_slots: `slots()`: one environment change per concurrent run.
    log_dir: where NAME.log receives each run's console.
    on_start: called with (name, slot environment, log path) as a run starts.
    on_end: called with (name, exit code) as a run ends.
    spawn: starts a process (argv, env, log path) -> Popen-like; for tests.
    poll_seconds: how often finished runs are collected.

  Returns:
    None when every run ended by itself, else the signal that stopped the
    launcher (its runs were stopped and have saved their checkpoints).
  """
  queue = list(jobs)
  running = {}  # slot index -> (name, process)
  with _Stop() as stop:
    while (queue or running):
      for slot, (name, proc) in list(running.items()):
        code = proc.poll()
        if code is not None:
          del running[slot]
          on_end(name, code)
      if stop.signum is not None:
        for _, proc in running.values():
          proc.send_signal(signal.SIGTERM)  # Each saves a checkpoint and exits.
        for name, proc in running.values():
          on_end(name, proc.wait())
        return stop.signum
      for slot in range(len(env_slots)):
        if slot not in running and queue:
          name, command = queue.pop(0)
          log_path = os.path.join(log_dir, f'{name}.log')
          on_start(name, env_slots[slot], log_path)
          running[slot] = (name, spawn(command, {**os.environ, **env_slots[slot]},
                                       log_path))
      if running:
        time.sleep(poll_seconds)
  return None
