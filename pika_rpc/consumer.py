"""``Consumer``: kombu's consumer on the process's link; deliveries are pushed to callbacks.

Part of pika_rpc's kombu surface (see :mod:`pika_rpc.messaging` for the threads, fork and the
choices shared with ``Producer``). Not to be confused with ``_consumers``, which holds the
link's own side of a subscription (specs, channels, acks) on the I/O thread.

Choices where kombu leaves room:

* Each consumed queue has its own channel, so ``prefetch_count`` applies per queue
  (``apply_global`` changes nothing). The window is global (per channel) on a queue known to
  be classic, per-consumer on a quorum queue or one declared elsewhere (``_taskqueues``;
  changing it then replaces the consumer on the same channel, nothing is requeued).
  ``Consumer(accept=None)`` accepts the ``accept_content`` setting (JSON only by default),
  not every content type.
* A queue whose re-subscription the broker refuses (its node is down) is tried again every
  ``broker_consumer_retry_interval`` seconds, with a WARNING each time, until it consumes
  again or ``broker_consumer_max_retries`` refusals in a row: then it stops and
  ``on_given_up(queue_name, error)`` is called (I/O thread: quick). ``subscriptions()``
  says, per queue, whether it consumes and the last error.
* A message that cannot be decoded goes to ``on_decode_error(message, exc)``; without one it
  is logged and rejected (not requeued). A message delivered on a subscription that was
  cancelled or replaced by a reconnect before its callback ran is skipped (the broker
  delivers it again); with ``no_ack`` it is passed on, as the broker will not resend it.
* RabbitMQ answers ``channel.flow`` and ``basic.recover(requeue=False)`` with 540
  NOT_IMPLEMENTED, closing the connection for every thread: those are refused locally with
  ``NotSupportedByRabbitMQ``, as is ``qos(prefetch_size != 0)``.
* What a callback raises is kept by its connection and raised by its next
  ``drain_events()``, as kombu does; its message stays unacknowledged.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from . import _registry, _taskqueues, serialization
from ._consumers import ConsumerSpec, Delivery
from ._link import Link
from .connection import Connection, _as_connection, register_factory
from .entities import Queue
from .errors import (
    BrokerRefused,
    ClosedError,
    ConnectionLost,
    ContentDisallowed,
    NotSupportedByRabbitMQ,
    PikaRPCError,
    TimeoutError,
)
from .message import Message

LOGGER = logging.getLogger(__name__)

__all__ = ['Consumer']


_FLOW_REFUSED = (
    'Consumer.flow() is not supported by RabbitMQ: channel.flow from a client is '
    'answered with 540 NOT_IMPLEMENTED, closing the connection. Use '
    'qos(prefetch_count=...) to limit deliveries, or cancel()/consume()'
)
_RECOVER_REFUSED = (
    'recover(requeue=False) is not supported by RabbitMQ (540 NOT_IMPLEMENTED '
    'closes the connection); use recover(requeue=True)'
)
_PREFETCH_SIZE_REFUSED = (
    'qos(prefetch_size=...) is not supported by RabbitMQ (540 NOT_IMPLEMENTED); use prefetch_count'
)


class Consumer:
    """Message consumer (kombu's ``Consumer``); deliveries are pushed to its callbacks.

    ``channel``: a ``Connection``, a ``Link``, or None (a connection of its own). Callbacks
    ``callbacks(body, message)``, ``on_message(message)`` and ``on_decode_error(message,
    exc)`` run on the callback thread. What one of them raises is logged, leaves its message
    unacknowledged and is raised by the connection's next ``drain_events()`` (the first one
    not raised yet; see the module docstring). With ``auto_declare`` (default) the queues are
    declared at instantiation and again after every reconnect. ``on_given_up(queue_name,
    error)`` hears that a queue stopped for good (see the module docstring).
    """

    ContentDisallowed = ContentDisallowed

    channel: Any = None
    no_ack: Optional[bool] = None
    auto_declare = True
    callbacks: List[Callable[[Any, Message], Any]] = None  # type: ignore[assignment]  # set per instance
    on_message: Optional[Callable[[Message], Any]] = None
    on_decode_error: Optional[Callable[[Message, BaseException], Any]] = None
    accept: Any = None
    prefetch_count: Optional[int] = None
    tag_prefix: Optional[str] = None

    def __init__(
        self,
        channel: Any,
        queues: Any = None,
        no_ack: Optional[bool] = None,
        auto_declare: Optional[bool] = None,
        callbacks: Optional[Sequence[Callable[[Any, Message], Any]]] = None,
        on_decode_error: Optional[Callable[[Message, BaseException], Any]] = None,
        on_message: Optional[Callable[[Message], Any]] = None,
        accept: Any = None,
        prefetch_count: Optional[int] = None,
        tag_prefix: Optional[str] = None,
        *,
        on_given_up: Optional[Callable[[str, BrokerRefused], Any]] = None,
    ) -> None:
        self._lock = threading.RLock()
        self.on_given_up = on_given_up
        self._queues: Dict[str, Queue] = {}
        self._specs: Dict[str, ConsumerSpec] = {}
        _registry.register_live(self)
        self._tags = itertools.count(1)
        self._connection: Optional[Connection] = None
        self._owns = False
        self._pending_queues = [queues] if isinstance(queues, Queue) else list(queues or [])
        self.no_ack = self.no_ack if no_ack is None else no_ack
        if callbacks is None:
            callbacks = list(self.callbacks or [])
        self.callbacks = callbacks if isinstance(callbacks, list) else list(callbacks)
        self.on_message = on_message
        self.tag_prefix = tag_prefix
        if auto_declare is not None:
            self.auto_declare = auto_declare
        if on_decode_error is not None:
            self.on_decode_error = on_decode_error
        self._accept_arg = accept
        self.prefetch_count = prefetch_count
        self.revive(channel)

    def __repr__(self) -> str:
        return f'<Consumer {sorted(self._queues)}>'

    def _forget_parent_state(self) -> None:
        # In a forked child (_registry): a parent thread may have held the lock (consume()
        # holds it over round trips), and the subscriptions are the parent's: consume()
        # subscribes this process.
        self._lock = threading.RLock()
        self._specs = {}

    @property
    def queues(self) -> List[Queue]:
        with self._lock:
            return list(self._queues.values())

    @queues.setter
    def queues(self, queues: Iterable[Queue]) -> None:
        with self._lock:
            self._queues = {q.name: q for q in queues}

    @property
    def connection(self) -> Optional[Connection]:
        return self._connection

    def revive(self, channel: Any) -> None:
        """Use ``channel`` from now on: active consumers on the old one are cancelled,
        queues re-bound (and declared with ``auto_declare``). Blocks."""
        with self._lock:
            if self._specs:
                self.cancel()
            old, owned = self._connection, self._owns
            self._connection, self._owns = _as_connection(channel)
            if owned and old is not None and old is not self._connection:
                old.release()
            self.channel = self._connection
            self.accept = serialization.prepare_accept_content(
                self._connection.settings.accept_content
                if self._accept_arg is None
                else self._accept_arg
            )
            queues, self._pending_queues = self._pending_queues + self.queues, []
            self._queues = {}
            for queue in queues:
                queue = queue(self._connection)
                if self.auto_declare:
                    queue.declare()
                self._queues[queue.name] = queue

    def declare(self) -> None:
        """Declare every queue with its exchange and bindings. Blocks."""
        for queue in self.queues:
            queue.declare()

    def register_callback(self, callback: Callable[[Any, Message], Any]) -> None:
        """Add ``callback(body, message)``; called in order of registration."""
        self.callbacks.append(callback)

    def add_queue(self, queue: Queue) -> Queue:
        """Add (and with ``auto_declare`` declare) a queue; ``consume()`` starts it. Blocks."""
        queue = queue(self._require())
        if self.auto_declare:
            queue.declare()
        with self._lock:
            self._queues[queue.name] = queue
        return queue

    def _require(self) -> Connection:
        if self._connection is None:
            raise ClosedError('this Consumer is closed; revive(connection) to use it again')
        return self._connection

    def consume(self, no_ack: Optional[bool] = None) -> None:
        """Start consuming from every queue not consumed yet. Blocks until subscribed.

        Raises:
            PikaRPCError: the broker refused (``reply_code`` 404 for a missing queue).
            TimeoutError, ConnectionLost.
        """
        conn = self._require()
        link = conn.link
        settings = conn.settings
        with self._lock:
            for name, queue in self._queues.items():
                if name in self._specs:
                    continue
                effective = (
                    no_ack
                    if no_ack is not None
                    else (self.no_ack if self.no_ack is not None else bool(queue.no_ack))
                )
                spec = ConsumerSpec(
                    name,
                    self._on_delivery(link),
                    no_ack=effective,
                    prefetch_count=self.prefetch_count or None,
                    declarations=tuple(queue.declarations())
                    if self.auto_declare or queue.exclusive
                    else (),
                    consumer_tag=f'{self.tag_prefix}{next(self._tags)}'
                    if self.tag_prefix
                    else None,
                    arguments=queue.consumer_arguments,
                    on_cancel=lambda name=name: LOGGER.warning(  # type: ignore[misc]
                        'broker cancelled the consumer of queue %r (deleted?); re-subscribing', name
                    ),
                    qos_global=_taskqueues.global_qos(queue, settings.worker_detect_quorum_queues),
                    retry_interval=settings.broker_consumer_retry_interval,
                    retry_limit=settings.broker_consumer_max_retries or None,
                    on_given_up=lambda err, name=name: self._given_up(name, err),  # type: ignore[misc]
                )
                try:
                    link.consume(spec, timeout=conn.command_timeout)
                except TimeoutError:
                    # It may still run once the link gets to it: undo it, best effort.
                    try:
                        link.cancel(spec, timeout=conn.command_timeout)
                    except PikaRPCError:
                        LOGGER.debug('cancel after a timed-out consume failed', exc_info=True)
                    raise
                self._specs[name] = spec

    def _given_up(self, name: str, error: BrokerRefused) -> None:  # I/O thread
        if self.on_given_up is not None:
            self.on_given_up(name, error)

    def subscriptions(self) -> Dict[str, Dict[str, Any]]:
        """Per consumed queue: ``consuming`` (subscribed now), ``active`` (not stopped),
        ``failures`` (refused re-subscriptions in a row) and ``last_error`` (or None). Any
        thread, the I/O thread too (an ``on_given_up`` hook): takes no lock (``consume()``
        holds the lock over round trips to the I/O thread); a dict copy is atomic."""
        specs = dict(self._specs)
        return {
            name: {
                'consuming': spec.consuming,
                'active': spec.active,
                'failures': spec.failures,
                'last_error': spec.last_error,
            }
            for name, spec in specs.items()
        }

    def _on_delivery(self, link: Link) -> Callable[[Delivery], None]:
        def on_delivery(delivery: Delivery) -> None:  # I/O thread: hand off only
            link.callbacks.submit(self._dispatch, link, delivery)

        return on_delivery

    def _dispatch(self, link: Link, delivery: Delivery) -> None:  # callback thread
        spec = delivery.spec
        if not spec.no_ack and spec.gen != delivery.gen:
            return  # cancelled or re-subscribed since: the broker delivers it again
        info = {
            'consumer_tag': spec.consumer_tag,
            'delivery_tag': delivery.delivery_tag,
            'redelivered': delivery.redelivered,
            'exchange': delivery.exchange,
            'routing_key': delivery.routing_key,
        }

        def acker(tag: int, multiple: bool, reject: bool, requeue: bool) -> bool:
            # A plain ack on a live subscription needs no answer: fire and forget (if the
            # channel dies meanwhile the broker redelivers). A stale one is refused here, and
            # a reject waits so the caller learns whether it took effect.
            if not reject and (spec.gen != delivery.gen or not spec.active):
                return False
            return link.ack(
                spec,
                delivery.gen,
                tag,
                multiple=multiple,
                reject=reject,
                requeue=requeue,
                wait=reject,
            )

        message = Message._received(
            delivery.body,
            delivery.property_dict(),
            info,
            channel=self._connection,
            acker=acker,
            no_ack=spec.no_ack,
            accept=self.accept,
        )
        try:
            self._receive_callback(message)
        except BaseException as exc:  # SystemExit too: raised by drain_events, as kombu
            LOGGER.error(
                'Consumer callback failed on message %s from queue %r; it stays '
                'unacknowledged and the next drain_events() raises the error',
                delivery.delivery_tag,
                spec.queue,
                exc_info=exc,
            )
            self._note_handled(exc)
        else:
            self._note_handled(None)

    def _note_handled(self, error: Optional[BaseException]) -> None:
        conn = self._connection
        if conn is not None:
            conn._note_handled(error)

    def _receive_callback(self, message: Message) -> None:
        on_message = self.on_message
        try:
            if message.errors:
                message._reraise_error()
            decoded = None if on_message else message.decode()
        except Exception as exc:
            self._decode_failed(message, exc)
            return
        if on_message is not None:
            on_message(message)
        else:
            self.receive(decoded, message)

    def _decode_failed(self, message: Message, exc: BaseException) -> None:
        if self.on_decode_error is not None:
            self.on_decode_error(message, exc)
            return
        LOGGER.error(
            "can't decode message body: %r (type:%r encoding:%r raw:%r); rejecting it",
            exc,
            message.content_type,
            message.content_encoding,
            message.body[:64] if isinstance(message.body, bytes) else message.body,
        )
        if not message.acknowledged:
            message.reject(requeue=False)

    def receive(self, body: Any, message: Message) -> None:
        """Call every callback with ``(body, message)`` (callback thread).

        Raises:
            NotImplementedError: no callbacks are registered.
        """
        if not self.callbacks:
            raise NotImplementedError('Consumer does not have any callbacks')
        for callback in self.callbacks:
            callback(body, message)

    def consuming_from(self, queue: Any) -> bool:
        """True if consuming from ``queue`` (a Queue or a name)."""
        name = queue.name if isinstance(queue, Queue) else queue
        spec = self._specs.get(name)
        return spec is not None and spec.active

    def cancel(self) -> None:
        """Stop every subscription; unacked messages go back to their queues. Blocks."""
        with self._lock:
            specs, self._specs = list(self._specs.values()), {}
        self._cancel_specs(specs)

    def _cancel_specs(self, specs: List[ConsumerSpec]) -> None:
        conn = self._connection
        if conn is None or conn._link is None:
            return
        for spec in specs:
            try:
                conn._link.cancel(spec, timeout=conn.command_timeout)
            except ConnectionLost:
                spec.active = False  # nothing to cancel on a lost connection

    def cancel_by_queue(self, queue: Any) -> None:
        """Stop consuming from ``queue`` (a Queue or name) and forget it. Blocks."""
        name = queue.name if isinstance(queue, Queue) else queue
        with self._lock:
            spec = self._specs.pop(name, None)
            self._queues.pop(name, None)
        if spec is not None:
            self._cancel_specs([spec])

    def purge(self) -> int:
        """Delete the ready messages of every queue; return how many. Blocks."""
        return sum(queue.purge() for queue in self.queues)

    def qos(
        self, prefetch_size: int = 0, prefetch_count: int = 0, apply_global: bool = False
    ) -> None:
        """Set how many unacked messages each queue's subscription may hold (0: no limit).

        Raises:
            NotSupportedByRabbitMQ: ``prefetch_size`` other than 0.
        """
        if prefetch_size:
            raise NotSupportedByRabbitMQ(_PREFETCH_SIZE_REFUSED)
        self.prefetch_count = prefetch_count
        conn = self._require()
        with self._lock:
            specs = list(self._specs.values())
        for spec in specs:
            conn.link.qos(spec, prefetch_count, timeout=conn.command_timeout)

    def pause(self) -> None:
        """Stop the deliveries of every queue but keep its channel, so what was received so
        far can still be acked; ``cancel()`` then returns the rest to the queues. Blocks."""
        conn = self._require()
        with self._lock:
            specs = list(self._specs.values())
        for spec in specs:
            conn.link.pause(spec, timeout=conn.command_timeout)

    def flow(self, active: bool) -> None:
        """Refused: RabbitMQ does not implement channel.flow from clients."""
        raise NotSupportedByRabbitMQ(_FLOW_REFUSED)

    def recover(self, requeue: bool = False) -> None:
        """Redeliver unacknowledged messages (``requeue=True`` only on RabbitMQ). Blocks.

        Raises:
            NotSupportedByRabbitMQ: ``requeue=False``.
        """
        if not requeue:
            raise NotSupportedByRabbitMQ(_RECOVER_REFUSED)
        conn = self._require()
        with self._lock:
            specs = list(self._specs.values())
        for spec in specs:
            conn.link.recover(spec, timeout=conn.command_timeout)

    def close(self) -> None:
        """Cancel every subscription and release a connection made for this consumer."""
        self.cancel()
        conn, owned = self._connection, self._owns
        if owned and conn is not None:
            self._connection, self._owns = None, False
            conn.release()

    def __enter__(self) -> 'Consumer':
        self.consume()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.cancel()
        except (ConnectionLost, TimeoutError):
            LOGGER.debug('cancel on leaving a Consumer block failed', exc_info=True)


register_factory('Consumer', Consumer)
