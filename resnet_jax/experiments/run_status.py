"""Where a run stands, read from its own files (run.json, run.lock, metrics),
never from a launcher's memory: a folder tells the same story to the launcher
that ran it, to a rerun, and to `results`."""

import dataclasses
import json
import os
from typing import Optional

from resnet_jax.reporting import metrics_io
from resnet_jax.workdir import run_lock
from resnet_jax.workdir import run_record

# Kinds. Finished: complete, diverged (a result: the recipe failed). To run
# again: pending (never started), stopped (a signal; resumes), crashed (ended
# without an outcome; resumes from its checkpoint), failed (its launcher saw
# the run exit with an error, e.g. before it could write run.json; the reason
# is in EXP/logs/NAME.json). Running: its lock is held.
COMPLETE, DIVERGED = 'complete', 'diverged'
PENDING, STOPPED, CRASHED, RUNNING = 'pending', 'stopped', 'crashed', 'running'
FAILED = 'failed'
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


def outcome_path(workdir: str) -> str:
  """EXP/logs/NAME.json: the launcher's word on the run's last attempt."""
  workdir = os.path.normpath(workdir)
  return os.path.join(os.path.dirname(workdir), 'logs',
                      os.path.basename(workdir) + '.json')


def error_line(log_path: str) -> str:
  """The run's own last `error:` or `stopped:` line in its log, if any."""
  try:
    with open(log_path, errors='replace') as f:
      lines = f.read()[-20000:].splitlines()
  except OSError:
    return ''
  return next((l.strip() for l in reversed(lines)
               if l.startswith(('error: ', 'stopped: '))), '')


def write_outcome(log_path: str, outcome: dict) -> None:
  """Writes the outcome of an attempt beside its log (EXP/logs/NAME.json)."""
  path = os.path.splitext(log_path)[0] + '.json'
  with open(path + '.tmp', 'w') as f:
    json.dump({**outcome, 'time': run_record.now()}, f)
  os.replace(path + '.tmp', path)


def _failure(workdir: str, record: Optional[dict]) -> Optional[str]:
  """The launcher's reason when the run's last attempt failed after the
  run's own files were last written (else None)."""
  try:
    with open(outcome_path(workdir)) as f:
      outcome = json.load(f)
  except (OSError, ValueError):
    return None
  started = [s.get('started', '') for s in (record or {}).get('sessions', [])]
  if outcome.get('outcome') != 'failed' or (started and started[-1] > outcome['time']):
    return None
  code = outcome.get('exit_code')
  where = f" of task {outcome['job_id']}" if outcome.get('job_id') else ''
  return (f'failed{where} (exit {code}): {outcome.get("reason", "")}; log: '
          f'{os.path.splitext(outcome_path(workdir))[0]}.log')


def of(workdir: str) -> Status:
  """The status of the run in `workdir` (which may not exist yet)."""
  record = run_record.read(workdir) if os.path.isdir(workdir) else None
  if run_lock.is_held(workdir):
    return Status(RUNNING, _last_step(workdir), 'running now (its run.lock is held)')
  failure = _failure(workdir, record)
  if not record or not record.get('sessions'):
    return Status(FAILED, 0, failure) if failure else Status(PENDING, 0, 'not started')
  sessions = record['sessions']
  step = _last_step(workdir)
  final = run_record.completed_step(workdir, record)
  if final is not None:
    done = [s for s in sessions if 'final_step' in s]
    evals = [l for l in metrics_io.read_lines(workdir) if 'eval_accuracy' in l]
    accuracy = (evals[-1]['eval_accuracy'] if evals else
                done[-1].get('eval_accuracy') if done else None)
    detail = f'complete, step {final}'
    if accuracy is not None:
      detail += f', test accuracy {100 * accuracy:.2f}%'
    return Status(COMPLETE, step, detail, accuracy)
  last = sessions[-1]
  if diverged(last):
    return Status(DIVERGED, step, f'diverged: {last["stopped"].split(";")[0]}')
  if 'stopped' in last:
    return Status(STOPPED, step, f'stopped at step {step}; resumes')
  if failure:
    return Status(FAILED, step, failure)
  return Status(CRASHED, step, f'ended without finishing at step {step}; resumes '
                'from its last checkpoint')


def _last_step(workdir: str) -> int:
  lines = metrics_io.read_lines(workdir) if os.path.isdir(workdir) else []
  return max((l['step'] for l in lines), default=0)
