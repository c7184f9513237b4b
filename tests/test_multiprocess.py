"""Two processes x 2 devices through launch.sh equal one process x 4 devices."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, devices, timeout=600):
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=timeout)


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def test_two_processes_match_one_process(tiny_data, tmp_path):
  overrides = [f'--config.data_dir={tiny_data["data_dir"]}', '--config.model=resnet8',
               '--config.batch_size=16', '--config.eval_batch_size=16',
               '--config.num_train_steps=6', '--config.log_every_steps=2',
               '--config.checkpoint_every_steps=3', '--config.learning_rate=0.005']
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  result = _run(['./launch.sh', 'configs/cifar.py', two, '--nproc', '2', *overrides], 2)
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'process 0 of 2 (2 local devices)' in result.stderr
  result = _run([sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py',
                 '--workdir', one, *overrides], 4)
  assert result.returncode == 0, result.stderr[-4000:]
  got, want = _lines(two), _lines(one)
  print('two processes:', got, '\none process:', want, sep='\n')
  assert [l['step'] for l in got] == [l['step'] for l in want] == [2, 4, 4, 6, 6]
  for g, w in zip(got, want):
    for key in ('train_loss', 'train_accuracy', 'eval_loss', 'eval_accuracy'):
      if key in w:
        assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-5), (g['step'], key)
  # Checkpoints were written collectively, once.
  assert sorted(os.listdir(os.path.join(two, 'checkpoints'))) == ['3', '4', '6']


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
