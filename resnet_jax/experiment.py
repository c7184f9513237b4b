r"""Plans and runs an experiment: one ordinary run per (sweep point, seed).

  python -m resnet_jax.experiment --config configs/cifar.py:resnet20 \
      --workdir exps/ls --seeds=0-4 --sweep=label_smoothing=0,0.1
  python -m resnet_jax.experiment --workdir exps/ls     # again: skips, resumes
  python -m resnet_jax.experiment --workdir exps/ls --launcher=slurm \
      --partition=gpu --time_minutes=240 --max_parallel=8
  python -m resnet_jax.results exps/ls                  # n, mean, std, intervals

Each run is a normal workdir inside --workdir (run.json, lock, exact resume),
named after its sweep point and seed. --sweep is repeatable (a grid); a
config file may declare its own sweep with `get_sweep(preset)` (a
{field: [values]} grid or a list of {field: value} points), used when no
--sweep is given. --config.FIELD=VALUE applies to every run, as in main.

The plan is printed first (each run, its folder and what is already done).
Running the command again skips complete and diverged runs (a diverged run is
a result), resumes stopped ones and restarts crashed ones from their last
checkpoint; the folder remembers its plan (experiment.json), and a different
plan on it is refused with the differences listed.

Launchers (never part of a recipe): `local` runs one run at a time, or one per
group of --gpus_per_run GPUs at a time on a multi-GPU host; `slurm` submits
one job array through submitit (`pip install -e ".[slurm]"`), at most
--max_parallel tasks at a time, requeued on preemption or time-out, and returns
(--wait waits); `submitit_local` runs the SLURM task path on this machine.
"""

import importlib
import os

from absl import flags
from ml_collections import config_flags

from resnet_jax import config_files
from resnet_jax import errors
from resnet_jax.experiments import local
from resnet_jax.experiments import plan as plan_lib
from resnet_jax.experiments import run_status
from resnet_jax.workdir import run_record


_CONFIG = errors.define_config_flag(
    config_files.default_or_none(), 'Config file[:preset] of every run; '
    'default: the experiment in --workdir, or configs/cifar.py for a new one.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The experiment folder (one '
                               'workdir per run inside it).')
_SEEDS = flags.DEFINE_string('seeds', None, "Seeds of every sweep point: '0-4', "
                             "'0,3,7'; default: the experiment's, or the config's seed.")
_SWEEP = flags.DEFINE_multi_string('sweep', [], 'FIELD=V1,V2,...: a sweep axis '
                                   '(repeat for a grid).')
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'submitit_local'],
                              'Where the runs run (see above).')
_GPUS = flags.DEFINE_integer('gpus_per_run', 1, 'GPUs each run gets (local with '
                             'several GPUs, slurm).', lower_bound=0)
_CPUS = flags.DEFINE_integer('cpus_per_run', 0, 'slurm: CPUs per task; 0 = the '
                             "cluster's default.", lower_bound=0)
_PARTITION = flags.DEFINE_string('partition', '', 'slurm: the partition.')
_TIME = flags.DEFINE_integer('time_minutes', 240, 'slurm: time limit of one task; '
                             'a run that needs longer is requeued and resumes.',
                             lower_bound=5)
_MAX_PARALLEL = flags.DEFINE_integer('max_parallel', 16, 'slurm: most tasks of the '
                                     'array running at once.', lower_bound=1)
_WAIT = flags.DEFINE_bool('wait', False, 'slurm: wait for the array to end.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the plan; run and write nothing.')
flags.mark_flags_as_required(['workdir'])


def _config_argument(flag) -> str:
  """The --config value as an absolute PATH[:PRESET], valid from any folder."""
  path, colon, preset = config_files.resolve(
      config_flags.get_config_filename(flag)).partition(':')
  return os.path.abspath(path) + colon + preset


def _new_plan(stored) -> plan_lib.Plan:
  """The plan these flags ask for. On an experiment folder, what they leave
  out (config, overrides, sweep, seeds) is the folder's own; runtime
  --config.FIELD flags change runtime fields."""
  flag = flags.FLAGS['config']
  given = _jsonable(config_flags.get_override_values(flag))
  own = stored is not None and not flag.present
  if own:
    argument, overrides = stored['config'], {**stored['overrides'], **given}
  else:
    argument, overrides = _config_argument(flag), given
  config, module = config_files.load(argument)
  if _SEEDS.value is not None:
    seeds = plan_lib.parse_seeds(_SEEDS.value)
  else:
    seeds = stored['seeds'] if own else [config.seed]
  if _SWEEP.value:
    sweep = plan_lib.parse_sweeps(_SWEEP.value, config)
  elif own:
    sweep = stored.get('sweep')
  else:
    declared = getattr(module, 'get_sweep', None)
    sweep = declared(argument.partition(':')[2]) if declared else None
  points = plan_lib.points_of(sweep, config, f'the sweep of {argument}')
  for point in points:
    clash = sorted(set(point) & set(given))
    if clash:
      raise errors.UserError(f'--config.{clash[0]} fixes a field the sweep varies; '
                             'drop one of them')
  if 'seed' in given:
    raise errors.UserError('--config.seed sets one seed for every run; give seeds '
                           'as --seeds=0-4')
  return plan_lib.Plan(argument, overrides, points, seeds, sweep)


def _jsonable(overrides: dict) -> dict:
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}


def _print_plan(folder: str, plan: plan_lib.Plan, statuses: dict, queued: set) -> None:
  runs = plan.runs()
  print(f'Experiment {folder}: {len(runs)} run(s), {plan.describe()}, of '
        f'{plan.config}' + (' with ' + ' '.join(
            f'--config.{k}={v}' for k, v in plan.overrides.items()) if plan.overrides else ''))
  width = max(len(r.name) for r in runs)
  for run in runs:
    status = statuses[run.name]
    detail = 'queued or running on SLURM' if run.name in queued else status.detail
    print(f'  {run.name:<{width}}  {detail}')
  counts = {}
  for run in runs:
    kind = 'queued' if run.name in queued else statuses[run.name].kind
    counts[kind] = counts.get(kind, 0) + 1
  print('  ' + ', '.join(f'{n} {k}' for k, n in counts.items()))


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}; config fields go as '
                           '--config.FIELD=VALUE, sweeps as --sweep=FIELD=V1,V2')
  folder = os.path.normpath(_WORKDIR.value)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise errors.UserError(f'--workdir {folder} is a file; pass a folder for the '
                           'experiment')
  stored = plan_lib.read(folder)
  if (stored is None and os.path.isdir(folder) and os.listdir(folder)):
    if run_record.read(folder) is not None:
      raise errors.UserError(f'{folder} is the workdir of a single run, not an '
                             'experiment folder; pass a new --workdir')
    raise errors.UserError(f'{folder} is not empty and holds no experiment.json; pass '
                           'a new or empty --workdir for the experiment')
  plan = _new_plan(stored)
  if _LAUNCHER.value == 'slurm' or _LAUNCHER.value == 'submitit_local':
    try:
      importlib.import_module('submitit')  # Optional: only these launchers need it.
    except ImportError:
      raise errors.UserError(f'--launcher={_LAUNCHER.value} needs submitit, an optional '
                             'extra: pip install -e ".[slurm]" (or pip install '
                             'submitit)') from None
  plan.validate()  # Every run's config, before anything is written.
  if stored is not None:
    plan_lib.check_same(folder, stored, plan)
  runs = plan.runs()
  statuses = {r.name: run_status.of(os.path.join(folder, r.name)) for r in runs}
  launches = stored.get('launches', []) if stored else []
  queued = set()
  slurm_folder = os.path.join(folder, 'slurm')
  if launches and launches[-1]['launcher'] == 'slurm' and _LAUNCHER.value == 'slurm':
    from resnet_jax.experiments import slurm
    queued = slurm.active(slurm_folder, launches[-1]) - {
        n for n, s in statuses.items() if s.finished}
  _print_plan(folder, plan, statuses, queued)
  todo = [r.name for r in runs if not statuses[r.name].finished
          and statuses[r.name].kind != run_status.RUNNING and r.name not in queued]
  if _DRY_RUN.value:
    print(f'Dry run: {len(todo)} run(s) would start; nothing was written.')
    return
  if not todo:
    print('Nothing to run: every run is finished, running or queued. '
          f'python -m resnet_jax.results {folder} reads them.')
    return
  plan_lib.write(folder, plan, launches)
  jobs = [(name, plan.command(os.path.join(folder, name))) for name in todo]
  if _LAUNCHER.value == 'local':
    _run_local(folder, jobs)
  else:
    _run_slurm(folder, plan, jobs, launches)


def _run_local(folder: str, jobs: list) -> None:
  slots = local.slots(local.visible_gpus(), _GPUS.value) if _GPUS.value else [{}]
  where = (f'{len(slots)} at a time, {_GPUS.value} GPU(s) each'
           if len(slots) > 1 or slots[0] else 'one at a time')
  print(f'Running {len(jobs)} run(s) here, {where}; each run\'s console goes to '
        f'{os.path.join(folder, "logs")}/NAME.log. Ctrl-C stops them at a checkpoint; '
        'the same command resumes.', flush=True)
  failed = []

  def on_start(name, env, log_path):
    gpus = f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}" if env else ''
    print(f'[start] {name}{gpus}', flush=True)

  def on_end(name, code):
    status = run_status.of(os.path.join(folder, name))
    print(f'[{"done" if code == 0 else "exit " + str(code)}] {name}: {status.detail}',
          flush=True)
    if code and status.kind != run_status.DIVERGED:
      failed.append((name, code))

  stopped = local.launch(jobs, slots, os.path.join(folder, 'logs'), on_start, on_end)
  if stopped:
    raise errors.Stopped(f'signal {stopped}: the runs saved their checkpoints; the '
                         'same command resumes them', exit_code=128 + stopped)
  if failed:
    raise errors.Stopped(
        f'{len(failed)} run(s) failed: ' + ', '.join(
            f'{n} (exit {c}, see {os.path.join(folder, "logs", n + ".log")})'
            for n, c in failed) + '; fix the cause and rerun the same command',
        exit_code=1)
  print(f'All runs finished. python -m resnet_jax.results {folder}')


def _run_slurm(folder: str, plan, jobs: list, launches: list) -> None:
  from resnet_jax.experiments import slurm
  slurm_folder = os.path.join(folder, 'slurm')
  cluster = 'local' if _LAUNCHER.value == 'submitit_local' else 'slurm'
  ex = slurm.executor(slurm_folder, cluster, job_name=f'resnet_jax:{os.path.basename(folder)}',
                      partition=_PARTITION.value, gpus_per_run=_GPUS.value,
                      cpus_per_run=_CPUS.value, time_minutes=_TIME.value,
                      max_parallel=_MAX_PARALLEL.value)
  submitted = slurm.submit(ex, jobs)
  job_id = slurm.array_id(submitted)
  launches = launches + [{'launcher': 'slurm' if cluster == 'slurm' else _LAUNCHER.value,
                          'job_id': job_id, 'runs': [n for n, _ in jobs],
                          'submitted': run_record.now()}]
  plan_lib.write(folder, plan, launches)
  print(f'Submitted {len(jobs)} run(s) as job {job_id} '
        f'({"array of " + str(len(jobs)) if len(jobs) > 1 else "one task"}, at most '
        f'{_MAX_PARALLEL.value} at a time). Follow it: squeue -j {job_id}; logs: '
        f'{slurm.log_pattern(slurm_folder, job_id)}. Rerun this command to see '
        'progress (and resubmit what failed).', flush=True)
  if _WAIT.value or cluster == 'local':
    for job in submitted:
      try:
        job.result()
      except Exception as e:  # noqa: BLE001  The run's folder says what happened.
        print(f'[task {job.job_id}] {str(e).strip().splitlines()[-1]}', flush=True)
    statuses = {n: run_status.of(os.path.join(folder, n)) for n, _ in jobs}
    for name, status in statuses.items():
      print(f'[{status.kind}] {name}: {status.detail}')


if __name__ == '__main__':
  errors.run_cli(main, prepare_argv=config_files.prepare_argv)
