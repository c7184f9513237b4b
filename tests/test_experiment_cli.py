"""`python -m resnet_jax.experiment` as a user types it: plan, run, kill,
resume, rerun, refusals; SLURM through fake sbatch/sacct and through
submitit's local executor."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from resnet_jax.experiments import plan as plan_lib
from resnet_jax.experiments import run_status

# Every test here trains in subprocesses: the full suite runs them, the
# fast tier (-m "not slow") does not.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(REPO, 'configs', 'cifar.py')


def _tiny(folder, steps=6):
  return ['--config.model=resnet8', '--config.dataset=tinyfolder',
          f'--config.data_dir={folder["data_dir"]}', '--config.batch_size=16',
          '--config.eval_batch_size=16', f'--config.num_train_steps={steps}',
          '--config.log_every_steps=1', '--config.checkpoint_every_steps=2']


def _experiment(*args, env=None, timeout=600):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.experiment', *args],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout,
                        env=env)


def _wait(predicate, what, proc=None, log=None, timeout=300):
  """Polls until `predicate()`; fails loudly (never returns silently) on a
  timeout or when `proc` ends first."""
  deadline = time.time() + timeout
  while not predicate():
    if time.time() > deadline or (proc is not None and proc.poll() is not None):
      why = f'timed out after {timeout} s' if time.time() > deadline else 'the process ended'
      pytest.fail(f'{why} waiting for {what}' + (f':\n{open(log).read()[-3000:]}'
                                                  if log else ''))
    time.sleep(0.05)


def _last_step(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max((json.loads(l)['step'] for l in f if l.endswith('\n')), default=0)


def _plan_lines(folder, tiny, statuses):
  flags = ' '.join(tiny)
  head = (f'Experiment {folder}: 2 run(s), 2 sweep point(s) x 1 seed(s) (0), of {CIFAR} '
          f'with {flags}')
  names = ['label_smoothing=0,seed=0', 'label_smoothing=0.1,seed=0']
  return [head] + [f'  {n:<26}  {s}' for n, s in zip(names, statuses)]


def test_an_experiment_survives_a_killed_launcher_and_reruns_idempotently(
    tiny_folder, tmp_path):
  folder = str(tmp_path / 'ls')
  tiny = _tiny(tiny_folder, steps=12)
  args = ['--config', 'configs/cifar.py', '--workdir', folder, '--seeds=0',
          '--sweep=label_smoothing=0,0.1', *tiny]
  first = os.path.join(folder, 'label_smoothing=0,seed=0')
  log = tmp_path / 'launcher.log'  # A file: a chatty child never stalls.
  with open(log, 'w') as out:
    proc = subprocess.Popen([sys.executable, '-m', 'resnet_jax.experiment', *args],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
  _wait(lambda: _last_step(first) >= 3, 'the first run to reach step 3', proc, log)
  proc.kill()  # SIGKILL: the launcher cannot forward anything itself.
  proc.wait()
  # The kernel tells the run (its parent died): it saves a checkpoint and exits.
  _wait(lambda: run_status.of(first).kind not in ('running', 'pending'),
        'the orphaned run to stop')
  status = run_status.of(first)
  assert status.kind == 'stopped', status
  with open(os.path.join(first, 'run.json')) as f:
    stopped_at = json.load(f)['sessions'][0]['stopped']
  assert stopped_at.startswith('SIGTERM at step ')
  step = int(stopped_at.split()[3].rstrip(';'))
  assert 3 <= step < 12 and os.path.isdir(os.path.join(first, 'checkpoints', str(step)))
  # The same command: the plan says where each run stands, then runs what is left.
  result = _experiment(*args)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[:4] == _plan_lines(folder, tiny, [f'stopped at step {step}; resumes',
                                                 'not started']) + [
      '  1 stopped, 1 pending']
  assert lines[-1] == f'All runs finished. python -m resnet_jax.results {folder}'
  with open(os.path.join(folder, 'logs', 'label_smoothing=0,seed=0.log')) as f:
    assert f'Resuming from the checkpoint at step {step}' in f.read()
  for name in ('label_smoothing=0,seed=0', 'label_smoothing=0.1,seed=0'):
    assert run_status.of(os.path.join(folder, name)).kind == 'complete'
  # Again: nothing to do, and it says so.
  before = open(os.path.join(folder, 'experiment.json')).read()
  result = _experiment('--workdir', folder)
  assert result.returncode == 0, result.stderr[-3000:]
  done = [run_status.of(os.path.join(folder, n)).detail
          for n in ('label_smoothing=0,seed=0', 'label_smoothing=0.1,seed=0')]
  assert result.stdout.splitlines() == _plan_lines(folder, tiny, done) + [
      '  2 complete',
      'Nothing to run: every run is finished, running or queued. python -m '
      f'resnet_jax.results {folder} reads them.']
  # A different plan on the folder: refused, nothing written.
  result = _experiment(*args[:-len(tiny)], *tiny[:-3], '--config.num_train_steps=20',
                       *tiny[-2:])
  assert result.returncode == 2
  assert result.stderr.strip() == (
      f'error: {folder} holds an experiment with a different plan (num_train_steps 12 -> '
      f'20); rerun it with its own plan (python -m resnet_jax.experiment --workdir '
      f'{folder}), or pass a new --workdir for the new plan (results reads several '
      'experiment folders together)')
  assert open(os.path.join(folder, 'experiment.json')).read() == before
  # Another preset, seeds and sweep not given: the folder's own seeds and
  # sweep stay, so the refusal names the recipe, not "seeds 0 -> ...".
  result = _experiment('--config', 'configs/cifar.py:resnet20', '--workdir', folder)
  assert result.returncode == 2
  assert 'model "resnet8" -> "resnet20"' in result.stderr
  assert 'seeds' not in result.stderr and 'sweep' not in result.stderr
  assert open(os.path.join(folder, 'experiment.json')).read() == before


def test_experiment_refusals_are_one_line_and_write_nothing(tiny_folder, tmp_path):
  folder = tmp_path / 'e'
  no_submitit = tmp_path / 'no_submitit'
  (no_submitit / 'submitit').mkdir(parents=True)
  (no_submitit / 'submitit' / '__init__.py').write_text('raise ImportError("absent")\n')
  env_without = dict(os.environ, PYTHONPATH=f'{no_submitit}:{REPO}')
  cases = [
      (['--sweep=label_smothing=0,0.1'], None,
       "--sweep=label_smothing=0,0.1 names no config field 'label_smothing'; nearest: "
       'label_smoothing; python -m resnet_jax.main --help lists the fields'),
      (['--sweep=eval_batch_size=20,40'], None,
       '--sweep=eval_batch_size=20,40 sweeps eval_batch_size, a runtime field: it changes '
       'no result (a run may change it on resume); sweep a recipe field, or set '
       '--config.eval_batch_size for all'),
      (['--seeds=3-1'], None,
       "--seeds='3-1' is not a seed list; pass e.g. --seeds=0-4 (five seeds), "
       '--seeds=0,3,7 or --seeds=0-2,10'),
      (['--seeds='], None,
       "--seeds='' is not a seed list; pass e.g. --seeds=0-4 (five seeds), "
       '--seeds=0,3,7 or --seeds=0-2,10'),
      (['--launcher=slurm'], env_without,
       '--launcher=slurm needs submitit, an optional extra: pip install -e ".[slurm]" '
       '(or pip install submitit)'),
      (['--sweep=label_smoothing=0,1.5'], None,
       'run label_smoothing=1.5,seed=0: label_smoothing must be in [0, 1), 0 for none, '
       'got 1.5; set --config.label_smoothing'),
      (['--config.label_smoothing=0.1', '--sweep=label_smoothing=0,0.2'], None,
       '--config.label_smoothing fixes a field the sweep varies; drop one of them'),
      (['--program=nope.py'], None,
       "--program nope.py is not a file; pass a script that takes main's flags, e.g. "
       'benchmarks/torch_baseline.py'),
  ]
  for extra, env, message in cases:
    result = _experiment('--workdir', str(folder), *_tiny(tiny_folder), *extra, env=env)
    assert result.returncode == 2, (extra, result.stderr[-2000:])
    assert result.stderr.strip() == f'error: {message}', extra
    assert not folder.exists()
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'run.json').write_text('{}')
  result = _experiment('--workdir', str(run), *_tiny(tiny_folder))
  assert result.returncode == 2 and result.stderr.strip() == (
      f'error: {run} is the workdir of a single run, not an experiment folder; pass a '
      'new --workdir')
  assert os.listdir(run) == ['run.json']


def _fake_slurm(tmp_path):
  """sbatch (records each script, prints a new job id), srun, squeue that
  answers from QUEUE and sacct from STATES ('id|state' lines), and a GPU
  partition `gpu` (scontrol, sinfo)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(
      '#!/bin/sh\nn=$(ls "$FAKE_SLURM"/script_* 2>/dev/null | wc -l)\n'
      'cp "$1" "$FAKE_SLURM/script_$n"\necho "Submitted batch job $((4242 + n))"\n')
  (bin_dir / 'srun').write_text('#!/bin/sh\nexit 0\n')
  (bin_dir / 'sacct').write_text(
      '#!/bin/sh\ncat "$FAKE_SLURM/STATES" 2>/dev/null\n')
  (bin_dir / 'squeue').write_text('#!/bin/sh\ncat "$FAKE_SLURM/QUEUE" 2>/dev/null\n')
  (bin_dir / 'scontrol').write_text(
      '#!/bin/sh\necho "PartitionName=gpu Nodes=n1 MaxTime=1-00:00:00 Default=YES"\n')
  (bin_dir / 'sinfo').write_text('#!/bin/sh\necho "gpu:4"\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  state = tmp_path / 'slurm_state'
  state.mkdir()
  return dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_SLURM=str(state)), state


def test_slurm_launch_is_one_array_of_the_runs_commands(tiny_folder, tmp_path):
  from submitit.core import utils as submitit_utils
  env, state = _fake_slurm(tmp_path)
  folder = str(tmp_path / 'ls')
  args = ['--config', 'configs/cifar.py', '--workdir', folder, '--seeds=0-2',
          '--launcher=slurm', '--partition=gpu', '--gpus_per_run=1', '--time_minutes=60',
          '--max_parallel=2', *_tiny(tiny_folder)]
  result = _experiment(*args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  slurm_dir = os.path.join(folder, 'slurm')
  assert result.stdout.splitlines()[-1] == (
      'Submitted 3 run(s) as job 4242 (array of 3, at most 2 at a time, named ls). Follow '
      f"it: squeue -j 4242; each run's console: {folder}/logs/NAME.log. Rerun this "
      'command to see progress (and resubmit what failed).')
  script = (state / 'script_0').read_text().splitlines()
  for line in ('#SBATCH --array=0-2%2', '#SBATCH --partition=gpu', '#SBATCH --time=60',
               '#SBATCH --gpus-per-node=1', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --signal=USR2@120'):
    assert line in script
  assert not any('seed' in l or 'config' in l for l in script if l.startswith('#SBATCH'))
  # Each task runs its own run's ordinary command.
  stored = plan_lib.read(folder)
  plan = plan_lib.Plan(stored['config'], stored['overrides'], stored['points'],
                       stored['seeds'], stored['sweep'])
  for i, name in enumerate(['seed=0', 'seed=1', 'seed=2']):
    task = submitit_utils.DelayedSubmission.load(
        os.path.join(slurm_dir, f'4242_{i}_submitted.pkl'))
    assert type(task.function).__name__ == 'RunTask'
    workdir = os.path.abspath(os.path.join(folder, name))
    assert task.args == (name, plan.command(workdir),
                         os.path.join(os.path.abspath(folder), 'logs', f'{name}.log'))
    assert task.args[1][-1] == f'--config.seed={i}'
  # Rerun while the array is queued (squeue shows pending tasks as one
  # range): nothing is submitted twice; without --launcher, the experiment's own.
  (state / 'QUEUE').write_text('4242_0|RUNNING\n4242_[1-2%2]|PENDING\n')
  result = _experiment('--workdir', folder, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-2:] == [
      '  3 queued', 'Nothing to run: every run is finished, running or queued. python -m '
      f'resnet_jax.results {folder} reads them.']
  # One task failed (gone from the queue; sacct says so): only its run goes
  # again, as a new job, and the plan says why.
  (state / 'QUEUE').write_text('4242_0|RUNNING\n4242_2|PENDING\n')
  (state / 'STATES').write_text('4242_0|RUNNING|0:0\n4242_1|FAILED|1:0\n4242_2|PENDING|0:0\n')
  result = _experiment('--workdir', folder, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f'  seed=1  task of job 4242 ended FAILED 1:0 (sacct); log: {folder}/logs/'
          'seed=1.log') in result.stdout.splitlines()
  assert result.stdout.splitlines()[-1].startswith(
      'Submitted 1 run(s) as job 4243 (one task, at most 2 at a time, named ls).')
  launches = plan_lib.read(folder)['launches']
  assert [(l['job_id'], l['runs']) for l in launches] == [
      ('4242', ['seed=0', 'seed=1', 'seed=2']), ('4243', ['seed=1'])]


def _task_pid(controller_pid):
  """The submitit task process a local-executor controller started."""
  for pid in os.listdir('/proc'):
    try:
      with open(f'/proc/{pid}/stat') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      with open(f'/proc/{pid}/cmdline') as f:
        cmdline = f.read()
    except (OSError, ValueError, IndexError):
      continue
    if ppid == controller_pid and 'submitit.core._submit' in cmdline:
      return int(pid)
  return None


@pytest.mark.skipif(sys.platform != 'linux', reason='reads /proc')
def test_a_preempted_task_is_requeued_and_its_run_resumes(tiny_folder, tmp_path):
  # submitit's local executor runs the SLURM task path on this machine: USR2
  # (SLURM's warning before preemption or the time limit) -> the run saves a
  # checkpoint -> the task is requeued -> the same command resumes it.
  from resnet_jax.experiments import slurm
  folder = str(tmp_path / 'exp')
  plan = plan_lib.Plan(CIFAR, {}, [{}], [0])
  workdir = os.path.join(folder, 'seed=0')
  command = plan.command(workdir) + _tiny(tiny_folder, steps=30)
  ex = slurm.executor(os.path.join(folder, 'slurm'), 'local', job_name='t', partition='',
                      gpus_per_run=0, cpus_per_run=0, time_minutes=30, max_parallel=1)
  (job,) = slurm.submit(ex, [('seed=0', command)], os.path.join(folder, 'logs'))
  _wait(lambda: _last_step(workdir) >= 4, 'the run to reach step 4')
  task = _task_pid(int(job.job_id))
  assert task is not None
  os.kill(task, signal.SIGUSR2)
  assert job.result() == 'seed=0'  # Waits for the requeued task.
  with open(os.path.join(workdir, 'run.json')) as f:
    sessions = json.load(f)['sessions']
  assert len(sessions) == 2 and sessions[0]['stopped'].startswith('SIGTERM at step ')
  step = int(sessions[0]['stopped'].split()[3].rstrip(';'))
  assert sessions[1]['start_step'] == step and sessions[1]['final_step'] == 30
  assert 'Requeued job' in open(job.paths.stdout).read() + open(job.paths.stderr).read()
