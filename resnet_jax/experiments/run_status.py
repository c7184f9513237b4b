"""Where a run stands, read from its own files (run.json, run.lock, metrics),
never from a launcher's memory: a folder tells the same story to the launcher
that ran it, to a rerun, and to `results`."""

import dataclasses
import os
from typing import Optional

from resnet_jax.reporting import metrics_io
from resnet_jax.workdir import run_lock
from resnet_jax.workdir import run_record

# Kinds. Finished: complete, diverged (a result: the recipe failed). To run
# again: pending (never started), stopped (a signal; resumes), crashed (ended
# without an outcome; resumes from its checkpoint). Running: its lock is held.
COMPLETE, DIVERGED = 'complete', 'diverged'
PENDING, STOPPED, CRASHED, RUNNING = 'pending', 'stopped', 'crashed', 'running'
FINISHED = (COMPLETE, DIVERGED)
# errors.Stopped's exit code for a non-finite loss (training/loop.py).
DIVERGED_EXIT_CODE = 3


@dataclasses.dataclass
class Status:
  kind: str
  step: int = 0          # The last step metrics.jsonl records.
  detail: str = ''       # One phrase for the plan's table.
  accuracy: Optional[float] = None  # The final evaluation's, when complete.

  @property
  def finished(self) -> bool:
    return self.kind in FINISHED


def diverged(session: dict) -> bool:
  """A session that stopped on a non-finite loss (older records: by its text)."""
  return (session.get('exit_code') == DIVERGED_EXIT_CODE
          or 'training loss is' in str(session.get('stopped', '')))


def of(workdir: str) -> Status:
  """The status of the run in `workdir` (which may not exist yet)."""
  record = run_record.read(workdir) if os.path.isdir(workdir) else None
  if run_lock.is_held(workdir):
    return Status(RUNNING, _last_step(workdir), 'running now (its run.lock is held)')
  if not record or not record.get('sessions'):
    return Status(PENDING, 0, 'not started')
  sessions = record['sessions']
  step = _last_step(workdir)
  done = [s for s in sessions if 'final_step' in s]
  if done:
    evals = [l for l in metrics_io.read_lines(workdir) if 'eval_accuracy' in l]
    accuracy = evals[-1]['eval_accuracy'] if evals else done[-1].get('eval_accuracy')
    detail = f'complete, step {done[-1]["final_step"]}'
    if accuracy is not None:
      detail += f', test accuracy {100 * accuracy:.2f}%'
    return Status(COMPLETE, step, detail, accuracy)
  last = sessions[-1]
  if diverged(last):
    return Status(DIVERGED, step, f'diverged: {last["stopped"].split(";")[0]}')
  if 'stopped' in last:
    return Status(STOPPED, step, f'stopped at step {step}; resumes')
  return Status(CRASHED, step, f'ended without finishing at step {step}; resumes '
                'from its last checkpoint')


def _last_step(workdir: str) -> int:
  lines = metrics_io.read_lines(workdir) if os.path.isdir(workdir) else []
  return max((l['step'] for l in lines), default=0)
