"""The SLURM launcher: an experiment's runs as one job array, through submitit.

Each array task runs one ordinary `python -m resnet_jax.main` (its console in
the task's submitit log). Before a time limit or a preemption SLURM sends the
task USR2; submitit then calls `RunTask.checkpoint`, which stops the run with
SIGTERM (the run saves a checkpoint and exits) and has the task requeued: the
requeued task runs the same command, which resumes from that checkpoint. A
task that runs twice (a requeue racing a resubmission) is harmless: the second
finds the workdir locked or the run complete.

submitit is an optional extra (`pip install -e ".[slurm]"`), imported here only.
"""

import os
import signal
import subprocess
import time

import submitit

from resnet_jax import errors

# Job states that will still run (or are running): such runs are not
# submitted again.
ACTIVE_STATES = ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING',
                 'RESIZING', 'SUSPENDED', 'REQUEUE_HOLD', 'REQUEUE_FED')
# Seconds between SLURM's warning signal and the kill: enough for the run to
# finish its step and write a checkpoint.
SIGNAL_DELAY_S = 120


def _ignore_usr2() -> None:
  """In the run's process: SLURM signals every process of the step, and USR2
  would kill a run; the task (its parent) answers it instead."""
  signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class RunTask(submitit.helpers.Checkpointable):
  """One array task: runs one run's command; requeued with it on USR2."""

  def __init__(self):
    self._proc = None

  def __call__(self, name: str, command: list) -> str:
    self._proc = subprocess.Popen(command, preexec_fn=_ignore_usr2)
    # Polled, not wait()ed: a blocking wait holds the Popen's lock, and the
    # USR2 handler (`checkpoint`, run on this thread) could then never reap
    # the run it stopped.
    while (code := self._proc.poll()) is None:
      time.sleep(0.5)
    self._proc = None
    if code:
      raise RuntimeError(f'run {name} exited with code {code}; its console is in '
                         "this task's log")
    return name

  def checkpoint(self, name: str, command: list):
    """Stops the run (it checkpoints) and resubmits the same command."""
    if self._proc is not None and self._proc.poll() is None:
      self._proc.send_signal(signal.SIGTERM)
      try:
        self._proc.wait(timeout=SIGNAL_DELAY_S - 15)
      except subprocess.TimeoutExpired:
        pass  # SLURM kills it; the run resumes from its previous checkpoint.
    self._proc = None
    return super().checkpoint(name, command)

  def __getstate__(self):
    return {}  # A process never travels with the pickled task.

  def __setstate__(self, state):
    self._proc = None


def executor(folder: str, cluster: str, *, job_name: str, partition: str,
             gpus_per_run: int, cpus_per_run: int, time_minutes: int,
             max_parallel: int):
  """A submitit executor for the experiment's tasks.

  Args:
    folder: where submitit keeps task pickles and logs (EXP/slurm).
    cluster: 'slurm', or 'local' (submitit's local executor: the same task
      and requeue path on this machine, to check a setup).
    job_name, partition, gpus_per_run, cpus_per_run, time_minutes,
    max_parallel: the job array's SLURM settings (never part of a recipe).
  """
  if cluster == 'local':
    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(timeout_min=time_minutes, gpus_per_node=gpus_per_run,
                         signal_delay_s=SIGNAL_DELAY_S)
    return ex
  try:
    ex = submitit.SlurmExecutor(folder=folder)
  except RuntimeError as e:  # No srun: not a SLURM login node.
    raise errors.UserError(f'--launcher=slurm needs SLURM here ({e}); run it on the '
                           "cluster's login node, or use --launcher=local") from None
  params = dict(job_name=job_name, time=time_minutes, gpus_per_node=gpus_per_run,
                ntasks_per_node=1, array_parallelism=max_parallel,
                signal_delay_s=SIGNAL_DELAY_S)
  if cpus_per_run:
    params['cpus_per_task'] = cpus_per_run
  if partition:
    params['partition'] = partition
  ex.update_parameters(**params)
  return ex


def submit(ex, jobs: list) -> list:
  """Submits [(name, command)] as one array; returns submitit's jobs."""
  names = [n for n, _ in jobs]
  commands = [c for _, c in jobs]
  return ex.map_array(RunTask(), names, commands)


def array_id(jobs: list) -> str:
  """'4242' for the tasks '4242_0', '4242_1', ... (a single job: its id)."""
  return str(jobs[0].job_id).split('_')[0]


def active(folder: str, launch: dict) -> set:
  """Names of a recorded launch's runs whose tasks are queued or running
  (sacct, through submitit); empty when SLURM cannot say."""
  names = launch.get('runs', [])
  ids = ([launch['job_id']] if len(names) == 1 else
         [f"{launch['job_id']}_{i}" for i in range(len(names))])
  # All registered first: one sacct call answers for the whole array.
  jobs = [submitit.SlurmJob(folder=folder, job_id=i) for i in ids]
  out = set()
  for name, job in zip(names, jobs):
    try:
      state = job.state
    except Exception:  # noqa: BLE001  sacct missing or failing: nothing known.
      state = 'UNKNOWN'
    if state.split()[0] in ACTIVE_STATES:
      out.add(name)
  return out


def log_pattern(folder: str, job_id: str) -> str:
  return os.path.join(folder, f'{job_id}_*_log.out')
