"""Training from image files of any size: the grain loader, its sharding over
processes, bad files, and a killed run resumed bitwise (image_size > 0)."""

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from resnet_jax.data import epoch_orders
from resnet_jax.data import file_loader
from resnet_jax.data import image_folder
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from tests import jpeg_files
from tests import processes
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = 'train/n02/n02_005.JPEG'


@pytest.fixture(scope='module', autouse=True)
def _collect_grain_garbage():
  """grain's iterators and threads are collected here, not during a later
  test's imports (tfds's lazy imports then broke pytest's report of them)."""
  yield
  gc.collect()


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """An ImageNet-layout folder: 3 classes x (12 train, 4 val) JPEGs of 20-90
  px with readable names, one training file truncated."""
  root = tmp_path_factory.mktemp('jpegs')
  jpeg_files.write_folder(root, bad={BAD: 'truncated'})
  return str(root)


def _split(folder, split='train', unique_labels=False):
  files = image_folder.file_split(os.path.join(folder, 'jpegs'), split)
  if unique_labels:  # Each file its own label: a batch says which files it read.
    files = file_loader.FileSplit(files.root, files.paths,
                                  np.arange(len(files), dtype=np.int32), files.class_names)
  return files


def test_the_imagenet_layout_lists_val_and_readable_names(folder):
  root = os.path.join(folder, 'jpegs')
  train, val = _split(folder), _split(folder, 'test')
  assert (len(train), len(val)) == (36, 12)
  assert train.class_names == ('name of n01', 'name of n02', 'name of n03')
  assert val.root == os.path.join(root, 'val') and val.path(0).endswith('val/n01/n01_000.JPEG')
  assert list(np.bincount(val.labels)) == [4, 4, 4]
  assert image_folder.count(root, 'test') == 12


def _labels(examples, first, count):
  return [int(examples(k)['label']) for k in range(first, first + count)]


def test_two_processes_read_an_epoch_once_between_them(folder):
  split = _split(folder, unique_labels=True)
  n = len(split)
  # Global batch 12 over 2 processes: one epoch is 3 steps of 6 rows each.
  per_process = [_labels(file_loader.TrainExamples(split, 12, 5, 24, process_index=p,
                                                   process_count=2), 0, 18)
                 for p in (0, 1)]
  read = per_process[0] + per_process[1]
  bad = [i for i in range(n) if split.paths[i].decode() == BAD[len('train/'):]]
  # Every file once, except the bad one, whose place the permutation's next
  # file took (so that one appears twice).
  assert sorted(set(read)) == sorted(set(range(n)) - set(bad))
  assert len(read) == n
  # And each process's rows are those rows of the one-process batch.
  single = file_loader.TrainExamples(split, 12, 5, 24)
  for step in range(3):
    one = [single(step * 12 + r) for r in range(12)]
    for p in (0, 1):
      two = file_loader.TrainExamples(split, 12, 5, 24, process_index=p, process_count=2)
      for r in range(6):
        got = two(step * 6 + r)
        np.testing.assert_array_equal(got['image'], one[p * 6 + r]['image'])


def _take(loader, first, count):
  return list(loader.map(range(first, first + count)))


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x['skipped'] == y['skipped']
    for key in ('image', 'label'):
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.slow
def test_batches_are_the_same_with_worker_processes_and_resume_from_grain_state(folder):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags.
    flags.FLAGS.mark_as_parsed()
  examples = file_loader.TrainExamples(_split(folder), 8, 3, 24)
  threads = file_loader.TrainBatches(examples, 12, 0, workers=0, threads=2)
  expected = _take(threads, 0, 9)
  threads.close()
  workers = file_loader.TrainBatches(examples, 12, 0, workers=2)
  got = _take(workers, 0, 6)
  state = workers.state_at(4)
  workers.close()
  _assert_same_batches(got, expected[:6])
  # A loader rebuilt from the state after step 3 goes on at step 4.
  resumed = file_loader.TrainBatches(examples, 12, 4, workers=2, state=state)
  assert resumed.resumed_from_state
  _assert_same_batches(_take(resumed, 4, 5), expected[4:9])
  resumed.close()
  # Another worker count cannot take that state: it starts at the step, same batches.
  other = file_loader.TrainBatches(examples, 12, 4, workers=0, state=state)
  assert not other.resumed_from_state
  _assert_same_batches(_take(other, 4, 5), expected[4:9])
  other.close()
  # The bad file was met in those 9 steps (72 examples, two epochs), and named.
  assert any(s[0] == BAD[len('train/'):] and 'does not decode' in s[1]
             for b in expected for s in b['skipped'])


def test_the_state_of_a_step_far_behind_the_prefetch_is_kept(folder):
  # The loop saves the state of the step it trained while the feeder has
  # read up to three calls ahead (calls of up to 1024 steps).
  examples = file_loader.TrainExamples(_split(folder), 2, 0, 8)
  loader = file_loader.TrainBatches(examples, 200, 0, workers=0)
  batches = _take(loader, 0, 150)
  state = loader.state_at(3)
  loader.close()
  resumed = file_loader.TrainBatches(examples, 200, 3, workers=0, state=state)
  assert resumed.resumed_from_state
  _assert_same_batches(_take(resumed, 3, 2), batches[3:5])
  resumed.close()


def test_evaluation_batches_mask_padding_and_bad_files(folder, tmp_path):
  val = _split(folder, 'test')
  val = val.take(np.arange(len(val)))
  # Replace one validation file with an empty one, in a copy of the folder.
  root = tmp_path / 'val'
  for i in range(len(val)):
    os.makedirs(root / os.path.dirname(val.paths[i].decode()), exist_ok=True)
    data = b'' if i == 5 else open(val.path(i), 'rb').read()
    (root / val.paths[i].decode()).write_bytes(data)
  val = file_loader.FileSplit(str(root), val.paths, val.labels, val.class_names)
  batches = list(iter(file_loader.eval_dataset(val, 8, 24).to_iter_dataset()))
  assert len(batches) == 2
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.tolist() == [i < 12 and i != 5 for i in range(16)]
  assert [s for b in batches for s in b['skipped']] == [(val.paths[5].decode(),
                                                        'empty file')]
  from resnet_jax.data import image_decoding
  np.testing.assert_array_equal(batches[0]['image'][0],
                                image_decoding.eval_image(open(val.path(0), 'rb').read(), 24))


def test_image_size_refusals(folder):
  def run(**overrides):
    config = tiny_config(folder, **{'dataset': 'jpegs', 'image_size': 24, **overrides})
    with pytest.raises(Exception) as e:
      run_setup.preflight(config)
    return str(e.value)
  assert 'cutout_size 8 is drawn by the in-memory pipelines' in run(cutout_size=8)
  assert 'input_pipeline' in run(input_pipeline='device')
  assert 'image_size must be 0' in run(image_size=4)
  # cifar10 (no folder of that name in data_dir) is the tfds dataset.
  config = tiny_config(folder, image_size=24)
  with pytest.raises(Exception) as e:
    run_setup.preflight(config)
  assert "'cifar10' is a tfds dataset" in str(e.value)


def _eio_for(path, times):
  """An `open` for file_loader that fails `times` times with EIO on `path`
  (a shared filesystem's hiccup), and its count of calls on that path."""
  calls = []

  def fake_open(name, *args, **kwargs):
    if name == path:
      calls.append(name)
      if len(calls) <= times:
        raise OSError(errno.EIO, 'Input/output error', name)
    return open(name, *args, **kwargs)
  return fake_open, calls


def test_transient_read_errors_are_retried_and_never_make_a_file_bad(folder, monkeypatch,
                                                                        caplog):
  split = _split(folder, unique_labels=True)
  examples = file_loader.TrainExamples(split, 8, 3, 24)
  expected = [examples(k) for k in range(8)]
  target = split.path(int(expected[2]['label']))  # The file of row 2.
  monkeypatch.setattr(file_loader, 'RETRY_DELAYS', (0.0, 0.0, 0.0))
  fake_open, calls = _eio_for(target, times=2)
  monkeypatch.setattr(file_loader, 'open', fake_open, raising=False)
  with caplog.at_level('WARNING', logger='resnet_jax'):
    got = file_loader.TrainExamples(split, 8, 3, 24)(2)
  # The same example as without the fault (a batch depends on (seed, step)
  # alone), nothing skipped, and each retry said in a line.
  assert len(calls) == 3 and got['skipped'] == ()
  assert int(got['label']) == int(expected[2]['label'])
  np.testing.assert_array_equal(got['image'], expected[2]['image'])
  assert sum('retry' in r.getMessage() for r in caplog.records) == 2
  # A fault that outlasts the retries stops the run instead of skipping.
  fake_open, calls = _eio_for(target, times=100)
  monkeypatch.setattr(file_loader, 'open', fake_open, raising=False)
  with pytest.raises(file_loader.ReadFailed, match='failed 4 times.*the filesystem is failing'):
    file_loader.TrainExamples(split, 8, 3, 24)(2)
  with pytest.raises(file_loader.ReadFailed):
    list(iter(file_loader.eval_dataset(split, 36, 24).to_iter_dataset()))
  # A file that is gone is bad at once: skipped, not retried.
  with pytest.raises(FileNotFoundError):
    file_loader.read_file(os.path.join(folder, 'jpegs', 'no-such-file.JPEG'))


def test_training_and_evaluation_agree_on_bad_files():
  from resnet_jax.data import image_decoding
  data = jpeg_files.jpeg_bytes(jpeg_files.pattern(60, 80))
  # libjpeg warns of garbage before the end marker, a common camera quirk;
  # simplejpeg's strict mode refused it for training, Pillow decodes it.
  odd = data[:-2] + b'\x00' * 240 + data[-2:]
  assert image_decoding.eval_image(odd, 24).shape == (24, 24, 3)
  got = image_decoding.train_image(odd, 24, np.random.default_rng(0))
  want = image_decoding.train_image(data, 24, np.random.default_rng(0))
  assert np.abs(got.astype(int) - want).mean() < 8  # The same crop of the same image.
  for kind in ('truncated', 'empty', 'text'):
    bad = jpeg_files.bad_file(kind)
    with pytest.raises(image_decoding.BadImage):
      image_decoding.eval_image(bad, 24)
    with pytest.raises(image_decoding.BadImage):
      image_decoding.train_image(bad, 24, np.random.default_rng(0))


def test_decoding_threads_crossing_an_epoch_boundary_share_the_permutations(folder):
  # Two threads crossing an epoch boundary together evicted the same epoch
  # twice (a KeyError that ended the run: 7 of 200 trials before the lock).
  split = _split(folder)
  interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)
  try:
    for trial in range(100):
      examples = file_loader.TrainExamples(split, 4, trial, 8, order='permutation')
      failures = []

      def take(epoch):
        try:
          for e in (epoch, epoch + 1, epoch + 2):
            examples._permutation(e)  # pylint: disable=protected-access
        except Exception as e:  # pylint: disable=broad-except
          failures.append(e)
      threads = [threading.Thread(target=take, args=(i % 2,)) for i in range(4)]
      for t in threads:
        t.start()
      for t in threads:
        t.join()
      assert not failures, failures
      assert len(examples._perms) <= 2  # pylint: disable=protected-access
  finally:
    sys.setswitchinterval(interval)


def test_file_names_in_any_language_are_read(tmp_path):
  names = ['café_1.jpg', '猫の写真.JPEG', 'plain.jpg']
  for cls in ('a', 'b'):
    for split in ('train', 'test'):
      os.makedirs(tmp_path / 'd' / split / cls)
      for i, name in enumerate(names):
        image = jpeg_files.pattern(30 + i, 40, seed=i)
        (tmp_path / 'd' / split / cls / name).write_bytes(jpeg_files.jpeg_bytes(image))
  split = image_folder.file_split(str(tmp_path / 'd'), 'train')
  assert sorted(split.name(i) for i in range(len(split))) == sorted(
      f'{c}/{n}' for c in 'ab' for n in names)
  examples = file_loader.TrainExamples(split, 6, 0, 16)
  batch = [examples(k) for k in range(6)]
  assert all(b['skipped'] == () for b in batch)
  assert sorted(int(b['label']) for b in batch) == [0, 0, 0, 1, 1, 1]


def _good_files(folder):
  """The module folder's training files without the bad one, each its own
  label (so a batch says which files it read)."""
  split = _split(folder, unique_labels=True)
  return split.take(np.array([p.decode() != BAD[len('train/'):] for p in split.paths]))


@pytest.mark.parametrize('order', epoch_orders.FILE_ORDERS)
def test_each_epoch_is_a_fresh_permutation_and_a_batch_a_pure_function_of_seed_and_step(
    folder, order):
  # docs/data.md, "The loader is google/grain": a fresh permutation of the
  # files per epoch; the batch of step s is a pure function of (seed, s).
  split = _good_files(folder)
  n = len(split)  # 35 files; batch 8: steps straddle the epochs.
  examples = file_loader.TrainExamples(split, 8, 7, 16, order=order)
  got = [examples(k) for k in range(3 * n)]
  labels = [int(e['label']) for e in got]
  epochs = [labels[e * n:(e + 1) * n] for e in range(3)]
  for epoch in epochs:  # Every file once an epoch ...
    assert sorted(epoch) == sorted(split.labels.tolist())
  # ... in a new order each epoch.
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
  # Another instance, asked in another order, gives the same examples bitwise.
  again = file_loader.TrainExamples(split, 8, 7, 16, order=order)
  for k in reversed(range(40, 60)):
    e = again(k)
    assert int(e['label']) == labels[k]
    np.testing.assert_array_equal(e['image'], got[k]['image'])
  # Another seed, another order.
  other = file_loader.TrainExamples(split, 8, 8, 16, order=order)
  assert [int(other(k)['label']) for k in range(n)] != epochs[0]


def _numbered_split(n: int) -> file_loader.FileSplit:
  names = np.asarray([b'c%d/file_%07d.JPEG' % (i % 7, i) for i in range(n)], dtype=bytes)
  return file_loader.FileSplit('/nowhere', names, np.arange(n, dtype=np.int32) % 7,
                               tuple('abcdefg'))


def test_each_epochs_order_is_pinned_and_held_by_no_process():
  # The order of a run's files must not move under it: a grain release
  # changing index_shuffle would change every run's batches (and a resume's).
  examples = file_loader.TrainExamples(_numbered_split(10), 2, 0, 8)
  assert examples.epoch_order(0).tolist() == PINNED_ORDER_SEED0_EPOCH0
  assert examples.epoch_order(1).tolist() != PINNED_ORDER_SEED0_EPOCH0
  # Runs recorded before the field keep numpy's permutation.
  old = file_loader.TrainExamples(_numbered_split(10), 2, 0, 8, order='permutation')
  assert old.epoch_order(0).tolist() == np.random.default_rng([0, 0, 0]).permutation(
      10).tolist()
  # index_shuffle caches no order: what grain sends a worker is the same at
  # any file count, once the file list is in shared memory.
  import pickle
  sent = [len(pickle.dumps(file_loader.TrainExamples(_numbered_split(n), 2, 0, 8).sharing()))
          for n in (1_000, 100_000)]
  assert abs(sent[0] - sent[1]) < 16 and max(sent) < 4_000, sent  # Names and ints vary.
  big = file_loader.TrainExamples(_numbered_split(100_000), 2, 0, 8)
  assert {big.file_at(3, i) for i in range(0, 100_000, 1)} == set(range(100_000))
  assert not big._perms  # pylint: disable=protected-access


PINNED_ORDER_SEED0_EPOCH0 = [5, 8, 9, 7, 4, 2, 1, 0, 3, 6]


def test_a_shared_split_is_one_copy_mapped_by_the_workers_and_freed_with_the_split():
  import gc
  import pickle
  split = _numbered_split(5_000).shared()
  segment = split._shared[0]._segment.name  # pylint: disable=protected-access
  assert os.path.exists(f'/dev/shm/{segment}')
  assert len(pickle.dumps(split)) < 1_000  # The segment's name, not 5,000 paths.
  # A process spawned as grain spawns its workers maps it: the same files.
  import multiprocessing
  with multiprocessing.get_context('spawn').Pool(1) as pool:
    assert pool.apply(file_loader.FileSplit.name, (split, 4321)) == 'c2/file_0004321.JPEG'
    np.testing.assert_array_equal(pool.apply(getattr, (split, 'labels')), split.labels)
  assert os.path.exists(f'/dev/shm/{segment}')  # A worker's exit leaves it.
  del split
  gc.collect()
  assert not os.path.exists(f'/dev/shm/{segment}')


def _counting_open(denied=()):
  """An `open` for file_loader counting the opens of each path; the paths in
  `denied` raise EACCES (the tests run as root, which chmod cannot stop)."""
  opens = {}

  def fake_open(name, *args, **kwargs):
    opens[name] = opens.get(name, 0) + 1
    if name in denied:
      raise PermissionError(errno.EACCES, 'Permission denied', name)
    return open(name, *args, **kwargs)
  return fake_open, opens


def test_gone_folder_and_permission_denied_files_are_skipped_at_once_not_retried(
    tmp_path, monkeypatch):
  # docs/data.md, "Bad files": a file that cannot be opened for good (gone,
  # a folder, permission denied) is skipped, named with the reason; in
  # training the next file of the epoch's permutation takes its place, in
  # evaluation its row is masked. Never retried as a filesystem error is.
  root = jpeg_files.write_folder(tmp_path, per_class=(4, 3), names=False)
  train = image_folder.file_split(root, 'train')
  train = file_loader.FileSplit(train.root, train.paths,
                                np.arange(len(train), dtype=np.int32), train.class_names)
  val = image_folder.file_split(root, 'test')
  reasons = {}
  for split, (gone, as_dir, denied) in ((train, (1, 6, 10)), (val, (2, 4, 7))):
    os.remove(split.path(gone))
    os.remove(split.path(as_dir))
    os.mkdir(split.path(as_dir))
    reasons.update({split.path(gone): 'No such file', split.path(as_dir): 'Is a directory',
                    split.path(denied): 'Permission denied'})
  denied = {train.path(10), val.path(7)}
  fake_open, opens = _counting_open(denied)
  monkeypatch.setattr(file_loader, 'open', fake_open, raising=False)
  monkeypatch.setattr(file_loader, 'RETRY_DELAYS', (0.0,) * 3)
  n = len(train)
  examples = file_loader.TrainExamples(train, n, 4, 16)  # One step: one epoch.
  order = examples.epoch_order(0)
  bad = {1, 6, 10}
  skipped = []
  for k in range(n):
    got = examples(k)
    skipped += got['skipped']
    passed, t = [], 0
    while int(order[(k + t) % n]) in bad:
      passed.append(train.name(int(order[(k + t) % n])))
      t += 1
    # The next good file of the permutation takes the bad ones' place.
    assert int(got['label']) == int(order[(k + t) % n]), k
    assert [name for name, _ in got['skipped']] == passed, k
  batches = list(iter(file_loader.eval_dataset(val, 4, 16).to_iter_dataset()))
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.tolist() == [i < len(val) and i not in (2, 4, 7) for i in range(12)]
  skipped = ([(os.path.join(train.root, name), why) for name, why in skipped]
             + [(os.path.join(val.root, name), why) for b in batches
                for name, why in b['skipped']])
  assert {path for path, _ in skipped} == set(reasons)
  for path, reason in skipped:
    assert reasons[path] in reason, (path, reason)
  # Each bad file was opened once each time it was met: never retried.
  for path in reasons:
    assert opens[path] == sum(p == path for p, _ in skipped), path


def test_a_skipped_file_is_logged_once_by_name_with_the_reason(caplog):
  seen = {}
  with caplog.at_level('WARNING', logger='resnet_jax'):
    file_loader.report_skipped(seen, [('n02/a.JPEG', 'empty file')])
    file_loader.report_skipped(seen, [('n02/a.JPEG', 'empty file'),
                                      ('n03/b.JPEG', 'does not decode (OSError: x)')])
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 2, lines
  assert lines[0].startswith('Skipped n02/a.JPEG: empty file')
  assert lines[1].startswith('Skipped n03/b.JPEG: does not decode (OSError: x)')
  assert seen == {'n02/a.JPEG': 'empty file', 'n03/b.JPEG': 'does not decode (OSError: x)'}


def test_a_failing_filesystem_is_retried_for_62_s_with_a_line_per_try(tmp_path, monkeypatch,
                                                                      caplog):
  # docs/data.md, "A filesystem's errors are not bad files": a log line per
  # try, `retry 1 of 6 in 0.5 s`, 62 s in all, then `failed 7 times over 62 s`.
  path = str(tmp_path / 'x.JPEG')
  fake_open, calls = _eio_for(path, times=100)
  monkeypatch.setattr(file_loader, 'open', fake_open, raising=False)
  sleeps = []
  monkeypatch.setattr(file_loader, 'time', type('Clock', (), {'sleep': sleeps.append}))
  with caplog.at_level('WARNING', logger='resnet_jax'):
    with pytest.raises(file_loader.ReadFailed) as e:
      file_loader.read_file(path)
  assert len(calls) == 7 and sum(sleeps) == 62.0 and sleeps == sorted(sleeps)
  assert str(e.value).startswith(f'reading {path} failed 7 times over 62 s ([Errno 5] ')
  assert str(e.value).endswith('): the filesystem is failing, not the file')
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 6
  assert lines[0] == (f"Reading {path} failed ([Errno 5] Input/output error: '{path}'); "
                      'retry 1 of 6 in 0.5 s')


def test_without_augment_training_reads_the_evaluation_crop_as_uint8(folder):
  # docs/data.md, "Training crops": augment=False trains on the evaluation
  # crop; images go to the device as uint8, normalised there with
  # ImageNet's mean/std.
  from resnet_jax.data import datasets
  from resnet_jax.data import image_decoding
  split = _good_files(folder)
  examples = file_loader.TrainExamples(split, 4, 0, 24, augment=False)
  for k in range(8):
    got = examples(k)
    index = int(np.flatnonzero(split.labels == got['label'])[0])
    assert got['image'].dtype == np.uint8
    np.testing.assert_array_equal(
        got['image'], image_decoding.eval_image(split.read(index), 24))
  source = datasets.resolve('jpegs', folder)
  assert datasets.normalization(source, None, 24) == ((0.485, 0.456, 0.406),
                                                      (0.229, 0.224, 0.225))


def test_the_run_gives_the_loader_its_crop_area_augment_and_seed(folder, monkeypatch):
  # docs/data.md, "Training crops": windows of crop_min_area-100% of the
  # area, default 8%; augment=False takes the evaluation crop.
  import types
  from configs import cifar
  assert cifar.get_config().crop_min_area == 0.08
  made = []
  real = file_loader.TrainExamples

  def spy(*args, **kwargs):
    made.append(real(*args, **kwargs))
    return made[-1]
  monkeypatch.setattr(file_loader, 'TrainExamples', spy)
  config = tiny_config(folder, dataset='jpegs', image_size=16, batch_size=4,
                       crop_min_area=0.35, augment=False, seed=9)
  run = types.SimpleNamespace(config=config, train=_split(folder), sizes=file_loader.Sizes(16),
                              num_steps=3, ckpt=None)
  loader = loop._file_batches(run, 0)  # pylint: disable=protected-access
  loader.close()
  (examples,) = made
  assert (examples.area, examples.augment, examples.seed, examples.global_batch) == (
      (0.35, 1.0), False, 9, 4)


def test_decoding_is_shared_as_threads_up_to_8_cores_then_one_process_per_4(monkeypatch):
  # docs/data.md, "The loader is google/grain": input_workers sets grain's
  # worker processes, the cores shared among them as decoding threads;
  # default threads in the training process up to 8 cores, beyond 8 one
  # process per 4.
  def workers(cores, input_workers=-1):
    monkeypatch.setattr(run_setup, '_cores', lambda: cores)
    return run_setup.file_workers(tiny_config(None, input_workers=input_workers))
  assert [workers(c) for c in (1, 2, 8)] == [(0, 1), (0, 2), (0, 8)]
  assert [workers(c) for c in (9, 16, 64)] == [(2, 4), (4, 4), (16, 4)]
  assert workers(16, 2) == (2, 8) and workers(2, 4) == (4, 1)


def test_memory_is_bounded_to_two_batches_per_worker_and_two_calls_ahead(monkeypatch):
  # docs/data.md, "The loader is google/grain": two batches ahead per worker
  # plus the loop's two calls ahead.
  from resnet_jax.data import input_pipeline
  built = []

  def make(steps):
    built.append(list(steps))
    return [{'s': np.array(s)} for s in steps]
  calls = input_pipeline.prefetch_chunks(make, lambda b: b, [(s, 1) for s in range(10)], 1)
  next(calls)
  deadline = time.time() + 10
  while len(built) < 3 and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)  # Time for an unbounded feeder to build more.
  assert len(built) == 3  # The call handed out and two ahead.
  calls.close()
  import grain
  options = {}

  class Stop(Exception):
    pass

  def spy(name, real):
    def make_options(*args, **kwargs):
      options[name] = kwargs
      if name == 'mp':
        raise Stop
      return real(*args, **kwargs)
    return make_options
  monkeypatch.setattr(grain, 'ReadOptions', spy('read', grain.ReadOptions))
  monkeypatch.setattr(grain, 'MultiprocessingOptions',
                      spy('mp', grain.MultiprocessingOptions))
  with pytest.raises(Stop):
    file_loader.iterate(grain.MapDataset.range(4), workers=2, threads=3)
  assert options['read']['prefetch_buffer_size'] == 2
  assert options['mp'] == {'num_workers': 2, 'per_worker_buffer_size': 2}


def test_image_size_refuses_every_augmentation_of_the_in_memory_pipelines(folder):
  # docs/data.md: "Not with image_size yet (refused by name): TrivialAugment,
  # Cutout, mixup and CutMix".
  for field, value in (('augment_policy', 'trivialaugment'), ('cutout_size', 8),
                       ('mixup_alpha', 0.2), ('cutmix_alpha', 1.0)):
    config = tiny_config(folder, dataset='jpegs', image_size=24, **{field: value})
    with pytest.raises(Exception) as e:
      run_setup.preflight(config)
    assert f'{field} {value!r} is drawn by the in-memory pipelines' in str(e.value), field


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
  # docs/data.md, "Bad files": file names in any language or encoding are
  # not bad (here Latin-1 bytes, which are not UTF-8).
  top = os.fsencode(str(tmp_path / 'd'))
  names = [b'caf\xe9.jpg', b'plain.jpg']
  for cls in (b'a', b'b'):
    for split in (b'train', b'test'):
      os.makedirs(os.path.join(top, split, cls))
      for i, name in enumerate(names):
        with open(os.path.join(top, split, cls, name), 'wb') as f:
          f.write(jpeg_files.jpeg_bytes(jpeg_files.pattern(30 + i, 40, seed=i)))
  split = image_folder.file_split(str(tmp_path / 'd'), 'train')
  assert sorted(os.fsencode(split.name(i)) for i in range(len(split))) == sorted(
      c + b'/' + n for c in (b'a', b'b') for n in names)
  examples = file_loader.TrainExamples(split, 4, 0, 16)
  batch = [examples(k) for k in range(4)]
  assert all(b['skipped'] == () for b in batch)
  assert sorted(int(b['label']) for b in batch) == [0, 0, 1, 1]
  val = list(iter(file_loader.eval_dataset(
      image_folder.file_split(str(tmp_path / 'd'), 'test'), 4, 16).to_iter_dataset()))
  assert val[0]['mask'].all() and val[0]['skipped'] == ()


# A grain worker as `init_worker` sets it up: stop signals to it are ignored.
WORKER = r'''
import os, signal, sys, time
from resnet_jax.data import grain_workers
grain_workers.init_worker(0, 1)
for sig in (signal.SIGTERM, signal.SIGINT):
  os.kill(os.getpid(), sig)
time.sleep(0.1)
print('survived', flush=True)
time.sleep(float(sys.argv[1]))
'''

# Starts a worker and exits without waiting for it, as a run killed with -9.
PARENT = r'''
import subprocess, sys
child = subprocess.Popen([sys.executable, '-c', sys.argv[1], '60'], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
'''


def _running(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def test_a_worker_ignores_stop_signals_and_exits_when_the_training_process_is_gone():
  # docs/data.md: worker processes ignore SIGTERM and SIGINT, and exit by
  # themselves within a second or two when the training process is gone.
  proc = subprocess.run([sys.executable, '-c', WORKER, '0'], capture_output=True,
                        text=True, cwd=REPO, timeout=60)
  assert (proc.returncode, proc.stdout) == (0, 'survived\n'), proc.stderr[-2000:]
  proc = subprocess.run([sys.executable, '-c', PARENT, WORKER], capture_output=True,
                        text=True, cwd=REPO, timeout=60)
  pid, said = proc.stdout.split()
  assert said == 'survived', proc.stderr[-2000:]
  deadline = time.time() + 5
  while _running(int(pid)) and time.time() < deadline:
    time.sleep(0.1)
  if _running(int(pid)):
    os.kill(int(pid), signal.SIGKILL)
    pytest.fail('the worker outlived the training process by 5 s')


@pytest.mark.slow
def test_a_failing_input_ends_in_a_checkpoint_and_a_clean_stop(folder, tmp_path,
                                                                monkeypatch):
  from resnet_jax import errors
  from resnet_jax.workdir import run_record
  monkeypatch.setattr(file_loader, 'RETRY_DELAYS', (0.0,))
  config = tiny_config(folder, dataset='jpegs', image_size=24, batch_size=8,
                       eval_batch_size=8, num_train_steps=14, log_every_steps=1,
                       checkpoint_every_steps=4)  # Threads in this process: 2 cores.

  def failing(after, fail):
    """An `open` that calls `fail(name)` on each training read after the
    first `after` (on every read with `after=-1`)."""
    calls = []

    def fake_open(name, *args, **kwargs):
      if after < 0 or '/train/' in name:
        calls.append(name)
        if len(calls) > after:
          fail(name)
      return open(name, *args, **kwargs)
    return fake_open

  # The filesystem fails for good within the batch of step 7 (6 batches take
  # 48 good files and the truncated one once or twice: reads 1..50): step 6,
  # the last trained, is saved (the periodic ones are 4, 5 and 8), one line,
  # exit code 74 (EX_IOERR).
  def eio(name):
    raise OSError(errno.EIO, 'Input/output error', name)
  monkeypatch.setattr(file_loader, 'open', failing(52, eio), raising=False)
  workdir = str(tmp_path / 'eio')
  with pytest.raises(errors.Stopped) as stop:
    loop.train_and_evaluate(config, workdir)
  assert stop.value.exit_code == 74
  assert 'the filesystem is failing, not the file' in str(stop.value)
  assert 'the checkpoint of step 6 is kept' in str(stop.value)
  assert sorted(run_record.checkpoint_steps(workdir))[-1] == 6
  # The truly bad file is listed; none of the files the filesystem failed.
  assert list(run_record.read(workdir)['sessions'][-1]['skipped_files']) == [
      BAD[len('train/'):]]

  # A stop signal to the process group whose loader died of it during the
  # evaluation after step 5 (a worker not yet ignoring signals): one line
  # and exit 143, as for the signal alone, keeping step 4's checkpoint (one
  # of step 5 without its evaluation would skip that evaluation on resume).
  def signalled(name):
    if '/val/' in name:
      os.kill(os.getpid(), signal.SIGTERM)
      raise RuntimeError('Worker process was terminated unexpectedly with exit code -15')
  monkeypatch.setattr(file_loader, 'open', failing(-1, signalled), raising=False)
  workdir = str(tmp_path / 'term')
  with pytest.raises(errors.Stopped) as stop:
    loop.train_and_evaluate(config, workdir)
  assert stop.value.exit_code == 128 + signal.SIGTERM
  assert str(stop.value).startswith('SIGTERM at step 5 (the input stopped with it: Worker')
  assert 'the checkpoint of step 4 is kept' in str(stop.value)
  assert max(run_record.checkpoint_steps(workdir)) == 4


# A process group under a storm of SIGTERMs (one every 5 ms) starts grain's
# workers five times, as every evaluation does: none may die of a signal
# before it ignores them. Prints the batches read and the signals caught.
STORM = r'''
import os, signal, sys, threading, time
from absl import flags
flags.FLAGS.mark_as_parsed()
from resnet_jax.data import file_loader
from resnet_jax.data import grain_workers
from resnet_jax.data import image_folder
caught = []
signal.signal(signal.SIGTERM, lambda *_: caught.append(1))
split = image_folder.file_split(sys.argv[1], 'test')
done = threading.Event()
def storm():
  while not done.is_set():
    os.killpg(0, signal.SIGTERM)
    time.sleep(0.005)
threading.Thread(target=storm, daemon=True).start()
read = 0
for _ in range(5):
  iterator = file_loader.iterate(file_loader.eval_dataset(split, 4, 16), 2)
  read += sum(1 for _ in grain_workers.held_reads(iterator))
  iterator.close()
done.set()
print('batches', read, 'caught', len(caught) > 0)
'''


@pytest.mark.slow
def test_workers_started_under_a_storm_of_group_signals_survive_it(folder):
  proc = subprocess.run([sys.executable, '-c', STORM, os.path.join(folder, 'jpegs')],
                        capture_output=True, text=True, cwd=REPO, timeout=300,
                        start_new_session=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['batches', '15', 'caught', 'True']


def _flags(folder, workdir, *extra, workers=2):
  return ['--config', 'configs/cifar.py', '--workdir', str(workdir),
          f'--config.data_dir={folder}', '--config.dataset=jpegs',
          # 96 px: a batch of 8 (221 KB) is more than grain's pipe holds
          # (64 KB), so a worker spends its waits mid-batch, as at ImageNet's
          # sizes; a worker killed there left the trainer blocked for good.
          '--config.image_size=96', '--config.model=resnet8', '--config.batch_size=8',
          '--config.eval_batch_size=8', '--config.num_train_steps=14',
          '--config.log_every_steps=1', '--config.checkpoint_every_steps=4',
          '--config.eval_every_epochs=1', f'--config.input_workers={workers}', *extra]


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k != 'images_per_sec'}
            for l in f]


def _final_params(folder, workdir):
  config = tiny_config(folder, dataset='jpegs', image_size=96, batch_size=8,
                       eval_batch_size=8, num_train_steps=14)
  run = run_setup.Run(config, str(workdir), need_train=False)
  state = jax.device_get(run.restore())
  run.ckpt.close()
  return state


def _children(pid: int) -> list:
  """The live processes whose parent is `pid` (Linux /proc)."""
  found = []
  for entry in os.listdir('/proc'):
    try:
      with open(f'/proc/{entry}/stat') as f:
        # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        if entry.isdigit() and int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
          found.append(int(entry))
    except (OSError, ValueError, IndexError):
      continue
  return found


def _wait_gone(pids, seconds=20):
  """The pids that are still alive after up to `seconds`."""
  deadline = time.time() + seconds
  while any(os.path.exists(f'/proc/{p}') for p in pids) and time.time() < deadline:
    time.sleep(0.5)
  return [p for p in pids if os.path.exists(f'/proc/{p}')]


@pytest.mark.slow
def test_group_sigterm_then_kill_9_with_workers_resumes_bitwise(folder, tmp_path):
  # The uninterrupted run trains in this process with the default loader (-1:
  # threads, up to 8 cores): no launch, no worker processes started per
  # evaluation. The loader gives the same batches either way
  # (test_batches_are_the_same_with_worker_processes_...), so the interrupted
  # run with workers must end in its bits.
  reference = tmp_path / 'ref'
  loop.train_and_evaluate(processes.config_of(_flags(folder, reference, workers=-1)),
                          str(reference))
  workdir = tmp_path / 'w'
  # SIGTERM to the whole process group, grain's workers included, as SLURM
  # signals a step's processes at preemption and a terminal's Ctrl-C does:
  # the run checkpoints and exits (it hung, its workers dead, before).
  proc = processes.main(_flags(folder, workdir), new_session=True)
  processes.wait_for_step(workdir, 3, proc)
  workers = _children(proc.pid)
  assert len(workers) >= 2  # grain's worker processes (and a resource tracker).
  os.killpg(proc.pid, signal.SIGTERM)
  try:
    proc.wait(timeout=120)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail('the run did not exit within 120 s of a group SIGTERM:\n'
                + proc.output()[1][-3000:])
  err = proc.output()[1]
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert 'by 2 grain worker process(es)' in err
  assert 'Received SIGTERM: saved the checkpoint of step' in err
  assert not _wait_gone(workers)
  # Then a kill -9 mid-epoch 2 (4.5 steps per epoch) of the resumed run.
  proc = processes.main(_flags(folder, workdir))
  processes.wait_for_step(workdir, 7, proc)
  workers = _children(proc.pid)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # The workers of the killed run exit by themselves, within seconds.
  assert not _wait_gone(workers)
  proc = processes.main(_flags(folder, workdir))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert 'resumed from the loader state of the checkpoint' in err
  assert f'Skipped {BAD[len("train/"):]}: does not decode' in err  # In epoch 3.
  assert _metrics(workdir) == _metrics(reference)
  a, b = _final_params(folder, reference), _final_params(folder, workdir)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
  # Each checkpoint holds grain's state (one file per process).
  with open(workdir / 'checkpoints' / '14' / 'data' / 'process_0-of-1.json') as f:
    state = json.load(f)
  assert (state['start'], state['workers']) == (0, 2) and state['grain']
  # run.json names the skipped file in every session that met it.
  with open(reference / 'run.json') as f:
    session = json.load(f)['sessions'][-1]
  assert list(session['skipped_files']) == [BAD[len('train/'):]]
  # predict sees a file as evaluation does and says the readable name.
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.predict', '--workdir', str(reference), '--json',
       '--top_k=3', os.path.join(folder, 'jpegs', 'val', 'n01', 'n01_003.JPEG')],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  names = [p['class'] for p in json.loads(result.stdout)[0]['predictions']]
  assert sorted(names) == ['name of n01', 'name of n02', 'name of n03']


def test_without_room_in_shared_memory_each_worker_gets_a_copy(monkeypatch, caplog):
  # Writing past /dev/shm's room (64 MB in a default Docker container)
  # would kill the run with SIGBUS; the file list is then sent as before.
  from resnet_jax.data import shared_arrays
  real = os.statvfs
  monkeypatch.setattr(shared_arrays.os, 'statvfs', lambda p: os.statvfs_result(
      (4096, 4096, 10, 1, 1, 10, 1, 1, 0, 255)) if p == shared_arrays.SHM_FOLDER else real(p))
  split = _numbered_split(5_000)
  with caplog.at_level('WARNING'):
    same = split.shared()
  assert same is split and not same._shared  # pylint: disable=protected-access
  assert 'no shared memory for it' in caplog.text and 'has 4,096 bytes free' in caplog.text


def test_segments_of_a_process_group_killed_whole_are_removed_by_the_next_run():
  # A scheduler's SIGKILL after its grace period takes the resource tracker
  # with the run: nothing removes the file list's segments but the next run.
  from resnet_jax.data import shared_arrays
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()
  orphan = f'{shared_arrays.PREFIX}{gone.pid}_0000'
  alive = f'{shared_arrays.PREFIX}{os.getpid()}_1111'
  for name in (orphan, alive):
    with open(os.path.join(shared_arrays.SHM_FOLDER, name), 'wb') as f:
      f.write(b'x' * 100)
  try:
    split = _numbered_split(100).shared()
    assert not os.path.exists(os.path.join(shared_arrays.SHM_FOLDER, orphan))
    assert os.path.exists(os.path.join(shared_arrays.SHM_FOLDER, alive))  # A live run's.
    assert split._shared[0]._segment.name.startswith(  # pylint: disable=protected-access
        f'{shared_arrays.PREFIX}{os.getpid()}_')
  finally:
    for name in (orphan, alive):
      if os.path.exists(os.path.join(shared_arrays.SHM_FOLDER, name)):
        os.unlink(os.path.join(shared_arrays.SHM_FOLDER, name))
