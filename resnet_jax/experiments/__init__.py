"""Experiments: many ordinary runs (sweep points x seeds) planned, launched and
read back as one.

- `plan`: seeds and sweeps -> the runs of an experiment; the folder that
  remembers its plan (experiment.json) and refuses a different one.
- `run_status`: what a run's own files say (complete, partial, diverged, ...).
- `local`: runs one after another, or one per GPU at a time.
- `slurm`: one SLURM job array through submitit, requeued on preemption.
- `groups`, `statistics`: runs grouped by recipe; mean, spread, intervals and
  the comparison of two groups (scipy).

Imports: `resnet_jax.errors`, `logs`, `config_files`, `resnet_jax.workdir`,
`resnet_jax.reporting` and this folder; never `training` (a launcher never
initialises a device: the runs own them).
"""
