"""Helpers for tests: bounded retries for broker-side facts, ``rabbitmqctl``, pika parameters.

``eventually`` is the one place a test may wait between two checks: broker-side facts
(what ``rabbitmqctl`` lists, a queue's message count) have no event to wait on.

``rabbitmqctl`` runs the command named by ``$RABBITMQCTL`` (split like a shell would, e.g.
``docker exec NAME rabbitmqctl``; the ``broker`` fixture sets it for a broker it started in
Docker), else ``rabbitmqctl``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Tuple, Type, TypeVar
from urllib.parse import quote

__all__ = [
    'eventually',
    'rabbitmqctl',
    'list_queues',
    'QueueInfo',
    'pika_url',
    'pika_parameters',
    'under_ci',
]

T = TypeVar('T')


def under_ci() -> bool:
    """True when ``$CI`` says so (``true``, ``1`` or ``yes``, any case), as CI services set it."""
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def eventually(
    check: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    retry_on: Tuple[Type[BaseException], ...] = (AssertionError,),
) -> T:
    """Call ``check()`` until it returns a truthy value; return that value.

    A falsy return or an exception in ``retry_on`` means "not yet": ``check`` is called again
    after ``interval`` seconds, until ``timeout`` seconds have passed. An assert-style check must
    therefore end with ``return True``: a check that forgets to return fails, never passes.

    Raises:
        AssertionError: still not true after ``timeout``; chained to the last retried error.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: wait() is a bounded pause between two checks
    while True:
        last_error = None
        try:
            value = check()
        except retry_on as exc:
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            what = f'{last_error!r}' if last_error is not None else f'it returned {value!r}'
            raise AssertionError(
                f'{getattr(check, "__name__", check)} not true after {timeout} s; last: {what}'
            ) from last_error
        pause.wait(interval)


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl -q ARGS...`` and return its stdout.

    Raises:
        RuntimeError: the command is missing, failed, or ran past ``timeout``; stderr included.
    """
    command = shlex.split(os.environ.get('RABBITMQCTL', 'rabbitmqctl')) + ['-q', *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise RuntimeError(
            f'{command[0]} not found: install rabbitmq-server, or set RABBITMQCTL '
            f'to a command that runs it (e.g. "docker exec NAME rabbitmqctl")'
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f'{shlex.join(command)} still running after {timeout} s') from exc
    if proc.returncode:
        raise RuntimeError(
            f'{shlex.join(command)} failed ({proc.returncode}): '
            f'{proc.stderr.strip() or proc.stdout.strip()}'
        )
    return proc.stdout


class QueueInfo(NamedTuple):
    """A queue as ``rabbitmqctl list_queues`` shows it."""

    durable: bool
    auto_delete: bool
    exclusive: bool
    arguments: Dict[str, Any]
    messages: int


def list_queues(vhost: str = '/') -> Dict[str, QueueInfo]:
    """Return ``{name: QueueInfo}`` for every queue of ``vhost``, read with ``rabbitmqctl``."""
    out = rabbitmqctl(
        'list_queues',
        '-p',
        vhost,
        'name',
        'durable',
        'auto_delete',
        'exclusive',
        'arguments',
        'messages',
        '--formatter',
        'json',
    )
    rows = json.loads(out) if out.strip() else []
    return {
        row['name']: QueueInfo(
            bool(row['durable']),
            bool(row['auto_delete']),
            bool(row['exclusive']),
            _arguments(row.get('arguments')),
            int(row.get('messages') or 0),
        )
        for row in rows
    }


def _arguments(raw: Any) -> Dict[str, Any]:
    """rabbitmqctl 3.x lists arguments as ``[[key, type, value], ...]``; newer ones as a dict."""
    if isinstance(raw, dict):
        return dict(raw)
    return {item[0]: item[-1] for item in raw or ()}


def pika_url(url: str) -> str:
    """Turn a kombu-style URL into one pika reads the same way (the first of a ``;`` list).

    kombu reads the path after the host as the vhost with ``//`` meaning ``/``; pika reads
    ``//`` as the empty vhost. So the vhost is re-encoded: ``amqp://h:5672//`` ->
    ``amqp://h:5672/%2F``.
    """
    first = url.split(';', 1)[0].strip()
    scheme, _, rest = first.partition('://')
    userinfo, at, hostpart = rest.rpartition('@')
    hostport, slash, tail = hostpart.partition('/')
    if not slash:
        return first
    vhost, question, query = tail.partition('?')
    path = '/' + quote(vhost, safe='') if vhost else '/'
    return f'{scheme}://{userinfo}{at}{hostport}{path}{question}{query}'


def pika_parameters(url: str, **attributes: Any) -> Any:
    """``pika.URLParameters`` for a kombu-style ``url``, then ``setattr`` of each keyword."""
    import pika

    params = pika.URLParameters(pika_url(url))
    for name, value in attributes.items():
        setattr(params, name, value)
    return params


#: Reconnect at once, then every 10-50 ms (config.connection_retry_policy reads these keys).
FAST_RECONNECT = {'interval_start': 0, 'interval_step': 0.01, 'interval_max': 0.05}


class LinkEvents:
    """Records the link's 'connected'/'lost'/'gave_up' events; ``wait`` blocks on them."""

    def __init__(self, link: Any) -> None:
        self.events: List[tuple] = []
        self._changed = threading.Condition()
        link.add_listener(self)

    def __call__(self, event: str, info: Any) -> None:  # I/O thread: quick
        with self._changed:
            self.events.append((event, info))
            self._changed.notify_all()

    def count(self, event: str) -> int:
        return sum(1 for e, _ in self.events if e == event)

    def wait(self, event: str, n: int = 1, timeout: float = 30.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count(event) >= n, timeout)


def poll_when_settled(backend: Any, task_id: str, timeout: float = 30.0) -> Any:
    """``backend.get_task_meta(task_id)`` once its link is open or one of its connect attempts
    failed: a first poll answers at once, before either is known."""
    link = backend._get_link()
    link.revive()  # a lazily started link connects now
    assert link.wait_until_state(lambda: link.state == 'OPEN' or link.failed_attempts > 0, timeout)
    return backend.get_task_meta(task_id)
