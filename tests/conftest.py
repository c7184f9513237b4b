"""Shared fixtures: 8 fake CPU devices and tiny CIFAR data written by the tests."""

import collections
import os
import shutil
import tempfile

# Before JAX initialises; subprocesses inherit all of it through os.environ.
# Multi-device code runs on 8 fake CPU devices.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
# LLVM at -O1, not XLA's -O2, unless the caller chose a level: the suite's
# programs are compiled far more often than they run long, and -O1 cut the
# suite's CPU time by a tenth (test_models.py by a third) with no test slower;
# -O0 (JAX_DISABLE_MOST_OPTIMIZATIONS) ran the many-step tests up to 6x slower
# (docs/testing.md, "Seventh pass"). XLA's own passes are the same: 8 steps
# of ResNet-8 and PreAct ResNet-18 logged the same losses, bit for bit.
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The suite is for the CPU, also where a CUDA or TPU jaxlib is installed.
os.environ['JAX_PLATFORMS'] = 'cpu'
# Compile once: the tiny programs (train chunk, evaluation, pipeline) are the
# same in dozens of tests and CLI runs. JAX's persistent cache, in a folder of
# this session's own (never a stale one); the key covers the program, its
# shapes, XLA_FLAGS and the jaxlib, so a cached program is the same program.
# pytest-xdist's workers inherit the folder the controller made: one cache.
_WORKER = 'PYTEST_XDIST_WORKER' in os.environ
if not (_WORKER and os.environ.get('JAX_COMPILATION_CACHE_DIR')):
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='resnet_jax_tests_xla_')
CACHE_DIR = os.environ['JAX_COMPILATION_CACHE_DIR']
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import cifar_archives  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Files with the most slow tests first. The two workers take whole files
  in this order (--dist loadfile --no-loadscope-reorder, pyproject.toml);
  slow tests stand in for a file's time, so the long files start early and
  the short ones even out the end. xdist's own order, by test count, left
  one worker idle for the last 26 s (docs/testing.md, "Seventh pass"). Each
  file's tests keep their order. This runs before `-m` deselects, so every
  tier gets the same file order."""
  del config
  slow = collections.Counter(item.path for item in items if item.get_closest_marker('slow'))
  items.sort(key=lambda item: -slow[item.path])


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if not _WORKER:  # The controller, once every worker has finished.
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  """A tfds data_dir with a tiny cifar10 (64 train, 20 test), and its arrays."""
  root = tmp_path_factory.mktemp('tiny')
  arrays = cifar_archives.random_cifar10(num_train=64, num_test=20, seed=0)
  archive = cifar_archives.write_binary(root / 'cifar-10-binary.tar.gz', arrays)
  from resnet_jax.data import cifar_official
  cifar_official.prepare(str(archive), str(root / 'tfds'))
  return {'data_dir': str(root / 'tfds'), 'arrays': arrays, 'archive': archive}


@pytest.fixture(scope='session')
def tiny_folder(tmp_path_factory):
  """An image-folder dataset (PNG): data_dir, name, and its arrays."""
  root = tmp_path_factory.mktemp('folder')
  arrays = cifar_archives.random_cifar10(num_train=64, num_test=20, seed=2,
                                         balanced=True)
  cifar_archives.write_image_folder(root, arrays, 'tinyfolder')
  return {'data_dir': str(root), 'name': 'tinyfolder', 'arrays': arrays}


def tiny_config(data_dir, **overrides):
  """The default config shrunk to seconds: resnet8, batch 16, a few steps."""
  from configs import cifar
  config = cifar.get_config()
  config.update(dict(model='resnet8', data_dir=data_dir, batch_size=16,
                     eval_batch_size=16, num_train_steps=8, log_every_steps=2,
                     checkpoint_every_steps=4, eval_every_epochs=1))
  config.update(overrides)
  return config


# One step from the same state, any layout vs jit on 8 devices: the largest
# |difference| of a leaf relative to that leaf's largest |value|. Measured on
# AMD EPYC, JAX 0.10, with AVX-512 and with --xla_cpu_max_isa=AVX2 (identical):
# at most 1.8e-6 (the gradients, jit on 1 device: float32 sums reduced in
# another order), 1.2e-6 for two processes. A real fault is five orders larger:
# pmap with per-device BatchNorm statistics differs by 0.24 (statistics), 0.65
# (parameters) and 0.91 (gradients) in these units.
STEP_RTOL = 5e-5


def relative_differences(a, b) -> dict:
  """Per tree, the largest |a - b| of a leaf over that leaf's largest |a|."""
  out = {}
  for tree in ('params', 'batch_stats', 'opt_state'):
    leaves = zip(jax.tree.leaves(getattr(a, tree)), jax.tree.leaves(getattr(b, tree)))
    out[tree] = max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30))
                    for x, y in leaves if np.size(x) > 1)
  return out
