r"""ImageNet's scale, end to end, on a stand-in of its shape (issue 44).

  python benchmarks/imagenet_scale.py ROOT             # 1,000 x 1,281 + 50,000: all
  python benchmarks/imagenet_scale.py ROOT --classes 10 --per_class 20 --val 50 \
      --only=epoch,start                               # seconds
  python benchmarks/imagenet_scale.py ROOT --only= --official   # only write it

Writes the stand-in once (`imagenet_standin`: the arranged folder
ROOT/imagenet2012, and with --official or when `prepare` is measured the
official files in ROOT/official), then runs each measurement (--only picks
some) as a subprocess, timed by the wall clock, its process tree's memory
sampled from /proc every 0.25 s (`process_tree`: RSS and PSS per process;
the peak RSS of a process that exits from wait4's rusage, of one killed from
its VmHWM):
- prepare: `prepare_data --imagenet` on the official files: wall, files/s,
  MB/s of the tars, peak RSS and the RSS at its first progress line (a
  minute in, past the start-up: flat?);
- start: ResNet-18 at 32 px, batch 64, 20 steps, killed --settle s after
  its first step: the listing, the model set-up (Model -> Training), the
  first step (compilation included); again with --config.input_workers=2 for each
  worker's RSS/PSS;
- resume: checkpoints every 6 steps, kill -9 once step 10 is logged, the
  same command again: time to its first step, the loader state's bytes in
  the checkpoint, the losses of the steps run twice (equal: same batches);
- epoch: the epoch boundary (numpy's permutation of N files, against the
  loader's first file of a new epoch: grain's index_shuffle) at the
  stand-in's N and at --epoch_files (ImageNet's 1,281,167), and what each
  grain worker is sent (the pickled example source; the file list in shared
  memory) and caches;
- eval: `--mode=eval` of the resume run's checkpoint over the val split:
  time, and the progress lines it logs (one per 20 s);
- two: `./launch.sh --nproc 2` on CPU (one device each), killed after the
  first step: process 0's listing, each process's peak RSS and PSS.
Prints a Markdown table with the issue's goal beside each row, then one JSON
line (date, machine, command, every number). Runs and their logs go in
ROOT/runs/<time>/.
Disk at full size: ~5.5 GB for the folder (a block per file), ~1.5 GB for
the official files, and prepare's copy another 5.5 GB while it is measured.
"""

import argparse
import json
import os
import pickle
import re
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import imagenet_standin  # pylint: disable=wrong-import-position
import process_tree  # pylint: disable=wrong-import-position

Watched = process_tree.Watched
MEASUREMENTS = ('prepare', 'start', 'resume', 'epoch', 'eval', 'two')
IMAGENET_TRAIN = 1281167
MB = 1e6
STEP = r'Step (\d+)/\d+ done in ([\d.]+) s'
LISTED = r'Listed ([\d,]+) training and ([\d,]+) \w+ images in ([\d.]+) s'


class Failed(Exception):
  """A measurement that could not be made; the table says why."""


def _need(hit, w: Watched, what: str):
  if hit is None:
    w.kill()
    raise Failed(f'{what} never came (exit {w.code}):\n{w.tail()}')
  return hit


def _mb(n: float) -> str:
  """Bytes in the unit that shows them (a tiny stand-in's are KB)."""
  for unit, size in (('GB', 1e9), ('MB', MB), ('KB', 1e3)):
    if n >= size:
      return f'{n / size:,.{1 if n < 10 * size else 0}f} {unit}'
  return f'{n:.0f} B'


def _log(ctx, name: str) -> str:
  return os.path.join(ctx.work, f'{name}.log')


def _train_cmd(ctx, workdir: str, *extra) -> list:
  return ([sys.executable, '-m', 'resnet_jax.main', '--config', 'configs/imagenet.py:resnet18',
           '--workdir', workdir] + _overrides(ctx) + list(extra))


def _overrides(ctx) -> list:
  # 20 steps at 32 px: no warm-up, no resizing, one step a call, no
  # evaluation before the end (a tiny stand-in's epoch is a few steps).
  return [f'--config.data_dir={ctx.root}', '--config.image_size=32',
          '--config.final_image_size=0', '--config.eval_image_size=0',
          '--config.batch_size=64', '--config.num_train_steps=20', '--config.warmup_epochs=0',
          '--config.steps_per_call=1', '--config.eval_every_epochs=1000']


def measure_prepare(ctx) -> list:
  from resnet_jax.data import ilsvrc
  out = os.path.join(ctx.root, 'prepared')
  shutil.rmtree(out, ignore_errors=True)
  source = os.path.join(ctx.root, 'official')
  w = Watched([sys.executable, '-m', 'resnet_jax.prepare_data', f'--imagenet={source}',
               f'--data_dir={out}'], ctx.env, REPO, _log(ctx, 'prepare'))
  if w.wait(ctx.timeout) != 0:
    raise Failed(f'prepare_data exited {w.code}:\n{w.tail()}')
  seconds = w.seconds()
  m = _need(w.find(r'(\d+) train and (\d+) val images of (\d+) classes', 0), w, 'its summary')[1]
  files = int(m[1]) + int(m[2])
  tars = sum(os.path.getsize(os.path.join(source, f)) for f in (ilsvrc.TRAIN_TAR, ilsvrc.VAL_TAR))
  # The copy's first progress line (after a minute) is past the start-up.
  line = w.find(r'Arranging ILSVRC-2012: ', 0)
  early = [rss for s, rss in w.series if line and s >= line[0]]
  peak, first = w.peak_rss(), early[0] if early else 0
  flat = ('n/a (no progress line: under a minute)' if not early
          else 'yes' if peak - first < 0.1 * peak + 20 * MB else 'no')
  if not ctx.keep:
    shutil.rmtree(out, ignore_errors=True)
  ctx.record['prepare'] = dict(seconds=round(seconds, 2), train=int(m[1]), val=int(m[2]),
                               classes=int(m[3]), files_per_s=round(files / seconds),
                               mb_per_s=round(tars / MB / seconds, 1), peak_rss=peak,
                               rss_at_first_progress=first)
  rate = tars / MB / seconds
  return [('prepare_data: arranged', f'{int(m[1]):,} train + {int(m[2]):,} val files '
           f'in {seconds:.1f} s with start-up ({files / seconds:,.0f} files/s)', '', ''),
          ('prepare_data: rate', f'{rate:,.1f} MB/s of tars', '>= 100 MB/s (local disk)',
           'yes' if rate >= 100 else 'no'),
          ('prepare_data: memory', f'peak RSS {_mb(peak)}' + (
              f', {_mb(first)} at the first progress line' if early else ''),
           'flat in the file count', flat)]


def _start_run(ctx, name: str, *extra) -> Watched:
  """A 20-step run up to its first step (+ --settle s), killed there."""
  w = Watched(_train_cmd(ctx, os.path.join(ctx.work, name), *extra), ctx.env, REPO,
              _log(ctx, name))
  _need(w.find(STEP, ctx.timeout), w, 'the first step')
  time.sleep(ctx.settle)
  w.kill()
  return w


def measure_start(ctx) -> list:
  w = _start_run(ctx, 'start')
  first, step, _ = w.find(STEP, 0)
  listed = w.find(LISTED, 0)
  model, training = w.find(r'Model \w+: ', 0), w.find(r'Training \w+ on ', 0)
  setup = training[0] - model[0] if model and training else float('nan')
  input_line = w.find(r'Input: .* by (.*?),', 0)
  without = first - float(step[2])
  ctx.record['start'] = dict(first_step_s=round(first, 1), first_call_s=float(step[2]),
                             listing_s=float(listed[1][3]) if listed else None,
                             model_setup_s=round(setup, 1), peak_rss=w.peak_rss())
  rows = [('start: listing', f'{listed[1][3]} s ({listed[1][1]} train + {listed[1][2]} val)'
           if listed else 'no Listed line', '', ''),
          ('start: first step', f'{first:.1f} s after start; its call {step[2]} s '
           f'(compilation included); model set-up (Model -> Training: the parameters\' '
           f'initialisation) {setup:.1f} s',
           '<= 30 s without compilation', 'yes' if without <= 30 else 'no'),
          ('start: peak RSS', f'{_mb(w.peak_rss())} (input: '
           f'{input_line[1][1] if input_line else "?"})', '', '')]
  w2 = _start_run(ctx, 'start_workers', '--config.input_workers=2')
  main = w2.procs.get(w2.proc.pid, {})
  workers = [p for pid, p in w2.procs.items()
             if pid != w2.proc.pid and 'resource_tracker' not in p['cmd']]
  ctx.record['start']['workers'] = [dict(rss=p['rss'], pss=p['pss'], uss=p['uss'])
                                    for p in workers]
  ctx.record['start']['workers_main_rss'] = main.get('hwm', 0)
  rows.append(('start: 2 workers', ', '.join(
      f'RSS {_mb(p["rss"])} PSS {_mb(p["pss"])} USS {_mb(p["uss"])}' for p in workers)
      + f' per process; '
      f'training process {_mb(main.get("hwm", 0))}', 'independent of the file count',
      'see the epoch rows'))
  return rows


def _losses(workdir: str) -> dict:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    lines = [json.loads(l) for l in f if l.strip()]
  return {l['step']: l['train_loss'] for l in lines if 'train_loss' in l}


def _checkpoints(workdir: str) -> list:
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _killed_run(ctx) -> tuple:
  """A run checkpointed at step 6 and killed -9 once step 10 is logged:
  (workdir, its command, the steps it logged, its newest checkpoint)."""
  if 'killed' not in ctx.record:
    workdir = os.path.join(ctx.work, 'resume')
    cmd = _train_cmd(ctx, workdir, '--config.checkpoint_every_steps=6',
                     '--config.log_every_steps=2')
    w = Watched(cmd, ctx.env, REPO, _log(ctx, 'resume_killed'))
    if not w.until(lambda: max(_losses(workdir), default=0) >= 10 and _checkpoints(workdir),
                   ctx.timeout):
      w.kill()
      raise Failed(f'the run to kill never logged step 10:\n{w.tail()}')
    w.kill()
    ctx.record['killed'] = (workdir, cmd, _losses(workdir), _checkpoints(workdir)[-1])
  return ctx.record['killed']


def measure_resume(ctx) -> list:
  workdir, cmd, before, saved = _killed_run(ctx)
  w = Watched(cmd, ctx.env, REPO, _log(ctx, 'resume'))
  first = _need(w.find(STEP, ctx.timeout), w, 'the first resumed step')[0]
  resumed = w.find(r'loader state of the checkpoint', 0) is not None
  w.until(lambda: max(_losses(workdir), default=0) >= max(before), 120)
  w.kill()
  after = _losses(workdir)
  again = sorted(s for s in before if s > saved and s in after)
  equal = all(before[s] == after[s] for s in again)
  data = os.path.join(workdir, 'checkpoints', str(saved), 'data')
  size = sum(os.path.getsize(os.path.join(top, f)) for top, _, files in os.walk(data)
             for f in files)
  ctx.record['resume'] = dict(first_step_s=round(first, 1), checkpoint=saved,
                              loader_state_bytes=size, from_loader_state=resumed,
                              steps_compared=again, losses_equal=equal)
  return [('resume: first step', f'{first:.1f} s after the restart (from step {saved}, '
           f'{"the loader state" if resumed else "NOT the loader state"})', '', ''),
          ('resume: loader state', f'{size:,} bytes in checkpoint {saved}',
           'independent of the file count', ''),
          ('resume: same batches', f'losses of steps {again} '
           f'{"equal" if equal else "DIFFER"}', 'bitwise', 'yes' if equal and again else 'no')]


def probe_epoch(root: str, sizes: list) -> dict:
  """In a subprocess of its own: the epoch boundary's cost at each file count."""
  from resnet_jax.data import file_loader
  from resnet_jax.data import image_folder
  out = {}
  for n in sizes:
    if n == 'standin':
      started = time.perf_counter()
      split = image_folder.file_split(os.path.join(root, 'imagenet2012'), 'train')
      listing = time.perf_counter() - started
    else:
      names = [b'n%08d/n%08d_%d.JPEG' % (i % 1000, i % 1000, i) for i in range(n)]
      split = file_loader.FileSplit(root, np.asarray(names, dtype=bytes),
                                    np.arange(n, dtype=np.int32) % 1000, ('c',) * 1000)
      listing = None
    examples = file_loader.TrainExamples(split, 64, 0, 32)
    # As grain sends it to a worker process (`TrainBatches`): the file list
    # in shared memory, no order cached.
    sent = len(pickle.dumps(examples.sharing()))
    numpy_s, ours_s = [], []
    for epoch in range(3):
      started = time.perf_counter()
      np.random.default_rng([0, 0, epoch]).permutation(len(split))
      numpy_s.append(time.perf_counter() - started)
      started = time.perf_counter()  # The first file of a new epoch.
      examples.file_at(epoch + 10, 0)
      ours_s.append(time.perf_counter() - started)
    examples.file_at(9, 0)
    out[str(n)] = dict(files=len(split), listing_s=listing, numpy_s=min(numpy_s),
                       permutation_s=min(ours_s), sent_to_worker=sent,
                       file_list_bytes=split.paths.nbytes + split.labels.nbytes,
                       cached_orders_bytes=sum(p.nbytes for p in examples._perms.values()))  # pylint: disable=protected-access
  return out


def measure_epoch(ctx) -> list:
  w = Watched([sys.executable, os.path.abspath(__file__), ctx.root, '--probe_epoch',
               f'standin,{ctx.epoch_files}'], ctx.env, REPO, _log(ctx, 'epoch'))
  if w.wait(ctx.timeout) != 0:
    raise Failed(f'the probe exited {w.code}:\n{w.tail()}')
  probe = json.loads(w.lines[-1][1])
  ctx.record['epoch'] = dict(probe, peak_rss=w.peak_rss())
  (a, b), rows = sorted(probe.values(), key=lambda p: p['files']), []
  # What a worker is sent per file: from the two file counts where they are
  # far apart (a constant part cancels), else the larger's average.
  far = b['files'] > 2 * a['files']
  slope = ((b['sent_to_worker'] - a['sent_to_worker']) / (b['files'] - a['files']) if far
           else b['sent_to_worker'] / max(1, b['files']))
  grows = f'no: {slope:.0f} B per file' if slope > 1 else 'yes'
  for key, p in probe.items():
    where = f'{p["files"]:,} files' + (' (the stand-in)' if key == 'standin' else '')
    slowest = max(p['numpy_s'], p['permutation_s'])
    rows.append((f'epoch: boundary, {where}', f'the first file {p["permutation_s"]:.6f} s '
                 f'(numpy\'s permutation {p["numpy_s"]:.3f} s)' + (
                     f'; listing {p["listing_s"]:.2f} s' if p['listing_s'] else ''),
                 '<= 1 s', 'yes' if slowest <= 1 else 'no'))
    rows.append((f'epoch: each worker holds, {where}', f'{p["sent_to_worker"]:,} bytes sent '
                 f'(the file list, {_mb(p["file_list_bytes"])}, in shared memory once per '
                 f'host) + {_mb(p["cached_orders_bytes"])} of cached orders',
                 'independent of the file count', grows))
  return rows


def measure_eval(ctx) -> list:
  workdir = _killed_run(ctx)[0]
  w = Watched([sys.executable, '-m', 'resnet_jax.main', '--workdir', workdir, '--mode=eval'],
              ctx.env, REPO, _log(ctx, 'eval'))
  if w.wait(ctx.timeout) != 0:
    raise Failed(f'--mode=eval exited {w.code}:\n{w.tail()}')
  start = _need(w.find(r'Evaluating step \d+ on ([\d,]+)', 0), w, 'Evaluating')
  end = _need(w.find(r'Evaluated step \d+: ', 0), w, 'Evaluated')
  progress = [l for _, l in w.lines[start[2] + 1:end[2]] if re.search(r' of [\d,]+ done', l)]
  seconds = end[0] - start[0]
  ctx.record['eval'] = dict(images=start[1][1], seconds=round(seconds, 1),
                            progress_lines=len(progress), wall_s=round(w.seconds(), 1),
                            peak_rss=w.peak_rss())
  return [('eval: val split', f'{start[1][1]} images in {seconds:.1f} s ({w.seconds():.1f} s '
           f'with start-up), peak RSS {_mb(w.peak_rss())}', '', ''),
          ('eval: progress lines', f'{len(progress)}' + (f' (last: {progress[-1][:70]})'
           if progress else ''), 'one per 20 s', 'yes' if progress or seconds < 20 else 'no')]


def measure_two(ctx) -> list:
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  # CPU, one device each: this measures listing and memory, not speed.
  # Empty CUDA_VISIBLE_DEVICES: launch.sh splits no GPUs.
  env = dict(ctx.env, PYTHON=sys.executable, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='',
             JAX_ENABLE_COMPILATION_CACHE='false',
             XLA_FLAGS=' '.join(flags + ['--xla_force_host_platform_device_count=1']))
  w = Watched(['./launch.sh', 'configs/imagenet.py:resnet18', os.path.join(ctx.work, 'two'),
               '--nproc', '2'] + _overrides(ctx), env, REPO, _log(ctx, 'two'))
  first = _need(w.find(STEP, ctx.timeout), w, 'the first step')[0]
  time.sleep(ctx.settle)
  w.kill()
  listed = w.find(LISTED, 0)
  each = {}
  for pid, p in w.procs.items():
    m = re.search(r'--process_id=(\d+)', p['cmd'])
    if m:
      workers = [q for q in w.descendants(pid) if 'resource_tracker' not in q['cmd']]
      each[int(m[1])] = dict(rss=p['hwm'], pss=p['pss'], workers=len(workers),
                             workers_rss=sum(q['rss'] for q in workers))
  ctx.record['two'] = dict(first_step_s=round(first, 1), listing_s_process0=float(
      listed[1][3]) if listed else None, processes=each)
  return [('two processes: first step', f'{first:.1f} s; process 0 listed all '
           f'{listed[1][1]} + {listed[1][2]} files in {listed[1][3]} s' if listed
           else f'{first:.1f} s', 'each lists only its share', ''),
          ('two processes: memory', '; '.join(
              f'process {i}: RSS {_mb(p["rss"])} PSS {_mb(p["pss"])}'
              + (f' + {p["workers"]} workers {_mb(p["workers_rss"])}' if p['workers'] else '')
              for i, p in sorted(each.items())), 'each holds only its share', '')]


# ------------------------------------------------------------------------ main


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('root', help='folder for the stand-in (written once) and the runs')
  parser.add_argument('--classes', type=int, default=1000)
  parser.add_argument('--per_class', type=int, default=1281)
  parser.add_argument('--val', type=int, default=50000)
  parser.add_argument('--sizes', default='16,64', help='smallest,largest side in px')
  parser.add_argument('--noise', type=float, default=6.0,
                      help="the images' noise: larger files (48 at --sizes 350,500: "
                      "ImageNet's ~110 KB a file)")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--official', action='store_true',
                      help='write the official files even if prepare is not measured')
  parser.add_argument('--only', default=','.join(MEASUREMENTS),
                      help=f'comma-separated, of {",".join(MEASUREMENTS)}')
  parser.add_argument('--rewrite', action='store_true', help='write the stand-in anew')
  parser.add_argument('--keep', action='store_true', help="keep prepare_data's output")
  parser.add_argument('--settle', type=float, default=5.0,
                      help='seconds a run goes on after its first step before the kill')
  parser.add_argument('--epoch_files', type=int, default=IMAGENET_TRAIN)
  parser.add_argument('--timeout', type=float, default=3600.0, help='per run, seconds')
  parser.add_argument('--probe_epoch', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.probe_epoch:
    print(json.dumps(probe_epoch(args.root, [s if s == 'standin' else int(s)
                                             for s in args.probe_epoch.split(',')])))
    return
  only = [m for m in args.only.split(',') if m]
  unknown = sorted(set(only) - set(MEASUREMENTS))
  if unknown:
    parser.error(f'--only takes {",".join(MEASUREMENTS)}, not {",".join(unknown)}')
  sizes = tuple(int(s) for s in args.sizes.split(','))
  if len(sizes) != 2 or not 8 <= sizes[0] <= sizes[1]:
    parser.error(f'--sizes takes MIN,MAX with 8 <= MIN <= MAX, not {args.sizes}')
  if args.classes < 1 or args.per_class < 1 or args.val < args.classes:
    # image_folder refuses a class without images in either split.
    parser.error('every class needs images in both splits: --classes >= 1, --per_class >= 1 '
                 f'and --val >= --classes ({args.classes})')
  root = os.path.abspath(args.root)
  if args.rewrite:
    imagenet_standin.remove(root)
  os.makedirs(root, exist_ok=True)
  shape = dict(classes=args.classes, per_class=args.per_class, val=args.val,
               sizes=list(sizes), seed=args.seed)
  if args.noise != 6.0:  # Stand-ins written before the flag have 6.
    shape['noise'] = args.noise
  standin = imagenet_standin.write_standin(root, shape, args.official or 'prepare' in only)
  work = os.path.join(root, 'runs', time.strftime('%Y%m%d-%H%M%S'))
  os.makedirs(work)
  ctx = argparse.Namespace(root=root, work=work, settle=args.settle, keep=args.keep,
                           timeout=args.timeout, epoch_files=args.epoch_files, record={},
                           env=dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED='1'))
  rows = [('stand-in', f'{standin["train"]:,} train + {standin["val_files"]:,} val files, '
           f'{_mb(standin["train_bytes"] + standin["val_bytes"])}; written in '
           f'{standin["arranged_seconds"]} s' + (f', official files in '
           f'{standin["official_seconds"]} s' if standin['official_seconds'] else ''), '', '')]
  failed = []
  for name in only:
    print(f'== {name}', file=sys.stderr, flush=True)
    try:
      rows += globals()[f'measure_{name}'](ctx)
    except Failed as e:
      failed.append(name)
      rows.append((name, f'FAILED: {str(e).splitlines()[0]}', '', 'no'))
      print(e, file=sys.stderr)
  ctx.record.pop('killed', None)
  print('| measurement | value | goal | met |\n|---|---|---|---|')
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')
  cpu = re.findall(r'model name\s*: (.*)', open('/proc/cpuinfo').read())[:1]
  print(json.dumps({'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': os.uname().nodename,
                    'cpu': ''.join(cpu), 'cores': os.cpu_count(), 'command': ' '.join(sys.argv),
                    'standin': standin, **ctx.record}))
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
