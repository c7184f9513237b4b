"""The SLURM launcher: an experiment's runs as one job array, through submitit.

Each array task runs one ordinary `python -m resnet_jax.main`, its console
appended to `EXP/logs/NAME.log` (one log per run, across attempts), and ends
by writing `EXP/logs/NAME.json`: what became of the attempt (complete,
stopped and requeued, cancelled, failed with the run's own exit code and
error line), which every view of the experiment shows.

How a task ends its run:
- Time limit: SLURM sends USR2 `SIGNAL_DELAY_S` before it; submitit calls
  `RunTask.checkpoint`, which stops the run with SIGTERM (the run saves a
  checkpoint and exits) and has the task requeued with the same command,
  which resumes. An attempt that made no progress is not requeued again.
- Preemption, `scontrol requeue`, `scancel`: SLURM sends SIGTERM to every
  process of the job; the run checkpoints and exits 143. The task then leaves
  no result behind and lets SLURM finish what it started (a requeue or a
  cancel); if the job is still running (a preemption grace period), the task
  requeues it itself. Under PreemptMode=CANCEL the task sees what a scancel
  shows (COMPLETING, on SLURM 22.05 even within a GraceTime): the job ends
  PREEMPTED and a rerun of the experiment resubmits its run.
A task that runs twice (a requeue racing a resubmission) is harmless: the
second finds the workdir locked or the run complete.

submitit is an optional extra (`pip install -e ".[slurm]"`), imported here only.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

import submitit

from resnet_jax import errors
from resnet_jax.experiments import run_status
from resnet_jax.workdir import run_record

# Job states that will still run (or are running): such runs are not
# submitted again. squeue is asked for every state (`-t all`, whatever the
# user's SQUEUE_STATES) and shows an ended job for MinJobAge: PREEMPTED is
# such a job, ended by PreemptMode=CANCEL (a job being requeued shows
# COMPLETING, then PENDING).
ACTIVE_STATES = ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING',
                 'RESIZING', 'SUSPENDED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'STAGE_OUT',
                 'SIGNALING')
# Seconds between SLURM's warning signal and the kill: enough for the run to
# finish its step and write a checkpoint.
SIGNAL_DELAY_S = 120
# A run that needs longer than the time limit is requeued as often as it
# takes; `RunTask.checkpoint` stops a run that makes no progress.
MAX_REQUEUES = 1000
# A run stopped by a signal: it exited 128 + signal after its checkpoint, or
# (a second signal during its shutdown) died of it.
_STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT)


def _ignore_usr2() -> None:
  """In the run's process: SLURM signals every process of the step, and USR2
  would kill a run; the task (its parent) answers it instead."""
  signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _job_id() -> str:
  """This task's id as squeue and scontrol take it ('4242_3' in an array)."""
  array, task = os.environ.get('SLURM_ARRAY_JOB_ID'), os.environ.get('SLURM_ARRAY_TASK_ID')
  return f'{array}_{task}' if array and task else os.environ.get('SLURM_JOB_ID', '')


def job_state(job_id: str) -> str:
  """SLURM's state of a job it still knows, ended ones included for MinJobAge
  ('' after that, or without SLURM)."""
  try:
    out = subprocess.run(['squeue', '-h', '-t', 'all', '-j', job_id, '-o', '%T'],
                         capture_output=True, text=True, timeout=30).stdout.split()
  except (OSError, subprocess.SubprocessError):
    return ''
  return out[0] if out else ''


def write_outcome(log_path: str, outcome: dict) -> None:
  run_status.write_outcome(log_path, {**outcome, 'job_id': _job_id(),
                                      'host': socket.gethostname()})


def _checkpointed(command: list) -> int:
  """The step of the newest checkpoint of the run `command` trains: what an
  attempt keeps. Not metrics.jsonl's last step, which a hard-killed attempt
  leaves past its checkpoint until the next attempt trims it."""
  workdir = command[command.index('--workdir') + 1]
  return max(run_record.checkpoint_steps(workdir), default=0)


class RunTask(submitit.helpers.Checkpointable):
  """One array task: runs one run's command; requeued with it on USR2."""

  def __init__(self):
    self._proc = None
    self._start_step = 0

  def __call__(self, name: str, command: list, log_path: str) -> str:
    self._start_step = _checkpointed(command)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'a') as log:
      log.write(f'== task {_job_id()} on {socket.gethostname()}, '
                f'{time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(command)}\n')
      log.flush()
      self._proc = subprocess.Popen(command, preexec_fn=_ignore_usr2, stdout=log,
                                    stderr=subprocess.STDOUT)
    # Polled, not wait()ed: a blocking wait holds the Popen's lock, and the
    # USR2 handler (`checkpoint`, run on this thread) could then never reap
    # the run it stopped.
    while (code := self._proc.poll()) is None:
      time.sleep(0.5)
    self._proc = None
    if code == 0:
      write_outcome(log_path, {'outcome': 'complete', 'exit_code': 0})
      return name
    if code in _STOP_CODES:
      self._stopped(log_path, code)
    reason = run_status.error_line(log_path) or f'exit code {code}'
    write_outcome(log_path, {'outcome': 'failed', 'exit_code': code, 'reason': reason})
    raise RuntimeError(f'run {name} failed (exit {code}): {reason}; its console is in '
                       f'{log_path}')

  def _stopped(self, log_path: str, code: int) -> None:
    """The run stopped at a checkpoint on SLURM's SIGTERM: ends the task
    without a result, so the job comes back (or stays cancelled)."""
    job, state = _job_id(), job_state(_job_id())
    if state == 'RUNNING':  # A grace period: SLURM has not requeued it.
      subprocess.run(['scontrol', 'requeue', job], capture_output=True, timeout=60)
      outcome = 'stopped by SIGTERM; requeued by the task'
    else:  # COMPLETING: SLURM is requeueing (preemption) or cancelling it.
      outcome = f'stopped by SIGTERM while SLURM ends the job ({state or "gone"})'
    write_outcome(log_path, {'outcome': 'stopped', 'exit_code': code, 'reason': outcome})
    sys.exit(0)  # SystemExit: submitit writes no result for this attempt.

  def checkpoint(self, name: str, command: list, log_path: str):
    """Stops the run (it checkpoints) and resubmits the same command, unless
    this attempt made no progress (then the task fails instead of looping)."""
    if self._proc is not None and self._proc.poll() is None:
      self._proc.send_signal(signal.SIGTERM)
      try:
        self._proc.wait(timeout=SIGNAL_DELAY_S - 15)
      except subprocess.TimeoutExpired:
        pass  # SLURM kills it; the run resumes from its previous checkpoint.
    self._proc = None
    step = _checkpointed(command)
    if step <= self._start_step:
      write_outcome(log_path, {'outcome': 'failed', 'exit_code': None, 'reason': (
          f'no progress before the time limit (no checkpoint after step {step}); '
          'raise --time_minutes')})
      return None  # submitit: not requeued, the task fails.
    write_outcome(log_path, {'outcome': 'stopped', 'exit_code': 128 + signal.SIGTERM,
                             'reason': f'time limit at step {step}; requeued'})
    return super().checkpoint(name, command, log_path)

  def __getstate__(self):
    return {}  # A process never travels with the pickled task.

  def __setstate__(self, state):
    self._proc = None
    self._start_step = 0


def _sbatch_error(e: Exception) -> str:
  """sbatch's own complaint out of submitit's exception."""
  text = str(e)
  lines = [l.strip() for l in text.splitlines() if 'error' in l.lower()]
  line = lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else repr(e)
  return re.sub(r'^.*?sbatch: error: ', '', line)


def partition_info(partition: str) -> Optional[dict]:
  """`scontrol show partition` as a dict ({} when it cannot tell; None when
  the partition does not exist). '' is the cluster's default partition."""
  try:
    out = subprocess.run(['scontrol', 'show', 'partition', '-o', *([partition] if partition
                                                                   else [])],
                         capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return {}
  if out.returncode:
    text = (out.stderr + out.stdout).lower()
    return None if 'not found' in text or 'invalid' in text else {}
  for line in out.stdout.splitlines():
    fields = dict(f.split('=', 1) for f in line.split() if '=' in f)
    if partition or fields.get('Default') == 'YES':
      return fields
  return {}


def node_gpus(nodes: str) -> int:
  """The most GPUs (gres gpu) any node of `nodes` has; -1 when unknown."""
  try:
    out = subprocess.run(['sinfo', '-h', '-N', '-n', nodes, '-o', '%G'], capture_output=True,
                         text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return -1
  if out.returncode:
    return -1
  counts = [int(m) for g in out.stdout.split() for m in re.findall(r'gpu(?::[^:,(]+)?:(\d+)', g)]
  return max(counts, default=0)


def _minutes(text: str) -> Optional[int]:
  """SLURM's [days-]hours:minutes:seconds (or UNLIMITED) in minutes."""
  if not text or text.upper() in ('UNLIMITED', 'INFINITE', 'NONE'):
    return None
  days, _, rest = text.rpartition('-')
  parts = [int(p) for p in rest.split(':')]
  while len(parts) < 3:
    parts = [0] + parts
  return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (parts[2] > 0)


def check_partition(partition: str, gpus_per_run: Optional[int], time_minutes: int) -> int:
  """What can be checked before submitting; returns the GPUs per run to ask
  for (None given: 1 where the partition's nodes have GPUs, else 0).

  Raises:
    errors.UserError: no such partition, a time limit above its MaxTime, or
      GPUs asked of a partition without them.
  """
  info = partition_info(partition)
  where = f'partition {partition}' if partition else "the cluster's default partition"
  if info is None:
    raise errors.UserError(f'{where} does not exist (sinfo lists the partitions); '
                           'pass --partition=NAME')
  if not info:  # SLURM could not say: sbatch decides.
    return 1 if gpus_per_run is None else gpus_per_run
  name = info.get('PartitionName', partition)
  limit = _minutes(info.get('MaxTime', ''))
  if limit is not None and time_minutes > limit:
    raise errors.UserError(f'--time_minutes={time_minutes} is above partition {name}\'s '
                           f'time limit ({limit} min): the tasks would pend forever; pass '
                           f'--time_minutes={limit} or less (runs longer than that are '
                           'requeued and resume)')
  gpus = node_gpus(info.get('Nodes', '')) if info.get('Nodes') else -1
  if gpus_per_run is None:
    return 1 if gpus > 0 or gpus < 0 else 0
  if gpus_per_run > 0 and gpus == 0:
    raise errors.UserError(f'--gpus_per_run={gpus_per_run} but partition {name} has no '
                           'GPUs; pass --gpus_per_run=0 (CPU) or a GPU --partition')
  return gpus_per_run


def executor(folder: str, cluster: str, *, job_name: str, partition: str,
             gpus_per_run: int, cpus_per_run: int, time_minutes: int,
             max_parallel: int, sbatch: Optional[dict] = None):
  """A submitit executor for the experiment's tasks.

  Args:
    folder: where submitit keeps task pickles and its own logs (EXP/slurm).
    cluster: 'slurm', or 'local' (submitit's local executor: the same task
      and requeue path on this machine, to check a setup).
    job_name, partition, gpus_per_run, cpus_per_run, time_minutes,
    max_parallel: the job array's SLURM settings (never part of a recipe).
    sbatch: further sbatch options, {'account': 'abc', 'qos': 'high', 'mem':
      '16G'}, passed through as #SBATCH --KEY=VALUE.
  """
  if cluster == 'local':
    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(timeout_min=time_minutes, gpus_per_node=gpus_per_run,
                         signal_delay_s=SIGNAL_DELAY_S)
    return ex
  try:
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
  except RuntimeError as e:  # No srun: not a SLURM login node.
    raise errors.UserError(f'--launcher=slurm needs SLURM here ({e}); run it on the '
                           "cluster's login node, or use --launcher=local") from None
  params = dict(job_name=job_name, time=time_minutes, ntasks_per_node=1,
                array_parallelism=max_parallel, signal_delay_s=SIGNAL_DELAY_S)
  if gpus_per_run:
    params['gpus_per_node'] = gpus_per_run
  if cpus_per_run:
    params['cpus_per_task'] = cpus_per_run
  if partition:
    params['partition'] = partition
  if sbatch:
    params['additional_parameters'] = dict(sbatch)
  ex.update_parameters(**params)
  return ex


def submit(ex, jobs: list, log_dir: str) -> list:
  """Submits [(name, command)] as one array; returns submitit's jobs.

  Raises:
    errors.UserError: sbatch refused the array (its reason in one line).
  """
  names = [n for n, _ in jobs]
  commands = [c for _, c in jobs]
  logs = [os.path.join(log_dir, f'{n}.log') for n in names]
  try:
    return ex.map_array(RunTask(), names, commands, logs)
  except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError,
          RuntimeError, OSError) as e:
    raise errors.UserError(f'sbatch refused the job array: {_sbatch_error(e)}; fix the '
                           'option it names (--partition, --time_minutes, '
                           '--gpus_per_run, --sbatch) and rerun') from None


def array_id(jobs: list) -> str:
  """'4242' for the tasks '4242_0', '4242_1', ... (a single job: its id)."""
  return str(jobs[0].job_id).split('_')[0]


def task_ids(launch: dict) -> dict:
  """{task id: run name} of a recorded launch."""
  names = launch.get('runs', [])
  if len(names) == 1:
    return {str(launch['job_id']): names[0]}
  return {f"{launch['job_id']}_{i}": n for i, n in enumerate(names)}


def _expand(job_id: str) -> list:
  """squeue's '4242_[3-5,7%2]' -> ['4242_3', '4242_4', '4242_5', '4242_7']."""
  m = re.fullmatch(r'(\d+)_\[([^\]]+)\]', job_id)
  if not m:
    return [job_id]
  out = []
  for part in m[2].split('%')[0].split(','):
    lo, _, hi = part.partition('-')
    out += [f'{m[1]}_{i}' for i in range(int(lo), int(hi or lo) + 1)]
  return out


def active(launches: list) -> dict:
  """{run name: SLURM state} of the runs whose tasks are queued or running,
  over every SLURM launch of the experiment; squeue answers for live jobs
  whether or not the cluster keeps accounting."""
  ids = {}
  for launch in launches:
    if launch.get('launcher') == 'slurm':
      ids.update(task_ids(launch))
  if not ids:
    return {}
  arrays = sorted({i.split('_')[0] for i in ids})
  try:
    out = subprocess.run(['squeue', '-h', '-r', '-t', 'all', '-o', '%i|%T', '-j',
                          ','.join(arrays)],
                         capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return {}
  live = {}
  for line in out.splitlines():
    job, _, state = line.strip().partition('|')
    for one in _expand(job):
      if one in ids and state in ACTIVE_STATES:
        live[ids[one]] = state
  return live


def sacct_states(launch: dict) -> dict:
  """{run name: 'FAILED 1:0'} of a launch's tasks, from accounting; {} where
  the cluster keeps none."""
  ids = task_ids(launch)
  try:
    out = subprocess.run(['sacct', '-X', '-n', '-P', '-o', 'JobID,State,ExitCode', '-j',
                          str(launch['job_id'])], capture_output=True, text=True,
                         timeout=60)
  except (OSError, subprocess.SubprocessError):
    return {}
  states = {}
  for line in out.stdout.splitlines():
    parts = line.split('|')
    if len(parts) == 3 and parts[0] in ids:
      states[ids[parts[0]]] = f'{parts[1].split()[0]} {parts[2]}'
  return states
