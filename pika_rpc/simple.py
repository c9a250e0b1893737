"""``SimpleQueue`` and ``SimpleBuffer``: kombu's simple interface on the process's link.

A ``SimpleQueue`` is a queue, and a direct exchange of the same name bound to it by that
name (or a given ``Queue`` and its exchange), with ``put()`` to publish and ``get()`` to
receive, as kombu's. ``Connection.SimpleQueue(...)`` and ``Connection.SimpleBuffer(...)``
make them; the queue, exchange and binding are declared when it is made.

How it receives (kombu drains the socket in ``get()``; here the I/O thread reads):

* ``get(block=True, timeout=None)`` consumes: its first call subscribes, the broker pushes
  messages, and the I/O thread appends each to this object's buffer (no user code, no
  decoding there); ``get()`` takes the oldest, waiting up to ``timeout`` (None: no limit)
  on a condition. Nothing polls. The buffer is bounded: the subscription's prefetch window
  is ``buffer_max`` (100), so the broker sends no more until messages are acked.
* ``get_nowait()`` (and ``get(block=False)``) returns a message already pushed, else asks
  the broker once (``basic.get``, as kombu's), else raises :class:`Empty`.
* Acknowledging, as kombu: the caller acks (``message.ack()``, ``reject()``,
  ``requeue()``) what ``get`` returned; until then it counts in the window. With ``no_ack``
  (``SimpleBuffer``'s default) ``message.ack()`` does nothing: the message is acked when
  ``get`` hands it out. The subscription itself always acks (RabbitMQ ignores the
  prefetch window of a no-ack subscription, and the buffer must stay bounded).
* ``qsize()`` (``len()``): the queue's ready messages (a passive declare) plus those
  pushed here and not taken yet (kombu counts only the first, so it misses messages its
  consumer has prefetched). ``clear()`` purges the queue and drops (acks) those pushed
  here; it returns how many went.
* A reconnect re-declares (an exclusive queue comes back empty) and re-subscribes; what
  was pushed over the old connection is dropped from the buffer (the broker delivers it
  again). ``get()`` raises ``ConnectionLost`` when the link gives up while it waits (the
  next ``get()`` starts a new connection cycle), ``ClosedError`` when the link is closed.
* ``close()`` (also leaving a ``with`` block) cancels the subscription: messages pushed
  here and not taken, and those taken and not acked, go back to the queue.

``SimpleBuffer``: kombu's is a non-durable, auto-deleted, exclusive queue and a non-durable,
auto-deleted exchange, with transient messages and ``no_ack``. RabbitMQ 4.3 refuses
transient queues that are not exclusive, and pika_rpc declares only durable or exclusive
queues: ``SimpleBuffer``'s is exclusive, as kombu's already is, so the mapping is kombu's
own. The queue belongs to the process's connection: it goes when that connection closes (a
reconnect declares it again, empty) and when the last consumer leaves (auto-delete).

Threads: any thread except the I/O thread; thread-safe (several threads may ``get`` from
one SimpleQueue: each message goes to one of them). Fork: a SimpleQueue made before
``os.fork()`` starts with an empty buffer and no subscription in the child.
"""

from __future__ import annotations

import collections
import queue as _queue
import threading
from typing import Any, Deque, Dict, Optional

from . import _registry, serialization
from ._consumers import ConsumerSpec, Delivery
from ._timeouts import deadline, remaining
from .connection import _as_connection, register_factory
from .entities import Exchange, Queue
from .errors import ClosedError, ConnectionLost, PikaRPCError, TimeoutError
from .message import Message
from .messaging import Producer

__all__ = ['SimpleQueue', 'SimpleBuffer', 'Empty']


class Empty(_queue.Empty):
    """No message: ``get()`` waited ``timeout`` in vain, or ``get_nowait()`` found none.

    A ``queue.Empty`` (kombu raises ``queue.Empty`` itself), so code catching either works.
    """


class SimpleQueue:
    """kombu's ``SimpleQueue`` (persistent: a durable queue and exchange); see the module
    docstring. ``channel``: a ``Connection``, ``Channel``, ``Link`` or None (a connection
    of its own, released by ``close()``). ``name``: a str, or a ``Queue`` to use with its
    exchange and routing key. ``buffer_max``: the bound of the local buffer.

    Raises:
        ConnectionLost, TimeoutError, BrokerRefused: declaring failed (eager, as kombu).
        ValueError: a queue neither durable nor exclusive (RabbitMQ 4.3 refuses it).
    """

    Empty = Empty
    no_ack = False
    queue_opts: Dict[str, Any] = {}
    queue_args: Dict[str, Any] = {}
    exchange_opts: Dict[str, Any] = {'type': 'direct'}
    buffer_max = 100

    def __init__(
        self,
        channel: Any,
        name: Any,
        no_ack: Optional[bool] = None,
        queue_opts: Optional[Dict[str, Any]] = None,
        queue_args: Optional[Dict[str, Any]] = None,
        exchange_opts: Optional[Dict[str, Any]] = None,
        serializer: Optional[str] = None,
        compression: Optional[str] = None,
        accept: Any = None,
        *,
        buffer_max: Optional[int] = None,
    ) -> None:
        if isinstance(name, Queue):
            queue, exchange, routing_key = name, name.exchange, name.routing_key
        else:
            exchange = Exchange(name, **dict(self.exchange_opts, **exchange_opts or {}))
            queue = Queue(
                name,
                exchange,
                name,
                queue_arguments=dict(self.queue_args, **queue_args or {}),
                **dict(self.queue_opts, **queue_opts or {}),
            )
            routing_key = name
        if buffer_max is not None:
            if isinstance(buffer_max, bool) or not isinstance(buffer_max, int) or buffer_max < 1:
                raise ValueError(f'buffer_max must be an int >= 1, got {buffer_max!r}')
            self.buffer_max = buffer_max
        self.no_ack = self.no_ack if no_ack is None else bool(no_ack)
        self.connection, self._owns = _as_connection(channel)
        self.channel = self.connection
        self.accept = serialization.prepare_accept_content(
            self.connection.settings.accept_content if accept is None else accept
        )
        self._new_state()
        _registry.register_live(self)
        self.queue: Queue = queue(self.connection)
        self.queue.declare()
        self.producer = Producer(
            self.connection,
            exchange,
            routing_key=routing_key,
            serializer=serializer,
            compression=compression,
        )

    def _new_state(self) -> None:
        self._lock = threading.Lock()  # subscribing and closing
        self._cond = threading.Condition(threading.Lock())  # the buffer
        self._buffer: Deque[Delivery] = collections.deque()
        self._spec: Optional[ConsumerSpec] = None
        self._link: Any = None
        self._link_error: Optional[BaseException] = None

    def _forget_parent_state(self) -> None:
        # In a forked child (_registry): the parent's locks, subscription and messages.
        self._new_state()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.queue.name!r} no_ack={self.no_ack}>'

    # ------------------------------------------------------------------ publishing
    def put(
        self,
        message: Any,
        serializer: Optional[str] = None,
        headers: Optional[dict] = None,
        compression: Optional[str] = None,
        routing_key: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        """Publish ``message`` to the queue (``Producer.publish``: waits for the broker's
        confirm; ``kwargs`` as there, e.g. ``priority``, ``expiration``). Blocks.

        Raises:
            PublishError, ConnectionLost, EncodeError: as ``Producer.publish``.
        """
        self.producer.publish(
            message,
            serializer=serializer,
            routing_key=routing_key,
            headers=headers,
            compression=compression,
            **kwargs,
        )

    # ------------------------------------------------------------------ receiving
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Message:
        """The next message (``block=False``: ``get_nowait()``), waiting up to ``timeout``
        seconds (None: until one comes). Blocks the caller.

        Raises:
            Empty: none came within ``timeout``.
            ConnectionLost: the link gave up while waiting; ClosedError: it was closed.
            TimeoutError, BrokerRefused: subscribing failed (the first call subscribes).
        """
        if not block:
            return self.get_nowait()
        dl = deadline(timeout)
        link = self._consume()
        with self._cond:
            self._link_error = None
        link.revive()  # a link that gave up starts a new cycle; no-op otherwise
        with self._cond:
            while True:
                delivery = self._take()
                if delivery is not None:
                    break
                if self._link_error is not None:
                    raise self._link_error
                left = remaining(dl)
                if left is not None and left <= 0:
                    raise Empty(f'no message in queue {self.queue.name!r} within {timeout} s')
                self._cond.wait(left)
        return self._message(delivery)

    def get_nowait(self) -> Message:
        """A message already pushed here, else one ``basic.get`` (kombu's). Blocks for that
        round trip only.

        Raises:
            Empty: the queue has no ready message. NotFound: the queue is gone.
        """
        with self._cond:
            delivery = self._take()
        if delivery is not None:
            return self._message(delivery)
        message = self.connection.basic_get(self.queue.name, no_ack=self.no_ack, accept=self.accept)
        if message is None:
            raise Empty(f'no message ready in queue {self.queue.name!r}')
        return message

    def _take(self) -> Optional[Delivery]:
        # Under the condition: the oldest delivery of the current subscription (older ones
        # are redelivered by the broker, so they are dropped).
        spec = self._spec
        while self._buffer:
            delivery = self._buffer.popleft()
            if spec is not None and delivery.gen == spec.gen and delivery.spec is spec:
                return delivery
        return None

    def _consume(self) -> Any:
        """Subscribe once (later calls return at once); returns the link."""
        with self._lock:
            if self._spec is not None:
                return self._link
            conn = self.connection
            link = conn.link
            spec = ConsumerSpec(
                self.queue.name,
                self._on_delivery,
                prefetch_count=self.buffer_max,
                declarations=tuple(self.queue.declarations()),
            )
            link.add_listener(self._on_link_event)
            try:
                link.consume(spec, timeout=conn.command_timeout)
            except TimeoutError:
                link.remove_listener(self._on_link_event)
                try:  # it may still run once the link gets to it: undo it, best effort
                    link.cancel(spec, timeout=conn.command_timeout)
                except PikaRPCError:
                    pass
                raise
            except BaseException:
                link.remove_listener(self._on_link_event)
                raise
            self._spec, self._link = spec, link
            return link

    def _on_delivery(self, delivery: Delivery) -> None:  # I/O thread: append, wake, no more
        with self._cond:
            self._buffer.append(delivery)
            self._cond.notify()

    def _on_link_event(self, event: str, info: Any) -> None:  # I/O thread: quick
        if event not in ('gave_up', 'closed'):
            return
        with self._cond:
            if event == 'closed':
                self._link_error = ClosedError(f'the connection of {self!r} was closed ({info})')
            else:
                self._link_error = (
                    info if isinstance(info, ConnectionLost) else ConnectionLost(str(info))
                )
            self._cond.notify_all()

    def _message(self, delivery: Delivery) -> Message:
        spec, link, gen = delivery.spec, self._link, delivery.gen

        def acker(tag: int, multiple: bool, reject: bool, requeue: bool) -> bool:
            if not reject and (spec.gen != gen or not spec.active):
                return False
            return link.ack(
                spec, gen, tag, multiple=multiple, reject=reject, requeue=requeue, wait=reject
            )

        info = {
            'consumer_tag': spec.consumer_tag,
            'delivery_tag': delivery.delivery_tag,
            'redelivered': delivery.redelivered,
            'exchange': delivery.exchange,
            'routing_key': delivery.routing_key,
        }
        message = Message._received(
            delivery.body,
            delivery.property_dict(),
            info,
            channel=self.connection,
            acker=acker,
            no_ack=self.no_ack,
            accept=self.accept,
        )
        if self.no_ack:  # the subscription acks; the caller's ack() does nothing
            acker(delivery.delivery_tag, False, False, False)
        return message

    # ------------------------------------------------------------------ the queue
    def qsize(self) -> int:
        """Messages ``get()`` can have without waiting for new ones: the queue's ready
        messages plus those pushed here and not taken. Blocks (one passive declare).

        Raises:
            NotFound: the queue is gone. TimeoutError, ConnectionLost.
        """
        _, ready, _ = self.queue.queue_declare(passive=True)
        with self._cond:
            spec = self._spec
            pushed = sum(1 for d in self._buffer if spec is not None and d.gen == spec.gen)
        return (ready or 0) + pushed

    def __len__(self) -> int:
        return self.qsize()

    def __bool__(self) -> bool:
        return True

    def clear(self) -> int:
        """Delete the queue's ready messages and those pushed here; returns how many. Blocks.

        Raises:
            NotFound: the queue is gone. TimeoutError, ConnectionLost.
        """
        purged = self.queue.purge()
        dropped = []
        with self._cond:
            while True:
                delivery = self._take()
                if delivery is None:
                    break
                dropped.append(delivery)
        for delivery in dropped:  # acked: gone, as the purged ones
            message = self._message(delivery)  # acked here with no_ack
            if not self.no_ack:
                message.ack()
        return purged + len(dropped)

    def close(self) -> None:
        """Cancel the subscription (messages not acked go back to the queue) and release a
        connection made for this SimpleQueue. Idempotent. Blocks (a round trip)."""
        with self._lock:
            spec, link, self._spec = self._spec, self._link, None
        with self._cond:
            self._buffer.clear()
        if spec is not None:
            link.remove_listener(self._on_link_event)
            try:
                link.cancel(spec, timeout=self.connection.command_timeout)
            except ConnectionLost:
                spec.active = False  # nothing to cancel on a lost connection
        if self._owns:
            self._owns = False
            self.connection.release()

    def __enter__(self) -> 'SimpleQueue':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class SimpleBuffer(SimpleQueue):
    """kombu's ``SimpleBuffer`` (ephemeral): an exclusive, auto-deleted queue and a
    non-durable exchange, transient messages, ``no_ack`` (see the module docstring)."""

    no_ack = True
    queue_opts = {'durable': False, 'auto_delete': True, 'exclusive': True}
    exchange_opts = {'durable': False, 'delivery_mode': 'transient', 'auto_delete': True}


register_factory('SimpleQueue', SimpleQueue)
register_factory('SimpleBuffer', SimpleBuffer)
