"""jit vs pmap, device-count invariance and cross-layout checkpoint restore.

On 8 fake CPU devices with a tiny ResNet. Synced BatchNorm makes the strategy
and the device count invisible to the maths, up to float rounding; but
training is chaotic (a 1e-7 nudge of the weights grows to 1e-3 of the loss
within 8 steps), so a multi-step float32 comparison across layouts would test
the CPU's kernels, not this code. What the maths fixes is compared instead:

* one step from the same state, across strategies and device counts: loss,
  gradients (the momentum buffer after one step is the gradient plus weight
  decay), parameters and BatchNorm statistics, at a tolerance set from the
  measured rounding;
* many steps bitwise, where the program is the same (store_conv_inputs
  on/off; resume in tests/test_train.py and tests/test_fault_tolerance.py).
"""

import jax
import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.data import input_pipeline
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from tests.conftest import STEP_RTOL, relative_differences, tiny_config

BATCH = 16


def _one_step(tiny_data, tmp_path, strategy, num_devices, **overrides):
  """(loss, state after one step) from the seed's initial state on batch 0."""
  config = tiny_config(tiny_data['data_dir'], parallelism=strategy, num_devices=num_devices,
                       **{'batch_size': BATCH, **overrides})
  run = run_setup.Run(config, str(tmp_path / f'{strategy}{num_devices}'), need_train=True)
  state = run.dp.place_state(run.init_state())
  stream = input_pipeline.TrainStream(run.train, config.batch_size, config.seed)
  state, metrics = run.p_train_step(state, run.dp.put_batch(stream.batch(0)))
  return (float(run.dp.fetch(metrics)['train_loss']),
          jax.device_get(run.dp.canonical_state(state)))


def _initial_state(tiny_data):
  """The state every layout starts from (the seed's initialisation)."""
  config = tiny_config(tiny_data['data_dir'], batch_size=BATCH)
  from resnet_jax.training import train_state
  model = train_state.create_model(config, 10)
  tx = train_state.create_optimizer(config, lambda s: 0.1)
  return train_state.create_train_state(jax.random.key(config.seed), model, tx)


@pytest.fixture(scope='module')
def jit8(tiny_data, tmp_path_factory):
  return _one_step(tiny_data, tmp_path_factory.mktemp('j'), 'jit', 8)


@pytest.mark.parametrize('strategy,num_devices', [('pmap', 8), ('jit', 1), ('jit', 2),
                                                  ('pmap', 2)])
@pytest.mark.slow
def test_one_step_is_the_same_on_any_layout(tiny_data, tmp_path, jit8, strategy,
                                            num_devices):
  loss, state = _one_step(tiny_data, tmp_path, strategy, num_devices)
  diffs = relative_differences(jit8[1], state)
  print(f'{strategy} {num_devices} vs jit 8, one step: loss {loss:.8f} vs '
        f'{jit8[0]:.8f}, relative differences {diffs}')
  assert loss == pytest.approx(jit8[0], rel=STEP_RTOL)
  for tree, diff in diffs.items():
    assert diff <= STEP_RTOL, (tree, diff)
  # The step did something: parameters and statistics moved (a step that
  # updated nothing would pass the comparison above).
  assert int(state.step) == 1
  initial = jax.device_get(_initial_state(tiny_data))
  for tree in ('params', 'batch_stats'):
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), getattr(initial, tree),
                         getattr(state, tree))
    changes = jax.tree.leaves(moved)
    assert sum(c > 0 for c in changes) >= 0.9 * len(changes), (tree, moved)


# BatchNorm over groups of 4 (bn_group_size): 32 examples, so each of 8
# devices holds one group and each of 2 holds four.
GROUPED = dict(batch_size=32, bn_group_size=4)


@pytest.fixture(scope='module')
def grouped_jit8(tiny_data, tmp_path_factory):
  return _one_step(tiny_data, tmp_path_factory.mktemp('g'), 'jit', 8, **GROUPED)


@pytest.mark.parametrize('strategy,num_devices', [('pmap', 8), ('pmap', 2), ('jit', 1)])
@pytest.mark.slow
def test_batchnorm_groups_are_the_same_on_any_layout(tiny_data, tmp_path, grouped_jit8,
                                                     strategy, num_devices):
  # Groups never straddle devices; under pmap each replica normalises its own
  # groups and only the running averages are averaged over the replicas.
  # (What the groups compute: tests/test_bn_groups.py.)
  loss, state = _one_step(tiny_data, tmp_path, strategy, num_devices, **GROUPED)
  diffs = relative_differences(grouped_jit8[1], state)
  print(f'groups of 4, {strategy} {num_devices} vs jit 8: loss {loss:.8f} vs '
        f'{grouped_jit8[0]:.8f}, relative differences {diffs}')
  assert loss == pytest.approx(grouped_jit8[0], rel=STEP_RTOL)
  assert max(diffs.values()) <= STEP_RTOL, diffs
  if strategy == 'pmap' and num_devices == 8:
    # Statistics over the whole batch give another step, far beyond rounding
    # (the running averages move by a tenth of the difference: momentum 0.9).
    whole = _one_step(tiny_data, tmp_path / 'whole', 'jit', 8, batch_size=32)
    diffs = relative_differences(whole[1], state)
    assert min(diffs.values()) > 10 * STEP_RTOL, diffs


@pytest.mark.slow
def test_stored_conv_inputs_leave_the_trajectory_bitwise_unchanged(tiny_data, tmp_path):
  # The same maths compiled with barriers (and the XLA option that keeps them)
  # or without: 20 steps end in identical bits.
  def trajectory(store):
    config = tiny_config(tiny_data['data_dir'], batch_size=BATCH, store_conv_inputs=store)
    run = run_setup.Run(config, str(tmp_path / store), need_train=True)
    state = run.dp.place_state(run.init_state())
    stream = input_pipeline.TrainStream(run.train, config.batch_size, config.seed)
    losses = []
    for step in range(20):
      state, metrics = run.p_train_step(state, run.dp.put_batch(stream.batch(step)))
      losses.append(float(run.dp.fetch(metrics)['train_loss']))
    return losses, jax.device_get(run.dp.canonical_state(state))
  on, off = trajectory('on'), trajectory('off')
  assert on[0] == off[0]
  assert on[0][-1] < on[0][0]  # And it learns.
  for tree in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(on[1], tree),
                 getattr(off[1], tree))


def test_pmap_replicas_hold_identical_batch_stats(tiny_data, tmp_path):
  config = tiny_config(tiny_data['data_dir'], parallelism='pmap')
  run = run_setup.Run(config, str(tmp_path / 'w'), need_train=True)
  state = run.dp.place_state(run.init_state())
  stream = input_pipeline.TrainStream(run.train, config.batch_size, config.seed)
  state, _ = run.p_train_step(state, run.dp.put_batch(stream.batch(0)))
  for leaf in jax.tree.leaves(state.batch_stats):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 8 and all(np.array_equal(shards[0], s) for s in shards)


@pytest.mark.slow
@pytest.mark.parametrize('first,second', [(('pmap', 8), ('jit', 1)),
                                          (('jit', 1), ('pmap', 8))])
def test_checkpoint_restores_across_strategy_and_device_count(tiny_data, tmp_path,
                                                              first, second):
  workdir = str(tmp_path / 'w')
  cfg = lambda p, n: tiny_config(tiny_data['data_dir'], parallelism=p, num_devices=n,
                                 num_train_steps=4)
  loop.train_and_evaluate(cfg(*first), workdir)
  runs = {layout: run_setup.Run(cfg(*layout), workdir, need_train=True)
          for layout in (first, second)}
  saved = {layout: run.restore() for layout, run in runs.items()}
  # The checkpoint holds one canonical layout: both restore the same bits.
  a, b = (jax.device_get(runs[l].dp.canonical_state(saved[l])) for l in (first, second))
  for tree in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(a, tree), getattr(b, tree))
  assert int(a.step) == 4
  # And the next step from it agrees on both layouts, as any one step does.
  after = {}
  for layout, run in runs.items():
    stream = input_pipeline.TrainStream(run.train, run.config.batch_size, run.config.seed)
    state, _ = run.p_train_step(saved[layout], run.dp.put_batch(stream.batch(4)))
    after[layout] = jax.device_get(run.dp.canonical_state(state))
  diffs = relative_differences(after[first], after[second])
  print(f'step 5 after restoring on {first} and {second}: {diffs}')
  assert max(diffs.values()) <= STEP_RTOL, diffs


def test_indivisible_batch_and_bad_device_count_are_refused():
  dp = data_parallel.DataParallel('jit')
  with pytest.raises(errors.UserError, match='multiple of 8'):
    dp.check_batch(12)
  with pytest.raises(errors.UserError, match='num_devices 9'):
    data_parallel.DataParallel('jit', 9)
  with pytest.raises(errors.UserError, match='parallelism'):
    data_parallel.DataParallel('pjit')


@pytest.mark.slow
def test_dropout_draws_the_same_masks_under_pmap_and_jit(tiny_data, tmp_path):
  # Each pmap replica keeps its rows of the global batch's mask, so the step
  # with dropout equals jit's to rounding (masks drawn per replica from one
  # key would drop other units, far beyond rounding).
  results = {layout: _one_step(tiny_data, tmp_path / f'd{layout[0]}{layout[1]}', *layout,
                               model='wrn10_1', dropout_rate=0.3)
             for layout in (('jit', 8), ('pmap', 8), ('jit', 1))}
  want = results[('jit', 8)]
  for layout, (loss, state) in results.items():
    diffs = relative_differences(want[1], state)
    print(f'dropout, {layout} vs jit 8: loss {loss} vs {want[0]}, {diffs}')
    assert loss == pytest.approx(want[0], rel=STEP_RTOL)
    assert max(diffs.values()) <= STEP_RTOL, (layout, diffs)
