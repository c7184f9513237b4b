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
import jax.numpy as jnp
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
    # [k, rows, ...]: k batches, each split over the devices.
    self.stacked_rows = NamedSharding(self.mesh, P(None, AXIS))
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

  def check_groups(self, global_batch: int, group_size: int) -> None:
    """Refuses a BatchNorm group size (`bn_group_size`) that does not divide
    each device's batch: a group never straddles two devices, so a pmap
    replica normalises its own groups, and the groups are the same on any
    device count."""
    per_device = global_batch // len(self.devices)
    if group_size and per_device % group_size:
      raise errors.UserError(
          f'bn_group_size {group_size} does not divide the batch of {per_device} examples '
          f'on each of {len(self.devices)} devices (batch_size {global_batch}); set '
          f'--config.bn_group_size to a divisor of {per_device}, or 0 for statistics over '
          'the whole batch')

  def place_state(self, state: Any) -> Any:
    """Canonical (replicated) state -> this strategy's placement."""
    return self.replicate(state)

  def replicate(self, tree: Any) -> Any:
    """Host arrays (the same in every process) -> a full copy on every device:
    jit, one replicated global array; pmap, a leading axis of local copies."""
    if self.strategy == 'jit':
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(
              self.replicated, np.asarray(_local(x))), tree)
    n = len(self.local_devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(_local(x)),
                                                 (n,) + np.shape(x)), self._stacked),
        tree)

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

  def put_stacked(self, batches: dict) -> dict:
    """This process's rows of `k` global batches, stacked as [k, rows, ...]
    -> device arrays split over the devices along the rows."""
    if self.strategy == 'jit':
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(self.stacked_rows, x),
          batches)
    n = len(self.local_devices)
    return jax.tree.map(
        lambda x: jax.device_put(
            np.swapaxes(x.reshape((x.shape[0], n, -1) + x.shape[2:]), 0, 1),
            self._stacked), batches)

  def compile(self, step: Callable, donate_state: bool = True,
              compiler_options: Optional[dict] = None,
              args: tuple = ('state', 'batch')) -> Callable:
    """Compiles `step(*args) -> (state or None, outputs)`.

    Args:
      step: the function.
      donate_state: let the first argument's buffers be reused for the result.
      compiler_options: XLA debug options; they reach the jit strategy only
        (`jax.pmap` takes none).
      args: the kind of each argument: 'state' (placed by `place_state`),
        'data' (by `replicate`), 'batch' (by `put_batch`), 'stacked' (by
        `put_stacked`) or 'scalar' (a host number, the same everywhere).
    """
    donate = (0,) if donate_state else ()
    if self.strategy == 'jit':
      shardings = {'state': self.replicated, 'data': self.replicated,
                   'batch': self.sharded, 'stacked': self.stacked_rows,
                   'scalar': self.replicated}
      return jax.jit(step, in_shardings=tuple(shardings[a] for a in args),
                     out_shardings=self.replicated, donate_argnums=donate,
                     compiler_options=compiler_options)
    return jax.pmap(step, axis_name=AXIS, donate_argnums=donate, devices=self.devices,
                    in_axes=tuple(None if a == 'scalar' else 0 for a in args))

  def rows(self, global_batch: int):
    """Inside a compiled step: (the global rows this program makes, a
    function placing a [rows, ...] array). jit makes all rows, split over
    the mesh; a pmap replica makes its own slice."""
    if self.strategy == 'jit':
      return (jnp.arange(global_batch),
              lambda x: jax.lax.with_sharding_constraint(x, self.sharded))
    local = global_batch // len(self.devices)
    return jax.lax.axis_index(AXIS) * local + jnp.arange(local), None

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
