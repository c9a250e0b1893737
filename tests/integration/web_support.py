"""Helpers for tests that run real servers (Django, gunicorn) and workers as subprocesses.

* ``Proc``: a subprocess with its stdout+stderr in a log file (never a pipe: a chatty server
  must not block on a full pipe), stopped with SIGTERM (or another signal) and a timeout,
  SIGKILL after that.
* ``show_logs_on_failure(*procs)``: a failing block prints every process's log.
* ``wait_http(url)``: bounded polling of an HTTP port until it answers (no sleep).
* ``get_json(url)``: ``(status, body)`` of a GET returning JSON.
* ``pika_connections()``: the broker's pika_rpc connections by the pid in their
  ``connection_name`` (``pika-rpc-io-<pid>-<n>``, see ``pika_rpc/_link.py``).
* ``children_of(pid)``: the pids of a process's children (Linux ``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from tests.helpers import eventually, rabbitmqctl

REPO = pathlib.Path(__file__).resolve().parents[2]
DJANGO_PROJECT = REPO / 'examples' / 'django_project'
_CONNECTION_NAME = re.compile(r'^pika-rpc-io-(\d+)-\d+$')


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> Dict[str, str]:
    """This environment, with the repository importable and ``extra`` set."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
    env['PYTHONUNBUFFERED'] = '1'
    env.update(extra)
    return env


class Proc:
    """A subprocess whose output goes to ``log_path``; ``stop()`` ends it (bounded)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: pathlib.Path,
        *,
        cwd: pathlib.Path,
        env: Dict[str, str],
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.popen = subprocess.Popen(
            list(args),
            cwd=str(cwd),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
        self.pid = self.popen.pid
        self._group = new_session

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors='replace')
        except OSError as exc:
            return f'(no log: {exc})'

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0, signum: int = signal.SIGTERM) -> Optional[int]:
        """``signum`` (to the whole session when started as one), wait, then SIGKILL.

        Returns the exit status, or None when it had to be killed.
        """
        status: Optional[int] = None
        if self.alive():
            self._signal(signum)
            try:
                status = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(10)
        else:
            status = self.popen.returncode
        if self._group:  # a child left behind (the autoreloader's) goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        return status

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._group:
                os.killpg(self.pid, signum)
            else:
                self.popen.send_signal(signum)


@contextlib.contextmanager
def show_logs_on_failure(*procs: Proc) -> Iterator[None]:
    """Print each process's log (captured, shown in pytest's report) if the block fails."""
    try:
        yield
    except BaseException:
        for proc in procs:
            state = 'running' if proc.alive() else f'exited {proc.popen.returncode}'
            print(
                f'----- {proc.name} (pid {proc.pid}, {state}) log -----\n{proc.log()}',
                file=sys.stdout,
            )
        raise


def get_json(url: str, timeout: float = 30.0) -> Tuple[int, Dict[str, Any]]:
    """GET ``url``; return ``(HTTP status, decoded JSON body)`` (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {'raw': body[:500].decode(errors='replace')}


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> Dict[str, Any]:
    """Poll ``url`` until it answers 200; fail at once if ``proc`` exited."""

    def answers() -> Dict[str, Any]:
        if not proc.alive():
            raise RuntimeError(
                f'{proc.name} exited with {proc.popen.returncode} before answering {url}'
            )
        status, body = get_json(url, timeout=5)
        assert status == 200, (status, body)
        return body

    return eventually(
        answers,
        timeout=timeout,
        interval=0.1,
        retry_on=(AssertionError, OSError, urllib.error.URLError),
    )


def pika_connections() -> Dict[int, List[Dict[str, Any]]]:
    """``{pid: [{'connection_name', 'name' (peer addresses), 'channels'}, ...]}`` from
    ``rabbitmqctl list_connections``, for every pika_rpc connection of the broker."""
    out = rabbitmqctl(
        'list_connections', 'name', 'channels', 'client_properties', '--formatter', 'json'
    )
    found: Dict[int, List[Dict[str, Any]]] = {}
    for row in json.loads(out) if out.strip() else []:
        props = {item[0]: item[-1] for item in row.get('client_properties') or ()}
        match = _CONNECTION_NAME.match(str(props.get('connection_name', '')))
        if match:
            found.setdefault(int(match.group(1)), []).append(
                {
                    'connection_name': props['connection_name'],
                    'name': row['name'],
                    'channels': row['channels'],
                }
            )
    return found


def queue_consumers() -> Dict[str, int]:
    """``{queue name: consumers}`` for every queue of vhost ``/``."""
    out = rabbitmqctl('list_queues', 'name', 'consumers', '--formatter', 'json')
    return {row['name']: int(row['consumers']) for row in (json.loads(out) if out.strip() else [])}


def children_of(pid: int) -> List[int]:
    """Pids whose parent is ``pid`` (read from ``/proc``)."""
    kids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(')') + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)
