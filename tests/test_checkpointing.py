"""Checkpoint retention and damaged checkpoints, on small states (no training)."""

import os

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.workdir import checkpointing
from tests.test_fault_tolerance import _damage_truncate


def _state(step):
  return {'w': np.full((3,), float(step), np.float32)}


def _saved(directory, accuracies, keep):
  """Saves steps 1..n, step i ranked by accuracies[i - 1] (None: no eval)."""
  ckpt = checkpointing.Checkpoints(directory, keep=keep)
  ckpt.open_for_writing()
  for step, accuracy in enumerate(accuracies, 1):
    ckpt.save(step, _state(step), {'step': step}, eval_accuracy=accuracy)
  ckpt.close()
  return checkpointing.Checkpoints(directory, keep=keep)


def test_the_newest_and_the_best_survive(tmp_path):
  # keep 2: steps 5 and 6 (newest) and step 2 (best accuracy); step 3 was
  # evaluated lower than 2, steps 1 and 4 are neither.
  ckpt = _saved(str(tmp_path / 'c'), [0.1, 0.5, 0.2, None, 0.3, None], keep=2)
  assert ckpt.all_steps() == [2, 5, 6]
  assert sorted(n for n in os.listdir(tmp_path / 'c') if n.isdigit()) == ['2', '5', '6']
  restored = ckpt.restore({'w': np.zeros((3,), np.float32)}, step=2)
  np.testing.assert_array_equal(restored['w'], _state(2)['w'])
  ckpt.close()


def test_a_later_best_replaces_the_earlier_one(tmp_path):
  ckpt = _saved(str(tmp_path / 'c'), [0.5, 0.1, 0.9, 0.2, 0.3], keep=1)
  assert ckpt.all_steps() == [3, 5]
  ckpt.close()


def test_all_checkpoints_damaged_is_one_error(tmp_path):
  directory = str(tmp_path / 'c')
  _saved(directory, [None, None], keep=3).close()
  for step in ('1', '2'):
    _damage_truncate(os.path.join(directory, step))
  ckpt = checkpointing.Checkpoints(directory)
  with pytest.raises(errors.UserError, match='no checkpoint in .* could be restored '
                                             r'\(the last: '):
    ckpt.restore({'w': np.zeros((3,), np.float32)})
  # Read-only: nothing moved.
  assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ['1', '2']
  ckpt.close()


def test_restoring_a_named_damaged_step_says_so(tmp_path):
  directory = str(tmp_path / 'c')
  _saved(directory, [None, None], keep=3).close()
  _damage_truncate(os.path.join(directory, '2'))
  ckpt = checkpointing.Checkpoints(directory)
  with pytest.raises(errors.UserError, match=f'checkpoint 2 in {directory} is damaged'):
    ckpt.restore({'w': np.zeros((3,), np.float32)}, step=2)
  np.testing.assert_array_equal(
      ckpt.restore({'w': np.zeros((3,), np.float32)}, step=1)['w'], _state(1)['w'])
  ckpt.close()
