r"""Plans and runs an experiment: one ordinary run per (sweep point, seed).

  python -m resnet_jax.experiment --config configs/cifar.py:resnet20 \
      --workdir exps/ls --seeds=0-4 --sweep=label_smoothing=0,0.1
  python -m resnet_jax.experiment --workdir exps/ls     # again: skips, resumes
  python -m resnet_jax.experiment --workdir exps/ls --launcher=slurm \
      --partition=gpu --time_minutes=240 --max_parallel=8
  python -m resnet_jax.results exps/ls                  # n, mean, std, intervals
  python -m resnet_jax.experiment ... --program=benchmarks/torch_baseline.py  # PyTorch twin

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
import shutil
import signal
import time

from absl import flags
from ml_collections import config_flags

from resnet_jax import config_files
from resnet_jax import errors
from resnet_jax.experiments import local
from resnet_jax.experiments import plan as plan_lib
from resnet_jax.experiments import run_status
from resnet_jax import paths
from resnet_jax.workdir import run_record


_CONFIG = errors.define_config_flag(
    config_files.default_or_none(), 'Config file[:preset] of every run; '
    'default: the experiment in --workdir, or configs/cifar.py for a new one.')
_WORKDIR = paths.define_flag('workdir', None, 'The experiment folder (one '
                             'workdir per run inside it).')
_SEEDS = flags.DEFINE_string('seeds', None, "Seeds of every sweep point: '0-4', "
                             "'0,3,7'; default: the experiment's, or the config's seed.")
_SWEEP = flags.DEFINE_multi_string('sweep', [], 'FIELD=V1,V2,...: a sweep axis '
                                   '(repeat for a grid).')
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'submitit_local'],
                              'Where the runs run (see above).')
_GPUS = flags.DEFINE_integer('gpus_per_run', None, 'GPUs each run gets (local with '
                             'several GPUs, slurm); default 1, on SLURM 0 where the '
                             "partition's nodes have no GPUs.", lower_bound=0)
_CPUS = flags.DEFINE_integer('cpus_per_run', 0, 'slurm: CPUs per task; 0 = the '
                             "cluster's default.", lower_bound=0)
_PARTITION = flags.DEFINE_string('partition', '', 'slurm: the partition.')
_TIME = flags.DEFINE_integer('time_minutes', 240, 'slurm: time limit of one task; '
                             'a run that needs longer is requeued and resumes.',
                             lower_bound=5)
_MAX_PARALLEL = flags.DEFINE_integer('max_parallel', 16, 'slurm: most tasks of the '
                                     'array running at once.', lower_bound=1)
_SBATCH = flags.DEFINE_multi_string('sbatch', [], 'slurm: KEY=VALUE, any further sbatch '
                                    'option: --sbatch=account=abc --sbatch=qos=high '
                                    '--sbatch=mem=16G (repeat, or comma-separate).')
_WAIT = flags.DEFINE_bool('wait', False, 'slurm: wait for the array to end.')
_PROGRAM = paths.define_flag(
    'program', None, 'What each run runs: resnet_jax.main (the default), or a script '
    'that takes its flags (--config, --workdir, --config.FIELD=VALUE), e.g. '
    'benchmarks/torch_baseline.py, the PyTorch twin (--launcher=local only: it keeps no '
    'checkpoints to resume a requeued task from). Remembered by the experiment.')
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
  overrides = paths.expand_config(dict(overrides))  # Also a plan stored before.
  config, module = config_files.load(argument)
  # Seeds and sweep not given are the experiment's own, also with a new
  # --config: a changed recipe then shows as what it is, not as other seeds.
  if _SEEDS.value is not None:
    seeds = plan_lib.parse_seeds(_SEEDS.value)
  else:
    seeds = stored['seeds'] if stored is not None else [config.seed]
  if _SWEEP.value:
    sweep = plan_lib.parse_sweeps(_SWEEP.value, config)
  elif stored is not None:
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
  return plan_lib.Plan(argument, overrides, points, seeds, sweep, _program(stored))


def _program(stored) -> str:
  """--program as an absolute path ('' for resnet_jax.main), else the
  experiment's own."""
  given = _PROGRAM.value
  if given is None:
    return (stored or {}).get('program', '')
  if given in ('', 'resnet_jax.main'):
    return ''
  if not os.path.isfile(given):
    raise errors.UserError(f'--program {given} is not a file; pass a script that takes '
                           "main's flags, e.g. benchmarks/torch_baseline.py")
  return os.path.abspath(given)


# The launcher flags an experiment remembers: a rerun without them uses the
# experiment's own (a SLURM experiment stays on SLURM, its partition, ...).
_LAUNCH_FLAGS = {'launcher': _LAUNCHER, 'partition': _PARTITION, 'time_minutes': _TIME,
                 'gpus_per_run': _GPUS, 'cpus_per_run': _CPUS,
                 'max_parallel': _MAX_PARALLEL, 'sbatch': _SBATCH}


def _launch_options(stored) -> dict:
  """The launcher options of this invocation: flags given, else the
  experiment's stored ones, else the defaults."""
  own = (stored or {}).get('launch_options', {})
  out = {}
  for name, flag in _LAUNCH_FLAGS.items():
    given = flags.FLAGS[flag.name].present
    out[name] = flag.value if given or name not in own else own[name]
  if isinstance(out['sbatch'], list):
    out['sbatch'] = _parse_sbatch(out['sbatch'])
  return out


def _parse_sbatch(items: list) -> dict:
  options = {}
  for item in (i for text in items for i in text.split(',') if i.strip()):
    key, eq, value = item.strip().partition('=')
    key = key.strip().lstrip('-').replace('-', '_')
    if not eq or not key or not value:
      raise errors.UserError(f'--sbatch={item!r} is not KEY=VALUE; pass e.g. '
                             '--sbatch=account=abc --sbatch=mem=16G')
    options[key] = value
  return options


def _jsonable(overrides: dict) -> dict:
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}


def _print_plan(folder: str, plan: plan_lib.Plan, statuses: dict, queued: dict) -> None:
  runs = plan.runs()
  print(f'Experiment {folder}: {len(runs)} run(s), {plan.describe()}, of '
        f'{plan.config}' + (f' run by {plan.program}' if plan.program else '')
        + (' with ' + ' '.join(
            f'--config.{k}={v}' for k, v in plan.overrides.items()) if plan.overrides else ''))
  width = max(len(r.name) for r in runs)
  for run in runs:
    status = statuses[run.name]
    detail = (f'{queued[run.name].lower()} on SLURM' if run.name in queued
              else status.detail)
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
  options = _launch_options(stored)
  on_slurm = options['launcher'] in ('slurm', 'submitit_local')
  if on_slurm and plan.program:
    # Requeued at each time limit, a run that cannot resume would never end.
    raise errors.UserError(
        f'--launcher={options["launcher"]} requeues a task at its time limit and on '
        'preemption, and only resnet_jax.main resumes from its checkpoint: each attempt '
        f'of {plan.program} (the PyTorch twin keeps no checkpoints) would start again at '
        'step 0; use --launcher=local (on a cluster, inside one allocation long enough '
        'for all the runs)')
  if on_slurm:
    try:
      importlib.import_module('submitit')  # Optional: only these launchers need it.
    except ImportError:
      raise errors.UserError(f'--launcher={options["launcher"]} needs submitit, an '
                             'optional extra: pip install -e ".[slurm]" (or pip install '
                             'submitit)') from None
  plan.validate()  # Every run's config, before anything is written.
  if stored is not None:
    plan_lib.check_same(folder, stored, plan)
  runs = plan.runs()
  statuses = {r.name: run_status.of(os.path.join(folder, r.name)) for r in runs}
  launches = stored.get('launches', []) if stored else []
  queued = {}
  if any(l['launcher'] == 'slurm' for l in launches):
    from resnet_jax.experiments import slurm
    queued = {n: s for n, s in slurm.active(launches).items()
              if not statuses[n].finished}
    _add_sacct_outcomes(folder, launches, statuses, queued)
  _print_plan(folder, plan, statuses, queued)
  todo = [r.name for r in runs if not statuses[r.name].finished
          and statuses[r.name].kind != run_status.RUNNING and r.name not in queued]
  if _DRY_RUN.value:
    print(f'Dry run: {len(todo)} run(s) would start ({options["launcher"]}); nothing was '
          'written.')
    return
  if not todo:
    print('Nothing to run: every run is finished, running or queued. '
          f'python -m resnet_jax.results {folder} reads them.')
    return
  failed = [n for n in todo if statuses[n].kind == run_status.FAILED]
  if failed:
    print(f'Starting again {len(failed)} run(s) that failed: {", ".join(failed)}')
  # Absolute paths: a task on a compute node may start in another folder.
  jobs = [(name, plan.command(os.path.abspath(os.path.join(folder, name))))
          for name in todo]
  if options['launcher'] == 'local':
    plan_lib.write(folder, plan, launches, _stored_options(options))
    _run_local(folder, jobs, options)
  else:
    _run_slurm(folder, plan, jobs, launches, options)


def _stored_options(options: dict) -> dict:
  return {k: v for k, v in options.items() if v is not None}


def _add_sacct_outcomes(folder: str, launches: list, statuses: dict, queued: dict) -> None:
  """Runs that left the queue without a word in their own folder or log
  record (killed, out of memory, a node failure): sacct's state of their
  latest task, where the cluster keeps accounting."""
  from resnet_jax.experiments import slurm
  silent = {n for n, s in statuses.items()
            if s.kind in (run_status.PENDING, run_status.CRASHED) and n not in queued}
  for launch in reversed([l for l in launches if l['launcher'] == 'slurm']):
    mine = silent & set(launch.get('runs', []))
    if not mine:
      continue
    for name, state in slurm.sacct_states(launch).items():
      if name in mine and not state.startswith(('COMPLETED', 'PENDING', 'RUNNING')):
        log = os.path.join(folder, 'logs', f'{name}.log')
        statuses[name] = run_status.Status(
            run_status.FAILED, statuses[name].step,
            f'task of job {launch["job_id"]} ended {state} (sacct); log: {log}')
    silent -= mine


def _run_local(folder: str, jobs: list, options: dict) -> None:
  gpus = 1 if options['gpus_per_run'] is None else options['gpus_per_run']
  slots = local.slots(local.visible_gpus(), gpus) if gpus else [{}]
  where = (f'{len(slots)} at a time, {gpus} GPU(s) each'
           if len(slots) > 1 or slots[0] else 'one at a time')
  print(f'Running {len(jobs)} run(s) here, {where}; each run\'s console goes to '
        f'{os.path.join(folder, "logs")}/NAME.log. Ctrl-C stops them at a checkpoint; '
        'the same command resumes.', flush=True)
  failed = []

  def on_start(name, env, log_path):
    gpus = f" on GPU(s) {env['CUDA_VISIBLE_DEVICES']}" if env else ''
    print(f'[start] {name}{gpus}', flush=True)

  def on_end(name, code):
    log_path = os.path.join(folder, 'logs', f'{name}.log')
    if code and run_status.of(os.path.join(folder, name)).kind != run_status.DIVERGED:
      if code not in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM,
                      -signal.SIGINT):
        run_status.write_outcome(log_path, {'outcome': 'failed', 'exit_code': code,
                                            'reason': run_status.error_line(log_path)})
      failed.append((name, code))
    status = run_status.of(os.path.join(folder, name))
    print(f'[{"done" if code == 0 else "exit " + str(code)}] {name}: {status.detail}',
          flush=True)

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
  unfinished = [n for n, _ in jobs if not run_status.of(os.path.join(folder, n)).finished]
  if unfinished:
    raise errors.Stopped(f'{len(unfinished)} run(s) did not finish: {", ".join(unfinished)};'
                         ' the same command resumes them', exit_code=1)
  print(f'All runs finished. python -m resnet_jax.results {folder}')


def _run_slurm(folder: str, plan, jobs: list, launches: list, options: dict) -> None:
  from resnet_jax.experiments import slurm
  slurm_folder = os.path.join(folder, 'slurm')
  cluster = 'local' if options['launcher'] == 'submitit_local' else 'slurm'
  gpus = options['gpus_per_run']
  if cluster == 'slurm':  # What sbatch would refuse, or queue forever, said first.
    gpus = slurm.check_partition(options['partition'], gpus, options['time_minutes'])
  # Named after the experiment folder, as squeue shows it.
  job_name = os.path.basename(os.path.abspath(folder))
  existed = os.path.isdir(folder)
  before = set(os.listdir(slurm_folder)) if os.path.isdir(slurm_folder) else None
  try:
    ex = slurm.executor(slurm_folder, cluster, job_name=job_name,
                        partition=options['partition'], gpus_per_run=gpus or 0,
                        cpus_per_run=options['cpus_per_run'],
                        time_minutes=options['time_minutes'],
                        max_parallel=options['max_parallel'], sbatch=options['sbatch'])
    submitted = slurm.submit(ex, jobs, os.path.join(os.path.abspath(folder), 'logs'))
  except errors.UserError:
    # Nothing left behind: the folder as it was.
    if not existed:
      shutil.rmtree(folder, ignore_errors=True)
    elif os.path.isdir(slurm_folder):
      for name in set(os.listdir(slurm_folder)) - (before or set()):
        path = os.path.join(slurm_folder, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
      if before is None:
        os.rmdir(slurm_folder)
    raise
  job_id = slurm.array_id(submitted)
  launches = launches + [{'launcher': 'slurm' if cluster == 'slurm' else options['launcher'],
                          'job_id': job_id, 'runs': [n for n, _ in jobs],
                          'submitted': run_record.now()}]
  plan_lib.write(folder, plan, launches, _stored_options({**options, 'gpus_per_run': gpus}))
  logs = os.path.join(folder, 'logs')
  print(f'Submitted {len(jobs)} run(s) as job {job_id} '
        f'({"array of " + str(len(jobs)) if len(jobs) > 1 else "one task"}, at most '
        f'{options["max_parallel"]} at a time, named {job_name}). Follow it: squeue -j '
        f'{job_id}; each run\'s console: {logs}/NAME.log. Rerun this command to see '
        'progress (and resubmit what failed).', flush=True)
  if _WAIT.value or cluster == 'local':
    _wait(folder, submitted, jobs)


def _wait(folder: str, submitted: list, jobs: list) -> None:
  """Until every task has left the queue (a requeued task is waited for)."""
  from resnet_jax.experiments import slurm
  for job in submitted:
    while True:
      try:
        job.result()
        break
      except Exception as e:  # noqa: BLE001  The run's folder says what happened.
        if slurm.job_state(str(job.job_id)) in slurm.ACTIVE_STATES:
          time.sleep(5)  # Requeued: its next attempt is still to come.
          continue
        print(f'[task {job.job_id}] {str(e).strip().splitlines()[-1]}', flush=True)
        break
  for name, _ in jobs:
    status = run_status.of(os.path.join(folder, name))
    print(f'[{status.kind}] {name}: {status.detail}')


if __name__ == '__main__':
  errors.run_cli(main, prepare_argv=config_files.prepare_argv)
