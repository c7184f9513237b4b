"""The benchmark prints every field; half precision keeps float32 state."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import benchmark
from resnet_jax.data import datasets
from resnet_jax.training import steps
from resnet_jax.training import train_state
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {'device_kind', 'device_count', 'model', 'batch_size', 'dtype',
          'compile_seconds', 'train_images_per_sec', 'eval_images_per_sec',
          'input_pipeline_images_per_sec', 'input_wait_fraction'}


@pytest.mark.parametrize('half,heavy', [(False, False), (True, False), (False, True)])
def test_benchmark_record_has_every_field(half, heavy):
  # heavy: the most expensive augmentations and the moving average.
  options = dict(augment_policy='trivialaugment', cutout_size=16, mixup_alpha=1.0,
                 ema_decay=0.99) if heavy else {}
  config = tiny_config(None, half_precision=half, **options)
  record = benchmark.run(config, windows=2, steps=2, warmup=1)
  assert record['augmentations']['policy'] == ('trivialaugment' if heavy else '')
  assert record['input_vs_train'] == pytest.approx(
      record['input_pipeline_images_per_sec'] / record['train_images_per_sec'], abs=0.06)
  assert FIELDS <= set(record)
  assert record['device_count'] == 8 and record['model'] == 'resnet8'
  assert record['dtype'] == ('bfloat16' if half else 'float32')
  for key in ('compile_seconds', 'train_images_per_sec', 'eval_images_per_sec',
              'input_pipeline_images_per_sec'):
    assert record[key] > 0, key
  assert 0 <= record['input_wait_fraction'] < 1


@pytest.mark.parametrize('torch_flag', ['--torch', f'--torch_python={sys.executable}'])
def test_cli_with_torch_baseline_prints_both_and_ratios(torch_flag):
  pytest.importorskip('torch')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.benchmark', '--config', 'configs/cifar.py',
       '--config.model=resnet8', '--config.batch_size=16', '--windows=2', '--steps=2',
       torch_flag], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(result.stdout)
  assert FIELDS <= set(record)
  assert record['torch']['train_images_per_sec'] > 0
  assert record['train_ratio_vs_torch'] == pytest.approx(
      record['train_images_per_sec'] / record['torch']['train_images_per_sec'], rel=1e-2)


def test_torch_python_that_is_not_an_interpreter_is_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.benchmark', '--config', 'configs/cifar.py',
       f'--torch_python={tmp_path}/nothing'], capture_output=True, text=True, cwd=REPO,
      timeout=300)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert f'--torch_python {tmp_path}/nothing is not an executable' in result.stderr


def test_half_precision_keeps_parameters_optimizer_and_stats_float32(tiny_data):
  config = tiny_config(tiny_data['data_dir'], half_precision=True)
  model = train_state.create_model(config, 10)
  tx = train_state.create_optimizer(config, lambda s: 0.1)
  state = train_state.create_train_state(jax.random.key(0), model, tx)
  batch = {'image': jnp.zeros((4, 32, 32, 3), jnp.uint8) + 100,
           'label': jnp.arange(4) % 10}
  state, metrics = jax.jit(lambda s, b: steps.train_step(
      s, b, mean_std=datasets.MEAN_STD['cifar10'], dtype=jnp.bfloat16, seed=0))(state, batch)
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state,
                                              state.batch_stats))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype('float32')} and jnp.isfinite(metrics['train_loss'])


def test_store_conv_inputs_is_on_for_cpu_under_auto():
  config = tiny_config(None)
  assert config.store_conv_inputs == 'auto' and jax.default_backend() == 'cpu'
  assert train_state.store_conv_inputs(config)
  config.store_conv_inputs = 'off'
  assert not train_state.store_conv_inputs(config)
  assert not train_state.create_model(config, 10).store_conv_inputs
