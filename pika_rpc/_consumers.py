"""Consumers on the link: their specs, their channels, and what the I/O thread does for them.

``ConsumerSpec`` is what the link needs to subscribe a consumer again after every
(re)connect; ``Delivery`` a received message (plain data, any thread). ``Consumers`` runs on
the I/O thread only: it subscribes (declarations first, then one plain
``pika.channel.Channel`` per consumer, so ``prefetch_count`` is per consumer and one
consumer's failure cannot stop another's deliveries), cancels, acks and rejects, sets QoS,
recovers, hears a broker's Basic.Cancel, batches the acks of batch-acking consumers (the
reply queue: one ``multiple=True`` ack per ``ACK_EVERY`` deliveries and at every loop turn)
and re-subscribes consumers whose channel closed or whose connection was replaced.

Deliveries are parsed as they are read (``_deliveries.DeliveryReader``) and go to the
consumer's ``on_delivery`` at once, which must only hand off. User code never runs here
unguarded: an ``on_delivery`` that raises is logged and its message settled (acked with the
batch, or rejected without requeue), so a poison message cannot loop.

A subscription is live (``spec.channel``, ``spec.active``) *before* its Basic.Consume:
messages already in the queue follow the ConsumeOk at once and are handed on, and acked by
their owner, while the I/O thread still waits for that ConsumeOk.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import pika.exceptions

from . import _pika
from .errors import BrokerRefused, queue_node_down

LOGGER = logging.getLogger(__name__)

__all__ = [
    'ConsumerSpec',
    'Delivery',
    'properties_to_dict',
    'Consumers',
    'ConsumerCommands',
    'ACK_EVERY',
]

# Batch-acking consumers (the reply queue) ack every ACK_EVERY deliveries, and at every loop
# turn (at least each POLL_INTERVAL): an ack is not written between a delivery and the
# waiter it wakes, and a burst costs one ack frame per ACK_EVERY messages.
ACK_EVERY = 256
# How long the I/O thread waits for a reply to one of its own consumer requests.
REPLY_WAIT = 30.0


class ConsumerSpec:
    """What the link needs to (re)subscribe a consumer after every (re)connect.

    ``on_delivery(delivery)`` runs on the I/O thread and must only hand off. With
    ``batch_ack`` the link acks every delivery once ``on_delivery`` returned (batched per
    loop turn, ``multiple=True``); otherwise the owner acks through ``Link.ack``.
    ``declarations`` are ``(kind, kwargs)`` pairs replayed before ``basic_consume``;
    ``check_exists`` makes the link check the queue passively first at a *re*-subscribe and
    call ``on_missing()`` when it was gone. ``on_cancel()`` hears a broker-side cancel
    (queue deleted); the link then re-declares and re-subscribes, without calling
    ``on_missing()`` again for that same loss (the owner was told once, by ``on_cancel``).
    ``on_refused(error)`` hears a (re)subscribe the broker refused, with its typed error
    (a ``BrokerRefused``, e.g. ``QueueNodeDown``), on the I/O thread; it returns True when
    the owner took it over (e.g. moved to another queue): the link then stops this spec and
    does not try it again.
    """

    def __init__(
        self,
        queue: str,
        on_delivery: Callable[['Delivery'], None],
        *,
        batch_ack: bool = False,
        no_ack: bool = False,
        prefetch_count: Optional[int] = None,
        declarations: tuple = (),
        check_exists: bool = False,
        on_missing: Optional[Callable[[], None]] = None,
        on_cancel: Optional[Callable[[], None]] = None,
        consumer_tag: Optional[str] = None,
        exclusive: bool = False,
        arguments: Optional[dict] = None,
        on_refused: Optional[Callable[[BrokerRefused], bool]] = None,
    ) -> None:
        self.queue, self.on_delivery = queue, on_delivery
        self.batch_ack, self.no_ack, self.prefetch_count = batch_ack, no_ack, prefetch_count
        self.declarations, self.check_exists = tuple(declarations), check_exists
        self.on_missing, self.on_cancel, self.on_refused = on_missing, on_cancel, on_refused
        self.consumer_tag, self.exclusive, self.arguments = consumer_tag, exclusive, arguments
        self.channel: Any = None  # I/O thread only
        self.gen = 0  # bumped at every subscribe: acks of an older gen are void
        self.subscribed_once = False
        self.cancelled_by_broker = False  # I/O thread: on_cancel told the owner already
        self.active = False


class Delivery:
    """A message received by a consumer. Plain data, safe to read on any thread."""

    __slots__ = (
        'spec',
        'gen',
        'delivery_tag',
        'redelivered',
        'exchange',
        'routing_key',
        'properties',
        'body',
    )

    def __init__(
        self, spec: ConsumerSpec, gen: int, method: Any, properties: Any, body: bytes
    ) -> None:
        self.spec, self.gen = spec, gen
        self.delivery_tag, self.redelivered = method.delivery_tag, method.redelivered
        self.exchange, self.routing_key = method.exchange, method.routing_key
        self.properties, self.body = properties, body

    def property_dict(self) -> dict:
        return properties_to_dict(self.properties)


_PROPERTY_NAMES = (
    'content_type',
    'content_encoding',
    'headers',
    'delivery_mode',
    'priority',
    'correlation_id',
    'reply_to',
    'expiration',
    'message_id',
    'timestamp',
    'type',
    'user_id',
    'app_id',
    'cluster_id',
)


def properties_to_dict(props: Any) -> dict:
    """The set AMQP properties of a pika ``BasicProperties`` as a plain dict."""
    return {
        name: getattr(props, name)
        for name in _PROPERTY_NAMES
        if getattr(props, name, None) is not None
    }


class ConsumerChannel:
    """A consumer's ``pika.channel.Channel`` and why it closed. I/O thread only.

    It is also the channel's *cookie*, the object ``BlockingConnection.close()`` expects to
    find on every channel of its connection (``is_open``, ``close(code, text)``)."""

    __slots__ = ('impl', 'closed_reason', 'reader')

    def __init__(self, impl: Any, reader: Any) -> None:
        self.impl = impl
        self.closed_reason: Optional[BaseException] = None
        self.reader = reader  # reads its deliveries once registered there
        impl.add_on_close_callback(self._on_close)
        _pika.set_channel_cookie(impl, self)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed_reason = reason
        if self.reader is not None:
            self.reader.unregister(self.impl)

    @property
    def is_open(self) -> bool:
        return self.impl.is_open

    def close(self, reply_code: int = 200, reply_text: str = 'Normal shutdown') -> None:
        if self.impl.is_open:
            self.impl.close(reply_code, reply_text)

    def error(self) -> pika.exceptions.ChannelClosed:
        reason = self.closed_reason
        if isinstance(reason, pika.exceptions.ChannelClosed):
            return reason
        return pika.exceptions.ChannelClosed(0, f'channel closed: {reason}')


def close_quietly(channel: Any) -> None:
    """Close a channel if it is open; never raises."""
    try:
        if channel.is_open:
            channel.close()
    except Exception:
        pass


class Consumers:
    """The link's consumers. I/O thread only (every method).

    ``link`` provides, for the current connection: ``connection`` (the
    ``BlockingConnection``), ``wire`` (``_pika.Wire``), ``reader``, ``wait_until(predicate,
    timeout, what)``, ``declare(kind, kwargs)`` (on its control channel),
    ``forget_declarations()``, ``io_stats`` (a Counter) and ``name``.
    """

    def __init__(self, link: Any) -> None:
        self._link = link
        self._specs: Dict[int, ConsumerSpec] = {}
        self._acks: Dict[int, tuple] = {}  # id(spec) -> (spec, gen, highest tag)
        self._unacked = 0  # batch-acked deliveries not acked yet
        self._batch_end_pending = False

    def __len__(self) -> int:
        return len(self._specs)

    # ------------------------------------------------------------------ subscribing
    def consume(self, spec: ConsumerSpec) -> str:
        """Subscribe ``spec`` (a command); returns its consumer tag.

        Raises:
            BrokerRefused: the broker refused a declaration or the Basic.Consume.
        """
        try:
            self.subscribe(spec)
        except pika.exceptions.ChannelClosed as exc:
            self._specs.pop(id(spec), None)
            spec.active = False
            error, _ = self.refused(spec, exc, f'consume from {spec.queue!r}')
            raise error from None
        return spec.consumer_tag

    def subscribe(self, spec: ConsumerSpec) -> None:
        """Declare what ``spec`` needs, open its channel, set its QoS and consume.

        Raises pika's ``ChannelClosed`` when the broker refused (the caller decides)."""
        link = self._link
        if (
            spec.subscribed_once
            and spec.check_exists
            and not spec.cancelled_by_broker
            and not self.queue_exists(spec.queue)
        ):
            LOGGER.warning('%s: queue %r vanished while we were away', link.name, spec.queue)
            if spec.on_missing is not None:
                spec.on_missing()
        for kind, kwargs in spec.declarations:
            link.declare(kind, kwargs)
        channel = self._open_channel()
        if spec.prefetch_count:
            # One consumer per channel: global (per-channel) QoS also reaches a running consumer.
            self._sync(
                channel,
                lambda done: channel.impl.basic_qos(
                    prefetch_count=spec.prefetch_count, global_qos=True, callback=done
                ),
                'Basic.QosOk',
            )
        spec.gen += 1
        on_message = self._on_message(spec, spec.gen)
        impl = channel.impl
        impl.add_on_cancel_callback(lambda _frame: self.on_broker_cancel(spec))
        was_active, spec.channel, spec.active = spec.active, channel, True
        tag: List[str] = []
        try:
            self._sync(
                channel,
                lambda done: tag.append(
                    impl.basic_consume(
                        spec.queue,
                        on_message,
                        auto_ack=spec.no_ack,
                        exclusive=spec.exclusive,
                        consumer_tag=spec.consumer_tag,
                        arguments=spec.arguments,
                        callback=done,
                    )
                ),
                'Basic.ConsumeOk',
            )
        except BaseException:
            spec.active = was_active
            raise
        spec.consumer_tag = tag[0]
        # From now on the reader hands this channel's deliveries to on_message; any that
        # came with the ConsumeOk went through pika to the same callback, in order.
        link.reader.register(impl, on_message)
        spec.subscribed_once = True
        spec.cancelled_by_broker = False
        self._specs[id(spec)] = spec

    def refused(
        self, spec: ConsumerSpec, exc: pika.exceptions.ChannelClosed, what: str
    ) -> Tuple[BrokerRefused, bool]:
        """The typed error of a (re)subscribe of ``spec`` the broker refused, and whether
        ``spec.on_refused`` took it over (then ``spec`` is stopped: never retried)."""
        error = _pika.translate_channel_error(exc, what)
        handled = False
        if spec.on_refused is not None:
            try:
                handled = bool(spec.on_refused(error))
            except Exception:
                LOGGER.exception('%s: on_refused of %r failed', self._link.name, spec.queue)
        if handled:
            spec.active = False
            self._specs.pop(id(spec), None)
        return error, handled

    def _on_message(self, spec: ConsumerSpec, gen: int) -> Callable[..., None]:
        link, acks, batch_ack = self._link, self._acks, spec.batch_ack
        stats = link.io_stats

        # Runs as the frames are read, not later through BlockingChannel's event queue (the
        # waiters wake sooner; no loop turn per batch).
        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            stats['deliveries'] += 1
            try:
                spec.on_delivery(Delivery(spec, gen, method, properties, body))
            except Exception:
                # Never into pika (it would drop the connection, and the redelivered message
                # would raise again): log it and settle the message so it cannot loop.
                settled = 'acknowledged' if batch_ack or spec.no_ack else 'rejected (not requeued)'
                LOGGER.exception(
                    '%s: the consumer of %r failed on delivery %s (correlation_id '
                    '%s); the message is %s',
                    link.name,
                    spec.queue,
                    method.delivery_tag,
                    properties.correlation_id,
                    settled,
                )
                if not batch_ack and not spec.no_ack:
                    channel.basic_reject(method.delivery_tag, requeue=False)
            if batch_ack:
                acks[id(spec)] = (spec, gen, method.delivery_tag)
                self._unacked += 1
                if self._unacked >= ACK_EVERY and not self._batch_end_pending:
                    self._batch_end_pending = True
                    link.wire.ioloop.call_later(0, self._end_batch)

        return on_message

    def _open_channel(self) -> ConsumerChannel:
        """A plain ``pika.channel.Channel`` of the connection (no BlockingChannel around it:
        its consumers' callbacks run as frames arrive, and a broker's Basic.Cancel is ours)."""
        link = self._link
        opened: List[Any] = []
        channel = ConsumerChannel(link.wire.open_channel(opened.append), link.reader)
        link.wait_until(
            lambda: opened or channel.closed_reason is not None, REPLY_WAIT, 'Channel.OpenOk'
        )
        if not opened:
            raise channel.error()
        return channel

    def _sync(self, channel: ConsumerChannel, start: Callable[[Callable], Any], what: str) -> Any:
        """Start an asynchronous method on ``channel``, ``start(callback)``; run the ioloop
        until its reply (returned) or the channel closes (raises ``ChannelClosed``)."""
        replies: List[Any] = []
        start(replies.append)
        self._link.wait_until(
            lambda: replies or channel.closed_reason is not None, REPLY_WAIT, what
        )
        if not replies:
            raise channel.error()
        return replies[0]

    def queue_exists(self, name: str) -> bool:
        """A passive declare on a throwaway channel (a 404 closes the channel it ran on)."""
        channel = self._link.connection.channel()
        try:
            channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            # A queue whose node is down exists: that refusal is the caller's to handle.
            if exc.reply_code == 404 and queue_node_down(exc.reply_text) is None:
                return False
            raise
        close_quietly(channel)
        return True

    def on_broker_cancel(self, spec: ConsumerSpec) -> None:
        """The broker cancelled ``spec``'s consumer (its queue was deleted): tell its owner
        once; ``check()`` re-declares and re-subscribes it at the end of this turn."""
        LOGGER.warning(
            '%s: broker cancelled the consumer of %r (queue deleted?)', self._link.name, spec.queue
        )
        self._link.forget_declarations()
        if spec.on_cancel is not None:
            spec.on_cancel()
        spec.cancelled_by_broker = True
        old = spec.channel
        spec.channel = None
        spec.consumer_tag = None
        if old is not None:
            close_quietly(old)

    # ------------------------------------------------------------------ commands
    def cancel(self, spec: ConsumerSpec) -> None:
        """Stop ``spec``: acks what its owner was handed, closes its channel (unacked
        deliveries go back to the queue by the time Channel.CloseOk arrives)."""
        spec.active = False
        self._specs.pop(id(spec), None)
        pending = self._acks.pop(id(spec), None)
        channel, spec.channel = spec.channel, None
        if channel is not None and channel.is_open:
            if pending is not None and pending[1] == spec.gen:
                # Handed to the owner already: ack them, or closing would requeue them.
                channel.impl.basic_ack(pending[2], multiple=True)
            close_quietly(channel)
            self._link.wait_until(lambda: channel.impl.is_closed, REPLY_WAIT, 'Channel.CloseOk')
        spec.gen += 1

    def ack(
        self, spec: ConsumerSpec, gen: int, tag: int, multiple: bool, reject: bool, requeue: bool
    ) -> bool:
        """Ack (or reject) a delivery; False when its subscription is gone."""
        if spec.gen != gen or spec.channel is None or not spec.channel.is_open:
            return False
        if reject:
            spec.channel.impl.basic_reject(tag, requeue=requeue)
        else:
            spec.channel.impl.basic_ack(tag, multiple=multiple)
        return True

    def qos(self, spec: ConsumerSpec, prefetch_count: int) -> None:
        """Set ``spec``'s prefetch window (kept for its next subscriptions too)."""
        spec.prefetch_count = prefetch_count
        channel = spec.channel
        if channel is not None:
            self._sync(
                channel,
                lambda done: channel.impl.basic_qos(
                    prefetch_count=prefetch_count, global_qos=True, callback=done
                ),
                'Basic.QosOk',
            )

    def recover(self, spec: ConsumerSpec) -> None:
        """Have the broker redeliver ``spec``'s unacked messages."""
        channel = spec.channel
        if channel is not None:
            self._sync(
                channel,
                lambda done: channel.impl.basic_recover(requeue=True, callback=done),
                'Basic.RecoverOk',
            )

    # ------------------------------------------------------------------ every turn
    def _end_batch(self) -> None:
        # An ioloop timer (delay 0): runs once the frames of this read are processed.
        self._batch_end_pending = False
        self.flush_acks()

    def flush_acks(self) -> None:
        """One ``multiple=True`` ack per batch-acking consumer for what it received so far.
        Buffered on the channel: written by the ioloop's next poll (no flush here, so this
        may run inside an ioloop callback)."""
        if not self._acks:
            return
        acks = list(self._acks.values())
        self._acks.clear()
        self._unacked = 0
        for spec, gen, tag in acks:
            if spec.gen == gen and spec.channel is not None and spec.channel.is_open:
                spec.channel.impl.basic_ack(tag, multiple=True)
                self._link.io_stats['ack_frames'] += 1

    def check(self) -> None:
        """Re-subscribe every active consumer whose channel closed."""
        for spec in list(self._specs.values()):
            if spec.active and (spec.channel is None or not spec.channel.is_open):
                LOGGER.warning(
                    '%s: consumer channel for %r closed; re-subscribing',
                    self._link.name,
                    spec.queue,
                )
                try:
                    self.subscribe(spec)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if self.refused(spec, exc, 'consume')[1]:
                        continue
                    spec.active = False
                    self._specs.pop(id(spec), None)
                    LOGGER.error(
                        '%s: consumer of %r stopped: %s',
                        self._link.name,
                        spec.queue,
                        _pika.translate_channel_error(exc, 'consume'),
                    )

    # ------------------------------------------------------------------ connections
    def resubscribe(self) -> None:
        """After a (re)connect: subscribe every active consumer on the new connection."""
        self._batch_end_pending = False
        for spec in list(self._specs.values()):
            if spec.active:
                try:
                    self.subscribe(spec)
                except pika.exceptions.ChannelClosed as exc:
                    if self.refused(spec, exc, 'consume')[1]:
                        continue
                    spec.active = False
                    LOGGER.error(
                        '%s: cannot re-subscribe to %r: %s',
                        self._link.name,
                        spec.queue,
                        _pika.translate_channel_error(exc, 'consume'),
                    )

    def drop(self) -> None:
        """The connection is gone: its channels and pending acks with it (the broker
        redelivers what was not acked)."""
        self._acks.clear()
        self._unacked = 0
        for spec in self._specs.values():
            spec.channel = None


class ConsumerCommands:
    """The link's consumer commands, for any thread (mixed into ``_link.Link``): each runs its
    ``Consumers`` counterpart on the I/O thread through ``Link.call``."""

    _consumers: Consumers
    _thread: Any
    _stop: Any
    call: Callable[..., Any]

    def consume(self, spec: ConsumerSpec, timeout: Optional[float] = None) -> str:
        """Subscribe ``spec`` (declarations first); kept across reconnects. Returns the tag."""
        return self.call(
            self._consumers.consume, spec, timeout=timeout, what=f'consume from {spec.queue!r}'
        )

    def cancel(self, spec: ConsumerSpec, timeout: Optional[float] = None) -> None:
        """Stop ``spec``; unacked deliveries go back to the queue (its channel closes)."""
        if self._thread is None or self._stop.is_set():
            spec.active = False
            return
        self.call(
            self._consumers.cancel, spec, timeout=timeout, what=f'cancel consumer of {spec.queue!r}'
        )

    def ack(
        self,
        spec: ConsumerSpec,
        gen: int,
        tag: int,
        multiple: bool = False,
        reject: bool = False,
        requeue: bool = True,
        timeout: Optional[float] = 10.0,
        wait: bool = True,
    ) -> bool:
        """Ack (or reject) a delivery; False when its channel is gone (it will be redelivered).

        With ``wait=False`` the ack is queued and True returned at once (no round trip to the
        I/O thread; a lost channel makes the broker redeliver, which is what False would say).
        """
        result = self.call(
            self._consumers.ack,
            spec,
            gen,
            tag,
            multiple,
            reject,
            requeue,
            timeout=timeout,
            what='ack',
            wait=wait,
        )
        return True if not wait else result

    def qos(self, spec: ConsumerSpec, prefetch_count: int, timeout: Optional[float] = 10.0) -> None:
        self.call(self._consumers.qos, spec, prefetch_count, timeout=timeout, what='qos')

    def recover(self, spec: ConsumerSpec, timeout: Optional[float] = 10.0) -> None:
        self.call(self._consumers.recover, spec, timeout=timeout, what='recover')
