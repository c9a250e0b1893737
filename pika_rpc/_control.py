"""A worker node's end of Celery's remote control: the pidbox queue, its commands and replies.

Celery broadcasts control commands (``celery inspect ping``, ``celery control revoke``,
``app.control.inspect().stats()``, ...) to the fanout exchange ``celery.pidbox``; each worker
node consumes them from its own exclusive queue ``<hostname>.celery.pidbox``. The names,
types, expiry and TTL, and the shapes of the replies, are Celery's facts, owned by
``_pidbox``; this module declares and consumes that queue, runs the commands meant for this
node and publishes their replies. The ``Worker`` owns a :class:`ControlHandler` and gives it
callbacks that read or change its state; it never reads a control message itself.

Commands answered (Celery's names and reply shapes; aliases ``dump_*`` too): ``ping``,
``stats``, ``active``, ``reserved``, ``scheduled``, ``registered``, ``revoked``,
``revoke``, ``terminate``, ``rate_limit``, ``shutdown``. ``celery status`` is a ``ping``.

Choices where Celery leaves room:

* The exchange is declared as kombu declares it (``durable=False``, ``auto_delete=False``),
  so neither side gets a 406 from the other's declaration; the queue is exclusive, with
  Celery's ``x-expires`` (10 s) and ``x-message-ttl`` (300 s), consumed with ``no_ack``
  (as Celery: a control message is not worth a redelivery).
* A message is for this node when its ``destination`` names it, or (no destination) its
  ``pattern`` matches with its ``matcher`` (``pcre``: a regular expression search; any
  other: a glob), or it names neither (a broadcast to all).
* Commands are dispatched by ``method`` to a table of handlers (``_commands``), each called
  with the message's ``arguments`` on the link's callback thread: quick (they read the
  worker's state under its lock), never blocking on the broker. A reply, when the message
  asks for one (``reply_to`` and ``ticket``), is encoded and published on the node's own
  control thread (``pika-rpc-control-<hostname>``, started at the first reply), so a slow
  publish never holds up task messages; a reply that cannot be published is logged and
  dropped (the client times out, as with Celery). A reply the serializer cannot encode
  (task arguments of a type JSON has no form for) is replaced by an ``error`` reply.
* A command this node does not answer gets ``{'error': ...}`` naming the ones it does, when
  a reply is wanted (Celery answers ``KeyError('name')``); otherwise it is logged at DEBUG.
  A handler that raises gets ``{'error': repr(exc)}``, as kombu does.
* ``terminate``: a thread cannot be killed. The tasks are revoked as with ``revoke``, and a
  running one is *abandoned* (REVOKED ``'terminated'`` stored, its message acked, a new
  pool thread takes its place); the reply says it was not killed. ``signal`` is ignored.
* ``rate_limit``: applied by the worker's ``on_rate_limit`` when it has one; without it the
  reply is Celery's error shape saying rate limits are not supported (nothing pretends).
* ``shutdown``: the reply ``{'ok': 'shutting down'}`` is sent first, then the worker's
  ``on_shutdown`` runs on the control thread (a graceful stop). Celery's worker exits
  without replying, so ``celery control shutdown`` reports "No nodes replied" for it.
* ``stats``: Celery's keys (``total``, ``pid``, ``clock``, ``uptime``, ``pool``,
  ``broker``, ``prefetch_count``, ``rusage``) plus ``pika_rpc`` (the worker's own counters).
* An undecodable control message is dropped with a WARNING: there is no one to tell.
* Revoked ids are kept in :class:`RevokedIds`, bounded and expiring as Celery's
  ``worker_state.revoked`` (``REVOKES_MAX`` ids, ``REVOKE_EXPIRES`` s).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ._jobs import HELD, QUEUED, RUNNING, Job
from ._pidbox import (
    PIDBOX_EXCHANGE,
    PIDBOX_EXCHANGE_TYPE,
    PIDBOX_QUEUE_EXPIRES,
    PIDBOX_QUEUE_TTL,
    PIDBOX_REPLY_EXCHANGE_TYPE,
    REVOKE_EXPIRES,
    REVOKES_MAX,
    TASK_INFO_ITEMS,
    LamportClock,
    broker_info,
    nok,
    ok,
    pidbox_queue_name,
    registered_entry,
    reply_message,
    reply_target,
    request_info,
    scheduled_info,
    stats_reply,
)
from ._threads import SerialExecutor
from .connection import Connection
from .entities import Exchange, Queue
from .errors import EncodeError, PikaRPCError
from .messaging import Consumer, Producer

LOGGER = logging.getLogger(__name__)

__all__ = ['ControlHandler', 'RevokedIds']

#: What ``on_revoke`` returns: the ids of the tasks that were running here.
RevokeCallback = Callable[[List[str], bool], Optional[Sequence[str]]]


class RevokedIds:
    """A bounded set of revoked ids that forgets them after ``expires`` s. Thread-safe."""

    def __init__(self, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES) -> None:
        self.maxlen, self.expires = maxlen, expires
        self._ids: 'OrderedDict[str, float]' = OrderedDict()
        self._lock = threading.Lock()

    def _forget_parent_state(self) -> None:
        # In a forked child: a parent thread may have held the lock at the fork.
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._ids.pop(task_id, None)
            self._ids[task_id] = now + self.expires
            while len(self._ids) > self.maxlen:  # the oldest go first
                self._ids.popitem(last=False)
            self._purge(now)

    def _purge(self, now: float) -> None:  # under _lock
        while self._ids and next(iter(self._ids.values())) < now:
            self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            until = self._ids.get(task_id)  # type: ignore[call-overload]
            if until is not None and until < time.monotonic():
                del self._ids[task_id]  # type: ignore[arg-type]
                return False
            return until is not None

    def ids(self) -> List[str]:
        """The ids not expired yet, oldest first (``inspect revoked``)."""
        with self._lock:
            self._purge(time.monotonic())
            return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def control_queue(hostname: str) -> Queue:
    """Node ``hostname``'s control queue, bound to Celery's pidbox exchange, as Celery declares it."""
    return Queue(
        pidbox_queue_name(hostname),
        exchange=Exchange(
            PIDBOX_EXCHANGE, type=PIDBOX_EXCHANGE_TYPE, durable=False, auto_delete=False
        ),
        durable=False,
        exclusive=True,
        auto_delete=True,
        expires=PIDBOX_QUEUE_EXPIRES,
        message_ttl=PIDBOX_QUEUE_TTL,
    )


def _ids(value: Any) -> List[str]:
    """A ``task_id`` argument (one id or a list) as a list of ids; what is not a str is
    dropped."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for i in value if isinstance(i, str)]
    return []


def _set_text(ids: Sequence[str]) -> str:
    # Celery's reply shows a Python set; sorted here, so it reads the same every time.
    return '{' + ', '.join(repr(i) for i in sorted(set(ids))) + '}' if ids else 'set()'


class ControlHandler:
    """Consumes node ``hostname``'s control queue, runs the commands meant for it and
    publishes their replies (see the module docstring).

    Args:
        hostname: the node name a command's ``destination`` or ``pattern`` is matched with,
            and the key of its replies.
        on_revoke: ``on_revoke(task_ids, terminate)``, the worker's revoke; returns the ids
            of the tasks that were running here (or None).
        jobs: returns ``[(state, Job), ...]`` for the worker's HELD, QUEUED and RUNNING
            jobs, read at one moment.
        stats: the worker's ``stats()``.
        tasks: returns the registered tasks by name.
        revoked: the worker's revoked ids.
        on_rate_limit: ``on_rate_limit(task_name, rate_limit)`` returns the reply (``ok`` or
            ``nok``); None: rate limits are not supported.
        on_shutdown: stops the worker gracefully; runs on the control thread after the reply.

    Every callback except ``on_shutdown`` runs on the link's callback thread and must not
    block on the broker. A command whose callback was not given gets an ``error`` reply.
    ``start``/``stop`` may be called from any thread (not the I/O thread) and block on the
    broker.
    """

    def __init__(
        self,
        hostname: str,
        on_revoke: RevokeCallback,
        *,
        jobs: Optional[Callable[[], List[Tuple[str, Job]]]] = None,
        stats: Optional[Callable[[], Dict[str, Any]]] = None,
        tasks: Optional[Callable[[], Mapping[str, Any]]] = None,
        revoked: Optional[RevokedIds] = None,
        on_rate_limit: Optional[Callable[[Any, Any], Dict[str, Any]]] = None,
        on_shutdown: Optional[Callable[[], None]] = None,
    ) -> None:
        self.hostname = hostname
        self.clock = LamportClock()
        self._on_revoke, self._jobs, self._stats = on_revoke, jobs, stats
        self._tasks, self._revoked = tasks, revoked
        self._on_rate_limit, self._on_shutdown = on_rate_limit, on_shutdown
        self._commands: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            'ping': self._ping,
            'stats': self._stats_reply,
            'active': self._active,
            'reserved': self._reserved,
            'scheduled': self._scheduled,
            'registered': self._registered,
            'revoked': self._revoked_ids,
            'revoke': self._revoke,
            'terminate': self._terminate,
            'rate_limit': self._rate_limit,
            'shutdown': self._shutdown,
        }
        self._answers = sorted(self._commands)
        for alias, name in (
            ('dump_active', 'active'),
            ('dump_reserved', 'reserved'),
            ('dump_schedule', 'scheduled'),
            ('dump_tasks', 'registered'),
            ('dump_revoked', 'revoked'),
        ):
            self._commands[alias] = self._commands[name]
        # Run on the control thread after the command's reply (if any) was published.
        self._after: Dict[str, Callable[[], None]] = {}
        if on_shutdown is not None:
            self._after['shutdown'] = on_shutdown
        self._consumer: Optional[Consumer] = None
        self._producer: Optional[Producer] = None
        self._serializer = 'json'
        self._broker: Dict[str, Any] = {}
        self._replies = SerialExecutor(f'pika-rpc-control-{hostname}')

    def start(self, connection: Connection) -> None:
        """Declare the control queue and consume it on ``connection``. Blocks.

        Raises:
            PreconditionFailed, PikaRPCError, ConnectionLost, TimeoutError: from the broker.
        """
        settings = connection.settings
        self._serializer = settings.task_serializer
        try:
            self._broker = broker_info(
                settings.broker_url,
                heartbeat=settings.broker_heartbeat,
                connect_timeout=settings.broker_connection_timeout,
                ssl=bool(settings.broker_use_ssl),
                transport_options=settings.broker_transport_options,
            )
        except (TypeError, ValueError) as exc:  # the link parsed it: never expected
            self._broker = {'error': str(exc)}
        self._producer = Producer(connection, auto_declare=False)
        self._consumer = Consumer(
            connection, [control_queue(self.hostname)], no_ack=True, on_message=self._on_message
        )
        self._consumer.consume()

    def stop(self, timeout: Optional[float] = 5.0) -> None:
        """Cancel the control consumer (if started; a failure is logged), then send the
        replies still queued, waiting up to ``timeout`` s for them. Blocks."""
        cancel_quietly(self._consumer, self.hostname, 'control')
        self._replies.stop(timeout)

    def for_me(self, body: Dict[str, Any]) -> bool:
        """True when the command ``body`` is meant for this node (see the module docstring)."""
        destination, pattern = body.get('destination'), body.get('pattern')
        if destination:
            return self.hostname in destination
        if pattern and body.get('matcher'):
            if body['matcher'] == 'pcre':
                return re.search(pattern, self.hostname) is not None
            return fnmatch.fnmatch(self.hostname, pattern)
        return True

    # ------------------------------------------------------------------ receiving (callback thread)
    def _on_message(self, message: Any) -> None:
        try:
            body = message.decode()
        except Exception as exc:
            LOGGER.warning(
                'worker %s: dropped an undecodable control message: %s', self.hostname, exc
            )
            return
        self.clock.adjust((message.headers or {}).get('clock'))
        if not isinstance(body, dict) or not self.for_me(body):
            return
        method = body.get('method')
        method = method if isinstance(method, str) else repr(method)
        target = reply_target(body)
        reply = self._dispatch(method, body.get('arguments'))
        if target is not None:
            self._replies.submit(self._send_reply, target, method, reply)
        after = self._after.get(method)
        if after is not None:
            self._replies.submit(after)

    def _dispatch(self, method: str, arguments: Any) -> Any:
        command = self._commands.get(method)
        if command is None:
            LOGGER.debug('worker %s: control command %s not supported', self.hostname, method)
            return nok(
                f'unknown command {method!r}: a pika_rpc worker answers {", ".join(self._answers)}'
            )
        try:
            return command(arguments if isinstance(arguments, dict) else {})
        except Exception as exc:
            LOGGER.error(
                'worker %s: control command %s failed', self.hostname, method, exc_info=True
            )
            return nok(repr(exc))

    # ------------------------------------------------------------------ replying (control thread)
    def _send_reply(self, target: Tuple[str, str, Optional[str]], method: str, reply: Any) -> None:
        exchange, routing_key, ticket = target
        try:
            try:
                self._publish(exchange, routing_key, ticket, reply)
            except EncodeError as exc:
                LOGGER.warning(
                    'worker %s: the reply to %s cannot be encoded (%s); an error reply is '
                    'sent instead',
                    self.hostname,
                    method,
                    exc,
                )
                self._publish(exchange, routing_key, ticket, nok(f'reply not encodable: {exc}'))
        except PikaRPCError as exc:
            LOGGER.warning(
                'worker %s: the reply to %s was not sent (%s): %s',
                self.hostname,
                method,
                routing_key,
                exc,
            )

    def _publish(self, exchange: str, routing_key: str, ticket: Optional[str], reply: Any) -> None:
        producer = self._producer
        if producer is None:
            return
        body, props = reply_message(self.hostname, reply, ticket, self.clock.forward())
        target = Exchange(
            exchange, type=PIDBOX_REPLY_EXCHANGE_TYPE, durable=False, auto_delete=False
        )
        producer.publish(
            body,
            exchange=target,
            routing_key=routing_key,
            declare=[target],
            serializer=self._serializer,
            retry=True,
            **props,
        )

    # ------------------------------------------------------------------ commands (callback thread)
    def _ping(self, arguments: Dict[str, Any]) -> Any:
        return ok('pong')

    def _stats_reply(self, arguments: Dict[str, Any]) -> Any:
        if self._stats is None:
            return nok('stats: not available on this node')
        return stats_reply(self._stats(), clock=self.clock.value, broker=self._broker)

    def _infos(self, state: str, safe: bool = False) -> List[Tuple[Job, Dict[str, Any]]]:
        if self._jobs is None:
            return []
        running = state == RUNNING
        return [
            (
                job,
                request_info(
                    job.request,
                    self.hostname,
                    time_start=job.time_start if running else None,
                    worker_pid=os.getpid() if running else None,
                    safe=safe,
                ),
            )
            for job_state, job in self._jobs()
            if job_state == state
        ]

    def _active(self, arguments: Dict[str, Any]) -> Any:
        return [info for _, info in self._infos(RUNNING, bool(arguments.get('safe')))]

    def _reserved(self, arguments: Dict[str, Any]) -> Any:
        return [info for _, info in self._infos(QUEUED, bool(arguments.get('safe')))]

    def _scheduled(self, arguments: Dict[str, Any]) -> Any:
        return [
            scheduled_info(job.request.eta, job.request.priority or 0, info)
            for job, info in self._infos(HELD, bool(arguments.get('safe')))
        ]

    def _registered(self, arguments: Dict[str, Any]) -> Any:
        tasks = self._tasks() if self._tasks is not None else {}
        items = arguments.get('taskinfoitems')
        items = list(items) if isinstance(items, (list, tuple)) and items else TASK_INFO_ITEMS
        builtins = bool(arguments.get('builtins'))
        names = sorted(n for n in tasks if builtins or not n.startswith('celery.'))
        return [registered_entry(name, tasks[name], items) for name in names]

    def _revoked_ids(self, arguments: Dict[str, Any]) -> Any:
        return self._revoked.ids() if self._revoked is not None else []

    def _revoke(self, arguments: Dict[str, Any], terminate: Optional[bool] = None) -> Any:
        ids = _ids(arguments.get('task_id'))
        if terminate is None:
            terminate = bool(arguments.get('terminate'))
        running = list(self._on_revoke(ids, terminate) or ())
        flagged = f'tasks {_set_text(ids)} flagged as revoked'
        if not terminate:
            return ok(flagged)
        if not running:
            return ok(f'terminate: none of these tasks is running here; {flagged}')
        return ok(
            f'terminate: {", ".join(running)}: REVOKED stored and the message acked, but the '
            f'running task was not killed (a thread cannot be killed: its function runs on, '
            f'its outcome dropped); {flagged}'
        )

    def _terminate(self, arguments: Dict[str, Any]) -> Any:
        return self._revoke(arguments, terminate=True)

    def _rate_limit(self, arguments: Dict[str, Any]) -> Any:
        name, limit = arguments.get('task_name'), arguments.get('rate_limit')
        if self._on_rate_limit is None:
            return nok(
                f'rate_limit is not supported: a pika_rpc worker has no per-task rate '
                f'limits, so {name!r} was not limited to {limit!r}'
            )
        return self._on_rate_limit(name, limit)

    def _shutdown(self, arguments: Dict[str, Any]) -> Any:
        if self._on_shutdown is None:
            return nok('shutdown: not available on this node')
        return ok('shutting down')  # the worker logs it and stops, after this reply


def cancel_quietly(consumer: Optional[Consumer], hostname: str, what: str) -> None:
    """Cancel one of worker ``hostname``'s consumers (if any); a failure is only logged, as
    its channel goes with the connection anyway. Blocks."""
    if consumer is None:
        return
    try:
        consumer.cancel()
    except PikaRPCError as exc:
        LOGGER.warning(
            'worker %s: cancel of the %s consumer failed: %s (its channel goes with the '
            'connection)',
            hostname,
            what,
            exc,
        )
