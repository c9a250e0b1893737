"""Pipelined publisher confirms and direct writes.

``BlockingChannel.confirm_delivery()`` makes every publish wait out its own round trip (~4k
publishes/s here). Instead the *underlying* ``pika.channel.Channel`` (``_pika.channel_impl``)
is switched to confirm mode and a ledger is kept here:

* a publish records the next delivery tag and never waits;
* a ``basic.ack``/``basic.nack`` settles its tag, or every tag up to it when ``multiple``;
* a ``basic.return`` carries no tag: it flags the unconfirmed, not yet returned publication
  with the same (exchange, routing key, correlation id) and, among several, the same body
  and properties (the oldest of those that are identical). RabbitMQ sends the return before
  the ack of the same message, so when the ack comes the publication is known returned.
  No per-publication token is added to the properties: every consumer would see it, and
  only byte-identical messages to the same destination, which are interchangeable, remain
  ambiguous.

Both callbacks are registered on the underlying channel so they run as the frames arrive, in
wire order; the blocking adapter would defer the return and reorder it after the ack.

**Direct writes** (issue 9). Handing each publish to the I/O thread costs a wake-up, a loop
turn and a poll for writability before pika sends it. On a plaintext connection a caller
thread may instead write the marshalled frames to the socket itself (``publish_direct``):

* ``_wlock`` serialises every write to the socket: direct writes, and pika's own writer
  (wrapped at ``start()`` by ``_pika.Wire.direct_socket``, so pika flushes under it too).
  The I/O thread waits for it at most ``IO_LOCK_WAIT`` (1 ms; a caller's write takes
  microseconds): past that pika's flush is skipped (it runs again at the next writability
  event) and a queued publish raises ``WriteBusy`` (the link retries it a moment later), so
  the I/O thread keeps reading while a caller waits for the broker to take the rest of a
  frame;
* a direct write happens only while pika's write buffer is empty (no partly written frame
  of pika's can be on the wire) and no publication waits in the I/O thread's queue (one
  thread's publications keep their order); tags are given under ``_wlock``, so the order of
  tags is the order on the wire, which is the order the broker numbers them in;
* a short send (the broker is not reading) is finished by the same caller, still holding
  ``_wlock``, waiting for writability (``poll()``: any descriptor number) up to a bound;
  past it the frame cannot be completed and the connection is shut down (the I/O thread
  reconnects; unconfirmed publications are re-published under their retry policy);
* a publication is put on the ledger just before its bytes are written; from then on the
  writer reports it sent whatever happens: a socket that fails, or that pika closes under
  the writer (``select()``/``poll()`` raise ``ValueError`` then), shuts the connection down
  and leaves it to the loss handling. Queuing it again would publish it twice;
* TLS connections never take this path (an ``SSLSocket`` must not be written by one thread
  while another reads it).

The ledger (``_ledger_lock``) is shared by writers and by the I/O thread that settles;
settle handlers run on the I/O thread, outside that lock. ``take_unsettled`` (after a loss)
retires the ledger: a writer that passed its checks just before registers nothing and hands
its publication to the I/O thread instead. A publication is on one ledger at most, and the
ledger owns it until it settles or is taken: the taker (the link) hands it on at once.
"""

from __future__ import annotations

import collections
import itertools
import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

import pika
import pika.frame
import pika.spec

from ._pika import DirectSocket
from .errors import PublishError

LOGGER = logging.getLogger(__name__)

__all__ = ['Pipeline', 'WriteBusy', 'SETTLED_ACK', 'SETTLED_NACK', 'DIRECT_MAX_BODY']

SETTLED_ACK = 'ack'
SETTLED_NACK = 'nack'

#: Bodies larger than this go through the I/O thread (a big write would hold ``_wlock``).
DIRECT_MAX_BODY = 64 * 1024
#: With this many publications unconfirmed, callers hand theirs to the I/O thread, which
#: writes a burst in few syscalls; below it a caller's own write is the shorter path.
DIRECT_MAX_IN_FLIGHT = 8
#: Longest the I/O thread waits for the write lock (a caller's write takes microseconds;
#: one waiting for a stalled broker holds it much longer, and the I/O thread must not).
IO_LOCK_WAIT = 0.001
#: Longest a direct writer waits for the socket to take the rest of a frame it started.
STALLED_WRITE_MAX = 30.0
#: ``poll()`` takes any descriptor; ``select()`` refuses those past FD_SETSIZE (1024).
_HAS_POLL = hasattr(select, 'poll')


class WriteBusy(Exception):
    """The I/O thread found a caller writing to the socket: publish again shortly."""


class Pipeline:
    """Confirm ledger of one publish channel (one per connection).

    ``on_settled(pub, outcome, returned)`` is called on the I/O thread once per publication,
    with outcome ``'ack'`` or ``'nack'`` and ``returned`` = ``(reply_code, reply_text)`` or
    None. ``pub`` must have ``routing_key``, ``correlation_id``, ``exchange``, ``body``,
    ``properties`` (a dict), ``mandatory`` and ``deadline`` attributes, and ``done`` and
    ``_finish(error)`` as ``_handoff.Publication``.

    ``publish`` runs on the I/O thread; ``publish_direct`` on any thread; everything else on
    the I/O thread.
    """

    def __init__(
        self, channel: Any, on_settled: Callable[[Any, str, Optional[tuple]], None]
    ) -> None:
        self._chan = channel  # the pika.channel.Channel (not the Blocking one)
        self._on_settled = on_settled
        self._wlock = threading.Lock()  # every write to the socket, and tag order
        self._ledger_lock = threading.Lock()  # the four fields below
        self._next_tag = 1
        self._unconfirmed: Dict[int, Any] = {}
        # (exchange, routing_key, correlation_id) -> tags in publish order, for returns
        self._by_key: Dict[tuple, Deque[int]] = collections.defaultdict(collections.deque)
        self._returned: Dict[int, tuple] = {}
        self._select_ok = False
        # Set when direct writes are possible; read only while they are (``_direct_open``).
        self._socket: DirectSocket = None  # type: ignore[assignment]
        self._direct_open = False  # direct writes allowed now
        self._retired = False  # under _ledger_lock: unsettled were taken
        self._reader: Any = None  # reads our confirms when given
        self.peak_in_flight = 0
        self.direct_writes = 0
        #: Why the channel closed (``ChannelClosedByBroker`` for a broker's Channel.Close).
        self.closed_reason: Optional[BaseException] = None

    def start(self, wire: Any = None, reader: Any = None) -> Callable[[], bool]:
        """Send Confirm.Select; returns a predicate telling when SelectOk arrived.

        With ``wire`` (the connection's ``_pika.Wire``) on a plaintext transport, direct
        writes are enabled once SelectOk has arrived. With ``reader``
        (``_deliveries.DeliveryReader``) the confirms are read by it, ahead of pika."""
        self._chan.add_on_return_callback(self._on_return)
        self._chan.add_on_close_callback(self._on_close)
        self._chan.confirm_delivery(
            ack_nack_callback=self._on_ack_nack, callback=self._on_select_ok
        )
        if wire is not None:
            self._socket = wire.direct_socket(self._wlock, IO_LOCK_WAIT)
            if self._socket is not None:
                self._wlock = self._socket.lock  # one lock per connection's socket
                self._channel_number = self._chan.channel_number
        if reader is not None:
            reader.register_confirms(self._chan, self.on_confirm)
            self._reader = reader
        return lambda: self._select_ok

    def _on_select_ok(self, _frame: Any) -> None:
        self._select_ok = True
        if self._socket is not None:
            self._direct_open = self.closed_reason is None

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed_reason = reason
        self._direct_open = False
        if self._reader is not None:
            self._reader.unregister(self._chan)

    def holds(self, pub: Any) -> bool:
        with self._ledger_lock:
            return any(p is pub for p in self._unconfirmed.values())

    @property
    def in_flight(self) -> int:
        return len(self._unconfirmed)

    def _register(self, pub: Any, direct: bool = False) -> Optional[int]:
        """Put ``pub`` on the ledger under the next tag (None: the ledger is retired and
        ``direct``). From here on the ledger owns it until it settles or is taken."""
        with self._ledger_lock:
            if direct and self._retired:
                return None
            tag = self._next_tag
            self._next_tag += 1
            self._unconfirmed[tag] = pub
            self._by_key[_return_key(pub)].append(tag)
            if len(self._unconfirmed) > self.peak_in_flight:
                self.peak_in_flight = len(self._unconfirmed)
        return tag

    def publish(
        self,
        pub: Any,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.spec.BasicProperties,
        mandatory: bool,
    ) -> int:
        """I/O thread: publish through pika without waiting; the ledger settles ``pub``
        later. Returns its tag.

        Raises whatever pika raises for a closed channel or connection (the caller, the
        I/O thread, treats that as a lost connection), or for a message it cannot encode
        (then nothing was sent and ``pub`` is not in the ledger).
        """
        if not self._wlock.acquire(timeout=IO_LOCK_WAIT):
            raise WriteBusy()
        try:
            # Publish first: if pika cannot encode the message (a bad property) it raises
            # before anything is buffered, and the broker's tag count must not move ahead of
            # ours. No ack can be processed in between: frames are read only by the ioloop.
            self._chan.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=properties,
                mandatory=mandatory,
            )
            return self._register(pub)  # type: ignore[return-value]
        finally:
            self._wlock.release()

    def takes_direct(self, pub: Any) -> bool:
        """Whether ``publish_direct`` may take ``pub`` now (a cheap check, no lock)."""
        return (
            self._direct_open
            and isinstance(pub.body, bytes)
            and len(pub.body) <= DIRECT_MAX_BODY
            and len(self._unconfirmed) < DIRECT_MAX_IN_FLIGHT
        )

    def publish_direct(
        self, pub: Any, properties: pika.spec.BasicProperties, queued: Callable[[], bool]
    ) -> bool:
        """Any thread: write ``pub`` to the socket now. False when this path cannot be taken
        (TLS, a big body, pika's buffer or the I/O thread's queue not empty, channel not
        open, the lock busy past the publication's deadline); then ``pub`` was not put on
        the ledger and the caller hands it to the I/O thread.

        True once ``pub`` is on the ledger, whatever happens to the write afterwards: the
        ledger owns it from then on, so it must never be queued again (it would be sent
        twice). If the socket fails or the frame cannot be finished, the connection is shut
        down and the I/O thread's loss handling re-publishes it under its retry policy.

        Raises what pika raises for a message it cannot encode (nothing was sent).
        """
        if not self.takes_direct(pub):
            return False
        ch = self._channel_number
        frames = [
            pika.frame.Method(
                ch,
                pika.spec.Basic.Publish(
                    exchange=pub.exchange, routing_key=pub.routing_key, mandatory=pub.mandatory
                ),
            ).marshal(),
            pika.frame.Header(ch, len(pub.body), properties).marshal(),
        ]
        body, step = pub.body, self._socket.frame_max
        for start in range(0, len(body), step):
            frames.append(pika.frame.Body(ch, body[start : start + step]).marshal())
        data = b''.join(frames)
        wait = None if pub.deadline is None else max(0.0, pub.deadline - time.monotonic())
        if not self._wlock.acquire(timeout=-1 if wait is None else wait):
            return False
        try:
            if (
                not self._direct_open
                or queued()
                or self._socket.pika_buffered()
                or not self._chan.is_open
                or self._register(pub, direct=True) is None
            ):  # None: retired by a loss
                return False
            try:
                self._write(data, pub)
            except BaseException as exc:
                # Registered: the ledger owns it. Whatever went wrong (a socket pika has just
                # closed makes select()/poll() raise ValueError, not OSError), a frame may be
                # cut short: end the connection; the loss handling re-publishes it.
                LOGGER.debug('direct write failed (%r); left to the reconnect', exc)
                self._abandon_stream()
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt...: the caller's to handle
            return True
        finally:
            self._wlock.release()

    def _write(self, data: bytes, pub: Any) -> None:
        """Under ``_wlock``: send all of ``data``, or abandon the stream after the bound.
        Raises what the socket raises (the caller abandons the stream then)."""
        try:
            sent = self._socket.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            if not self._finish_write(memoryview(data)[sent:], pub):
                return
        self.direct_writes += 1

    def _finish_write(self, rest: memoryview, pub: Any) -> bool:
        """Under ``_wlock``: the socket took part of a frame; the rest must follow before
        anything else is written, so wait for writability (bounded). False: the broker took
        nothing for too long and the stream was abandoned. Raises what the socket raises."""
        began = time.monotonic()
        limit = began + STALLED_WRITE_MAX
        if pub.deadline is not None:
            limit = min(limit, max(pub.deadline, began + 1.0))
        while rest:
            left = limit - time.monotonic()
            if left <= 0:
                LOGGER.warning(
                    'the broker took no data for %.1f s in the middle of a frame; '
                    'closing the connection (unconfirmed publications are '
                    're-published after the reconnect, within their retry policy)',
                    time.monotonic() - began,
                )
                self._abandon_stream()
                return False
            self._wait_writable(min(left, 1.0))
            try:
                n = self._socket.sock.send(rest)
            except (BlockingIOError, InterruptedError):
                continue
            rest = rest[n:]
        return True

    def _wait_writable(self, timeout: float) -> None:
        """Under ``_wlock``: wait up to ``timeout`` s for the socket to take more data. The
        one place a direct writer blocks (tests wrap it to act while a writer is stalled).
        Raises ``ValueError`` for a socket closed meanwhile, ``OSError`` for a failed one."""
        if _HAS_POLL:
            poller = select.poll()
            poller.register(self._socket.sock, select.POLLOUT)
            poller.poll(timeout * 1000.0)
        else:
            select.select([], [self._socket.sock], [], timeout)

    def _abandon_stream(self) -> None:
        """Under ``_wlock``: a frame may be cut short on the wire, or the socket failed. No
        more direct writes; shut the socket down, so that pika sees the connection end and
        the I/O thread re-publishes what the ledger holds (at once if it is gone already)."""
        self._direct_open = False
        try:
            self._socket.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):  # closed already: pika saw the loss
            pass

    def stop_direct(self) -> None:
        """I/O thread: no more direct writes on this pipeline (channel or connection lost).
        Does not wait for a writer in the middle of a frame."""
        self._direct_open = False

    def _on_ack_nack(self, frame: Any) -> None:
        method = frame.method
        self.on_confirm(
            method.delivery_tag, method.multiple, isinstance(method, pika.spec.Basic.Nack)
        )

    def on_confirm(self, tag: int, multiple: bool, nack: bool) -> None:
        """I/O thread: the broker acked (or nacked) ``tag``, or every tag up to it."""
        outcome = SETTLED_NACK if nack else SETTLED_ACK
        settled = []
        with self._ledger_lock:
            if multiple:
                # The dict keeps publish order, which is tag order: stop at the first later
                # tag (a scan of everything in flight would make heavy pipelining quadratic).
                tags = list(itertools.takewhile(lambda t: t <= tag, self._unconfirmed))
            else:
                tags = [tag] if tag in self._unconfirmed else []
            for t in tags:
                pub = self._unconfirmed.pop(t)
                self._drop_key(t, pub)
                settled.append((pub, self._returned.pop(t, None)))
        for pub, returned in settled:
            try:
                self._on_settled(pub, outcome, returned)
            except Exception as exc:  # the ledger must survive a faulty settle handler
                LOGGER.exception('error while settling a publication to %r', pub.routing_key)
                if not pub.done.is_set():  # off the ledger: no one else would settle it
                    pub._finish(
                        PublishError(
                            f'publish to {pub.routing_key!r}: error while '
                            f'settling it: {type(exc).__name__}: {exc}'
                        )
                    )

    def _drop_key(self, tag: int, pub: Any) -> None:
        key = _return_key(pub)
        tags = self._by_key.get(key)
        if tags is not None:
            try:
                tags.remove(tag)
            except ValueError:
                pass
            if not tags:
                del self._by_key[key]

    def _on_return(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """I/O thread: the broker returned a message (before its confirm). Flag the
        publication it is: same (exchange, routing key, correlation id), not confirmed nor
        flagged yet; among several, the one whose body and properties are the returned
        message's, the oldest of those that are (identical messages are interchangeable)."""
        key = (method.exchange, method.routing_key, properties.correlation_id)
        with self._ledger_lock:
            candidates = [
                (tag, self._unconfirmed[tag])
                for tag in self._by_key.get(key, ())
                if tag not in self._returned
            ]
        # Compared outside the lock (bodies may be large): only this thread settles or
        # flags, so the candidates stay on the ledger meanwhile.
        tag = _returned_one(candidates, properties, body) if candidates else None
        if tag is None:
            LOGGER.debug('basic.return matched no unconfirmed publication: %r', key)
            return
        with self._ledger_lock:
            self._returned[tag] = (method.reply_code, method.reply_text)

    def take_unsettled(self) -> List[Any]:
        """Stop direct writes; remove and return every unsettled publication, oldest first
        (after a loss). The caller owns them from here: it must hand each on (retry or
        fail) before anything else can raise. A writer that passed its checks just before
        registers nothing now: it reports "not sent" and queues its publication."""
        self.stop_direct()
        with self._ledger_lock:
            self._retired = True  # a writer past its checks registers nothing now
            pubs = list(self._unconfirmed.values())
            self._unconfirmed.clear()
            self._by_key.clear()
            self._returned.clear()
        return pubs


def _return_key(pub: Any) -> tuple:
    return (pub.exchange, pub.routing_key, pub.correlation_id)


def _returned_one(candidates: List[tuple], properties: Any, body: bytes) -> Optional[int]:
    """The tag, among ``candidates`` (``(tag, pub)`` in publish order), of the publication
    that a ``basic.return`` of ``properties`` and ``body`` gives back."""
    if len(candidates) == 1:
        return candidates[0][0]
    same_body = [(tag, pub) for tag, pub in candidates if _as_bytes(pub.body) == body]
    if len(same_body) <= 1:
        return (same_body or candidates)[0][0]
    wire = _encoded(properties)
    for tag, pub in same_body:
        try:
            mine = _encoded(pika.spec.BasicProperties(**pub.properties))
        except Exception:  # not comparable: another candidate may be
            continue
        if mine == wire:
            return tag
    return same_body[0][0]


def _as_bytes(body: Any) -> bytes:
    return body.encode('utf-8') if isinstance(body, str) else body


def _encoded(properties: pika.spec.BasicProperties) -> bytes:
    # pika decodes what it encodes to equal values, and encodes them to the same bytes: a
    # returned message's properties re-encode to what the publication's encode to.
    return b''.join(properties.encode())
