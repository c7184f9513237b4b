"""The training loop of a run: resume, train, evaluate, checkpoint, stop."""

import collections
import json
import os
import signal
import time
from typing import Optional

import jax
import ml_collections

from resnet_jax import errors
from resnet_jax.data import augmentations
from resnet_jax.data import batch_workers
from resnet_jax.data import datasets
from resnet_jax.data import device_pipeline
from resnet_jax.data import file_loader
from resnet_jax.data import input_pipeline
from resnet_jax.logs import log
from resnet_jax.parallelism import data_parallel
from resnet_jax.parallelism import distributed
from resnet_jax.parallelism import process_gather
from resnet_jax.reporting import metrics_io
from resnet_jax.reporting import progress
from resnet_jax.reporting import summary
from resnet_jax.training import evaluation
from resnet_jax.training import init_from
from resnet_jax.training import run_setup
from resnet_jax.training import train_state
from resnet_jax.workdir import config_validation
from resnet_jax.workdir import preemption
from resnet_jax.workdir import run_record


# How the start-up line says where batches come from.
PIPELINE_WORDS = {'device': 'made on the device', 'host': 'made on the host',
                  'files': 'decoded from the files on the host'}
# Calls dispatched but maybe not yet run by the device, at most.
MAX_CALLS_IN_FLIGHT = 2


def _report_resume(run: run_setup.Run, devices: dict) -> None:
  """One line for what a resume changes: runtime fields and devices."""
  if run.runtime_changes:
    log.info('Resuming with changed settings that leave the numbers alone: %s',
             ', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b)
                       in sorted(run.runtime_changes.items())))
  record = run_record.read(run.workdir) if jax.process_index() == 0 else None
  before = record['sessions'][-1] if record and record.get('sessions') else None
  if before and (before.get('device_count'), before.get('parallelism')) != (
      devices['device_count'], devices['parallelism']):
    log.info('Resuming on %d device(s) with %s; the checkpoint was written on %s '
             'with %s. The numbers differ only by float rounding.',
             devices['device_count'], devices['parallelism'],
             before.get('device_count'), before.get('parallelism'))


def eval_steps(num_steps: int, batch: int, num_examples: int, every: float) -> set:
  """Steps after which a (possibly fractional) epoch multiple is completed."""
  span = num_examples * every
  return {s for s in range(1, num_steps + 1)
          if (s * batch) // span > ((s - 1) * batch) // span} | {num_steps}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`), evaluating
  after every `eval_every_epochs` epochs and at the end.

  Returns:
    The last evaluation's metrics.
  """
  finished = finished_step(config, workdir)
  if finished is not None:  # Known from its files: no data read, nothing written.
    _, source = run_setup.preflight(config)
    return _finished(workdir, finished, datasets.split_name(source, 'test'))
  run = run_setup.Run(config, workdir, need_train=True)
  if run.ckpt.latest_step() == run.num_steps:
    run.release()
    # Nothing to do, nothing written.
    return _finished(workdir, run.num_steps, run.test_name)
  initial = None
  if config.init_from and run.ckpt.latest_step() is None:
    # Read (and maybe refused) before the workdir is touched.
    init = init_from.init_from_run if os.path.isdir(config.init_from) else init_from.init_from_torch
    initial = init(run.init_state(), config, run.num_classes)
  run.hold(write_checkpoints=True)
  outcome, together, own_fault = {}, False, False
  try:
    result = _train(run, initial)
    key, value = evaluation.headline(result)
    outcome.update({'final_step': run.num_steps, key: value})
    together = True
    return result
  except errors.Stopped as e:
    outcome.update(stopped=str(e), exit_code=e.exit_code)
    together, own_fault = e.every_process, True
    raise
  except errors.UserError:
    own_fault = True
    raise
  finally:
    if not together and jax.process_count() > 1:
      # The others would wait for it in a collective.
      distributed.leave_alone(own_fault)
    try:
      run.ckpt.close()  # Every save done before run.json says how the run ended.
      skipped = dict(run.skipped)
      if together:  # Each process read its own files: run.json lists them all.
        for other in process_gather.allgather_json(run.skipped):
          skipped.update(other)
      if skipped:
        outcome['skipped_files'] = dict(sorted(skipped.items()))
      if jax.process_index() == 0:
        run_record.end_session(workdir, outcome)
    finally:
      # The lock last: whoever finds it free (an experiment's status, the
      # next run) finds run.json telling how this run ended, not a crash.
      run.release()


def finished_step(config: ml_collections.ConfigDict, workdir: str) -> Optional[int]:
  """The last step of the complete run in `workdir`, read from run.json and
  the checkpoint folders alone, when `config` asks for that same recipe;
  None otherwise (a new, partial or different run: `run_setup.Run` decides)."""
  if jax.process_count() > 1:  # Every process must take the same path.
    return None
  record = run_record.read(workdir)
  if not record:
    return None
  recipe, _ = config_validation.config_changes(record.get('config', {}), config)
  steps = run_record.checkpoint_steps(workdir)
  last = run_record.completed_step(workdir, record)
  if last is None or recipe or not steps or max(steps) != last:
    return None
  return last


def _finished(workdir: str, num_steps: int, test_name: str = 'test') -> dict:
  """A complete run started again: says so and returns its last evaluation
  (`test_name`: the evaluation split as the data names it, e.g. 'val')."""
  evals = [l for l in metrics_io.read_lines(workdir) if evaluation.headline(l)]
  last = evals[-1] if evals else {}
  accuracy = 'no evaluation recorded'
  if last:
    key, value = evaluation.headline(last)
    split = 'validation' if key.startswith('val') else test_name
    accuracy = f"{split} accuracy {100 * value:.2f}% at step {last['step']}"
  log.info('%s holds a complete run (step %d of %d, %s); nothing to do. '
           '--mode=eval evaluates it; a new --workdir starts a new run.',
           workdir, num_steps, num_steps, accuracy)
  return {k: v for k, v in last.items() if k.startswith(('eval_', 'val_'))}


def _devices(dp: data_parallel.DataParallel, config: ml_collections.ConfigDict) -> dict:
  device = dp.devices[0]
  return {'device_kind': device.device_kind, 'platform': device.platform,
          'device_count': len(dp.devices), 'process_count': jax.process_count(),
          'parallelism': config.parallelism}


def _train(run: run_setup.Run, initial: Optional[train_state.TrainState]) -> dict:
  """The loop of `train_and_evaluate`, on a held workdir."""
  config, workdir, dp, ckpt = run.config, run.workdir, run.dp, run.ckpt
  if jax.process_index() == 0:  # Before initialising, which compiles (seconds).
    for line in summary.describe(run.model, config.model, run.input_size):
      log.info('%s', line)
  if ckpt.latest_step() is not None:
    state = run.restore()  # The newest intact checkpoint.
    start = ckpt.restored_step
    log.info('Resuming from the checkpoint at step %d in %s', start, ckpt.directory)
  else:
    start = 0
    if initial is None:  # Eager, each op compiled on first use: 10-15 s for a ResNet-50.
      log.info('Initialising the parameters of %s ...', config.model)
    state = dp.place_state(initial if initial is not None else run.init_state())
  devices = _devices(dp, config)
  if start:
    _report_resume(run, devices)
  if jax.process_index() == 0:
    run_record.start_session(workdir, json.loads(config.to_json()),
                             f'jax {jax.__version__}', {**devices, 'start_step': start,
                                                          'num_steps': run.num_steps},
                             changed={k: {'stored': a, 'now': b} for k, (a, b)
                                      in run.runtime_changes.items()})
  split_name, _ = run.eval_split()
  eval_data = run.eval_data(split_name)
  epoch_at = lambda step: step * config.batch_size / len(run.train)
  eval_at = eval_steps(run.num_steps, config.batch_size, len(run.train),
                        config.eval_every_epochs)
  k = run.steps_per_call
  log.info('Training %s on %s: %d steps of %d images (%.2f epochs) on %d %s '
           'device(s), %s; batches %s, %d step(s) per call',
           config.model, config.dataset, run.num_steps, config.batch_size,
           epoch_at(run.num_steps), len(dp.devices), jax.devices()[0].platform,
           config.parallelism, PIPELINE_WORDS[run.pipeline], k)
  plan = chunk_plan(start, run.num_steps, k, config.log_every_steps,
                    config.checkpoint_every_steps, eval_at,
                    run.sizes.changes(start, run.num_steps) if run.sizes else set())
  bar = progress.Progress(run.num_steps, len(run.train) / config.batch_size, start,
                          enabled=None if jax.process_index() == 0 else False)
  writer = metrics_io.MetricsWriter(workdir, resume_step=start, progress=bar)
  pending, last_time, last_step, eval_seconds = [], time.perf_counter(), start, 0.0
  in_flight = collections.deque()
  result = None
  loader = None
  if run.pipeline == 'files':
    loader = _file_batches(run, start)
  calls = feed(run.pipeline, dp, run.train, config, plan, k, loader, run.skipped)
  done = saved = eval_done = start
  try:
    with preemption.Guard(ckpt) as guard:
      try:
        for (first, n), data in zip(plan, calls):
          state, metrics = run.p_train_chunk(state, data, n)
          pending.append((n, metrics))  # Fetched at log time: no wait per call.
          in_flight.append(metrics)
          if len(in_flight) > MAX_CALLS_IN_FLIGHT:
            # The loop stays at most this many calls ahead of the device: enough
            # to keep it busy, and a stop signal is acted on within a call or
            # two, not after every step queued since the last log line.
            jax.block_until_ready(in_flight.popleft())
          done = first + n
          if first == start and done % config.log_every_steps and done != run.num_steps:
            # The one wait outside the log cadence: says that training runs long
            # before the first metrics line (compilation makes the first call slow).
            jax.block_until_ready(metrics)
            log.info('Step %d/%d done in %.1f s (compilation included); '
                     'metrics every %d steps', done, run.num_steps,
                     time.perf_counter() - last_time, config.log_every_steps)
          bar.step(done)
          # A signal at the last step changes nothing: the run ends complete.
          stop = guard.should_stop(done) and done < run.num_steps
          log_now = done % config.log_every_steps == 0 or done == run.num_steps
          eval_now = done in eval_at
          save_now = (done % config.checkpoint_every_steps == 0 or done == run.num_steps
                      or eval_now or stop)
          if log_now or save_now:
            # One transfer for the steps since the last fetch; never log or
            # checkpoint past a diverged step.
            fetched = fetch_steps(dp, pending)
            bad = metrics_io.first_nonfinite(range(last_step + 1, done + 1),
                                             [m['train_loss'] for m in fetched])
            if bad:
              raise errors.Stopped(
                  f'training loss is {bad[1]} at step {bad[0]}; the last good '
                  f'checkpoint (step {ckpt.latest_step()}) is kept. Lower '
                  '--config.learning_rate or check the data, then start a new workdir '
                  'or resume from it', exit_code=3, every_process=True)
          if log_now:
            logged = metrics_io.mean_metrics(fetched)
            now = time.perf_counter()
            logged['learning_rate'] = float(f'{float(run.lr_fn(done - 1)):.6g}')
            # Wall time between two log lines, evaluations excluded: input,
            # dispatch, device work and checkpoint saves.
            logged['images_per_sec'] = ((done - last_step) * config.batch_size
                                        / (now - last_time - eval_seconds))
            logged['epoch'] = epoch_at(done)
            writer.write(done, logged, total=run.num_steps)
            pending, last_time, last_step, eval_seconds = [], now, done, 0.0
          if eval_now:
            eval_start = time.perf_counter()
            result = evaluation.evaluate(dp, run.p_evaluate, state, eval_data,
                                         split_name)
            eval_done = done
            writer.write(done, {**metrics_io.scalars(result), 'epoch': epoch_at(done)},
                         total=run.num_steps)
            # Evaluation time is not billed to training speed.
            eval_seconds += time.perf_counter() - eval_start
          if save_now:
            ckpt.save(done, dp.canonical_state(state), run.meta(),
                      eval_accuracy=evaluation.headline(result)[1] if eval_now else None,
                      data_state=loader.state_at(done) if loader else None)
            saved = done
          if stop:
            ckpt.wait()
            name = signal.Signals(guard.signum).name
            log.info('Received %s: saved the checkpoint of step %d; run the same '
                     'command to resume', name, done)
            raise errors.Stopped(f'{name} at step {done}; checkpoint saved, run the '
                                 'same command to resume', exit_code=128 + guard.signum,
                                 every_process=True)
      except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, errors.Stopped) or not (
            isinstance(e, file_loader.ReadFailed) or guard.signum is not None):
          raise
        # The step `done` is sound unless its evaluation is what failed (a
        # checkpoint without it would skip that evaluation on resume).
        keep = done > saved and (eval_done == done or done not in eval_at)
        raise _input_failed(run, e, guard.signum, done, saved, state, pending, last_step,
                            loader, keep) from e
    ckpt.wait()  # A failed last save stops the run here, not silently.
  finally:  # Also on a stop: workers stopped, bars ended, events flushed.
    calls.close()
    if loader:
      loader.close()
    bar.close()
    writer.close()
  if result is None:  # Resumed at the end: evaluate what is there.
    result = evaluation.evaluate(dp, run.p_evaluate, state, eval_data, split_name)
  return result


def _input_failed(run: run_setup.Run, error: Exception, signum: Optional[int], done: int,
                  saved: int, state, pending: list, last_step: int, loader,
                  save: bool) -> errors.Stopped:
  """The stop of a run whose input failed: the filesystem (`ReadFailed`), or
  a loader worker that a stop signal to the whole process group ended before
  it could ignore it. A single process first saves the state of step `done`
  when `save` and its losses are finite; with several, a save is collective
  and the other processes are not here, so the last checkpoint stands.
  """
  if save and jax.process_count() == 1 and _sound(run.dp, pending, last_step, done):
    run.ckpt.save(done, run.dp.canonical_state(state), run.meta(),
                  data_state=loader.state_at(done) if loader else None)
    saved = done
  run.ckpt.wait()
  if signum is None:
    return errors.Stopped(f'{error}; the checkpoint of step {saved} is kept: run the same '
                          'command to resume once it reads again', exit_code=74)
  name = signal.Signals(signum).name
  return errors.Stopped(f'{name} at step {done} (the input stopped with it: {error}); '
                        f'the checkpoint of step {saved} is kept, run the same command '
                        'to resume', exit_code=128 + signum)


def _sound(dp: data_parallel.DataParallel, pending: list, first: int, done: int) -> bool:
  """Whether the steps (first, done] of the unfetched `pending` calls all
  have a finite loss (a checkpoint never holds a diverged state)."""
  losses = [m['train_loss'] for m in fetch_steps(dp, pending)] if pending else []
  return not metrics_io.first_nonfinite(range(first + 1, done + 1), losses)


def chunk_plan(start: int, end: int, k: int, log_every: int, checkpoint_every: int,
               eval_at: set, breaks: set = frozenset()) -> list:
  """(first step, n) of each call from `start` to `end`: at most `k` steps,
  ending wherever the loop logs, checkpoints or evaluates, and before each
  step of `breaks` (where the batch shape changes)."""
  plan, step = [], start
  while step < end:
    n = 1
    while (n < k and step + n < end and (step + n) % log_every
           and (step + n) % checkpoint_every and step + n not in eval_at
           and step + n not in breaks):
      n += 1
    plan.append((step, n))
    step += n
  return plan


def fetch_steps(dp: data_parallel.DataParallel, pending: list) -> list:
  """The metrics of calls [(n, {metric: [k]}), ...] in one transfer, as one
  {metric: value} per step run (the first n of each call's k)."""
  fetched = dp.fetch([m for _, m in pending])
  return [{key: v[i] for key, v in m.items()}
          for (n, _), m in zip(pending, fetched) for i in range(n)]


def _file_batches(run: run_setup.Run, start: int) -> file_loader.TrainBatches:
  """The file loader of a run with image_size, at `start`: from the grain
  state its checkpoint saved, when there is one."""
  config = run.config
  examples = file_loader.TrainExamples(
      run.train, config.batch_size, config.seed, run.sizes,
      (config.crop_min_area, 1.0), config.augment, jax.process_index(),
      jax.process_count(), config.file_order)
  state = run.ckpt.read_data_state(start) if start else None
  workers, threads = run_setup.file_workers(config)
  loader = file_loader.TrainBatches(examples, run.num_steps, start, workers, threads,
                                    state)
  final = f' growing to {config.final_image_size}' if config.final_image_size else ''
  log.info('Input: %s decoded at %dx%d%s by %s, %d thread(s) each%s', config.dataset,
           config.image_size, config.image_size, final,
           f'{workers} grain worker process(es)' if workers else 'the training process',
           threads, '; resumed from the loader state of the checkpoint'
           if loader.resumed_from_state else '')
  return loader


def feed(pipeline: str, dp: data_parallel.DataParallel, train, config, plan: list,
         k: int, loader: Optional[file_loader.TrainBatches] = None,
         skipped: Optional[dict] = None):
  """The `data` argument of each call of `plan`: the training split placed on
  the devices once, or k stacked host batches built ahead by worker processes
  or, with image_size, decoded from the files by `loader`.

  Args:
    pipeline: 'device', 'host' or 'files'.
    dp: the data parallelism.
    train: the training split.
    config: the run's config.
    plan: `chunk_plan`'s calls.
    k: steps per call.
    loader: the 'files' pipeline's batches.
    skipped: collects the files that did not decode {path: reason}.
  """
  if pipeline == 'files':
    def make(steps):
      for batch in loader.map(steps):
        file_loader.report_skipped(skipped, batch.pop('skipped'))
        yield batch
    yield from input_pipeline.prefetch_chunks(make, dp.put_stacked, plan, k)
    return
  if pipeline == 'device':
    spec = device_pipeline.Spec.of(config, len(train))
    placed = dp.replicate({'image': train.images, 'label': train.labels})
    order = None
    for first, _ in plan:  # The orders change once an epoch.
      epoch = spec.first_epoch(first)
      if order is None or order['first_epoch'] != epoch:
        order = device_pipeline.orders(spec, epoch, spec.epochs_per_chunk(k))
        placed_order = dp.replicate(order)
      yield {**placed, **placed_order}
    return
  stream = input_pipeline.TrainStream(
      train, config.batch_size, config.seed, config.augment,
      jax.process_index(), jax.process_count(),
      augmentations.Options.from_config(config))
  with batch_workers.BatchWorkers(stream, run_setup.input_workers(config)) as workers:
    yield from input_pipeline.prefetch_chunks(workers.map, dp.put_stacked, plan, k)
