"""The PyTorch twin of runs with image_size (`benchmarks/torch_baseline.py
--config ...`): its network starts as the JAX model does, it reads the same
recipe (schedule, evaluation cadence, metrics), refuses what it does not
implement, and runs as an experiment (`--program`)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from resnet_jax import config_files  # noqa: E402
from resnet_jax import errors  # noqa: E402
from resnet_jax import models  # noqa: E402
from resnet_jax.training import convert  # noqa: E402
from resnet_jax.training import loop  # noqa: E402
from resnet_jax.training import train_state  # noqa: E402
from tests import jpeg_files  # noqa: E402
from tests import processes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIN = os.path.join(REPO, 'benchmarks', 'torch_baseline.py')
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import torch_resnet  # noqa: E402


def _leaves(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_the_twin_starts_from_the_jax_models_initial_distributions(name):
  torch.manual_seed(0)
  net = torch_resnet.build(name, 10, stem='imagenet', zero_init_residual=True)
  twin = _leaves(convert.from_torch(name, net.state_dict(), 10, 'imagenet')['params'])
  ours = _leaves(models.create_model(name, 10, stem='imagenet', zero_init_residual=True)
                 .init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params'])
  assert twin.keys() == ours.keys()
  # The same BatchNorm scales start at zero: the last of each residual branch.
  zeros = lambda leaves: {k for k, v in leaves.items() if 'scale' in k and not v.any()}
  assert zeros(twin) == zeros(ours)
  assert len(zeros(ours)) == {'resnet18': 8, 'resnet50': 16}[name]
  for key, value in ours.items():
    assert twin[key].shape == value.shape, key
    if 'kernel' in key:  # He normal (fan-out) convolutions, LeCun normal classifier.
      # Sample std of >= 5,120 draws: within 3% of each other is > 4 standard
      # errors (1/sqrt(2n) <= 1%) for a matching initialiser; a fan-in He
      # normal or torch's default would be off by 40% or more.
      assert twin[key].std() == pytest.approx(value.std(), rel=0.03), key
      assert abs(twin[key].mean()) < 0.1 * value.std(), key
    else:
      assert np.array_equal(twin[key], value), key  # BatchNorm and bias: constants.


@pytest.mark.parametrize('on', ['ffcv', 'kernels', 'all'])
@pytest.mark.slow
def test_the_twin_decays_the_parameters_the_jax_rule_does(on):
  # 'ffcv' in the twin is FFCV's own test on torchvision names ('bn' not in
  # the name); JAX's mask, named the torchvision way, picks the same ones.
  import torch_baseline
  net = torch_resnet.build('resnet50', 10, stem='imagenet')
  opt = torch_baseline._optimizer(net, 0.1, 5e-5, on)
  ids = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
  twin = {n for n, p in net.named_parameters() if id(p) in ids}
  if on == 'ffcv':
    assert twin == {n for n, _ in net.named_parameters() if 'bn' not in n}
  config = config_files.load_default()
  config.update(model='resnet50', stem='imagenet', weight_decay_on=on)
  params = models.create_model('resnet50', 10, stem='imagenet').init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  mask = train_state.decay_mask(config)(params)
  ours = {convert.torch_name(path) for path, decayed in
          jax.tree_util.tree_flatten_with_path(mask)[0] if decayed}
  assert ours == twin


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
@pytest.mark.slow
def test_the_twins_blurpool_is_ffcvs_on_the_convolutions_jax_blurs(name):
  net = torch_resnet.build(name, 10, stem='imagenet', blurpool=True)
  wrapped = {n: m for n, m in net.named_modules()
             if isinstance(m, torch_resnet.BlurPoolConv2d)}
  # torchvision's names -> the JAX model's ('layer2.0.downsample.0' is the
  # projection, `downsample_conv`); tests/test_blurpool.py lists the JAX side.
  jax_names = {n.replace('.0.', '_0/', 1).replace('downsample.0', 'downsample_conv')
               for n in wrapped}
  conv = {'resnet18': 'conv1', 'resnet50': 'conv2'}[name]
  assert jax_names == {f'layer{i}_0/{c}' for i in (2, 3, 4)
                       for c in (conv, 'downsample_conv')}
  # The blur itself: FFCV's depthwise conv of the buffer against layers.BlurPool.
  from resnet_jax import layers
  block = wrapped['layer2.0.downsample.0']
  assert not any(p is block.blur_filter for p in net.parameters())
  x = torch.randn(2, block.conv.in_channels, 7, 6)
  blurred = torch.nn.functional.conv2d(x, block.blur_filter, padding=(1, 1),
                                       groups=block.conv.in_channels)
  ours = layers.BlurPool().apply({}, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  np.testing.assert_allclose(np.asarray(ours), blurred.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-5, atol=1e-6)
  with torch.no_grad():
    np.testing.assert_array_equal(block(x).numpy(), block.conv(blurred).numpy())


def test_the_twins_batchnorm_groups_are_batchnorm_on_each_group():
  from resnet_jax import layers
  torch.manual_seed(0)
  x = torch.randn(8, 5, 3, 4) * 2 + 1
  x[4:] = 3 * x[4:] - 4  # Two groups of 4 with other statistics.
  plain = torch.nn.BatchNorm2d(5, momentum=0.1)
  with torch.no_grad():
    plain.weight.uniform_(0.5, 2)
    plain.bias.normal_()
    plain.running_mean.fill_(0.5)
    plain.running_var.fill_(2.0)
  grouped = torch_resnet.GroupBatchNorm2d(plain, 4)
  alone = [torch_resnet.GroupBatchNorm2d(plain, 4) for _ in range(2)]  # Copies.
  with torch.no_grad():
    y = grouped(x)
    # nn.BatchNorm2d's own training forward on each group alone.
    want = torch.cat([super(torch_resnet.GroupBatchNorm2d, m).forward(x[4 * i:4 * i + 4])
                      for i, m in enumerate(alone)])
  np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
  for buffer in ('running_mean', 'running_var'):
    np.testing.assert_allclose(getattr(grouped, buffer).numpy(),
                               sum(getattr(m, buffer) for m in alone).numpy() / 2,
                               rtol=1e-6)
  # resnet_jax's layer: the same output and running mean; its running
  # variance is the biased one (flax's), the twin's torch's unbiased one.
  variables = {'params': {'scale': plain.weight.detach().numpy(),
                          'bias': plain.bias.detach().numpy()},
               'batch_stats': {'mean': np.full(5, 0.5, np.float32),
                               'var': np.full(5, 2.0, np.float32)}}
  ours, stats = layers.GroupBatchNorm(4, momentum=0.9).apply(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()), mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(ours), y.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-5, atol=1e-5)
  stats = stats['batch_stats']
  np.testing.assert_allclose(stats['mean'], grouped.running_mean.numpy(), rtol=1e-6)
  count = 4 * 3 * 4
  np.testing.assert_allclose(0.9 * 2.0 + (stats['var'] - 0.9 * 2.0) * count / (count - 1),
                             grouped.running_var.numpy(), rtol=1e-5)
  # The twin's networks take it on every BatchNorm.
  net = torch_resnet.build('resnet18', 10, stem='imagenet', bn_group_size=4)
  norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  assert len(norms) == 20 and all(isinstance(m, torch_resnet.GroupBatchNorm2d)
                                  for m in norms)


def _twin(*args, timeout=300):
  return subprocess.run([sys.executable, TWIN, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=timeout)


@pytest.fixture(scope='module')
def jpegs(tmp_path_factory):
  return jpeg_files.write_folder(tmp_path_factory.mktemp('twin'))


def _flags(jpegs, *extra):
  return ['--config', 'configs/imagenet.py:resnet18',
          f'--config.data_dir={os.path.dirname(jpegs)}', '--config.dataset=jpegs',
          '--config.image_size=32', '--config.batch_size=8', '--config.eval_batch_size=8',
          '--config.num_epochs=2', '--config.log_every_steps=1',
          '--config.warmup_epochs=0.5', '--config.lr_schedule=cosine',
          '--config.label_smoothing=0.1', '--config.bn_group_size=0', *extra]


@pytest.mark.slow
def test_the_twin_refuses_what_it_does_not_implement(jpegs, tmp_path):
  import torch_baseline
  base = config_files.load('configs/imagenet.py:resnet18')[0]
  cases = [
      (dict(mixup_alpha=0.2), 'the PyTorch twin does not implement mixup_alpha '
       '(--config.mixup_alpha=0.2); set it to 0.0'),
      (dict(optimizer='lars'), "the PyTorch twin does not implement optimizer "
       "(--config.optimizer='lars'); set it to 'sgd'"),
      (dict(model='resnet20'), 'the PyTorch twin has resnet18, resnet34, resnet50, '
       'resnet101, resnet152, not --config.model=resnet20'),
      (dict(image_size=0), 'the PyTorch twin trains runs with --config.image_size '
       '(files decoded while training); for the in-memory CIFAR recipe use --data DIR '
       '--workdir W'),
  ]
  for fields, message in cases:
    config = base.copy_and_resolve_references()
    config.update(fields)
    with pytest.raises(errors.UserError) as e:
      torch_baseline.check_twin(config)
    assert str(e.value) == message
  torch_baseline.check_twin(base)  # The preset itself runs.
  # On the command line: one line, exit code 2, nothing written.
  for extra, message in [(['--config.ema_decay=0.99'], cases[0][1].replace(
      'mixup_alpha', 'ema_decay').replace('0.2', '0.99')), (
          ['--config.lerning_rate=1'], "the config has no field 'lerning_rate'; did you "
          'mean --config.learning_rate? python -m resnet_jax.main --help lists the fields')]:
    result = _twin('--workdir', str(tmp_path / 'w'), *_flags(jpegs, *extra))
    assert result.returncode == 2, (extra, result.stderr[-2000:])
    assert result.stderr.strip().splitlines()[-1] == f'error: {message}', extra
    assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_the_twin_runs_as_an_experiment_with_the_recipe_of_main(jpegs, tmp_path):
  folder = tmp_path / 'exp'
  run = lambda *extra: subprocess.run(
      [sys.executable, '-m', 'resnet_jax.experiment', '--workdir', str(folder),
       '--seeds=0-1', *extra], capture_output=True, text=True, cwd=REPO, timeout=600)
  result = run('--program=benchmarks/torch_baseline.py', *_flags(jpegs))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'run by {TWIN}' in result.stdout
  config = processes.config_of(_flags(jpegs))
  num_steps, steps_per_epoch = 9, 36 / 8  # 36 training images.
  lr_fn = train_state.create_learning_rate_fn(config, num_steps, steps_per_epoch)
  for seed in (0, 1):
    workdir = folder / f'seed={seed}'
    record = json.loads((workdir / 'run.json').read_text())
    assert record['framework'].startswith('torch ')
    assert record['config']['seed'] == seed and record['config']['image_size'] == 32
    assert record['sessions'][-1]['final_step'] == num_steps
    rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
    train_rows = [r for r in rows if 'train_loss' in r]
    assert [r['step'] for r in train_rows] == list(range(1, num_steps + 1))
    # The schedule main logs, step for step (warm-up, then cosine).
    assert [r['learning_rate'] for r in train_rows] == [
        float(f'{float(lr_fn(s - 1)):.6g}') for s in range(1, num_steps + 1)]
    eval_rows = [r for r in rows if 'eval_accuracy' in r]
    assert [r['step'] for r in eval_rows] == sorted(loop.eval_steps(num_steps, 8, 36, 1.0))
    assert all(r['eval_examples'] == 12 and 0 <= r['eval_top5_accuracy'] <= 1
               for r in eval_rows)
    assert eval_rows[-1]['eval_top5_accuracy'] == 1.0  # 3 classes: always in the top 5.
  again = run()
  assert again.returncode == 0 and 'Nothing to run' in again.stdout, again.stderr[-2000:]
  table = subprocess.run([sys.executable, '-m', 'resnet_jax.results', str(folder)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
  assert table.returncode == 0, table.stderr[-2000:]
  assert '| torch |' in table.stdout and '| 2 | 2 |' in table.stdout
  changed = run('--program=resnet_jax.main')
  assert changed.returncode == 2 and (
      f'(program {TWIN} -> resnet_jax.main)' in changed.stderr)
