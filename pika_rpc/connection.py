"""``Connection``: kombu's connection, a light handle on the process's shared link.

A ``Connection`` is taken lazily on first use from the process's shared link (one
connection, one I/O thread per broker address list; ``_registry``) and let go by
``release()``/``close()``; usable again after that (the next use acquires the link again).
``channel()`` returns the connection itself: there are no user channels, the link keeps
its own (one for publishing with pipelined confirms, one for declarations, one per
consumed queue). ``Producer``/``Consumer`` (``messaging``) accept a ``Connection``, a
``Link``, or ``None`` for a connection of their own built from the default settings
(``$AMQP_URL`` or localhost) on the same shared link (:func:`_as_connection`).

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
from typing import Any, Callable, Dict, Optional

from . import _registry
from ._exchange import IMMEDIATE_REFUSED
from ._handoff import Publication
from ._link import Link
from ._publish import publish_and_wait
from ._timeouts import deadline, remaining
from .config import Settings, mask_url
from .errors import ClosedError, NotFound, NotSupportedByRabbitMQ, PublishError, TimeoutError
from .message import Message

LOGGER = logging.getLogger(__name__)

__all__ = ['Connection']

_DEFAULT: Any = object()


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
