"""Task workers in processes of their own, for the scenarios that go through a worker.

``TaskWorker(kind, url, queue)`` starts one and returns once it consumes (its ready line
read from its output, never a fixed sleep); ``cpu()`` is the CPU time of its process and
its children (Celery's prefork pool) from /proc, ``stop()`` ends it by its pid (SIGTERM:
a warm shutdown, SIGKILL after a timeout). It dies with the process that started it
(``PR_SET_PDEATHSIG``), so a run killed by the driver leaves no worker behind.

The kinds (``KINDS``), all on the task ``bench.add`` (``x + y``) and at WARNING level (no
log line per task on either side):

* ``prw``: pika_rpc's ``Worker``, ``python -m pika_rpc worker -A _bench.tasks_pr -c 8``
  (a pool of 8 threads); ready when it prints ``pika_rpc worker ... ready:``.
* ``cthreads``, ``cprefork``: Celery 5's worker, ``celery -A _bench.tasks_celery worker``
  with ``--pool=threads -c 8`` or ``--pool=prefork -c 2``, ``--without-gossip
  --without-mingle --without-heartbeat``; ready when its ``worker_ready`` signal prints
  ``READY``. ``backend``: its result backend (``rpc://``, or ``pika-rpc://``: pika_rpc's
  plug-in).

The worker's node name is its queue's name (unique per run), its prefetch Celery's and
pika_rpc's default (4 x concurrency).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from .harness import SCRIPTS, child_env, rss_kb, tree_cpu, tree_pids

#: The task every worker runs: ``bench.add(x, y) -> x + y``.
TASK = 'bench.add'
#: What ``_bench.tasks_celery`` prints once Celery's worker consumes.
READY = 'BENCH-CELERY-WORKER-READY'

#: kind -> (label, pool, concurrency)
KINDS: Dict[str, tuple] = {
    'prw': ('pika_rpc Worker (threads, -c 8)', 'threads', 8),
    'cthreads': ('Celery worker --pool=threads -c 8', 'threads', 8),
    'cprefork': ('Celery worker --pool=prefork -c 2', 'prefork', 2),
}
_READY_LINE = {
    'prw': re.compile(r'^pika_rpc worker \S+ ready:'),
    'cthreads': re.compile(re.escape(READY)),
    'cprefork': re.compile(re.escape(READY)),
}


def _die_with_parent() -> None:  # in the child, between fork and exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TaskWorker:
    """One worker process of ``kind`` consuming ``queue``; see the module docstring."""

    def __init__(self, kind: str, url: str, queue: str, backend: str = 'rpc://') -> None:
        if kind not in KINDS:
            raise ValueError(f'unknown worker kind {kind!r}')
        self.kind, self.url, self.queue, self.backend = kind, url, queue, backend
        self.proc: Optional[subprocess.Popen] = None
        self.ready = threading.Event()
        self.lines: 'collections.deque[str]' = collections.deque(maxlen=60)
        self.start_seconds: Optional[float] = None

    @property
    def label(self) -> str:
        return KINDS[self.kind][0]

    def command(self) -> List[str]:
        _, pool, concurrency = KINDS[self.kind]
        if self.kind == 'prw':
            return [
                sys.executable,
                '-m',
                'pika_rpc',
                'worker',
                '-A',
                '_bench.tasks_pr',
                '-Q',
                self.queue,
                '-c',
                str(concurrency),
                '-n',
                f'{self.queue}@{socket.gethostname()}',
                '-l',
                'WARNING',
            ]
        return [
            sys.executable,
            '-m',
            'celery',
            '-A',
            '_bench.tasks_celery',
            'worker',
            f'--pool={pool}',
            '-c',
            str(concurrency),
            '-Q',
            self.queue,
            '-n',
            f'{self.queue}@%h',
            '-l',
            'WARNING',
            '--without-gossip',
            '--without-mingle',
            '--without-heartbeat',
        ]

    def start(self, timeout: float = 60.0) -> 'TaskWorker':
        """Start it and wait until it consumes; ``RuntimeError`` (with its output) when it
        exits or is not ready within ``timeout``."""
        env = child_env()
        env.update(
            PYTHONPATH=SCRIPTS + os.pathsep + env['PYTHONPATH'],
            BENCH_URL=self.url,
            BENCH_BACKEND=self.backend,
            PYTHONUNBUFFERED='1',
        )
        t0 = time.monotonic()
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
        threading.Thread(target=self._read, daemon=True).start()
        self.ready.wait(timeout)
        if not self.ready.is_set() or self.proc.poll() is not None:
            self.stop(5)
            raise RuntimeError(
                f'{self.label} not ready within {timeout} s (exit code {self.proc.poll()}):\n'
                + self.tail()
            )
        self.start_seconds = time.monotonic() - t0
        return self

    def _read(self) -> None:
        """Drain its output (a full pipe would block it); note the ready line."""
        assert self.proc is not None and self.proc.stdout is not None
        ready = _READY_LINE[self.kind]
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if not self.ready.is_set() and ready.search(line):
                self.ready.set()
        self.ready.set()  # it exited: nobody waits any longer

    def tail(self) -> str:
        return '\n'.join(self.lines)

    def cpu(self) -> float:
        """CPU seconds of the worker process and its children so far."""
        assert self.proc is not None
        return tree_cpu(self.proc.pid)

    def rss_kb(self) -> int:
        """RSS of the worker process and its children, kB."""
        assert self.proc is not None
        return sum(max(0, rss_kb(pid)) for pid in tree_pids(self.proc.pid))

    def stop(self, timeout: float = 3.0) -> Optional[int]:
        """End it once every task is done: SIGTERM for pika_rpc's (a graceful stop), SIGQUIT
        for Celery's (a cold shutdown: its threads pool's warm one takes ~10 s, outside any
        clock but not the suite's); SIGKILL to it and its children after ``timeout`` (the
        queue is deleted after the run: nothing is lost that matters). Returns its exit
        code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        pids = tree_pids(proc.pid)
        proc.send_signal(signal.SIGTERM if self.kind == 'prw' else signal.SIGQUIT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return proc.wait(10)
