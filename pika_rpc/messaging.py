"""``Producer`` and ``Consumer``: kombu's calls turned into link commands (``Consumer`` is
written in ``consumer``).

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
* RabbitMQ answers ``immediate=True`` with 540 NOT_IMPLEMENTED, closing the connection for
  every thread: it is refused locally with ``NotSupportedByRabbitMQ``.
* ``Consumer`` (in ``consumer``, re-exported here) lists its own choices.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

from . import serialization
from ._exchange import IMMEDIATE_REFUSED
from ._handoff import Publication
from ._retry import retry_over_time
from ._timeouts import deadline
from .config import merge_retry_policy, parse_url

# Connection lives in .connection (as kombu splits it); re-exported for code that imported
# it from here.
from .connection import Connection, _as_connection, _check_exchange, _send, _View, register_factory

# Consumer lives in .consumer; re-exported for code that imported it from here.
from .consumer import Consumer
from .entities import Exchange
from .entities import maybe_declare as _maybe_declare
from .errors import ClosedError, ConnectionLost, NotSupportedByRabbitMQ, PublishError, TimeoutError
from .message import Message, check_properties, compress, maybe_delivery_mode

LOGGER = logging.getLogger(__name__)

__all__ = ['Connection', 'Producer', 'Consumer']


def _retrying(fn: Callable[[], Any], policy: Optional[dict], dl: Optional[float]) -> Any:
    if policy is None:
        return fn()
    return retry_over_time(
        fn,
        (ConnectionLost, TimeoutError),
        None,
        dl,
        max_retries=policy['max_retries'],
        interval_start=policy['interval_start'],
        interval_step=policy['interval_step'],
        interval_max=policy['interval_max'],
        errback=policy.get('errback'),
        is_fatal=lambda exc: isinstance(exc, ClosedError),
    )


# ------------------------------------------------------------------ Producer


class Producer:
    """Message producer (kombu's ``Producer``): serializes, declares, publishes with confirms.

    ``channel``: a ``Connection``, a ``Link``, or None (a connection of its own, released by
    ``close()``). A str ``exchange`` names an existing exchange (checked, never declared).
    """

    exchange: Exchange = None  # type: ignore[assignment]  # kombu's class default; set per instance
    routing_key = ''
    serializer: Optional[str] = None
    compression: Optional[str] = None
    auto_declare = True
    on_return: Optional[Callable[..., Any]] = None

    def __init__(
        self,
        channel: Any,
        exchange: Any = None,
        routing_key: Optional[str] = None,
        serializer: Optional[str] = None,
        auto_declare: Optional[bool] = None,
        compression: Optional[str] = None,
        on_return: Optional[Callable[..., Any]] = None,
    ) -> None:
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

    def publish(
        self,
        body: Any,
        routing_key: Optional[str] = None,
        delivery_mode: Any = None,
        mandatory: bool = False,
        immediate: bool = False,
        priority: int = 0,
        content_type: Optional[str] = None,
        content_encoding: Optional[str] = None,
        serializer: Optional[str] = None,
        headers: Optional[dict] = None,
        compression: Optional[str] = None,
        exchange: Any = None,
        retry: bool = False,
        retry_policy: Optional[dict] = None,
        declare: Optional[Sequence[Any]] = None,
        expiration: Optional[float] = None,
        timeout: Optional[float] = None,
        confirm_timeout: Optional[float] = None,
        **properties: Any,
    ) -> None:
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
            body,
            routing_key,
            delivery_mode,
            mandatory,
            priority,
            content_type,
            content_encoding,
            serializer,
            headers,
            compression,
            exchange,
            policy,
            expiration,
            timeout,
            **properties,
        )
        targets = list(declare or [])
        if self.auto_declare and self.exchange._can_declare() and self.exchange not in targets:
            targets.append(self.exchange)
        view = _View(conn, dl)
        try:
            for entity in targets:
                _retrying(lambda entity=entity: _maybe_declare(entity, view), policy, dl)  # type: ignore[misc]
            if pub.exchange:
                _retrying(lambda: _check_exchange(view, pub.exchange), policy, dl)
        except TimeoutError as exc:
            raise PublishError(
                f'publish to {pub.exchange!r}: declarations not done within {timeout} s ({exc})'
            ) from exc
        _send(conn, pub, dl, message, self._call_on_return if self.on_return else None)

    def prepare_publication(
        self,
        body: Any,
        routing_key: Optional[str] = None,
        delivery_mode: Any = None,
        mandatory: bool = False,
        priority: int = 0,
        content_type: Optional[str] = None,
        content_encoding: Optional[str] = None,
        serializer: Optional[str] = None,
        headers: Optional[dict] = None,
        compression: Optional[str] = None,
        exchange: Any = None,
        retry_policy: Optional[dict] = None,
        expiration: Optional[float] = None,
        timeout: Optional[float] = None,
        **properties: Any,
    ) -> tuple:
        """Serialize and check everything for one publish, without I/O.

        Returns ``(Publication, Message)``; hand the first to ``link.publish`` and wait on
        it. ``retry_policy`` (a merged policy or None) sets its re-publish budget.
        """
        routing_key = self.routing_key if routing_key is None else routing_key
        compression = self.compression if compression is None else compression
        target = self.exchange if exchange is None else exchange
        exchange_name = target.name if isinstance(target, Exchange) else (target or '')
        mode = (
            delivery_mode
            or (target.delivery_mode if isinstance(target, Exchange) else None)
            or self.exchange.delivery_mode
        )
        headers = dict(headers or {})
        body, content_type, content_encoding = self._encode(
            body, serializer, content_type, content_encoding
        )
        if compression:
            body, headers['compression'] = compress(body, compression)
        props = dict(
            properties,
            delivery_mode=maybe_delivery_mode(mode),
            priority=priority,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
        )
        if expiration is not None:
            if isinstance(expiration, bool) or not expiration >= 0:
                raise ValueError(f'expiration must be seconds >= 0, got {expiration!r}')
            props['expiration'] = str(int(expiration * 1000))
        props = check_properties(props)
        self._check_user_id(props.get('user_id'))
        message = Message(body, properties=props, channel=self._connection)
        pub = Publication(
            exchange_name,
            routing_key,
            body,
            props,
            mandatory=mandatory,
            policy=retry_policy,
            timeout=timeout,
        )
        return pub, message

    def _encode(
        self,
        body: Any,
        serializer: Optional[str],
        content_type: Optional[str],
        content_encoding: Optional[str],
    ) -> tuple:
        if content_type:
            if isinstance(body, str):
                content_encoding = content_encoding or 'utf-8'
                return body.encode(content_encoding), content_type, content_encoding
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f'with content_type given the body must be bytes or str, got '
                    f'{type(body).__name__}'
                )
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
            raise ValueError(
                f"user_id {user_id!r} is not the connection's user: RabbitMQ would "
                f'refuse the message (406) and close the channel'
            )

    def _call_on_return(
        self, exc: BaseException, exchange: str, routing_key: str, message: Message
    ) -> None:  # callback thread
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


register_factory('Producer', Producer)
