"""``Connection``: kombu's connection, a light handle on the process's shared link.

A ``Connection`` is taken lazily on first use from the process's shared link (one
connection, one I/O thread per broker address list; ``_registry``) and let go by
``release()``/``close()``; usable again after that (the next use acquires the link again).
There are no user channels: the link keeps its own (one for publishing with pipelined
confirms, one for declarations, one per consumed queue, one for ``basic.get``), and
``channel()``/``default_channel`` are :class:`Channel` handles that act through their
connection. ``Producer``/``Consumer`` (``messaging``) accept a ``Connection``, a ``Channel``,
a ``Link``, or ``None`` for a connection of their own built from the default settings
(``$AMQP_URL`` or localhost) on the same shared link (``_as_connection``).

kombu's connection semantics (the waiting is ``_ensure``'s):

* Lazy: making a ``Connection`` does no I/O. *Eager* calls connect, and raise when the
  broker cannot be reached: ``connect()`` and ``.connection`` raise ``ConnectionLost``,
  ``channel()`` and ``.default_channel`` its subclass ``OperationalError`` (where kombu
  raises the transport's error and ``OperationalError``). They wait ``connect_timeout`` in
  all at most (``broker_connection_timeout``, also each attempt's bound; the transport
  options' ``connect_retries_timeout`` when given) and raise sooner when the retry policy
  says so: after the first failed attempt with ``broker_connection_retry=False`` (or
  transport options ``max_retries=0``), after ``max_retries`` retries, at once for wrong
  credentials, vhost or certificate. The text names the addresses, the attempts, the last
  error and what to do. The link goes on under its own policy: a later call may find it open.
* ``connected``: this handle holds the link and the link is open (False before the first
  use, after ``release()``, while reconnecting, after the link gave up). After
  ``release()``, ``.connection`` is None until the handle is used again (as kombu).
* ``transport_options`` (``broker_transport_options``) are read as ``_kombu_opts``
  says; ``connect_timeout``, ``heartbeat``, ``ssl``, ``alternates`` are kombu's arguments.
  The failover attributes (``alt``, ``hostname``, ``port``, ``switch()``...) are
  ``_addresses``'. ``Producer()``, ``Consumer()``, ``SimpleQueue()``, ``SimpleBuffer()``,
  ``Pool()``, ``ChannelPool()`` build the classes of modules above this one, registered
  here by them (:func:`register_factory`).

Threads: every method blocks its caller until the I/O thread has done the work, and may be
called from any thread except the I/O thread. Thread-safe.

Fork: a ``Connection`` made before ``os.fork()`` works in the child: its locks are new
there (a parent thread may have held one) and its next use acquires the child's own link;
a connection made ``from_link`` keeps refusing a link of another process.

An exception from a ``Consumer``'s ``callbacks``, ``on_message`` or ``on_decode_error`` is
also raised to the consumer's connection, as kombu raises it out of ``drain_events()``: the
same exception object (any ``BaseException``), raised by that ``Connection``'s next
``drain_events()`` call. Its message is left unacknowledged (acked only if the callback
acked it before raising) and the connection and subscription stay up. kombu stops reading
at the failing message, so each ``drain_events()`` raises at most one exception and none is
lost; here callbacks go on with later messages, so the first exception is kept until a
``drain_events()`` raises it, and later ones meanwhile are only logged. Kept and not raised
(nobody calls ``drain_events()``), it holds one exception and its traceback.

Choices where kombu leaves room:

* ``drain_events(timeout)`` exists for kombu-style loops: deliveries are pushed to
  callbacks without it; it only waits until a consumer of this connection handled one, and
  raises what a callback raised (above).
* ``basic_publish`` (``Exchange.publish``) waits for the broker's confirm. Before the first
  publish to a named exchange on a connection, the exchange is checked passively, once
  (cached): a missing exchange is a clear ``PublishError`` instead of a channel the broker
  closes. ``immediate=True`` is refused locally with ``NotSupportedByRabbitMQ`` (RabbitMQ
  answers it with 540 NOT_IMPLEMENTED, closing the connection for every thread).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from . import _basic_get, _ensure, _kombu_opts, _registry
from ._addresses import Addresses
from ._exchange import IMMEDIATE_REFUSED
from ._handoff import Publication
from ._link import OPEN, Link
from ._publish import publish_and_wait
from ._timeouts import deadline, remaining
from ._urls import split_urls
from .config import Settings, mask_url
from .errors import (
    BrokerRefused,
    ClosedError,
    ConnectionLost,
    NotFound,
    NotSupportedByRabbitMQ,
    OperationalError,
    PublishError,
    TimeoutError,
)
from .message import Message

if TYPE_CHECKING:  # the factories' classes, for annotations (they import this module)
    from . import messaging, pools, simple

LOGGER = logging.getLogger(__name__)

__all__ = ['Connection', 'Channel', 'OperationalError', 'register_factory']

_DEFAULT: Any = object()

#: Classes kombu's factory methods make, registered by the modules that define them (above
#: this one): 'Producer', 'Consumer', 'SimpleQueue', 'SimpleBuffer', 'Pool', 'ChannelPool'.
_FACTORIES: Dict[str, Callable[..., Any]] = {}


def register_factory(name: str, factory: Callable[..., Any]) -> None:
    """Make ``Connection.<name>(...)`` build with ``factory`` (done at import by the module
    that defines it; ``pika_rpc`` imports them all)."""
    _FACTORIES[name] = factory


def _factory(name: str) -> Callable[..., Any]:
    try:
        return _FACTORIES[name]
    except KeyError:
        raise RuntimeError(f'Connection.{name} needs pika_rpc imported (import pika_rpc)') from None


class Connection(Addresses):
    """A handle on the process's shared link for ``url`` and Celery-named ``settings``.

    Cheap to create; the link is acquired on first use (``.link``) and shared by every
    handle with the same broker options. Thread-safe. Usable after ``release()``: the next
    use acquires the link again.

    ``url``: a broker URL, a ``;`` failover list or a list of URLs; ``alternates`` are more
    URLs tried after them. ``connect_timeout`` (``broker_connection_timeout``),
    ``heartbeat`` (``broker_heartbeat``), ``ssl`` (``broker_use_ssl``) and
    ``transport_options`` (``broker_transport_options``) are kombu's names; ``**settings``
    are Celery-named settings.

    Raises:
        TypeError, ValueError: an unknown or invalid setting (see ``config.Settings``), a
            URL whose scheme is not AMQP's ("Invalid transport scheme").
    """

    #: kombu's error classes for this transport.
    connection_errors: Tuple[type, ...] = (ConnectionLost,)
    channel_errors: Tuple[type, ...] = (BrokerRefused,)
    recoverable_connection_errors: Tuple[type, ...] = _ensure.RECOVERABLE
    recoverable_channel_errors: Tuple[type, ...] = ()

    def __init__(
        self,
        url: Any = None,
        *,
        transport_options: Optional[Dict[str, Any]] = None,
        connect_timeout: Any = _DEFAULT,
        heartbeat: Any = _DEFAULT,
        ssl: Any = _DEFAULT,
        alternates: Optional[List[str]] = None,
        **settings: Any,
    ) -> None:
        if url is not None or alternates:
            urls = split_urls(url if url is not None else settings.pop('broker_url', None) or [])
            settings['broker_url'] = urls + split_urls(alternates or [])
        for name, value in (
            ('broker_transport_options', transport_options),
            ('broker_connection_timeout', connect_timeout),
            ('broker_heartbeat', heartbeat),
            ('broker_use_ssl', ssl),
        ):
            if value is not _DEFAULT and value is not None:
                settings[name] = value
        self._setup(Settings(**settings), None)

    def _setup(self, settings: Settings, link: Optional[Link]) -> None:
        self.settings = settings
        self._link = link
        self._owns_link = link is None
        self._closed = False  # release() was called and nothing used the handle since
        self._default_channel = Channel(self)
        _kombu_opts.check(settings.broker_transport_options)
        self._new_state()
        _registry.register_live(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        # Counts messages handled by this connection's consumers; drain_events waits on it.
        self._handled = threading.Condition(threading.Lock())
        self._handled_count = 0
        self._drained = 0  # _handled_count when drain_events last returned
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
        self._closed = False
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

    # ------------------------------------------------------------------ kombu: connecting
    def connect(self) -> 'Connection':
        """Connect now (kombu's ``connect()``); returns this connection. Blocks as the module
        docstring says (at most ``connect_timeout`` by default).

        Raises:
            ConnectionLost: the broker cannot be reached or refused (the text says why and
                what to do). ClosedError: this handle's link was closed.
        """
        opts = _ensure.eager_options(self)
        _ensure.ensure_connection(self, reraise_as_library_errors=False, **opts)
        return self

    def ensure_connection(
        self,
        errback: Optional[Callable[[BaseException, float], Any]] = None,
        max_retries: Optional[int] = None,
        interval_start: float = 2,
        interval_step: float = 2,
        interval_max: float = 30,
        callback: Optional[Callable[[], Any]] = None,
        reraise_as_library_errors: bool = True,
        timeout: Optional[float] = None,
    ) -> 'Connection':
        """Wait until connected, retrying (kombu's ``ensure_connection``); returns self.

        ``max_retries`` retries after the first failed attempt (None: no limit), within
        ``timeout`` seconds in all (None: no limit); ``errback(exc, interval)`` after each
        failed attempt that will be retried; ``callback()`` about every second while an
        attempt is waited for. The attempts are the shared link's (see ``_ensure``). Blocks.

        Raises:
            OperationalError: gave up (``reraise_as_library_errors``; else ConnectionLost).
        """
        _ensure.ensure_connection(
            self,
            errback,
            max_retries,
            interval_start,
            interval_step,
            interval_max,
            callback,
            reraise_as_library_errors,
            timeout,
        )
        return self

    def ensure(self, obj: Any, fun: Callable[..., Any], **policy: Any) -> Callable[..., Any]:
        """kombu's ``ensure(obj, fun, errback=None, max_retries=None, interval_start=1,
        interval_step=1, interval_max=1, on_revive=None, retry_errors=None)``: ``fun``
        wrapped to reconnect and retry on connection errors (``_ensure.ensure``)."""
        return _ensure.ensure(self, obj, fun, **policy)

    def autoretry(
        self, fun: Callable[..., Any], channel: Any = None, **ensure_options: Any
    ) -> Callable[..., Any]:
        """kombu's ``autoretry``: ``fun(*args, channel=...)`` retried; the wrapper returns
        ``(result, channel)`` (``_ensure.autoretry``)."""
        return _ensure.autoretry(self, fun, channel, **ensure_options)

    def channel(self) -> 'Channel':
        """A new :class:`Channel` on this connection, connecting first (eager). Blocks.

        Raises:
            OperationalError: the broker cannot be reached (see the module docstring).
        """
        self._eager()
        return Channel(self)

    @property
    def default_channel(self) -> 'Channel':
        """This connection's own :class:`Channel` (always the same object), connecting
        first (eager; again after ``release()``). Blocks.

        Raises:
            OperationalError: the broker cannot be reached (see the module docstring).
        """
        self._eager()
        return self._default_channel

    def _eager(self) -> None:
        if not self.connected:
            _ensure.ensure_connection(self, **_ensure.eager_options(self))

    @property
    def connection(self) -> Optional['Connection']:
        """This connection once connected (eager, like kombu's: ``ConnectionLost`` when the
        broker cannot be reached); None after ``release()`` until the next use."""
        if self._closed:
            return None
        if not self.connected:
            self.connect()
        return self

    @property
    def connected(self) -> bool:
        """True while this handle holds the link and it is open. Never blocks."""
        link = self._link
        return (
            not self._closed and link is not None and link.pid == os.getpid() and link.state == OPEN
        )

    @property
    def connect_timeout(self) -> Optional[float]:
        """kombu's name for the ``broker_connection_timeout`` setting."""
        return self.settings.broker_connection_timeout

    @property
    def transport_options(self) -> Dict[str, Any]:
        """kombu's name for the ``broker_transport_options`` setting (see
        ``_kombu_opts``). Setting it applies at once to eager waits and to the link
        the next time it is acquired."""
        return self.settings.broker_transport_options

    @transport_options.setter
    def transport_options(self, options: Optional[Dict[str, Any]]) -> None:
        _kombu_opts.check(options)
        self.settings.broker_transport_options = options

    # ------------------------------------------------------------------ kombu: factories
    def Producer(self, channel: Any = None, *args: Any, **kwargs: Any) -> messaging.Producer:
        """A ``messaging.Producer`` on this connection (or ``channel``)."""
        return _factory('Producer')(channel or self, *args, **kwargs)

    def Consumer(
        self, queues: Any = None, channel: Any = None, *args: Any, **kwargs: Any
    ) -> messaging.Consumer:
        """A ``messaging.Consumer`` of ``queues`` on this connection (or ``channel``)."""
        return _factory('Consumer')(channel or self, queues, *args, **kwargs)

    def SimpleQueue(
        self,
        name: Any,
        no_ack: Optional[bool] = None,
        queue_opts: Optional[dict] = None,
        queue_args: Optional[dict] = None,
        exchange_opts: Optional[dict] = None,
        channel: Any = None,
        **kwargs: Any,
    ) -> simple.SimpleQueue:
        """A ``simple.SimpleQueue`` named ``name`` (or of a ``Queue``) on this connection."""
        return _factory('SimpleQueue')(
            channel or self, name, no_ack, queue_opts, queue_args, exchange_opts, **kwargs
        )

    def SimpleBuffer(
        self,
        name: Any,
        no_ack: Optional[bool] = None,
        queue_opts: Optional[dict] = None,
        queue_args: Optional[dict] = None,
        exchange_opts: Optional[dict] = None,
        channel: Any = None,
        **kwargs: Any,
    ) -> simple.SimpleBuffer:
        """A ``simple.SimpleBuffer`` (an exclusive, auto-deleted queue) on this connection."""
        return _factory('SimpleBuffer')(
            channel or self, name, no_ack, queue_opts, queue_args, exchange_opts, **kwargs
        )

    def Pool(self, limit: Optional[int] = None, **kwargs: Any) -> pools.ConnectionPool:
        """A ``pools.ConnectionPool`` of handles like this one."""
        return _factory('Pool')(self, limit=limit, **kwargs)

    def ChannelPool(self, limit: Optional[int] = None, **kwargs: Any) -> pools.ChannelPool:
        """A ``pools.ChannelPool`` of channels of this connection."""
        return _factory('ChannelPool')(self, limit=limit, **kwargs)

    @property
    def command_timeout(self) -> Optional[float]:
        """Bound of a declaration or consume command: the ``publish_timeout`` setting."""
        return self.settings.publish_timeout

    def control(
        self, kind: str, timeout: Any = _DEFAULT, cache_key: Any = None, **kwargs: Any
    ) -> Any:
        """Run a declaration-like command on the link (see ``Link.control``). Blocks.

        Raises:
            TimeoutError: not done within ``timeout`` (default ``command_timeout``).
            PreconditionFailed, PikaRPCError: the broker refused; ConnectionLost.
        """
        return self.link.control(
            kind,
            timeout=self.command_timeout if timeout is _DEFAULT else timeout,
            cache_key=cache_key,
            **kwargs,
        )

    def is_declared(self, key: Any) -> bool:
        return self.link.is_declared(key)

    def forget_declared(self, key: Any) -> None:
        self.link.forget_declared(key)

    def basic_publish(
        self,
        message: Message,
        exchange: str = '',
        routing_key: str = '',
        mandatory: bool = False,
        immediate: bool = False,
        timeout: Optional[float] = None,
    ) -> None:
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
        _send(
            self,
            Publication(
                exchange, routing_key, body, props, mandatory=mandatory, timeout=remaining(dl)
            ),
            dl,
            message,
            None,
        )

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
                remaining(dl),
            ):
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
            del error  # no frame -> traceback -> frame cycle from here

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

    def basic_get(
        self, queue: str, no_ack: bool = False, accept: Any = None, timeout: Optional[float] = None
    ) -> Optional[Message]:
        """One message from ``queue``, or None when it has none ready (one ``basic.get``;
        ``Queue.get``). Blocks up to ``timeout`` (default ``command_timeout``).

        Raises:
            NotFound: no such queue. TimeoutError, ConnectionLost.
        """
        return _basic_get.basic_get(
            self.link,
            queue,
            no_ack=no_ack,
            accept=accept,
            channel=self,
            timeout=self.command_timeout if timeout is None else timeout,
        )

    def release(self, timeout: Optional[float] = 5.0) -> None:
        """Let go of this handle's share of the link; the last user closes it, waiting up to
        ``timeout`` for the I/O thread. Idempotent. ``connected`` is False and
        ``.connection`` None after it, until the handle is used again."""
        with self._lock:
            self._closed = True
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


class Channel:
    """kombu's channel, as ``Connection.channel()``/``default_channel`` give it: a handle that
    acts through its connection (``connection``), not an AMQP channel of its own (the link
    keeps those). Accepted wherever a connection is (``Producer``, ``Consumer``, entities).
    ``close()`` (and leaving a ``with`` block) only marks it closed: the connection, its
    consumers and the broker are untouched. Thread-safe."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.is_open = True

    @property
    def link(self) -> Link:
        return self.connection.link

    def control(
        self, kind: str, timeout: Any = _DEFAULT, cache_key: Any = None, **kwargs: Any
    ) -> Any:
        return self.connection.control(kind, timeout=timeout, cache_key=cache_key, **kwargs)

    def is_declared(self, key: Any) -> bool:
        return self.connection.is_declared(key)

    def forget_declared(self, key: Any) -> None:
        self.connection.forget_declared(key)

    def basic_publish(self, message: Message, *args: Any, **kwargs: Any) -> None:
        self.connection.basic_publish(message, *args, **kwargs)

    def basic_get(self, queue: str, *args: Any, **kwargs: Any) -> Optional[Message]:
        return self.connection.basic_get(queue, *args, **kwargs)

    def close(self) -> None:
        self.is_open = False

    def __enter__(self) -> 'Channel':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'<Channel of {self.connection!r}>'


class _View:
    """A connection whose commands share one deadline (one publish or declare call)."""

    def __init__(self, conn: Connection, dl: Optional[float]) -> None:
        self._conn, self._dl = conn, dl

    def control(self, kind: str, timeout: Any = None, cache_key: Any = None, **kwargs: Any) -> Any:
        return self._conn.link.control(
            kind, timeout=remaining(self._dl), cache_key=cache_key, **kwargs
        )

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
    if isinstance(channel, Channel):
        return channel.connection, False
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
            f'Producer that Exchange with auto_declare=True'
        ) from exc


def _send(
    conn: Connection,
    pub: Publication,
    dl: Optional[float],
    message: Message,
    on_return: Optional[Callable[..., Any]],
) -> None:
    """Publish, wait for the confirm, report a return. Caller's thread; blocks until ``dl``."""
    link = conn.link
    returned = publish_and_wait(link, pub, 'message')
    if returned is not None:
        LOGGER.warning('%s', returned)
        if on_return is not None:
            link.callbacks.submit(on_return, returned, pub.exchange, pub.routing_key, message)
