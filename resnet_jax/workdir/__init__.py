"""The run's workdir: what makes one folder one reproducible run.

- `checkpointing`: orbax checkpoints with their metadata, retention, damaged
  checkpoints set aside.
- `run_lock`: one run per workdir (an OS file lock).
- `run_record`: run.json, the sessions of a run and its identity.
- `environment`: what decides a run's bits besides its config (CPU, XLA
  flags, library versions), recorded in run.json.
- `preemption`: SIGTERM/SIGINT -> checkpoint and exit.
- `config_fields`: the config's fields, what each means, which a resume may
  change.
- `config_validation`: the config checked against itself and against the
  run a workdir holds.
- `run_config`: the config of that run, for a command given only `--workdir`.

Imports: `resnet_jax.errors`, `logs`, `models`, `resnet_jax.data` and this
folder.
"""
