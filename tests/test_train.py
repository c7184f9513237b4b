"""End to end on 8 fake CPU devices: train, checkpoint, resume, evaluate."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax.training import evaluation
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  for l in lines:
    l.pop('images_per_sec', None)  # Wall-clock, the one field that may differ.
  return lines


def _final_state(config, workdir):
  run = run_setup.Run(config, workdir, need_train=False)
  state = jax.device_get(run.restore())
  run.ckpt.close()
  return state


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
  """A 12-step run (checkpoints at 4, 8, 12; evaluations at each epoch)."""
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  config = tiny_config(tiny_data['data_dir'], num_train_steps=12)
  result = loop.train_and_evaluate(config, workdir)
  return config, workdir, result


@pytest.mark.slow
def test_run_writes_metrics_and_checkpoints(trained):
  config, workdir, result = trained
  lines = _metrics(workdir)
  train_lines = [l for l in lines if 'train_loss' in l]
  eval_lines = [l for l in lines if 'eval_loss' in l]
  assert [l['step'] for l in train_lines] == [2, 4, 6, 8, 10, 12]
  for l in train_lines:
    assert {'train_loss', 'train_accuracy', 'learning_rate'} <= set(l)
    assert 0 <= l['train_accuracy'] <= 1 and np.isfinite(l['train_loss'])
  # 64 train images at batch 16: an epoch every 4 steps, plus the end.
  assert [l['step'] for l in eval_lines] == [4, 8, 12]
  for l in eval_lines:
    assert l['eval_examples'] == 20 and 0 <= l['eval_accuracy'] <= 1
  assert [l['learning_rate'] for l in train_lines] == pytest.approx(
      [0.1, 0.1, 0.1, 0.01, 0.001, 0.001])  # Of 0-based steps 1, 3, ..., 11;
  # boundaries at 6 and 9.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '4', '8']
  assert result['eval_examples'] == 20


@pytest.mark.slow
def test_resume_continues_exactly(trained, tmp_path, caplog):
  config, workdir, _ = trained
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  # As if killed between the checkpoints of steps 8 and 12.
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '12'))
  with caplog.at_level(logging.INFO, logger='resnet_jax'):
    loop.train_and_evaluate(config, resumed)
  assert 'Resuming from the checkpoint at step 8' in caplog.text
  assert _metrics(resumed) == _metrics(workdir)
  a, b = _final_state(config, workdir), _final_state(config, resumed)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)
  assert int(b.step) == 12


@pytest.mark.slow
def test_eval_mode_restores_and_writes_eval_json(trained, tiny_data):
  config, workdir, result = trained
  out = evaluation.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert saved['step'] == 12 and saved['eval_examples'] == 20
  # Confusion rows are the true classes: their sums are the per-class counts.
  labels = tiny_data['arrays']['test'][1]
  confusion = np.array(saved['confusion_matrix'])
  np.testing.assert_array_equal(confusion.sum(1), np.bincount(labels, minlength=10))
  assert np.trace(confusion) / 20 == pytest.approx(saved['eval_accuracy'])
  assert saved['eval_accuracy'] <= saved['eval_top5_accuracy'] <= 1
  per_class = [saved['per_class_accuracy'][c] for c in saved['class_names']]
  counts = np.bincount(labels, minlength=10)
  np.testing.assert_allclose(np.array(per_class) * counts, np.diag(confusion))
  pixels = _pixels(os.path.join(workdir, 'confusion.png'))
  assert pixels.shape[0] > 200 and pixels.shape[1] > 200
  # Not a blank figure: coloured cells over a good part of it.
  coloured = (pixels.max(-1) - pixels.min(-1)) > 40
  assert coloured.mean() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
  assert saved['eval_accuracy'] == pytest.approx(result['eval_accuracy'])
  assert saved['eval_loss'] == pytest.approx(result['eval_loss'], rel=1e-5)
  assert out['eval_accuracy'] == saved['eval_accuracy']


@pytest.mark.slow
def test_eval_mode_restores_a_chosen_step(trained):
  config, workdir, _ = trained
  assert evaluation.evaluate_checkpoint(config, workdir, step=8)['step'] == 8
  from resnet_jax import errors
  with pytest.raises(errors.UserError, match='no checkpoint of step 5'):
    evaluation.evaluate_checkpoint(config, workdir, step=5)


@pytest.mark.slow
def test_tensorboard_events_and_curves_are_written(trained):
  _, workdir, _ = trained
  from tensorboard.backend.event_processing import event_file_loader
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert events
  scalars = {}
  for name in events:
    loader = event_file_loader.EventFileLoader(os.path.join(workdir, 'tensorboard', name))
    for event in loader.Load():
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(event.step)
  assert scalars['train/loss'] == [2, 4, 6, 8, 10, 12]
  assert scalars['eval/accuracy'] == [4, 8, 12]
  assert {'train/learning_rate', 'train/images_per_sec'} <= set(scalars)
  pixels = _pixels(os.path.join(workdir, 'curves.png'))
  assert pixels.shape[1] > 400
  # The train curve (tab:blue at alpha 0.8 on white) and the evaluation curve
  # (tab:orange) are drawn.
  for rgb in ((76, 146, 195), (255, 127, 14)):
    assert (np.abs(pixels - rgb).sum(-1) < 30).sum() > 50, rgb


def _pixels(path):
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB')).astype(int)


@pytest.mark.slow
def test_predict_png_jpeg_and_a_corrupt_file(trained, tiny_data, tmp_path):
  from PIL import Image
  from resnet_jax import predict
  _, workdir, _ = trained
  images = tiny_data['arrays']['test'][0]
  Image.fromarray(images[0]).resize((64, 48)).save(tmp_path / 'a.png')
  Image.fromarray(images[1]).save(tmp_path / 'b.jpg', quality=95)
  (tmp_path / 'bad.png').write_bytes(b'\x89PNG\r\n not really')
  paths = [str(tmp_path / n) for n in ('a.png', 'bad.png', 'b.jpg')]
  results = predict.predict(workdir, paths, top_k=3)
  assert [r['file'] for r in results] == paths
  assert 'not a readable image' in results[1]['error']
  for r in (results[0], results[2]):
    probs = [p['probability'] for p in r['predictions']]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1 + 1e-6
  # The same pixels as the model sees in evaluation: a 32x32 file is unchanged.
  Image.fromarray(images[2]).save(tmp_path / 'c.png')
  np.testing.assert_array_equal(predict.load_image(str(tmp_path / 'c.png')), images[2])
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.predict', '--workdir', workdir, '--json', '--top_k=3',
       *paths], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 1
  printed = json.loads(result.stdout)
  assert [p['class'] for p in printed[0]['predictions']] == [
      p['class'] for p in results[0]['predictions']]
  assert 'error' in printed[1]


def _png_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height and holds no pixels: Pillow's size
  check sees the declared size without anything being allocated."""
  import struct
  import zlib
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height,
                                                               8, 0, 0, 0, 0)) +
          chunk(b'IEND', b''))


@pytest.mark.slow
def test_predict_survives_any_file(trained, tmp_path):
  # The command: a decompression bomb, a 100-megapixel image (over
  # Pillow's warning size, under its limit), gray, RGBA and a text file.
  from PIL import Image
  _, workdir, _ = trained
  (tmp_path / 'bomb.png').write_bytes(_png_header(14000, 14000))
  Image.new('1', (10000, 10000), 1).save(tmp_path / 'big.png')
  Image.new('L', (40, 30), 128).save(tmp_path / 'gray.png')
  Image.new('RGBA', (32, 32), (255, 0, 0, 128)).save(tmp_path / 'rgba.png')
  (tmp_path / 'notes.txt').write_text('not an image')
  names = ['bomb.png', 'big.png', 'gray.png', 'rgba.png', 'notes.txt']
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.predict', '--workdir', workdir, '--json',
       *names], capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  assert 'Warning' not in result.stderr
  printed = {r['file']: r for r in json.loads(result.stdout)}
  assert list(printed) == names
  assert printed['bomb.png']['error'].startswith(
      'bomb.png: larger than the 179-megapixel limit kept against decompression '
      'bombs (Image size (196000000 pixels) exceeds limit')
  assert printed['notes.txt']['error'].startswith(
      'notes.txt: not a readable image (UnidentifiedImageError:')
  for name in ('big.png', 'gray.png', 'rgba.png'):
    assert len(printed[name]['predictions']) == 5, printed[name]


def _cli(args, timeout=300):
  # os.environ: conftest's 8 devices and any ISA flag of the caller.
  return subprocess.run([sys.executable, '-m', 'resnet_jax.main', *args],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.mark.slow
def test_cli_train_then_eval(tiny_data, tmp_path):
  workdir = str(tmp_path / 'cli')
  flags = ['--config', 'configs/cifar.py', '--workdir', workdir,
           f'--config.data_dir={tiny_data["data_dir"]}', '--config.model=resnet8',
           '--config.batch_size=16', '--config.eval_batch_size=16',
           '--config.num_epochs=0.75', '--config.log_every_steps=2']
  result = _cli(flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 3/3' in result.stderr and 'parameters' in result.stderr
  # The console is never quiet for long: a line before and after reading
  # the data, and one after the first step, before the first metrics line
  # (which metrics.jsonl does not get).
  text = result.stderr
  assert f'Reading cifar10 from {tiny_data["data_dir"]} ...' in text
  assert re.search(r'Read 64 training and 20 test images in \d+\.\d s', text)
  first = re.search(r'Step 1/3 done in \d+\.\d s \(compilation included\); metrics '
                    r'every 2 steps', text)
  assert first and first.start() < text.index('step 2/3')
  assert [l['step'] for l in _metrics(workdir)] == [2, 3, 3]
  result = _cli(flags + ['--mode=eval'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f'on 20 examples, wrote {workdir}/eval.json and {workdir}/confusion.png'
          in result.stderr)
  assert os.path.getsize(os.path.join(workdir, 'confusion.png')) > 0
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f)['eval_examples'] == 20


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_leaves_no_trace(tmp_path):
  workdir = tmp_path / 'w'
  for flags, message in [(['--config.model=resnet21'], 'unknown model'),
                         (['--config.batch_size=12'], 'does not divide evenly'),
                         (['--config.learning_rate=0'], 'learning_rate must be positive'),
                         (['--config.ema_decay=1.5'], 'ema_decay must be in (0, 1)'),
                         (['--config.mixup_alpha=1', '--config.cutmix_alpha=1'],
                          'both on')]:
    result = _cli(['--config', 'configs/cifar.py', '--workdir', str(workdir), *flags])
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last
    assert 'Traceback' not in result.stderr
  result = _cli(['--config', 'configs/cifar.py', '--workdir', str(workdir), '--mode=eval'])
  assert result.returncode == 2 and 'does not exist' in result.stderr
  assert not workdir.exists()  # Nothing was created for a refused command.


@pytest.mark.slow
def test_predict_takes_a_named_step(trained, tiny_data, tmp_path):
  from PIL import Image
  from resnet_jax import predict
  _, workdir, _ = trained
  path = str(tmp_path / 'a.png')
  Image.fromarray(tiny_data['arrays']['test'][0][0]).save(path)
  (at8,) = predict.predict(workdir, [path], top_k=10, step=8)
  (latest,) = predict.predict(workdir, [path], top_k=10)
  assert (at8['step'], latest['step']) == (8, 12)
  assert at8['predictions'] != latest['predictions']  # Other weights, other output.


def test_predict_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
  # 96x64: red, blue bands outside the centre 64 columns, a 1-pixel black and
  # white checkerboard inside. Halving (the shorter side 64 -> 32) averages
  # the checkerboard to grey and the centre crop drops the bands; a missing
  # resize keeps the checkerboard, another crop shows red or blue.
  from PIL import Image
  from resnet_jax import predict
  image = np.zeros((64, 96, 3), np.uint8)
  image[:, :16] = (255, 0, 0)
  image[:, 80:] = (0, 0, 255)
  checker = ((np.arange(64)[:, None] + np.arange(64)[None]) % 2 * 255).astype(np.uint8)
  image[:, 16:80] = checker[..., None]
  Image.fromarray(image).save(tmp_path / 'wide.png')
  out = predict.load_image(str(tmp_path / 'wide.png')).astype(float)
  assert out.shape == (32, 32, 3)
  inside = out[2:30, 2:30]  # Lanczos reaches two output pixels past an edge.
  assert abs(inside.mean() - 127.5) < 8 and inside.std() < 8
  assert np.abs(inside[..., 0] - inside[..., 2]).max() < 8  # No red or blue.


@pytest.mark.parametrize('args,line', [
    (['--top_k=0', 'a.png'], 'error: --top_k must be at least 1, got 0'),
    ([], 'error: no image files given; usage: python -m resnet_jax.predict --workdir W '
         'IMAGE...'),
])
@pytest.mark.slow
def test_predict_usage_errors_are_one_line(trained, args, line):
  _, workdir, _ = trained
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.predict', '--workdir',
                           workdir, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
  assert result.returncode == 2 and result.stderr.strip() == line


# ImageNet names two classes "crane" (n02012849 the bird, n03126707 the
# machine): its classes.txt as the devkit's words give it, `<wnid> <names>`.
CRANES = {'n01440764': 'tench, Tinca tinca', 'n02012849': 'crane',
          'n03126707': 'crane'}


@pytest.mark.slow
def test_two_classes_with_one_name_keep_their_results_apart(tmp_path):
  from PIL import Image
  from resnet_jax import predict
  rng = np.random.default_rng(0)
  root = tmp_path / 'data' / 'cranes'
  for split, n in (('train', 8), ('test', 2)):
    for wnid in CRANES:
      (root / split / wnid).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
            root / split / wnid / f'{i}.png')
  (root / 'classes.txt').write_text(''.join(f'{k} {v}\n' for k, v in CRANES.items()))
  config = tiny_config(str(tmp_path / 'data'), dataset='cranes', num_train_steps=2,
                       checkpoint_every_steps=2)
  workdir = str(tmp_path / 'w')
  loop.train_and_evaluate(config, workdir)
  evaluation.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  # Keyed by wnid: three entries for three classes, none merged.
  assert list(saved['per_class_accuracy']) == saved['class_ids'] == list(CRANES)
  assert saved['class_names'] == ['tench', 'crane (n02012849)', 'crane (n03126707)']
  confusion = np.array(saved['confusion_matrix'])
  np.testing.assert_allclose(np.array(list(saved['per_class_accuracy'].values())) * 2,
                             np.diag(confusion))
  (result,) = predict.predict(workdir, [str(root / 'test' / 'n02012849' / '0.png')],
                              top_k=3)
  got = {p['class_id']: p['class'] for p in result['predictions']}
  assert got == dict(zip(CRANES, saved['class_names']))
  lines = predict.text_lines([result])
  assert len(set(lines[1:])) == 3  # Three lines a reader tells apart ...
  assert {l.split()[0] for l in lines[1:]} == {'tench', 'crane'}
  assert sum('(n02012849)' in l for l in lines) == sum('(n03126707)' in l for l in lines) == 1
  # ... in one column, however long the names.
  assert len({l.rindex(' ') for l in lines[1:]}) == 1


@pytest.mark.slow
def test_imagenets_confusion_matrix_is_a_figure_of_bounded_size(tmp_path):
  # 1,000 classes at half an inch each were a 55,000-pixel square: 24 GB,
  # and the OOM killer ended `--mode=eval` on ImageNet as it finished.
  from resnet_jax.reporting import plots
  n = 1000
  matrix = np.eye(n, dtype=np.int64) * 50
  matrix[:, 0] += 10  # Every class also taken for class 0 at times.
  path = str(tmp_path / 'confusion.png')
  plots.draw_confusion(matrix, [f'n{i:08d}' for i in range(n)], path)
  pixels = _pixels(path)
  inches = plots.MAX_CONFUSION_INCHES + 1
  assert 1000 < pixels.shape[0] <= 110 * inches and 1000 < pixels.shape[1] <= 110 * inches
  # The matrix is drawn: its diagonal dark, a cell off it light.
  dark = pixels.sum(-1) < 300
  assert dark.mean() > 0.001 and not dark.all()
