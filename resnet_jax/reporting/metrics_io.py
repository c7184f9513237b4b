"""Metrics of a run: `metrics.jsonl` in the workdir and console log lines."""

import concurrent.futures
import json
import re
import math
import os
import socket
import time
from typing import Iterable, Optional

import jax
import numpy as np

from resnet_jax.reporting import plots
from resnet_jax.logs import log


def mean_metrics(per_step: Iterable[dict]) -> dict:
  """Means over the steps of a log interval."""
  per_step = list(per_step)
  return {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}


def scalars(metrics: dict) -> dict:
  """The JSON-able scalar entries of a metrics dict."""
  return {k: v for k, v in metrics.items() if np.ndim(v) == 0}


def first_nonfinite(steps, losses) -> Optional[tuple]:
  """(step, loss) of the first non-finite loss, or None."""
  for step, loss in zip(steps, losses):
    if not math.isfinite(float(loss)):
      return step, float(loss)
  return None


def read_lines(workdir: str) -> list:
  """The records of a workdir's metrics.jsonl ([] if it has none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.endswith('\n') and l.strip()]


def write_json(path: str, obj: dict) -> None:
  """Writes `obj` as JSON atomically (a reader never sees half a file)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


class EventFile:
  """A TensorBoard event file of scalars, written with the `tensorboard`
  package's own record writer: no TensorFlow needed."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer import record_writer
    self._event_pb2 = event_pb2
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}')
    self._file = open(os.path.join(logdir, name), 'wb')
    self._records = record_writer.RecordWriter(self._file)
    self._add(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _add(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def scalars(self, step: int, values: dict) -> None:
    """One event holding `{tag: value}` at `step`."""
    from tensorboard.compat.proto import summary_pb2
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in values.items()])
    self._add(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def close(self) -> None:
    self._records.close()


class JsonlWriter:
  """Appends one JSON object per line to a file (flushed at once)."""

  def __init__(self, path: str):
    self.path = path

  def write(self, record: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


class MetricsWriter:
  """Appends one JSON object per line to `metrics.jsonl` (process 0 only).

  On resume, lines after the restored step are dropped first: the resumed run
  writes them again, identically, so the file reads as one uninterrupted run.
  """

  # A redraw of curves.png is 0.16 s of Python (0.4 s more the first time,
  # importing matplotlib) on a thread, holding the GIL the training loop
  # needs: at most one per REDRAW_SECONDS, and one more at the end. A run
  # shorter than that (a test's) draws once, at the end.
  REDRAW_SECONDS = 30.0

  def __init__(self, workdir: str, resume_step: int = 0, progress=None):
    self.workdir = workdir
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = jax.process_index() == 0
    self.progress = progress
    self._tb = None
    self._plotter = concurrent.futures.ThreadPoolExecutor(1)
    # `_stale`: an evaluation came after the last drawing started.
    self._drawing, self._stale, self._drawn_at = None, False, time.monotonic()
    self._jsonl = JsonlWriter(self.path)
    if self.enabled and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [(l, _step_of(l)) for l in f]
      lines = [l for l, step in kept if step is not None and step <= resume_step]
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(lines)
      os.replace(tmp, self.path)
    if self.enabled:
      self._tb = EventFile(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict, total: Optional[int] = None) -> None:
    """One record: metrics.jsonl, TensorBoard, the console, and, once an
    evaluation came and REDRAW_SECONDS passed since the last drawing
    started, a fresh curves.png."""
    if not self.enabled:
      return
    record = {'step': step, **metrics}
    self._jsonl.write(record)
    self._tb.scalars(step, {_tb_name(k): v for k, v in metrics.items()})
    if self.progress is not None and 'train_loss' in metrics:
      self.progress.set_metrics(metrics)
    log.info('%s', format_line(record, total))
    if 'eval_accuracy' in metrics or 'val_accuracy' in metrics:
      self._stale = True
    # Checked at every record, so an evaluation that came too soon is drawn
    # once the interval has passed, not only at the next evaluation.
    busy = self._drawing is not None and not self._drawing.done()
    now = time.monotonic()
    if self._stale and not busy and now - self._drawn_at >= self.REDRAW_SECONDS:
      # Off the training thread: a redraw takes longer than a GPU epoch's
      # worth of steps. One at a time, from the newest lines.
      self._stale, self._drawn_at = False, now
      self._drawing = self._plotter.submit(
          plots.draw_curves, self.path, os.path.join(self.workdir, 'curves.png'))

  def _finish_drawing(self) -> None:
    if self._drawing is not None:
      try:
        self._drawing.result()
      except Exception as e:  # pylint: disable=broad-except
        log.warning('Drawing curves.png failed: %s', e)
        self._stale = True  # Drawn again below, from the whole file.
    if self._stale:
      self._stale = False
      plots.draw_curves(self.path, os.path.join(self.workdir, 'curves.png'))

  def close(self) -> None:
    """Finishes the curves (drawn once more if an evaluation came after the
    last drawing started) and the TensorBoard file."""
    if self._tb is not None:
      try:
        self._finish_drawing()
      except Exception as e:  # A plot must never mask how a run ended.
        log.warning('Drawing curves.png failed: %s', e)
      self._plotter.shutdown()
      self._tb.close()


def _tb_name(key: str) -> str:
  """train_loss -> train/loss, eval_top5_accuracy -> eval/top5_accuracy,
  ema_flip_val_accuracy -> ema_flip_val/accuracy."""
  match = re.match(r'((?:ema_)?(?:flip_)?(?:train|eval|val))_(.+)', key)
  return f'{match[1]}/{match[2]}' if match else 'train/' + key


def _step_of(line: str) -> Optional[int]:
  """The step of a metrics line; None for a line cut short by a kill."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return None


def format_line(record: dict, total: Optional[int] = None) -> str:
  """A readable one-line rendering of a metrics record."""
  parts = [f"step {record['step']}" + (f'/{total}' if total else '')]
  for key, value in record.items():
    if key == 'step':
      continue
    if key.endswith('accuracy'):
      parts.append(f'{key} {100 * value:.2f}%')
    elif key == 'learning_rate':
      parts.append(f'lr {value:.4g}')
    elif isinstance(value, float):
      parts.append(f'{key} {value:.4f}' if key != 'images_per_sec' else f'{value:.0f} img/s')
    else:
      parts.append(f'{key} {value}')
  return ' | '.join(parts)
