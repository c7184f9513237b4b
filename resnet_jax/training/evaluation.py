"""Evaluation: a split's metrics during training, and a checkpoint's eval.json."""

import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.logs import log
from resnet_jax.parallelism import data_parallel
from resnet_jax.parallelism import process_gather
from resnet_jax.reporting import metrics_io
from resnet_jax.reporting import plots
from resnet_jax.reporting import progress
from resnet_jax.training import chunks
from resnet_jax.training import run_setup
from resnet_jax.training import train_state


def evaluate(dp: data_parallel.DataParallel, p_evaluate: Callable,
             state: train_state.TrainState, split: chunks.EvalSplit,
             split_name: str = 'test') -> dict:
  """Evaluates on every example of `split` exactly once, with the raw weights
  and, when the state has them, the moving-average ones; the sums stay on the
  device until one fetch at the end.

  Returns:
    `{weights}{view}{split}_{metric}`: weights '' (raw) or 'ema_', view ''
    or 'flip_' (flip test-time augmentation), split 'eval' (test) or 'val'
    (validation), metric loss, accuracy, top5_accuracy (fractions); also
    `{split}_examples` and the raw plain confusion matrix (rows: true class,
    columns: predicted). A long evaluation logs its progress
    (`progress.EvalProgress`), naming the split by its `label` (e.g. 'val',
    the folder's name) or `split_name`.
  """
  prefix = SPLIT_PREFIX[split_name]
  variants = {'': state}
  if train_state.ema_of(state) is not None:
    variants['ema_'] = train_state.ema_variables(state)
  sums = {}
  per_call = chunks.eval_batches_per_call(split.group_size)
  calls = len(variants) * split.num_groups * -(-split.group_size // per_call)
  bar = progress.EvalProgress(
      f'Evaluating {split.num_examples:,} {split.label or split_name} images'
      + (' with raw and EMA weights' if len(variants) > 1 else ''),
      split.num_examples * len(variants), calls)
  for weights, s in variants.items():
    for group in split.groups():
      for first in range(0, split.group_size, per_call):
        out = p_evaluate(s, group, first, per_call)
        sums[weights] = out if weights not in sums else jax.tree.map(
            jnp.add, sums[weights], out)
        bar.call_done(lambda: jax.block_until_ready(sums))
  result = {}
  for weights, totals in dp.fetch(sums).items():
    for view, t in totals.items():
      name, n = weights + view + prefix, float(t['count'])
      result.update({f'{name}_loss': float(t['loss']) / n,
                     f'{name}_accuracy': float(t['correct']) / n,
                     f'{name}_top5_accuracy': float(t['top5']) / n})
      if not weights and not view:
        result[f'{prefix}_examples'] = int(round(n))
        result['confusion'] = np.rint(t['confusion']).astype(np.int64)
  return result


# Metric-name prefixes of the evaluated splits.
SPLIT_PREFIX = {'test': 'eval', 'validation': 'val'}


def headline(result: dict) -> Optional[tuple]:
  """(key, value) of the accuracy that ranks checkpoints and ends a run's
  summary: raw weights, plain view, the evaluated split; None if none."""
  for key in ('eval_accuracy', 'val_accuracy'):
    if key in result:
      return key, result[key]
  return None


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: Optional[int] = None) -> dict:
  """Restores a checkpoint of `workdir`, evaluates the test split, writes eval.json."""
  run = run_setup.Run(config, workdir, need_train=False)
  run.hold(write_checkpoints=False)  # eval.json and confusion.png are written.
  try:
    return _evaluate_checkpoint(run, step)
  finally:
    run.release()


def _evaluate_checkpoint(run: run_setup.Run, step: Optional[int]) -> dict:
  config, workdir = run.config, run.workdir
  state = run.restore(step)
  # Compiling the evaluation takes a while: say what the quiet is.
  log.info('Evaluating step %d on %s %s images%s ...', run.ckpt.restored_step,
           f'{len(run.test):,}', run.test_name,
           ', with flip test-time augmentation' if config.flip_tta else '')
  result = evaluate(run.dp, run.p_evaluate, state, run.eval_data('test'))
  confusion = result['confusion']
  per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
  names = list(run.test.class_names)
  # Keyed by id: two classes may share a readable name (ImageNet's "crane").
  ids = list(run.test.class_ids or names)
  result = {'step': run.ckpt.restored_step, 'split': run.test_name,
            'weights': ['raw', 'ema'] if train_state.ema_of(state) is not None else ['raw'],
            'flip_tta': bool(config.flip_tta), **metrics_io.scalars(result),
            'per_class_accuracy': dict(zip(ids, per_class.tolist())),
            'class_ids': ids, 'class_names': names,
            'confusion_matrix': confusion.tolist()}
  # The files no process could read (each read its own rows), as run.json
  # lists a training session's.
  skipped = {}
  for files in process_gather.allgather_json(run.skipped):
    skipped.update(files)
  if skipped:
    result['skipped_files'] = dict(sorted(skipped.items()))
  if jax.process_index() == 0:
    metrics_io.write_json(os.path.join(workdir, 'eval.json'), result)
    plots.draw_confusion(confusion, names, os.path.join(workdir, 'confusion.png'),
                         f"{config.model}, step {result['step']}: "
                         f"{100 * result['eval_accuracy']:.2f}% accuracy")
  return result
