"""Presets, config field help and progress output."""

import io
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from configs import cifar
from resnet_jax.workdir import config_validation
from resnet_jax.reporting import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(spec):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values)
  values(['prog', f'--config={os.path.join(REPO, spec)}'])
  return values.config


def test_presets_select_the_papers_recipes():
  c = _parse('configs/cifar.py:resnet56')
  assert (c.model, c.learning_rate, c.num_epochs) == ('resnet56', 0.1, 163.84)
  c = _parse('configs/cifar.py:resnet110')
  assert (c.model, c.warmup_steps, c.warmup_lr) == ('resnet110', 400, 0.01)
  c = _parse('configs/cifar.py:wrn28_10')
  assert c.model == 'wrn28_10' and c.nesterov and c.weight_decay == 5e-4
  assert tuple(c.lr_boundaries) == (0.3, 0.6, 0.8) and c.lr_decay_factor == 0.2
  assert _parse('configs/cifar.py').model == 'resnet20'
  for name in ('resnet20', 'resnet56', 'resnet110', 'preact_resnet164', 'resnet18',
               'wrn28_10'):
    config = cifar.get_config(name)
    config_validation.validate(config)
    assert config.model == name
  with pytest.raises(ValueError, match='unknown preset'):
    cifar.get_config('resnet57')


def test_every_config_field_has_one_line_of_help():
  assert set(config_validation.FIELDS) == set(cifar.get_config().keys())
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', '--help'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  for field in cifar.get_config():
    assert f'--config.{field} ' in result.stdout, field


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_on_a_terminal_only():
  terminal = _Terminal()
  bar = progress.Progress(total_steps=10, steps_per_epoch=4, stream=terminal)
  for done in range(1, 11):
    bar.step(done)
    if done == 2:
      bar.set_metrics({'train_loss': 1.25, 'train_accuracy': 0.5,
                       'images_per_sec': 321.0})
  bar.close()
  text = terminal.getvalue()
  assert 'epoch 1' in text and 'epoch 3' in text and 'epoch 4' not in text
  assert 'loss=1.250' in text and 'acc=50.0%' in text and 'img/s=321' in text
  assert '\r' in text and '<' in text  # Redrawn in place, with an ETA.
  piped = io.StringIO()
  bar = progress.Progress(total_steps=10, steps_per_epoch=4, stream=piped)
  for done in range(1, 11):
    bar.step(done)
  bar.close()
  assert piped.getvalue() == ''  # Plain log lines only (see test_train).


@pytest.mark.parametrize('flags,line', [
    (['--config', 'configs/cifar.py', '--config.learning_rat=0.05'],
     "error: the config has no field 'learning_rat'; did you mean "
     '--config.learning_rate? python -m resnet_jax.main --help lists the fields'),
    (['--config', 'configs/cifar.py:resnet20_moden'],
     "error: unknown preset 'resnet20_moden'; choose one of: "),
    (['--config', 'configs/cifr.py'],
     "error: config file configs/cifr.py does not exist; the configs are in the "
     "repository's configs/ folder: run from the checkout's root or pass the full path"),
    (['--config', 'configs/cifar.py', '--config.init_from=runs/nope'],
     'error: init_from runs/nope does not exist; pass a resnet_jax workdir, one of its '
     'checkpoints (WORKDIR/checkpoints/STEP), or a .pth file'),
    (['--config', 'configs/cifar.py', '--workdir=gs://bucket/r20'],
     'error: workdir gs://bucket/r20 is an object-store URL'),
])
def test_a_mistyped_command_gets_one_error_line_and_writes_nothing(tmp_path, flags, line):
  workdir = [] if any(f.startswith('--workdir') for f in flags) else [
      '--workdir', str(tmp_path / 'w')]
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', *flags, *workdir],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert len(errors) == 1 and errors[0].startswith(line), errors
  assert not (tmp_path / 'w').exists()
