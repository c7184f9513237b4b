"""Figures researchers draw by hand: learning curves and the confusion matrix."""

import functools
import json
import os
from typing import Sequence

import numpy as np


@functools.cache
def _pyplot():
  """matplotlib's pyplot, drawing to files only (no display needed); imported
  once, at the first figure, so a command that stops early or draws nothing does
  not pay for it (a refused flag: 2.6 s to 1.8 s on a 2-core CPU)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> None:
  """Writes atomically, so a viewer never reads half a PNG."""
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=110)
  _pyplot().close(fig)
  os.replace(tmp, path)


def draw_curves(metrics_path: str, out_path: str) -> None:
  """Train and evaluation (test or validation split; raw and, when kept, EMA
  weights) accuracy and loss against epoch, from `metrics.jsonl`."""
  with open(metrics_path) as f:  # A line being appended is left for next time.
    lines = [json.loads(l) for l in f if l.endswith('\n') and l.strip()]
  train = [l for l in lines if 'train_loss' in l]
  split = 'eval' if any('eval_loss' in l for l in lines) else 'val'
  evals = [l for l in lines if f'{split}_loss' in l and 'epoch' in l]
  fig, (acc_ax, loss_ax) = _pyplot().subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((acc_ax, 'accuracy', 'accuracy (%)'), (loss_ax, 'loss', 'loss')):
    scale = 100 if key == 'accuracy' else 1
    # A single point (the first log line) is a marker: a line needs two.
    ax.plot([l['epoch'] for l in train], [scale * l[f'train_{key}'] for l in train],
            label='train', color='tab:blue', alpha=0.8,
            marker='o' if len(train) == 1 else None, markersize=3)
    for weights, color in (('', 'tab:orange'), ('ema_', 'tab:green')):
      points = [l for l in evals if f'{weights}{split}_{key}' in l]
      if points:
        ax.plot([l['epoch'] for l in points],
                [scale * l[f'{weights}{split}_{key}'] for l in points], 'o-',
                label=weights + split, color=color, markersize=3)
    ax.set_xlabel('epoch')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  if evals:
    best = max(evals, key=lambda l: l[f'{split}_accuracy'])
    acc_ax.set_title(f"best {split} {100 * best[f'{split}_accuracy']:.2f}% at epoch "
                     f"{best['epoch']:.1f}")
  fig.tight_layout()
  _save(fig, out_path)


MAX_CONFUSION_INCHES = 24
LABELLED_CLASSES = 100


def draw_confusion(matrix: np.ndarray, class_names: Sequence[str], out_path: str,
                   title: str = '') -> None:
  """Row-normalised confusion matrix (rows: true class) with counts."""
  matrix = np.asarray(matrix)
  n = len(matrix)
  rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  # Half an inch a class, up to MAX_CONFUSION_INCHES: ImageNet's 1,000
  # classes made a 55,000-pixel square, 24 GB, and the OOM killer ended the
  # evaluation as it finished. Past LABELLED_CLASSES names are unreadable:
  # the axes are class indices, the names in eval.json.
  size = min(max(5, 0.5 * n), MAX_CONFUSION_INCHES)
  fig, ax = _pyplot().subplots(figsize=(size + 1, size))
  im = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1, interpolation='nearest')
  if n <= LABELLED_CLASSES:
    ax.set_xticks(range(n), class_names, rotation=60, ha='right',
                  fontsize=8 if n <= 20 else 4)
    ax.set_yticks(range(n), class_names, fontsize=8 if n <= 20 else 4)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
  else:
    ax.set_xlabel('predicted (class index; names in eval.json)')
    ax.set_ylabel('true (class index)')
  if n <= 20:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, int(matrix[i, j]), ha='center', va='center', fontsize=7,
                color='white' if rates[i, j] > 0.5 else 'black')
  fig.colorbar(im, ax=ax, fraction=0.046, label='fraction of the true class')
  ax.set_title(title)
  fig.tight_layout()
  _save(fig, out_path)


def draw_bands(groups: Sequence, out_path: str, metric: str = 'eval_accuracy') -> None:
  """Each group's accuracy against epoch: the mean over its runs as a line,
  ± one standard deviation as a band.

  Args:
    groups: [(label, [curve, ...])], each curve [(epoch, accuracy fraction)].
    out_path: the PNG to write.
    metric: the accuracy's name, for the axis.
  """
  fig, ax = _pyplot().subplots(figsize=(7, 4.5))
  for index, (label, curves) in enumerate(groups):
    by_epoch = {}
    for curve in curves:
      for epoch, value in curve:
        by_epoch.setdefault(round(epoch, 3), []).append(100 * value)
    if not by_epoch:
      continue
    epochs = sorted(by_epoch)
    mean = np.array([np.mean(by_epoch[e]) for e in epochs])
    std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0
                    for e in epochs])
    color = f'C{index % 10}'
    ax.plot(epochs, mean, 'o-', color=color, markersize=3,
            label=f'{label} (n={len(curves)})')
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'{metric} (%), mean ± std over seeds')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, out_path)
