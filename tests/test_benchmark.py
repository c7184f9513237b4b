"""The benchmark prints every field; half precision keeps float32 state."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import benchmark
from resnet_jax.data import datasets
from resnet_jax.training import steps
from resnet_jax.training import train_state
from tests import processes
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {'device_kind', 'device_count', 'model', 'batch_size', 'dtype',
          'compile_seconds', 'train_images_per_sec', 'eval_images_per_sec',
          'input_pipeline_images_per_sec', 'loop_images_per_sec', 'host_ms_per_step',
          'host_loop_images_per_sec', 'host_loop_host_ms_per_step',
          'host_input_ms_per_step', 'loop_overhead_percent', 'input_pipeline',
          'steps_per_call'}


@pytest.mark.slow
@pytest.mark.parametrize('half,heavy', [(False, False), (True, False), (False, True)])
def test_benchmark_record_has_every_field(half, heavy, monkeypatch):
  # heavy: the most expensive augmentations and the moving average.
  options = dict(augment_policy='trivialaugment', cutout_size=16, mixup_alpha=1.0,
                 ema_decay=0.99) if heavy else {}
  if not heavy:
    _control_the_clock(monkeypatch)
    options = dict(steps_per_call=2)  # So a rate counted per call, not per step, shows.
  config = tiny_config(None, half_precision=half, **options)
  record = benchmark.run(config, windows=2, steps=2, warmup=1, min_window_seconds=0,
                         trivialaugment_workers=(1, 2) if heavy else ())
  assert record['augmentations']['policy'] == ('trivialaugment' if heavy else '')
  # Rounded rates: the ratio of the rounded values, within their rounding.
  assert record['input_vs_train'] == pytest.approx(
      record['input_pipeline_images_per_sec'] / record['train_images_per_sec'], rel=0.01)
  assert FIELDS <= set(record)
  # TrivialAugment runs on the host; everything else on the device. Unless
  # set, one step per call on the CPU (chunks.steps_per_call).
  assert record['input_pipeline'] == ('host' if heavy else 'device')
  assert record['steps_per_call'] == (1 if heavy else 2)
  if heavy:
    assert set(record['trivialaugment_images_per_sec']) == {'1', '2'}
    assert min(record['trivialaugment_images_per_sec'].values()) > 0
  else:
    # Each rate is the global batch (16 images) over the controlled time: a
    # count of rows per device, of steps instead of images, or of windows
    # wrong gives another number.
    assert record['train_images_per_sec'] == pytest.approx(16 / 0.010)
    assert record['eval_images_per_sec'] == pytest.approx(16 / 0.004)
    assert record['input_pipeline_images_per_sec'] == pytest.approx(16 / 0.002)
    assert record['host_input_ms_per_step'] == pytest.approx(2.0)
    assert record['loop_images_per_sec'] == pytest.approx(16 / 0.020)
    assert record['host_loop_images_per_sec'] == pytest.approx(16 / 0.020)
    assert record['loop_overhead_percent'] == pytest.approx(100.0)  # 20 ms vs 10.
  for key in ('loop_images_per_sec', 'host_loop_images_per_sec', 'host_ms_per_step',
              'host_loop_host_ms_per_step', 'host_input_ms_per_step'):
    assert record[key] > 0, key
  assert record['device_count'] == 8 and record['model'] == 'resnet8'
  assert record['dtype'] == ('bfloat16' if half else 'float32')
  for key in ('compile_seconds', 'train_images_per_sec', 'eval_images_per_sec',
              'input_pipeline_images_per_sec'):
    assert record[key] > 0, key


class _Clock:
  """A stand-in for time.perf_counter that moves only when told to."""

  def __init__(self):
    self.now = 0.0

  def perf_counter(self):
    return self.now

  def costs(self, fn, seconds):
    """`fn`, running as before, but taking `seconds` on this clock per call
    (times the steps it runs, for a chunk)."""
    def timed(*args):
      out = fn(*args)
      self.now += seconds * (args[2] if len(args) == 3 else 1)  # chunk(state, data, n).
      return out
    return timed


def _control_the_clock(monkeypatch):
  """The benchmark's clock under the test's control: a train step "takes"
  10 ms, an eval step 4 ms, a host batch 2 ms, a loop step 20 ms (the real
  computations still run)."""
  from resnet_jax.reporting import timing
  from resnet_jax.training import chunks
  clock = _Clock()
  monkeypatch.setattr(timing, 'time', clock)
  real_compiled, real_chunk = benchmark.compiled_train_step, chunks.compile_train_chunk

  def compiled(config):
    dp, stream, state, step_fn, eval_fn, batch, compile_s, split = real_compiled(config)
    monkeypatch.setattr(stream, 'batch', clock.costs(stream.batch, 0.002))
    return (dp, stream, state, clock.costs(step_fn, 0.010), clock.costs(eval_fn, 0.004),
            batch, compile_s, split)
  monkeypatch.setattr(benchmark, 'compiled_train_step', compiled)
  monkeypatch.setattr(chunks, 'compile_train_chunk',
                      lambda *a, **k: clock.costs(real_chunk(*a, **k), 0.020))


@pytest.mark.slow
def test_cli_with_torch_baseline_prints_both_and_ratios():
  # The PyTorch baseline in another interpreter; --torch (in the benchmark's
  # own process) is the accelerator check's (test_the_accelerator_check_...).
  pytest.importorskip('torch')
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.benchmark', '--config', 'configs/cifar.py',
       '--config.model=resnet8', '--config.batch_size=16', '--windows=2', '--steps=2',
       '--min_window_seconds=0', f'--torch_python={sys.executable}'],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(result.stdout)
  assert FIELDS <= set(record)
  assert record['torch']['train_images_per_sec'] > 0
  assert record['train_ratio_vs_torch'] == pytest.approx(
      record['train_images_per_sec'] / record['torch']['train_images_per_sec'], rel=1e-2)


@pytest.mark.slow
def test_torch_python_that_is_not_an_interpreter_is_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.benchmark', '--config', 'configs/cifar.py',
       f'--torch_python={tmp_path}/nothing'], capture_output=True, text=True, cwd=REPO,
      timeout=300)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert f'--torch_python {tmp_path}/nothing is not an executable' in result.stderr


@pytest.mark.slow
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


def test_cpu_conv_is_on_for_cpu_under_auto():
  config = tiny_config(None)
  assert config.cpu_conv == 'auto' and jax.default_backend() == 'cpu'
  assert train_state.cpu_conv(config) and train_state.create_model(config, 10).cpu_conv
  config.cpu_conv = 'off'
  assert not train_state.cpu_conv(config)
  assert not train_state.create_model(config, 10).cpu_conv
  del config['cpu_conv']  # A run recorded before the field: 'auto'.
  assert train_state.cpu_conv(config)


@pytest.mark.slow
def test_cpu_conv_benchmarks_print_their_tables():
  """benchmarks/cpu_conv_shapes.py and cpu_vs_torch.py, at tiny sizes."""
  pytest.importorskip('torch')
  shapes = subprocess.run(
      [sys.executable, 'benchmarks/cpu_conv_shapes.py', '--model', 'resnet8', '--stem',
       'cifar', '--size', '8', '--batch', '2', '--paths', 'lax,im2col', '--min_run_ms', '1'],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert shapes.returncode == 0, shapes.stderr[-3000:]
  lines = shapes.stdout.splitlines()
  # ResNet-8's 6 distinct convolutions at 8 px (ResNet-18's 11 took 11 s more),
  # each with the rule's choice: both kinds among them.
  rows = [line for line in lines if line.endswith((' lax', ' im2col'))]
  assert len(rows) == 6 and '!' not in ''.join(rows)
  assert {row.split()[-1] for row in rows} == {'lax', 'im2col'}
  assert lines[-1].startswith('total ms')
  table = subprocess.run(
      [sys.executable, 'benchmarks/cpu_vs_torch.py', '--rows', 'resnet18@16/2,resnet8@8/2',
       '--windows', '1', '--min_window_seconds', '0'], capture_output=True, text=True,
      cwd=REPO, timeout=600)
  assert table.returncode == 0, table.stderr[-3000:]
  rows = json.loads(table.stdout.splitlines()[-1])
  assert [r['row'] for r in rows] == ['resnet18 @ 16', 'resnet8 @ 8']
  assert all(r['jax_off'] > 0 and r['jax_auto'] > 0 and r['torch'] > 0 for r in rows)
  assert '| resnet18 @ 16 | 2 |' in table.stdout


@pytest.mark.slow
def test_the_accelerator_check_runs_end_to_end_on_the_cpu(tmp_path):
  # What a session with a lent GPU runs first, at tiny sizes: known to work
  # before a device is lent.
  env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, JAX_PLATFORMS='cpu',
             XLA_FLAGS=processes.xla_flags(1))
  result = subprocess.run(['benchmarks/accelerator_check.sh', '--smoke', '--deadline=240'],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
  assert result.returncode == 0, result.stdout[-4000:]
  assert 'check: passed' in result.stdout and 'training: finished' in result.stdout
  parity = json.loads(result.stdout.split('== parity')[1].split('\n', 1)[1].split('\n==')[0])
  assert parity['parity'] and parity['bfloat16_finite']
  for dtype in ('fp32', 'bf16'):
    record = json.loads((tmp_path / f'bench_resnet8_{dtype}.json').read_text())
    assert record['train_images_per_sec'] > 0
    assert record['dtype'] == ('bfloat16' if dtype == 'bf16' else 'float32')
    if importlib.util.find_spec('torch'):  # The CLI's --torch, in the same process.
      assert record['torch']['train_images_per_sec'] > 0
      assert record['torch']['dtype'] == record['dtype']
      assert record['train_ratio_vs_torch'] == pytest.approx(
          record['train_images_per_sec'] / record['torch']['train_images_per_sec'],
          rel=1e-2)
  record = json.loads((tmp_path / 'bench_resnet50_bf16.json').read_text())
  assert record['image_size'] == 32 and record['train_images_per_sec'] > 0
  assert record['batch_per_device'] == 8
  jpeg = (tmp_path / 'jpeg_decoding.txt').read_text()
  assert '256 files' in jpeg and 'loader: ' in jpeg
  assert (tmp_path / 'accel_r20.tar').stat().st_size > 0
  assert (tmp_path / 'check.log').read_text().count('==') >= 5


@pytest.mark.parametrize('model', ['resnet20', 'wrn10_1', 'wrn16_8'])
def test_the_torch_baseline_builds_the_same_network(model):
  # The same layers: every parameter tensor's size, in order (flax's kernels
  # are HWIO, PyTorch's OIHW: compared as sizes), and the same total.
  pytest.importorskip('torch')
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  import torch_baseline
  from resnet_jax import models
  net = torch_baseline.build(model)
  variables = jax.eval_shape(
      lambda: models.create_model(model, 10).init(jax.random.key(0),
                                                   jnp.zeros((1, 32, 32, 3))))
  jax_sizes = sorted(int(np.prod(x.shape))
                     for x in jax.tree_util.tree_leaves(variables['params']))
  torch_sizes = sorted(p.numel() for p in net.parameters())
  assert torch_sizes == jax_sizes
  with pytest.raises(ValueError, match="not 'preact_resnet18'"):
    torch_baseline.build('preact_resnet18')
