"""Batches made on the device: pure functions of (seed, step), on any layout.

Images are uint8 and every draw is an integer or a comparison, so the
batches of two layouts are compared bitwise (only mixup's weight is a float,
drawn once per batch from the same key).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.data import augmentations
from resnet_jax.data import device_pipeline
from resnet_jax.data import input_pipeline
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import chunks
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from resnet_jax.workdir import checkpointing
from tests import draw_reference
from tests.conftest import STEP_RTOL, relative_differences, tiny_config

N, B = 40, 16  # A batch straddles two epochs at step 2 (positions 32..47).


def _data(n=N):
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          'label': np.arange(n, dtype=np.int32)}  # Labels name the example.


def _batches(strategy, num_devices, spec, data, steps):
  """The global batches of `steps`, made under `strategy` on `num_devices`
  by one compiled program (the steps differ in their arguments only)."""
  dp = data_parallel.DataParallel(strategy, num_devices)

  def make(d, s):
    return chunks.device_batches(spec, dp)(d, s)(0)

  program = dp.compile(make, donate_state=False, args=('data', 'scalar'))
  batches = []
  for step in steps:
    placed = dp.replicate({**data, **device_pipeline.orders(
        spec, spec.first_epoch(step), spec.epochs_per_chunk(1))})
    out = program(placed, step)
    if strategy == 'pmap':  # [devices, rows, ...] -> [global rows, ...]
      out = {k: v.reshape((-1,) + v.shape[2:]) for k, v in out.items()}
    batches.append({k: np.asarray(v) for k, v in out.items()})
  return batches


def _batch(strategy, num_devices, spec, data, step):
  """The global batch of `step`, made under `strategy` on `num_devices`."""
  return _batches(strategy, num_devices, spec, data, (step,))[0]


@pytest.mark.slow
@pytest.mark.parametrize('options', [
    augmentations.Options(),
    augmentations.Options(cutout_size=8, mixup_alpha=1.0),
    augmentations.Options(cutmix_alpha=1.0)], ids=['crop_flip', 'cutout_mixup', 'cutmix'])
def test_a_batch_is_the_same_on_any_layout(options):
  spec = device_pipeline.Spec(N, B, seed=3, options=options)
  data = _data()
  steps = (0, 2)
  wants = _batches('jit', 8, spec, data, steps)
  for layout in (('jit', 1), ('pmap', 8), ('pmap', 2)):
    for step, want, got in zip(steps, wants, _batches(*layout, spec, data, steps)):
      assert set(got) == set(want)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f'{layout} {step} {key}')
  # Another seed, another batch (the same step).
  other = _batch('jit', 8, device_pipeline.Spec(N, B, seed=4, options=options), data, 0)
  assert not np.array_equal(other['image'], wants[0]['image'])


def test_each_epoch_is_a_fresh_permutation_and_no_example_is_dropped():
  spec = device_pipeline.Spec(N, B, seed=0, augment=False)
  data = _data()
  # 5 steps = 80 positions = exactly two epochs, the middle batch straddling.
  labels = np.concatenate([b['label'] for b in _batches('jit', 8, spec, data, range(5))])
  first, second = labels[:N], labels[N:]
  assert sorted(first) == list(range(N)) and sorted(second) == list(range(N))
  assert not np.array_equal(first, second)
  # Without augmentation a batch holds the split's images unchanged.
  batch = _batch('jit', 8, spec, data, 1)
  np.testing.assert_array_equal(batch['image'], data['image'][batch['label']])


def test_crop_and_flip_follow_the_paper_and_the_host_pipeline():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  oy, ox = rng.integers(0, 9, 64), rng.integers(0, 9, 64)
  flip = rng.random(64) < 0.5
  # The same 4-pixel zero pad, crop offsets and mirror as the host version.
  np.testing.assert_array_equal(
      np.asarray(device_pipeline.crop_flip(jnp.asarray(images), oy, ox, flip)),
      input_pipeline._apply_draws(images, oy, ox, flip))
  # Uniform offsets over [0, 8], p = 0.5 flips (a fixed key: exact counts).
  oy, ox, flip = (np.asarray(d) for d in device_pipeline.crop_flip_draws(
      jax.random.key(0), 90_000))
  for offsets in (oy, ox):
    counts = np.bincount(offsets, minlength=9)
    assert len(counts) == 9 and np.all(np.abs(counts / 90_000 - 1 / 9) < 0.005), counts
  assert abs(flip.mean() - 0.5) < 0.005


@pytest.mark.slow
def test_cutout_and_cutmix_have_the_host_versions_shapes():
  key = jax.random.key(5)
  rows = jnp.arange(B)
  erase = np.asarray(device_pipeline.cutout_erase(key, rows, B, 8, 32))
  ky, kx = jax.random.split(key)
  cy = np.asarray(jax.random.randint(ky, (B,), 0, 32))
  cx = np.asarray(jax.random.randint(kx, (B,), 0, 32))
  np.testing.assert_array_equal(erase, augmentations.cutout_mask(cy, cx, 8, 32))
  for seed in range(20):
    partner, lam, box = device_pipeline.mix_draws(jax.random.key(seed), B, 'cutmix',
                                                  1.0, 32)
    box = np.asarray(box)
    assert sorted(np.asarray(partner)) == list(range(B))
    # The label weight is the uncovered fraction; the box is a rectangle.
    assert float(lam) == pytest.approx(1 - box.sum() / 32**2)
    ys, xs = np.nonzero(box)
    if len(ys):
      assert box.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def _many_steps(config, data, steps):
  """The global batches of steps 0..steps-1 of `config`'s device pipeline,
  stacked: one compiled program, vmapped over the step."""
  spec = device_pipeline.Spec.of(config, len(data['label']))
  order = device_pipeline.orders(spec, 0, spec.epochs_per_chunk(steps))['order']
  make = jax.jit(jax.vmap(
      lambda s, images, labels, order: device_pipeline.make_batch(
          spec, images, labels, s, order, 0, jnp.arange(spec.global_batch)),
      in_axes=(0, None, None, None)))
  out = make(jnp.arange(steps), data['image'], data['label'], order)
  return {k: np.asarray(v) for k, v in out.items()}


# One alpha per kind (compiling the Beta draw takes seconds), far from the
# 1.0 that code ignoring it would likely use; the host pipeline's test covers
# both alphas of both kinds.
@pytest.mark.parametrize('kind,alpha', [('mixup', 0.2), ('cutmix', 0.2)])
@pytest.mark.slow
def test_mixing_pairs_uniformly_and_draws_its_weight_from_the_configured_alpha(kind, alpha):
  config = ml_collections.ConfigDict(dict(batch_size=8, seed=0, augment=True,
                                          **{f'{kind}_alpha': alpha}))
  b = _many_steps(config, _data(64), 1000)
  # Partners are a permutation of the batch (labels name the examples) with
  # one fixed point per batch on average, as a uniform one has.
  np.testing.assert_array_equal(np.sort(b['mix_label'], 1), np.sort(b['label'], 1))
  fixed = (b['mix_label'] == b['label']).sum(1).mean()
  assert 0.8 < fixed < 1.2, fixed
  assert (b['mix_lam'] == b['mix_lam'][:, :1]).all()  # One weight per batch.
  draw_reference.assert_weights_follow_alpha(kind, {alpha: b['mix_lam'][:, 0]})


@pytest.mark.slow
def test_cutmix_boxes_and_cutout_squares_are_placed_uniformly():
  keys = jax.random.split(jax.random.key(0), 4000)
  _, lam, box = jax.jit(jax.vmap(
      lambda k: device_pipeline.mix_draws(k, B, 'cutmix', 1.0, 32)))(keys)
  box = np.asarray(box)
  np.testing.assert_allclose(np.asarray(lam), 1 - box.sum((1, 2)) / 32**2, rtol=1e-6)
  got = draw_reference.box_edges(box)
  want = draw_reference.cutmix(1.0, 4000, seed=1)
  nonempty = want['lam'] < 1
  for edge in ('y0', 'y1', 'x0', 'x1'):
    p = draw_reference.same_distribution_pvalue(got[edge], want[edge][nonempty])
    assert p > 1e-3, (edge, p)
  # Cutout: each row (column) is covered as often as a uniform centre covers it.
  erase = np.asarray(device_pipeline.cutout_erase(jax.random.key(1), jnp.arange(4000),
                                                  4000, 8, 32))
  coverage = draw_reference.cutout_row_coverage(8)
  np.testing.assert_allclose(erase.any(2).mean(0), coverage, atol=0.03)
  np.testing.assert_allclose(erase.any(1).mean(0), coverage, atol=0.03)


def test_steps_per_call_picks_a_divisor_of_the_log_cadence():
  k = lambda platform, **c: chunks.steps_per_call(tiny_config(None, **c), platform)
  assert k('gpu', log_every_steps=100) == 25 and k('tpu', log_every_steps=64) == 32
  assert k('gpu', log_every_steps=7) == 7 and k('gpu', steps_per_call=5) == 5
  # XLA:CPU runs convolutions slowly inside a loop: one step per call there.
  assert k('cpu', log_every_steps=100) == 1 and k('cpu', steps_per_call=5) == 5
  # Calls end at every log, checkpoint and evaluation step.
  assert loop.chunk_plan(3, 20, 4, 8, 12, {10}) == [
      (3, 4), (7, 1), (8, 2), (10, 2), (12, 4), (16, 4)]


def _final_state(tiny_data, workdir, **overrides):
  config = tiny_config(tiny_data['data_dir'], num_train_steps=10, log_every_steps=4,
                       checkpoint_every_steps=8, **overrides)
  loop.train_and_evaluate(config, workdir)
  run = run_setup.Run(config, workdir, need_train=True)
  return jax.device_get(run.restore())


@pytest.mark.slow
def test_steps_per_call_leaves_the_numbers_bitwise_unchanged(tiny_data, tmp_path):
  # Each step in a call's loop is the same program whatever k is, so k = 2, 3
  # and 4 (calls cut differently by logs, checkpoints and evaluations, as a
  # resume cuts them) end in the same bits.
  states = [_final_state(tiny_data, str(tmp_path / str(k)), steps_per_call=k)
            for k in (2, 3, 4)]
  for other in states[1:]:
    for tree in ('params', 'batch_stats', 'opt_state'):
      jax.tree.map(np.testing.assert_array_equal, getattr(states[0], tree),
                   getattr(other, tree))


@pytest.mark.slow
def test_a_step_in_a_loop_equals_a_step_alone_up_to_rounding(tiny_data, tmp_path):
  # k = 1 runs the step with no loop around it; XLA compiles a convolution
  # in a loop body differently (on the CPU, another algorithm), so the two
  # agree to float rounding: compared after one step, as across layouts.
  after = {}
  for k in (1, 2):
    config = tiny_config(tiny_data['data_dir'], steps_per_call=k)
    run = run_setup.Run(config, str(tmp_path / str(k)), need_train=True)
    calls = loop.feed(run.pipeline, run.dp, run.train, config, [(0, 1)], k)
    state, metrics = run.p_train_chunk(run.dp.place_state(run.init_state()), next(calls), 1)
    calls.close()
    after[k] = (float(run.dp.fetch(metrics)['train_loss'][0]),
                jax.device_get(run.dp.canonical_state(state)))
  diffs = relative_differences(after[1][1], after[2][1])
  print(f'one step alone vs in a loop: losses {after[1][0]} {after[2][0]}, {diffs}')
  assert after[1][0] == pytest.approx(after[2][0], rel=STEP_RTOL)
  assert max(diffs.values()) <= STEP_RTOL and int(after[2][1].step) == 1


@pytest.mark.slow
def test_the_pipeline_kind_is_part_of_the_run(tiny_data, tmp_path):
  workdir = str(tmp_path / 'w')
  host = tiny_config(tiny_data['data_dir'], input_pipeline='host', num_train_steps=4)
  loop.train_and_evaluate(host, workdir)
  meta = checkpointing.Checkpoints(workdir + '/checkpoints').read_meta()
  assert meta['input_pipeline'] == 'host'
  # auto resumes with the run's own kind; asking for the other is refused by name.
  assert run_setup.Run(tiny_config(tiny_data['data_dir'], num_train_steps=4), workdir,
                       need_train=True).pipeline == 'host'
  with pytest.raises(errors.UserError, match='input_pipeline=host to resume'):
    run_setup.Run(tiny_config(tiny_data['data_dir'], input_pipeline='device',
                              num_train_steps=4), workdir, need_train=True)
  with pytest.raises(errors.UserError, match='needs the host pipeline'):
    run_setup.Run(tiny_config(tiny_data['data_dir'], input_pipeline='device',
                              augment_policy='trivialaugment'),
                  str(tmp_path / 'ta'), need_train=True)
  with pytest.raises(errors.UserError, match='steps_per_call must be'):
    run_setup.preflight(tiny_config(tiny_data['data_dir'], steps_per_call=0))


def test_a_split_too_large_for_the_device_is_refused_or_falls_back(tiny_data, tmp_path,
                                                                   monkeypatch, caplog):
  monkeypatch.setattr(device_pipeline, 'too_large', lambda nbytes, devices: 'too large here')
  with pytest.raises(errors.UserError, match='too large here'):
    run_setup.Run(tiny_config(tiny_data['data_dir'], input_pipeline='device'),
                  str(tmp_path / 'a'), need_train=True)
  import logging
  with caplog.at_level(logging.INFO, logger='resnet_jax'):
    run = run_setup.Run(tiny_config(tiny_data['data_dir']), str(tmp_path / 'b'),
                        need_train=True)
  assert run.pipeline == 'host'
  assert 'Input pipeline: host (too large here)' in caplog.text


def _windows(image):
  """The 81 crops of `image` zero-padded by 4 pixels, and their mirrors."""
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  crops = [padded[y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
  return crops, [c[:, ::-1] for c in crops]


@pytest.mark.slow
def test_an_augmented_batch_is_a_padded_crop_and_flip_of_its_examples_drawn_per_augmentation():
  # docs/data.md, "How data reaches the device": the batch's rows are the
  # epoch's examples with the 4-pixel zero pad + random crop + flip, each
  # augmentation keyed by (seed, step, augmentation): turning Cutout on
  # leaves the crops and flips alone.
  data = _data()

  def batches(config, steps=4):  # Op by op: quicker here than compiling.
    spec = device_pipeline.Spec.of(config, N)
    order = device_pipeline.orders(spec, 0, spec.epochs_per_chunk(steps))['order']
    out = [device_pipeline.make_batch(spec, data['image'], data['label'], s, order, 0,
                                      jnp.arange(B)) for s in range(steps)]
    return {k: np.stack([np.asarray(o[k]) for o in out]) for k in out[0]}
  config = ml_collections.ConfigDict(dict(batch_size=B, seed=0, augment=True))
  b = batches(config)  # 64 images.
  offsets, mirrored = set(), 0
  for image, label in zip(b['image'].reshape(-1, 32, 32, 3), b['label'].reshape(-1)):
    crops, mirrors = _windows(data['image'][label])
    same = [i for i, c in enumerate(crops) if np.array_equal(image, c)]
    flipped = [i for i, c in enumerate(mirrors) if np.array_equal(image, c)]
    assert same or flipped, label
    offsets.update(same or flipped)
    mirrored += bool(flipped) and not same
  assert len(offsets) > 20 and 16 < mirrored < 48, (len(offsets), mirrored)
  config.cutout_size = 8
  with_cutout = batches(config)
  assert with_cutout['erase'].any()
  for key in ('image', 'label'):
    np.testing.assert_array_equal(with_cutout[key], b[key])


def test_the_example_order_is_drawn_once_an_epoch(monkeypatch):
  # docs/data.md: "a fresh permutation per epoch, drawn once an epoch".
  drawn = []
  real = device_pipeline.orders

  def orders(spec, first_epoch, count):
    drawn.append(first_epoch)
    return real(spec, first_epoch, count)
  monkeypatch.setattr(device_pipeline, 'orders', orders)
  split = input_pipeline.Split(_data()['image'], _data()['label'], ())
  config = tiny_config(None, batch_size=B, seed=0)
  dp = data_parallel.DataParallel('jit', 8)
  plan = [(s, 1) for s in range(13)]  # 208 positions: epochs 0..5.
  fed = list(loop.feed('device', dp, split, config, plan, 1))
  assert drawn == sorted({s * B // N for s, _ in plan})
  spec = device_pipeline.Spec.of(config, N)
  for (first, _), data in zip(plan, fed):  # Each call holds its own epoch's order.
    assert int(np.asarray(data['first_epoch'])) == first * B // N
    np.testing.assert_array_equal(
        np.asarray(data['order'])[0],
        np.asarray(device_pipeline.epoch_permutations(spec, first * B // N, 1))[0])


class _Device:
  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return {'bytes_limit': self.limit} if self.limit else None


def test_a_split_may_take_a_quarter_of_the_smallest_devices_memory(monkeypatch):
  # docs/data.md: "a split larger than a quarter of device memory falls back".
  devices = [_Device(8000), _Device(4000)]
  assert device_pipeline.too_large(1000, devices) is None
  assert device_pipeline.too_large(1001, devices).startswith(
      'the training split (0.00 GiB) exceeds a quarter of device memory')
  # The CPU reports no limit: host memory is the device's.
  monkeypatch.setattr(device_pipeline, 'host_memory_bytes', lambda: 4 << 30)
  assert device_pipeline.too_large(1 << 30, [_Device(0)]) is None
  assert device_pipeline.too_large((1 << 30) + 1, [_Device(0)]) is not None


def test_the_test_split_is_placed_once_over_the_devices_and_its_sums_fetched_once(
    monkeypatch):
  # docs/data.md: "The test split is placed once too (split over the
  # devices) and evaluated in one call, its sums fetched once" (one call on
  # an accelerator; XLA:CPU takes a batch per call, as steps_per_call).
  from resnet_jax.training import evaluation
  dp = data_parallel.DataParallel('jit', 8)
  split = input_pipeline.Split(_data(37)['image'], _data(37)['label'], ())
  placed = chunks.EvalSplit(dp, split, 16)
  first, again = next(placed.groups()), next(placed.groups())
  assert first is again and placed.num_groups == 1 and placed.group_size == 3
  assert len(first['image'].sharding.device_set) == 8
  assert {s.data.shape for s in first['image'].addressable_shards} == {(3, 2, 32, 32, 3)}
  assert chunks.eval_batches_per_call(3, 'gpu') == 3
  assert chunks.eval_batches_per_call(3, 'cpu') == 1
  fetches, calls = [], []
  real_fetch = dp.fetch

  def fetch(tree):
    fetches.append(1)
    return real_fetch(tree)
  monkeypatch.setattr(dp, 'fetch', fetch)

  def p_evaluate(state, group, first_batch, per_call):
    calls.append((first_batch, per_call))
    mask = group['mask'][first_batch:first_batch + per_call]
    count = jnp.sum(mask).astype(jnp.float32)
    return {'': {'count': count, 'loss': count, 'correct': count, 'top5': count,
                 'confusion': jnp.zeros((2, 2))}}
  result = evaluation.evaluate(dp, p_evaluate, object(), placed)
  assert result['eval_examples'] == 37 and len(fetches) == 1
  assert calls == [(0, 1), (1, 1), (2, 1)]  # The CPU: one batch per call.
