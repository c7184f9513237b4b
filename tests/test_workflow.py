"""Presets, config field help and progress output."""

import io
import json
import os
import subprocess
import sys
import time

from absl import flags
from ml_collections import config_flags
import pytest

from configs import cifar
from resnet_jax import config_files
from resnet_jax.workdir import config_fields
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


@pytest.mark.slow
def test_every_config_field_has_one_line_of_help():
  assert set(config_fields.FIELDS) == set(cifar.get_config().keys())
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', '--help'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  # Each with its default: --config.batch_size=128  global training batch...
  for field, value in cifar.get_config().items():
    assert f'--config.{field}={value!r} ' in result.stdout, field


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
     'error: config file configs/cifr.py does not exist; the configs that ship with '
     'resnet_jax are cifar.py, imagenet.py, label_smoothing.py (pass configs/cifar.py, from any '
     'folder), or pass the '
     'path of your own'),
    (['--config', 'configs/cifar.py', '--config.init_from=runs/nope'],
     'error: init_from runs/nope does not exist; pass a resnet_jax workdir, one of its '
     'checkpoints (WORKDIR/checkpoints/STEP), or a .pth file'),
    (['--config', 'configs/cifar.py', '--config.init_from=configs'],
     'error: init_from configs holds no checkpoint (nothing in configs/checkpoints); '
     'pass the workdir of a run that saved one, or one of its checkpoints'),
    # Checked before any data is looked for or read (cifar10 is not here).
    (['--config', 'configs/cifar.py:resnet20_modern', '--config.num_train_steps=60'],
     'error: warmup_steps 200 is not shorter than the run (60 steps); set '
     '--config.warmup_steps lower'),
    (['--config', 'configs/cifar.py', '--workdir=gs://bucket/r20'],
     'error: workdir gs://bucket/r20 is an object-store URL'),
])
@pytest.mark.slow
def test_a_mistyped_command_gets_one_error_line_and_writes_nothing(tmp_path, flags, line):
  workdir = [] if any(f.startswith('--workdir') for f in flags) else [
      '--workdir', str(tmp_path / 'w')]
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', *flags, *workdir],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert len(errors) == 1 and errors[0].startswith(line), errors
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('given', ['configs/imagenet.py', 'configs/cifar.py'])
@pytest.mark.slow
def test_a_preset_typo_points_at_the_presets_of_the_file_given(given, tmp_path):
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', '--config',
                           f'{given}:resnet5O', '--workdir', str(tmp_path / 'w')],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  presets = ', '.join(config_files.load_module(os.path.join(REPO, given)).PRESETS)
  assert last == (f"error: unknown preset 'resnet5O'; choose one of: {presets}; pass "
                  f'--config {given}:NAME')


@pytest.mark.slow
def test_tilde_in_a_path_flag_is_the_home_folder(tmp_path):
  # The shell leaves `~` after `=` as typed: the commands expand it, and make
  # no folder named `~` where they run.
  home = tmp_path / 'home'
  home.mkdir()
  env = dict(os.environ, HOME=str(home), PYTHONPATH=REPO)

  def last_line(module, *args):
    result = subprocess.run([sys.executable, '-m', module, *args], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=120)
    assert 'Traceback' not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]

  main = ('resnet_jax.main', '--config', 'configs/cifar.py')
  assert last_line(*main, '--workdir=~/w', '--config.data_dir=~/data',
                   '--config.dataset=nothere').startswith(
      f"error: unknown dataset 'nothere': not cifar10 or cifar100, and {home}/data/"
      'nothere has no train/ folder')
  assert last_line(*main, '--workdir=~/w', '--config.init_from=~/runs/a').startswith(
      f'error: init_from {home}/runs/a does not exist')
  assert last_line(*main, '--workdir=~/w', '--mode=eval').startswith(
      f'error: workdir {home}/w does not exist')
  assert last_line('resnet_jax.benchmark', '--config', 'configs/cifar.py',
                   '--config.data_dir=~/data', '--config.dataset=nothere').startswith(
      f"error: unknown dataset 'nothere': not cifar10 or cifar100, and {home}/data/")
  assert last_line('resnet_jax.predict', '--workdir=~/w', 'a.png') == (
      f'error: no checkpoint in {home}/w/checkpoints; pass the --workdir of a trained run')
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.experiment', '--config', 'configs/cifar.py',
       '--workdir=~/exp', '--config.data_dir=~/data', '--config.model=resnet8',
       '--dry_run'], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  assert (f'Experiment {home}/exp: 1 run(s)' in result.stdout
          and f'--config.data_dir={home}/data' in result.stdout), result.stdout
  assert os.listdir(tmp_path) == ['home']  # Nothing written: all were refusals.
  assert not {'w', 'exp', 'runs', 'data'} & set(os.listdir(home))


@pytest.mark.slow
def test_the_readme_config_path_works_from_any_folder(tmp_path):
  # Outside the checkout, configs/cifar.py means the copy shipped with the
  # package; a bad batch size then shows the preset was loaded and checked.
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py:resnet56',
       '--workdir', 'w', '--config.batch_size=-1'],
      capture_output=True, text=True, cwd=tmp_path, timeout=120,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2, result.stderr
  shipped = os.path.join(REPO, 'configs', 'cifar.py')
  assert f'Config: {shipped}:resnet56, with --config.batch_size=-1' in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: batch_size must be a positive integer')
  assert not (tmp_path / 'w').exists()


def test_curves_draw_a_lone_first_point_as_a_marker(tmp_path, monkeypatch):
  from resnet_jax.reporting import plots
  (tmp_path / 'metrics.jsonl').write_text(json.dumps(
      {'step': 100, 'epoch': 0.256, 'train_loss': 2.0, 'train_accuracy': 0.27}) + '\n')
  drawn = []
  monkeypatch.setattr(plots, '_save', lambda fig, path: drawn.append(fig))
  plots.draw_curves(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'curves.png'))
  (fig,) = drawn
  for ax in fig.axes:
    (train,) = ax.get_lines()
    assert train.get_marker() == 'o' and len(train.get_xdata()) == 1


def test_curves_are_redrawn_at_most_every_interval_and_once_more_at_the_end(
    tmp_path, monkeypatch):
  # A redraw holds the GIL the training loop needs: at most one per
  # REDRAW_SECONDS (30) since the last one started, on any record once an
  # evaluation is waiting; then one more at the end if an evaluation came
  # after the last drawing. A run shorter than the interval draws once.
  import types
  from resnet_jax.reporting import metrics_io, plots
  clock, drawn = [0.0], []
  monkeypatch.setattr(metrics_io, 'time', types.SimpleNamespace(
      monotonic=lambda: clock[0], time=time.time))
  monkeypatch.setattr(plots, 'draw_curves', lambda metrics, out: drawn.append(clock[0]))
  train, evaluation = {'train_loss': 1.0, 'epoch': 1}, {'eval_accuracy': 0.5, 'epoch': 1}

  def session(records):
    drawn.clear()
    clock[0] = 0.0
    writer = metrics_io.MetricsWriter(str(tmp_path))
    for step, (t, metrics) in enumerate(records):
      clock[0] = t
      writer.write(step, metrics)
      if writer._drawing is not None:  # pylint: disable=protected-access
        writer._drawing.result()  # pylint: disable=protected-access
    clock[0] += 1
    writer.close()
    return list(drawn)

  assert session([(10, evaluation), (20, train), (31, evaluation), (40, evaluation),
                  (62, train), (70, train), (80, evaluation)]) == [31, 62, 81]
  assert session([(31, evaluation), (50, train)]) == [31]  # Nothing new to draw.
  assert session([(5, train), (10, evaluation), (20, evaluation)]) == [21]
  assert session([(40, train)]) == []  # No evaluation, no curves.


def test_misleading_library_warnings_are_dropped():
  import logging
  from absl import logging as absl_logging
  from resnet_jax import logs
  logs.setup()
  handler = absl_logging.get_absl_handler()
  record = lambda msg, *args: logging.LogRecord('absl', logging.WARNING, 'file_utils.py',
                                                1, msg, args, None)
  passes = lambda r: all(f.filter(r) for f in handler.filters)
  assert not passes(record('Variant folder %s has no %s', '/x/cifar10/3.0.2',
                           'dataset_info.json'))
  assert passes(record('Some other warning %s', 'kept'))


@pytest.mark.slow
@pytest.mark.parametrize('module', ['resnet_jax.main', 'resnet_jax.experiment',
                                    'resnet_jax.benchmark'])
def test_a_mistyped_field_without_config_is_one_line(module, tmp_path):
  # ml_collections applies --config.FIELD to the default file while the flag
  # is defined: before, a 52-line traceback (exit 1).
  workdir = [] if module == 'resnet_jax.benchmark' else ['--workdir', str(tmp_path / 'w')]
  result = subprocess.run([sys.executable, '-m', module, *workdir,
                           '--config.num_train_step=50'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2 and result.stdout == ''
  if module == 'resnet_jax.benchmark':  # No default config: no such flag at all.
    assert result.stderr.strip() == ("error: Unknown command line flag "
                                     "'config.num_train_step'; --helpfull lists the flags")
  else:
    assert result.stderr.strip() == (
        "error: the config has no field 'num_train_step'; did you mean "
        '--config.num_train_steps? python -m resnet_jax.main --help lists the fields')
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_the_start_up_log_names_the_preset_and_its_fields(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', '--config',
                           'configs/cifar.py:wrn28_10', '--workdir', str(tmp_path / 'w'),
                           '--config.learning_rate=-1'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-2].split(' ', 1)[1] == (
      "Preset wrn28_10 (Zagoruyko & Komodakis 2016): model='wrn28_10', num_epochs=200.0, "
      "weight_decay=0.0005, nesterov=True, lr_boundaries=(0.3, 0.6, 0.8), "
      'lr_decay_factor=0.2')
  assert lines[-1] == 'error: learning_rate must be positive, got -1.0; set --config.learning_rate'


@pytest.mark.slow
def test_a_session_starts_when_its_process_did(tmp_path):
  # Wall time includes start-up (imports, reading data, compilation).
  code = ('import time; time.sleep(2.5); from resnet_jax.workdir import run_record; '
          'print(run_record.process_started()); print(run_record.now())')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
  import datetime
  started, now = (datetime.datetime.fromisoformat(l) for l in result.stdout.split())
  assert (now - started).total_seconds() >= 2



def test_ctrl_c_in_a_command_is_one_line_and_exit_130():
  # Where no handler of the command's own is installed (prepare_data's
  # listing, a devkit read): no KeyboardInterrupt traceback.
  script = ('from resnet_jax import errors\n'
            'def main(argv):\n'
            '  raise KeyboardInterrupt\n'
            'errors.run_cli(main)\n')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
  assert (result.returncode, result.stderr) == (130, 'stopped: interrupted (SIGINT)\n')
