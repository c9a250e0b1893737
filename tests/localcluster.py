"""A throwaway 3-node RabbitMQ cluster beside the system node, for tests and scripts.

:class:`LocalCluster` starts nodes ``n1..n3@localhost`` (AMQP on 127.0.0.1:5673-5675,
distribution on 25673-25675) from the installed RabbitMQ package, joins them into one cluster,
lets a caller stop, start and kill single nodes, brings them back, and removes everything::

    with LocalCluster() as cluster:          # start(): ~15-20 s
        app = App(broker=cluster.url)             # 'amqp://guest:guest@localhost:5673//;...'
        cluster.kill(cluster.queue_node('celery'))
        ...
        cluster.restore()                    # every node stopped or killed is back

The system node (``rabbit@localhost`` on 5672, shared by everything on the machine) is never
touched, by construction:

* every node and every ``rabbitmqctl`` call runs with ``ERL_EPMD_PORT`` = 4370, served by a
  private ``epmd -port 4370 -address 127.0.0.1`` that this class starts and stops, so no CLI
  call can even find the system node (which registers with the default epmd on 4369). The
  variable is set in each subprocess's environment only: never in ``os.environ``, or other
  tests' ``rabbitmqctl`` calls would miss the system node;
* ``HOME`` is a directory of ours with its own ``.erlang.cookie`` (mode 400), and every
  ``RABBITMQ_*`` location (config, env file, plugins, database, logs, pid file) points under our
  directory; the inherited ``RABBITMQ_*``/``ERL_*`` variables are dropped. Otherwise a node reads
  ``/etc/rabbitmq`` and takes the system node's name and port;
* the package's scripts are called directly (``/usr/lib/rabbitmq/bin``): the ``/usr/sbin``
  wrappers switch to the ``rabbitmq`` user and its cookie;
* only processes this class started are signalled: the ``rabbitmq-server`` scripts and epmd
  it spawned, and each node's Erlang VM (``beam.smp``, the script's child, pid from the node's
  pid file). A leftover of a killed earlier run is recognised by the marker variable
  :data:`MARKER_VARIABLE` in its environment (``/proc/PID/environ``), never by its name.

Everything lives under :data:`BASE_DIR`, a fixed, well-known place: ``lock`` (an ``flock``
held while a cluster runs, so two runs on one machine take turns instead of fighting over the
ports) and ``run/`` (cookie, configs, databases, logs, pid files), which :meth:`LocalCluster.start`
clears, after killing what a killed run left running, and :meth:`LocalCluster.close` removes.

Nodes are named by number (1..3) or by node name (``'n2@localhost'``), so the result of
:meth:`LocalCluster.queue_node` can be passed to :meth:`~LocalCluster.kill` directly.

Boot (measured on a 2-core VM, RabbitMQ 3.10.8, Erlang 25 JIT, beside other test runs):
15-22 s, up to ~27 s on a heavily loaded machine. The three nodes start in parallel, then n2
and n3 join n1 at once (``stop_app``; ``join_cluster n1@localhost``; ``start_app``). CPU
dominates. A node needs ~4.5 s of CPU to boot: the VM and prelaunch, then ~1.8 s between
"== Boot steps ==" and the first step (RabbitMQ loading its modules to collect the steps), then
the steps. Three nodes share two cores (boot ~10 s); each join's ``start_app`` runs the boot
steps again, and each ``rabbitmqctl`` is an Erlang VM of its own (~0.5 s of CPU; join ~4 s).
So the launcher waits for ports from Python and runs as few ``rabbitmqctl`` calls as it can.
:meth:`LocalCluster.close` kills the VMs (SIGKILL: the data is thrown away) and takes < 0.1 s.
A running cluster costs ~120 MB RSS and ~0.5 % CPU per node.

``python -m tests.localcluster`` starts one, prints its URL list and keeps it until Ctrl-C.

Thread-safe: a lock serialises the methods that change nodes; ``ctl``, ``running_nodes`` and
``queue_node`` only read, and may run at the same time.
Linux only (``/proc``); needs the ``rabbitmq-server`` package and Erlang's ``epmd``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

__all__ = [
    'LocalCluster',
    'Node',
    'ClusterError',
    'ClusterBusy',
    'missing_reason',
    'BASE_DIR',
    'RABBITMQ_SERVER',
    'RABBITMQCTL',
]

LOGGER = logging.getLogger(__name__)

RABBITMQ_BIN = '/usr/lib/rabbitmq/bin'
RABBITMQ_SERVER = os.path.join(RABBITMQ_BIN, 'rabbitmq-server')
RABBITMQCTL = os.path.join(RABBITMQ_BIN, 'rabbitmqctl')
#: The fixed place of every cluster's files: a new run finds what a killed run left here.
BASE_DIR = os.path.join(tempfile.gettempdir(), 'pika-rpc-cluster')
#: Set in the environment of every process we start; its value is the ``run`` directory.
MARKER_VARIABLE = 'PIKA_RPC_LOCAL_CLUSTER'
EPMD_PORT = 4370
FIRST_AMQP_PORT = 5673
FIRST_DIST_PORT = 25673
#: Port range of our ``rabbitmqctl`` processes' own distribution listener, on loopback (the
#: default 35672-35682 is what ``rabbitmqctl`` calls on the system node use).
CTL_DIST_PORTS = (25700, 25799)
HOST = 'localhost'
SIZE = 3

NodeRef = Union[int, str, 'Node']  # 1-based number, 'n2@localhost', or the Node
_POLL = 0.1  # seconds between two checks of a booting node or a dying process
_PAUSE = threading.Event()  # never set: wait() is a bounded pause between two checks


class ClusterError(RuntimeError):
    """The cluster could not be started, a command on a node failed, or a wait ran out."""


class ClusterBusy(ClusterError):
    """Another process holds :data:`BASE_DIR`'s lock: its cluster is using the ports."""


def missing_reason() -> Optional[str]:
    """Why no local cluster can run here (package or epmd missing), or None if it can."""
    for path in (RABBITMQ_SERVER, RABBITMQCTL):
        if not os.access(path, os.X_OK):
            return (
                f'no RabbitMQ package on this machine ({path} not found): the local cluster '
                f'runs the installed rabbitmq-server'
            )
    if _epmd_binary() is None:
        return 'no epmd (Erlang) on PATH: the local cluster runs a private epmd'
    if not os.path.isdir('/proc'):
        return 'no /proc: the local cluster finds the processes it started there (Linux only)'
    return None


class Node:
    """One node of a :class:`LocalCluster`: its number, Erlang name, ports and directory."""

    def __init__(self, index: int, run_dir: str) -> None:
        self.index = index
        self.name = f'n{index}@{HOST}'
        self.amqp_port = FIRST_AMQP_PORT + index - 1
        self.dist_port = FIRST_DIST_PORT + index - 1
        self.dir = os.path.join(run_dir, f'n{index}')
        self.pid_file = os.path.join(self.dir, 'pid')
        self.log_file = os.path.join(self.dir, 'log', f'{self.name}.log')
        self.url = f'amqp://guest:guest@{HOST}:{self.amqp_port}//'
        #: 'running', 'stopped' (its app, by :meth:`LocalCluster.stop_app`), 'killed' (by
        #: :meth:`LocalCluster.kill`), or 'down' (before start, after close).
        self.state = 'down'
        self.server: Optional[subprocess.Popen] = None  # the rabbitmq-server script we spawned

    def __repr__(self) -> str:
        return f'<Node {self.name} amqp={self.amqp_port} {self.state}>'


class LocalCluster:
    """A 3-node RabbitMQ cluster of our own on this machine. See the module docstring.

    Every blocking method takes a ``timeout`` (seconds) and raises :class:`ClusterError` when it
    runs out or a command fails (with the command's output or the node's log tail).
    """

    def __init__(self, base_dir: str = BASE_DIR, *, size: int = SIZE) -> None:
        self.base_dir = base_dir
        self.run_dir = os.path.join(base_dir, 'run')
        self.home = os.path.join(self.run_dir, 'home')
        self.nodes: List[Node] = [Node(i, self.run_dir) for i in range(1, size + 1)]
        self.boot_seconds: Dict[str, float] = {}  # phase -> seconds, filled by start()
        self._lock = threading.RLock()
        self._lock_file: Optional[int] = None
        self._epmd: Optional[subprocess.Popen] = None
        self._owner_pid = os.getpid()

    # ------------------------------------------------------------------ what tests read
    @property
    def urls(self) -> List[str]:
        """One kombu-style URL per node, n1 first (hold the guest password: fine on loopback)."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The ``;``-separated URL list of every node, as ``broker_url`` takes it."""
        return ';'.join(self.urls)

    @property
    def node_names(self) -> List[str]:
        return [node.name for node in self.nodes]

    def node(self, ref: NodeRef) -> Node:
        """The :class:`Node` for a number (1-based), an Erlang node name, or a Node of ours.

        Raises:
            KeyError: no such node in this cluster.
        """
        if isinstance(ref, Node) and ref in self.nodes:
            return ref
        for node in self.nodes:
            if ref in (node.index, node.name):
                return node
        raise KeyError(f'no node {ref!r} in this cluster (nodes: {self.node_names})')

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 120.0, lock_timeout: float = 30.0) -> 'LocalCluster':
        """Start a fresh cluster: every node running, all joined to n1. Blocks until then.

        Takes :data:`BASE_DIR`'s lock (waiting up to ``lock_timeout``), kills what a killed
        earlier run left, clears ``run/``, starts epmd and the nodes in parallel, joins n2..nN.
        On failure everything started is stopped again before the error propagates.

        Raises:
            ClusterBusy: another live process holds the lock after ``lock_timeout``.
            ClusterError: a port is taken by someone else, a node did not boot or join in time.
        """
        reason = missing_reason()
        if reason:
            raise ClusterError(reason)
        with self._lock:
            if self._lock_file is not None:
                raise ClusterError('this cluster is already started')
            deadline = time.monotonic() + timeout
            self._take_lock(lock_timeout)
            try:
                self._timed('cleanup', self._clean_leftovers)
                self._timed('prepare', self._prepare_files)
                self._timed('epmd', self._start_epmd)
                self._timed(
                    'boot',
                    lambda: self._in_parallel(self.nodes, lambda node: self._boot(node, deadline)),
                )
                self._timed(
                    'join',
                    lambda: self._in_parallel(
                        self.nodes[1:], lambda node: self._join(node, deadline)
                    ),
                )
                self._timed('check', lambda: self._await_members(deadline))
            except BaseException:
                self.close()
                raise
            LOGGER.info(
                'local cluster up: %s (%s)',
                self.node_names,
                ', '.join(f'{k} {v:.1f} s' for k, v in self.boot_seconds.items()),
            )
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Kill every node and the epmd we started, remove ``run/`` and release the lock.

        Idempotent; does nothing in a forked child (the cluster belongs to the process that
        started it). Blocks up to about ``timeout`` for the processes to go.
        """
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._kill_node_processes(node, deadline)
                node.state = 'down'
            if self._epmd is not None:
                _kill_and_reap(self._epmd, deadline)
                self._epmd = None
            if self._lock_file is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                os.close(self._lock_file)  # releases the flock
                self._lock_file = None

    def __enter__(self) -> 'LocalCluster':
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ faults
    def stop_app(self, ref: NodeRef, timeout: float = 60.0) -> None:
        """``rabbitmqctl stop_app`` on one node: its AMQP listener and queues go, the VM stays.

        Blocks until the app has stopped.
        """
        with self._lock:
            node = self.node(ref)
            self.ctl(node, 'stop_app', timeout=timeout)
            node.state = 'stopped'

    def start_app(self, ref: NodeRef, timeout: float = 60.0) -> None:
        """``rabbitmqctl start_app`` on a node stopped by :meth:`stop_app`. Blocks until it runs."""
        with self._lock:
            node = self.node(ref)
            self.ctl(node, 'start_app', timeout=timeout)
            node.state = 'running'

    def kill(self, ref: NodeRef, timeout: float = 30.0) -> int:
        """SIGKILL one node's Erlang VM (a crash) and wait until it is gone. Returns its pid.

        Raises:
            ClusterError: the node's VM is not one this cluster started (or already gone).
        """
        with self._lock:
            node = self.node(ref)
            pid = self._beam_pid(node)
            if pid is None:
                raise ClusterError(f'{node.name} has no running VM of ours to kill ({node.state})')
            deadline = time.monotonic() + timeout
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, deadline)
            if node.server is not None:
                _reap(node.server, deadline)
            node.state = 'killed'
            return pid

    def restore(self, timeout: float = 120.0) -> List[str]:
        """Bring back every node that is not running, and wait until all are cluster members.

        A killed node (or one whose VM died) is started again on its own data, so it rejoins
        the cluster; a node whose app was stopped gets ``start_app``. Nodes come back in
        parallel. Returns the names of the nodes brought back (none: returns at once).
        """
        with self._lock:
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                if node.state == 'running' and self._beam_pid(node) is None:
                    node.state = 'killed'  # its VM died without us
            down = [node for node in self.nodes if node.state != 'running']
            if not down:
                return []
            self._in_parallel(down, lambda node: self._bring_back(node, deadline))
            self._await_members(deadline)
            return [node.name for node in down]

    # ------------------------------------------------------------------ inspection
    def ctl(self, ref: NodeRef, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -q -n NODE ARGS...`` against one of our nodes; return its stdout.

        Raises:
            ClusterError: it failed or ran past ``timeout``; its output is in the message.
        """
        node = self.node(ref)
        command = [RABBITMQCTL, '-q', '-n', node.name, *args]
        try:
            proc = subprocess.run(
                command,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f'rabbitmqctl {" ".join(args)} on {node.name} still running after {timeout} s'
            ) from exc
        if proc.returncode:
            raise ClusterError(
                f'rabbitmqctl {" ".join(args)} on {node.name} failed '
                f'({proc.returncode}): {(proc.stderr or proc.stdout).strip()}'
            )
        return proc.stdout

    def running_nodes(self, ref: Optional[NodeRef] = None, timeout: float = 30.0) -> List[str]:
        """The cluster's running members as node ``ref`` (default: the first running) sees them."""
        status = json.loads(
            self.ctl(
                ref or self._any_running(), 'cluster_status', '--formatter', 'json', timeout=timeout
            )
        )
        return sorted(status['running_nodes'])

    def queue_node(self, queue: str, vhost: str = '/', timeout: float = 30.0) -> str:
        """The node hosting ``queue``: a classic queue's home node, a quorum queue's leader.

        Asked of a running node; a classic queue whose home node is down still names that node.

        Raises:
            KeyError: no queue of that name in ``vhost``.
        """
        # CSV, not JSON: the JSON formatter prints a pid without its node ('#PID<12768.1.0>').
        out = self.ctl(
            self._any_running(),
            'list_queues',
            '-p',
            vhost,
            'name',
            'type',
            'pid',
            'leader',
            '--formatter',
            'csv',
            timeout=timeout,
        )
        for row in csv.DictReader(io.StringIO(out)):
            if row['name'] == queue:
                return _queue_node(row)
        raise KeyError(f'no queue {queue!r} in vhost {vhost!r} of the local cluster')

    # ------------------------------------------------------------------ internals: start
    def _timed(self, phase: str, step: Callable[[], object]) -> None:
        began = time.monotonic()
        step()
        self.boot_seconds[phase] = time.monotonic() - began

    def _take_lock(self, timeout: float) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        fd = os.open(os.path.join(self.base_dir, 'lock'), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors='replace').strip() or '?'
                    os.close(fd)
                    raise ClusterBusy(
                        f'another local cluster runs (pid {holder} holds '
                        f'{self.base_dir}/lock) after waiting {timeout} s'
                    ) from None
                _PAUSE.wait(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_file = fd

    def _clean_leftovers(self) -> None:
        """Kill the processes a killed earlier run left (we hold the lock: nobody else runs)."""
        marked = [pid for pid in _pids() if _environ_marker(pid) == self.run_dir]
        for pid in marked:
            LOGGER.warning('killing pid %d left running by an earlier local cluster', pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        for pid in marked:
            _wait_gone(pid, deadline)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        busy = [port for port in self._ports() if _port_in_use(port)]
        if busy:
            raise ClusterError(
                f'port(s) {busy} on 127.0.0.1 are in use by a process this '
                f'launcher did not start; the local cluster needs them free'
            )

    def _ports(self) -> List[int]:
        return [EPMD_PORT] + [p for n in self.nodes for p in (n.amqp_port, n.dist_port)]

    def _prepare_files(self) -> None:
        os.makedirs(self.home)
        cookie = os.path.join(self.home, '.erlang.cookie')
        with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o400), 'w') as f:
            f.write(secrets.token_hex(16).upper())
        open(os.path.join(self.run_dir, 'rabbitmq-env.conf'), 'w').close()
        for node in self.nodes:
            os.makedirs(node.dir)
            open(os.path.join(node.dir, 'enabled_plugins'), 'w').close()
            with open(os.path.join(node.dir, 'rabbitmq.conf'), 'w') as f:
                f.write(
                    f'listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n'
                    f'distribution.listener.interface = 127.0.0.1\n'
                )

    def _env(self, node: Optional[Node] = None) -> Dict[str, str]:
        """The environment of a node (``node`` given) or of a ``rabbitmqctl`` call."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(('RABBITMQ_', 'ERL_')) and k not in ('HOME', 'CONF_ENV_FILE')
        }
        env.update(
            {
                MARKER_VARIABLE: self.run_dir,
                'HOME': self.home,
                'ERL_EPMD_PORT': str(EPMD_PORT),
                'RABBITMQ_CONF_ENV_FILE': os.path.join(self.run_dir, 'rabbitmq-env.conf'),
                'RABBITMQ_CTL_DIST_PORT_MIN': str(CTL_DIST_PORTS[0]),
                'RABBITMQ_CTL_DIST_PORT_MAX': str(CTL_DIST_PORTS[1]),
                'RABBITMQ_CTL_ERL_ARGS': '-kernel inet_dist_use_interface {127,0,0,1}',
            }
        )
        if node is not None:
            env.update(
                {
                    'RABBITMQ_NODENAME': node.name,
                    'RABBITMQ_NODE_IP_ADDRESS': '127.0.0.1',
                    'RABBITMQ_NODE_PORT': str(node.amqp_port),
                    'RABBITMQ_DIST_PORT': str(node.dist_port),
                    'RABBITMQ_CONFIG_FILE': os.path.join(node.dir, 'rabbitmq.conf'),
                    'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(node.dir, 'enabled_plugins'),
                    'RABBITMQ_MNESIA_BASE': os.path.join(node.dir, 'mnesia'),
                    'RABBITMQ_LOG_BASE': os.path.join(node.dir, 'log'),
                    'RABBITMQ_PID_FILE': node.pid_file,
                    'ERL_CRASH_DUMP': os.path.join(node.dir, 'erl_crash.dump'),
                }
            )
        return env

    def _start_epmd(self) -> None:
        self._epmd = subprocess.Popen(
            [_epmd_binary() or 'epmd', '-port', str(EPMD_PORT), '-address', '127.0.0.1'],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.run_dir,
        )
        deadline = time.monotonic() + 10.0
        while _epmd_names() is None:
            if self._epmd.poll() is not None or time.monotonic() >= deadline:
                raise ClusterError(
                    f'private epmd on port {EPMD_PORT} did not start '
                    f'(exit status {self._epmd.poll()})'
                )
            _PAUSE.wait(_POLL)

    def _spawn(self, node: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(node.pid_file)  # a stale pid would be read as the new VM's
        out = open(os.path.join(node.dir, 'server.out'), 'ab')
        try:
            node.server = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=self._env(node),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=node.dir,
            )
        finally:
            out.close()  # the child has its own copy

    def _boot(self, node: Node, deadline: float) -> None:
        """Spawn a fresh node; n1 is awaited until booted, a node about to join only until its
        AMQP port opens (its ``stop_app`` waits for the boot to finish: one CLI VM less)."""
        self._spawn(node)
        self._await_boot(node, deadline, confirm=node is self.nodes[0])
        node.state = 'running'

    def _await_boot(self, node: Node, deadline: float, *, confirm: bool = True) -> None:
        """Wait until the node's AMQP port opens, then (``confirm``) until its app has booted.

        Polls the port from Python: each ``rabbitmqctl`` call starts an Erlang VM (~0.5 s of
        CPU), and CPU is what the boot of three nodes on a small machine is short of.
        """
        while not _port_in_use(node.amqp_port):
            if node.server is not None and node.server.poll() is not None:
                raise ClusterError(
                    f'{node.name} exited ({node.server.returncode}) while '
                    f'booting; last log lines:\n{self._log_tail(node)}'
                )
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f'{node.name} did not open port {node.amqp_port} in time; '
                    f'last log lines:\n{self._log_tail(node)}'
                )
            _PAUSE.wait(_POLL)
        if confirm:
            self.ctl(
                node,
                'await_startup',
                '--timeout',
                str(_remaining(deadline)),
                timeout=_remaining(deadline) + 5,
            )

    def _join(self, node: Node, deadline: float) -> None:
        first = self.nodes[0].name
        for args in (('stop_app',), ('join_cluster', first), ('start_app',)):
            self.ctl(node, *args, timeout=_remaining(deadline))

    def _await_members(self, deadline: float) -> None:
        """Wait until the first running node sees every node as a running cluster member."""
        want = sorted(self.node_names)
        while True:
            seen = self.running_nodes(timeout=_remaining(deadline))
            if seen == want:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f'running cluster members are {seen}, not {want}')
            _PAUSE.wait(_POLL)

    def _bring_back(self, node: Node, deadline: float) -> None:
        if node.state == 'stopped' and self._beam_pid(node) is not None:
            self.ctl(node, 'start_app', timeout=_remaining(deadline))
        else:
            self._kill_node_processes(node, deadline)  # e.g. the script of a killed VM
            self._spawn(node)
            self._await_boot(node, deadline)
        node.state = 'running'

    @staticmethod
    def _in_parallel(nodes: Sequence[Node], step: Callable[[Node], None]) -> None:
        """Run ``step(node)`` for every node at once; re-raise the first failure."""
        if len(nodes) <= 1:
            for node in nodes:
                step(node)
            return
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            for future in [pool.submit(step, node) for node in nodes]:
                future.result()

    # ------------------------------------------------------------------ internals: processes
    def _beam_pid(self, node: Node) -> Optional[int]:
        """The pid of the node's live VM if it is the child of the script we spawned, else None."""
        if node.server is None or node.server.poll() is not None:
            return None
        try:
            with open(node.pid_file) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _parent_pid(pid) == node.server.pid else None

    def _kill_node_processes(self, node: Node, deadline: float) -> None:
        """SIGKILL every process of the node's script's process group (the script, its VM, the
        VM's helpers: ``start_new_session`` made the script the group's leader) that carries
        our marker, then reap the script."""
        if node.server is None:
            return
        group = [
            pid
            for pid in _pids()
            if _process_group(pid) == node.server.pid and _environ_marker(pid) == self.run_dir
        ]
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(node.server, deadline)
        for pid in group:
            _wait_gone(pid, deadline)
        node.server = None

    def _any_running(self) -> Node:
        for node in self.nodes:
            if node.state == 'running':
                return node
        raise ClusterError('no node of the local cluster is running')

    @staticmethod
    def _log_tail(node: Node, lines: int = 20) -> str:
        for path in (node.log_file, os.path.join(node.dir, 'server.out')):
            with contextlib.suppress(OSError):
                with open(path, errors='replace') as f:
                    return ''.join(f.readlines()[-lines:])
        return '(no log)'


# ---------------------------------------------------------------------- helpers
def _queue_node(row: Dict[str, str]) -> str:
    """Node of a ``list_queues name type pid leader`` row: quorum leader, else the pid's node.

    A classic queue's pid reads ``<n2@localhost.1796412781.1455.0>``; its type reads
    ``classic``, or ``rabbit_classic_queue`` while its home node is down.
    """
    if row['type'] == 'quorum' and row['leader']:
        return row['leader']
    return row['pid'].strip('<>').rsplit('.', 3)[0]


def _remaining(deadline: float) -> int:
    """Whole seconds left until ``deadline`` (at least 1: rabbitmqctl's timeouts are integers)."""
    return max(1, int(deadline - time.monotonic()))


def _epmd_binary() -> Optional[str]:
    return shutil.which('epmd')


def _epmd_names(port: int = EPMD_PORT) -> Optional[Dict[str, int]]:
    """``{short name: distribution port}`` registered with the epmd on ``port``, or None if no
    epmd answers there (the NAMES_REQ request of the epmd protocol)."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2.0) as sock:
            sock.sendall(struct.pack('>HB', 1, 110))
            data = b''
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    names = {}
    for line in data[4:].decode(errors='replace').splitlines():
        parts = line.split()  # 'name n1 at port 25673'
        if len(parts) == 5 and parts[0] == 'name':
            names[parts[1]] = int(parts[4])
    return names


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(('127.0.0.1', port)) == 0


def _pids() -> Iterator[int]:
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            yield int(entry)


def _environ_marker(pid: int) -> Optional[str]:
    """The value of :data:`MARKER_VARIABLE` in a live process's environment, if readable."""
    try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            environ = f.read()
    except OSError:
        return None
    prefix = MARKER_VARIABLE.encode() + b'='
    for item in environ.split(b'\0'):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors='replace')
    return None


def _stat_fields(pid: int) -> Optional[List[str]]:
    """Fields of ``/proc/PID/stat`` after ``(comm)``: state, ppid, pgrp, ...; None if gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def _parent_pid(pid: int) -> Optional[int]:
    fields = _stat_fields(pid)
    return None if fields is None or fields[0] == 'Z' else int(fields[1])


def _process_group(pid: int) -> Optional[int]:
    fields = _stat_fields(pid)
    return None if fields is None or fields[0] == 'Z' else int(fields[2])


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return _parent_pid(pid) is not None


def _wait_gone(pid: int, deadline: float) -> None:
    while _alive(pid):
        if time.monotonic() >= deadline:
            raise ClusterError(f'pid {pid} still alive after SIGKILL')
        _PAUSE.wait(_POLL / 10)


def _reap(proc: subprocess.Popen, deadline: float) -> None:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f'pid {proc.pid} ({proc.args[0]}) did not exit in time') from exc


def _kill_and_reap(proc: subprocess.Popen, deadline: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    _reap(proc, deadline)


def main() -> None:
    """``python -m tests.localcluster``: start a cluster, print its URL list, keep it until
    Ctrl-C (or SIGTERM), then remove it. For trying things by hand."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalCluster() as cluster:
        print(cluster.url, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == '__main__':
    main()
