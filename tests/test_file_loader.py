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

from resnet_jax.data import file_loader
from resnet_jax.data import image_folder
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
      examples = file_loader.TrainExamples(split, 4, trial, 8)
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


def test_a_failing_input_ends_in_a_checkpoint_and_a_clean_stop(folder, tmp_path,
                                                                monkeypatch):
  from resnet_jax import errors
  from resnet_jax.training import loop
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


def _flags(folder, workdir, *extra):
  return ['--config', 'configs/cifar.py', '--workdir', str(workdir),
          f'--config.data_dir={folder}', '--config.dataset=jpegs',
          # 96 px: a batch of 8 (221 KB) is more than grain's pipe holds
          # (64 KB), so a worker spends its waits mid-batch, as at ImageNet's
          # sizes; a worker killed there left the trainer blocked for good.
          '--config.image_size=96', '--config.model=resnet8', '--config.batch_size=8',
          '--config.eval_batch_size=8', '--config.num_train_steps=14',
          '--config.log_every_steps=1', '--config.checkpoint_every_steps=4',
          '--config.eval_every_epochs=1', '--config.input_workers=2', *extra]


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
  reference = tmp_path / 'ref'
  proc = processes.main(_flags(folder, reference))
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert 'by 2 grain worker process(es)' in err
  assert f'Skipped {BAD[len("train/"):]}: does not decode' in err
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
