"""Config refusals the other tests do not reach, and bfloat16 where asked."""

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import errors
from resnet_jax import models
from resnet_jax.data import datasets
from resnet_jax.training import steps
from resnet_jax.training import train_state
from resnet_jax.workdir import config_validation
from tests import jpeg_files
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
    (dict(cpu_conv='on'), "cpu_conv must be auto or off, got 'on'; set --config.cpu_conv"),
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


@pytest.mark.slow
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


def test_each_model_has_the_downsampling_of_its_stem_and_stages():
  assert models.downsampling('resnet18', 'imagenet') == 32  # /4 stem, 3 stride-2 stages.
  assert models.downsampling('resnet50', 'imagenet') == 32
  assert models.downsampling('resnet18', 'cifar') == 8
  assert models.downsampling('resnet20') == models.downsampling('wrn28_10') == 4


@pytest.mark.parametrize('fields,error', [
    (dict(image_size=8), 'image_size 8 is too small for resnet18 with the imagenet stem, '
                         'which downsamples by 32 (its last stage would see maps under '
                         '1 pixel); set --config.image_size to at least 32'),
    (dict(image_size=32, eval_image_size=24), 'eval_image_size 24 is too small'),
    (dict(image_size=32), None),  # 1x1 maps: the smallest it takes.
    (dict(image_size=8, stem='cifar'), None),  # /8: 1x1 maps.
])
def test_images_smaller_than_the_models_downsampling_are_refused(tmp_path, fields, error):
  jpeg_files.write_folder(tmp_path, per_class=(1, 1))
  config = tiny_config(str(tmp_path), dataset='jpegs', model='resnet18',
                       **{'stem': 'imagenet', **fields})
  if error is None:
    config_validation.validate(config)
    return
  with pytest.raises(errors.UserError) as e:
    config_validation.validate(config)
  assert error in str(e.value) and len(str(e.value).splitlines()) == 1
  # The in-memory 32x32 pipelines are large enough for every model.
  config_validation.validate(tiny_config(str(tmp_path), model='resnet50', stem='imagenet'))


@pytest.mark.parametrize('fields,error', [
    (dict(resize_start_epoch=12.0, resize_end_epoch=12.0),
     'resize_start_epoch 12 is not before the end of the run (2 steps, epoch 1.33): the '
     'images would stay 32x32, never growing to final_image_size 96; set '
     '--config.resize_start_epoch lower, or --config.final_image_size=0 for no resizing'),
    (dict(resize_start_epoch=0.0, resize_end_epoch=4.0, num_train_steps=4),
     'resize_end_epoch 4 is past the end of the run (4 steps, epoch 2.67): the images '
     'would reach 64x64, not final_image_size 96; set --config.resize_end_epoch lower'),
])
def test_resizing_the_run_never_reaches_is_refused_before_reading(
    tmp_path, monkeypatch, fields, error):
  # As a warm-up longer than the run is: FFCV's presets grow the images late
  # (epoch 12 of 16), past the end of a short trial run.
  from resnet_jax.training import loop
  jpeg_files.write_folder(tmp_path, per_class=(4, 1))  # 12 images, batch 8.
  monkeypatch.setattr(datasets, 'load_split', lambda *a: pytest.fail('read'))
  config = tiny_config(str(tmp_path), dataset='jpegs', image_size=32, batch_size=8,
                       final_image_size=96, **{'num_train_steps': 2, **fields})
  with pytest.raises(errors.UserError) as e:
    loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert error in str(e.value)
  assert not (tmp_path / 'w').exists()


def test_a_mistyped_dataset_gets_the_nearest_name(tmp_path):
  (tmp_path / 'imagenet2012' / 'train').mkdir(parents=True)
  (tmp_path / 'other').mkdir()  # Not a dataset: no train/.
  for given, meant in (('imagenet2O12', 'imagenet2012'), ('Cifar1O', 'cifar10'),
                       ('cifar-100', 'cifar100')):
    with pytest.raises(errors.UserError) as e:
      datasets.resolve(given, str(tmp_path))
    assert f'did you mean --config.dataset={meant}? Otherwise set' in str(e.value)
  with pytest.raises(errors.UserError) as e:
    datasets.resolve('othr', None)
  assert 'did you mean' not in str(e.value)
