"""A worker node's end of Celery's remote control: the pidbox queue and its commands.

Celery broadcasts control commands (``app.control.revoke``, ``inspect().ping()``, ...) to the
fanout exchange ``celery.pidbox``; each worker node consumes them from its own exclusive
queue ``<hostname>.celery.pidbox``. The names, types, expiry and TTL are Celery's facts,
owned by ``protocol`` (``PIDBOX_*``, ``pidbox_queue_name``); this module declares and
consumes that queue and dispatches what arrives. The ``Worker`` owns a
:class:`ControlHandler` and gives it callbacks; it never reads a control message itself.

Choices where Celery leaves room:

* The exchange is declared as kombu declares it (``durable=False``, ``auto_delete=False``),
  so neither side gets a 406 from the other's declaration; the queue is exclusive, with
  Celery's ``x-expires`` (10 s) and ``x-message-ttl`` (300 s), consumed with ``no_ack``
  (as Celery: a control message is not worth a redelivery).
* A message is for this node when its ``destination`` names it, or (no destination) its
  ``pattern`` matches with its ``matcher`` (``pcre``: a regular expression search; any
  other: a glob), or it names neither (a broadcast to all).
* Commands are dispatched by ``method`` to a table of handlers (``_commands``), each called
  with the message's ``arguments`` on the link's callback thread: quick, never blocking on
  the broker. Today only ``revoke`` is handled; other commands (ping, stats, rate limits,
  ...) are logged at DEBUG and ignored. A command with a reply adds a handler that returns
  the reply and a step here that publishes it to the message's ``reply_to`` with its
  ``ticket``; the Worker only gains the callback that reads its state.
* An undecodable control message is dropped with a WARNING: there is no one to tell.
* Revoked ids are kept in :class:`RevokedIds`, bounded and expiring as Celery's
  ``worker_state.revoked`` (``protocol.REVOKES_MAX`` ids, ``protocol.REVOKE_EXPIRES`` s).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

from .connection import Connection
from .entities import Exchange, Queue
from .errors import PikaRPCError
from .messaging import Consumer
from .protocol import (
    PIDBOX_EXCHANGE,
    PIDBOX_EXCHANGE_TYPE,
    PIDBOX_QUEUE_EXPIRES,
    PIDBOX_QUEUE_TTL,
    REVOKE_EXPIRES,
    REVOKES_MAX,
    pidbox_queue_name,
)

LOGGER = logging.getLogger(__name__)

__all__ = ['ControlHandler', 'RevokedIds']


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
            while self._ids and next(iter(self._ids.values())) < now:
                self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            until = self._ids.get(task_id)  # type: ignore[arg-type]
            if until is not None and until < time.monotonic():
                del self._ids[task_id]  # type: ignore[arg-type]
                return False
            return until is not None

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


class ControlHandler:
    """Consumes node ``hostname``'s control queue and runs the commands meant for it.

    Args:
        hostname: the node name a command's ``destination`` or ``pattern`` is matched with.
        on_revoke: ``on_revoke(task_ids, terminate)``, the worker's revoke; called on the
            callback thread, must not block on the broker.

    ``start``/``stop`` may be called from any thread (not the I/O thread) and block on the
    broker; commands run on the link's callback thread.
    """

    def __init__(self, hostname: str, on_revoke: Callable[[List[str], bool], None]) -> None:
        self.hostname = hostname
        self._on_revoke = on_revoke
        self._commands: Dict[str, Callable[[Dict[str, Any]], Any]] = {'revoke': self._revoke}
        self._consumer: Optional[Consumer] = None

    def start(self, connection: Connection) -> None:
        """Declare the control queue and consume it on ``connection``. Blocks.

        Raises:
            PreconditionFailed, PikaRPCError, ConnectionLost, TimeoutError: from the broker.
        """
        self._consumer = Consumer(
            connection, [control_queue(self.hostname)], no_ack=True, on_message=self._on_message
        )
        self._consumer.consume()

    def stop(self) -> None:
        """Cancel the control consumer (if started); a failure is logged. Blocks."""
        cancel_quietly(self._consumer, self.hostname, 'control')

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

    def _on_message(self, message: Any) -> None:  # callback thread
        try:
            body = message.decode()
        except Exception as exc:
            LOGGER.warning(
                'worker %s: dropped an undecodable control message: %s', self.hostname, exc
            )
            return
        if not isinstance(body, dict) or not self.for_me(body):
            return
        method = body.get('method')
        command = self._commands.get(method) if isinstance(method, str) else None
        if command is None:
            LOGGER.debug(
                'worker %s: control command %r not supported; ignored', self.hostname, method
            )
            return
        command(body.get('arguments') or {})

    def _revoke(self, arguments: Dict[str, Any]) -> None:
        ids = arguments.get('task_id')
        ids = [ids] if isinstance(ids, str) else [i for i in ids or () if isinstance(i, str)]
        self._on_revoke(ids, bool(arguments.get('terminate')))


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
