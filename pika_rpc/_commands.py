"""Plain records that cross between caller threads and the I/O thread.

``_Command`` (a call to run on the I/O thread, with its result box), ``Publication`` (one
message to publish with confirms, settled once), ``ConsumerSpec`` (what the link needs to
subscribe a consumer again after every reconnect) and ``Delivery`` (a received message).
No pika here: the I/O thread (``_iothread``) is the only place that touches pika objects;
a ``Delivery`` carries pika's ``BasicProperties`` only as data.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Optional

from ._timeouts import deadline

__all__ = ['Publication', 'ConsumerSpec', 'Delivery', 'properties_to_dict']


class _Command:
    __slots__ = ('fn', 'args', 'what', 'done', 'result', 'error', 'cancelled')

    def __init__(self, fn: Callable[..., Any], args: tuple, what: str) -> None:
        self.fn, self.args, self.what = fn, args, what
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.cancelled = False

    def finish(self, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class _Latch:
    """A one-shot event: ``set()`` once, ``wait()`` by any number of threads. Lighter than
    ``threading.Event`` (one lock, no condition): one is made per publication."""

    __slots__ = ('_lock', '_set')

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            try:
                self._lock.release()
            except RuntimeError:     # set by two threads at once: released already
                pass

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()     # pass it on to the next waiter
        return self._set


_NO_RETRY: Mapping[str, Any] = {'max_retries': 0}


class Publication:
    """One message to publish with confirms. Settled once: ``done`` is set then.

    Attributes after settling: ``error`` (None when confirmed), ``returned``
    (``(reply_code, reply_text)`` when the broker returned it as unroutable), ``attempts``.
    """

    __slots__ = ('exchange', 'routing_key', 'body', 'properties', 'mandatory',
                 'correlation_id', 'max_retries', 'deadline', 'errback', 'done', 'error',
                 'returned', 'attempts', 'cancelled', 'interval', 'interval_step',
                 'interval_max', 'gen', 'timeout')

    def __init__(self, exchange: str, routing_key: str, body: bytes, properties: dict,
                 mandatory: bool = True, policy: Optional[Mapping[str, Any]] = None,
                 timeout: Optional[float] = None) -> None:
        """``policy``: a retry policy (``max_retries``, ``interval_start``/``_step``/``_max``,
        ``errback``) for re-publishing after a nack or a lost connection; None: never
        re-published (one attempt). ``timeout``: seconds until it must be settled."""
        policy = policy or _NO_RETRY
        self.exchange, self.routing_key, self.body = exchange, routing_key, body
        self.properties, self.mandatory = properties, mandatory
        self.correlation_id = properties.get('correlation_id')
        self.max_retries, self.deadline = policy.get('max_retries', 0), deadline(timeout)
        self.timeout = timeout
        self.errback = policy.get('errback')
        self.interval = policy.get('interval_start', 0)
        self.interval_step = policy.get('interval_step', 1)
        self.interval_max = self.interval + policy.get('interval_max', 1)
        self.done = _Latch()
        self.error: Optional[BaseException] = None
        self.returned: Optional[tuple] = None
        self.attempts = 0
        self.cancelled = False
        self.gen = -1

    def wait(self, timeout: Optional[float]) -> bool:
        return self.done.wait(timeout)

    def _finish(self, error: Optional[BaseException] = None) -> None:
        self.error = error
        self.done.set()


class ConsumerSpec:
    """What the link needs to (re)subscribe a consumer after every (re)connect.

    ``on_delivery(delivery)`` runs on the I/O thread and must only hand off. With
    ``batch_ack`` the link acks every delivery once ``on_delivery`` returned (batched per
    loop turn, ``multiple=True``); otherwise the owner acks through ``Link.ack``.
    ``declarations`` are ``(kind, kwargs)`` pairs replayed before ``basic_consume``;
    ``check_exists`` makes the link check the queue passively first at a *re*-subscribe and
    call ``on_missing()`` when it was gone. ``on_cancel()`` hears a broker-side cancel
    (queue deleted); the link then re-declares and re-subscribes, without calling
    ``on_missing()`` again for that same loss (the owner was told once, by ``on_cancel``).
    """

    def __init__(self, queue: str, on_delivery: Callable[['Delivery'], None], *,
                 batch_ack: bool = False, no_ack: bool = False,
                 prefetch_count: Optional[int] = None, declarations: tuple = (),
                 check_exists: bool = False, on_missing: Optional[Callable[[], None]] = None,
                 on_cancel: Optional[Callable[[], None]] = None,
                 consumer_tag: Optional[str] = None, exclusive: bool = False,
                 arguments: Optional[dict] = None) -> None:
        self.queue, self.on_delivery = queue, on_delivery
        self.batch_ack, self.no_ack, self.prefetch_count = batch_ack, no_ack, prefetch_count
        self.declarations, self.check_exists = tuple(declarations), check_exists
        self.on_missing, self.on_cancel = on_missing, on_cancel
        self.consumer_tag, self.exclusive, self.arguments = consumer_tag, exclusive, arguments
        self.channel: Any = None      # I/O thread only
        self.gen = 0                  # bumped at every subscribe: acks of an older gen are void
        self.subscribed_once = False
        self.cancelled_by_broker = False  # I/O thread: on_cancel told the owner already
        self.active = False


class Delivery:
    """A message received by a consumer. Plain data, safe to read on any thread."""

    __slots__ = ('spec', 'gen', 'delivery_tag', 'redelivered', 'exchange', 'routing_key',
                 'properties', 'body')

    def __init__(self, spec: ConsumerSpec, gen: int, method: Any, properties: Any,
                 body: bytes) -> None:
        self.spec, self.gen = spec, gen
        self.delivery_tag, self.redelivered = method.delivery_tag, method.redelivered
        self.exchange, self.routing_key = method.exchange, method.routing_key
        self.properties, self.body = properties, body

    def property_dict(self) -> dict:
        return properties_to_dict(self.properties)


_PROPERTY_NAMES = ('content_type', 'content_encoding', 'headers', 'delivery_mode', 'priority',
                   'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp',
                   'type', 'user_id', 'app_id', 'cluster_id')


def properties_to_dict(props: Any) -> dict:
    """The set AMQP properties of a pika ``BasicProperties`` as a plain dict."""
    return {name: getattr(props, name) for name in _PROPERTY_NAMES
            if getattr(props, name, None) is not None}
