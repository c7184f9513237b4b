"""Experiments without training: seeds, sweeps, plans, statuses, groups and
their statistics, read from run folders written here by hand; what the SLURM
launcher decides from squeue's answers and a run's files (a fake squeue, a
fake run)."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from configs import cifar
from resnet_jax import errors
from resnet_jax.experiments import groups
from resnet_jax.experiments import plan as plan_lib
from resnet_jax.experiments import run_status
from resnet_jax.experiments import statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('text,seeds', [('0-4', [0, 1, 2, 3, 4]), ('3', [3]),
                                        ('0,3,7', [0, 3, 7]), ('0-2,10', [0, 1, 2, 10]),
                                        (' 1 - 2 ', [1, 2])])
def test_seed_lists(text, seeds):
  assert plan_lib.parse_seeds(text) == seeds
  assert plan_lib.parse_seeds(plan_lib.format_seeds(seeds)) == seeds


@pytest.mark.parametrize('text', ['', '4-2', 'a', '0-', '-1', '1,,2', '0-2,1'])
def test_bad_seed_lists_are_one_error(text):
  with pytest.raises(errors.UserError, match='seed'):
    plan_lib.parse_seeds(text)


def test_sweeps_are_typed_like_their_fields_and_expand_to_a_grid():
  defaults = cifar.get_config()
  axes = plan_lib.parse_sweeps(
      ['label_smoothing=0,0.1', 'model=resnet8,resnet20', 'nesterov=true,0',
       'lr_boundaries=(0.5,0.75),(0.3,0.6,0.8)', 'config.batch_size=64'], defaults)
  assert axes == {'label_smoothing': [0.0, 0.1], 'model': ['resnet8', 'resnet20'],
                  'nesterov': [True, False],
                  'lr_boundaries': [(0.5, 0.75), (0.3, 0.6, 0.8)], 'batch_size': [64]}
  assert isinstance(axes['label_smoothing'][0], float)
  points = plan_lib.points_of(axes, defaults, 'test')
  assert len(points) == 2 * 2 * 2 * 2 and points[0] == {
      'label_smoothing': 0.0, 'model': 'resnet8', 'nesterov': True,
      'lr_boundaries': (0.5, 0.75), 'batch_size': 64}
  assert plan_lib.run_name(points[-1], 3) == (
      'label_smoothing=0.1,model=resnet20,nesterov=False,lr_boundaries=(0.3,0.6,0.8),'
      'batch_size=64,seed=3')
  # Explicit points (a config's own sweep) are taken as they are.
  assert plan_lib.points_of([{'mixup_alpha': 1.0}, {'cutmix_alpha': 1.0}], defaults,
                            'test') == [{'mixup_alpha': 1.0}, {'cutmix_alpha': 1.0}]


@pytest.mark.parametrize('item,message', [
    ('label_smothing=0,0.1', "names no config field 'label_smothing'; nearest: "
                             'label_smoothing'),
    ('log_every_steps=10,20', 'sweeps log_every_steps, a runtime field: it changes no '
                              'result'),
    ('seed=0,1', 'sweeps seed; give seeds as --seeds=0-4'),
    ('label_smoothing', 'is not FIELD=V1,V2'),
    ('label_smoothing=0,0', 'repeats a value'),
    ('batch_size=64,big', "value 'big' of batch_size is not a int"),
])
def test_bad_sweeps_are_one_error(item, message):
  with pytest.raises(errors.UserError, match=None) as e:
    plan_lib.parse_sweeps([item], cifar.get_config())
  assert message in str(e.value)


def _plan(**kwargs):
  base = dict(config=os.path.join(REPO, 'configs', 'cifar.py'),
              overrides={'model': 'resnet8', 'num_epochs': 2.0},
              points=[{'label_smoothing': 0.0}, {'label_smoothing': 0.1}], seeds=[0, 1],
              sweep={'label_smoothing': [0.0, 0.1]})
  base.update(kwargs)
  return plan_lib.Plan(**base)


def test_a_plan_is_its_runs_and_their_commands(tmp_path):
  plan = _plan()
  runs = plan.runs()
  assert [r.name for r in runs] == ['label_smoothing=0,seed=0', 'label_smoothing=0,seed=1',
                                    'label_smoothing=0.1,seed=0',
                                    'label_smoothing=0.1,seed=1']
  assert runs[3].recipe['label_smoothing'] == 0.1 and runs[3].recipe['seed'] == 1
  assert runs[3].recipe['model'] == 'resnet8' and 'data_dir' not in runs[3].recipe
  workdir = str(tmp_path / runs[3].name)
  assert plan.command(workdir, python='py') == [
      'py', '-m', 'resnet_jax.main', '--config', plan.config, '--workdir', workdir,
      '--config.model=resnet8', '--config.num_epochs=2.0',
      '--config.label_smoothing=0.1', '--config.seed=1']


def test_a_different_plan_lists_every_difference(tmp_path):
  plan_lib.write(str(tmp_path), _plan())
  stored = plan_lib.read(str(tmp_path))
  plan_lib.check_same(str(tmp_path), stored, _plan(overrides={
      'model': 'resnet8', 'num_epochs': 2.0, 'data_dir': '/elsewhere'}))  # Runtime.
  other = _plan(overrides={'model': 'resnet20', 'num_epochs': 2.0}, seeds=[0, 1, 2])
  with pytest.raises(errors.UserError) as e:
    plan_lib.check_same(str(tmp_path), stored, other)
  assert str(e.value) == (
      f'{tmp_path} holds an experiment with a different plan (seeds 0-1 -> 0-2; runs only '
      'in the new plan: label_smoothing=0,seed=2, label_smoothing=0.1,seed=2; model '
      '"resnet8" -> "resnet20"); rerun it with its own plan (python -m '
      f'resnet_jax.experiment --workdir {tmp_path}), or pass a new --workdir for the new '
      'plan (results reads several experiment folders together)')


def _fake_run(folder, name, seed, curve, framework='jax 0.10.2', outcome=None,
              **fields):
  """A run folder as training leaves it: run.json and metrics.jsonl with
  evaluations at the given (epoch, accuracy) points."""
  workdir = os.path.join(folder, name)
  os.makedirs(workdir)
  config = json.loads(cifar.get_config().to_json())
  config.update(model='resnet8', num_epochs=2.0, seed=seed, **fields)
  session = {'started': '2026-12-01T08:00:00+00:00', 'command': 'python -m x',
             'platform': 'cpu', 'host_cpu': 'Test CPU', 'wall_seconds': 60.0,
             **(outcome if outcome is not None else {'final_step': 100})}
  with open(os.path.join(workdir, 'run.json'), 'w') as f:
    json.dump({'framework': framework, 'config': config, 'sessions': [session]}, f)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for i, (epoch, accuracy) in enumerate(curve, 1):
      f.write(json.dumps({'step': 50 * i, 'train_loss': 1.0, 'epoch': epoch}) + '\n')
      f.write(json.dumps({'step': 50 * i, 'eval_accuracy': accuracy, 'epoch': epoch})
              + '\n')
  return workdir


# Final accuracies of two groups of 4 seeds, and a fifth seed that diverged.
A = {0: 0.4512, 1: 0.4630, 2: 0.4471, 3: 0.4588}
B = {0: 0.4577, 1: 0.4702, 2: 0.4519, 3: 0.4660}


@pytest.fixture()
def experiment(tmp_path):
  folder = str(tmp_path / 'ls')
  plan = _plan(seeds=[0, 1, 2, 3, 4])
  plan_lib.write(folder, plan)
  for point, accuracies in (({'label_smoothing': 0.0}, A), ({'label_smoothing': 0.1}, B)):
    for seed, final in accuracies.items():
      _fake_run(folder, plan_lib.run_name(point, seed), seed,
                [(1.0, final - 0.1), (2.0, final)], **point)
  _fake_run(folder, 'label_smoothing=0.1,seed=4', 4, [(1.0, 0.1)], label_smoothing=0.1,
            outcome={'stopped': 'training loss is nan at step 7; ...', 'exit_code': 3})
  # label_smoothing=0,seed=4 never started.
  return folder


def test_statuses_come_from_the_run_folders(experiment):
  kinds = {n: run_status.of(os.path.join(experiment, n)).kind
           for n in ('label_smoothing=0,seed=0', 'label_smoothing=0.1,seed=4',
                     'label_smoothing=0,seed=4')}
  assert kinds == {'label_smoothing=0,seed=0': 'complete',
                   'label_smoothing=0.1,seed=4': 'diverged',
                   'label_smoothing=0,seed=4': 'pending'}


def test_summary_is_mean_std_and_the_t_interval():
  s = statistics.summarize([1.0, 2.0, 4.0, 5.0])
  assert (s.n, s.mean, s.min, s.max) == (4, 3.0, 1.0, 5.0)
  assert s.std == pytest.approx(math.sqrt(10 / 3))
  # t(0.975, 3) = 3.182446305284263.
  half = 3.182446305284263 * math.sqrt(10 / 3) / 2
  assert (s.low, s.high) == pytest.approx((3.0 - half, 3.0 + half))
  one = statistics.summarize([0.5])
  assert (one.n, one.mean, one.std, one.low) == (1, 0.5, None, None)


def test_compare_pairs_equal_seeds_and_uses_welch_otherwise():
  paired = statistics.compare(A, B)
  d = np.array([B[s] - A[s] for s in range(4)])
  assert paired.test == 'paired' and paired.difference == pytest.approx(d.mean())
  half = 3.182446305284263 * d.std(ddof=1) / 2
  assert (paired.low, paired.high) == pytest.approx((d.mean() - half, d.mean() + half))
  assert paired.p == pytest.approx(stats.ttest_rel(list(B.values()), list(A.values())).pvalue)
  assert paired.resolved  # Every seed gained: the pairs tell.
  welch = statistics.compare(A, {s + 10: v for s, v in B.items()})
  assert welch.test == 'Welch' and not welch.resolved  # The seeds' spread hides it.
  assert welch.p == pytest.approx(stats.ttest_ind(list(B.values()), list(A.values()),
                                                  equal_var=False).pvalue)
  # The fewest seeds whose t-test has 80% power (noncentral t), s pooled.
  s = math.sqrt((np.var(list(A.values()), ddof=1) + np.var(list(B.values()), ddof=1)) / 2)
  n = welch.seeds_needed
  assert statistics.power(n, welch.difference, s, False) >= 0.8
  assert statistics.power(n - 1, welch.difference, s, False) < 0.8
  with pytest.raises(ValueError, match='at least 2 finished runs per group'):
    statistics.compare({0: 1.0}, B)


def test_seed_advice_comes_from_the_t_distribution():
  # A difference of 2 spreads: the normal approximation says 4 seeds per
  # group, where a t-test with 4 has far less than 80% power; 6 reach it.
  assert math.ceil(2 * ((1.959964 + 0.841621) * 0.5 / 1.0) ** 2) == 4
  # Power by simulation (20,000 experiments of 4 + 4 normal runs; its own
  # standard error 0.0034), independent of the noncentral t.
  rng = np.random.default_rng(0)
  x, y = rng.normal(0.0, 0.5, (20000, 4)), rng.normal(1.0, 0.5, (20000, 4))
  simulated = (stats.ttest_ind(y, x, axis=1).pvalue < 0.05).mean()
  assert statistics.power(4, 1.0, 0.5, False) == pytest.approx(simulated, abs=0.015)
  assert statistics.power(4, 1.0, 0.5, False) < 0.7
  assert statistics.seeds_needed(1.0, 0.5) == 6
  assert statistics.power(6, 1.0, 0.5, False) >= 0.8 > statistics.power(5, 1.0, 0.5, False)
  # Paired: df n - 1, so more pairs than groups of the same power.
  assert statistics.seeds_needed(1.0, 0.5, paired=True) >= 6


def test_runs_without_spread_support_no_test(recwarn):
  # Both seeds lost the same 13 of 1,017 images: every paired difference is
  # the same, so no interval and no p-value (scipy would give p = 9e-16).
  a, b = {0: 90.0, 1: 91.0}, {0: 90.0 - 1300 / 1017, 1: 91.0 - 1300 / 1017}
  c = statistics.compare(a, b)
  assert c.no_spread and not c.resolved and c.seeds_needed is None
  assert math.isnan(c.p) and math.isnan(c.low)
  assert statistics.compare({0: 1.0, 1: 1.0}, {2: 2.0, 3: 2.0}).no_spread  # Welch too.
  assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_the_same_seed_read_twice_is_one_sample(experiment):
  from resnet_jax import results
  rows = [results.summarize(w) if os.path.exists(os.path.join(w, 'run.json'))
          else results.planned(w) for w in results.expand([experiment])]
  copies = [dict(r) for r in rows]  # As read from a copy of the folder.
  table = results.group_table(groups.group(rows + copies), best=False)
  s = statistics.summarize(A.values())
  assert f"| 10 | 4 | {100 * s.mean:.2f} ± {100 * s.std:.2f} |" in table[2]
  assert '4 same seed again (seed 0,1,2,3)' in table[2]


def test_groups_are_recipes_named_by_what_differs(experiment, tmp_path):
  from resnet_jax import results
  rows = [results.summarize(w) if os.path.exists(os.path.join(w, 'run.json'))
          else results.planned(w) for w in results.expand([experiment])]
  # A runtime field (data_dir) never splits a group; the framework does.
  rows.append(results.summarize(_fake_run(str(tmp_path), 'moved', 9, [(2.0, 0.5)],
                                          data_dir='/elsewhere', log_every_steps=7)))
  rows.append(results.summarize(_fake_run(str(tmp_path), 'torch', 0, [(2.0, 0.5)],
                                          framework='torch 2.13.0+cpu eager')))
  found = groups.group(rows)
  assert [(g.name, len(g.runs)) for g in found] == [
      ('jax, label_smoothing=0', 6), ('jax, label_smoothing=0.1', 5),
      ('torch, label_smoothing=0', 1)]


def _results(*args):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.results', *args],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.slow
def test_results_table_and_compare_of_an_experiment(experiment):
  result = _results(experiment, '--compare=1,2')
  assert result.returncode == 0, result.stderr
  pct = lambda v: f'{100 * v:.2f}'
  rows = []
  for i, (name, values, left) in enumerate(
      (('label_smoothing=0', A, '1 pending (seed 4)'),
       ('label_smoothing=0.1', B, '1 diverged (seed 4)')), 1):
    s = statistics.summarize(values.values())
    rows.append(f'| {i} | {name} | jax | resnet8 | 5 | 4 | {pct(s.mean)} ± {pct(s.std)} | '
                f'{pct(s.low)} - {pct(s.high)} | {pct(s.min)} - {pct(s.max)} | 0-3 | '
                f'{left} |')
  c = statistics.compare({k: 100 * v for k, v in A.items()},
                         {k: 100 * v for k, v in B.items()})
  assert result.stdout.splitlines() == [
      '| # | group | framework | model | runs | n | test accuracy % (mean ± std) | '
      '95% interval of the mean | min - max | seeds | not in n |',
      '|---|---|---|---|---|---|---|---|---|---|---|', *rows, '',
      'eval_accuracy, final evaluation of each run', '',
      f'2 (label_smoothing=0.1) - 1 (label_smoothing=0): {c.difference:+.2f} points, 95% '
      f'interval [{c.low:+.2f}, {c.high:+.2f}] (paired over seeds 0-3, n = 4); '
      f'p = {c.p:.3g}']
  assert c.resolved
  # The band plot: one coloured band per group, not a blank image.
  from PIL import Image
  with Image.open(os.path.join(experiment, 'accuracy_bands.png')) as im:
    pixels = np.asarray(im.convert('RGB')).reshape(-1, 3).astype(int)
  blue = (np.abs(pixels - [31, 119, 180]).sum(1) < 30).sum()
  orange = (np.abs(pixels - [255, 127, 14]).sum(1) < 30).sum()
  assert blue > 100 and orange > 100


@pytest.mark.slow
def test_results_warns_when_n_cannot_tell(experiment, tmp_path):
  # Two seeds each, one of them swapped: the interval includes 0.
  small = str(tmp_path / 'small')
  plan_lib.write(small, _plan(seeds=[0, 1]))
  for point, values in (({'label_smoothing': 0.0}, {0: 0.45, 1: 0.47}),
                        ({'label_smoothing': 0.1}, {0: 0.47, 1: 0.46})):
    for seed, final in values.items():
      _fake_run(small, plan_lib.run_name(point, seed), seed, [(2.0, final)], **point)
  result = _results(small, '--compare=1,2')
  assert result.returncode == 0, result.stderr
  c = statistics.compare({0: 45.0, 1: 47.0}, {0: 47.0, 1: 46.0})
  assert c.seeds_needed > 2
  assert result.stdout.splitlines()[-1] == (
      'warning: n = 2 cannot tell this difference from noise (the interval includes 0); '
      f'about {c.seeds_needed} seeds per group would find a real difference of this size '
      '80% of the time, if the spread stays as it is')
  bad = _results(small, '--compare=1,3')
  assert bad.returncode == 2 and bad.stderr.strip() == (
      'error: --compare=1,3 names no two groups; pass two numbers of the # column (1 to '
      '2), e.g. --compare=1,2')


@pytest.mark.slow
def test_a_run_without_the_metric_shows_a_dash(experiment, tmp_path):
  from resnet_jax import results
  ema = _fake_run(str(tmp_path), 'ema', 0, [(2.0, 0.5)], ema_decay=0.9)
  with open(os.path.join(ema, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 100, 'ema_eval_accuracy': 0.52, 'epoch': 2.0}) + '\n')
  plain = os.path.join(experiment, 'label_smoothing=0,seed=0')
  result = _results('--metric=ema_eval_accuracy', ema, plain)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert '| 52.00% / 52.00% (ema_eval_accuracy) |' in lines[2]
  assert '| - / - (ema_eval_accuracy) |' in lines[3]
  assert lines[3].split(' | ')[2].endswith(', seed 0')  # The seed is in the recipe.
  assert results.summarize(plain, 'ema_eval_accuracy')['final_accuracy'] is None


def test_the_local_launcher_runs_one_run_per_gpu_group_at_a_time(tmp_path):
  from resnet_jax.experiments import local
  assert local.visible_gpus({'CUDA_VISIBLE_DEVICES': '2,3,5'}) == ['2', '3', '5']
  assert local.slots([], 1) == [{}]  # No GPU: one run at a time, as it is.
  slots = local.slots(['0', '1', '2', '3', '4'], 2)  # The fifth GPU stays idle.
  assert slots == [{'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
  with pytest.raises(errors.UserError, match='--gpus_per_run=3 but this host shows 2'):
    local.slots(['0', '1'], 3)

  class Fake:  # A run that ends after three polls.
    def __init__(self, env):
      self.env, self.polls = env, 0
    def poll(self):
      self.polls += 1
      return 0 if self.polls > 3 else None

  started, running, most = [], set(), [0]
  def spawn(command, env, log_path):
    proc = Fake(env['CUDA_VISIBLE_DEVICES'])
    running.add(proc)
    most[0] = max(most[0], len(running))
    started.append((command[0], proc.env, os.path.basename(log_path)))
    return proc
  ended = []
  def on_end(name, code):
    ended.append((name, code))
    running.difference_update({p for p in running if p.polls > 3})
  jobs = [(f'run{i}', [f'cmd{i}']) for i in range(5)]
  assert local.launch(jobs, slots, str(tmp_path), lambda *a: None, on_end, spawn=spawn,
                      poll_seconds=0) is None
  assert most[0] == 2 and sorted(ended) == [(f'run{i}', 0) for i in range(5)]
  assert started[:2] == [('cmd0', '0,1', 'run0.log'), ('cmd1', '2,3', 'run1.log')]
  # A freed slot's GPUs go to the next run: every run saw one group only.
  assert {env for _, env, _ in started} == {'0,1', '2,3'}


def _fake_squeue(tmp_path, monkeypatch, queue):
  """squeue on PATH answering every query from `queue` ('id|state' lines, as
  `-o %i|%T` prints them; `-o %T` gets the first state), its arguments
  appended to tmp_path/CALLS."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (tmp_path / 'QUEUE').write_text(queue)
  (bin_dir / 'squeue').write_text(
      f'#!/bin/sh\necho "$*" >> {tmp_path}/CALLS\n'
      f"case \"$*\" in *'%i|%T'*) cat {tmp_path}/QUEUE ;;\n"
      f"*) head -1 {tmp_path}/QUEUE | cut -d'|' -f2 ;; esac\n")
  (bin_dir / 'squeue').chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}:{os.environ["PATH"]}')


def test_a_job_preempted_by_cancel_has_ended(tmp_path, monkeypatch):
  # After PreemptMode=CANCEL ended a job, `squeue -t all` (or a user's
  # SQUEUE_STATES=all) shows it PREEMPTED for MinJobAge, as SLURM 22.05 did
  # here: a rerun resubmits the run, and --wait stops waiting for it.
  pytest.importorskip('submitit')
  from resnet_jax.experiments import slurm
  _fake_squeue(tmp_path, monkeypatch,
               '4242_0|PREEMPTED\n4242_1|COMPLETING\n4242_[2-3]|PENDING\n')
  launch = {'launcher': 'slurm', 'job_id': '4242', 'runs': [f'seed={i}' for i in range(4)]}
  assert slurm.active([launch]) == {'seed=1': 'COMPLETING', 'seed=2': 'PENDING',
                                    'seed=3': 'PENDING'}
  # What experiment._wait asks of a task whose result never came.
  assert slurm.job_state('4242_0') == 'PREEMPTED'
  assert slurm.job_state('4242_0') not in slurm.ACTIVE_STATES
  # Every state asked for: a user's SQUEUE_STATES=R would hide pending tasks.
  calls = (tmp_path / 'CALLS').read_text().splitlines()
  assert len(calls) == 3 and all(' -t all ' in f' {c} ' for c in calls), calls


# A resumed run, as the task starts it: trims metrics.jsonl back to its
# checkpoint as MetricsWriter does, trains GAIN steps, warns its task as SLURM
# does before the time limit, and on the task's SIGTERM saves a checkpoint
# (if it trained) and exits 143.
_RESUMED_RUN = '''
import json, os, signal, sys, time
workdir, gain = sys.argv[sys.argv.index('--workdir') + 1], int(sys.argv[1])
restored = max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')))
path = os.path.join(workdir, 'metrics.jsonl')
kept = [l for l in open(path) if json.loads(l)['step'] <= restored]
with open(path, 'w') as f:
  f.writelines(kept + [json.dumps({'step': s}) + '\\n'
                       for s in range(restored + 1, restored + gain + 1)])

def stop(*_):
  if gain:
    os.makedirs(os.path.join(workdir, 'checkpoints', str(restored + gain)))
  sys.exit(143)

signal.signal(signal.SIGTERM, stop)
os.kill(os.getppid(), signal.SIGUSR2)
while True:
  time.sleep(1)
'''


@pytest.mark.skipif(sys.platform != 'linux', reason='signals between processes')
@pytest.mark.parametrize('gain', [20, 0])
# RunTask forks (its preexec_fn ignores SIGUSR2). In use it runs in
# submitit's job process, where no JAX backend starts; this test calls it in
# the pytest worker, where an earlier file started one, so JAX's fork hook
# warns of its threads.
@pytest.mark.filterwarnings(r'ignore:os\.fork\(\) was called:RuntimeWarning')
def test_no_progress_is_judged_by_checkpoints_not_by_a_killed_attempts_metrics(
    tmp_path, gain):
  pytest.importorskip('submitit')
  from resnet_jax.experiments import slurm
  # A kill -9 after step 140 of an attempt whose last checkpoint is step 100.
  workdir = tmp_path / 'exp' / 'seed=0'
  (workdir / 'checkpoints' / '100').mkdir(parents=True)
  (workdir / 'run.json').write_text(json.dumps({'framework': 'jax', 'config': {}, 'sessions': [
      {'started': '2026-12-01T08:00:00+00:00', 'start_step': 0, 'num_steps': 1000}]}))
  (workdir / 'metrics.jsonl').write_text(
      ''.join(json.dumps({'step': s, 'train_loss': 1.0}) + '\n' for s in range(10, 141, 10)))
  script = tmp_path / 'resumed_run.py'
  script.write_text(_RESUMED_RUN)
  command = [sys.executable, str(script), str(gain), '--workdir', str(workdir)]
  log_path = str(tmp_path / 'exp' / 'logs' / 'seed=0.log')
  task, requeue = slurm.RunTask(), []

  class Exited(Exception):
    """submitit ends the task once `checkpoint` has answered."""

  def on_usr2(signum, frame):  # submitit's handler, reduced to what decides.
    requeue.append(task.checkpoint('seed=0', command, log_path))
    raise Exited

  old = signal.signal(signal.SIGUSR2, on_usr2)
  try:
    with pytest.raises(Exited):
      task('seed=0', command, log_path)
  finally:
    signal.signal(signal.SIGUSR2, old)
  with open(os.path.join(tmp_path, 'exp', 'logs', 'seed=0.json')) as f:
    outcome = json.load(f)
  if gain:  # Step 120 is past the checkpoint it resumed from, not past step 140.
    assert requeue[0] is not None, outcome
    assert (outcome['outcome'], outcome['reason']) == ('stopped',
                                                       'time limit at step 120; requeued')
  else:
    assert requeue == [None]
    assert (outcome['outcome'], outcome['reason']) == ('failed', (
        'no progress before the time limit (no checkpoint after step 100); raise '
        '--time_minutes'))


@pytest.mark.slow
def test_the_pytorch_twin_is_refused_on_the_launchers_that_requeue(tmp_path):
  twin = os.path.join(REPO, 'benchmarks', 'torch_baseline.py')
  experiment = lambda *args: subprocess.run(
      [sys.executable, '-m', 'resnet_jax.experiment', *args], capture_output=True,
      text=True, cwd=REPO, timeout=120)
  message = lambda launcher: (
      f'error: --launcher={launcher} requeues a task at its time limit and on preemption, '
      'and only resnet_jax.main resumes from its checkpoint: each attempt of '
      f'{twin} (the PyTorch twin keeps no checkpoints) would start again at step 0; use '
      '--launcher=local (on a cluster, inside one allocation long enough for all the runs)')
  for split in ('train', 'test'):  # An image folder the config validates against.
    (tmp_path / 'data' / 'tiny' / split / 'a').mkdir(parents=True)
  data = {'dataset': 'tiny', 'data_dir': str(tmp_path / 'data')}
  new = tmp_path / 'new'
  result = experiment('--config', 'configs/imagenet.py:resnet18', '--workdir', str(new),
                      *[f'--config.{k}={v}' for k, v in data.items()],
                      '--program=benchmarks/torch_baseline.py', '--launcher=slurm')
  assert (result.returncode, result.stderr.strip()) == (2, message('slurm'))
  assert not new.exists()
  # A twin experiment run locally so far: a rerun on submitit_local is refused
  # at planning, before even a dry run prints its plan.
  old = str(tmp_path / 'old')
  plan_lib.write(old, plan_lib.Plan(os.path.join(REPO, 'configs', 'imagenet.py:resnet18'),
                                    data, [{}], [0], program=twin))
  before = open(os.path.join(old, 'experiment.json')).read()
  result = experiment('--workdir', old, '--launcher=submitit_local', '--dry_run')
  assert (result.returncode, result.stderr.strip(), result.stdout) == (
      2, message('submitit_local'), '')
  assert os.listdir(old) == ['experiment.json']
  assert open(os.path.join(old, 'experiment.json')).read() == before


@pytest.mark.slow
def test_a_run_writes_how_it_ended_before_it_frees_its_lock(tiny_data, tmp_path, monkeypatch):
  # An experiment's status reads a free lock as "not running" and then
  # run.json: a stopped run released its lock first, and a status read in
  # between called it crashed (seen in CI after a killed launcher).
  from resnet_jax.training import loop
  from resnet_jax.workdir import run_lock
  from resnet_jax.workdir import run_record
  from tests.conftest import tiny_config
  workdir = str(tmp_path / 'w')
  seen = []
  real = run_record.end_session

  def end_session(folder, outcome):
    seen.append((run_lock.is_held(folder), run_status.of(folder).kind))
    real(folder, outcome)

  def stopped(run, initial):
    raise errors.Stopped('SIGTERM at step 0; resume with the same command', 143)

  monkeypatch.setattr(run_record, 'end_session', end_session)
  monkeypatch.setattr(loop, '_train', stopped)
  with pytest.raises(errors.Stopped):
    loop.train_and_evaluate(tiny_config(tiny_data['data_dir']), workdir)
  assert seen == [(True, run_status.RUNNING)]
  assert not run_lock.is_held(workdir)  # And freed after.
