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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIN = os.path.join(REPO, 'benchmarks', 'torch_baseline.py')
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import torch_resnet  # noqa: E402


def _leaves(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


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
          '--config.label_smoothing=0.1', *extra]


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
  config = config_files.load('configs/imagenet.py:resnet18')[0]
  for flag in _flags(jpegs)[2:]:
    field, value = flag.removeprefix('--config.').split('=')
    config[field] = type(config[field])(value) if field != 'data_dir' else value
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
