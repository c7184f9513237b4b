"""benchmarks/imagenet_scale.py at the tiniest scale: the stand-in in both
layouts, prepare_data's arrangement of its official files (the same folder,
byte for byte), the epoch probe and the table. The 1.28M run is by hand."""

import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from resnet_jax.data import imagenet_classes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'imagenet_scale.py')
TINY = ['--classes', '3', '--per_class', '4', '--val', '6']


def _files(root) -> dict:
  """{path relative to root: bytes} of every file below root."""
  found = {}
  for top, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(top, name), 'rb') as f:
        found[os.path.relpath(os.path.join(top, name), root)] = f.read()
  return found


@pytest.mark.slow
def test_the_stand_in_prepares_into_its_own_arranged_folder_and_each_row_is_tabled(tmp_path):
  result = subprocess.run([sys.executable, SCRIPT, str(tmp_path), *TINY, '--only=prepare,epoch',
                           '--epoch_files=1000', '--keep'], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  *table, last = result.stdout.strip().splitlines()
  record = json.loads(last)
  assert table[0] == '| measurement | value | goal | met |'
  rows = {line.split(' | ')[0][2:]: line for line in table[2:]}
  assert list(rows) == [
      'stand-in', 'prepare_data: arranged', 'prepare_data: rate', 'prepare_data: memory',
      'epoch: boundary, 12 files (the stand-in)', 'epoch: each worker holds, 12 files (the '
      'stand-in)', 'epoch: boundary, 1,000 files', 'epoch: each worker holds, 1,000 files']
  assert 'FAILED' not in result.stdout
  # The stand-in: the counts asked for, ImageNet's first wnids, varied images.
  assert (record['standin']['train'], record['standin']['val_files']) == (12, 6)
  arranged = _files(tmp_path / 'imagenet2012')
  wnids = list(imagenet_classes.names())[:3]
  assert sorted({p.split(os.sep)[1] for p in arranged if p != 'classes.txt'}) == wnids
  assert sum(p.startswith('train') for p in arranged) == 12
  assert sum(p.startswith('val') for p in arranged) == 6
  images = [Image.open(tmp_path / 'imagenet2012' / p) for p in arranged if p.endswith('.JPEG')]
  assert {'RGB', 'L', 'CMYK'} <= {im.mode for im in images}
  assert all(16 <= side <= 64 for im in images for side in im.size)
  # prepare_data arranged every file of the official layout, into the same
  # folder the stand-in wrote directly (the devkit's labels, class names).
  assert {k: record['prepare'][k] for k in ('train', 'val', 'classes')} == dict(
      train=12, val=6, classes=3)
  assert _files(tmp_path / 'prepared' / 'imagenet2012') == arranged
  assert record['epoch']['standin']['files'] == 12 and record['epoch']['1000']['files'] == 1000
  assert record['epoch']['1000']['sent_to_worker'] > 0
  # Written once: a second shape in the same folder is refused.
  again = subprocess.run([sys.executable, SCRIPT, str(tmp_path), '--classes', '4', '--only='],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
  assert again.returncode != 0 and again.stderr.startswith('error: ')
  assert 'another shape' in again.stderr and 'Traceback' not in again.stderr
