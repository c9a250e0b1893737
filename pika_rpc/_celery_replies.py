"""The reply side of ``celery_backend.PikaRPCBackend``: Celery's per-thread reply queues on
pika_rpc's link, and the settings taken from a Celery app.

Celery's client names the reply queue itself (``app.thread_oid``, one per sending thread), so
``_ReplyQueues`` stands in for ``RPCBackend.result_consumer`` and keeps one ``_CeleryReplies``
(pika_rpc's reply consumer for one queue) per name, all on the process's one link and all
filling one pending table. ``_Core`` is pika_rpc's ``RPCBackend`` with that stand-in: its link,
waits, reconnect handling, fork reset and close serve the plug-in unchanged.

Imports kombu (never Celery), and only ``celery_backend`` imports this module.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, List, Optional

from kombu import exceptions as kombu_exceptions
from kombu import serialization as kombu_serialization

from . import states
from ._replies import ResultConsumer
from ._timeouts import deadline, remaining
from .backend import RPCBackend
from .config import Settings
from .errors import (
    ContentDisallowed,
    DecodeError,
    PikaRPCError,
    PreconditionFailed,
    QueueNodeDown,
    ReplyQueueLost,
)

LOGGER = logging.getLogger(__name__)

#: Celery settings passed on to pika_rpc's link as they are (when set).
_CELERY_KEYS = (
    'broker_heartbeat',
    'broker_connection_timeout',
    'broker_connection_max_retries',
    'broker_connection_retry',
    'broker_use_ssl',
)


def settings_for(app: Any, url: Optional[str], expires: Optional[float]) -> Dict[str, Any]:
    """pika_rpc's settings for the link and the tables, from the Celery app's configuration."""
    conf = app.conf
    broker = None
    if url and '://' in url and url.split('://', 1)[1].strip('/'):
        broker = 'amqp://' + url.split('://', 1)[1]  # pika-rpc://user@host/vhost
    if broker is None:
        broker = getattr(conf, 'broker_write_url', None) or conf.get('broker_url')
    values: Dict[str, Any] = {'broker_url': broker, 'result_expires': expires}
    for key in _CELERY_KEYS:
        value = conf.get(key)
        if value is not None:
            values[key] = value
    strategy = conf.get('broker_failover_strategy')
    if strategy in ('round-robin', 'shuffle'):
        values['broker_failover_strategy'] = strategy
    options = conf.get('result_backend_transport_options') or {}
    known = set(Settings())
    values.update({k: v for k, v in options.items() if k in known})
    return values


class CeleryReplies(ResultConsumer):
    """pika_rpc's reply consumer for one of Celery's reply queues (a thread's ``thread_oid``).

    Decodes with kombu (the app's serializers and ``accept`` list) and keeps Celery's decoded
    meta in the table. A queue whose home node is down is not replaced by a new name (the
    Celery client names the queue itself): its pending tasks fail with ``ReplyQueueLost`` and
    the next task declares the same name again, on the node the connection is on now.
    """

    backend: 'Core'

    def decode_body(self, body: bytes, content_type: Any, content_encoding: Any) -> Any:
        accept = self.backend.plugin.accept
        try:
            return kombu_serialization.loads(
                bytes(body), content_type, content_encoding, accept=accept
            )
        except kombu_exceptions.ContentDisallowed as exc:
            raise ContentDisallowed(str(exc)) from None
        except Exception as exc:
            raise DecodeError(f'cannot decode result body ({content_type}): {exc}') from None

    def meta_from_raw(self, raw: Any) -> Dict[str, Any]:
        if not isinstance(raw, dict) or 'status' not in raw:
            raise DecodeError(f'not a result body: {type(raw).__name__}')
        try:
            return self.backend.plugin.meta_from_decoded(dict(raw))
        except Exception as exc:  # Celery's SecurityError for a non-exception class, ...
            raise DecodeError(f'{type(exc).__name__}: {exc}') from None

    def on_state_change(self, meta: dict, message: Any) -> None:
        core = self.backend
        if core.waiting and meta.get('status') in states.READY_STATES:
            core.schedule_fulfil(meta.get('task_id'))

    def _on_refused(self, oid: str, error: Any) -> bool:  # I/O thread
        if not isinstance(error, QueueNodeDown):
            return False
        reason = f'is lost: its home node {error.node or "(stopping)"} is down'
        with self._subscribed:
            self._spec = self._spec_link = None  # the next expect() declares it again
        pending = self._pending
        assert pending is not None  # attached before it subscribes
        ids = pending.fail_pending(lambda ids: ReplyQueueLost(oid, ids, reason), queue=oid)
        LOGGER.warning(
            'reply queue %s %s; %d pending task(s) lost: %s', oid, reason, len(ids), ids[:20]
        )
        return True


class ReplyQueues:
    """Stands in for ``RPCBackend.result_consumer``: the process's reply queues under Celery's
    client, one ``CeleryReplies`` per sending thread's ``thread_oid``, all on one link and
    filling one pending table. Any thread but the I/O thread."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._attach('', None, None)

    def _attach(self, oid: str, pending: Any, get_link: Any) -> None:
        # At creation and in a forked child: no queue of the parent is consumed here.
        self._pid = os.getpid()
        self._oid, self._pending, self._get_link = oid, pending, get_link
        self._lock = threading.Lock()
        self._by_oid: Dict[str, CeleryReplies] = {}

    @property
    def reply_queue(self) -> str:
        return self._oid

    @property
    def queues(self) -> List[str]:
        """The reply queues consumed now (one per thread that sent a task)."""
        return list(self._by_oid)

    def queue_for(self, oid: str) -> CeleryReplies:
        replies = self._by_oid.get(oid)
        if replies is None:
            with self._lock:
                replies = self._by_oid.get(oid)
                if replies is None:
                    replies = CeleryReplies(self.backend)
                    replies._attach(oid, self._pending, self._get_link)
                    self._by_oid[oid] = replies
        return replies

    def expect_on(self, oid: str, task_id: str, timeout: Optional[float] = None) -> str:
        """Consume ``oid`` (once per connection) and expect results of ``task_id`` there."""
        return self.queue_for(oid).expect(task_id, timeout=timeout)

    def expect(self, task_id: str, timeout: Optional[float] = None) -> str:
        return self.expect_on(self.backend.plugin.app.thread_oid, task_id, timeout)

    def ensure_consuming(self, timeout: Optional[float] = None) -> None:
        dl = deadline(timeout)
        for replies in list(self._by_oid.values()):
            replies.ensure_consuming(timeout=remaining(dl) if timeout is not None else None)

    def consume_soon(self) -> None:
        """Subscribe every queue in the background (``get_task_meta`` never waits)."""
        for replies in list(self._by_oid.values()):
            replies.consume_soon()

    def start(self, initial_task_id: Optional[str] = None, **kwargs: Any) -> None:
        if initial_task_id is None:
            self.ensure_consuming()
        else:
            self.expect(initial_task_id)

    def consume_from(self, task_id: str) -> None:
        self.start(task_id)

    def cancel_for(self, task_id: str) -> None:
        self._pending.discard(task_id)

    def stop(self) -> None:
        for replies in list(self._by_oid.values()):
            replies.stop()

    def on_after_fork(self) -> None:
        self.backend._forget_parent_state()

    def _cancel(self, timeout: Optional[float]) -> bool:
        """Cancel every subscription and delete its queue (for ``close``). Returns False:
        there is no single queue left for the caller to delete."""
        dl = deadline(timeout)
        with self._lock:
            consumers, self._by_oid = dict(self._by_oid), {}
        for oid, replies in consumers.items():
            link = replies._spec_link  # the backend's link is already let go of at close
            try:
                if replies._cancel(remaining(dl)) and link is not None and not link.closed:
                    # if_unused: Celery names the queue (kombu's oid of the app's id and the
                    # thread's ident, both reused), so a newer app's backend of this process
                    # may consume the same name by now: never delete it under that one.
                    link.control('delete_queue', queue=oid, if_unused=True, timeout=remaining(dl))
            except PreconditionFailed:
                LOGGER.debug('reply queue %s is consumed by another backend: left to it', oid)
            except PikaRPCError as exc:
                LOGGER.warning('could not delete reply queue %s at close: %s', oid, exc)
        return False

    def stats(self) -> Dict[str, int]:
        out: Dict[str, int] = {'reply_queues': len(self._by_oid)}
        for replies in list(self._by_oid.values()):
            for key, value in replies.stats().items():
                out[key] = out.get(key, 0) + value
        return out


class Core(RPCBackend):
    """pika_rpc's backend under the plug-in: link, pending table, waits, reconnects, fork."""

    ResultConsumer = ReplyQueues  # type: ignore[assignment]

    def __init__(self, plugin: Any, **settings: Any) -> None:
        #: The Celery backend that made this core. Its app, ``accept`` and Celery's decoding
        #: serve every ``PikaRPCBackend`` of the app, which share this core (kept on the app).
        self.plugin = plugin
        super().__init__(**settings)

    def _reset(self) -> None:
        # Also in a forked child: no results of the parent wait on then() callbacks here.
        super()._reset()
        #: Results waiting on ``then()`` callbacks: task id -> {id(result): result or weakref}.
        self.waiting: Dict[str, Dict[int, Any]] = {}
        self.waiting_lock = threading.RLock()  # AsyncResult.__del__ may re-enter it (GC)

    def schedule_fulfil(self, task_id: Optional[str]) -> None:  # I/O or decoder thread
        """Settle the results waiting on ``task_id`` on the callback thread (their ``then()``
        callbacks are user code: never on the I/O thread)."""
        if task_id is not None and task_id in self.waiting:
            link = self._link
            if link is not None:
                link.callbacks.submit(self.plugin._fulfil, task_id)


class Once:
    """``on_message`` for a wait in slices: each state message is shown once."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self._seen: List[dict] = []  # the raw dicts already shown (kept alive here)

    def __call__(self, raw: dict) -> None:
        if any(raw is seen for seen in self._seen):
            return
        self._seen.append(raw)
        self._fn(raw)


def is_noop(on_interval: Any) -> bool:
    """True for no callback, or for Celery's empty ``promise()`` (a ``get()`` without parents)."""
    if on_interval is None:
        return True
    return (
        getattr(on_interval, 'fun', 0) is None
        and not getattr(on_interval, '_svpending', 1)
        and not getattr(on_interval, '_lvpending', 1)
    )
