"""Faults and bad input: kills, signals, damaged checkpoints, divergence, typos."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax.data import datasets
from resnet_jax import errors
from resnet_jax.training import evaluation
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from resnet_jax.experiments import run_status
from resnet_jax.workdir import checkpointing
from resnet_jax.workdir import preemption
from resnet_jax.workdir import run_record
from tests import processes
from tests.conftest import tiny_config

# Every test here trains in subprocesses: the full suite runs them, the
# fast tier (-m "not slow") does not.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


# The runs read the tiny PNG folder (in memory, as tfds's CIFAR is): what is
# tested here starts after the images are read, and a process that reads
# tfds's files pays ~4 s importing TensorFlow.
def _flags(folder, workdir, *extra):
  return ['--config', 'configs/cifar.py', '--workdir', str(workdir),
          f'--config.data_dir={folder["data_dir"]}', f'--config.dataset={folder["name"]}',
          '--config.model=resnet8',
          '--config.batch_size=16', '--config.eval_batch_size=16',
          f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
          '--config.checkpoint_every_steps=5', *extra]


def _config(folder, **overrides):
  return tiny_config(folder['data_dir'], dataset=folder['name'], **overrides)


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  for l in lines:
    l.pop('images_per_sec', None)
  return lines


def _final(config, workdir):
  run = run_setup.Run(config, str(workdir), need_train=False)
  state = jax.device_get(run.restore())
  run.ckpt.close()
  return state


def _assert_bitwise_equal(config, a, b):
  assert _metrics(a) == _metrics(b)
  sa, sb = _final(config, a), _final(config, b)
  assert int(sa.step) == int(sb.step) == STEPS
  for tree in ('params', 'batch_stats', 'opt_state', 'ema'):
    jax.tree.map(np.testing.assert_array_equal, getattr(sa, tree, None),
                 getattr(sb, tree, None))


@pytest.fixture(scope='module')
def reference(tiny_folder, tmp_path_factory):
  """An uninterrupted 30-step run."""
  return _reference_run(tiny_folder, tmp_path_factory, ())


def _reference_run(tiny_folder, tmp_path_factory, options):
  """The run of `_flags(..., *options)`, uninterrupted, in this process: a
  launch would only add its start-up, since where a run trains does not
  change its bits (the launched, interrupted runs below end in these)."""
  workdir = tmp_path_factory.mktemp('ref') / 'w'
  config = processes.config_of(_flags(tiny_folder, workdir, *options))
  loop.train_and_evaluate(config, str(workdir))
  return workdir


# Every option beyond the paper recipe, on each input pipeline (mixup and
# CutMix do not combine: one on each): each augmentation must be a pure
# function of (seed, step) and the moving average must be checkpointed and
# resumed exactly.
OPTION_SETS = {
    'paper': (),
    'host_pipeline': (
        '--config.input_pipeline=host', '--config.lr_schedule=cosine',
        '--config.warmup_steps=4', '--config.label_smoothing=0.1',
        '--config.cutout_size=8', '--config.cutmix_alpha=1.0',
        '--config.augment_policy=trivialaugment', '--config.ema_decay=0.9',
        '--config.flip_tta=True', '--config.validation_size=16'),
    'device_pipeline': (
        '--config.input_pipeline=device', '--config.label_smoothing=0.1',
        '--config.cutout_size=8', '--config.mixup_alpha=0.4', '--config.ema_decay=0.5',
        '--config.flip_tta=True', '--config.validation_size=16'),
}


@pytest.fixture(scope='module')
def interrupted(tiny_folder, tmp_path_factory):
  """The paper recipe's run stopped in every way there is, each launch
  resuming the one before: kill -9 at step 3 (before any checkpoint), SIGTERM
  at 7, kill -9 at 12, frozen (SIGSTOP) at 14 while two more commands are
  refused its busy workdir, kill -9 at 21; the last launch runs to the end.
  One run for what three tests did in six launches (the same kill points, the
  same signals and refusals); each test asserts its part.

  Returns:
    (workdir, {'kills': exit codes of the kill -9s, 'sigterm': (exit code,
    stderr, checkpoint folders then), 'resumed_after_sigterm': that resume's
    stderr, 'busy': (frozen pid, listing, [(exit code, stderr, listing
    after)] of the refused commands), 'last': the last launch's stderr}).
  """
  workdir = tmp_path_factory.mktemp('interrupted') / 'w'
  flags = _flags(tiny_folder, workdir)
  seen = {'kills': []}

  def kill_9_at(proc, step):
    processes.wait_for_step(workdir, step, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen['kills'].append(proc.returncode)
    return proc.output()[1]

  kill_9_at(processes.main(flags), 3)
  proc = processes.main(flags)
  processes.wait_for_step(workdir, 7, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  seen['sigterm'] = (proc.returncode, err, os.listdir(workdir / 'checkpoints'))
  seen['resumed_after_sigterm'] = kill_9_at(processes.main(flags), 12)
  proc = processes.main(flags)
  processes.wait_for_step(workdir, 14, proc)
  processes.freeze(proc)  # Mid-run, still holding the workdir.
  try:
    before, refused = _listing(workdir), []
    for extra in ([], ['--mode=eval']):
      second = subprocess.run([sys.executable, '-m', 'resnet_jax.main', *flags, *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
      refused.append((second.returncode, second.stderr, _listing(workdir)))
  finally:
    proc.send_signal(signal.SIGCONT)
  seen['busy'] = (proc.pid, before, refused)
  kill_9_at(proc, 21)
  proc = processes.main(flags)
  _, seen['last'] = proc.communicate(timeout=600)
  assert proc.returncode == 0, seen['last'][-3000:]
  return workdir, seen


@pytest.mark.parametrize('options', OPTION_SETS, ids=str)
def test_kill_9_at_several_points_then_resume_is_bitwise_identical(
    tiny_folder, reference, tmp_path_factory, tmp_path, request, options):
  extra = OPTION_SETS[options]
  if not extra:
    # The paper recipe: killed at steps 3, 12 and 21 of the shared run.
    workdir, seen = request.getfixturevalue('interrupted')
    assert seen['kills'] == [-signal.SIGKILL] * 3
    assert 'Resuming from the checkpoint at step' in seen['last']
    expected = reference
  else:
    # The option sets, whose stream and state code paths are the same, once
    # mid-epoch.
    expected = _reference_run(tiny_folder, tmp_path_factory, extra)
    workdir = tmp_path / 'w'
    proc = processes.main(_flags(tiny_folder, workdir, *extra))
    processes.wait_for_step(workdir, 13, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc = processes.main(_flags(tiny_folder, workdir, *extra))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert 'Resuming from the checkpoint at step' in err
  _assert_bitwise_equal(processes.config_of(_flags(tiny_folder, workdir, *extra)),
                        expected, workdir)
  # The moving average and the flip view of the validation split were
  # evaluated (and, resumed, evaluated the same), on the pipeline named.
  key = 'eval_accuracy' if not extra else 'ema_flip_val_accuracy'
  assert any(key in l for l in _metrics(workdir))
  meta = checkpointing.Checkpoints(str(workdir / 'checkpoints')).read_meta()
  assert meta['input_pipeline'] == ('host' if options == 'host_pipeline' else 'device')


def test_sigterm_checkpoints_exits_and_resumes(tiny_folder, reference, interrupted):
  # At step 7 of the shared run (a launch that started over after the kill
  # at step 3); the next launch resumes where it stopped.
  workdir, seen = interrupted
  code, err, saved = seen['sigterm']
  assert code == 128 + signal.SIGTERM, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('stopped: SIGTERM at step') and 'Traceback' not in err
  stopped_at = int(last.split('at step ')[1].split(';')[0])
  assert stopped_at >= 7 and str(stopped_at) in saved
  assert f'Resuming from the checkpoint at step {stopped_at}' in seen['resumed_after_sigterm']
  _assert_bitwise_equal(_config(tiny_folder), reference, workdir)


def test_a_stop_signal_at_the_last_step_ends_the_run_complete(tiny_folder, reference,
                                                              tmp_path, monkeypatch):
  # As when a launcher killed at the very end passes SIGTERM on: the signal is
  # there when the last step is checked. The run is complete, not stopped.
  config = _config(tiny_folder, num_train_steps=STEPS, log_every_steps=1,
                   checkpoint_every_steps=5)

  def signal_at_the_end(guard, step):
    if step == STEPS:
      guard.signum = signal.SIGTERM
    return guard.signum is not None

  monkeypatch.setattr(preemption.Guard, 'should_stop', signal_at_the_end)
  workdir = tmp_path / 'w'
  loop.train_and_evaluate(config, str(workdir))  # Raises errors.Stopped if stopped.
  (session,) = run_record.read(str(workdir))['sessions']
  assert session['final_step'] == STEPS and 'stopped' not in session
  assert run_status.of(str(workdir)).kind == run_status.COMPLETE
  _assert_bitwise_equal(config, reference, workdir)


def test_a_run_stopped_after_its_final_checkpoint_counts_complete(tiny_folder, reference,
                                                                  tmp_path):
  # A record whose last session says stopped (or has no outcome: killed while
  # ending) though the final step's checkpoint is on disk.
  config = _config(tiny_folder, num_train_steps=STEPS, log_every_steps=1,
                   checkpoint_every_steps=5)
  for outcome in ({'stopped': f'SIGTERM at step {STEPS}; ...', 'exit_code': 143}, {}):
    workdir = tmp_path / f'w{len(outcome)}'
    shutil.copytree(reference, workdir)
    record = run_record.read(str(workdir))
    session = record['sessions'][-1]
    for key in ('final_step', 'eval_accuracy', 'ended', 'wall_seconds'):
      session.pop(key, None)
    session.update(outcome)
    with open(workdir / 'run.json', 'w') as f:
      json.dump(record, f)
    status = run_status.of(str(workdir))
    assert (status.kind, status.step) == (run_status.COMPLETE, STEPS), status
    assert loop.finished_step(config, str(workdir)) == STEPS  # Known without the data.
    shutil.rmtree(workdir / 'checkpoints' / str(STEPS))  # Really short of the end:
    assert run_status.of(str(workdir)).kind != run_status.COMPLETE
    assert loop.finished_step(config, str(workdir)) is None


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
def test_damaged_latest_checkpoint_is_set_aside(tiny_folder, reference, tmp_path,
                                                caplog, damage):
  config = _config(tiny_folder, num_train_steps=STEPS,
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
    # What a resuming run does: take the workdir, open for writing, restore.
    run = run_setup.Run(config, str(workdir), need_train=True)
    run.hold(write_checkpoints=True)
    run.restore()
    run.release()
  assert run.ckpt.restored_step == previous
  assert f'Checkpoint {latest} is damaged' in caplog.text
  assert 'unfinished save of an interrupted run' in caplog.text
  # Set aside, not deleted; the leftover temporary folder is gone.
  names = os.listdir(workdir / 'checkpoints')
  assert f'{latest}.damaged' in names and str(latest) not in names
  assert not [n for n in names if 'tmp' in n]


def test_eval_of_a_damaged_checkpoint_moves_nothing(tiny_folder, reference, tmp_path,
                                                   caplog):
  """Evaluation only reads: a checkpoint it cannot restore (damaged, or of
  another version's layout) is skipped, never renamed."""
  config = _config(tiny_folder, num_train_steps=STEPS)
  workdir = tmp_path / 'w'
  shutil.copytree(reference, workdir)
  checkpoints = workdir / 'checkpoints'
  steps = sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit())
  _damage_truncate(checkpoints / str(steps[-1]))
  before = sorted(os.listdir(checkpoints))
  import logging
  with caplog.at_level(logging.WARNING, logger='resnet_jax'):
    result = evaluation.evaluate_checkpoint(config, str(workdir))
  assert result['step'] == steps[-2]
  assert f'Checkpoint {steps[-1]} cannot be restored' in caplog.text
  assert sorted(os.listdir(checkpoints)) == before


def test_diverged_loss_stops_naming_the_step(tiny_folder, tmp_path):
  workdir = tmp_path / 'w'
  proc = processes.main(_flags(tiny_folder, workdir, '--config.learning_rate=1e12'))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 3, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('stopped: training loss is') and 'at step' in last
  bad_step = int(last.split('at step ')[1].split(';')[0])
  saved = [int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()]
  assert all(s < bad_step for s in saved)
  assert all(np.isfinite(l['train_loss']) for l in _metrics(workdir) if 'train_loss' in l)


def _listing(path):
  """Every path under `path` with a digest of each file's bytes."""
  out = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(dirs):
      out.append(os.path.relpath(os.path.join(root, name), path) + '/')
    for name in sorted(files):
      p = os.path.join(root, name)
      with open(p, 'rb') as f:
        out.append((os.path.relpath(p, path), hashlib.sha256(f.read()).hexdigest()))
  return out


def test_bad_input_is_refused_leaving_the_workdir_as_it_was(tiny_folder,
                                                           reference, tmp_path):
  existing = tmp_path / 'runs' / 'w'
  shutil.copytree(reference, existing)
  fresh = tmp_path / 'runs' / 'new'
  # An image folder with one unreadable image: refused when the data is read.
  shutil.copytree(os.path.join(tiny_folder['data_dir'], 'tinyfolder'),
                  tmp_path / 'data' / 'broken')
  (tmp_path / 'data' / 'broken' / 'test' / 'cat' / 'zz.png').write_bytes(b'not a png')
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  # Behaviour (refused, nothing written) in-process; the command line's own
  # contract (one error line, exit 2, no traceback) for a flag error, a
  # config error and a data error, below.
  cases = [
      (dict(model='resnet20'), "different recipe (model 'resnet8' -> 'resnet20')"),
      (dict(dataset='cifar11'), "unknown dataset 'cifar11'"),
      (dict(batch_size=-16), 'batch_size must be a positive integer'),
      (dict(learning_rate=-0.1), 'learning_rate must be positive'),
      (dict(store_conv_inputs='yes'), 'store_conv_inputs must be auto, on or off'),
      (dict(data_dir=str(tmp_path / 'data'), dataset='broken'),
       'zz.png is not a readable image'),
  ]
  before = _listing(tmp_path)
  for workdir in (existing, fresh):
    for overrides, message in cases:
      if workdir == fresh and 'different recipe' in message:
        continue  # Only an existing run has a model to differ from.
      if workdir == existing and 'zz.png' in message:
        continue  # The existing run's dataset differs first (refused too).
      fields = {'data_dir': tiny_folder['data_dir'], 'dataset': tiny_folder['name'],
                **overrides}
      config = tiny_config(fields.pop('data_dir'), num_train_steps=STEPS,
                           log_every_steps=1, checkpoint_every_steps=5, **fields)
      with pytest.raises(errors.UserError) as refused:
        loop.train_and_evaluate(config, str(workdir))
      assert message in str(refused.value), (overrides, str(refused.value))
      # Byte-identical, and nothing created anywhere under tmp_path.
      assert _listing(tmp_path) == before, (workdir, overrides)
  for workdir, extra, message in [
      (existing, ['--config.no_such_field=1'], "the config has no field 'no_such_field'"),
      (fresh, ['--config.batch_size=abc'], 'batch_size'),
      (existing, ['--config.model=resnet20'], "different recipe (model 'resnet8' -> "
                                              "'resnet20')"),
      (fresh, [f'--config.data_dir={tmp_path / "data"}', '--config.dataset=broken'],
       'zz.png is not a readable image'),
      (blocker / 'sub', [], 'choose a writable --workdir')]:
    result = subprocess.run([sys.executable, '-m', 'resnet_jax.main',
                             *_flags(tiny_folder, workdir), *extra],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, (extra, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, (extra, last)
    assert 'Traceback' not in result.stderr, extra
    assert _listing(tmp_path) == before, (workdir, extra)


def test_a_busy_workdir_refuses_a_second_run(tiny_folder, reference, interrupted):
  # The shared run, frozen (SIGSTOP) at step 14, still holding the workdir:
  # a second training run and an evaluation were refused.
  workdir, seen = interrupted
  pid, before, refused = seen['busy']
  assert len(refused) == 2
  for code, stderr, after in refused:
    assert code == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: workdir {workdir} is in use by pid {pid} on '), last
    assert 'running since' in last and 'Traceback' not in stderr
    assert after == before  # The holder's files untouched.
  # The refused runs changed nothing the first one did.
  _assert_bitwise_equal(_config(tiny_folder), reference, workdir)


def test_a_failed_save_stops_and_the_same_command_resumes(tiny_folder, reference,
                                                         tmp_path, monkeypatch):
  import errno
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
  calls = {'n': 0}
  real = handler.JsonCheckpointHandler._save_fn

  async def full_disk(self, x, directory):
    calls['n'] += 1
    if calls['n'] >= 3:  # The third save (step 8; 4 and 5 came first) hits a full disk.
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await real(self, x, directory)
  monkeypatch.setattr(handler.JsonCheckpointHandler, '_save_fn', full_disk)
  workdir = tmp_path / 'w'
  config = _config(tiny_folder, num_train_steps=STEPS, log_every_steps=1,
                   checkpoint_every_steps=5)
  with pytest.raises(errors.Stopped) as stopped:
    loop.train_and_evaluate(config, str(workdir))
  message = str(stopped.value)
  print(message)
  assert stopped.value.exit_code == 4
  assert 'saving the checkpoint of step 8 failed' in message
  assert 'No space left on device' in message
  assert 'the checkpoint of step 5 is intact' in message
  assert sorted(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit()) == [4, 5]
  monkeypatch.setattr(handler.JsonCheckpointHandler, '_save_fn', real)  # Disk freed.
  loop.train_and_evaluate(config, str(workdir))
  _assert_bitwise_equal(config, reference, workdir)


def test_missing_dataset_without_network_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, '_reachable', lambda host: False)
  (tmp_path / 'empty').mkdir()
  for workdir in (tmp_path / 'new', tmp_path / 'existing'):
    if workdir.name == 'existing':
      (workdir / 'notes').mkdir(parents=True)
    before = _listing(tmp_path)
    config = tiny_config(str(tmp_path / 'empty'))
    with pytest.raises(errors.UserError, match='python -m resnet_jax.prepare_data'):
      loop.train_and_evaluate(config, str(workdir))
    assert _listing(tmp_path) == before  # No checkpoints/, no lock, no workdir.
