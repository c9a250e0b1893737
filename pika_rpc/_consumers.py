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

**A refused re-subscription** (the queue's node is down: 404 "home node ... is down", or any
other refusal after a reconnect or a closed channel) goes to the spec's owner first
(``on_refused``: True means "handled, stop it"). Otherwise a spec with a ``retry_interval``
is tried again at that fixed, short interval (not the connection's growing backoff, which
is for an unreachable broker; here the broker answers), with one WARNING per failure, until
it consumes again or ``retry_limit`` failures in a row: then it stops and ``on_given_up``
hears why. A spec without one stops at once (logged), as every spec did before.

**QoS.** A prefetch window is global (per channel) by default, so changing it reaches the
running consumer; with one consumer per channel, it counts what that consumer holds. Quorum
queues (and streams) refuse a global window: RabbitMQ closes the whole *connection* (540).
A spec with ``qos_global=False`` asks for a per-consumer window instead, which reaches only
consumers made after it: to change it, a new consumer is made on the same channel with the
new window and the old one is cancelled (``_replace_consumer``). What the old consumer
delivered stays unacked on the channel, ackable under the same generation: nothing is
requeued. A spec that still asks for a global window on such a queue falls back to a
per-consumer one once, after that one close, and is subscribed again on the next connection.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, cast

import pika.exceptions

from . import _pika
from .errors import BrokerRefused, queue_node_down

LOGGER = logging.getLogger(__name__)

__all__ = ['ConsumerSpec', 'Delivery', 'properties_to_dict', 'Consumers', 'ACK_EVERY']

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

    When subscribing is refused: ``on_refused(error)`` (a ``BrokerRefused``, e.g.
    ``QueueNodeDown``) hears it, at the first subscribe too (which then raises the error to
    its caller); at a re-subscribe (see the module docstring) it returns True when its owner
    handled it (e.g. moved to another queue: the spec stops, not retried);
    else ``retry_interval`` seconds pass before the next try (None: the spec stops), and
    after ``retry_limit`` refusals in a row (None: no limit) it stops and
    ``on_given_up(error)`` is called. These hooks run on the I/O thread: quick, no I/O.
    ``qos_global`` False asks for a per-consumer prefetch window (quorum queues).

    ``consuming`` (subscribed on the current connection), ``failures`` (refusals in a row)
    and ``last_error`` are written by the I/O thread and may be read by any thread.
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
        qos_global: bool = True,
        retry_interval: Optional[float] = None,
        retry_limit: Optional[int] = None,
        on_refused: Optional[Callable[[BrokerRefused], bool]] = None,
        on_given_up: Optional[Callable[[BrokerRefused], None]] = None,
    ) -> None:
        self.queue, self.on_delivery = queue, on_delivery
        self.batch_ack, self.no_ack, self.prefetch_count = batch_ack, no_ack, prefetch_count
        self.declarations, self.check_exists = tuple(declarations), check_exists
        self.on_missing, self.on_cancel = on_missing, on_cancel
        self.consumer_tag, self.exclusive, self.arguments = consumer_tag, exclusive, arguments
        self.channel: Any = None  # I/O thread only
        self.gen = 0  # bumped at every subscribe: acks of an older gen are void
        self.subscribed_once = False
        self.cancelled_by_broker = False  # I/O thread: on_cancel told the owner already
        self.active = False
        self.qos_global = qos_global
        self.retry_interval, self.retry_limit = retry_interval, retry_limit
        self.on_refused, self.on_given_up = on_refused, on_given_up
        self.consuming = False
        self.failures = 0
        self.last_error: Optional[str] = None
        self.retry_at: Optional[float] = None  # I/O thread: monotonic time of the next try
        self.handler: Any = None  # I/O thread: the current subscription's on_message


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

    def error(self) -> pika.exceptions.AMQPError:
        """Why the channel closed: the broker's ``ChannelClosed``, or the connection's error
        when the whole connection went (a 540 closes the connection, not the channel)."""
        reason = self.closed_reason
        if isinstance(reason, (pika.exceptions.ChannelClosed, pika.exceptions.ConnectionClosed)):
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
            error = _pika.translate_channel_error(exc, f'consume from {spec.queue!r}')
            if spec.on_refused is not None:  # its owner hears it (e.g. moves the queue)
                _guarded(spec.on_refused, error, self._link.name, 'on_refused')
            raise error from None
        return cast(str, spec.consumer_tag)  # subscribe() set it

    def subscribe(self, spec: ConsumerSpec) -> None:
        """Declare what ``spec`` needs, open its channel, set its QoS and consume.

        Raises pika's ``ChannelClosed`` when the broker refused (the caller decides), and
        ``_pika.RetryAfterReconnect`` when the broker closed the connection over a global
        window the queue does not support (the spec asks for a per-consumer one from now on).
        """
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
        spec.gen += 1
        on_message = self._on_message(spec, spec.gen)
        impl = channel.impl
        impl.add_on_cancel_callback(lambda _frame: self.on_broker_cancel(spec))
        was_active, spec.channel, spec.active = spec.active, channel, True
        # The reader reads this channel's deliveries from the first one, so messages that
        # were waiting in the queue (delivered right after the ConsumeOk, often in the same
        # socket read) take the fast path too; the channel carries nothing else.
        link.reader.register(impl, on_message)
        try:
            if spec.prefetch_count:
                self._set_qos(channel, spec.prefetch_count, spec.qos_global)
            spec.consumer_tag = self._basic_consume(spec, channel, on_message, spec.consumer_tag)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            spec.active = was_active
            link.reader.unregister(impl)
            if spec.qos_global and _pika.refuses_global_qos(exc):
                spec.qos_global = False
                LOGGER.warning(
                    '%s: queue %r has no global prefetch window (a quorum queue?) and the '
                    'broker closed the connection over it (%s); consuming it with a '
                    'per-consumer window from the next connection on',
                    link.name,
                    spec.queue,
                    exc.reply_text,
                )
                raise _pika.RetryAfterReconnect(exc.reply_code, exc.reply_text) from exc
            raise
        except BaseException:
            spec.active = was_active
            link.reader.unregister(impl)
            raise
        spec.handler = on_message
        spec.subscribed_once = True
        spec.cancelled_by_broker = False
        spec.consuming, spec.failures, spec.retry_at = True, 0, None
        self._specs[id(spec)] = spec

    def _set_qos(self, channel: 'ConsumerChannel', prefetch_count: int, global_qos: bool) -> None:
        self._sync(
            channel,
            lambda done: channel.impl.basic_qos(
                prefetch_count=prefetch_count, global_qos=global_qos, callback=done
            ),
            'Basic.QosOk',
        )

    def _basic_consume(
        self, spec: ConsumerSpec, channel: 'ConsumerChannel', on_message: Any, tag: Optional[str]
    ) -> str:
        """A Basic.Consume of ``spec.queue`` on ``channel``; returns its consumer tag."""
        tags: List[str] = []
        self._sync(
            channel,
            lambda done: tags.append(
                channel.impl.basic_consume(
                    spec.queue,
                    on_message,
                    auto_ack=spec.no_ack,
                    exclusive=spec.exclusive,
                    consumer_tag=tag,
                    arguments=spec.arguments,
                    callback=done,
                )
            ),
            'Basic.ConsumeOk',
        )
        return tags[0]

    def _basic_cancel(self, channel: 'ConsumerChannel', tag: Optional[str]) -> None:
        """Cancel one consumer of ``channel`` and keep the channel: what it delivered stays
        unacked there, ackable. Nothing to do for a consumer the broker cancelled already."""
        if tag is None or tag not in channel.impl.consumer_tags:
            return
        self._sync(
            channel, lambda done: channel.impl.basic_cancel(tag, callback=done), 'Basic.CancelOk'
        )

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
            # A queue whose home node is down exists: that refusal is the caller's to handle.
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
        spec.consuming = False
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
        spec.active = spec.consuming = False
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
        """Set ``spec``'s prefetch window (kept for its next subscriptions too). A
        per-consumer window is changed by replacing the consumer (``_replace_consumer``)."""
        spec.prefetch_count = prefetch_count
        channel = spec.channel
        if channel is None or not channel.is_open:
            return  # applied when it subscribes again
        if spec.qos_global:
            self._set_qos(channel, prefetch_count, True)
        else:
            self._replace_consumer(spec, channel)

    def _replace_consumer(self, spec: ConsumerSpec, channel: 'ConsumerChannel') -> None:
        """A new consumer on ``spec``'s channel with its window, then the old one cancelled
        (an exclusive consumer cannot have a twin: cancelled first). The deliveries of the
        old one stay unacked on the channel and the generation is kept, so their owner acks
        them as before: none is requeued by the change."""
        old = spec.consumer_tag
        self._set_qos(channel, spec.prefetch_count or 0, False)
        if spec.exclusive:
            self._basic_cancel(channel, old)
        spec.consumer_tag = self._basic_consume(spec, channel, spec.handler, None)
        if not spec.exclusive:
            self._basic_cancel(channel, old)

    def pause(self, spec: ConsumerSpec) -> None:
        """Stop ``spec``'s deliveries but keep its channel: what it delivered stays ackable
        (a stopping worker's running tasks). ``cancel`` closes the channel later."""
        channel = spec.channel
        if channel is not None and channel.is_open:
            self._basic_cancel(channel, spec.consumer_tag)
            spec.consuming = False

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
        """Re-subscribe every active consumer whose channel closed, once its retry is due."""
        now = time.monotonic()
        for spec in list(self._specs.values()):
            if not spec.active or (spec.channel is not None and spec.channel.is_open):
                continue
            if spec.retry_at is not None:
                if now < spec.retry_at:
                    continue
            else:
                spec.consuming = False
                LOGGER.warning(
                    '%s: consumer channel for %r closed; re-subscribing',
                    self._link.name,
                    spec.queue,
                )
            try:
                self.subscribe(spec)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._refused(spec, exc)

    def _refused(self, spec: ConsumerSpec, exc: BaseException) -> None:
        """Re-subscribing ``spec`` was refused: its owner's ``on_refused`` first, then a
        retry ``retry_interval`` later, or the end of it (see ``ConsumerSpec``)."""
        err = _pika.translate_channel_error(exc, f'consume from {spec.queue!r}')
        name = self._link.name
        spec.consuming, spec.last_error, spec.retry_at = False, str(err), None
        if spec.channel is not None:
            close_quietly(spec.channel)
            spec.channel = None
        if spec.on_refused is not None and _guarded(spec.on_refused, err, name, 'on_refused'):
            self._stop(spec)
            LOGGER.info('%s: consumer of %r stopped by its owner after: %s', name, spec.queue, err)
            return
        if spec.retry_interval is None:
            self._stop(spec)
            LOGGER.error('%s: consumer of %r stopped: %s', name, spec.queue, err)
            return
        spec.failures += 1
        if spec.retry_limit is not None and spec.failures > spec.retry_limit:
            self._stop(spec)
            LOGGER.error(
                '%s: gave up consuming from %r after %d refused re-subscriptions in a row: %s',
                name,
                spec.queue,
                spec.failures,
                err,
            )
            if spec.on_given_up is not None:
                _guarded(spec.on_given_up, err, name, 'on_given_up')
            return
        spec.retry_at = time.monotonic() + spec.retry_interval
        LOGGER.warning(
            '%s: cannot consume from %r (%s); retry %d in %.1f s',
            name,
            spec.queue,
            err,
            spec.failures,
            spec.retry_interval,
        )

    def _stop(self, spec: ConsumerSpec) -> None:
        spec.active = spec.consuming = False
        spec.retry_at = None
        self._specs.pop(id(spec), None)
        self._acks.pop(id(spec), None)

    # ------------------------------------------------------------------ connections
    def resubscribe(self) -> None:
        """After a (re)connect: subscribe every active consumer on the new connection (one
        whose retry was waiting is tried at once: the connection is new)."""
        self._batch_end_pending = False
        for spec in list(self._specs.values()):
            if spec.active:
                spec.retry_at = None
                try:
                    self.subscribe(spec)
                except pika.exceptions.ChannelClosed as exc:
                    self._refused(spec, exc)

    def drop(self) -> None:
        """The connection is gone: its channels and pending acks with it (the broker
        redelivers what was not acked)."""
        self._acks.clear()
        self._unacked = 0
        for spec in self._specs.values():
            spec.channel = None
            spec.consuming = False


def _guarded(hook: Callable[[BrokerRefused], Any], err: BrokerRefused, name: str, what: str) -> Any:
    """An owner's hook on the I/O thread: what it raises is logged, never raised here."""
    try:
        return hook(err)
    except Exception:
        LOGGER.exception('%s: the %s hook %r failed', name, what, hook)
        return None
