"""Two processes x 2 devices through launch.sh equal one process x 4 devices."""

import json
import os
import subprocess
import sys

import jax
import pytest

from resnet_jax.training import run_setup
from tests.conftest import STEP_RTOL, relative_differences, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, devices, timeout=600):
  # Keeps the caller's XLA flags (an ISA limit, say) but sets the device count.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS='cpu',
             XLA_FLAGS=' '.join(flags + [f'--xla_force_host_platform_device_count={devices}']))
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=timeout)


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def _state_at(tiny_data, workdir, step):
  config = tiny_config(tiny_data['data_dir'])
  run = run_setup.Run(config, workdir, need_train=False)
  state = jax.device_get(run.restore(step))
  run.release()
  return state


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_data, tmp_path):
  overrides = [f'--config.data_dir={tiny_data["data_dir"]}', '--config.model=resnet8',
               '--config.batch_size=16', '--config.eval_batch_size=16',
               '--config.num_train_steps=3', '--config.log_every_steps=1',
               '--config.checkpoint_every_steps=1', '--config.eval_every_epochs=0.5']
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  result = _run(['./launch.sh', 'configs/cifar.py', two, '--nproc', '2', *overrides], 2)
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'process 0 of 2 (2 local devices)' in result.stderr
  result = _run([sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py',
                 '--workdir', one, *overrides], 4)
  assert result.returncode == 0, result.stderr[-4000:]
  got, want = _lines(two), _lines(one)
  print('two processes:', got, '\none process:', want, sep='\n')
  assert [l['step'] for l in got] == [l['step'] for l in want] == [1, 2, 2, 3, 3]
  # Step 1 is fixed by the maths (same start, same batch): it agrees to
  # rounding, as any two layouts do (tests/test_parallel.py). Later steps
  # only amplify that rounding, so they are not compared.
  assert got[0]['train_loss'] == pytest.approx(want[0]['train_loss'], rel=STEP_RTOL)
  diffs = relative_differences(_state_at(tiny_data, one, 1), _state_at(tiny_data, two, 1))
  print('state after step 1, two processes vs one:', diffs)
  assert max(diffs.values()) <= STEP_RTOL, diffs
  # Checkpoints were written collectively, once; one run record, by process 0.
  assert sorted(os.listdir(os.path.join(two, 'checkpoints'))) == ['1', '2', '3']
  with open(os.path.join(two, 'run.json')) as f:
    record = json.load(f)
  assert len(record['sessions']) == 1
  assert record['sessions'][0]['process_count'] == 2
  assert record['sessions'][0]['device_count'] == 4


def test_inconsistent_process_flags_are_refused(tmp_path):
  result = _run([sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py',
                 '--workdir', str(tmp_path / 'w'), '--coordinator_address=localhost:1',
                 '--num_processes=2', '--process_id=2'], 1, timeout=120)
  assert result.returncode == 2
  assert 'is not in 0..1' in result.stderr.strip().splitlines()[-1]
  result = _run([sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py',
                 '--workdir', str(tmp_path / 'w'), '--num_processes=2'], 1, timeout=120)
  assert result.returncode == 2 and 'go together' in result.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('args', [
    ['--nproc', '2', 'configs/cifar.py', 'runs/x', '--config.seed=3'],
    ['configs/cifar.py', '--nproc=2', '--config.seed=3', 'runs/x'],
    ['configs/cifar.py', 'runs/x', '--config.seed=3', '--nproc', '2']])
def test_launcher_takes_options_anywhere(args, tmp_path):
  # PYTHON=echo prints the command each process would run; a host without
  # GPUs whatever this machine has (launch.sh splits real GPUs over --nproc).
  (tmp_path / 'nvidia-smi').write_text('#!/bin/sh\nexit 0\n')
  (tmp_path / 'nvidia-smi').chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
  env.update(PYTHON='echo', RESNET_JAX_PORT='1234', PATH=f'{tmp_path}:{env["PATH"]}')
  result = subprocess.run(['./launch.sh', *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)
  assert result.returncode == 0, result.stderr
  assert sorted(result.stdout.strip().splitlines()) == [
      f'-m resnet_jax.main --config configs/cifar.py --workdir runs/x '
      f'--coordinator_address=localhost:1234 --num_processes=2 --process_id={i} '
      '--config.seed=3' for i in (0, 1)]


@pytest.mark.parametrize('args', [[], ['configs/cifar.py'], ['a', 'b', 'c'],
                                  ['configs/cifar.py', 'runs/x', '--nproc']])
def test_launcher_usage_errors_exit_2(args):
  result = subprocess.run(['./launch.sh', *args], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHON='echo'), timeout=60)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('usage: ./launch.sh CONFIG WORKDIR')


@pytest.mark.slow
def test_every_process_refuses_a_busy_workdir(tiny_data, tmp_path):
  from resnet_jax.workdir import run_lock
  workdir = tmp_path / 'w'
  lock = run_lock.Lock(str(workdir))  # This test process holds it.
  try:
    result = _run(['./launch.sh', 'configs/cifar.py', str(workdir), '--nproc', '2',
                   f'--config.data_dir={tiny_data["data_dir"]}', '--config.model=resnet8',
                   '--config.batch_size=16', '--config.num_train_steps=2'], 2,
                  timeout=300)
  finally:
    lock.release()
  assert result.returncode == 2, result.stderr[-3000:]
  # One refusal per process (their lines may interleave on the shared pipe).
  assert result.stderr.count(f'error: workdir {workdir} is in use by pid '
                             f'{os.getpid()} on ') == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert os.listdir(workdir) == ['run.lock']


@pytest.mark.slow
def test_processes_that_see_different_workdirs_are_refused(tiny_data, tmp_path):
  # The same relative --workdir from two folders: as two hosts whose "runs/x"
  # is each one's local disk. Process 1 finds a folder there, but not the lock
  # file process 0 wrote.
  import socket
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b' / 'w').mkdir(parents=True)
  flags = ['--config', os.path.join(REPO, 'configs', 'cifar.py'), '--workdir', 'w',
           f'--config.data_dir={tiny_data["data_dir"]}', '--config.model=resnet8',
           '--config.batch_size=16', '--config.num_train_steps=2',
           f'--coordinator_address=localhost:{port}', '--num_processes=2']
  flags_env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
                   XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-m', 'resnet_jax.main', *flags,
                             f'--process_id={i}'], cwd=tmp_path / folder, env=flags_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i, folder in enumerate('ab')]
  outs = [p.communicate(timeout=300)[1] for p in procs]
  for p, err in zip(procs, outs):
    assert p.returncode == 2 and 'Traceback' not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        'error: process(es) 1 do not see the workdir w that process 0 writes (its '
        'run.lock is missing or another one there); every process needs the same '
        '--workdir on a shared filesystem (an absolute path on NFS, Lustre or a '
        'mounted bucket), not a disk of its own')
  # Process 0 left nothing behind; process 1's folder is as it was.
  assert os.listdir(tmp_path / 'a') == [] and os.listdir(tmp_path / 'b' / 'w') == []


@pytest.mark.parametrize('env,gpus,want', [
    ({'SLURM_NTASKS_PER_NODE': '1', 'SLURM_LOCALID': '0'}, 8, list(range(8))),
    ({'SLURM_TASKS_PER_NODE': '1(x4)', 'SLURM_LOCALID': '0'}, 8, list(range(8))),
    ({'SLURM_TASKS_PER_NODE': '8(x2)', 'SLURM_LOCALID': '5'}, 8, [5]),
    ({'SLURM_NTASKS_PER_NODE': '2', 'SLURM_LOCALID': '1'}, 8, [4, 5, 6, 7]),
    # --gpus-per-task=1: SLURM makes one GPU visible to each task.
    ({'SLURM_NTASKS_PER_NODE': '8', 'SLURM_LOCALID': '6'}, 1, [0]),
    ({'SLURM_NTASKS_PER_NODE': '8', 'SLURM_LOCALID': '6'}, 0, None)])
def test_slurm_tasks_train_on_every_gpu_of_their_node(env, gpus, want):
  from resnet_jax.parallelism import distributed
  assert distributed.slurm_local_device_ids(env, gpus) == want


def test_slurm_gpus_that_do_not_split_are_refused():
  from resnet_jax import errors
  from resnet_jax.parallelism import distributed
  with pytest.raises(errors.UserError, match='do not split evenly over the 3 tasks'):
    distributed.slurm_local_device_ids({'SLURM_NTASKS_PER_NODE': '3'}, 8)


def test_launcher_gives_each_local_process_its_own_gpus(tmp_path):
  # A fake nvidia-smi listing 8 GPUs, and a "python" that prints what each
  # process receives.
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'nvidia-smi').write_text(
      '#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo "GPU $i: Fake (UUID: GPU-$i)"; done\n')
  (bin_dir / 'show').write_text('#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES $*"\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
  env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHON=str(bin_dir / 'show'),
             RESNET_JAX_PORT='1234')
  result = subprocess.run(['./launch.sh', 'configs/cifar.py', 'runs/x', '--nproc', '4'],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
  assert result.returncode == 0, result.stderr
  got = sorted(line.split()[0] + ' ' + line.split()[-1]
               for line in result.stdout.strip().splitlines())
  assert got == ['0,1 --process_id=0', '2,3 --process_id=1', '4,5 --process_id=2',
                 '6,7 --process_id=3']
  result = subprocess.run(['./launch.sh', 'configs/cifar.py', 'runs/x', '--nproc', '3'],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip() == ('error: 8 GPUs do not split evenly over --nproc 3; '
                                   'pass a divisor of 8')
