"""Celery's remote control as data: the pidbox names, the revoke broadcast, a node's replies
and the shapes Celery's tools read in them.

Pure build/parse: no I/O, no pika. ``_control`` consumes a node's queue and publishes what is
built here; ``protocol`` re-exports the names that were first defined there.

Celery's facts (Celery 5.5-5.7, kombu's ``pidbox.Mailbox``; ``docs/wire-format.rst``):

* Commands are broadcast to the fanout exchange ``celery.pidbox``; each node consumes its own
  queue ``<hostname>.celery.pidbox``. The body is ``{"method", "arguments", "destination",
  "pattern", "matcher"}``, plus ``ticket`` and ``reply_to`` (``{"exchange":
  "reply.celery.pidbox", "routing_key": <the client's oid>}``) when the sender collects
  replies.
* A reply (kombu ``Mailbox._publish_reply``) is the body ``{<hostname>: <reply>}``, encoded
  with the node's ``task_serializer``, published to ``reply_to["exchange"]`` (direct,
  ``durable=False``, declared by the replier too) with routing key
  ``reply_to["routing_key"]``, ``delivery_mode`` 1, ``priority`` 0 and headers
  ``{"ticket": <ticket>, "clock": <Lamport clock>}``. There is no ``correlation_id``: the
  client keeps a reply whose ``ticket`` header is its own, for ``timeout`` seconds, and stops
  early once it has one reply per ``destination``.
* A command's reply is ``{"ok": value}`` or ``{"error": text}`` (Celery's ``ok``/``nok``), or
  bare data for the inspect commands (``stats``: a dict; ``active``, ``reserved``,
  ``scheduled``, ``registered``, ``revoked``: lists). Celery's command line prints ``ok`` as
  ``OK`` and ``error`` as ``ERROR``.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ._urls import parse_url

__all__ = [
    'PIDBOX_EXCHANGE',
    'PIDBOX_EXCHANGE_TYPE',
    'PIDBOX_QUEUE_EXPIRES',
    'PIDBOX_QUEUE_TTL',
    'PIDBOX_REPLY_EXCHANGE_TYPE',
    'REVOKES_MAX',
    'REVOKE_EXPIRES',
    'TASK_INFO_ITEMS',
    'LamportClock',
    'broker_info',
    'control_revoke',
    'nok',
    'ok',
    'pidbox_queue_name',
    'registered_entry',
    'reply_message',
    'reply_target',
    'request_info',
    'rusage',
    'scheduled_info',
    'stats_reply',
]

# Celery's broadcast control mailbox (kombu Mailbox 'celery' of type fanout).
PIDBOX_EXCHANGE = 'celery.pidbox'  # control_exchange 'celery' + '.pidbox'
PIDBOX_EXCHANGE_TYPE = 'fanout'
PIDBOX_QUEUE_EXPIRES = 10.0  # control_queue_expires (s): a node's queue outlives it so long
PIDBOX_QUEUE_TTL = 300.0  # control_queue_ttl (s) of a control message in that queue
PIDBOX_REPLY_EXCHANGE_TYPE = 'direct'  # 'reply.celery.pidbox', named by each request
REVOKES_MAX = 50000  # worker_state.REVOKES_MAX: revoked ids a worker remembers
REVOKE_EXPIRES = 10800.0  # worker_state.REVOKE_EXPIRES (s): and for how long
#: Task attributes ``inspect registered`` shows when none are asked for (Celery's default).
TASK_INFO_ITEMS = ('exchange', 'routing_key', 'rate_limit')
_REPR_MAXSIZE = 1024  # Celery's argsrepr_maxsize


def pidbox_queue_name(hostname: str) -> str:
    """A worker node's control queue: ``<hostname>.celery.pidbox``."""
    return f'{hostname}.{PIDBOX_EXCHANGE}'


def control_revoke(
    task_ids: Union[str, Iterable[str]],
    terminate: bool = False,
    signal: Optional[str] = 'SIGTERM',
    *,
    destination: Optional[Sequence[str]] = None,
    control_exchange: str = 'celery',
    clock: int = 0,
) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """Build Celery's ``revoke`` broadcast (``app.control.revoke``; kombu ``Mailbox._publish``).

    Publish the body (JSON) to the exchange returned, ``'<control_exchange>.pidbox'``, with
    routing key ``''``. Celery declares that exchange first as ``fanout``, ``durable=False``,
    ``auto_delete=False``; every worker's ``<node>.celery.pidbox`` queue is bound to it.

    Body: ``{"method": "revoke", "arguments": {"task_id", "terminate", "signal"},
    "destination", "pattern", "matcher"}``. ``task_id`` is one id (a string) or a list of
    ids; ``destination`` None means every worker, else a list of node names
    (``celery@host``). A fire-and-forget broadcast carries no ``ticket`` or ``reply_to``
    (those are added only when replies are collected). ``signal`` None lets the worker use
    its default (TERM), which is what ``AsyncResult.revoke()`` sends.

    Properties: ``delivery_mode`` 2 (kombu inherits it from the producer's default
    exchange), ``priority`` 0 and headers ``{"clock": <Lamport clock>, "expires": 0}``
    (``expires`` is ``time() + timeout`` only when replies are awaited; workers never check
    it, and only adjust their own clock from ``clock``).

    Raises:
        ValueError: ``destination`` is given but is not a list or tuple.
    """
    if destination is not None and not isinstance(destination, (list, tuple)):
        raise ValueError(f'destination must be a list or tuple, not {type(destination).__name__}')
    ids: Union[str, List[str]] = task_ids if isinstance(task_ids, str) else list(task_ids)
    body = {
        'method': 'revoke',
        'arguments': {'task_id': ids, 'terminate': terminate, 'signal': signal},
        'destination': list(destination) if destination is not None else None,
        'pattern': None,
        'matcher': None,
    }
    properties = {'delivery_mode': 2, 'priority': 0, 'headers': {'clock': clock, 'expires': 0}}
    return f'{control_exchange}.pidbox', body, properties


# --------------------------------------------------------------------------- replies


def ok(value: Any) -> Dict[str, Any]:
    """Celery's success reply, ``{'ok': value}``."""
    return {'ok': value}


def nok(text: str) -> Dict[str, Any]:
    """Celery's error reply, ``{'error': text}``."""
    return {'error': text}


def reply_target(body: Mapping[str, Any]) -> Optional[Tuple[str, str, Optional[str]]]:
    """``(exchange, routing_key, ticket)`` a request wants its reply sent to, or None when it
    wants none (or names no usable target: both must be non-empty strings)."""
    reply_to = body.get('reply_to')
    if not isinstance(reply_to, Mapping):
        return None
    exchange, routing_key = reply_to.get('exchange'), reply_to.get('routing_key')
    if not (
        exchange and isinstance(exchange, str) and routing_key and isinstance(routing_key, str)
    ):
        return None
    ticket = body.get('ticket')
    return exchange, routing_key, ticket if isinstance(ticket, str) else None


def reply_message(
    hostname: str, reply: Any, ticket: Optional[str], clock: int
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(body, properties)`` of node ``hostname``'s reply; encode the body with the node's
    ``task_serializer`` (the properties then get its content type and encoding)."""
    headers: Dict[str, Any] = {'clock': clock}
    if ticket is not None:
        headers['ticket'] = ticket
    return {hostname: reply}, {'delivery_mode': 1, 'priority': 0, 'headers': headers}


class LamportClock:
    """kombu's ``LamportClock``: ``adjust`` on every message received, ``forward`` for every
    message sent. Thread-safe."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._lock = threading.Lock()

    def adjust(self, other: Any) -> int:
        """Take a received ``clock`` header into account (a non-integer is ignored)."""
        if isinstance(other, bool) or not isinstance(other, int):
            other = 0
        with self._lock:
            self.value = max(self.value, other) + 1
            return self.value

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value


# --------------------------------------------------------------------------- inspect shapes


def _capped_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f'<unrepresentable {type(value).__qualname__}: {exc!r}>'
    return text if len(text) <= _REPR_MAXSIZE else text[: _REPR_MAXSIZE - 3] + '...'


def request_info(
    request: Any,
    hostname: str,
    *,
    time_start: Optional[float] = None,
    acknowledged: bool = False,
    worker_pid: Optional[int] = None,
    safe: bool = False,
) -> Dict[str, Any]:
    """A task request as Celery's ``Request.info()`` shows it in ``inspect active``,
    ``reserved`` and ``scheduled``.

    ``request`` is a ``protocol.TaskRequest``; ``safe`` shows ``argsrepr``/``kwargsrepr``
    (the message's, else a capped ``repr``) instead of the values. ``time_start`` is a
    ``time.time()`` value (None until the task runs).
    """
    delivery = request.delivery_info or {}
    if safe:
        args: Any = request.argsrepr if request.argsrepr is not None else _capped_repr(request.args)
        kwargs: Any = (
            request.kwargsrepr if request.kwargsrepr is not None else _capped_repr(request.kwargs)
        )
    else:
        args, kwargs = request.args, request.kwargs
    return {
        'id': request.id,
        'name': request.name,
        'args': args,
        'kwargs': kwargs,
        'type': request.name,
        'hostname': request.hostname or hostname,
        'time_start': time_start,
        'acknowledged': acknowledged,
        'delivery_info': {
            'exchange': delivery.get('exchange'),
            'routing_key': delivery.get('routing_key'),
            'priority': delivery.get('priority'),
            'redelivered': delivery.get('redelivered'),
        },
        'worker_pid': worker_pid,
    }


def scheduled_info(eta: Optional[datetime], priority: Any, info: Dict[str, Any]) -> Dict[str, Any]:
    """One entry of ``inspect scheduled``: ``{'eta': ISO-8601, 'priority', 'request': info}``."""
    return {'eta': eta.isoformat() if eta else None, 'priority': priority, 'request': info}


def registered_entry(name: str, task: Any, items: Sequence[str] = TASK_INFO_ITEMS) -> str:
    """One line of ``inspect registered``: ``name`` or ``name [attr=value ...]`` for the task
    attributes in ``items`` that are set (an attribute of the task, else one of its
    ``options``); names starting with ``_`` are never shown, as Celery."""
    options = getattr(task, 'options', None)
    options = options if isinstance(options, Mapping) else {}
    fields = []
    for item in items:
        if not isinstance(item, str) or item.startswith('_'):
            continue
        value = getattr(task, item, None)
        if value is None:
            value = options.get(item)
        if value is not None:
            fields.append(f'{item}={value}')
    return f'{name} [{" ".join(fields)}]' if fields else name


def broker_info(
    broker_url: Any,
    *,
    heartbeat: Any = None,
    connect_timeout: Any = None,
    ssl: bool = False,
    transport_options: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The ``broker`` section of ``inspect stats`` (kombu ``Connection.info()``); never the
    password. The other addresses of a failover list are ``alternates`` (masked URLs)."""
    addresses = parse_url(broker_url)
    first = addresses[0]
    return {
        'hostname': first.host,
        'userid': first.userid,
        'virtual_host': first.virtual_host,
        'port': first.port,
        'insist': False,
        'ssl': bool(ssl) or first.ssl,
        'transport': 'amqp',
        'connect_timeout': connect_timeout,
        'transport_options': dict(transport_options or {}),
        'login_method': 'PLAIN',
        'uri_prefix': None,
        'heartbeat': heartbeat,
        'failover_strategy': 'round-robin',
        'alternates': [a.as_uri() for a in addresses[1:]],
    }


def rusage() -> Any:
    """The ``rusage`` section of ``inspect stats`` (``getrusage(RUSAGE_SELF)``), or ``'N/A'``
    where the platform has none, as Celery."""
    try:
        import resource
    except ImportError:
        return 'N/A'
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fields: Tuple[str, ...]
    fields = ('utime', 'stime', 'maxrss', 'ixrss', 'idrss', 'isrss', 'minflt', 'majflt')
    fields += ('nswap', 'inblock', 'oublock', 'msgsnd', 'msgrcv', 'nsignals', 'nvcsw', 'nivcsw')
    return {name: getattr(usage, f'ru_{name}') for name in fields}


def stats_reply(worker: Mapping[str, Any], *, clock: int, broker: Dict[str, Any]) -> Dict[str, Any]:
    """Celery's ``inspect stats`` reply for a pika_rpc worker.

    ``worker`` is ``Worker.stats()``; Celery's keys are filled from it (``total``,
    ``uptime``, ``pool``, ``prefetch_count``) and the rest of it goes under ``pika_rpc``.
    """
    own = dict(worker)
    total = own.pop('total', {})
    uptime = own.pop('uptime', 0.0)
    concurrency = own.pop('concurrency', None)
    threads = own.pop('threads', None)
    prefetch = own.pop('prefetch_count', None)
    return {
        'total': total,
        'pid': os.getpid(),
        'clock': str(clock),
        'uptime': round(uptime),
        'pool': {
            'implementation': 'pika_rpc.worker:Worker',
            'max-concurrency': concurrency,
            'threads': threads,
        },
        'broker': broker,
        'prefetch_count': prefetch,
        'rusage': rusage(),
        'pika_rpc': own,
    }
