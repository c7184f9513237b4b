"""Parallelism: devices, processes and where arrays live.

- `data_parallel`: the jit (mesh) and pmap strategies: placement of state and
  batches, compilation of steps, fetching results.
- `distributed`: multi-process start-up through `jax.distributed`.

Imports: `resnet_jax.errors`, `resnet_jax.logs` and this folder only.
"""
