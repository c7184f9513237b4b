"""Multi-process start-up on JAX's distributed runtime.

One process per host (or, for testing, several on one machine). The
coordinator is given explicitly (`--coordinator_address`, `--num_processes`,
`--process_id`), or detected under SLURM (`srun`) and on multi-host TPU VMs,
where `jax.distributed.initialize()` reads the cluster's own variables.

A process that dies (kill -9, the OOM killer, a crash) would leave the others
waiting in a collective: `_PeerWatch` names it and stops them at once. A host
that goes silent (frozen, cut off) is left to JAX's heartbeat, shortened to
`HEARTBEAT_TIMEOUT_S`.
"""

import atexit
import inspect
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import threading
import time
from typing import Optional

import jax

from resnet_jax import errors

# JAX's default, 100 s, kept a dead process's peers idle that long (61-92 s
# measured before they aborted). A death is told at once by `_PeerWatch`; the
# heartbeat is left for a host that freezes or drops off the network, and
# kept long enough (heartbeats come from a C++ thread, but a loaded
# coordinator or a network stall on a large cluster must not end a run).
HEARTBEAT_TIMEOUT_S = 30
# EX_TEMPFAIL: nothing is wrong with the run; the same command resumes it.
PEER_LOST_EXIT = 75
# How long a process that failed by itself waits for word of a dead peer
# before leaving alone: the watch hears of a death within milliseconds.
PEER_WAIT_S = 2.0


def _detected_cluster() -> Optional[str]:
  """The cluster kind JAX can auto-detect, if this is a multi-process launch."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_ID' in os.environ:
    return 'SLURM'
  if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    return 'TPU VM'
  return None


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               timeout_s: int = 300) -> str:
  """Joins the processes of a run, if there are several.

  Must run before anything touches a JAX backend.

  Returns:
    A description of the setup, for the log.

  Raises:
    errors.UserError: incomplete or inconsistent flags, or processes that do
      not all reach the coordinator.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise errors.UserError('--coordinator_address, --num_processes and '
                             '--process_id go together; pass all three')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise errors.UserError(f'--process_id {process_id} is not in 0..'
                             f'{num_processes - 1} (--num_processes {num_processes}); '
                             'give each process a distinct id below the count')
    if num_processes == 1:
      return 'single process'
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
    where = f'coordinator {coordinator_address}'
  else:
    cluster = _detected_cluster()
    if cluster is None:
      return 'single process'
    kwargs, where = {}, f'{cluster} auto-detection'
  if 'SLURM_PROCID' in os.environ:
    # JAX's SLURM detection would give each process the one GPU of its local
    # rank, whatever the tasks per node: with one task per node, 1 of 8.
    kwargs['local_device_ids'] = slurm_local_device_ids(os.environ, _visible_gpus())
  if 'heartbeat_timeout_seconds' in inspect.signature(jax.distributed.initialize).parameters:
    kwargs['heartbeat_timeout_seconds'] = HEARTBEAT_TIMEOUT_S
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
  except Exception as e:  # The runtime raises several kinds; all mean "no".
    raise errors.UserError(
        f'could not join the processes through {where} within {timeout_s} s '
        f'({type(e).__name__}); start every process with the same '
        '--coordinator_address and --num_processes and a distinct --process_id') from e
  if num_processes is not None and jax.process_count() != num_processes:
    raise errors.UserError(f'the coordinator has {jax.process_count()} processes but '
                           f'--num_processes is {num_processes}; make them agree')
  if jax.process_count() > 1:
    _PeerWatch.start()
  return (f'process {jax.process_index()} of {jax.process_count()} '
          f'({jax.local_device_count()} local devices) via {where}')


_WATCH_KEY = 'resnet_jax/peer_watch'


class _PeerWatch:
  """A TCP connection from every process to process 0 that says, the moment
  a process dies, which one: the kernel closes a dead process's sockets
  however it died, while JAX notices only when its heartbeats stop and then
  aborts in C++ without naming it. A process that ends through Python says
  `bye` first (atexit), so only a silent end raises the alarm.

  Best effort: without JAX's key-value store (a private API) or a port the
  others reach, there is no watch and the heartbeat stops them instead. When
  process 0 dies, JAX's abort (its calls to the coordinator fail at once)
  may come before this line; launch.sh or srun names process 0 then.
  """

  def __init__(self, client, index: int, count: int):
    self._client, self._index, self._count = client, index, count
    self._lock = threading.Lock()  # Guards `_peers`; one writer a socket.
    self._peers = {}  # socket -> the process at its other end (None: not yet known)
    self._finished = set()  # Processes that said bye.
    self._leaving = False  # This process fails alone (`leave_alone`).
    self._saw_loss = threading.Event()  # `_lost` is telling and ending the process.

  @classmethod
  def start(cls) -> None:
    """Watches the other processes from a daemon thread; after initialize."""
    try:
      from jax._src import distributed as jax_distributed  # The key-value store.
      state = jax_distributed.global_state
      watch = cls(state.client, jax.process_index(), jax.process_count())
      if watch._index == 0:
        serve = watch._listen()
      else:
        host = state.coordinator_address.rsplit(':', 1)[0].strip('[]')
        serve = lambda: watch._follow(host)
    except Exception as e:  # pylint: disable=broad-except
      _no_watch(e)
      return
    threading.Thread(target=_guarded(serve), name='peer-watch', daemon=True).start()
    atexit.register(watch._bye)  # Runs before JAX's own exit handler.
    _PeerWatch.current = watch

  def _listen(self):
    """Process 0: a port on every interface, published with a token."""
    if socket.has_dualstack_ipv6():
      server = socket.create_server(('', 0), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
      server = socket.create_server(('', 0))
    token = secrets.token_hex(8)
    self._client.key_value_set(_WATCH_KEY, f'{server.getsockname()[1]} {token}')
    return lambda: self._serve(server, token)

  def _serve(self, server, token: str) -> None:
    """Process 0: takes each process's hello and bye, or its silent end."""
    watched = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit.
    watched.register(server, selectors.EVENT_READ)
    pending = {}
    while True:
      for key, _ in watched.select():
        s = key.fileobj
        if s is server:
          conn = server.accept()[0]
          with self._lock:
            self._peers[conn] = None
          watched.register(conn, selectors.EVENT_READ)
          continue
        lines = _read_lines(s, pending)
        for words in lines or ():
          if words == ['bye'] and self._peers[s] is not None:
            self._finished.add(self._peers[s])
          elif (len(words) == 2 and words[0] == token and words[1].isdigit() and
                self._peers[s] is None):
            self._peers[s] = int(words[1])
          else:
            lines = None  # Not one of ours.
            break
        if lines is None:
          watched.unregister(s)
          with self._lock:
            peer = self._peers.pop(s)
          s.close()
          if peer is not None and peer not in self._finished:
            self._lost(peer)

  def _follow(self, host: str) -> None:
    """Another process: connects to process 0 and waits for its word."""
    port, token = self._client.blocking_key_value_get(_WATCH_KEY, 120_000).split()
    conn = socket.create_connection((host, int(port)), timeout=60)
    conn.settimeout(None)
    with self._lock:
      self._peers[conn] = 0
      conn.sendall(f'{token} {self._index}\n'.encode())
    pending = {}
    while (lines := _read_lines(conn, pending)) is not None:
      for words in lines:
        if words == ['bye']:
          self._finished.add(0)
        elif len(words) == 2 and words[0] == 'lost' and words[1].isdigit():
          self._lost(int(words[1]))
    if 0 not in self._finished:
      self._lost(0)

  def _lost(self, peer: int) -> None:
    """One line naming the dead process, then this process ends too."""
    if self._leaving:  # The connections it closed itself.
      return
    self._saw_loss.set()
    os.write(2, (f'error: process {peer} of {self._count} is gone (killed, crashed or '
                 'its host lost); this process stops too; resume with the same command '
                 'once every host is back\n').encode())
    if self._index == 0:
      # Process 0 tells the others and gives them a moment to go first:
      # once it (JAX's coordinator) is gone, their runtime aborts unheard.
      others = selectors.DefaultSelector()
      with self._lock:
        for s, p in self._peers.items():
          if p is not None and p != peer:
            _send(s, f'lost {peer}\n')
            others.register(s, selectors.EVENT_READ)
      deadline = time.monotonic() + 3
      while others.get_map() and time.monotonic() < deadline:
        for key, _ in others.select(deadline - time.monotonic()):
          if _read_lines(key.fileobj, {}) is None:
            others.unregister(key.fileobj)
    os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access

  def leave(self, wait_s: float) -> None:
    """Ends the connections without a bye: the others stop at once.

    Args:
      wait_s: how long to wait first for word of a dead peer. A collective
        that fails may be the first sign of one (Gloo sees the closed
        connection when this watch does): the process ends with the line
        naming that peer instead of leaving alone with a bare error.
    """
    if self._saw_loss.wait(wait_s):
      time.sleep(60)  # `_lost` ends the process.
    with self._lock:
      self._leaving = True
      for s in self._peers:
        try:
          s.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass

  def _bye(self) -> None:
    if self._leaving:
      return
    with self._lock:
      for s in self._peers:
        _send(s, 'bye\n')


_PeerWatch.current = None


def leave_alone(own_fault: bool) -> None:
  """For a process that fails while the others go on (its filesystem, its
  memory): tells them now, as a death would, instead of leaving them waiting
  in a collective while this process exits through Python (which says bye).

  Args:
    own_fault: the failure is this process's own verdict (a signal, a
      refusal). Otherwise it may come from a peer's death and the watch gets
      `PEER_WAIT_S` to name that peer first.
  """
  if _PeerWatch.current is not None:
    _PeerWatch.current.leave(0 if own_fault else PEER_WAIT_S)


def _read_lines(sock, pending: dict) -> Optional[list]:
  """The lines (as lists of words) that one read of `sock` completes, with
  `pending` holding each socket's partial line; None once it is closed."""
  try:
    data = sock.recv(4096)
  except OSError:  # Reset: a process killed with bytes unread.
    data = b''
  if not data:
    return None
  *lines, pending[sock] = (pending.get(sock, b'') + data).split(b'\n')
  return [line.decode(errors='replace').split() for line in lines]


def _send(sock, text: str) -> None:
  try:
    sock.sendall(text.encode())
  except OSError:
    pass  # That end is gone: its own watch or JAX's heartbeat tells.


def _guarded(serve):
  """`serve`, whose failure ends the watch with one warning line."""
  def run():
    try:
      serve()
    except Exception as e:  # pylint: disable=broad-except
      _no_watch(e)
  return run


def _no_watch(e: Exception) -> None:
  os.write(2, (f'warning: no watch over the other processes ({type(e).__name__}: {e}); '
               'a dead one stops the others within about '
               f'{HEARTBEAT_TIMEOUT_S} s, through JAX\'s heartbeat\n').encode())


def slurm_local_device_ids(env, visible_gpus: int) -> Optional[list]:
  """The GPUs (indices among the visible ones) a SLURM task trains on: all of
  them with one task per node, an equal share with several, and the one it is
  given under `--gpus-per-task=1`. None (JAX's choice) without GPUs.

  Raises:
    errors.UserError: a node's GPUs do not split evenly over its tasks.
  """
  if visible_gpus <= 0:
    return None
  if visible_gpus == 1:
    return [0]
  tasks = _tasks_on_node(env)
  rank = int(env.get('SLURM_LOCALID', '0'))
  if visible_gpus % tasks:
    raise errors.UserError(f'{visible_gpus} GPUs do not split evenly over the {tasks} '
                           'tasks of this node; use one task per node or one per GPU')
  share = visible_gpus // tasks
  return list(range(rank * share, (rank + 1) * share))


def _tasks_on_node(env) -> int:
  """Tasks on this node: SLURM_NTASKS_PER_NODE, else the first count of
  SLURM_TASKS_PER_NODE ('8(x2),4' -> 8), else 1."""
  if env.get('SLURM_NTASKS_PER_NODE'):
    return int(env['SLURM_NTASKS_PER_NODE'])
  first = env.get('SLURM_TASKS_PER_NODE', '1').split(',')[0].split('(')[0]
  return int(first) if first.isdigit() else 1


def _visible_gpus() -> int:
  """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what
  nvidia-smi lists."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return len([d for d in visible.split(',') if d.strip()])
  return _nvidia_gpus()


def describe_devices() -> list:
  """Log lines naming the platform, device kind and count, and a warning
  when `nvidia-smi` finds a GPU that JAX does not use (a CPU-only jaxlib)."""
  devices = jax.devices()
  lines = [f'Devices: {len(devices)} x {devices[0].device_kind} '
           f'({jax.default_backend()}), {jax.local_device_count()} on this process']
  if jax.default_backend() == 'cpu' and _nvidia_gpus():
    lines.append(f'warning: nvidia-smi lists {_nvidia_gpus()} GPU(s) but JAX runs on the '
                 'CPU (a CPU-only jaxlib); pip install -e ".[cuda]" to train on them')
  return lines


def _nvidia_gpus() -> int:
  """GPUs `nvidia-smi -L` lists (0 without the tool or a driver)."""
  if not shutil.which('nvidia-smi'):
    return 0
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True,
                         timeout=10, check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(line.startswith('GPU ') for line in out.splitlines())
