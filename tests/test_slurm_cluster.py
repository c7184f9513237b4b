"""The SLURM launcher against a real single-node SLURM (tests/slurm_cluster.sh):
submission, reruns while queued, preemption by SLURM's default SIGTERM, the
time-limit warning (USR2), scancel and resubmission, failing tasks, and what
sbatch would refuse. A tier of its own: `python -m pytest -q -m slurm tests`
(`.ci/run` installs SLURM and runs it; the default command leaves it out);
skipped without SLURM's daemons or root. The fake-sbatch tests in
test_experiment_cli.py cover the rest."""

import json
import os
import shutil
import subprocess
import time

import pytest

from resnet_jax.experiments import plan as plan_lib
from resnet_jax.experiments import run_status
from tests.test_experiment_cli import CIFAR, REPO, _experiment, _last_step, _tiny, _wait

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.skipif(
    not (shutil.which('slurmctld') and shutil.which('slurmd') and os.geteuid() == 0),
    reason='needs SLURM (tests/slurm_cluster.sh install) and root')]

STEPS = 24


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
  folder = tmp_path_factory.mktemp('slurm')
  script = os.path.join(REPO, 'tests', 'slurm_cluster.sh')
  started = subprocess.run([script, 'start', str(folder)], capture_output=True, text=True,
                           timeout=300)
  env = dict(os.environ, SLURM_CONF=str(folder / 'slurm.conf'))
  try:
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    yield env
  finally:
    subprocess.run([script, 'stop', str(folder)], timeout=120)


def _squeue(env, job):
  out = subprocess.run(['squeue', '-h', '-r', '-j', job, '-o', '%i|%T'], capture_output=True,
                       text=True, env=env).stdout
  return dict(l.split('|') for l in out.split())


def _launch(folder, tiny, env, *extra):
  return _experiment('--config', CIFAR, '--workdir', folder, *tiny, *extra, env=env)


def test_what_sbatch_would_refuse_is_one_line_and_leaves_nothing(cluster, tiny_folder,
                                                                 tmp_path):
  folder = str(tmp_path / 'e')
  for extra, message in (
      (['--partition=nope'], 'error: partition nope does not exist'),
      (['--partition=cpu', '--time_minutes=60'],
       "error: --time_minutes=60 is above partition cpu's time limit (30 min)"),
      (['--partition=cpu', '--time_minutes=10', '--gpus_per_run=1'],
       'error: --gpus_per_run=1 but partition cpu has no GPUs'),
      (['--partition=cpu', '--time_minutes=10', '--sbatch=mem=999999G'],
       'error: sbatch refused the job array')):
    result = _launch(folder, _tiny(tiny_folder), cluster, '--launcher=slurm', *extra)
    assert result.returncode == 2, (extra, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(message) and 'Traceback' not in result.stderr, last
    assert not os.path.exists(folder)


@pytest.fixture(scope='module')
def experiment(cluster, tiny_folder, tmp_path_factory):
  """Two seeds on the preemptible partition `low`, CPU only (no --gpus_per_run:
  the partition has none), each an image-folder run with loader worker
  processes, then reruns while they are queued or running."""
  folder = str(tmp_path_factory.mktemp('exp') / 'sl')
  # Decoded from the files by 2 grain worker processes, which SLURM signals
  # with the task: 96 px makes a batch (442 KB) outgrow a pipe (64 KB), so
  # a worker that died of the signal left its run hung (fixed; issue 41).
  tiny = _tiny(tiny_folder, steps=STEPS) + ['--config.image_size=96',
                                            '--config.input_workers=2']
  first = _launch(folder, tiny, cluster, '--seeds=0-1', '--launcher=slurm', '--partition=low',
                  '--time_minutes=10')
  assert first.returncode == 0, first.stderr[-3000:]
  rerun = _experiment('--workdir', folder, env=cluster)  # Remembers slurm, low, ...
  return folder, tiny, first, rerun


def test_a_rerun_while_queued_submits_nothing(experiment, cluster):
  folder, _, first, rerun = experiment
  assert 'named sl)' in first.stdout
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'Nothing to run: every run is finished, running or queued.' in rerun.stdout
  assert len(plan_lib.read(folder)['launches']) == 1
  assert plan_lib.read(folder)['launch_options']['gpus_per_run'] == 0


def test_preemption_by_sigterm_requeues_and_the_run_ends_as_if_uninterrupted(
    experiment, cluster, tiny_folder, tmp_path):
  folder, tiny, _, _ = experiment
  workdirs = [os.path.join(folder, f'seed={s}') for s in (0, 1)]
  _wait(lambda: min(_last_step(w) for w in workdirs) >= 4, 'both runs past step 4',
        timeout=300)
  # A job on the high-priority partition that needs the whole node: SLURM
  # preempts both tasks as it does by default (SIGTERM, GraceTime, requeue).
  cpus = os.cpu_count()
  high = subprocess.run(['sbatch', '--parsable', '-p', 'high', '-c', str(cpus), '-o', os.devnull, '--wrap',
                         'sleep 2'], capture_output=True, text=True, env=cluster)
  assert high.returncode == 0, high.stderr
  _wait(lambda: all(run_status.of(w).kind == run_status.COMPLETE for w in workdirs),
        'both preempted runs to come back and finish', timeout=600)
  for workdir in workdirs:
    with open(os.path.join(workdir, 'run.json')) as f:
      sessions = json.load(f)['sessions']
    assert len(sessions) >= 2 and 'SIGTERM at step' in sessions[0]['stopped'], sessions
    assert sessions[-1]['final_step'] == STEPS
    log = open(os.path.join(folder, 'logs', os.path.basename(workdir) + '.log')).read()
    assert log.count('== task ') >= 2 and 'Resuming from the checkpoint' in log
    assert 'by 2 grain worker process(es)' in log
  # Equal to an uninterrupted run of the same recipe, here.
  reference = str(tmp_path / 'ref' / 'seed=0')
  plan = plan_lib.Plan(CIFAR, {}, [{}], [0])
  done = subprocess.run(plan.command(reference) + tiny, capture_output=True, text=True,
                        cwd=REPO, env=cluster, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = lambda w: [{k: v for k, v in json.loads(l).items() if k != 'images_per_sec'}
                     for l in open(os.path.join(w, 'metrics.jsonl'))]
  assert lines(workdirs[0]) == lines(reference)


def test_scancel_then_two_reruns_resubmit_once_and_failures_say_why(cluster, tiny_folder,
                                                                    tmp_path):
  folder = str(tmp_path / 'c')
  tiny = _tiny(tiny_folder, steps=5000)  # Still running when scancel comes.
  first = _launch(folder, tiny, cluster, '--seeds=0-1', '--launcher=slurm',
                  '--partition=cpu', '--time_minutes=10')
  assert first.returncode == 0, first.stderr[-3000:]
  job = plan_lib.read(folder)['launches'][0]['job_id']
  workdirs = [os.path.join(folder, f'seed={s}') for s in (0, 1)]
  _wait(lambda: _last_step(workdirs[0]) >= 2, 'seed=0 to train', timeout=300)
  # SLURM's time-limit warning (USR2) to seed=0's task: checkpoint, requeue.
  subprocess.run(['scancel', '--signal=USR2', f'{job}_0'], check=True, env=cluster)
  _wait(lambda: len(json.load(open(os.path.join(workdirs[0], 'run.json')))['sessions']) >= 2,
        'seed=0 to resume after USR2', timeout=300)
  # scancel seed=1: the first rerun resubmits it, the second does nothing.
  subprocess.run(['scancel', f'{job}_1'], check=True, env=cluster)
  _wait(lambda: f'{job}_1' not in _squeue(cluster, job), 'seed=1 to leave the queue',
        timeout=120)
  again = _experiment('--workdir', folder, env=cluster)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.splitlines()[-1].startswith('Submitted 1 run(s) as job')
  twice = _experiment('--workdir', folder, env=cluster)
  assert 'Nothing to run' in twice.stdout, twice.stdout
  assert [l['runs'] for l in plan_lib.read(folder)['launches']] == [['seed=0', 'seed=1'],
                                                                    ['seed=1']]
  subprocess.run(['scancel', '-n', 'c'], env=cluster)
  # A task whose run fails before it writes run.json (its workdir is a file by
  # the time the task starts): failed, with the run's own error line.
  bad = str(tmp_path / 'f')
  result = _launch(bad, _tiny(tiny_folder), cluster, '--launcher=slurm', '--partition=cpu',
                   '--time_minutes=10', '--sbatch=begin=now+3600')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(bad, 'seed=0'), 'w') as f:
    f.write('not a folder')
  held = plan_lib.read(bad)['launches'][0]['job_id']
  subprocess.run(['scontrol', 'update', f'JobId={held}', 'StartTime=now'], check=True,
                 env=cluster)
  _wait(lambda: run_status.of(os.path.join(bad, 'seed=0')).kind == run_status.FAILED,
        'the task to fail', timeout=300)
  detail = run_status.of(os.path.join(bad, 'seed=0')).detail
  assert detail.startswith(f'failed of task {held} (exit 2): error: ') and 'log: ' in detail
  plan = _experiment('--workdir', bad, '--dry_run', env=cluster)
  assert f'  seed=0  {detail}' in plan.stdout.splitlines(), plan.stdout
  assert '1 failed' in plan.stdout
