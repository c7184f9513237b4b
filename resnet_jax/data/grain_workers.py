"""grain's worker processes and stop signals: a signal to the process group
(SLURM, Ctrl-C) is the training process's to act on, never a worker's.

SLURM (preemption, scancel, a time limit) and a terminal's Ctrl-C signal the
whole process group. A worker that died of it left the training process
unable to read its next batch, or blocked for good on a half-written one.
So the workers ignore SIGTERM and SIGINT (`init_worker`), and they start
with those signals held until then (`signals_held`, `held_reads`); the
training process checkpoints, then closes its iterators, which stops them.
"""

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def signals_held():
  """Holds stop signals in this thread while grain starts its workers.

  Threads started meanwhile (grain's) keep the mask, and the processes they
  spawn start with it, so a stop signal cannot kill a worker before
  `init_worker` ignores it (an evaluation starts new workers every time).
  The training process loses nothing: a held signal goes to another thread,
  or waits until the mask is restored, and its handler runs as usual.
  """
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def held_reads(iterator) -> Iterator:
  """`iterator`'s items, each read with stop signals held (`signals_held`):
  grain starts a worker's threads and process on a later read too."""
  while True:
    with signals_held():
      item = next(iterator, _END)
    if item is _END:
      return
    yield item


_END = object()


def init_worker(worker_index: int, worker_count: int) -> None:
  """In each grain worker: ignore stop signals, and exit when the training
  process is gone.

  A stop signal sent to the process group (SLURM, Ctrl-C) is the training
  process's to act on: it checkpoints, then closes its iterators, which
  stops the workers. A run killed with -9 (or by the OOM killer) cannot stop
  its workers, which would otherwise wait on their queues forever, holding
  memory.
  """
  del worker_index, worker_count
  for sig in STOP_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)
  # Held since the spawn (`signals_held`); one that came meanwhile is dropped.
  signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(0)  # pylint: disable=protected-access
  threading.Thread(target=watch, daemon=True, name='exit-with-parent').start()


# Seconds grain waits for a stopped worker before killing it.
JOIN_TIMEOUT_S = 2.0


def shorten_join() -> None:
  """Caps grain's wait for a stopped worker (25 s in grain 0.2) at
  `JOIN_TIMEOUT_S`. A worker whose last batch is half-way into a full pipe
  never exits by itself once the training process stops reading, so a run
  stopped by a signal sat out most of a scheduler's grace period (20-29 s
  measured) before grain killed it. A worker has nothing to save: the
  checkpoint holds the loader's state. (A private constant: left alone where
  grain has none.)"""
  try:
    from grain._src.python.dataset.transformations import process_prefetch
  except ImportError:
    return
  if hasattr(process_prefetch, '_PROCESS_KILL_TIMEOUT_S'):
    process_prefetch._PROCESS_KILL_TIMEOUT_S = JOIN_TIMEOUT_S  # pylint: disable=protected-access

