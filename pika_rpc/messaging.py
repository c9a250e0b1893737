"""``Producer`` and ``Consumer``: kombu's calls turned into link commands.

``Producer``/``Consumer`` accept a ``Connection`` (``connection``, re-exported here), a
``Link``, or ``None`` for a connection of their own built from the default settings
(``$AMQP_URL`` or localhost) on the process's shared link, released by their ``close()``.

Threads: every method blocks its caller until the I/O thread has done the work, and may be
called from any thread except the I/O thread. ``Producer`` and ``Consumer`` are thread-safe.
User code (Consumer callbacks, ``on_message``, ``on_decode_error``, ``on_return``, retry
errbacks) runs on the link's one callback thread, in delivery order, never on the I/O
thread; an exception there is logged and the next message goes on. What a Consumer's
callback raises is also raised by its connection's next ``drain_events()`` (see
``connection``).

Fork: a ``Producer`` or ``Consumer`` made before ``os.fork()`` works in the child: its locks
are new there (a parent thread may have held one), its connection acquires the child's own
link, and a Consumer's subscriptions stay the parent's (``consume()`` subscribes the child).
A message received by the parent is acked by the parent only.

Choices where kombu leaves room:

* ``Producer.publish`` waits for the broker's confirm (bounded by ``timeout``, default the
  ``publish_timeout`` setting) and raises ``PublishError`` when it is nacked, not confirmed
  in time, or retries run out; ``ConnectionLost`` when the broker cannot be reached. Before
  the first publish to a named exchange on a connection, the exchange is declared
  (``auto_declare``) or checked passively, once (cached): a missing exchange is a clear
  ``PublishError`` instead of a channel the broker closes.
* ``Producer(auto_declare=True)`` declares its exchange before its first publish on a
  connection (then cached), not at instantiation: creating a Producer does no I/O.
* With ``mandatory=True`` an unroutable message is logged (WARNING) and handed to
  ``on_return(exception, exchange, routing_key, message)`` on the callback thread; the
  publish itself succeeds, as the broker confirmed it.
* ``retry=True`` uses the ``task_publish_retry_policy`` setting, updated by
  ``retry_policy``: re-publishing after a nack or a lost connection, and retrying
  declarations; ``max_retries=None`` retries until the deadline.
* A bytes body without ``serializer``/``content_type`` is sent as ``application/data``,
  a str as ``text/plain`` (as kombu); other bodies use ``serializer``, the producer's, or
  the ``task_serializer`` setting (json).
* RabbitMQ answers ``immediate=True``, ``channel.flow`` and ``basic.recover(requeue=False)``
  with 540 NOT_IMPLEMENTED, closing the connection for every thread: those are refused
  locally with ``NotSupportedByRabbitMQ``. ``qos(prefetch_size != 0)`` likewise.
* Each consumed queue has its own channel, so ``prefetch_count`` applies per queue
  (``apply_global`` changes nothing). ``Consumer(accept=None)`` accepts the
  ``accept_content`` setting (JSON only by default), not every content type.
* A message that cannot be decoded goes to ``on_decode_error(message, exc)``; without one it
  is logged and rejected (not requeued). A message delivered on a subscription that was
  cancelled or replaced by a reconnect before its callback ran is skipped (the broker
  delivers it again); with ``no_ack`` it is passed on, as the broker will not resend it.
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from . import _registry, serialization
from ._consumers import ConsumerSpec, Delivery
from ._handoff import Publication
from ._link import Link
from ._retry import retry_over_time
from ._timeouts import deadline
from .config import merge_retry_policy, parse_url
# Connection lives in .connection (as kombu splits it); re-exported for code that imported
# it from here.
from .connection import Connection, _as_connection, _check_exchange, _send, _View
from .entities import IMMEDIATE_REFUSED, Exchange, Queue, maybe_declare as _maybe_declare
from .errors import (ClosedError, ConnectionLost, ContentDisallowed, NotSupportedByRabbitMQ,
                     PikaRPCError, PublishError, TimeoutError)
from .message import Message, check_properties, compress, maybe_delivery_mode

LOGGER = logging.getLogger(__name__)

__all__ = ['Connection', 'Producer', 'Consumer']


def _retrying(fn: Callable[[], Any], policy: Optional[dict], dl: Optional[float]) -> Any:
    if policy is None:
        return fn()
    return retry_over_time(fn, (ConnectionLost, TimeoutError), None, dl,
                           max_retries=policy['max_retries'],
                           interval_start=policy['interval_start'],
                           interval_step=policy['interval_step'],
                           interval_max=policy['interval_max'], errback=policy.get('errback'),
                           is_fatal=lambda exc: isinstance(exc, ClosedError))


# ------------------------------------------------------------------ Producer

class Producer:
    """Message producer (kombu's ``Producer``): serializes, declares, publishes with confirms.

    ``channel``: a ``Connection``, a ``Link``, or None (a connection of its own, released by
    ``close()``). A str ``exchange`` names an existing exchange (checked, never declared).
    """

    exchange: Optional[Exchange] = None
    routing_key = ''
    serializer: Optional[str] = None
    compression: Optional[str] = None
    auto_declare = True
    on_return: Optional[Callable[..., Any]] = None

    def __init__(self, channel: Any, exchange: Any = None, routing_key: Optional[str] = None,
                 serializer: Optional[str] = None, auto_declare: Optional[bool] = None,
                 compression: Optional[str] = None,
                 on_return: Optional[Callable[..., Any]] = None) -> None:
        if isinstance(exchange, str):
            exchange = Exchange(exchange, no_declare=True)
        self.exchange = exchange if exchange is not None else Exchange('')
        self.routing_key = routing_key or self.routing_key
        self.serializer = serializer or self.serializer
        self.compression = compression or self.compression
        self.on_return = on_return or self.on_return
        if auto_declare is not None:
            self.auto_declare = auto_declare
        self._connection: Optional[Connection] = None
        self._owns = False
        self.revive(channel)

    def __repr__(self) -> str:
        return f'<Producer {self._connection!r} exchange={self.exchange}>'

    def revive(self, channel: Any) -> None:
        """Use ``channel`` (a Connection, Link or None) from now on."""
        old, owned = self._connection, self._owns
        self._connection, self._owns = _as_connection(channel)
        if owned and old is not None and old is not self._connection:
            old.release()
        self.exchange = self.exchange(self._connection)

    @property
    def channel(self) -> Connection:
        return self._require()

    @property
    def connection(self) -> Connection:
        return self._require()

    def _require(self) -> Connection:
        if self._connection is None:
            raise ClosedError('this Producer is released; revive(connection) to use it again')
        return self._connection

    def declare(self) -> None:
        """Declare the default exchange (when named). Blocks."""
        if self.exchange.name:
            self.exchange.declare(channel=self._require())

    def maybe_declare(self, entity: Any, retry: bool = False, **retry_policy: Any) -> bool:
        """Declare ``entity`` unless already declared on this connection. Blocks.

        Returns True when commands were sent. With ``retry`` a lost connection is retried
        under the publish retry policy updated by ``retry_policy``.
        """
        conn = self._require()
        policy = self._policy(retry, retry_policy)
        dl = deadline(conn.command_timeout)
        return _retrying(lambda: _maybe_declare(entity, _View(conn, dl)), policy, dl)

    def _policy(self, retry: bool, retry_policy: Optional[dict]) -> Optional[dict]:
        if not retry:
            return None
        return merge_retry_policy(self._require().settings.task_publish_retry_policy, retry_policy)

    def publish(self, body: Any, routing_key: Optional[str] = None, delivery_mode: Any = None,
                mandatory: bool = False, immediate: bool = False, priority: int = 0,
                content_type: Optional[str] = None, content_encoding: Optional[str] = None,
                serializer: Optional[str] = None, headers: Optional[dict] = None,
                compression: Optional[str] = None, exchange: Any = None, retry: bool = False,
                retry_policy: Optional[dict] = None, declare: Optional[Sequence[Any]] = None,
                expiration: Optional[float] = None, timeout: Optional[float] = None,
                confirm_timeout: Optional[float] = None, **properties: Any) -> None:
        """Publish ``body`` and wait for the broker's confirm (see the module docstring).

        ``expiration`` is in seconds; ``**properties`` are AMQP properties
        (``correlation_id``, ``reply_to``, ``message_id``, ...). Blocks up to ``timeout``
        (default: the ``publish_timeout`` setting) for declarations, publish and confirm;
        ``confirm_timeout`` (kombu's) shortens that bound when it is the smaller one.

        Raises:
            NotSupportedByRabbitMQ: ``immediate=True``.
            PublishError: nacked, not confirmed in time, retries exhausted, missing exchange.
            ConnectionLost: the broker cannot be reached. PreconditionFailed: a declaration
            clashed. EncodeError, TypeError, ValueError: a bad body, property or argument.
        """
        if immediate:
            raise NotSupportedByRabbitMQ(IMMEDIATE_REFUSED)
        conn = self._require()
        timeout = conn.settings.publish_timeout if timeout is None else timeout
        if confirm_timeout is not None:
            timeout = confirm_timeout if timeout is None else min(timeout, confirm_timeout)
        dl = deadline(timeout)
        policy = self._policy(retry, retry_policy)
        pub, message = self.prepare_publication(
            body, routing_key, delivery_mode, mandatory, priority, content_type,
            content_encoding, serializer, headers, compression, exchange, policy, expiration,
            timeout, **properties)
        targets = list(declare or [])
        if self.auto_declare and self.exchange._can_declare() and self.exchange not in targets:
            targets.append(self.exchange)
        view = _View(conn, dl)
        try:
            for entity in targets:
                _retrying(lambda: _maybe_declare(entity, view), policy, dl)
            if pub.exchange:
                _retrying(lambda: _check_exchange(view, pub.exchange), policy, dl)
        except TimeoutError as exc:
            raise PublishError(f'publish to {pub.exchange!r}: declarations not done within '
                               f'{timeout} s ({exc})') from exc
        _send(conn, pub, dl, message, self._call_on_return if self.on_return else None)

    def prepare_publication(self, body: Any, routing_key: Optional[str] = None,
                            delivery_mode: Any = None, mandatory: bool = False, priority: int = 0,
                            content_type: Optional[str] = None,
                            content_encoding: Optional[str] = None,
                            serializer: Optional[str] = None, headers: Optional[dict] = None,
                            compression: Optional[str] = None, exchange: Any = None,
                            retry_policy: Optional[dict] = None, expiration: Optional[float] = None,
                            timeout: Optional[float] = None, **properties: Any) -> tuple:
        """Serialize and check everything for one publish, without I/O.

        Returns ``(Publication, Message)``; hand the first to ``link.publish`` and wait on
        it. ``retry_policy`` (a merged policy or None) sets its re-publish budget.
        """
        routing_key = self.routing_key if routing_key is None else routing_key
        compression = self.compression if compression is None else compression
        target = self.exchange if exchange is None else exchange
        exchange_name = target.name if isinstance(target, Exchange) else (target or '')
        mode = delivery_mode or (target.delivery_mode if isinstance(target, Exchange) else None) \
            or self.exchange.delivery_mode
        headers = dict(headers or {})
        body, content_type, content_encoding = self._encode(
            body, serializer, content_type, content_encoding)
        if compression:
            body, headers['compression'] = compress(body, compression)
        props = dict(properties, delivery_mode=maybe_delivery_mode(mode), priority=priority,
                     content_type=content_type, content_encoding=content_encoding, headers=headers)
        if expiration is not None:
            if isinstance(expiration, bool) or not expiration >= 0:
                raise ValueError(f'expiration must be seconds >= 0, got {expiration!r}')
            props['expiration'] = str(int(expiration * 1000))
        props = check_properties(props)
        self._check_user_id(props.get('user_id'))
        message = Message(body, properties=props, channel=self._connection)
        pub = Publication(exchange_name, routing_key, body, props, mandatory=mandatory,
                          policy=retry_policy, timeout=timeout)
        return pub, message

    def _encode(self, body: Any, serializer: Optional[str], content_type: Optional[str],
                content_encoding: Optional[str]) -> tuple:
        if content_type:
            if isinstance(body, str):
                content_encoding = content_encoding or 'utf-8'
                return body.encode(content_encoding), content_type, content_encoding
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f'with content_type given the body must be bytes or str, got '
                                f'{type(body).__name__}')
            return bytes(body), content_type, content_encoding or 'binary'
        serializer = serializer or self.serializer
        if serializer is None and isinstance(body, (bytes, bytearray)):
            return bytes(body), 'application/data', 'binary'
        if serializer is None and isinstance(body, str):
            return body.encode('utf-8'), 'text/plain', 'utf-8'
        serializer = serializer or self._require().settings.task_serializer
        content_type, content_encoding, data = serialization.dumps(body, serializer)
        return data, content_type, content_encoding

    def _check_user_id(self, user_id: Optional[str]) -> None:
        # RabbitMQ closes the publish channel (406) when user_id is not the connection's user.
        if user_id is None:
            return
        users = {a.userid for a in parse_url(self._require().settings.broker_url)}
        if user_id not in users:
            raise ValueError(f'user_id {user_id!r} is not the connection\'s user: RabbitMQ would '
                             f'refuse the message (406) and close the channel')

    def _call_on_return(self, exc: BaseException, exchange: str, routing_key: str,
                        message: Message) -> None:     # callback thread
        handler = self.on_return
        if handler is not None:
            handler(exc, exchange, routing_key, message)

    def release(self) -> None:
        """Release the connection this producer created for itself (if any). Idempotent."""
        conn, owned = self._connection, self._owns
        if owned and conn is not None:
            self._connection, self._owns = None, False
            conn.release()

    close = release

    def __enter__(self) -> 'Producer':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


# ------------------------------------------------------------------ Consumer

_FLOW_REFUSED = ('Consumer.flow() is not supported by RabbitMQ: channel.flow from a client is '
                 'answered with 540 NOT_IMPLEMENTED, closing the connection. Use '
                 'qos(prefetch_count=...) to limit deliveries, or cancel()/consume()')
_RECOVER_REFUSED = ('recover(requeue=False) is not supported by RabbitMQ (540 NOT_IMPLEMENTED '
                    'closes the connection); use recover(requeue=True)')
_PREFETCH_SIZE_REFUSED = ('qos(prefetch_size=...) is not supported by RabbitMQ (540 '
                          'NOT_IMPLEMENTED); use prefetch_count')


class Consumer:
    """Message consumer (kombu's ``Consumer``); deliveries are pushed to its callbacks.

    ``channel``: a ``Connection``, a ``Link``, or None (a connection of its own). Callbacks
    ``callbacks(body, message)``, ``on_message(message)`` and ``on_decode_error(message,
    exc)`` run on the callback thread. What one of them raises is logged, leaves its message
    unacknowledged and is raised by the connection's next ``drain_events()`` (the first one
    not raised yet; see the module docstring). With ``auto_declare`` (default) the queues are
    declared at instantiation and again after every reconnect.
    """

    ContentDisallowed = ContentDisallowed

    channel: Any = None
    no_ack: Optional[bool] = None
    auto_declare = True
    callbacks: Optional[List[Callable[[Any, Message], Any]]] = None
    on_message: Optional[Callable[[Message], Any]] = None
    on_decode_error: Optional[Callable[[Message, BaseException], Any]] = None
    accept: Any = None
    prefetch_count: Optional[int] = None
    tag_prefix: Optional[str] = None

    def __init__(self, channel: Any, queues: Any = None, no_ack: Optional[bool] = None,
                 auto_declare: Optional[bool] = None,
                 callbacks: Optional[Sequence[Callable[[Any, Message], Any]]] = None,
                 on_decode_error: Optional[Callable[[Message, BaseException], Any]] = None,
                 on_message: Optional[Callable[[Message], Any]] = None, accept: Any = None,
                 prefetch_count: Optional[int] = None, tag_prefix: Optional[str] = None) -> None:
        self._lock = threading.RLock()
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
                self._connection.settings.accept_content if self._accept_arg is None
                else self._accept_arg)
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
        with self._lock:
            for name, queue in self._queues.items():
                if name in self._specs:
                    continue
                effective = no_ack if no_ack is not None else (
                    self.no_ack if self.no_ack is not None else bool(queue.no_ack))
                spec = ConsumerSpec(
                    name, self._on_delivery(link), no_ack=effective,
                    prefetch_count=self.prefetch_count or None,
                    declarations=tuple(queue.declarations()) if self.auto_declare or
                    queue.exclusive else (),
                    consumer_tag=f'{self.tag_prefix}{next(self._tags)}' if self.tag_prefix else None,
                    arguments=queue.consumer_arguments,
                    on_cancel=lambda name=name: LOGGER.warning(
                        'broker cancelled the consumer of queue %r (deleted?); re-subscribing', name))
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

    def _on_delivery(self, link: Link) -> Callable[[Delivery], None]:
        def on_delivery(delivery: Delivery) -> None:        # I/O thread: hand off only
            link.callbacks.submit(self._dispatch, link, delivery)
        return on_delivery

    def _dispatch(self, link: Link, delivery: Delivery) -> None:   # callback thread
        spec = delivery.spec
        if not spec.no_ack and spec.gen != delivery.gen:
            return       # cancelled or re-subscribed since: the broker delivers it again
        info = {'consumer_tag': spec.consumer_tag, 'delivery_tag': delivery.delivery_tag,
                'redelivered': delivery.redelivered, 'exchange': delivery.exchange,
                'routing_key': delivery.routing_key}

        def acker(tag: int, multiple: bool, reject: bool, requeue: bool) -> bool:
            # A plain ack on a live subscription needs no answer: fire and forget (if the
            # channel dies meanwhile the broker redelivers). A stale one is refused here, and
            # a reject waits so the caller learns whether it took effect.
            if not reject and (spec.gen != delivery.gen or not spec.active):
                return False
            return link.ack(spec, delivery.gen, tag, multiple=multiple, reject=reject,
                            requeue=requeue, wait=reject)
        message = Message._received(delivery.body, delivery.property_dict(), info,
                                    channel=self._connection, acker=acker, no_ack=spec.no_ack,
                                    accept=self.accept)
        try:
            self._receive_callback(message)
        except BaseException as exc:      # SystemExit too: raised by drain_events, as kombu
            LOGGER.error('Consumer callback failed on message %s from queue %r; it stays '
                         'unacknowledged and the next drain_events() raises the error',
                         delivery.delivery_tag, spec.queue, exc_info=exc)
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
        LOGGER.error("can't decode message body: %r (type:%r encoding:%r raw:%r); rejecting it",
                     exc, message.content_type, message.content_encoding,
                     message.body[:64] if isinstance(message.body, bytes) else message.body)
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
                spec.active = False        # nothing to cancel on a lost connection

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

    def qos(self, prefetch_size: int = 0, prefetch_count: int = 0, apply_global: bool = False) -> None:
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
