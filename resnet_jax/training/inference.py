"""Loading a run's checkpoint for inference, with no config given."""

import json
import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections

from resnet_jax import errors
from resnet_jax import paths
from resnet_jax.data import image_folder
from resnet_jax.data import imagenet_classes
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import run_setup
from resnet_jax.training import train_state
from resnet_jax.workdir import checkpointing
from resnet_jax.workdir import run_record


class Loaded(NamedTuple):
  """A run's checkpoint, ready to predict with."""
  config: ml_collections.ConfigDict  # The run's own.
  model: Any
  variables: dict     # {'params', 'batch_stats'}
  # Readable and unique: today's (`current_names`) where they can be found,
  # else the checkpoint's.
  names: tuple
  step: int
  mean_std: tuple     # The normalisation the run trained with.
  weights: str        # 'ema' or 'raw'.
  # What results are keyed by (a checkpoint written before ids were kept: the names).
  ids: tuple


def load_for_inference(workdir: str, step: Optional[int] = None,
                       prefer_ema: bool = False) -> Loaded:
  """The model, variables and class names of a workdir's checkpoint.

  Reads the run's own config from the checkpoint, so no config is needed.

  Args:
    workdir: a run's workdir.
    step: the checkpoint; None = the latest.
    prefer_ema: return the moving-average weights when the run kept them.
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
  ids = meta.get('class_ids') or names
  if meta.get('class_ids'):
    names = current_names(workdir, config, ids, names)
  return Loaded(config, model, variables, image_folder.unique_names(names, ids),
                ckpt.restored_step, run_setup.stored_mean_std(meta, config.dataset), weights,
                tuple(ids))


def current_names(workdir: str, config: ml_collections.ConfigDict, ids,
                  saved) -> tuple:
  """Today's readable names of the classes `ids`, as evaluation would show
  them; the checkpoint's (`saved`) where nothing tells them.

  A checkpoint keeps the names its run saw; a `classes.txt` added since (or
  ImageNet's own names, for folders named by wnids) reaches evaluation, which
  reads the folder, and must reach predict too. The folder is the run's
  latest `data_dir` and `dataset` (run.json, which a resume with another
  data_dir updates; else the checkpoint's config). Without it, ids that are
  all ImageNet wnids get ImageNet's names if the checkpoint knew none (a run
  from before they shipped); names the user gave stay.
  """
  try:
    recorded = (run_record.read(workdir) or {}).get('config') or {}
  except (OSError, ValueError):  # Unreadable: the checkpoint's config tells.
    recorded = {}
  data_dir = paths.expand(recorded.get('data_dir', config.get('data_dir')))
  root = image_folder.find(data_dir, recorded.get('dataset', config.get('dataset')))
  if root:
    return image_folder.names_for(ids, image_folder.readable_names(root))
  if list(saved) == list(ids) and imagenet_classes.names_of(ids):
    return image_folder.names_for(ids, {})
  return tuple(saved)
