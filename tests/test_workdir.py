"""One workdir, one run: the run record, resume checks, a finished run started
again, device changes on resume, and starting from a run (`init_from`)."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

from configs import cifar
from resnet_jax.workdir import config_fields
from resnet_jax.workdir import config_validation
from resnet_jax import errors
from resnet_jax.data import cifar_official
from resnet_jax.data import datasets
from resnet_jax.workdir import run_record
from resnet_jax.training import inference
from resnet_jax.training import init_from
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from tests import cifar_archives
from tests.conftest import tiny_config
from tests.test_fault_tolerance import _listing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def finished(tiny_data, tmp_path_factory):
  """A complete 8-step run (checkpoints at 4 and 8)."""
  workdir = str(tmp_path_factory.mktemp('fin') / 'w')
  config = tiny_config(tiny_data['data_dir'])
  loop.train_and_evaluate(config, workdir)
  return config, workdir


def _train_cli(tiny_data, workdir, *extra):
  """The command line of the `finished` fixture's run, plus `extra` flags."""
  return subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/cifar.py',
       '--workdir', str(workdir), f'--config.data_dir={tiny_data["data_dir"]}',
       '--config.model=resnet8', '--config.batch_size=16', '--config.eval_batch_size=16',
       '--config.num_train_steps=8', '--config.log_every_steps=2',
       '--config.checkpoint_every_steps=4', *extra],
      capture_output=True, text=True, cwd=REPO, timeout=300)


def _final(config, workdir):
  run = run_setup.Run(config, workdir, need_train=False)
  state = jax.device_get(run.restore())
  run.release()
  return state


def test_every_config_field_is_sorted_into_recipe_or_runtime():
  recipe, runtime = set(config_fields.RECIPE_FIELDS), set(config_fields.RUNTIME_FIELDS)
  assert not recipe & runtime
  assert recipe | runtime == set(cifar.get_config().keys()) == set(config_fields.FIELDS)


def test_fields_added_later_count_as_their_default_for_older_runs():
  default = cifar.get_config()
  for field, value in config_fields.ADDED_LATER.items():
    assert default[field] == config_fields.CHANGED_DEFAULTS.get(field, value), field
  older = {k: v for k, v in json.loads(default.to_json()).items()
           if k not in config_fields.ADDED_LATER}
  # A changed default is a new recipe for an older run (refused, with its
  # flag), or a runtime change (allowed).
  changed = {f: (config_fields.ADDED_LATER[f], v)
             for f, v in config_fields.CHANGED_DEFAULTS.items()}
  assert config_validation.config_changes(older, default) == (
      {f: c for f, c in changed.items() if f in config_fields.RECIPE_FIELDS},
      {f: c for f, c in changed.items() if f in config_fields.RUNTIME_FIELDS})
  for field, value in config_fields.CHANGED_DEFAULTS.items():
    default[field] = config_fields.ADDED_LATER[field]
  assert config_validation.config_changes(older, default) == ({}, {})
  with_ema = default.copy_and_resolve_references()
  with_ema.ema_decay = 0.9  # Would change the checkpoint layout: refused.
  assert config_validation.config_changes(older, with_ema)[0] == {'ema_decay': (0.0, 0.9)}


@pytest.mark.slow
def test_run_record_says_what_produced_the_workdir(finished):
  config, workdir = finished
  record = run_record.read(workdir)
  assert record['config'] == json.loads(config.to_json())
  assert record['framework'] == f'jax {jax.__version__}'
  (session,) = record['sessions']
  assert set(session['versions']) == {'python', 'jax', 'jaxlib', 'flax', 'optax',
                                      'orbax-checkpoint'}
  assert session['versions']['jax'] == jax.__version__
  assert set(session['git']) == {'commit', 'dirty'}
  assert session['git']['commit'] == 'unknown' or len(session['git']['commit']) == 40
  assert (session['device_count'], session['process_count']) == (8, 1)
  assert session['device_kind'] == jax.devices()[0].device_kind
  assert session['host'] and session['command'] and session['start_step'] == 0
  assert session['final_step'] == 8 and 0 <= session['eval_accuracy'] <= 1
  assert session['wall_seconds'] > 0 and session['ended'] >= session['started']
  # What decides the bits besides the config (docs/runs.md): the XLA flags
  # (here conftest's 8 devices), the CPU, the numeric libraries, the devices.
  numerics = session['numerics']
  assert numerics['env_XLA_FLAGS'] == os.environ['XLA_FLAGS']
  assert '--xla_force_host_platform_device_count=8' in numerics['env_XLA_FLAGS']
  assert numerics['numpy'] == np.__version__ and numerics['jax'] == jax.__version__
  assert numerics['jaxlib'] == jaxlib.__version__
  assert (numerics['device_count'], numerics['device_kind']) == (8, session['device_kind'])
  assert numerics['threads'] == session['cpu_cores'] >= 1
  assert numerics['cpu_model_name'] == session['host_cpu']
  if os.path.exists('/proc/cpuinfo') and numerics['machine'] == 'x86_64':
    assert numerics['cpu_family'] and numerics['cpu_model'].isdigit()
    assert 'sse2' in numerics['cpu_flags'].split()


def test_a_run_recorded_before_a_changed_default_resumes_with_its_own_value(tmp_path):
  # file_order's default changed (index_shuffle); a run recorded before the
  # field existed was ordered by numpy's permutation and must stay so.
  from resnet_jax.workdir import run_config
  defaults = cifar.get_config()
  older = {k: v for k, v in json.loads(defaults.to_json()).items() if k != 'file_order'}
  (tmp_path / run_record.FILE).write_text(json.dumps({'config': older}))
  remembered = run_config.remembered(str(tmp_path), defaults, {})
  assert remembered.file_order == 'permutation'
  # cpu_conv (a runtime field) too: the program the run had, unless asked.
  older.pop('cpu_conv')
  (tmp_path / run_record.FILE).write_text(json.dumps({'config': older}))
  assert run_config.remembered(str(tmp_path), defaults, {}).cpu_conv == 'off'
  assert run_config.remembered(str(tmp_path), defaults, {'cpu_conv': 'auto'}).cpu_conv == 'auto'
  with pytest.raises(errors.UserError, match="file_order 'permutation' -> 'index_shuffle'"):
    run_config.remembered(str(tmp_path), defaults, {'file_order': 'index_shuffle'})

def test_a_path_with_tilde_is_the_same_run_as_its_expansion(tmp_path, monkeypatch):
  # `~/data` and HOME/data are one run, whichever a run recorded (one started
  # before `~` was expanded recorded it as typed) and whichever a resume gives.
  from resnet_jax.workdir import run_config
  home = tmp_path / 'home'
  monkeypatch.setenv('HOME', str(home))
  defaults = cifar.get_config()
  typed = {**json.loads(defaults.to_json()), 'data_dir': '~/data', 'init_from': '~/runs/a'}
  expanded = {**typed, 'data_dir': f'{home}/data', 'init_from': f'{home}/runs/a'}
  for stored, given in ((typed, expanded), (expanded, typed)):
    config = cifar.get_config()
    config.update(given)
    assert config_validation.check_resume(stored, config, 'w') == {}
    workdir = tmp_path / 'w'
    workdir.mkdir(exist_ok=True)
    (workdir / run_record.FILE).write_text(json.dumps({'config': stored}))
    remembered = run_config.remembered(
        str(workdir), defaults, {'init_from': given['init_from'], 'data_dir': '~/data'})
    assert (remembered.data_dir, remembered.init_from) == (f'{home}/data',
                                                           f'{home}/runs/a')
  # Another path is still another recipe.
  config.init_from = '~/runs/b'
  with pytest.raises(errors.UserError, match=f"init_from '{home}/runs/a' -> "
                                             f"'{home}/runs/b'"):
    config_validation.check_resume(expanded, config, 'w')
  with pytest.raises(errors.UserError, match='different recipe'):
    run_config.remembered(str(workdir), defaults, {'init_from': '~/runs/b'})


@pytest.mark.slow
def test_a_changed_recipe_is_refused_leaving_the_workdir_as_it_was(tiny_data, finished,
                                                                   tmp_path):
  _, source = finished
  workdir = tmp_path / 'w'
  shutil.copytree(source, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '8')  # Unfinished: a resume would train.
  before = _listing(tmp_path)
  result = _train_cli(tiny_data, workdir, '--config.batch_size=32',
                      '--config.learning_rate=0.05')
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'Traceback' not in result.stderr
  assert 'batch_size 16 -> 32' in last and 'learning_rate 0.1 -> 0.05' in last
  # Both differences at once, and the two ways to resume.
  assert (f'to resume it, drop --config (python -m resnet_jax.main --workdir {workdir} '
          "takes the run's own recipe) or add --config.batch_size=16 "
          '--config.learning_rate=0.1; for the new recipe pass a new --workdir.') in last
  assert _listing(tmp_path) == before


def _main(*args):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.main', *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_the_workdir_alone_resumes_and_evaluates_its_own_run(finished, tmp_path):
  _, source = finished
  workdir = tmp_path / 'w'
  shutil.copytree(source, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '8')  # As if killed after step 4.
  # No --config, no dataset or data_dir: run.json has them. A runtime field
  # may still change.
  result = _main('--workdir', workdir, '--config.log_every_steps=1')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f'Config: the run in {workdir} (its run.json), with '
          '--config.log_every_steps=1') in result.stderr
  assert 'Resuming with changed settings that leave the numbers alone: '\
         'log_every_steps 2 -> 1' in result.stderr
  record = run_record.read(str(workdir))
  assert record['sessions'][-1]['start_step'] == 4
  assert record['sessions'][-1]['final_step'] == 8
  assert record['config']['model'] == 'resnet8' and record['config']['log_every_steps'] == 1
  result = _main('--workdir', workdir, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Evaluated step 8: test accuracy' in result.stderr
  assert json.load(open(workdir / 'eval.json'))['step'] == 8


@pytest.mark.slow
def test_eval_with_another_model_names_it_and_the_way_back(tiny_data, finished):
  _, workdir = finished
  result = _train_cli(tiny_data, workdir, '--config.model=resnet20', '--mode=eval')
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {workdir}/checkpoints holds a different run (model 'resnet8' -> "
      "'resnet20'); drop --config to use the run's own config, or pass "
      '--config.model=resnet8; a new run needs a new --workdir')


@pytest.mark.slow
def test_a_recipe_flag_on_a_remembered_run_is_refused_with_every_difference(finished,
                                                                            tmp_path):
  _, source = finished
  workdir = tmp_path / 'w'
  shutil.copytree(source, workdir)
  before = _listing(tmp_path)
  result = _main('--workdir', workdir, '--config.learning_rate=0.05',
                 '--config.batch_size=32', '--config.log_every_steps=1')
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {workdir} holds a run with a different recipe (batch_size 16 -> 32; '
      'learning_rate 0.1 -> 0.05); drop --config.batch_size --config.learning_rate '
      'to resume it, or pass a new --workdir for the new recipe '
      f'(--config.init_from={workdir} starts it from these weights)')
  assert _listing(tmp_path) == before


@pytest.mark.slow
def test_a_longer_schedule_is_refused_with_the_way_to_train_longer(tiny_data, finished):
  _, workdir = finished
  with pytest.raises(errors.UserError, match=f'num_train_steps 8 -> 12.*init_from={workdir}'):
    loop.train_and_evaluate(tiny_config(tiny_data['data_dir'], num_train_steps=12),
                             workdir)


@pytest.mark.slow
def test_resume_with_new_cadence_and_fewer_devices_reaches_the_end(tiny_data, finished,
                                                                  tmp_path, caplog):
  config, source = finished
  for change, line in [
      (dict(log_every_steps=1, keep_checkpoints=5, checkpoint_every_steps=2),
       'Resuming with changed settings that leave the numbers alone: '
       'checkpoint_every_steps 4 -> 2, keep_checkpoints 3 -> 5, log_every_steps 2 -> 1'),
      (dict(num_devices=4, parallelism='pmap'),
       'Resuming on 4 device(s) with pmap; the checkpoint was written on 8 with jit')]:
    workdir = tmp_path / str(len(change))
    shutil.copytree(source, workdir)
    shutil.rmtree(workdir / 'checkpoints' / '8')  # As if killed after step 4.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='resnet_jax'):
      loop.train_and_evaluate(tiny_config(tiny_data['data_dir'], **change), str(workdir))
    assert line in caplog.text
    record = run_record.read(str(workdir))
    first, resumed = record['sessions']
    assert resumed['start_step'] == 4 and resumed['final_step'] == 8
    assert set(resumed.get('changed', {})) == set(change) - {'parallelism', 'num_devices'} \
        | ({'parallelism', 'num_devices'} & set(change))
    if 'num_devices' in change:
      assert (first['device_count'], resumed['device_count']) == (8, 4)
    else:  # Same program: bitwise the uninterrupted run.
      a, b = _final(config, source), _final(config, str(workdir))
      jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


@pytest.mark.slow
def test_a_finished_run_started_again_says_so_and_writes_nothing(tiny_data, finished,
                                                                tmp_path):
  _, source = finished
  workdir = tmp_path / 'w'
  shutil.copytree(source, workdir)
  before = _listing(tmp_path)
  result = _train_cli(tiny_data, workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert 'holds a complete run (step 8 of 8, test accuracy' in last
  assert '--mode=eval evaluates it' in last and 'new --workdir' in last
  assert _listing(tmp_path) == before


@pytest.mark.slow
def test_a_finished_run_is_known_before_any_image_is_read(tiny_data, finished, tmp_path,
                                                          monkeypatch, caplog):
  import logging
  from resnet_jax.data import datasets
  config, source = finished
  workdir = tmp_path / 'w'
  shutil.copytree(source, workdir)
  def no_reading(*args, **kwargs):
    raise AssertionError('the data was read')
  monkeypatch.setattr(datasets, 'load_split', no_reading)
  with caplog.at_level(logging.INFO, logger='resnet_jax'):
    result = loop.train_and_evaluate(config, str(workdir))
  assert 'holds a complete run (step 8 of 8' in caplog.text
  assert 0 <= result['eval_accuracy'] <= 1
  # A longer schedule is not "finished": the full checks run (and read).
  longer = tiny_config(tiny_data['data_dir'], num_train_steps=9)
  assert loop.finished_step(longer, str(workdir)) is None
  assert loop.finished_step(config, str(workdir)) == 8


@pytest.mark.parametrize('kind', ['image_folder', 'tfds'])
@pytest.mark.parametrize('fields,error', [
    (dict(num_train_steps=-1, num_epochs=2.0, warmup_steps=8, lr_schedule='cosine'),
     r'warmup_steps 8 is not shorter than the run \(8 steps\)'),
    (dict(validation_size=64), r'validation_size 64 leaves no training images \(the '
                               r'training split has 64\)')])
def test_a_config_too_big_for_the_split_is_refused_before_reading(
    tiny_folder, tiny_data, tmp_path, monkeypatch, kind, fields, error):
  # The split's size is known without decoding: an image folder's file
  # names, a prepared tfds dataset's metadata. 64 images at batch 16 for 2
  # epochs is 8 steps.
  from resnet_jax.data import image_folder
  monkeypatch.setattr(image_folder, 'decode', lambda path: pytest.fail('decoded'))
  monkeypatch.setattr(datasets, '_load_tfds', lambda *a: pytest.fail('read'))
  where = (dict(data_dir=tiny_folder['data_dir'], dataset='tinyfolder')
           if kind == 'image_folder' else dict(data_dir=tiny_data['data_dir']))
  config = tiny_config(**fields, **where)
  with pytest.raises(errors.UserError, match=error):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def _logits(model, variables, images):
  return np.asarray(model.apply(variables, jnp.asarray(images, jnp.float32),
                                train=False))


@pytest.mark.slow
def test_init_from_a_run_gives_its_logits_and_a_new_head_for_new_classes(
    tiny_data, finished, tmp_path):
  config, source = finished
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3))
  loaded = inference.load_for_inference(source)
  variables = loaded.variables
  want = _logits(loaded.model, variables, images)
  for path in (source, os.path.join(source, 'checkpoints', '8')):
    new = tiny_config(tiny_data['data_dir'], init_from=path)
    run = run_setup.Run(new, str(tmp_path / 'new'), need_train=True)
    state = init_from.init_from_run(run.init_state(), new, run.num_classes)
    got = _logits(run.model, {'params': state.params, 'batch_stats': state.batch_stats},
                  images)
    np.testing.assert_array_equal(got, want)
    assert int(state.step) == 0  # Weights only: a fresh optimizer and schedule.
    assert all(np.all(np.asarray(m) == 0) for m in jax.tree.leaves(state.opt_state))
  # CIFAR-100 (its official python layout, through prepare_data and tfds):
  # everything but the classifier carries over.
  archive = cifar_archives.write_python100(tmp_path / 'cifar-100-python.tar.gz',
                                           cifar_archives.random_cifar100(100, 100, seed=3))
  cifar_official.prepare(str(archive), str(tmp_path / 'data'))
  new = tiny_config(str(tmp_path / 'data'), dataset='cifar100', init_from=source)
  run = run_setup.Run(new, str(tmp_path / 'c100'), need_train=True)
  state = init_from.init_from_run(run.init_state(), new, run.num_classes)
  assert state.params['fc']['kernel'].shape == (64, 100)
  for name in variables['params']:
    if name != 'fc':
      jax.tree.map(np.testing.assert_array_equal, state.params[name],
                   variables['params'][name])
  # And the whole 100-class run trains from it through the command line's
  # path: with a learning rate of ~0 its 2 steps leave the carried weights
  # where they were (a loop that ignored them would hold a fresh
  # initialisation), and it evaluates over the 100 fine classes.
  trained = tiny_config(str(tmp_path / 'data'), dataset='cifar100', init_from=source,
                        num_train_steps=2, learning_rate=1e-12, weight_decay=0.0)
  result = loop.train_and_evaluate(trained, str(tmp_path / 'c100'))
  assert result['eval_examples'] == 100 and result['confusion'].shape == (100, 100)
  np.testing.assert_array_equal(result['confusion'].sum(1), np.ones(100))  # One each.
  after = _final(trained, str(tmp_path / 'c100'))
  fresh = run.init_state()
  for name in variables['params']:
    if name != 'fc':
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                   after.params[name], variables['params'][name])
  assert not np.allclose(fresh.params['conv1']['kernel'], after.params['conv1']['kernel'])
  c100 = inference.load_for_inference(str(tmp_path / 'c100'))
  assert list(c100.names) == cifar_archives.FINE100
  assert c100.mean_std == datasets.MEAN_STD['cifar100']
  with pytest.raises(errors.UserError, match='is a resnet8 run but the config asks for '
                                             'resnet20'):
    bad = tiny_config(tiny_data['data_dir'], init_from=source, model='resnet20')
    run = run_setup.Run(bad, str(tmp_path / 'bad'), need_train=True)
    init_from.init_from_run(run.init_state(), bad, run.num_classes)


@pytest.mark.slow
def test_results_rows_come_from_the_workdir(finished):
  from resnet_jax import results
  _, workdir = finished
  row = results.summarize(workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [json.loads(l)['eval_accuracy'] for l in f if 'eval_accuracy' in l]
  assert row['steps'] == 8 and row['complete']
  assert (row['final_accuracy'], row['best_accuracy']) == (evals[-1], max(evals))
  assert row['model'] == 'resnet8' and row['dataset'] == 'cifar10'
  assert row['device'].startswith('CPU ') and row['wall_seconds'] > 0
  assert row['recipe'] == ('8 steps, batch 16, SGD lr 0.1, x0.1 at 50%/75%, wd 0.0001, '
                           'crop+flip, seed 0')
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.results', workdir],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr
  header, rule, line = result.stdout.strip().splitlines()
  assert header.startswith('| model | framework |') and line == results.markdown_row(row)
  assert row['train_images'] == 64 and '| cifar10, 64 train images |' in line
  # A folder of runs is scanned; a folder without any is an error.
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.results',
                           os.path.dirname(workdir)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 0 and result.stdout.strip().splitlines()[2] == line
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.results', REPO],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2 and 'has no run.json' in result.stderr
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.results',
                           '--metric=flip_eval_accuracy', workdir],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2 and result.stderr.strip() == (
      f'error: {workdir} records no flip_eval_accuracy; its evaluations have '
      'eval_accuracy, eval_top5_accuracy: pass one as --metric')
