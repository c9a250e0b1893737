"""``Connection``, ``Producer`` and ``Consumer``: kombu's calls turned into link commands.

A ``Connection`` is a light handle on the process's shared link (one connection, one I/O
thread per broker address list; ``_registry``), taken lazily on first use and let go by
``release()``/``close()``. ``channel()`` returns the connection itself: there are no user
channels, the link keeps its own (one for publishing with pipelined confirms, one for
declarations, one per consumed queue). ``Producer``/``Consumer`` accept a ``Connection``,
a ``Link``, or ``None`` for a connection of their own built from the default settings
(``$AMQP_URL`` or localhost) on the same shared link, released by their ``close()``.

Threads: every method blocks its caller until the I/O thread has done the work, and may be
called from any thread except the I/O thread. ``Producer`` and ``Consumer`` are thread-safe.
User code (Consumer callbacks, ``on_message``, ``on_decode_error``, ``on_return``, retry
errbacks) runs on the link's one callback thread, in delivery order, never on the I/O
thread; an exception there is logged and the next message goes on.

Fork: a ``Connection``, ``Producer`` or ``Consumer`` made before ``os.fork()`` works in the
child: its locks are new there (a parent thread may have held one), its connection acquires
the child's own link, and a Consumer's subscriptions stay the parent's (``consume()``
subscribes the child). A message received by the parent is acked by the parent only.

An exception from a Consumer's ``callbacks``, ``on_message`` or ``on_decode_error`` is also
raised to the consumer's connection, as kombu raises it out of ``drain_events()``: the same
exception object (any ``BaseException``), raised by that ``Connection``'s next
``drain_events()`` call. Its message is left unacknowledged (acked only if the callback
acked it before raising) and the connection and subscription stay up. kombu stops reading
at the failing message, so each ``drain_events()`` raises at most one exception and none is
lost; here callbacks go on with later messages, so the first exception is kept until a
``drain_events()`` raises it, and later ones meanwhile are only logged. Kept and not raised
(nobody calls ``drain_events()``), it holds one exception and its traceback.

Choices where kombu and DESIGN leave room:

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
* ``Connection.drain_events(timeout)`` exists for kombu-style loops: deliveries are pushed to
  callbacks without it; it only waits until a consumer of this connection handled one, and
  raises what a callback raised (above).
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from . import _registry, serialization
from ._commands import ConsumerSpec, Delivery, Publication
from ._iothread import Link
from ._publish import publish_and_wait
from ._retry import retry_over_time
from ._timeouts import deadline, remaining
from .config import (Settings, mask_url,
                     merge_retry_policy, parse_url)
from .entities import IMMEDIATE_REFUSED, Exchange, Queue, maybe_declare as _maybe_declare
from .message import Message, check_properties, compress, maybe_delivery_mode
from .errors import (ClosedError, ConnectionLost, ContentDisallowed, NotFound,
                     NotSupportedByRabbitMQ, PikaRPCError, PublishError, TimeoutError)

LOGGER = logging.getLogger(__name__)

__all__ = ['Connection', 'Producer', 'Consumer']

_DEFAULT: Any = object()



# ------------------------------------------------------------------ Connection

class Connection:
    """A handle on the process's shared link for ``url`` and Celery-named ``settings``.

    Cheap to create; the link is acquired on first use (``.link``) and shared by every
    handle with the same broker options. Thread-safe. Usable after ``release()``: the next
    use acquires the link again.

    Raises:
        TypeError, ValueError: an unknown or invalid setting (see ``config.Settings``).
    """

    def __init__(self, url: Optional[str] = None, **settings: Any) -> None:
        if url is not None:
            settings['broker_url'] = url
        self._setup(Settings(**settings), None)

    def _setup(self, settings: Settings, link: Optional[Link]) -> None:
        self.settings = settings
        self._link = link
        self._owns_link = link is None
        self._new_state()
        _registry.register_live(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        # Counts messages handled by this connection's consumers; drain_events waits on it.
        self._handled = threading.Condition(threading.Lock())
        self._handled_count = 0
        self._drained = 0          # _handled_count when drain_events last returned
        # The first callback exception not raised yet by drain_events, and the
        # _handled_count of its message.
        self._callback_error: Optional[BaseException] = None
        self._callback_error_at = 0

    def _forget_parent_state(self) -> None:
        # In a forked child (_registry): a parent thread may have held a lock at the fork.
        # An owned link is the parent's: the next use acquires the child's own.
        if self._owns_link:
            self._link = None
        self._new_state()

    @classmethod
    def from_settings(cls, settings: Settings) -> 'Connection':
        """A connection for an existing ``Settings`` (copied)."""
        conn = cls.__new__(cls)
        conn._setup(settings.copy(), None)
        return conn

    @classmethod
    def from_link(cls, link: Link, settings: Optional[Settings] = None) -> 'Connection':
        """A handle on ``link`` that never releases or closes it."""
        conn = cls.__new__(cls)
        conn._setup(settings.copy() if settings is not None else Settings(), link)
        return conn

    @property
    def link(self) -> Link:
        """The link, acquired on first use (again after ``release()`` or a fork). Any thread."""
        link = self._link
        if link is not None and link.pid == os.getpid() and not link.closed:
            return link
        if not self._owns_link:
            raise ClosedError(f'{link!r} is closed or belongs to another process')
        with self._lock:
            link = self._link
            if link is None or link.pid != os.getpid() or link.closed:
                # After a fork the parent's link was abandoned by the registry: never release it.
                link = self._link = _registry.acquire_link_for(self.settings)
            return link

    def channel(self) -> 'Connection':
        """kombu compatibility: the connection is its own channel."""
        return self

    default_channel = property(channel)

    @property
    def connection(self) -> 'Connection':
        return self

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.state == 'OPEN'

    @property
    def command_timeout(self) -> Optional[float]:
        """Bound of a declaration or consume command: the ``publish_timeout`` setting."""
        return self.settings.publish_timeout

    def control(self, kind: str, timeout: Any = _DEFAULT, cache_key: Any = None,
                **kwargs: Any) -> Any:
        """Run a declaration-like command on the link (see ``Link.control``). Blocks.

        Raises:
            TimeoutError: not done within ``timeout`` (default ``command_timeout``).
            PreconditionFailed, PikaRPCError: the broker refused; ConnectionLost.
        """
        return self.link.control(kind, timeout=self.command_timeout if timeout is _DEFAULT
                                 else timeout, cache_key=cache_key, **kwargs)

    def is_declared(self, key: Any) -> bool:
        return self.link.is_declared(key)

    def forget_declared(self, key: Any) -> None:
        self.link.forget_declared(key)

    def basic_publish(self, message: Message, exchange: str = '', routing_key: str = '',
                      mandatory: bool = False, immediate: bool = False,
                      timeout: Optional[float] = None) -> None:
        """Publish a prepared ``Message`` with confirms (``Exchange.publish``). Blocks.

        Raises:
            NotSupportedByRabbitMQ: ``immediate=True``. PublishError, ConnectionLost.
        """
        if immediate:
            raise NotSupportedByRabbitMQ(IMMEDIATE_REFUSED)
        body, props = message.publish_args()
        dl = deadline(self.command_timeout if timeout is None else timeout)
        if exchange:
            _check_exchange(_View(self, dl), exchange)
        _send(self, Publication(exchange, routing_key, body, props, mandatory=mandatory,
                                timeout=remaining(dl)), dl, message, None)

    def drain_events(self, timeout: Optional[float] = None) -> None:
        """Wait until a consumer of this connection handled a message since the last call.

        For kombu-style loops; messages are pushed to callbacks whether or not it is called.
        Blocks up to ``timeout`` (None: until a message is handled); any thread.

        Raises:
            BaseException: the exception a callback of this connection's consumers raised
                since the last call (the first one, as it was raised; see the module
                docstring). Raised at once; the next call raises nothing for it.
            TimeoutError: none within ``timeout`` (also the builtin, i.e. socket.timeout).
        """
        dl = deadline(timeout)
        with self._handled:
            if not self._handled.wait_for(
                    lambda: self._callback_error is not None or self._handled_count > self._drained,
                    remaining(dl)):
                raise TimeoutError(f'no message handled within {timeout} s')
            error, self._callback_error = self._callback_error, None
            if error is None:
                self._drained = self._handled_count
                return
            # The failing message is this call's; later ones count for the next call.
            self._drained = self._callback_error_at
        try:
            raise error
        finally:
            del error          # no frame -> traceback -> frame cycle from here

    def _note_handled(self, error: Optional[BaseException] = None) -> None:
        """A consumer of this connection handled a message; ``error``: its callback raised
        (kept for ``drain_events`` unless one is kept already). Callback thread."""
        with self._handled:
            self._handled_count += 1
            if error is not None and self._callback_error is None:
                self._callback_error = error
                self._callback_error_at = self._handled_count
            self._handled.notify_all()

    def stats(self) -> Dict[str, Any]:
        return self.link.stats()

    def release(self, timeout: Optional[float] = 5.0) -> None:
        """Let go of this handle's share of the link; the last user closes it, waiting up to
        ``timeout`` for the I/O thread. Idempotent."""
        with self._lock:
            link, owned = self._link, self._owns_link
            if owned:
                self._link = None
        if owned and link is not None and link.pid == os.getpid():
            _registry.release_link(link, timeout=timeout)

    close = release

    def __enter__(self) -> 'Connection':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def as_uri(self, include_password: bool = False) -> str:
        """The broker URL (a ``;`` list for failover), its password masked by default."""
        url = self.settings.broker_url
        return url if include_password else mask_url(url)

    def __repr__(self) -> str:
        link = self._link
        return f'<Connection {self.as_uri()} {link.state if link is not None else "not started"}>'


class _View:
    """A connection whose commands share one deadline (one publish or declare call)."""

    def __init__(self, conn: Connection, dl: Optional[float]) -> None:
        self._conn, self._dl = conn, dl

    def control(self, kind: str, timeout: Any = None, cache_key: Any = None, **kwargs: Any) -> Any:
        return self._conn.link.control(kind, timeout=remaining(self._dl), cache_key=cache_key,
                                       **kwargs)

    def is_declared(self, key: Any) -> bool:
        return self._conn.is_declared(key)

    def forget_declared(self, key: Any) -> None:
        self._conn.forget_declared(key)


def _as_connection(channel: Any) -> tuple:
    """(Connection, owned) for what a Producer/Consumer was given."""
    if channel is None:
        return Connection(), True
    if isinstance(channel, Connection):
        return channel, False
    if isinstance(channel, Link):
        return Connection.from_link(channel), False
    conn = getattr(channel, 'connection', None)
    if isinstance(conn, Connection):
        return conn, False
    raise TypeError(f'expected a pika_rpc Connection, Link or None, got {channel!r}')


def _check_exchange(view: _View, name: str) -> None:
    """Check once per connection that exchange ``name`` exists (a passive declare)."""
    key = ('exchange', name)
    if view.is_declared(key):
        return
    try:
        view.control('declare_exchange', cache_key=key, exchange=name, passive=True)
    except NotFound as exc:
        raise PublishError(
            f'cannot publish to exchange {name!r}: it does not exist (404 NOT_FOUND). '
            f'Declare it first: Exchange({name!r}, type=...).declare(), or give the '
            f'Producer that Exchange with auto_declare=True') from exc


def _send(conn: Connection, pub: Publication, dl: Optional[float], message: Message,
          on_return: Optional[Callable[..., Any]]) -> None:
    """Publish, wait for the confirm, report a return. Caller's thread; blocks until ``dl``."""
    link = conn.link
    returned = publish_and_wait(link, pub, 'message')
    if returned is not None:
        LOGGER.warning('%s', returned)
        if on_return is not None:
            link.callbacks.submit(on_return, returned, pub.exchange, pub.routing_key, message)


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
                **properties: Any) -> None:
        """Publish ``body`` and wait for the broker's confirm (see the module docstring).

        ``expiration`` is in seconds; ``**properties`` are AMQP properties
        (``correlation_id``, ``reply_to``, ``message_id``, ...). Blocks up to ``timeout``
        (default: the ``publish_timeout`` setting) for declarations, publish and confirm.

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
