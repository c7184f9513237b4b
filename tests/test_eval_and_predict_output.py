"""What evaluation and predict tell the reader: ImageNet's readable names for
folders named by wnids (Imagenette, Imagewoof), today's names in predict, the
evaluation split by its folder's name, and progress lines of a long
evaluation."""

import json
import logging
import os

import pytest

from resnet_jax import logs
from resnet_jax.data import image_folder
from resnet_jax.reporting import progress
from resnet_jax.training import evaluation
from resnet_jax.training import inference
from resnet_jax.training import loop
from tests import jpeg_files
from tests.conftest import tiny_config

# Three ImageNet classes as Imagenette names its folders (wnids, no names
# file), two of them ImageNet's "crane"s (the bird and the machine).
WNIDS = ('n01440764', 'n02012849', 'n03126707')
READABLE = ('tench', 'crane (n02012849)', 'crane (n03126707)')


def _imagenette(root, name='nette', classes=WNIDS, per_class=(4, 6)):
  """An Imagenette-style folder: train/ and val/ of wnid folders, no names
  file."""
  return jpeg_files.write_folder(root, name, classes, per_class, names=False)


def test_folders_named_by_wnids_get_imagenet_names(tmp_path):
  root = _imagenette(tmp_path)
  assert image_folder.class_folders(root) == WNIDS
  assert image_folder.class_names(root) == READABLE
  # A names file of the dataset's own wins (here: one class renamed) ...
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write('n01440764 my fish\n')
  assert image_folder.class_names(root) == ('my fish', 'n02012849', 'n03126707')
  # ... and folders not all ImageNet's keep their own names.
  other = _imagenette(tmp_path, 'mixed', ('cat', 'n01440764'), (1, 1))
  assert image_folder.class_names(other) == ('cat', 'n01440764')


def test_predict_names_without_the_data_folder(tmp_path):
  # The run's data_dir is gone (another machine) and run.json with it.
  config = tiny_config(str(tmp_path / 'gone'), dataset='nette')
  workdir = str(tmp_path / 'w')
  # A checkpoint written before ImageNet's names shipped: wnids for names.
  assert inference.current_names(workdir, config, WNIDS, WNIDS) == READABLE
  # Names the run had from the user stay, as do classes that are not ImageNet's.
  assert inference.current_names(workdir, config, WNIDS, ('a', 'b', 'c')) == ('a', 'b', 'c')
  assert inference.current_names(workdir, config, ('x', 'y'), ('x', 'y')) == ('x', 'y')


@pytest.fixture(scope='module')
def nette_run(tmp_path_factory):
  """A 2-step resnet8 run read from the files (image_size 32) of an
  Imagenette-style folder: 12 training and 18 val images."""
  top = tmp_path_factory.mktemp('nette')
  _imagenette(top / 'data')
  config = tiny_config(str(top / 'data'), dataset='nette', image_size=32, batch_size=8,
                       eval_batch_size=8, num_train_steps=2, checkpoint_every_steps=2)
  workdir = str(top / 'w')
  lines = []
  handler = logging.Handler()
  handler.emit = lambda record: lines.append(record.getMessage())
  log = logging.getLogger('resnet_jax')
  level = log.level
  log.setLevel(logging.INFO)
  log.addHandler(handler)
  try:
    loop.train_and_evaluate(config, workdir)
  finally:
    log.removeHandler(handler)
    log.setLevel(level)
  return config, workdir, str(top / 'data' / 'nette'), lines


@pytest.mark.slow
def test_training_says_what_the_quiet_before_it_is(nette_run):
  lines = nette_run[3]
  starts = [next(i for i, l in enumerate(lines) if l.startswith(s)) for s in (
      'Model resnet8', 'Initialising the parameters of resnet8 ...', 'Training resnet8')]
  assert starts == sorted(starts), lines
  assert any(l.startswith('Listed 12 training and 18 val images') for l in lines), lines
  assert any(l.endswith('(decoded at 32x32 while training)') for l in lines), lines


@pytest.mark.slow
def test_eval_names_the_val_split_and_its_classes(nette_run, caplog, monkeypatch):
  config, workdir, _, _ = nette_run
  # Every call a line is due: 18 images at batch 8 are 3 calls.
  monkeypatch.setattr(progress.EvalProgress, 'EVERY', 0.0)
  with caplog.at_level(logging.INFO, logger='resnet_jax'):
    evaluation.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert saved['split'] == 'val' and saved['eval_examples'] == 18
  assert saved['class_ids'] == list(WNIDS) and saved['class_names'] == list(READABLE)
  assert 'Listed 18 val images in' in caplog.text
  assert '(decoded at 32x32 while evaluating)' in caplog.text
  assert 'while training' not in caplog.text
  assert 'Evaluating step 2 on 18 val images ...' in caplog.text
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith('Evaluating 18 val images: ')]
  # After the first and second of 3 calls (the last says nothing: the result
  # follows).
  assert [l.split(': ')[1].split(',')[0] for l in lines] == [
      '6 of 18 done (33%)', '12 of 18 done (67%)'], lines
  assert all(l.endswith(' left') and ' img/s, ~' in l for l in lines)


@pytest.mark.slow
def test_eval_lists_the_files_it_could_not_read_in_eval_json(nette_run):
  # --mode=eval opens no session of run.json: eval.json names its bad files.
  config, workdir, root, _ = nette_run
  bad = os.path.join(root, 'val', WNIDS[0], 'zz_bad.JPEG')
  with open(bad, 'w') as f:
    f.write('not a jpeg')
  try:
    evaluation.evaluate_checkpoint(config, workdir)
  finally:
    os.remove(bad)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert saved['eval_examples'] == 18  # Of 19 files: the bad one's row masked.
  assert list(saved['skipped_files']) == [f'{WNIDS[0]}/zz_bad.JPEG']
  assert saved['skipped_files'][f'{WNIDS[0]}/zz_bad.JPEG'].startswith(
      'not an image Pillow can read')


@pytest.mark.slow
def test_predict_reads_the_names_of_today(nette_run):
  from resnet_jax import predict
  _, workdir, root, _ = nette_run
  image = os.path.join(root, 'val', WNIDS[1], f'{WNIDS[1]}_000.JPEG')

  def names():
    (result,) = predict.predict(workdir, [image], top_k=3)
    return {p['class_id']: p['class'] for p in result['predictions']}
  assert names() == dict(zip(WNIDS, READABLE))
  # A names file added after training reaches predict as it reaches eval
  # (the checkpoint keeps the names the run saw).
  path = os.path.join(root, 'classes.txt')
  with open(path, 'w') as f:
    f.write(''.join(f'{w} class {i}, more words\n' for i, w in enumerate(WNIDS)))
  try:
    assert names() == {w: f'class {i}' for i, w in enumerate(WNIDS)}
  finally:
    os.remove(path)


def test_evaluation_progress_lines_are_throttled():
  now, lines, waits = [100.0], [], []
  bar = progress.EvalProgress('Evaluating 1,000 val images', 1000, 10, every=20.0,
                              clock=lambda: now[0], emit=lines.append)
  for _ in range(10):  # 10 calls, 7 s apart: a line every third call, 21 s.
    now[0] += 7.0
    bar.call_done(lambda: waits.append(now[0]))
  assert lines == [f'Evaluating 1,000 val images: {n} of 1,000 done ({n // 10}%), 14 img/s, '
                   f'~{left} left' for n, left in ((300, '49s'), (600, '28s'), (900, '7s'))]
  assert waits == [121.0, 142.0, 163.0]  # The device is waited for only for a line.
  # The last call says nothing (the result follows), nor does a short evaluation.
  short = progress.EvalProgress('x', 10, 3, clock=lambda: now[0], emit=lines.append)
  for _ in range(3):
    now[0] += 5.0
    short.call_done(lambda: pytest.fail('waited'))
  assert len(lines) == 3
  assert [logs.duration(s) for s in (4.4, 185, 3720)] == ['4s', '3m05s', '1h02m']
