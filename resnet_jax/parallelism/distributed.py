"""Multi-process start-up on JAX's distributed runtime.

One process per host (or, for testing, several on one machine). The
coordinator is given explicitly (`--coordinator_address`, `--num_processes`,
`--process_id`), or detected under SLURM (`srun`) and on multi-host TPU VMs,
where `jax.distributed.initialize()` reads the cluster's own variables.
"""

import os
from typing import Optional

import jax

from resnet_jax import errors


def _detected_cluster() -> Optional[str]:
  """The cluster kind JAX can auto-detect, if this is a multi-process launch."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_ID' in os.environ:
    return 'SLURM'
  if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    return 'TPU VM'
  return None


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               timeout_s: int = 300) -> str:
  """Joins the processes of a run, if there are several.

  Must run before anything touches a JAX backend.

  Returns:
    A description of the setup, for the log.

  Raises:
    errors.UserError: incomplete or inconsistent flags, or processes that do
      not all reach the coordinator.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise errors.UserError('--coordinator_address, --num_processes and '
                             '--process_id go together; pass all three')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise errors.UserError(f'--process_id {process_id} is not in 0..'
                             f'{num_processes - 1} (--num_processes {num_processes}); '
                             'give each process a distinct id below the count')
    if num_processes == 1:
      return 'single process'
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
    where = f'coordinator {coordinator_address}'
  else:
    cluster = _detected_cluster()
    if cluster is None:
      return 'single process'
    kwargs, where = {}, f'{cluster} auto-detection'
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
  except Exception as e:  # The runtime raises several kinds; all mean "no".
    raise errors.UserError(
        f'could not join the processes through {where} within {timeout_s} s '
        f'({type(e).__name__}); start every process with the same '
        '--coordinator_address and --num_processes and a distinct --process_id') from e
  if num_processes is not None and jax.process_count() != num_processes:
    raise errors.UserError(f'the coordinator has {jax.process_count()} processes but '
                           f'--num_processes is {num_processes}; make them agree')
  return (f'process {jax.process_index()} of {jax.process_count()} '
          f'({jax.local_device_count()} local devices) via {where}')
