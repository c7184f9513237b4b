"""What the ImageNet recipes need: the linear scaling rule and epoch-based
warm-up at any batch size, weight decay with or without BatchNorm, LARS,
progressive resizing, top-5, and the presets of configs/imagenet.py."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from resnet_jax.data import file_loader
from resnet_jax.data import image_folder
from resnet_jax import results
from resnet_jax.training import loop
from resnet_jax.training import steps
from resnet_jax.training import train_state
from tests import jpeg_files
from tests import processes

IMAGENET_TRAIN = 1_281_167


def _config(**fields):
  config = cifar.get_config()
  config.update(fields)
  return config


def test_goyal_schedule_at_batch_1024_against_hand_computed_values():
  # Goyal et al. 2017 at k = 4: 0.1 x 1024/256 = 0.4 after a linear 5-epoch
  # ramp from 0.1, /10 at epochs 30, 60, 80 of 90.
  config = _config(batch_size=1024, learning_rate=0.1, lr_scale_batch=256,
                   warmup_epochs=5.0, warmup_shape='linear', warmup_lr=0.1,
                   num_epochs=90.0, lr_boundaries=(30 / 90, 60 / 90, 80 / 90))
  per_epoch = IMAGENET_TRAIN / 1024  # 1251.14 steps
  num_steps = train_state.total_steps(config, IMAGENET_TRAIN)
  assert num_steps == round(90 * per_epoch) == 112_603
  lr = train_state.create_learning_rate_fn(config, num_steps, per_epoch)
  warmup = round(5 * per_epoch)  # 6256
  expected = {0: 0.1, warmup // 2: 0.1 + 0.3 * (warmup // 2) / warmup, warmup - 1:
              0.1 + 0.3 * (warmup - 1) / warmup, warmup: 0.4,
              round(num_steps / 3) - 1: 0.4, round(num_steps / 3): 0.04,
              round(num_steps * 2 / 3): 0.004, round(num_steps * 8 / 9) - 1: 0.004,
              round(num_steps * 8 / 9): 0.0004, num_steps - 1: 0.0004}
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, rel=1e-6), step
  # The boundaries are the epochs: 30 epochs at this batch size.
  assert round(num_steps / 3) == round(30 * per_epoch)


def test_cosine_with_epoch_warmup_at_another_batch_size():
  config = _config(batch_size=512, learning_rate=0.1, lr_scale_batch=256,
                   lr_schedule='cosine', warmup_epochs=2.0, warmup_lr=0.0)
  per_epoch, num_steps = 100.0, 1000
  lr = train_state.create_learning_rate_fn(config, num_steps, per_epoch)
  assert float(lr(0)) == 0.0
  assert float(lr(100)) == pytest.approx(0.1)
  assert float(lr(200)) == pytest.approx(0.2)  # The scaled peak.
  assert float(lr(600)) == pytest.approx(0.1 * (1 + np.cos(np.pi * 400 / 800)))
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-9)


def _params():
  return {'conv': {'kernel': jnp.full((3, 3, 2, 4), 0.5)},
          'bn': {'scale': jnp.full((4,), 2.0), 'bias': jnp.full((4,), 1.0)}}


@pytest.mark.parametrize('on', ['kernels', 'all'])
def test_weight_decay_leaves_batchnorm_out_or_in(on):
  config = _config(weight_decay=0.1, weight_decay_on=on, momentum=0.0)
  tx = train_state.create_optimizer(config, lambda step: 1.0)
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # With a zero gradient, a decayed leaf moves by -lr x wd x w; one left out stays.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.05)
  bn = 0.0 if on == 'kernels' else 1.0
  np.testing.assert_allclose(updates['bn']['scale'], -0.2 * bn)
  np.testing.assert_allclose(updates['bn']['bias'], -0.1 * bn)


def test_lars_trust_ratio_against_a_hand_computation():
  config = _config(optimizer='lars', weight_decay=1e-4, lars_trust=0.001, momentum=0.9)
  lr = 2.0
  tx = train_state.create_optimizer(config, lambda step: lr)
  params = _params()
  grads = {'conv': {'kernel': jnp.arange(72.0).reshape(3, 3, 2, 4) / 100},
           'bn': {'scale': jnp.full((4,), 0.3), 'bias': jnp.full((4,), -0.2)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  w, g = np.asarray(params['conv']['kernel']), np.asarray(grads['conv']['kernel'])
  decayed = g + 1e-4 * w
  ratio = 0.001 * np.linalg.norm(w) / np.linalg.norm(decayed)
  np.testing.assert_allclose(updates['conv']['kernel'], -lr * ratio * decayed, rtol=1e-5)
  # BatchNorm: no decay, no trust ratio (MLPerf's exclusion): plain -lr x g.
  np.testing.assert_allclose(updates['bn']['scale'], -lr * 0.3, rtol=1e-6)
  np.testing.assert_allclose(updates['bn']['bias'], lr * 0.2, rtol=1e-6)


def test_top5_counts_a_label_among_the_five_largest_logits():
  labels = jnp.array([0, 1, 2, 3])
  logits = jnp.array([[9, 8, 7, 6, 5, 4, 3, 2],    # label 0: top-1
                      [9, 5, 8, 7, 6, 4, 3, 2],    # label 1: 5th largest
                      [9, 8, 4, 7, 6, 5, 3, 2],    # label 2: 6th largest
                      [0, 0, 0, 9, 0, 0, 0, 0]], jnp.float32)
  sums = steps._eval_sums(jax.nn.log_softmax(logits), labels,
                          jnp.array([True, True, True, False]), 8)
  assert float(sums['top5']) == 2 and float(sums['correct']) == 1
  assert float(sums['count']) == 3


def test_progressive_resizing_sizes_and_call_boundaries():
  sizes = file_loader.Sizes(160, 192, start_epoch=2.0, end_epoch=4.0, steps_per_epoch=10)
  assert [sizes.at(s) for s in (0, 19, 20, 29, 30, 39, 40, 99)] == [
      160, 160, 160, 160, 192, 192, 192, 192]
  assert sizes.changes(0, 100) == {30}
  # A call never spans a size change (one compiled shape per call).
  plan = loop.chunk_plan(0, 50, 8, 100, 1000, set(), sizes.changes(0, 50))
  assert (30, 8) in plan and all(f + n <= 30 or f >= 30 for f, n in plan)
  steady = file_loader.Sizes(224)
  assert steady.at(10**6) == 224 and steady.changes(0, 100) == set()


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('recipes')
  jpeg_files.write_folder(root)
  return str(root)


def _flags(folder, workdir, *extra):
  return ['--config', 'configs/cifar.py', '--workdir', str(workdir),
          f'--config.data_dir={folder}', '--config.dataset=jpegs',
          '--config.image_size=32', '--config.final_image_size=64',
          '--config.resize_start_epoch=0.5', '--config.resize_end_epoch=1.5',
          '--config.eval_image_size=48', '--config.model=resnet8',
          '--config.batch_size=8', '--config.eval_batch_size=8',
          '--config.num_train_steps=9', '--config.log_every_steps=1',
          '--config.checkpoint_every_steps=2', '--config.eval_every_epochs=5',
          '--config.warmup_epochs=0.5', '--config.warmup_shape=linear',
          '--config.lr_scale_batch=16', *extra]


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k != 'images_per_sec'} for l in f]


@pytest.mark.slow
def test_progressive_resizing_changes_size_at_its_epoch_and_resumes_bitwise(folder,
                                                                           tmp_path):
  # 36 training images at batch 8: 4.5 steps per epoch; the size grows from
  # 32 to 64 at epoch 1.0 (halfway through the ramp), step 5.
  reference = tmp_path / 'ref'
  proc = processes.main(_flags(folder, reference))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert 'decoded at 32x32 growing to 64' in err
  workdir = tmp_path / 'w'
  proc = processes.main(_flags(folder, workdir))
  processes.wait_for_step(workdir, 3, proc)  # Checkpoint 2 or 4: before the change.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = processes.main(_flags(folder, workdir))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert _metrics(workdir) == _metrics(reference)
  # results reports top-5 beside top-1 for a run of ImageNet-size images.
  row = results.markdown_row(results.summarize(str(reference)))
  final = [l for l in _metrics(reference) if 'eval_top5_accuracy' in l][-1]
  assert f"top-5 {100 * final['eval_top5_accuracy']:.2f}%" in row
  assert 'random-resized crop 32->64+flip' in row and 'linear warm-up 0.5 epochs' in row
  examples = file_loader.TrainExamples(
      image_folder.file_split(os.path.join(folder, 'jpegs'), 'train'), 8, 0,
      file_loader.Sizes(32, 64, 0.5, 1.5, 4.5))
  assert [examples(8 * s)['image'].shape[0] for s in (0, 4, 5, 8)] == [32, 32, 64, 64]


@pytest.mark.slow
@pytest.mark.parametrize('preset', ['resnet50_fast_16'])
def test_a_preset_trains_a_few_steps_at_a_tiny_size(folder, tmp_path, preset):
  workdir = tmp_path / preset
  proc = processes.main(['--config', f'configs/imagenet.py:{preset}', '--workdir',
                         str(workdir), f'--config.data_dir={folder}',
                         '--config.dataset=jpegs', '--config.model=resnet18',
                         '--config.image_size=32', '--config.final_image_size=0',
                         '--config.eval_image_size=32', '--config.batch_size=8',
                         '--config.eval_batch_size=8', '--config.num_train_steps=2',
                         '--config.warmup_epochs=0', '--config.log_every_steps=1'])
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  lines = _metrics(workdir)
  assert [l['step'] for l in lines if 'train_loss' in l] == [1, 2]
  assert 'eval_top5_accuracy' in lines[-1]
