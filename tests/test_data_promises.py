"""docs/data.md's promises about the data loaders that no other test held:
what the training loop hands the loaders (file order, this process's rows),
where evaluation's bad files are listed, and the file list the loaders share
with grain's workers. Each was seen failing on a deliberate break of its
promise (the break named in its comment)."""

import gc
import logging
import os
import types

import numpy as np
import pytest

from resnet_jax.data import file_loader
from resnet_jax.data import image_folder
from resnet_jax.data import input_pipeline
from resnet_jax.data import shared_arrays
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from tests import jpeg_files
from tests.conftest import tiny_config

BAD_VAL = 'val/n01/n01_002.JPEG'  # Relative to the dataset's folder.


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """An ImageNet-layout folder: 3 classes x (4 train, 3 val) JPEGs, one
  validation file not an image."""
  root = tmp_path_factory.mktemp('promises')
  jpeg_files.write_folder(root, per_class=(4, 3), bad={BAD_VAL: 'text'})
  return str(root)


class _Process:
  """`jax` as the training loop of process `index` of `count` sees it."""

  def __init__(self, index: int, count: int):
    self.index, self.count = index, count

  def __getattr__(self, name):
    import jax
    return getattr(jax, name)

  def process_index(self):
    return self.index

  def process_count(self):
    return self.count


def _each_file_its_label(split: file_loader.FileSplit) -> file_loader.FileSplit:
  """`split` with a label per file: a batch's labels say which files it read."""
  return file_loader.FileSplit(split.root, split.paths,
                               np.arange(len(split), dtype=np.int32), split.class_names)


def test_the_run_gives_the_file_loader_its_file_order_and_this_processs_rows(
    folder, monkeypatch):
  # docs/data.md, "The loader is google/grain": runs made before 2026-12-07
  # keep numpy's permutation (a resume reads `file_order` from the run's
  # record: tests/test_workdir.py), so the loop must order the files as the
  # config says; "Multi-host": each process reads only its rows of every
  # global batch, the batch of a step not depending on the process count.
  # Breaks seen failing: `_file_batches` without `config.file_order` (the
  # run then takes index_shuffle), and with process_index 0 on every process.
  split = _each_file_its_label(image_folder.file_split(os.path.join(folder, 'jpegs'),
                                                       'train'))
  config = tiny_config(folder, dataset='jpegs', image_size=16, batch_size=4, seed=3,
                       file_order='permutation')
  run = types.SimpleNamespace(config=config, train=split, sizes=file_loader.Sizes(16),
                              num_steps=6, ckpt=None)
  monkeypatch.setattr(loop, 'jax', _Process(1, 2))
  loader = loop._file_batches(run, 0)  # pylint: disable=protected-access
  try:
    got = list(loader.map(range(6)))  # 24 positions: two epochs of 12 files.
  finally:
    loader.close()
  # The one-process run's global batches, in the order the config names.
  whole = {order: file_loader.TrainExamples(split, 4, 3, 16, (config.crop_min_area, 1.0),
                                            order=order)
           for order in ('permutation', 'index_shuffle')}
  for step, batch in enumerate(got):
    assert batch['label'].tolist() == [int(whole['permutation'](4 * step + r)['label'])
                                       for r in (2, 3)], step
    for r in (2, 3):
      np.testing.assert_array_equal(batch['image'][r - 2],
                                    whole['permutation'](4 * step + r)['image'])
  # The test tells the orders and the processes apart.
  labels = [l for b in got for l in b['label'].tolist()]
  assert labels != [int(whole['index_shuffle'](4 * s + r)['label'])
                    for s in range(6) for r in (2, 3)]
  assert labels != [int(whole['permutation'](4 * s + r)['label'])
                    for s in range(6) for r in (0, 1)]


def test_the_host_pipeline_gives_each_process_its_rows_of_the_global_batch(monkeypatch):
  # docs/data.md, "How data reaches the device": a batch is a pure function
  # of (seed, step) on any number of processes; the host pipeline
  # (input_pipeline=host) builds it with numpy draws, each process its own
  # rows. Break seen failing: `feed` building the host stream with
  # process_index 0 on every process (each would train on process 0's rows).
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                               np.arange(40, dtype=np.int32), ())
  config = tiny_config(None, batch_size=16, seed=5, input_workers=1)
  monkeypatch.setattr(loop, 'jax', _Process(1, 2))
  dp = types.SimpleNamespace(put_stacked=lambda batches: batches)  # Host arrays.
  plan = [(0, 2), (2, 1)]  # Step 2 straddles the first two epochs.
  calls = list(loop.feed('host', dp, split, config, plan, 2))
  whole = input_pipeline.TrainStream(split, 16, 5)
  for (first, n), call in zip(plan, calls):
    for i in range(n):
      want = whole.batch(first + i)
      for key in ('image', 'label'):
        np.testing.assert_array_equal(call[key][i], want[key][8:], err_msg=f'{first + i}')
  assert not np.array_equal(calls[0]['label'][0], whole.batch(0)['label'][:8])


def test_evaluations_bad_files_are_masked_and_listed_once(folder, tmp_path,
                                                                       monkeypatch, caplog):
  # docs/data.md, "Bad files": a file that does not decode is logged once by
  # name with the reason, listed under `skipped_files` in that session of
  # run.json, and in evaluation its row is masked (`eval_examples` counts
  # the rest). The loop writes `run.skipped` into run.json (test_process_gather),
  # --mode=eval into eval.json (test_eval_and_predict_output);
  # here the evaluation split of a real run fills it. Breaks seen failing:
  # `FileEvalSplit.groups` not reporting its skipped files, and
  # `Run.eval_data` giving it a dict of its own instead of `run.skipped`.
  monkeypatch.setattr(run_setup, '_cores', lambda: 2)  # Decoding threads, no workers.
  config = tiny_config(folder, dataset='jpegs', image_size=16, batch_size=8,
                       eval_batch_size=8, input_workers=-1)
  run = run_setup.Run(config, str(tmp_path / 'w'), need_train=True)
  try:
    assert len(run.test) == 9
    split = run.eval_data('test')
    with caplog.at_level(logging.WARNING, logger='resnet_jax'):
      for _ in range(2):  # Two evaluations of one run: one line for the file.
        masks = np.concatenate([np.asarray(g['mask']).reshape(-1) for g in split.groups()])
        # 9 files padded to two batches of 8; the bad one's row is masked.
        assert masks.tolist() == [i < 9 and i != 2 for i in range(16)]
    assert list(run.skipped) == ['n01/n01_002.JPEG']
    assert run.skipped['n01/n01_002.JPEG'].startswith('not an image Pillow can read')
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Skipped')]
    assert len(lines) == 1 and lines[0].startswith(
        'Skipped n01/n01_002.JPEG: not an image Pillow can read'), lines
  finally:
    run.release()


def _segments() -> set:
  """This process's shared-memory segments."""
  mine = f'{shared_arrays.PREFIX}{os.getpid()}_'
  return {name for name in os.listdir(shared_arrays.SHM_FOLDER) if name.startswith(mine)}


class _Iterator:
  """Stands for grain's iterator (no worker processes started); holds the
  dataset, as grain's does."""

  def __init__(self, dataset):
    self.dataset = dataset

  def get_state(self):
    return {}

  def close(self):
    self.dataset = None


def test_with_worker_processes_the_loaders_hold_the_file_list_once_in_shared_memory(
    folder, monkeypatch):
  # docs/data.md, "The loader is google/grain": the file list is held once
  # per host: with worker processes it is placed in shared memory, which
  # each worker maps instead of unpickling a copy of its own; the run
  # removes it when it ends. (The mapping itself: test_file_loader.py.)
  # Breaks seen failing: `TrainBatches` and `FileEvalSplit` sending the
  # workers the file list itself (no `sharing()` / `shared()`).
  from resnet_jax.parallelism import data_parallel
  from resnet_jax.training import chunks
  if not os.path.isdir(shared_arrays.SHM_FOLDER):
    pytest.skip('no /dev/shm')
  monkeypatch.setattr(file_loader, 'iterate', lambda dataset, workers, threads=1:
                      _Iterator(dataset))
  root = os.path.join(folder, 'jpegs')
  train, val = (image_folder.file_split(root, s) for s in ('train', 'test'))
  gc.collect()
  before = _segments()
  examples = file_loader.TrainExamples(train, 4, 0, 16)
  loader = file_loader.TrainBatches(examples, 3, 0, workers=2, threads=1)
  made = _segments() - before
  assert len(made) == 2  # The paths and the labels, once.
  assert not examples.split._shared  # pylint: disable=protected-access
  evaluation = chunks.FileEvalSplit(data_parallel.DataParallel('jit', 8), val, 8, 16,
                                    (2, 1), {})
  assert len(_segments() - before - made) == 2
  # Without workers, nothing is shared: the process reads its own list.
  threads = file_loader.TrainBatches(examples, 3, 0, workers=0, threads=2)
  assert len(_segments() - before) == 4
  threads.close()
  loader.close()
  del loader, evaluation, threads
  gc.collect()
  assert _segments() == before  # Freed with the loaders.
