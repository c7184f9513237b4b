"""Many steps per call: the training chunk and the one-call evaluation.

A fast accelerator finishes a ResNet-20 step in about a millisecond, about as
long as Python takes to dispatch one. So one call runs up to `k` training
steps in a `fori_loop` whose trip count `n <= k` is an argument: one compiled
program serves every chunk length (chunks end where the loop logs,
evaluates or checkpoints), and the metrics of the chunk come back stacked, to
be fetched in one transfer when they are logged. Each step in the loop is the
same program whatever `k` is, so for any k > 1 a run's numbers do not depend
on `k` or on where chunks start (after a resume): bitwise, tested. k = 1 runs
the step with no loop around it, which XLA compiles differently: the same
numbers to float rounding (one step within the layouts' tolerance, tested).

Batches come either from the device-resident split (`device_pipeline`, made
inside the loop) or, on the host pipeline, as `k` stacked host batches.
Evaluation scans a whole stacked split in one call and sums on the device.
"""

import functools
from typing import Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.data import device_pipeline
from resnet_jax.data import file_loader
from resnet_jax.data import grain_workers
from resnet_jax.data import input_pipeline
from resnet_jax.parallelism import data_parallel

PIPELINES = ('auto', 'device', 'host')
# The most steps per call `steps_per_call=-1` picks: the largest divisor of
# log_every_steps up to this. Longer chunks save nothing once dispatch is
# ~1/30 of a step, and delay a stop signal's checkpoint.
MAX_AUTO_STEPS_PER_CALL = 32


def steps_per_call(config: ml_collections.ConfigDict,
                   platform: Optional[str] = None) -> int:
  """`steps_per_call`, or with -1 the largest divisor of `log_every_steps`
  not above `MAX_AUTO_STEPS_PER_CALL` (chunks then end on log lines without
  a short remainder); 1 on the CPU.

  On the CPU a step takes far longer than its dispatch, and XLA:CPU runs
  convolutions inside a loop an order of magnitude slower than outside one
  (jax-ml/jax#12868; a ResNet-8 step: 1.1 s in a `fori_loop`, 0.07 s alone),
  so one step per call, with no loop, is the fast choice there.
  """
  k = config.get('steps_per_call', -1)
  if k > 0:
    return int(k)
  if (platform or jax.default_backend()) == 'cpu':
    return 1
  every = config.log_every_steps
  return max(d for d in range(1, min(every, MAX_AUTO_STEPS_PER_CALL) + 1)
             if every % d == 0)


def _chunk(state, data, n, *, k: int, step_fn: Callable, batches: Callable):
  """Up to `k` steps from `state`: (state after n steps, {metric: [k]}), the
  first n entries of each metric filled. With k = 1, the step alone (no loop;
  n is then 1)."""
  batch_at = batches(data, state.step)
  if k == 1:
    state, metrics = step_fn(state, batch_at(0))
    return state, jax.tree.map(lambda v: v[None], metrics)

  def body(i, carry):
    st, buf = carry
    st, metrics = step_fn(st, batch_at(i))
    return st, jax.tree.map(lambda b, v: b.at[i].set(v), buf, metrics)

  shapes = jax.eval_shape(lambda s: step_fn(s, batch_at(0))[1], state)
  buf = jax.tree.map(lambda s: jnp.zeros((k,) + s.shape, s.dtype), shapes)
  return lax.fori_loop(0, n, body, (state, buf))


def device_batches(spec: device_pipeline.Spec, dp: data_parallel.DataParallel) -> Callable:
  """`batches` of `_chunk` for the device-resident split {'image', 'label'}
  and the epoch orders it reads {'order', 'first_epoch'}
  (`device_pipeline.orders`)."""
  def batches(data, start):
    rows, constrain = dp.rows(spec.global_batch)
    return lambda i: device_pipeline.make_batch(
        spec, data['image'], data['label'], start + i, data['order'],
        data['first_epoch'], rows, constrain)
  return batches


def stacked_batches(data, start) -> Callable:
  """`batches` of `_chunk` for host batches stacked as [k, rows, ...]."""
  del start
  return lambda i: jax.tree.map(
      lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), data)


def compile_train_chunk(dp: data_parallel.DataParallel, step_fn: Callable, k: int,
                        spec=None, compiler_options=None) -> Callable:
  """`chunk(state, data, n) -> (state, {metric: [k]})`, compiled.

  Args:
    dp: the data parallelism.
    step_fn: `train_step` with its options bound.
    k: steps per call (the metrics' length; n <= k run).
    spec: the device pipeline's `Spec`: `data` is the device-resident split.
      None: `data` is k stacked host batches (`dp.put_stacked`).
    compiler_options: XLA options (jit only).
  """
  if spec is None:
    fn = functools.partial(_chunk, k=k, step_fn=step_fn, batches=stacked_batches)
    return dp.compile(fn, compiler_options=compiler_options,
                      args=('state', 'stacked', 'scalar'))
  fn = functools.partial(_chunk, k=k, step_fn=step_fn,
                         batches=device_batches(spec, dp))
  return dp.compile(fn, compiler_options=compiler_options,
                    args=('state', 'data', 'scalar'))


def _evaluate_batches(state, data, first, *, eval_fn: Callable, per_call: int):
  """The sums of `eval_fn` over batches [first, first + per_call) of stacked
  batches [g, rows, ...], on the device (one batch, with no loop, when
  per_call is 1)."""
  batch_at = lambda i: jax.tree.map(
      lambda x: lax.dynamic_index_in_dim(x, first + i, keepdims=False), data)
  if per_call == 1:
    return eval_fn(state, batch_at(0))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(eval_fn, state, batch_at(0)))
  return lax.fori_loop(0, per_call, lambda i, totals: jax.tree.map(
      jnp.add, totals, eval_fn(state, batch_at(i))), zeros)


def compile_evaluate(dp: data_parallel.DataParallel, eval_fn: Callable,
                     per_call: int) -> Callable:
  """`evaluate(state, stacked eval batches, first) -> sums` of `per_call`
  batches from `first`, compiled."""
  return dp.compile(functools.partial(_evaluate_batches, eval_fn=eval_fn,
                                      per_call=per_call),
                    donate_state=False, args=('state', 'stacked', 'scalar'))


def eval_batches_per_call(num_batches: int, platform: Optional[str] = None) -> int:
  """All of a split's batches in one call; one per call on the CPU, where
  XLA runs convolutions in a loop slowly (see `steps_per_call`)."""
  return 1 if (platform or jax.default_backend()) == 'cpu' else num_batches


class EvalSplit:
  """A split as padded evaluation batches stacked [batches, rows, ...] and
  split over the devices by rows: placed once and reused by every
  evaluation when it fits in device memory (one call evaluates it all),
  else placed `HOST_GROUP` batches at a time."""

  HOST_GROUP = 16
  label = ''  # The split's name in progress lines ('val'); '' = the caller's.

  def __init__(self, dp: data_parallel.DataParallel, split: input_pipeline.Split,
               global_batch: int):
    self._dp = dp
    self.num_examples = len(split)
    batches = list(input_pipeline.eval_batches(split, global_batch, jax.process_index(),
                                               jax.process_count()))
    self._host = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    nbytes = sum(v.nbytes for v in self._host.values()) // len(dp.local_devices)
    self._placed = None
    if device_pipeline.too_large(nbytes, dp.local_devices) is None:
      self._placed = dp.put_stacked(self._host)
      self._host = None

  @property
  def group_size(self) -> int:
    """Batches per placed group."""
    return len(self._placed['mask']) if self._placed is not None else self.HOST_GROUP

  @property
  def num_groups(self) -> int:
    """How many groups `groups` yields."""
    return 1 if self._placed is not None else -(-len(self._host['mask']) // self.HOST_GROUP)

  def groups(self):
    """The placed groups of batches, in order."""
    if self._placed is not None:
      yield self._placed
      return
    n = len(self._host['mask'])
    for start in range(0, n, self.HOST_GROUP):
      group = {k: v[start:start + self.HOST_GROUP] for k, v in self._host.items()}
      pad = self.HOST_GROUP - len(group['mask'])
      if pad:  # Masked copies: one compiled shape for every group.
        group = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                 for k, v in group.items()}
      yield self._dp.put_stacked(group)


class FileEvalSplit:
  """A split of image files as padded evaluation batches, decoded by grain at
  every evaluation (`file_loader.eval_dataset`) and placed `HOST_GROUP`
  batches at a time: ImageNet's 50,000 validation images are 7.5 GB at 224
  px. Files that do not decode are masked out and named in `skipped`."""

  HOST_GROUP = EvalSplit.HOST_GROUP
  label = ''

  def __init__(self, dp: data_parallel.DataParallel, split: file_loader.FileSplit,
               global_batch: int, size: int, workers: tuple, skipped: dict):
    if workers[0] > 0:  # One copy of the file list per host, not one per worker.
      split = split.shared()
    self._dp, self._split, self._batch, self._size = dp, split, global_batch, size
    self._workers, self._skipped = workers, skipped
    self._num_batches = -(-len(split) // global_batch)
    self.num_examples = len(split)

  @property
  def group_size(self) -> int:
    return min(self.HOST_GROUP, self._num_batches)

  @property
  def num_groups(self) -> int:
    return -(-self._num_batches // self.group_size)

  def groups(self):
    """The placed groups of batches, in order; the last padded with masked
    batches (one compiled shape)."""
    dataset = file_loader.eval_dataset(self._split, self._batch, self._size,
                                       jax.process_index(), jax.process_count())
    iterator = file_loader.iterate(dataset, *self._workers)
    group = []
    try:
      for batch in grain_workers.held_reads(iterator):
        file_loader.report_skipped(self._skipped, batch.pop('skipped'))
        group.append(batch)
        if len(group) == self.group_size:
          yield self._put(group)
          group = []
    finally:
      iterator.close()
    if group:
      blank = {k: np.zeros_like(v) for k, v in group[0].items()}
      yield self._put(group + [blank] * (self.group_size - len(group)))

  def _put(self, group: list):
    return self._dp.put_stacked({k: np.stack([b[k] for b in group]) for k in group[0]})
