"""What train and eval modes share: the checked config, data, model and steps."""

import json
import os
import time
from typing import Optional

import jax
import ml_collections

from resnet_jax import errors
from resnet_jax.data import datasets
from resnet_jax.data import device_pipeline
from resnet_jax.data import file_loader
from resnet_jax.logs import log
from resnet_jax.parallelism import data_parallel
from resnet_jax.training import chunks
from resnet_jax.training import steps
from resnet_jax.training import train_state
from resnet_jax.workdir import checkpointing
from resnet_jax.workdir import config_validation
from resnet_jax.workdir import run_lock


def preflight(config: ml_collections.ConfigDict):
  """Checks the config against itself, the data and the devices, before any
  work; reads no images and writes nothing.

  Returns:
    (data parallelism, dataset source).
  """
  source = config_validation.validate(config)
  dp = data_parallel.DataParallel(config.parallelism, config.num_devices)
  dp.check_batch(config.batch_size, 'batch_size')
  dp.check_batch(config.eval_batch_size, 'eval_batch_size')
  dp.check_groups(config.batch_size, config.bn_group_size)
  return dp, source


class Run:
  """What train and eval modes share: validated config, data, model, steps.

  Constructing it reads (config, checkpoints, data) and writes nothing, so
  every refusal leaves the workdir as it was; `hold()` then takes the workdir.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               need_train: bool):
    self.config = config
    self.workdir = workdir
    self.dp, self.source = preflight(config)
    run_lock.check_free(workdir)  # Refuse a busy workdir before reading data.
    self.ckpt = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                          keep=config.keep_checkpoints)
    stored = self.ckpt.read_meta()
    stored_config = json.loads(stored['config']) if stored else None
    # Resuming must not blend two recipes (eval needs only the model); every
    # difference is listed at once.
    self.runtime_changes = (config_validation.check_resume(stored_config, config, workdir)
                            if stored and need_train else {})
    checkpointing.check_compatible(self.ckpt, stored, config, self.source.num_classes)
    # The checkpoints' layout follows the run that wrote them.
    self.has_ema = (stored_config or config).get('ema_decay', 0.0) > 0
    if need_train:  # Before any image is decoded, when the sizes are known.
      known = _known_length(config, self.source)
      check_warmup(config, *known)
      check_resize(config, *known)
    # image_size > 0: splits are files, decoded while training (file_loader).
    self.image_size = config.get('image_size', 0)
    self.input_size = self.image_size or 32
    # The evaluation split as the data names it ('test', or ImageNet's 'val').
    self.test_name = datasets.split_name(self.source, 'test')
    decoded = self.image_size if need_train else eval_size(config)
    self.test, self.train = _read_splits(self.source, need_train, decoded, self.test_name)
    self.skipped = {}  # Files that did not decode: {path: reason}.
    self.validation = None
    if need_train and config.validation_size:
      self.train, self.validation = datasets.hold_out(
          self.train, config.validation_size, config.seed)
    self.num_classes = self.source.num_classes
    self.mean_std = _mean_std(stored, self.source, self.train, self.image_size)
    self.model = train_state.create_model(config, self.num_classes, self.dp.axis_name)
    self.num_steps = train_state.total_steps(config, len(self.train) if need_train else 1)
    self.steps_per_epoch = (len(self.train) if need_train else 1) / config.batch_size
    if need_train:
      check_warmup(config, self.num_steps, self.steps_per_epoch)
      check_resize(config, self.num_steps, self.steps_per_epoch)
    self.lr_fn = train_state.create_learning_rate_fn(config, self.num_steps,
                                                     self.steps_per_epoch)
    self.sizes = (file_loader.Sizes(self.image_size, config.final_image_size,
                                    config.resize_start_epoch, config.resize_end_epoch,
                                    self.steps_per_epoch) if self.image_size else None)
    self.tx = train_state.create_optimizer(config, self.lr_fn)
    self.p_train_step, self.p_eval_step = steps.compile_steps(
        self.dp, config, self.num_classes, self.mean_std)
    train_fn, eval_fn = steps.step_functions(self.dp, config, self.num_classes,
                                             self.mean_std)
    self.steps_per_call = chunks.steps_per_call(config)
    self.pipeline = (resolve_pipeline(config, stored, self.train, self.dp)
                     if need_train else None)
    self.spec = None
    if self.pipeline == 'device':
      self.spec = device_pipeline.Spec.of(config, len(self.train))
    self.p_train_chunk = chunks.compile_train_chunk(
        self.dp, train_fn, self.steps_per_call, self.spec,
        steps.train_compiler_options(config))
    # Evaluation batches per call: known once the split is placed.
    self._eval_fn = eval_fn
    self._p_evaluate = {}
    self._placed = {}
    self.lock = None

  def hold(self, write_checkpoints: bool) -> None:
    """Takes the workdir (refusing if another run holds it) and, for
    training, opens the checkpoints for writing."""
    self.lock = run_lock.Lock(self.workdir)
    if write_checkpoints:
      self.ckpt.open_for_writing()

  def release(self) -> None:
    self.ckpt.close()
    if self.lock:
      self.lock.release()

  def init_state(self) -> train_state.TrainState:
    return train_state.create_train_state(jax.random.key(self.config.seed), self.model, self.tx,
                              ema=self.has_ema)

  def eval_split(self) -> tuple:
    """(name, split) that training evaluates: the validation split when one
    is held out (the test split is then left for one final look)."""
    if self.validation is not None:
      return 'validation', self.validation
    return 'test', self.test

  def restore(self, step: Optional[int] = None):
    """The checkpointed state at `step` (default latest), placed for the step."""
    state = self.ckpt.restore(train_state.abstract_state(self.init_state, self.dp), step)
    return self.dp.place_state(state)

  def eval_data(self, split_name: str):
    """`chunks.EvalSplit` of 'test' or 'validation', placed once; with
    image_size, a `chunks.FileEvalSplit` decoding the files at each
    evaluation."""
    if split_name not in self._placed:
      split = self.test if split_name == 'test' else self.validation
      if self.image_size:
        self._placed[split_name] = chunks.FileEvalSplit(
            self.dp, split, self.config.eval_batch_size, eval_size(self.config),
            file_workers(self.config), self.skipped)
      else:
        self._placed[split_name] = chunks.EvalSplit(self.dp, split,
                                                    self.config.eval_batch_size)
      self._placed[split_name].label = (self.test_name if split_name == 'test'
                                        else split_name)
    return self._placed[split_name]

  def p_evaluate(self, state, group, first: int, per_call: int):
    """Evaluates `per_call` batches of a placed group from `first` (compiled
    once per `per_call`)."""
    if per_call not in self._p_evaluate:
      self._p_evaluate[per_call] = chunks.compile_evaluate(self.dp, self._eval_fn, per_call)
    return self._p_evaluate[per_call](state, group, first)

  def meta(self) -> dict:
    return {'input_pipeline': self.pipeline, 'model': self.config.model,
            'dataset': self.config.dataset, 'num_classes': self.num_classes,
            'config': self.config.to_json(),
            'class_names': list(self.test.class_names),
            'class_ids': list(self.test.class_ids or self.test.class_names),
            'mean': list(self.mean_std[0]), 'std': list(self.mean_std[1])}


def eval_size(config: ml_collections.ConfigDict) -> int:
  """The evaluation crop of a run with image_size: `eval_image_size`, else
  the last training size."""
  return (config.get('eval_image_size', 0) or config.get('final_image_size', 0)
          or config.get('image_size', 0))


def check_warmup(config: ml_collections.ConfigDict, num_steps: Optional[int],
                 steps_per_epoch: Optional[float]) -> None:
  """Refuses a warm-up, or a triangular schedule's peak, as long as the run
  (None: not known yet)."""
  if (config.get('lr_schedule') == 'triangular' and num_steps is not None
      and steps_per_epoch is not None):
    peak = config.lr_peak_epoch * steps_per_epoch
    if peak >= num_steps:
      raise errors.UserError(
          f'lr_peak_epoch {config.lr_peak_epoch} ({peak:.0f} steps) is not before the '
          f'end of the run ({num_steps} steps); set --config.lr_peak_epoch lower')
  if num_steps is None or (steps_per_epoch is None and config.get('warmup_epochs', 0)):
    return
  warmup = train_state.warmup_steps(config, steps_per_epoch or 1.0)
  if warmup >= num_steps:
    field = 'warmup_epochs' if config.get('warmup_epochs', 0) else 'warmup_steps'
    steps = f' ({warmup} steps)' if field == 'warmup_epochs' else ''
    raise errors.UserError(f'{field} {config[field]}{steps} is not shorter than the '
                           f'run ({num_steps} steps); set --config.{field} lower')


def check_resize(config: ml_collections.ConfigDict, num_steps: Optional[int],
                 steps_per_epoch: Optional[float]) -> None:
  """Refuses progressive resizing that does not reach `final_image_size`
  within the run, as `check_warmup` refuses a warm-up that does not end: the
  log would promise a growth the run never makes. Nothing is checked while
  the run's length is not known (None)."""
  final, size = config.get('final_image_size', 0), config.get('image_size', 0)
  if not final or not size or final == size or None in (num_steps, steps_per_epoch):
    return
  sizes = file_loader.Sizes(size, final, config.resize_start_epoch,
                            config.resize_end_epoch, steps_per_epoch)
  last = sizes.at(num_steps - 1)  # Of the run's last (0-based) step.
  if last == final:
    return
  run = f'the end of the run ({num_steps} steps, epoch {num_steps / steps_per_epoch:.2f})'
  fix = 'lower, or --config.final_image_size=0 for no resizing'
  if (num_steps - 1) / steps_per_epoch < config.resize_start_epoch:
    raise errors.UserError(
        f'resize_start_epoch {config.resize_start_epoch:g} is not before {run}: the '
        f'images would stay {size}x{size}, never growing to final_image_size {final}; '
        f'set --config.resize_start_epoch {fix}')
  raise errors.UserError(
      f'resize_end_epoch {config.resize_end_epoch:g} is past {run}: the images would '
      f'reach {last}x{last}, not final_image_size {final}; set '
      f'--config.resize_end_epoch {fix}')


def _known_length(config: ml_collections.ConfigDict, source: datasets.Source):
  """(the run's steps, steps per epoch), each known without decoding images
  (steps given, or the split's size from `datasets.count`) or None (that
  needs a download). Refuses a validation split larger than the training
  split on the way."""
  examples = datasets.count(source, 'train')
  if examples is not None and config.validation_size:
    datasets.check_hold_out(config.validation_size, examples)
  per_epoch = (None if examples is None
               else (examples - config.validation_size) / config.batch_size)
  if config.num_train_steps > 0:
    return int(config.num_train_steps), per_epoch
  if examples is None:
    return None, None
  return train_state.total_steps(config, examples - config.validation_size), per_epoch


def resolve_pipeline(config: ml_collections.ConfigDict, stored: Optional[dict],
                     train, dp: data_parallel.DataParallel) -> str:
  """'device' or 'host': where this run's training batches are made.

  'auto' keeps a resumed run's kind, and otherwise picks the device unless
  TrivialAugment (Pillow, on the host) is on or the split does not fit; a
  resume across kinds would change the batches, so it is refused by name.
  Checkpoints from before the device pipeline existed are host runs.
  """
  requested = config.get('input_pipeline', 'auto')
  policy = config.get('augment_policy', '')
  stored_kind = (stored.get('input_pipeline') or 'host') if stored else None
  if config.get('image_size', 0):
    if stored_kind and stored_kind != 'files':
      raise errors.UserError(
          f'this run made its batches with the {stored_kind} pipeline; image_size '
          f'{config.image_size} would decode them from the files, which draws other '
          'batches; use a new --workdir')
    return 'files'
  nbytes = train.images.nbytes + train.labels.nbytes
  if nbytes > device_pipeline.host_memory_bytes() // 2:
    raise errors.UserError(
        f'the training split ({nbytes / 2**30:.1f} GiB) fits neither device nor host '
        'memory; use a smaller dataset or a machine with more memory')
  too_big = device_pipeline.too_large(nbytes, dp.local_devices)
  if requested == 'device' and policy:
    raise errors.UserError(f'augment_policy {policy!r} runs Pillow on the host, so it '
                           'needs the host pipeline; set --config.input_pipeline=auto')
  if requested == 'device' and too_big:
    raise errors.UserError(f'{too_big}; set --config.input_pipeline=auto or host')
  kind = requested if requested != 'auto' else (
      stored_kind or ('host' if policy or too_big else 'device'))
  if stored_kind and kind != stored_kind:
    raise errors.UserError(
        f'this run made its batches with the {stored_kind} pipeline and would resume '
        f'with the {kind} one, which draws other batches; set '
        f'--config.input_pipeline={stored_kind} to resume it, or use a new --workdir')
  if kind == 'device' and too_big:
    raise errors.UserError(f'this run made its batches on the device, but here {too_big};'
                           ' resume it on a device with more memory')
  if requested == 'auto' and kind == 'host' and too_big and not stored_kind:
    log.info('Input pipeline: host (%s)', too_big)
  return kind


def _read_splits(source: datasets.Source, need_train: bool, image_size: int,
                 test_name: str = 'test') -> tuple:
  """(test, train or None): in host memory, or with `image_size` (the size
  training, or without it evaluation, decodes at) their file lists; with a
  line before and after: a JPEG folder takes a while, and the console should
  say why it is quiet."""
  where = source.root or source.data_dir or 'the tfds default data_dir'
  log.info('%s %s from %s ...', 'Listing' if image_size else 'Reading', source.name, where)
  started = time.perf_counter()
  test = datasets.load_split(source, 'test', image_size)
  train = datasets.load_split(source, 'train', image_size) if need_train else None
  log.info('%s %s%s %s images in %.1f s%s', 'Listed' if image_size else 'Read',
           f'{len(train):,} training and ' if train is not None else '', f'{len(test):,}',
           test_name, time.perf_counter() - started,
           f' (decoded at {image_size}x{image_size} while '
           f'{"training" if need_train else "evaluating"})' if image_size else '')
  return test, train


def _mean_std(meta: Optional[dict], source: datasets.Source, train_split,
              image_size: int) -> tuple:
  """The normalisation a run uses: its checkpoints' (so a resumed run, eval
  and predict use what training used), else the dataset's."""
  if meta:
    return stored_mean_std(meta, source.name)
  if train_split is None and source.kind == 'image_folder' and not image_size:
    train_split = datasets.load_split(source, 'train')
  return datasets.normalization(source, train_split, image_size)


def input_workers(config: ml_collections.ConfigDict) -> int:
  """Host pipeline worker processes: `input_workers`, or one per core less
  one (the training loop's own) with -1. TrivialAugment is the host work that
  needs them; crop and flip alone are cheap enough for one."""
  if config.input_workers > 0:
    return config.input_workers
  if not config.get('augment_policy'):
    return 1
  return max(1, _cores() - 1)


def file_workers(config: ml_collections.ConfigDict) -> tuple:
  """(grain worker processes, decoding threads each) of a run with
  image_size: `input_workers` processes sharing the cores as threads; with
  -1, threads in the training process up to 8 cores (decoding releases the
  GIL, and that measured fastest: BENCHMARKS.md), one process per 4 cores
  beyond."""
  cores = _cores()
  workers = config.input_workers
  if workers <= 0:
    workers = 0 if cores <= 8 else cores // 4
  return workers, max(1, cores // max(1, workers))


def _cores() -> int:
  """The cores this process may run on (a SLURM task's share, say)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def stored_mean_std(meta: dict, dataset: str) -> tuple:
  """(mean, std) of a checkpoint's metadata; checkpoints written before
  image-folder datasets existed are tfds CIFAR runs with the published values."""
  if 'mean' in meta:
    return tuple(meta['mean']), tuple(meta['std'])
  return datasets.MEAN_STD[dataset]
