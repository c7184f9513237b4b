"""Shared fixtures: 8 fake CPU devices and tiny CIFAR data written by the tests."""

import os

# Before JAX initialises: multi-device code runs on 8 fake CPU devices.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from tests import cifar_archives  # noqa: E402


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  """A tfds data_dir with a tiny cifar10 (64 train, 20 test), and its arrays."""
  root = tmp_path_factory.mktemp('tiny')
  arrays = cifar_archives.random_cifar10(num_train=64, num_test=20, seed=0)
  archive = cifar_archives.write_binary(root / 'cifar-10-binary.tar.gz', arrays)
  from resnet_jax import prepare_data
  prepare_data.prepare(str(archive), str(root / 'tfds'))
  return {'data_dir': str(root / 'tfds'), 'arrays': arrays, 'archive': archive}


def tiny_config(data_dir, **overrides):
  """The default config shrunk to seconds: resnet8, batch 16, a few steps."""
  from configs import cifar
  config = cifar.get_config()
  config.update(dict(model='resnet8', data_dir=data_dir, batch_size=16,
                     eval_batch_size=16, num_train_steps=8, log_every_steps=2,
                     checkpoint_every_steps=4, eval_every_epochs=1))
  config.update(overrides)
  return config
