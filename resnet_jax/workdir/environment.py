"""What decides a run's bits besides its config: CPU, XLA flags, library versions.

Recorded in each session of run.json as `numerics`, so a replay that does not
match to the bit can say what differs (benchmarks/replay.py, docs/runs.md).
"""

import importlib.metadata
import os
import platform
from typing import Optional

# Every installed library whose code computes a run's numbers (the array
# libraries, the model and optimizer, the decoders that turn files into
# pixels) or stores them.
NUMERIC_PACKAGES = (
    'jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'libtpu', 'flax', 'optax',
    'orbax-checkpoint', 'numpy', 'ml_dtypes', 'scipy', 'pillow', 'tensorflow',
    'tensorflow-cpu', 'tensorflow-datasets', 'torch')

# Environment variables that change what XLA compiles or how many threads run it.
ENV_VARS = ('XLA_FLAGS', 'JAX_PLATFORMS', 'JAX_ENABLE_X64', 'JAX_DEFAULT_MATMUL_PRECISION',
            'OMP_NUM_THREADS', 'TF_ENABLE_ONEDNN_OPTS')


def _cpuinfo() -> dict:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  out = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(':')
        out[key.strip()] = value.strip()
  except OSError:
    pass
  return out


def cpu() -> dict:
  """The CPU as LLVM sees it when XLA compiles for the host: vendor, family,
  model and stepping (which name the microarchitecture, e.g. 25/17 = Zen 4),
  and the feature flags (the instruction sets)."""
  info = _cpuinfo()
  return {'model_name': info.get('model name') or platform.processor() or platform.machine(),
          'vendor': info.get('vendor_id', ''), 'family': info.get('cpu family', ''),
          'model': info.get('model', ''), 'stepping': info.get('stepping', ''),
          'flags': info.get('flags', info.get('Features', ''))}


def package_versions(packages=NUMERIC_PACKAGES) -> dict:
  """The installed versions of `packages`; absent ones are left out."""
  out = {}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def numerics(devices: Optional[dict] = None) -> dict:
  """Everything besides the config that a run's bits may depend on.

  Args:
    devices: the session's device fields (kind, count), if known.

  Returns:
    A flat JSON-able dict: python, machine, cpu_* fields, env_* variables,
    package versions, threads (the cores XLA's thread pool gets) and the
    device fields.
  """
  out = {'python': platform.python_version(), 'machine': platform.machine()}
  out.update({f'cpu_{k}': v for k, v in cpu().items()})
  out['threads'] = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                    else os.cpu_count())
  out.update({f'env_{k}': os.environ.get(k, '') for k in ENV_VARS})
  out.update(package_versions())
  for key in ('platform', 'device_kind', 'device_count', 'process_count'):
    if devices and key in devices:
      out[key] = devices[key]
  return out
