"""A command's process tree watched from /proc: output lines with their
times, each process's peak RSS and PSS, and the exit status with rusage.

PSS splits the pages processes share (grain's workers start as copies of
the training process) among them: the sum of PSS is what the tree costs the
machine, where the sum of RSS counts shared pages once per process. Linux
only.
"""

import os
import re
import signal
import subprocess
import threading
import time
from typing import Optional


def _memory(pid: int) -> tuple:
  """(RSS, peak RSS, PSS, USS) of `pid` in bytes; zeros once it is gone. USS:
  the pages no other process maps (what the process alone costs)."""
  values = {}
  for name, keys in (('status', ('VmRSS:', 'VmHWM:')),
                     ('smaps_rollup', ('Pss:', 'Private_Clean:', 'Private_Dirty:'))):
    try:
      with open(f'/proc/{pid}/{name}') as f:
        for line in f:
          if line.startswith(keys):
            values[line.split(':')[0]] = int(line.split()[1]) * 1024
    except OSError:
      pass
  return (values.get('VmRSS', 0), values.get('VmHWM', 0), values.get('Pss', 0),
          values.get('Private_Clean', 0) + values.get('Private_Dirty', 0))


def _tree(root: int) -> dict:
  """{pid: parent pid} of `root` and its descendants, from /proc/*/stat."""
  children = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      children.setdefault(ppid, []).append(int(entry))
  found = {root: None}
  queue = [root]
  for pid in queue:
    for child in children.get(pid, []):
      found[child] = pid
      queue.append(child)
  return found


class Watched:
  """A command in its own process group: its output lines with the seconds
  since the start, its process tree's memory, its exit status and rusage."""

  def __init__(self, cmd: list, env: dict, cwd: str, log: Optional[str] = None):
    """Starts `cmd`; `log`: a file that gets its output too, line by line."""
    self.cmd, self.lines, self.code, self.usage, self.log = cmd, [], None, None, log
    self.procs, self.series = {}, []  # {pid: {cmd, rss, hwm, pss, uss}}; (s, root's RSS)
    self._cv = threading.Condition()
    self.started = time.perf_counter()
    self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors='replace',
                                 start_new_session=True)
    self._eof = threading.Event()
    for target in (self._read, self._reap, self._sample):
      threading.Thread(target=target, daemon=True).start()

  def seconds(self) -> float:
    return time.perf_counter() - self.started

  def _read(self):
    with open(self.log or os.devnull, 'w') as log:
      log.write(' '.join(self.cmd) + '\n')
      for line in self.proc.stdout:
        log.write(line)
        log.flush()
        with self._cv:
          self.lines.append((self.seconds(), line.rstrip('\n')))
          self._cv.notify_all()
    self._eof.set()

  def _reap(self):
    # wait4, not Popen.wait: it gives the rusage (the exact peak RSS).
    _, status, usage = os.wait4(self.proc.pid, 0)
    self.proc.returncode = os.waitstatus_to_exitcode(status)
    # Its last lines first; but a process that left the group may hold the
    # pipe open for good.
    self._eof.wait(5.0)
    with self._cv:
      self.code, self.usage = self.proc.returncode, usage
      self._cv.notify_all()

  def _sample(self):
    while self.code is None:
      for pid, parent in _tree(self.proc.pid).items():
        rss, hwm, pss, uss = _memory(pid)
        if not rss:
          continue
        seen = self.procs.setdefault(pid, {'rss': 0, 'pss': 0, 'uss': 0, 'hwm': 0,
                                           'cmd': '', 'parent': parent})
        if not seen['cmd']:
          try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
              seen['cmd'] = f.read().replace(b'\0', b' ').decode(errors='replace')
          except OSError:
            pass
        seen.update(rss=max(seen['rss'], rss), pss=max(seen['pss'], pss),
                    uss=max(seen['uss'], uss), hwm=hwm)
        if pid == self.proc.pid:
          self.series.append((self.seconds(), rss))
      time.sleep(0.25)

  def find(self, pattern: str, timeout: float, start: int = 0):
    """(seconds, match, line index) of the first line from `start` matching
    `pattern`; None if the process ends or `timeout` passes first."""
    deadline = time.perf_counter() + timeout
    with self._cv:
      while True:
        for i in range(start, len(self.lines)):
          m = re.search(pattern, self.lines[i][1])
          if m:
            return self.lines[i][0], m, i
        start = len(self.lines)
        if self.code is not None or time.perf_counter() > deadline:
          return None
        self._cv.wait(1.0)

  def until(self, done, timeout: float) -> bool:
    """Polls `done()` while the process runs."""
    deadline = time.perf_counter() + timeout
    while not done():
      if self.code is not None or time.perf_counter() > deadline:
        return False
      time.sleep(0.2)
    return True

  def kill(self) -> None:
    """SIGKILL to the whole group (grain's workers too); waits for the exit."""
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self._exited(60)

  def _exited(self, timeout: float) -> bool:
    with self._cv:
      return self._cv.wait_for(lambda: self.code is not None, timeout)

  def wait(self, timeout: float) -> int:
    """The exit status; the group killed if it runs past `timeout`."""
    if not self._exited(timeout):
      self.kill()
    return self.code

  def peak_rss(self) -> int:
    """The command's own peak RSS (wait4's, after an exit of its own)."""
    if self.usage is not None and self.code is not None and self.code >= 0:
      return self.usage.ru_maxrss * 1024  # Linux: KB.
    return self.procs.get(self.proc.pid, {}).get('hwm', 0)

  def descendants(self, pid: int) -> list:
    """The sampled processes below `pid` (by their parents as sampled)."""
    below, found = {pid}, []
    for child, p in self.procs.items():  # Insertion order: parents come first.
      if p['parent'] in below:
        below.add(child)
        found.append(p)
    return found

  def tail(self, n: int = 15) -> str:
    return '\n'.join(l for _, l in self.lines[-n:])
