"""Pipelined publisher confirms: the one module that touches a pika internal.

``BlockingChannel.confirm_delivery()`` makes every publish wait out its own round trip
(DESIGN §6.4). Instead we switch the *underlying* ``pika.channel.Channel``
(``BlockingChannel._impl``) to confirm mode and keep a ledger here:

* ``publish()`` records the next delivery tag, then publishes with ``mandatory`` as asked,
  and never waits;
* a ``basic.ack``/``basic.nack`` settles its tag, or every tag up to it when ``multiple``;
* a ``basic.return`` carries no tag: it flags the oldest unconfirmed, not yet returned
  publication with the same (routing key, correlation id). RabbitMQ sends the return before
  the ack of the same message, so when the ack comes the publication is known returned.

Both callbacks are registered on ``_impl`` so they run as the frames arrive, in wire order;
the blocking adapter would defer the return and reorder it after the ack. Everything here
runs on the I/O thread. Requires ``pika>=1.3,<2`` (``BlockingChannel._impl`` and
``Channel.confirm_delivery(ack_nack_callback, callback)``); tested in the integration suite.
"""
from __future__ import annotations

import collections
import itertools
import logging
from typing import Any, Callable, Deque, Dict, List, Optional

import pika
import pika.spec

LOGGER = logging.getLogger(__name__)

__all__ = ['Pipeline', 'SETTLED_ACK', 'SETTLED_NACK']

SETTLED_ACK = 'ack'
SETTLED_NACK = 'nack'


class Pipeline:
    """Confirm ledger of one channel. I/O thread only.

    ``on_settled(pub, outcome, returned)`` is called once per publication, with outcome
    ``'ack'`` or ``'nack'`` and ``returned`` = ``(reply_code, reply_text)`` or None. ``pub``
    must have ``routing_key`` and ``correlation_id`` attributes (used to match returns).
    """

    def __init__(self, blocking_channel: Any,
                 on_settled: Callable[[Any, str, Optional[tuple]], None]) -> None:
        self._channel = blocking_channel
        self._impl = blocking_channel._impl     # the pika internal, used only in this module
        self._on_settled = on_settled
        self._next_tag = 1
        self._unconfirmed: Dict[int, Any] = {}
        # (routing_key, correlation_id) -> tags in publish order, for returns
        self._by_key: Dict[tuple, Deque[int]] = collections.defaultdict(collections.deque)
        self._returned: Dict[int, tuple] = {}
        self._select_ok = False
        self.peak_in_flight = 0
        #: Why the channel closed (``ChannelClosedByBroker`` for a broker's Channel.Close).
        self.closed_reason: Optional[BaseException] = None

    def start(self) -> Callable[[], bool]:
        """Send Confirm.Select; returns a predicate telling when SelectOk arrived."""
        self._impl.add_on_return_callback(self._on_return)
        self._impl.add_on_close_callback(self._on_close)
        self._impl.confirm_delivery(ack_nack_callback=self._on_ack_nack,
                                    callback=self._on_select_ok)
        return lambda: self._select_ok

    def _on_select_ok(self, _frame: Any) -> None:
        self._select_ok = True

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed_reason = reason

    @property
    def in_flight(self) -> int:
        return len(self._unconfirmed)

    def publish(self, pub: Any, exchange: str, routing_key: str, body: bytes,
                properties: pika.spec.BasicProperties, mandatory: bool) -> int:
        """Publish without waiting; the ledger settles ``pub`` later. Returns its tag.

        Raises whatever pika raises for a closed channel or connection (the caller, the
        I/O thread, treats that as a lost connection), or for a message it cannot encode
        (then nothing was sent and ``pub`` is not in the ledger).
        """
        # Publish first: if pika cannot encode the message (a bad property) it raises before
        # anything is sent, and the broker's tag count must not move ahead of ours. No ack can
        # be processed in between: frames are read only by the ioloop, later.
        self._impl.basic_publish(exchange=exchange, routing_key=routing_key, body=body,
                                 properties=properties, mandatory=mandatory)
        tag = self._next_tag
        self._next_tag += 1
        self._unconfirmed[tag] = pub
        self._by_key[(routing_key, properties.correlation_id)].append(tag)
        if len(self._unconfirmed) > self.peak_in_flight:
            self.peak_in_flight = len(self._unconfirmed)
        return tag

    def _on_ack_nack(self, frame: Any) -> None:
        method = frame.method
        outcome = SETTLED_NACK if isinstance(method, pika.spec.Basic.Nack) else SETTLED_ACK
        tag = method.delivery_tag
        if method.multiple:
            # The dict keeps publish order, which is tag order: stop at the first later tag
            # (a scan of everything in flight would make heavy pipelining quadratic).
            tags = list(itertools.takewhile(lambda t: t <= tag, self._unconfirmed))
        else:
            tags = [tag] if tag in self._unconfirmed else []
        for t in tags:
            self._settle(t, outcome)

    def _settle(self, tag: int, outcome: str) -> None:
        pub = self._unconfirmed.pop(tag)
        key = (pub.routing_key, pub.correlation_id)
        tags = self._by_key.get(key)
        if tags is not None:
            try:
                tags.remove(tag)
            except ValueError:
                pass
            if not tags:
                del self._by_key[key]
        returned = self._returned.pop(tag, None)
        try:
            self._on_settled(pub, outcome, returned)
        except Exception:  # the ledger must survive a faulty settle handler
            LOGGER.exception('error while settling publication %r', tag)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        key = (method.routing_key, properties.correlation_id)
        for tag in self._by_key.get(key, ()):
            if tag not in self._returned:
                self._returned[tag] = (method.reply_code, method.reply_text)
                return
        LOGGER.debug('basic.return matched no unconfirmed publication: %r', key)

    def take_unsettled(self) -> List[Any]:
        """Remove and return every unsettled publication, oldest first (after a loss)."""
        pubs = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        self._by_key.clear()
        self._returned.clear()
        return pubs
