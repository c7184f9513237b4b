"""Data parallelism: where state and batches live and how steps compile.

Two strategies share the model, loss, optimizer and input pipeline:

* 'jit': one program over a 1-D `data` mesh of all devices (of all hosts);
  batches are sharded, state is replicated, and BatchNorm statistics are
  global because the compiler sees the whole batch.
* 'pmap': `jax.pmap` over the local devices with axis name `data`; gradients,
  metrics and BatchNorm statistics are averaged with collectives over that
  axis, so every replica holds identical state.

Checkpoints always hold the jit layout (one replicated global array per
leaf), so a checkpoint from either strategy, on any device count, restores
into either.
"""

from typing import Any, Callable, Optional

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from resnet_jax import errors

AXIS = 'data'
STRATEGIES = ('jit', 'pmap')


class DataParallel:
  """One data-parallel strategy over all devices of all processes."""

  def __init__(self, strategy: str = 'jit', devices_per_process: int = -1):
    """Args:
      strategy: 'jit' or 'pmap'.
      devices_per_process: use this many of each process's devices (-1: all).
    """
    if strategy not in STRATEGIES:
      raise errors.UserError(f'parallelism {strategy!r} is not one of '
                             f'{STRATEGIES}; set --config.parallelism=jit or pmap')
    local_count = jax.local_device_count()
    n = local_count if devices_per_process == -1 else devices_per_process
    if not 1 <= n <= local_count:
      raise errors.UserError(f'num_devices {devices_per_process} is not between 1 '
                             f'and the {local_count} devices of this process; set '
                             '--config.num_devices=-1 to use them all')
    self.strategy = strategy
    # The first n devices of every process, in process order.
    self.devices = [d for p in range(jax.process_count())
                    for d in [d for d in jax.devices() if d.process_index == p][:n]]
    self.local_devices = [d for d in self.devices
                          if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.array(self.devices), (AXIS,), axis_types=(AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    # pmap's own layout: a leading axis over this process's devices.
    local_mesh = Mesh(np.array(self.local_devices), (AXIS,))
    self._stacked = NamedSharding(local_mesh, P(AXIS))

  @property
  def axis_name(self):
    """The collective axis the model and step use (None under jit)."""
    return AXIS if self.strategy == 'pmap' else None

  def check_batch(self, global_batch: int, what: str = 'batch_size') -> None:
    """Refuses a global batch that does not split evenly over the devices."""
    n = len(self.devices)
    if global_batch <= 0 or global_batch % n:
      raise errors.UserError(
          f'{what} {global_batch} does not divide evenly over {n} devices; set '
          f'--config.{what} to a positive multiple of {n}')

  def place_state(self, state: Any) -> Any:
    """Canonical (replicated) state -> this strategy's placement."""
    if self.strategy == 'jit':
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(
              self.replicated, np.asarray(_local(x))), state)
    n = len(self.local_devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(_local(x)),
                                                 (n,) + np.shape(x)), self._stacked),
        state)

  def canonical_state(self, state: Any) -> Any:
    """This strategy's placement -> one replicated global array per leaf."""
    if self.strategy == 'jit':
      return state
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            self.replicated, np.asarray(x.addressable_data(0))[0]), state)

  def put_batch(self, batch: dict) -> dict:
    """This process's rows of a global batch -> device arrays for the step."""
    if self.strategy == 'jit':
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(self.sharded, x), batch)
    n = len(self.local_devices)
    return jax.tree.map(
        lambda x: jax.device_put(x.reshape((n, -1) + x.shape[1:]), self._stacked),
        batch)

  def compile(self, step: Callable, donate_state: bool = True,
              compiler_options: Optional[dict] = None) -> Callable:
    """Compiles `step(state, batch) -> (state or None, outputs)`.

    `compiler_options` (XLA debug options) reach the jit strategy only:
    `jax.pmap` takes none.
    """
    donate = (0,) if donate_state else ()
    if self.strategy == 'jit':
      return jax.jit(step, in_shardings=(self.replicated, self.sharded),
                     out_shardings=self.replicated, donate_argnums=donate,
                     compiler_options=compiler_options)
    return jax.pmap(step, axis_name=AXIS, donate_argnums=donate,
                    devices=self.devices)

  def fetch(self, tree: Any) -> Any:
    """Device outputs of a step (identical on all replicas) -> host numpy."""
    if self.strategy == 'jit':
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def _local(x):
  """A replicated array's value as host data (works across processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return x.addressable_data(0)
  return x
