"""Multi-process start-up on JAX's distributed runtime.

One process per host (or, for testing, several on one machine). The
coordinator is given explicitly (`--coordinator_address`, `--num_processes`,
`--process_id`), or detected under SLURM (`srun`) and on multi-host TPU VMs,
where `jax.distributed.initialize()` reads the cluster's own variables.
"""

import os
import shutil
import subprocess
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
  if 'SLURM_PROCID' in os.environ:
    # JAX's SLURM detection would give each process the one GPU of its local
    # rank, whatever the tasks per node: with one task per node, 1 of 8.
    kwargs['local_device_ids'] = slurm_local_device_ids(os.environ, _visible_gpus())
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


def slurm_local_device_ids(env, visible_gpus: int) -> Optional[list]:
  """The GPUs (indices among the visible ones) a SLURM task trains on: all of
  them with one task per node, an equal share with several, and the one it is
  given under `--gpus-per-task=1`. None (JAX's choice) without GPUs.

  Raises:
    errors.UserError: a node's GPUs do not split evenly over its tasks.
  """
  if visible_gpus <= 0:
    return None
  if visible_gpus == 1:
    return [0]
  tasks = _tasks_on_node(env)
  rank = int(env.get('SLURM_LOCALID', '0'))
  if visible_gpus % tasks:
    raise errors.UserError(f'{visible_gpus} GPUs do not split evenly over the {tasks} '
                           'tasks of this node; use one task per node or one per GPU')
  share = visible_gpus // tasks
  return list(range(rank * share, (rank + 1) * share))


def _tasks_on_node(env) -> int:
  """Tasks on this node: SLURM_NTASKS_PER_NODE, else the first count of
  SLURM_TASKS_PER_NODE ('8(x2),4' -> 8), else 1."""
  if env.get('SLURM_NTASKS_PER_NODE'):
    return int(env['SLURM_NTASKS_PER_NODE'])
  first = env.get('SLURM_TASKS_PER_NODE', '1').split(',')[0].split('(')[0]
  return int(first) if first.isdigit() else 1


def _visible_gpus() -> int:
  """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what
  nvidia-smi lists."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return len([d for d in visible.split(',') if d.strip()])
  return _nvidia_gpus()


def describe_devices() -> list:
  """Log lines naming the platform, device kind and count, and a warning
  when `nvidia-smi` finds a GPU that JAX does not use (a CPU-only jaxlib)."""
  devices = jax.devices()
  lines = [f'Devices: {len(devices)} x {devices[0].device_kind} '
           f'({jax.default_backend()}), {jax.local_device_count()} on this process']
  if jax.default_backend() == 'cpu' and _nvidia_gpus():
    lines.append(f'warning: nvidia-smi lists {_nvidia_gpus()} GPU(s) but JAX runs on the '
                 'CPU (a CPU-only jaxlib); pip install -e ".[cuda]" to train on them')
  return lines


def _nvidia_gpus() -> int:
  """GPUs `nvidia-smi -L` lists (0 without the tool or a driver)."""
  if not shutil.which('nvidia-smi'):
    return 0
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True,
                         timeout=10, check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(line.startswith('GPU ') for line in out.splitlines())
