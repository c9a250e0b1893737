"""``basic.get``: one message taken from a queue on demand, and its acknowledgement.

kombu's ``Queue.get`` and ``SimpleQueue.get_nowait`` ask the broker for one message. Each
link keeps one channel for them (a ``BlockingChannel`` opened by the first get on each
connection, on the I/O thread, through ``Link.call``). A message got there is acked,
rejected or requeued on that same channel, as AMQP requires; once that channel has closed (a
reconnect, or a refusal on it), its messages cannot be settled: the ack is refused
(``Message`` logs it) and the broker delivers the message again.

Nothing polls: one call is one ``basic.get`` round trip. ``Consumer`` and ``SimpleQueue.get``
consume (the broker pushes) instead.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Optional

from ._consumers import properties_to_dict
from ._link import Link
from .message import Message

__all__ = ['basic_get']


class _Getter:
    """The get channel of one link. I/O thread only."""

    def __init__(self) -> None:
        self.channel: Any = None
        self.connection: Any = None  # the BlockingConnection the channel belongs to

    def get(self, link: Link, queue: str, no_ack: bool) -> Optional[tuple]:
        if (
            self.channel is None
            or not self.channel.is_open
            or self.connection is not link.connection
        ):
            self.connection = link.connection
            self.channel = self.connection.channel()
        method, properties, body = self.channel.basic_get(queue, auto_ack=no_ack)
        if method is None:
            return None
        return self.channel, method, properties, body

    def settle(
        self, link: Link, channel: Any, tag: int, multiple: bool, reject: bool, requeue: bool
    ) -> bool:
        if channel is not self.channel or not channel.is_open or link.connection is None:
            return False
        if reject:
            channel.basic_reject(tag, requeue=requeue)
        else:
            channel.basic_ack(tag, multiple=multiple)
        return True


_getters: 'weakref.WeakKeyDictionary[Link, _Getter]' = weakref.WeakKeyDictionary()
_getters_lock = threading.Lock()


def _getter_of(link: Link) -> _Getter:
    with _getters_lock:
        getter = _getters.get(link)
        if getter is None:
            getter = _getters[link] = _Getter()
        return getter


def basic_get(
    link: Link, queue: str, *, no_ack: bool, accept: Any, channel: Any, timeout: Optional[float]
) -> Optional[Message]:
    """One message from ``queue``, or None when it has none ready. Blocks up to ``timeout``.

    ``channel`` becomes the message's ``channel``; ``accept`` its accepted content types.
    With ``no_ack`` the broker counts the message acknowledged when it is sent (and
    ``Message.ack()`` does nothing).

    Raises:
        NotFound: no such queue. TimeoutError, ConnectionLost: as ``Link.call``.
    """
    getter = _getter_of(link)
    got = link.call(
        getter.get, link, queue, no_ack, timeout=timeout, what=f'basic.get from {queue!r}'
    )
    if got is None:
        return None
    chan, method, properties, body = got

    def acker(tag: int, multiple: bool, reject: bool, requeue: bool) -> bool:
        # A plain ack needs no answer (a lost channel means redelivery anyway); a reject
        # waits, so the caller learns whether it took effect.
        done = link.call(
            getter.settle,
            link,
            chan,
            tag,
            multiple,
            reject,
            requeue,
            timeout=timeout,
            what='ack of a basic.get message',
            wait=reject,
        )
        return True if not reject else bool(done)

    info = {
        'delivery_tag': method.delivery_tag,
        'redelivered': method.redelivered,
        'exchange': method.exchange,
        'routing_key': method.routing_key,
        'message_count': method.message_count,
    }
    return Message._received(
        body or b'',
        properties_to_dict(properties),
        info,
        channel=channel,
        acker=acker,
        no_ack=no_ack,
        accept=accept,
    )
