"""A task worker in a process of its own: pika_rpc's ``Worker`` (its CLI) or Celery's worker
with ``--pool=threads``, both with 16 pool threads, default settings, logging at WARNING.

:class:`WorkerProcess` starts one and returns once it consumes (its ready line read from its
output, never a fixed sleep), counts from its output the tasks it ran (``RAN <id>`` lines of
:mod:`_failover.tasks_pr` / :mod:`_failover.tasks_celery`) and the times its connection
closed, and is stopped by its pid (SIGTERM, SIGKILL after a timeout). It dies with the
process that started it (``PR_SET_PDEATHSIG``), so an interrupted run leaves no worker.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Counter, Deque, List, Optional

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(SCRIPTS)
CONCURRENCY = 16
READY = {
    'pika_rpc': re.compile(r'^pika_rpc worker \S+ ready:'),
    'celery': re.compile(r'FAILOVER-CELERY-WORKER-READY'),
}
#: A line each implementation logs (at WARNING) when its connection to the broker closed.
CLOSED = {
    'pika_rpc': re.compile(r': connection lost \('),
    'celery': re.compile(r'Connection to broker lost'),
}


def _die_with_parent() -> None:  # in the child, between fork and exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """One worker of ``impl`` (``'pika_rpc'`` or ``'celery'``) consuming ``queue`` of
    ``queue_type`` through the broker URL (list) ``url``."""

    def __init__(self, impl: str, url: str, queue: str, queue_type: str = 'classic') -> None:
        self.impl, self.url, self.queue, self.queue_type = impl, url, queue, queue_type
        self.proc: Optional[subprocess.Popen] = None
        self.ready = threading.Event()
        self.ran: Counter[str] = collections.Counter()
        self.closes: List[float] = []  # monotonic times of connection closes
        self.lines: Deque[str] = collections.deque(maxlen=80)
        self._lock = threading.Lock()

    def command(self) -> List[str]:
        if self.impl == 'pika_rpc':
            return [
                sys.executable, '-m', 'pika_rpc', 'worker', '-A', '_failover.tasks_pr',
                '-Q', self.queue, '--queue-type', self.queue_type, '-c', str(CONCURRENCY),
                '-n', f'{self.queue}@localhost', '-l', 'WARNING',
            ]  # fmt: skip
        return [
            sys.executable, '-m', 'celery', '-A', '_failover.tasks_celery', 'worker',
            '--pool=threads', '-c', str(CONCURRENCY), '-Q', self.queue,
            '-n', f'{self.queue}@%h', '-l', 'WARNING',
            '--without-gossip', '--without-mingle', '--without-heartbeat',
        ]  # fmt: skip

    def start(self, timeout: float = 90.0) -> 'WorkerProcess':
        """Start it and wait until it consumes; ``RuntimeError`` (with its output) when it
        exits or is not ready within ``timeout``."""
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join([SCRIPTS, ROOT, env.get('PYTHONPATH', '')]),
            FAILOVER_URL=self.url,
            FAILOVER_QUEUE=self.queue,
            FAILOVER_QUEUE_TYPE=self.queue_type,
            PYTHONUNBUFFERED='1',
        )
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=SCRIPTS,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._read, daemon=True, name=f'{self.impl}-worker-out').start()
        self.ready.wait(timeout)
        if self.proc.poll() is not None or not self.ready.is_set():
            self.stop(5)
            raise RuntimeError(f'{self.impl} worker not ready in {timeout} s:\n{self.tail()}')
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, closed = READY[self.impl], CLOSED[self.impl]
        for line in self.proc.stdout:
            if line.startswith('RAN '):
                with self._lock:
                    self.ran[line[4:].strip()] += 1
                continue
            self.lines.append(line.rstrip())
            if closed.search(line):
                with self._lock:
                    self.closes.append(time.monotonic())
            if not self.ready.is_set() and ready.search(line):
                self.ready.set()
        self.ready.set()  # it exited: nobody waits any longer

    def duplicates(self) -> int:
        """Tasks it ran more than once (each extra run counts)."""
        with self._lock:
            return sum(n - 1 for n in self.ran.values() if n > 1)

    def closes_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for t in self.closes if t >= since)

    def tail(self) -> str:
        return '\n'.join(self.lines)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM for pika_rpc's (a graceful stop), SIGQUIT for Celery's (a cold stop: the
        threads pool's warm one takes ~10 s); SIGKILL after ``timeout``. Returns its exit
        code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM if self.impl == 'pika_rpc' else signal.SIGQUIT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)
