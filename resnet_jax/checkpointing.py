"""orbax checkpoints of a run: state, plus metadata that says what it is."""

import os
from typing import Any, Optional

import ml_collections
import orbax.checkpoint as ocp

from resnet_jax import errors


class Checkpoints:
  """The `checkpoints/` folder of a workdir.

  Saves are asynchronous (training goes on while orbax writes) and atomic: a
  step folder appears under its final name only once complete.
  """

  def __init__(self, directory: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    self.restored_step = None
    self._manager = None
    if create or os.path.isdir(self.directory):
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                               enable_async_checkpointing=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step() if self._manager else None

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def read_meta(self, step: Optional[int] = None) -> Optional[dict]:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """The state at `step` (default: the latest), shaped like `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.UserError(
          f'no checkpoint in {self.directory}; train first, or pass the '
          '--workdir of a run that has one')
    if step not in self._manager.all_steps():
      raise errors.UserError(
          f'no checkpoint of step {step} in {self.directory}; it has steps '
          f'{sorted(self._manager.all_steps())}')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    self.restored_step = step
    return restored['state']

  def close(self) -> None:
    if self._manager:
      self._manager.wait_until_finished()
      self._manager.close()


def check_compatible(ckpt: Checkpoints, config: ml_collections.ConfigDict) -> None:
  """Refuses a config whose model or dataset differs from the workdir's run."""
  meta = ckpt.read_meta()
  if not meta:
    return
  for field in ('model', 'dataset'):
    if meta.get(field) != config[field]:
      raise errors.UserError(
          f'{ckpt.directory} holds a {field} {meta.get(field)!r} run but the config '
          f'asks for {config[field]!r}; use a new --workdir for a new run, or '
          f'--config.{field}={meta.get(field)} to continue this one')
