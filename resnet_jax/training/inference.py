"""Loading a run's checkpoint for inference, with no config given."""

import json
import os
from typing import Optional

import jax
import ml_collections

from resnet_jax import errors
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import run_setup
from resnet_jax.training import train_state
from resnet_jax.workdir import checkpointing


def load_for_inference(workdir: str, step: Optional[int] = None,
                       prefer_ema: bool = False):
  """The model, variables and class names of a workdir's checkpoint.

  Reads the run's own config from the checkpoint, so no config is needed.

  Args:
    workdir: a run's workdir.
    step: the checkpoint; None = the latest.
    prefer_ema: return the moving-average weights when the run kept them.

  Returns:
    (config, model, {'params', 'batch_stats'}, class_names, step, (mean, std),
    weights: 'ema' or 'raw')
  """
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  meta = ckpt.read_meta(step)
  if meta is None:
    raise errors.UserError(f'no checkpoint in {workdir}/checkpoints; pass the '
                           '--workdir of a trained run')
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  dp = data_parallel.DataParallel('jit', 1)
  model = train_state.create_model(config, meta['num_classes'])
  tx = train_state.create_optimizer(config, train_state.create_learning_rate_fn(config, 1))
  has_ema = config.get('ema_decay', 0.0) > 0
  state = ckpt.restore(train_state.abstract_state(
      lambda: train_state.create_train_state(jax.random.key(0), model, tx, ema=has_ema), dp), step)
  ckpt.close()
  weights = 'ema' if has_ema and prefer_ema else 'raw'
  if weights == 'ema':
    state = train_state.ema_variables(state)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  names = meta.get('class_names') or [str(i) for i in range(meta['num_classes'])]
  return (config, model, variables, names, ckpt.restored_step,
          run_setup.stored_mean_std(meta, config.dataset), weights)
