"""orbax checkpoints of a run: state, plus metadata that says what it is.

Retention: the last `keep` checkpoints plus the best by eval accuracy; the
latest (the one a resume needs) is always among them. A damaged checkpoint is
moved aside (renamed, never deleted) and the newest intact one is used.
"""

import json
import os
from typing import Any, Optional

from absl import logging as absl_logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from resnet_jax import errors
from resnet_jax.logs import log
from resnet_jax.workdir import config_validation

_TMP_MARK = '.orbax-checkpoint-tmp'

# orbax splits each replicated array into one slice per device so that every
# device copies a part ("replica-parallel"), its default on the CPU and TPU.
# A ResNet's arrays are small (the largest of ResNet-50 is 9 MB): for them
# the split is mostly dispatch, and the save's blocking part on 8 devices
# took 10x that of one. Below this many bytes a slice, one device copies it.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _use_replica_parallel_for_large_arrays_only() -> None:
  handler = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # Not its "overriding" warning.
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logging.set_verbosity(verbosity)


class Checkpoints:
  """The `checkpoints/` folder of a workdir.

  Opened read-only: reading metadata and restoring change nothing on disk, so
  a run that is then refused leaves the folder as it was (another run may be
  writing it). `open_for_writing` switches to a manager that saves, once the
  run holds its workdir. Saves are asynchronous (training goes on while orbax
  writes) and atomic: a step folder appears under its final name only once
  complete; an interrupted save leaves a `*.orbax-checkpoint-tmp*` folder,
  which `open_for_writing` removes.
  """

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.restored_step = None
    self._manager = None
    self._saving = []  # Steps whose asynchronous save may not be finished.
    self._writable = False
    if os.path.isdir(self.directory):
      # orbax warns that a read-only manager is read-only: that is the point.
      verbosity = absl_logging.get_verbosity()
      absl_logging.set_verbosity(absl_logging.ERROR)
      try:
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0,
                enable_async_checkpointing=False))
      finally:
        absl_logging.set_verbosity(verbosity)

  def open_for_writing(self) -> None:
    """Creates the folder if needed and removes unfinished saves."""
    _use_replica_parallel_for_large_arrays_only()
    if self._manager is not None:
      self._manager.close()
    self._report_leftovers()
    self._writable = True
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=self.keep),
        pp.BestN(get_metric_fn=lambda m: m['eval_accuracy'], reverse=False, n=1,
                 keep_checkpoints_without_metrics=False)])
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=True, preservation_policy=policy,
            cleanup_tmp_directories=True, enable_async_checkpointing=True))

  def _report_leftovers(self) -> None:
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARK in name:
        log.warning('Removing %s: the unfinished save of an interrupted run',
                    os.path.join(self.directory, name))

  def all_steps(self) -> list:
    return sorted(self._manager.all_steps()) if self._manager else []

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict,
           eval_accuracy: Optional[float] = None,
           data_state: Optional[dict] = None) -> None:
    """Starts an asynchronous save; `eval_accuracy` ranks it for retention;
    `data_state` (the file loader's, JSON) is saved by grain's orbax handler,
    one file per process.

    Raises:
      errors.Stopped: this save or an earlier one still in flight failed
        (disk full, permissions, a lost network file system).
    """
    metrics = None if eval_accuracy is None else {'eval_accuracy': eval_accuracy}
    self._saving.append(step)
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_state is not None:
      import grain
      items['data'] = grain.checkpoint.CheckpointSave(_DataState(data_state))
    try:
      self._manager.save(step, metrics=metrics, force=True,
                         args=ocp.args.Composite(**items))
    except Exception as e:  # orbax surfaces background failures in many kinds.
      raise self._failed(e) from e
    self._saving = self._saving[-1:]  # Earlier saves have finished if this started.

  def reached_preemption(self, step: int) -> bool:
    """Whether the distributed runtime has a preemption notice (all processes)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until every save is on disk.

    Raises:
      errors.Stopped: a save failed.
    """
    if self._manager:
      try:
        self._manager.wait_until_finished()
      except Exception as e:  # See `save`.
        raise self._failed(e) from e
      self._saving = []

  def _failed(self, error: Exception) -> errors.Stopped:
    """The stop of a failed save: which step, why, and what is intact."""
    failed, self._saving = self._saving, []
    intact = [s for s in self._finished_steps() if s not in failed]
    kept = (f'the checkpoint of step {intact[-1]} is intact' if intact
            else 'no earlier checkpoint exists')
    cause = type(error).__name__ + (f': {str(error)[:300]}' if str(error) else '')
    return errors.Stopped(
        f'saving the checkpoint of step {failed[0] if failed else "?"} failed ({cause}); '
        f'{kept}. Fix the cause (free disk space, permissions, the file system) '
        'and run the same command to resume', exit_code=4)

  def _finished_steps(self) -> list:
    """Step folders on disk that are complete (no orbax temporary mark)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

  def read_meta(self, step: Optional[int] = None) -> Optional[dict]:
    """The metadata of `step` (default: the newest readable), or None."""
    steps = [step] if step is not None else self.all_steps()[::-1]
    for s in steps:
      try:
        return self._manager.restore(s, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']
      except Exception:  # Damaged: `restore` reports and moves it aside.
        continue
    return None

  def read_data_state(self, step: int) -> Optional[dict]:
    """This process's file-loader state saved with `step`, or None (a
    checkpoint without one: the loader then starts at the step)."""
    import grain
    holder = _DataState(None)
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(holder)))
    except Exception:  # No such item, or another process count's files.
      return None
    return holder.state

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """The state at `step`, or at the newest intact step when None.

    A damaged newest checkpoint is reported in one warning line and, once
    the checkpoints are open for writing (a run resuming), moved aside to
    `<step>.damaged`; the next older one is tried. Opened read-only (eval,
    predict, checks) nothing is moved: a checkpoint that only this reader
    cannot restore (another version's layout, say) stays as it was.
    """
    if step is not None and step not in self.all_steps():
      raise errors.UserError(
          f'no checkpoint of step {step} in {self.directory}; it has steps '
          f'{self.all_steps()}')
    candidates = [step] if step is not None else self.all_steps()[::-1]
    cause = ''
    for s in candidates:
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # orbax raises many kinds for damaged files.
        if step is not None:
          raise errors.UserError(f'checkpoint {s} in {self.directory} is damaged '
                                 f'({type(e).__name__}: {str(e)[:200]})') from e
        cause = f' (the last: {type(e).__name__}: {str(e)[:200]})'
        if self._writable:
          self._set_aside(s, e)
        else:
          log.warning('Checkpoint %d cannot be restored (%s); left in place, trying '
                      'the next older one', s, type(e).__name__)
        continue
      self.restored_step = s
      return restored['state']
    raise errors.UserError(
        f'no checkpoint in {self.directory} could be restored{cause}; train first, '
        'or pass the --workdir of a run that has one')

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.directory, str(step))
    aside = f'{path}.damaged'
    n = 1
    while os.path.exists(aside):
      aside, n = f'{path}.damaged{n}', n + 1
    if jax.process_index() == 0:
      os.rename(path, aside)
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    log.warning('Checkpoint %d is damaged (%s); moved it to %s and trying the '
                'next older one', step, type(error).__name__, aside)
    self._manager.reload()

  def close(self) -> None:
    """Finishes pending saves and closes; a failure here was already
    reported by `wait` or `save`, or is reported now as a warning."""
    if self._manager:
      try:
        self._manager.wait_until_finished()
        self._manager.close()
      except Exception as e:  # Never mask the error that ended the run.
        log.warning('Closing the checkpoints failed: %s', self._failed(e))
      self._manager = None


class _DataState:
  """A loader state as grain's orbax handler takes and gives it: bytes of
  JSON through get_state / set_state."""

  def __init__(self, state: Optional[dict]):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state.decode() if isinstance(state, bytes) else state)

  def start_prefetch(self) -> None:  # The handler calls it after set_state.
    pass


def check_compatible(ckpt: Checkpoints, meta: Optional[dict],
                     config: ml_collections.ConfigDict, num_classes: int) -> None:
  """Refuses a config whose model, dataset or class count differs from the
  workdir's run (`meta`: its checkpoints' metadata, None for a new run)."""
  if not meta:
    return
  wanted = {'model': config.model, 'dataset': config.dataset, 'num_classes': num_classes}
  differ = {f: (meta[f], v) for f, v in wanted.items() if f in meta and meta[f] != v}
  if differ:
    listed = config_validation.describe_changes(differ)
    fix = ' '.join(f'--config.{f}={meta[f]}' for f in differ if f != 'num_classes')
    raise errors.UserError(
        f'{ckpt.directory} holds a different run ({listed}); drop --config to use '
        "the run's own config, or pass " +
        (fix if fix else 'the dataset it was trained on') +
        '; a new run needs a new --workdir')
