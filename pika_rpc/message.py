"""``Message``: a message to publish or one received, its AMQP properties and compression.

Pure data and checks: no I/O, no pika, no link. A received ``Message`` is acked through the
``acker`` its ``Consumer`` gives it; publishing goes through ``Producer.publish``,
``Exchange.publish`` or ``Connection.basic_publish``, which call :meth:`Message.publish_args`
or ``check_properties()`` on the caller's thread.

Choices where kombu leaves room:

* Properties are checked on the caller's thread before a publish reaches the I/O thread
  (``check_properties()``): a value pika cannot encode would otherwise surface there, far
  from its cause. An unknown property name is a ``TypeError``; ``expiration`` is a str of
  milliseconds here (``Producer.publish`` takes seconds).
* Received messages are decompressed when their ``compression`` header names zlib
  (``application/x-gzip``), bz2 (``application/x-bz2``) or lzma (``application/x-lzma``),
  the codecs of the standard library, with kombu's header values. A body that does not
  decompress is kept as received and its ``DecodeError`` raised by ``decode()``.
* ``decode()`` returns an ``application/data`` body as bytes and a ``text/plain`` one as str
  (what ``Producer.publish`` sends for unserialized bytes/str, as kombu) when the consumer
  accepts that type; every other type goes through ``serialization.loads``.
* ``ack``/``reject``/``requeue`` block until the I/O thread did it (any thread), are done
  at most once (``MessageStateError`` after), and only by the process that received the
  message: a forked child's channel is not the parent's.
"""

from __future__ import annotations

import bz2
import datetime
import decimal
import logging
import lzma
import os
import sys
import threading
import zlib
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from . import serialization
from .errors import DecodeError, MessageStateError

LOGGER = logging.getLogger(__name__)

__all__ = [
    'Message',
    'MessageStateError',
    'check_properties',
    'compress',
    'decompress',
    'maybe_delivery_mode',
    'PROPERTY_NAMES',
    'TRANSIENT_DELIVERY_MODE',
    'PERSISTENT_DELIVERY_MODE',
    'DELIVERY_MODES',
]

TRANSIENT_DELIVERY_MODE = 1
PERSISTENT_DELIVERY_MODE = 2
DELIVERY_MODES = {'transient': TRANSIENT_DELIVERY_MODE, 'persistent': PERSISTENT_DELIVERY_MODE}


def maybe_delivery_mode(value: Any, default: int = PERSISTENT_DELIVERY_MODE) -> int:
    """1/2 or 'transient'/'persistent' as an int; a falsy value gives ``default``."""
    if not value:
        return default
    mode = DELIVERY_MODES.get(value, value) if isinstance(value, str) else value
    if mode not in (1, 2) or isinstance(mode, bool):
        raise ValueError(f'delivery_mode must be 1, 2, "transient" or "persistent", got {value!r}')
    return mode


# ------------------------------------------------------------------ compression

_COMPRESSORS: Dict[str, Tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {}
for _names, _ctype, _enc, _dec in (
    (('zlib', 'gzip'), 'application/x-gzip', zlib.compress, zlib.decompress),
    (('bzip2', 'bz2'), 'application/x-bz2', bz2.compress, bz2.decompress),
    (('lzma', 'xz'), 'application/x-lzma', lzma.compress, lzma.decompress),
):
    for _n in _names + (_ctype,):
        _COMPRESSORS[_n] = (_ctype, _enc, _dec)


def compress(body: bytes, method: str) -> Tuple[bytes, str]:
    """Compress ``body``; return it with the ``compression`` header value to send.

    Raises:
        ValueError: an unknown method (known: zlib/gzip, bzip2/bz2, lzma/xz).
    """
    try:
        ctype, encode, _ = _COMPRESSORS[method]
    except KeyError:
        raise ValueError(
            f'unknown compression {method!r}; use one of '
            f'{sorted(n for n in _COMPRESSORS if "/" not in n)}'
        ) from None
    return encode(body), ctype


def decompress(body: bytes, header: str) -> bytes:
    """Undo :func:`compress` given the message's ``compression`` header value."""
    try:
        _, _, decode = _COMPRESSORS[header]
    except KeyError:
        raise DecodeError(f'unknown compression {header!r}') from None
    try:
        return decode(body)
    except Exception as exc:
        raise DecodeError(f'cannot decompress a {header} body: {exc}') from exc


# ------------------------------------------------------------------ properties

_SHORTSTR = (
    'content_type',
    'content_encoding',
    'correlation_id',
    'reply_to',
    'expiration',
    'message_id',
    'type',
    'user_id',
    'app_id',
    'cluster_id',
)
PROPERTY_NAMES: FrozenSet[str] = frozenset(
    _SHORTSTR + ('headers', 'delivery_mode', 'priority', 'timestamp')
)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _check_header(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (str, bytes, bool, decimal.Decimal, datetime.datetime)):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f'header {path} = {value} does not fit a signed 64-bit integer')
        return value
    if isinstance(value, dict):
        return {_key(k, path): _check_header(v, f'{path}.{k}') for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_check_header(v, f'{path}[{i}]') for i, v in enumerate(value)]
    raise TypeError(
        f'header {path} is a {type(value).__name__}, which AMQP headers cannot carry '
        f'here: use str, int, bool, bytes, Decimal, datetime, None, list or dict'
    )


def _key(key: Any, path: str) -> str:
    if not isinstance(key, str) or len(key.encode('utf-8')) > 255:
        raise TypeError(f'header keys must be str of at most 255 bytes; got {key!r} in {path}')
    return key


def check_properties(props: Dict[str, Any]) -> Dict[str, Any]:
    """Validate AMQP properties on the caller's thread; return a cleaned copy.

    Done before a publish reaches the I/O thread, where a value pika cannot encode would
    otherwise surface far from its cause. Tuples in headers become lists.

    Raises:
        TypeError: an unknown property name or a value of the wrong type.
        ValueError: a value out of range (priority 0-255, delivery_mode 1/2, long strings).
    """
    unknown = sorted(set(props) - PROPERTY_NAMES)
    if unknown:
        raise TypeError(f'unknown message properties {unknown}; known: {sorted(PROPERTY_NAMES)}')
    out = {k: v for k, v in props.items() if v is not None}
    for name in _SHORTSTR:
        value = out.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f'property {name} must be a str, got {value!r}')
            if len(value.encode('utf-8')) > 255:
                raise ValueError(f'property {name} is longer than 255 bytes')
    if 'expiration' in out and not out['expiration'].isdigit():
        raise ValueError(
            f'property expiration must be a str of milliseconds, got '
            f'{out["expiration"]!r} (Producer.publish takes expiration in seconds)'
        )
    if 'delivery_mode' in out:
        out['delivery_mode'] = maybe_delivery_mode(out['delivery_mode'])
    priority = out.get('priority')
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise ValueError(f'priority must be an int from 0 to 255, got {priority!r}')
    stamp = out.get('timestamp')
    if isinstance(stamp, datetime.datetime):
        out['timestamp'] = int(stamp.timestamp())
    elif stamp is not None and (
        isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not 0 <= stamp < (1 << 64)
    ):
        raise TypeError(f'timestamp must be seconds since the epoch or a datetime, got {stamp!r}')
    elif stamp is not None:
        out['timestamp'] = int(stamp)
    if 'headers' in out:
        if not isinstance(out['headers'], dict):
            raise TypeError(f'headers must be a dict, got {out["headers"]!r}')
        out['headers'] = _check_header(out['headers'], 'headers')
    return out


# ------------------------------------------------------------------ Message

_ACK_STATES = frozenset({'ACK', 'REJECTED', 'REQUEUED'})
# Bodies sent unserialized (Producer.publish of bytes/str without a serializer), returned
# as they are by decode() when the consumer accepts the type.
_RAW_TYPES = frozenset({'application/data', 'text/plain'})
_UNSET = object()


class Message:
    """A message to publish, or one received by a ``Consumer``.

    Received messages have ``delivery_tag``, ``delivery_info`` (``consumer_tag``,
    ``delivery_tag``, ``redelivered``, ``exchange``, ``routing_key``) and are acked through
    the consumer's link (``ack``/``reject``/``requeue`` block until the I/O thread did it;
    any thread). ``properties`` holds every AMQP property that was set.
    """

    MessageStateError = MessageStateError

    def __init__(
        self,
        body: Any,
        delivery_mode: Any = None,
        properties: Optional[dict] = None,
        *,
        channel: Any = None,
        content_type: Optional[str] = None,
        content_encoding: Optional[str] = None,
        headers: Optional[dict] = None,
        priority: Optional[int] = None,
        delivery_tag: Optional[int] = None,
        delivery_info: Optional[dict] = None,
        accept: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - PROPERTY_NAMES)
        if unknown:
            raise TypeError(f'Message() got unknown argument(s) {unknown}')
        props = dict(properties or {}, **kwargs)
        self.content_type = content_type or props.get('content_type')
        self.content_encoding = content_encoding or props.get('content_encoding')
        self.headers = dict(headers if headers is not None else props.get('headers') or {})
        self.delivery_mode = (
            delivery_mode if delivery_mode is not None else props.get('delivery_mode')
        )
        for name, value in (
            ('content_type', self.content_type),
            ('content_encoding', self.content_encoding),
            ('headers', self.headers),
            ('delivery_mode', self.delivery_mode),
            ('priority', priority),
        ):
            if value is not None:
                props[name] = value
        self.properties = props
        self.body = body
        self.channel = channel
        self.delivery_tag = delivery_tag
        self.delivery_info = dict(delivery_info or {})
        self.accept = accept
        self.errors: List[Any] = []
        self._state = 'RECEIVED'
        self._decoded: Any = _UNSET
        self._acker: Optional[Callable[[int, bool, bool, bool], bool]] = None
        self._no_ack = False
        self._ack_lock = threading.Lock()
        self._pid = 0  # of the process that received it

    @classmethod
    def _received(
        cls,
        body: bytes,
        properties: dict,
        delivery_info: dict,
        *,
        channel: Any,
        acker: Callable[[int, bool, bool, bool], bool],
        no_ack: bool,
        accept: Any,
    ) -> 'Message':
        """A message built by a Consumer (callback thread); decompresses the body."""
        msg = cls(
            body,
            properties=properties,
            channel=channel,
            delivery_tag=delivery_info.get('delivery_tag'),
            delivery_info=delivery_info,
            accept=accept,
        )
        msg._acker, msg._no_ack = acker, no_ack
        msg._pid = os.getpid()
        compression = msg.headers.get('compression')
        if compression:
            try:
                msg.body = decompress(body, compression)
            except Exception:
                msg.errors.append(sys.exc_info())
        return msg

    def __repr__(self) -> str:
        size = len(self.body) if isinstance(self.body, (bytes, bytearray, str)) else None
        return (
            f'<Message {self._state} tag={self.delivery_tag} type={self.content_type!r} '
            f'body_length={size} correlation_id={self.properties.get("correlation_id")!r} '
            f'routing_key={self.delivery_info.get("routing_key")!r}>'
        )

    # -------------------------------------------------------------- decoding
    def decode(self) -> Any:
        """Decode the body (once; cached) with the consumer's accepted content types.

        Raises:
            ContentDisallowed: its content type is not accepted.
            DecodeError: the body cannot be decoded (or decompressed).
        """
        if self.errors:
            raise self.errors[0][1]
        if self._decoded is _UNSET:
            if (
                self.content_type in _RAW_TYPES
                and self.content_type in serialization.prepare_accept_content(self.accept)
            ):
                self._decoded = self._raw()
            else:
                self._decoded = serialization.loads(
                    self.body, self.content_type, self.content_encoding, accept=self.accept
                )
        return self._decoded

    def _raw(self) -> Any:
        # kombu's own types for unserialized bodies: bytes, and text in its encoding.
        if self.content_type == 'application/data' or self.content_encoding in (None, 'binary'):
            return bytes(self.body)
        try:
            return bytes(self.body).decode(self.content_encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise DecodeError(
                f'cannot decode a {self.content_type} body as {self.content_encoding}: {exc}'
            ) from exc

    @property
    def payload(self) -> Any:
        """The decoded body (see :meth:`decode`)."""
        return self.decode()

    def _reraise_error(
        self, callback: Optional[Callable[['Message', BaseException], Any]] = None
    ) -> None:
        try:
            raise self.errors[0][1]
        except Exception as exc:
            if callback is None:
                raise
            callback(self, exc)

    # -------------------------------------------------------------- acknowledging
    @property
    def acknowledged(self) -> bool:
        """True once acked, rejected or requeued."""
        return self._state in _ACK_STATES

    def _settle(self, state: str, multiple: bool, reject: bool, requeue: bool) -> None:
        if self._acker is None or self.delivery_tag is None:
            raise MessageStateError('This message does not have a receiving channel')
        if self._pid != os.getpid():
            # A forked child: the channel, and any lock a parent thread held, are the parent's.
            raise MessageStateError(
                'This message was received by the parent process: only '
                "it can acknowledge it (its channel is not this process's)"
            )
        if self._no_ack:  # the broker already counted it acknowledged
            return
        with self._ack_lock:
            if self.acknowledged:
                raise MessageStateError(f'Message already acknowledged with state: {self._state}')
            previous, self._state = self._state, state
        try:
            done = self._acker(self.delivery_tag, multiple, reject, requeue)
        except BaseException:
            self._state = previous  # not settled: the caller may try again
            raise
        if not done:
            LOGGER.warning(
                'could not %s message %s: its consumer channel is gone; the broker '
                'will deliver it again',
                state.lower(),
                self.delivery_tag,
            )

    def ack(self, multiple: bool = False) -> None:
        """Acknowledge the message (and, ``multiple``, every earlier one). Blocks.

        Raises:
            MessageStateError: already acknowledged, not a received message, or received by
                another process (the parent of a forked child).
        """
        self._settle('ACK', multiple, False, False)

    def reject(self, requeue: bool = False) -> None:
        """Reject the message: dropped (dead-lettered), or requeued (``requeue=True``). Blocks."""
        self._settle('REQUEUED' if requeue else 'REJECTED', False, True, requeue)

    def requeue(self) -> None:
        """Give the message back to the queue for another delivery. Blocks."""
        self._settle('REQUEUED', False, True, True)

    def ack_log_error(self, logger: logging.Logger, errors: Any, multiple: bool = False) -> None:
        try:
            self.ack(multiple=multiple)
        except errors as exc:
            logger.critical("Couldn't ack %r, reason:%r", self.delivery_tag, exc, exc_info=True)

    def reject_log_error(self, logger: logging.Logger, errors: Any, requeue: bool = False) -> None:
        try:
            self.reject(requeue=requeue)
        except errors as exc:
            logger.critical("Couldn't reject %r, reason: %r", self.delivery_tag, exc, exc_info=True)

    # -------------------------------------------------------------- publishing
    def publish_args(self) -> Tuple[bytes, Dict[str, Any]]:
        """The body as bytes and the checked AMQP properties, ready to publish.

        Raises:
            TypeError: a body that is not bytes or str (serialize it first, or use
                ``Producer.publish``), or bad properties (``check_properties()``).
        """
        body, props = self.body, dict(self.properties)
        if isinstance(body, str):
            props.setdefault('content_encoding', 'utf-8')
            body = body.encode(props['content_encoding'])
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise TypeError(
                f'a Message body must be bytes or str, got {type(body).__name__}: '
                f'serialize it first or use Producer.publish'
            )
        if 'delivery_mode' in props:
            props['delivery_mode'] = maybe_delivery_mode(props['delivery_mode'])
        return body, check_properties(props)
