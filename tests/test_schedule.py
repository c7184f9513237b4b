"""The learning-rate schedule and optimizer of the paper's recipe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from resnet_jax.training import train_state


def test_paper_schedule_exact_values_at_boundaries():
  config = cifar.get_config()
  steps = train_state.total_steps(config, 50_000)
  assert steps == 64_000
  lr = train_state.create_learning_rate_fn(config, steps)
  expected = {0: 0.1, 31_999: 0.1, 32_000: 0.01, 32_001: 0.01, 47_999: 0.01,
              48_000: 0.001, 48_001: 0.001, 63_999: 0.001}
  for step, value in expected.items():
    assert float(lr(step)) == pytest.approx(value, rel=1e-6), step


def test_boundaries_follow_a_shortened_run():
  config = cifar.get_config()
  config.num_train_steps = 1000
  lr = train_state.create_learning_rate_fn(config, train_state.total_steps(config, 50_000))
  assert [float(lr(s)) for s in (499, 500, 749, 750)] == pytest.approx(
      [0.1, 0.01, 0.01, 0.001])
  config.num_train_steps = -1
  config.num_epochs = 2
  assert train_state.total_steps(config, 4153) == 65  # round(2 * 4153 / 128)


def test_warmup_keeps_absolute_boundaries():
  config = cifar.get_config()
  config.warmup_steps = 400
  lr = train_state.create_learning_rate_fn(config, 64_000)
  assert [float(lr(s)) for s in (0, 399, 400, 31_999, 32_000)] == pytest.approx(
      [0.01, 0.01, 0.1, 0.1, 0.01])


def test_weight_decay_is_coupled_and_on_kernels_only():
  config = cifar.get_config()
  tx = train_state.create_optimizer(config, lambda step: 0.1)
  params = {'conv': {'kernel': jnp.ones((3, 3, 2, 2))},
            'bn': {'scale': jnp.ones((2,)), 'bias': jnp.ones((2,))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # First step: momentum buffer = g + wd * w, update = -lr * buffer.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * 1e-4, rtol=1e-6)
  np.testing.assert_allclose(updates['bn']['scale'], 0.0)
  np.testing.assert_allclose(updates['bn']['bias'], 0.0)
