"""BatchNorm over groups of examples (`bn_group_size`, ghost batch norm).

Each group of N consecutive examples is normalised by its own statistics and
the running averages take the mean over the groups: checked by hand on one
layer, and on a whole network as "the plain network applied to each group
alone" (loss, gradients and BatchNorm updates). The same step on any device
count under jit and pmap is tests/test_parallel.py's.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import errors
from resnet_jax import layers
from resnet_jax import models
from resnet_jax.training import run_setup
from tests.conftest import STEP_RTOL, tiny_config


def _largest_relative_difference(a, b) -> float:
  """Over the leaves of two trees: max |a - b| / max |a|."""
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max() / np.abs(x).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_each_group_is_normalised_by_its_own_statistics():
  rng = np.random.RandomState(0)
  x = rng.normal(0, 1, (8, 3, 3, 4)).astype(np.float32)
  x[4:] = 5 + 3 * x[4:]  # Two groups of 4 with other means and spreads.
  layer = layers.GroupBatchNorm(4, momentum=0.9, epsilon=1e-5)
  variables = layer.init(jax.random.key(0), x)
  scale = rng.uniform(0.5, 2, 4).astype(np.float32)
  bias = rng.normal(0, 1, 4).astype(np.float32)
  variables = {'params': {'scale': scale, 'bias': bias},
               'batch_stats': {'mean': np.full(4, 0.5, np.float32),
                               'var': np.full(4, 2.0, np.float32)}}
  y, updates = layer.apply(variables, x, mutable=['batch_stats'])
  # By hand, in float64: each group's mean and (biased) variance over its
  # rows and positions.
  groups = x.astype(np.float64).reshape(2, 4, 3, 3, 4)
  mean = groups.mean((1, 2, 3), keepdims=True)
  var = groups.var((1, 2, 3), keepdims=True)
  want = (groups - mean) / np.sqrt(var + 1e-5) * scale + bias
  np.testing.assert_allclose(y, want.reshape(x.shape), rtol=1e-5, atol=1e-5)
  # Running averages: the mean over the groups of the group statistics.
  stats = updates['batch_stats']
  np.testing.assert_allclose(stats['mean'], 0.9 * 0.5 + 0.1 * mean.mean(0).ravel(),
                             rtol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 * 2.0 + 0.1 * var.mean(0).ravel(),
                             rtol=1e-6)
  # Not the whole batch's variance (the groups' means differ by ~5).
  whole = 0.9 * 2.0 + 0.1 * x.astype(np.float64).var((0, 1, 2))
  assert np.all(np.abs(stats['var'] - whole) > 0.3)
  # Evaluation normalises with the running averages, as nn.BatchNorm does.
  new = {**variables, **updates}
  np.testing.assert_array_equal(
      layers.GroupBatchNorm(4, use_running_average=True).apply(new, x),
      nn.BatchNorm(use_running_average=True).apply(new, x))
  with pytest.raises(ValueError, match='6 rows does not split into groups of 4'):
    layer.apply(variables, x[:6], mutable=['batch_stats'])


def _stepper(model):
  """(variables, x, labels) -> (loss, logits, gradients, new batch_stats) of
  one training pass of `model`, compiled."""
  @jax.jit
  def step(variables, x, labels):
    def loss_fn(params):
      logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                    mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, updates['batch_stats'])
    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables['params'])
    return loss, logits, grads, stats
  return step


@pytest.fixture(scope='module')
def batch():
  x = jax.random.normal(jax.random.key(1), (16, 32, 32, 3)) * 2 + 0.5
  labels = jnp.arange(16) % 10
  variables = jax.jit(models.create_model('resnet8').init)(jax.random.key(0), x[:1])
  return x, labels, variables


@pytest.mark.slow
def test_a_grouped_network_is_the_plain_network_on_each_group_alone(batch):
  # Every BatchNorm of the plain network, given one group, normalises it by
  # that group's statistics: the grouped network on the batch must give the
  # logits of the groups side by side, the mean of their losses and
  # gradients, and the mean of their BatchNorm updates (m * old + (1 - m) *
  # group statistic, averaged over the groups).
  x, labels, variables = batch
  loss, logits, grads, stats = _stepper(models.create_model('resnet8', bn_group_size=4))(
      variables, x, labels)
  plain = _stepper(models.create_model('resnet8'))
  alone = [plain(variables, x[i:i + 4], labels[i:i + 4]) for i in range(0, 16, 4)]
  mean = lambda *trees: jax.tree.map(lambda *leaves: sum(leaves) / len(leaves), *trees)
  assert float(loss) == pytest.approx(np.mean([float(a[0]) for a in alone]), rel=STEP_RTOL)
  assert _largest_relative_difference(
      np.concatenate([a[1] for a in alone]), logits) <= STEP_RTOL
  assert _largest_relative_difference(mean(*[a[2] for a in alone]), grads) <= STEP_RTOL
  assert _largest_relative_difference(mean(*[a[3] for a in alone]), stats) <= STEP_RTOL
  # And it is not the whole-batch network.
  whole = plain(variables, x, labels)
  assert _largest_relative_difference(whole[2], grads) > 100 * STEP_RTOL


@pytest.mark.slow
def test_one_group_of_the_whole_batch_is_the_default_batchnorm(batch):
  x, labels, variables = batch
  grouped = _stepper(models.create_model('resnet8', bn_group_size=16))(variables, x, labels)
  whole = _stepper(models.create_model('resnet8'))(variables, x, labels)
  assert float(grouped[0]) == pytest.approx(float(whole[0]), rel=STEP_RTOL)
  for a, b in zip(grouped[1:], whole[1:]):
    assert _largest_relative_difference(b, a) <= STEP_RTOL


def test_a_group_size_must_divide_the_batch_of_every_device(tiny_data):
  def refusal(num_devices=-1, **fields):
    config = tiny_config(tiny_data['data_dir'], num_devices=num_devices, **fields)
    with pytest.raises(errors.UserError) as e:
      run_setup.preflight(config)
    return str(e.value)
  assert refusal(bn_group_size=3) == ('bn_group_size must be 0 or divide batch_size 16, '
                                      'got 3; set --config.bn_group_size')
  assert refusal(bn_group_size=-4).startswith('bn_group_size must be 0 or divide')
  # 16 over 8 devices is 2 each: a group of 4 would straddle two devices.
  assert refusal(bn_group_size=4) == (
      'bn_group_size 4 does not divide the batch of 2 examples on each of 8 devices '
      '(batch_size 16); set --config.bn_group_size to a divisor of 2, or 0 for '
      'statistics over the whole batch')
  # On 4 devices it fits; the evaluation batch is not grouped (it normalises
  # with the running averages), so it need not be a multiple of the groups.
  run_setup.preflight(tiny_config(tiny_data['data_dir'], bn_group_size=4, num_devices=4,
                                  eval_batch_size=20))
