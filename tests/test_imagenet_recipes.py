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
from configs import imagenet
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


@pytest.mark.parametrize('batch', [64, 128, 256, 1024, 8192])
@pytest.mark.slow
def test_the_goyal_warmup_rises_from_the_base_rate_and_never_runs_downward(batch):
  # Goyal et al. 2017, sec. 2.2: with k = batch / 256 the rate rises by a
  # constant amount each iteration from eta = 0.1 to k x eta over 5 epochs,
  # then holds k x eta to the first boundary (epoch 30). With k <= 1 there is
  # nothing to ramp: k x eta from the first step.
  config = imagenet.get_config()
  config.batch_size = batch
  per_epoch = IMAGENET_TRAIN / batch
  num_steps = train_state.total_steps(config, IMAGENET_TRAIN)
  lr = train_state.create_learning_rate_fn(config, num_steps, per_epoch)
  k, eta, warmup = batch / 256, 0.1, round(5 * per_epoch)

  def goyal(step):
    if k > 1 and step < warmup:
      return eta + (k * eta - eta) * step / warmup
    return k * eta

  for step in (0, warmup // 2, warmup - 1, warmup, 2 * warmup, round(num_steps / 3) - 1):
    assert float(lr(step)) == pytest.approx(goyal(step), rel=1e-6), step
  ramp = np.asarray(jax.vmap(lr)(jnp.arange(warmup + 2)))
  assert (np.diff(ramp) >= 0).all()


def _ffcv_rates(lr, epochs, lr_peak_epoch, iters):
  """Every iteration's rate as ffcv-imagenet's train_imagenet.py sets it:
  get_cyclic_lr at the epoch's start and end, interpolated over its `iters`
  iterations in train_loop (its code, with the parameters passed in)."""
  def get_cyclic_lr(epoch):
    xs = [0, lr_peak_epoch, epochs]
    ys = [1e-4 * lr, lr, 0]
    return np.interp([epoch], xs, ys)[0]
  rates = []
  for epoch in range(epochs):
    lr_start, lr_end = get_cyclic_lr(epoch), get_cyclic_lr(epoch + 1)
    rates.extend(np.interp(np.arange(iters), [0, iters], [lr_start, lr_end]))
  return np.array(rates)


@pytest.mark.parametrize('lr,epochs,peak,iters', [(1.7, 88, 2, 312), (0.5, 16, 2, 1251),
                                                  (1.0, 24, 3, 7)])
@pytest.mark.slow
def test_the_triangular_schedule_is_ffcvs_cyclic_one(lr, epochs, peak, iters):
  # FFCV's rn50_88 (lr 1.7, peak at epoch 2 by default, 8 GPUs x 512 images:
  # 312 iterations an epoch, the last partial batch dropped), rn18_16 (lr 0.5
  # at 1024: 1251) and a peak at epoch 3, compared at every step.
  config = _config(learning_rate=lr, lr_schedule='triangular', lr_peak_epoch=float(peak),
                   num_epochs=float(epochs))
  num_steps = epochs * iters
  ours = np.asarray(jax.vmap(train_state.create_learning_rate_fn(
      config, num_steps, float(iters)))(jnp.arange(num_steps)))
  theirs = _ffcv_rates(lr, epochs, peak, iters)
  np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-9 * lr)
  last = num_steps - 1
  for step in (0, 1, peak * iters - 1, peak * iters, (peak * iters + last) // 2, last):
    assert float(ours[step]) == pytest.approx(theirs[step], rel=1e-6), step
  assert theirs[0] == pytest.approx(1e-4 * lr) and theirs[peak * iters] == pytest.approx(lr)


def _preset_lr(name):
  config = imagenet.get_config(name)
  per_epoch = IMAGENET_TRAIN / config.batch_size
  num_steps = train_state.total_steps(config, IMAGENET_TRAIN)
  return train_state.create_learning_rate_fn(config, num_steps, per_epoch), per_epoch, num_steps


def test_each_presets_learning_rate_follows_its_sources_formula():
  # The Flax example (train.py:90-109, configs/tpu.py): 0.1 x 1024/256, linear
  # from 0 over 5 epochs, then cosine to 0 over the other 95.
  lr, per_epoch, num_steps = _preset_lr('resnet50_flax')
  warmup = round(5 * per_epoch)
  flax = lambda s: (0.4 * s / warmup if s < warmup else
                    0.2 * (1 + np.cos(np.pi * (s - warmup) / (num_steps - warmup))))
  for step in (0, warmup // 2, warmup, (warmup + num_steps) // 2, num_steps - 1):
    assert float(lr(step)) == pytest.approx(flax(step), rel=1e-5, abs=1e-9), step
  # FFCV (train_imagenet.py:107-113): 1e-4 x lr at 0, lr at epoch 2, 0 at the end.
  for name, peak, epochs in (('resnet50_fast_88', 1.7, 88), ('resnet18_fast_16', 0.5, 16)):
    lr, per_epoch, num_steps = _preset_lr(name)
    ffcv = lambda e: np.interp(e, [0, 2, epochs], [1e-4 * peak, peak, 0])
    for epoch in (0, 1, 2, 9, epochs / 2, epochs - 1):
      step = round(epoch * per_epoch)
      # Within 5e-5 of the peak: the run's last step is rounded to a whole step.
      assert float(lr(step)) == pytest.approx(ffcv(step / per_epoch), abs=5e-5 * peak), (
          name, epoch)


def test_ffcv_presets_switch_to_192_px_at_ffcvs_epoch():
  # FFCV's get_resolution over each config's start_ramp/end_ramp, once per
  # epoch (the epochs worked out by hand from its yaml files).
  assert {e: imagenet.ffcv_first_large_epoch(e) for e in imagenet.FFCV_RAMPS} == {
      16: 12, 24: 19, 32: 25, 40: 32, 56: 45, 88: 71}
  for name in ('resnet50_fast_16', 'resnet50_fast_88', 'resnet18_fast_88'):
    config = imagenet.get_config(name)
    epochs = int(config.num_epochs)
    per_epoch = IMAGENET_TRAIN / config.batch_size
    sizes = file_loader.Sizes(config.image_size, config.final_image_size,
                              config.resize_start_epoch, config.resize_end_epoch, per_epoch)
    switch = imagenet.ffcv_first_large_epoch(epochs)
    first = int(np.ceil(switch * per_epoch))
    assert (sizes.at(0), sizes.at(first - 1), sizes.at(first)) == (160, 160, 192), name
    assert sizes.changes(0, round(epochs * per_epoch)) == {first}


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


def test_ffcvs_decay_rule_leaves_out_the_batchnorms_named_bn():
  # FFCV's create_optimizer: no decay on parameters whose name contains
  # 'bn'; in torchvision's ResNet the shortcut's BatchNorm is
  # `downsample.1` (decayed), and the classifier's bias is decayed too.
  model = train_state.create_model(_config(model='resnet18', stem='imagenet'), 10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  mask = train_state.decay_mask(_config(weight_decay_on='ffcv'))(params['params'])
  decayed = {'/'.join(k.key for k in path): on
             for path, on in jax.tree_util.tree_flatten_with_path(mask)[0]}
  left_out = sorted(k for k, on in decayed.items() if not on)
  assert all(k.split('/')[-2] in ('bn1', 'bn2') for k in left_out)
  assert len(left_out) == 2 * (1 + 2 * 8)  # Scale and bias: the stem's, two per block.
  for name in ('fc/bias', 'fc/kernel', 'layer2_0/downsample_bn/scale',
               'layer2_0/downsample_bn/bias', 'layer2_0/downsample_conv/kernel',
               'conv1/kernel', 'layer4_1/conv2/kernel'):
    assert decayed[name], name
  kernels = train_state.decay_mask(_config())(params['params'])
  # 'kernels' leaves out those two besides.
  assert sum(jax.tree.leaves(mask)) == sum(jax.tree.leaves(kernels)) + 1 + 2 * 3


@pytest.mark.slow
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


def test_progressive_resizing_grows_linearly_in_steps_of_32_pixels_halves_rounded_up():
  # docs/config.md, final_image_size: "the training size grows linearly from
  # image_size at resize_start_epoch to this at resize_end_epoch, in steps of
  # 32 pixels" (file_loader.Sizes: halves rounded up, one compiled shape each).
  sizes = file_loader.Sizes(128, 256, start_epoch=1.0, end_epoch=5.0, steps_per_epoch=10)
  # t = (step / 10 - 1) / 4 of the way: 128 + 32 * round(4 t), a half up.
  assert [sizes.at(s) for s in (0, 10, 14, 15, 24, 25, 34, 35, 44, 45, 49, 50, 99)] == [
      128, 128, 128, 160, 160, 192, 192, 224, 224, 256, 256, 256, 256]
  assert sizes.changes(0, 100) == {15, 25, 35, 45}
  # A span that is not a multiple of 32: steps of 32, then the final size.
  odd = file_loader.Sizes(160, 208, start_epoch=0.0, end_epoch=2.0, steps_per_epoch=10)
  assert sorted({odd.at(s) for s in range(30)}) == [160, 192, 208]
  assert odd.at(19) == 192 and odd.at(20) == 208


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
  reference = tmp_path / 'ref'  # Uninterrupted, trained in this process.
  loop.train_and_evaluate(processes.config_of(_flags(folder, reference)), str(reference))
  workdir = tmp_path / 'w'
  proc = processes.main(_flags(folder, workdir))
  processes.wait_for_step(workdir, 3, proc)  # Checkpoint 2 or 4: before the change.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = processes.main(_flags(folder, workdir))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert 'decoded at 32x32 growing to 64' in err
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
                         '--config.eval_image_size=32', '--config.batch_size=16',
                         '--config.bn_group_size=2',  # FFCV's 512 per GPU, shrunk.
                         '--config.lr_peak_epoch=0.1',
                         '--config.eval_batch_size=8', '--config.num_train_steps=2',
                         '--config.warmup_epochs=0', '--config.log_every_steps=1'])
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  lines = _metrics(workdir)
  assert [l['step'] for l in lines if 'train_loss' in l] == [1, 2]
  assert 'eval_top5_accuracy' in lines[-1]
