"""Config refusals the other tests do not reach, and bfloat16 where asked."""

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import errors
from resnet_jax.data import datasets
from resnet_jax.training import steps
from resnet_jax.training import train_state
from resnet_jax.workdir import config_validation
from tests.conftest import tiny_config


@pytest.mark.parametrize('overrides,message', [
    (dict(lr_boundaries=(0.5, 1.0)), 'lr_boundaries are fractions of the run, each in '
                                     '(0, 1); got (0.5, 1.0)'),
    (dict(lr_boundaries=(0.0, 0.5)), 'lr_boundaries are fractions of the run, each in '
                                     '(0, 1); got (0.0, 0.5)'),
    (dict(num_epochs=0.0), 'num_epochs must be positive when num_train_steps is -1, '
                           'got 0.0'),
    (dict(num_epochs=-2.0), 'num_epochs must be positive when num_train_steps is -1'),
    (dict(eval_every_epochs=0.0), 'eval_every_epochs must be positive, got 0.0; set '
                                  '--config.eval_every_epochs'),
    (dict(keep_checkpoints=0), 'keep_checkpoints must be a positive integer, got 0; set '
                               '--config.keep_checkpoints'),
    (dict(checkpoint_every_steps=-5), 'checkpoint_every_steps must be a positive '
                                      'integer, got -5'),
    (dict(log_every_steps=0), 'log_every_steps must be a positive integer, got 0'),
])
def test_bad_fields_are_refused_by_name(tiny_data, overrides, message):
  config = tiny_config(tiny_data['data_dir'], num_train_steps=-1, **overrides)
  with pytest.raises(errors.UserError) as e:
    config_validation.validate(config)
  assert message in str(e.value)


def test_a_field_this_version_does_not_know_is_refused(tiny_data):
  config = tiny_config(tiny_data['data_dir'])
  config.unlock()
  config.no_such_field = 1
  with pytest.raises(errors.UserError, match=r"config fields \['no_such_field'\] are not "
                                             'known to this version'):
    config_validation.validate(config)


def test_half_precision_computes_in_bfloat16(tiny_data):
  # The convolutions of the compiled step take bfloat16 operands when asked
  # (parameters stay float32: tests/test_benchmark.py), float32 otherwise.
  def conv_types(half):
    config = tiny_config(tiny_data['data_dir'], half_precision=half)
    model = train_state.create_model(config, 10)
    tx = train_state.create_optimizer(config, lambda s: 0.1)
    state = train_state.create_train_state(jax.random.key(0), model, tx)
    batch = {'image': jnp.zeros((4, 32, 32, 3), jnp.uint8), 'label': jnp.arange(4)}
    text = jax.jit(lambda s, b: steps.train_step(
        s, b, mean_std=datasets.MEAN_STD['cifar10'],
        dtype=train_state.compute_dtype(config), seed=0)).lower(state, batch).as_text()
    lines = [l for l in text.splitlines() if 'convolution' in l]
    assert lines
    return {t for l in lines for t in ('bf16', 'f32') if f'x{t}>' in l}
  assert conv_types(True) == {'bf16'}
  assert conv_types(False) == {'f32'}
