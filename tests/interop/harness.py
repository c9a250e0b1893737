"""Processes for the interop tests: a real ``celery worker`` and one-shot Celery clients.

:class:`CeleryWorker` starts ``python -m celery -A tests.interop.celery_tasks worker`` with its
own queue and node name, logs to a file, is ready when its log says ``ready.`` (read with a
deadline, never a fixed sleep) and is stopped by its pid: SIGTERM (warm shutdown), then SIGKILL
after a timeout. A worker that exits or stays silent fails with its log.

:func:`run_celery_client` runs :mod:`tests.interop.celery_client` with a JSON spec and returns
the JSON object it prints; a crash or a timeout fails the test with its output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Lines that would mean a declaration clashed somewhere (never expected). Not a bare "406":
#: log timestamps have milliseconds such as ",406".
PRECONDITION = re.compile(r'PRECONDITION_FAILED|PreconditionFailed|inequivalent arg')


def child_env(amqp_url: str, queue: str) -> Dict[str, str]:
    """Environment for a Celery process: broker, queue, and this checkout on the path."""
    env = dict(os.environ, AMQP_URL=amqp_url, PIKA_RPC_INTEROP_QUEUE=queue, PYTHONUNBUFFERED='1')
    path = env.get('PYTHONPATH')
    env['PYTHONPATH'] = ROOT + (os.pathsep + path if path else '')
    return env


class WorkerFailed(Exception):
    """The Celery worker exited or did not become ready in time; the message holds its log."""


class CeleryWorker:
    """One ``celery worker`` subprocess consuming ``queue`` with the given pool."""

    def __init__(
        self, pool: str, queue: str, amqp_url: str, log_path: str, concurrency: int = 4
    ) -> None:
        self.pool, self.queue, self.log_path = pool, queue, log_path
        self.node = f'{queue}@%h'
        self._env = child_env(amqp_url, queue)
        self._concurrency = concurrency
        self.proc: Optional[subprocess.Popen] = None

    def command(self) -> List[str]:
        cmd = [
            sys.executable,
            '-m',
            'celery',
            '-A',
            'tests.interop.celery_tasks',
            'worker',
            f'--pool={self.pool}',
            '-Q',
            self.queue,
            '-n',
            self.node,
            '-l',
            'info',
            '--without-gossip',
            '--without-mingle',
            '--without-heartbeat',
        ]
        if self.pool != 'solo':
            cmd += ['-c', str(self._concurrency)]
        return cmd

    def start(self, timeout: float = 60.0) -> 'CeleryWorker':
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self.wait_for_log(r'\bready\.', timeout)
        except WorkerFailed:
            self.stop()
            raise
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, 'r', encoding='utf-8', errors='replace') as log:
                return log.read()
        except FileNotFoundError:
            return ''

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> 're.Match[str]':
        """Wait until the log matches ``pattern``; raise WorkerFailed on exit or timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log())
            if found:
                return found
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise WorkerFailed(
                    f'celery worker ({self.pool}) exited with {code} before its log '
                    f'matched {pattern!r}; log:\n{self.log()}'
                )
            if time.monotonic() >= deadline:
                raise WorkerFailed(
                    f'celery worker ({self.pool}) log did not match {pattern!r} '
                    f'within {timeout} s; log:\n{self.log()}'
                )
            try:  # a bounded wait that also notices the process exiting
                self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM (warm shutdown) by pid, SIGKILL after ``timeout``; return the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=10)

    def precondition_lines(self) -> List[str]:
        return [line for line in self.log().splitlines() if PRECONDITION.search(line)]


def run_celery_client(
    amqp_url: str,
    queue: str,
    spec: Dict[str, Any],
    timeout: float = 60.0,
    allow_crash: bool = False,
) -> Dict[str, Any]:
    """Run the Celery client script with ``spec``; return its JSON (plus its ``stderr``).

    A scenario that raised fails the test, unless ``allow_crash`` (then ``crashed`` holds
    the traceback).
    """
    cmd = [sys.executable, '-m', 'tests.interop.celery_client', json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=child_env(amqp_url, queue),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f'Celery client still running after {timeout} s; spec {spec}; output:\n'
            f'{exc.stdout}\n{exc.stderr}',
            pytrace=False,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if proc.returncode or not lines:
        pytest.fail(
            f'Celery client failed ({proc.returncode}); spec {spec}; output:\n'
            f'{proc.stdout}\n{proc.stderr}',
            pytrace=False,
        )
    out = json.loads(lines[-1])
    if 'crashed' in out and not allow_crash:
        pytest.fail(
            f'Celery client crashed; spec {spec}:\n{out["crashed"]}\n{proc.stderr}', pytrace=False
        )
    out['stderr'] = proc.stderr
    return out
