"""Faults and bad input: kills, signals, damaged checkpoints, divergence, typos."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax import input_pipeline
from resnet_jax import train
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


def _flags(data_dir, workdir, *extra):
  return ['--config', 'configs/cifar.py', '--workdir', str(workdir),
          f'--config.data_dir={data_dir}', '--config.model=resnet8',
          '--config.batch_size=16', '--config.eval_batch_size=16',
          f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
          '--config.checkpoint_every_steps=5', *extra]


def _start(args):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  return subprocess.Popen([sys.executable, '-m', 'resnet_jax.main', *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _wait_for_step(workdir, step, proc, timeout=300):
  """Blocks until metrics.jsonl reaches `step` (or the process ends)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(l)['step'] for l in f if l.endswith('\n')]
      if steps and max(steps) >= step:
        return
    time.sleep(0.02)


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  for l in lines:
    l.pop('images_per_sec', None)
  return lines


def _final(config, workdir):
  run = train._Run(config, str(workdir), need_train=False)
  state = jax.device_get(run.restore())
  run.ckpt.close()
  return state


def _assert_bitwise_equal(config, a, b):
  assert _metrics(a) == _metrics(b)
  sa, sb = _final(config, a), _final(config, b)
  assert int(sa.step) == int(sb.step) == STEPS
  for tree in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(sa, tree), getattr(sb, tree))


@pytest.fixture(scope='module')
def reference(tiny_data, tmp_path_factory):
  """An uninterrupted 30-step run."""
  workdir = tmp_path_factory.mktemp('ref') / 'w'
  proc = _start(_flags(tiny_data['data_dir'], workdir))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return workdir


def test_kill_9_at_several_points_then_resume_is_bitwise_identical(
    tiny_data, reference, tmp_path):
  workdir = tmp_path / 'w'
  for kill_after in (3, 12, 21):
    proc = _start(_flags(tiny_data['data_dir'], workdir))
    _wait_for_step(workdir, kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
  proc = _start(_flags(tiny_data['data_dir'], workdir))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert 'Resuming from the checkpoint at step' in err
  _assert_bitwise_equal(tiny_config(tiny_data['data_dir']), reference, workdir)


def test_sigterm_checkpoints_exits_and_resumes(tiny_data, reference, tmp_path):
  workdir = tmp_path / 'w'
  proc = _start(_flags(tiny_data['data_dir'], workdir))
  _wait_for_step(workdir, 7, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('stopped: SIGTERM at step') and 'Traceback' not in err
  stopped_at = int(last.split('at step ')[1].split(';')[0])
  assert stopped_at >= 7 and str(stopped_at) in os.listdir(workdir / 'checkpoints')
  proc = _start(_flags(tiny_data['data_dir'], workdir))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert f'Resuming from the checkpoint at step {stopped_at}' in err
  _assert_bitwise_equal(tiny_config(tiny_data['data_dir']), reference, workdir)


def _damage_empty(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _damage_truncate(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 3)


@pytest.mark.parametrize('damage', [_damage_empty, _damage_truncate])
def test_damaged_latest_checkpoint_is_set_aside(tiny_data, reference, tmp_path,
                                                caplog, damage):
  config = tiny_config(tiny_data['data_dir'], num_train_steps=STEPS,
                       log_every_steps=1, checkpoint_every_steps=5)
  workdir = tmp_path / 'w'
  shutil.copytree(reference, workdir)
  steps = sorted(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
  latest, previous = steps[-1], steps[-2]
  damage(workdir / 'checkpoints' / str(latest))
  # A leftover of an interrupted save, too.
  os.makedirs(workdir / 'checkpoints' / f'{latest + 5}.orbax-checkpoint-tmp-123')
  import logging
  with caplog.at_level(logging.WARNING, logger='resnet_jax'):
    run = train._Run(config, str(workdir), need_train=False)
    run.restore()
    run.ckpt.close()
  assert run.ckpt.restored_step == previous
  assert f'Checkpoint {latest} is damaged' in caplog.text
  assert 'unfinished save of an interrupted run' in caplog.text
  # Set aside, not deleted; the leftover temporary folder is gone.
  names = os.listdir(workdir / 'checkpoints')
  assert f'{latest}.damaged' in names and str(latest) not in names
  assert not [n for n in names if 'tmp' in n]


def test_diverged_loss_stops_naming_the_step(tiny_data, tmp_path):
  workdir = tmp_path / 'w'
  proc = _start(_flags(tiny_data['data_dir'], workdir, '--config.learning_rate=1e12'))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 3, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('stopped: training loss is') and 'at step' in last
  bad_step = int(last.split('at step ')[1].split(';')[0])
  saved = [int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()]
  assert all(s < bad_step for s in saved)
  assert all(np.isfinite(l['train_loss']) for l in _metrics(workdir) if 'train_loss' in l)


def _tree_digest(path):
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      p = os.path.join(root, name)
      h.update(p.encode())
      with open(p, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


def test_bad_input_is_refused_leaving_the_workdir_as_it_was(tiny_data, reference,
                                                           tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(reference, workdir)
  before = _tree_digest(workdir)
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  cases = [
      (['--config.model=resnet20'], "holds a model 'resnet8' run", 2),
      (['--config.dataset=cifar11'], 'unknown dataset', 2),
      (['--config.batch_size=-16'], 'batch_size must be a positive integer', 2),
      (['--config.learning_rate=-0.1'], 'learning_rate must be positive', 2),
      (['--config.no_such_field=1'], "the config has no field 'no_such_field'", 2),
      (['--config.batch_size=abc'], 'batch_size', 2),
      (['--config.store_conv_inputs=yes'], 'store_conv_inputs must be auto, on or off', 2),
  ]
  for extra, message, code in cases:
    result = subprocess.run(
        [sys.executable, '-m', 'resnet_jax.main', *_flags(tiny_data['data_dir'], workdir),
         *extra], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == code, (extra, result.stderr[-2000:])
    assert message in result.stderr and 'Traceback' not in result.stderr, extra
  assert _tree_digest(workdir) == before
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main',
       *_flags(tiny_data['data_dir'], blocker / 'sub')],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert result.returncode == 2 and 'choose a writable --workdir' in result.stderr


def test_missing_dataset_without_network_says_how_to_prepare(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, '_reachable', lambda host: False)
  with pytest.raises(errors.UserError, match='python -m resnet_jax.prepare_data'):
    input_pipeline.load_split('cifar10', 'test', str(tmp_path / 'empty'))
