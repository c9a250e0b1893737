"""The confirm ledger of ``_confirms.Pipeline``: tags, acks, nacks, returns, retirement.

Pure logic, so the pipeline is given a fake ``pika.channel.Channel`` that records publishes
and hands the test the callbacks the pipeline registers; the test calls them as pika's I/O
thread would, with the frames pika would decode (``Basic.Ack``, ``Basic.Nack``,
``Basic.Return`` and properties decoded from their wire encoding). Direct writes go to one
end of a real ``socket.socketpair()``; the test reads the frames from the other end.

The same behaviour against the real broker: tests/integration/test_publish_returns.py,
tests/faults/test_publish_races.py, tests/faults/test_publish_path.py.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pika.frame
import pika.spec
import pytest

from pika_rpc._confirms import (
    DIRECT_MAX_BODY,
    DIRECT_MAX_IN_FLIGHT,
    SETTLED_ACK,
    SETTLED_NACK,
    Pipeline,
    WriteBusy,
)
from pika_rpc._handoff import Publication
from pika_rpc._pika import DirectSocket
from pika_rpc.errors import PublishError

WAIT = 10.0
NO_ROUTE = (312, 'NO_ROUTE')
FRAME_MAX = 131072 - 8


class FakeChannel:
    """The ``pika.channel.Channel`` surface the pipeline uses; keeps what it was given."""

    channel_number = 1

    def __init__(self) -> None:
        self.is_open = True
        self.published: List[Tuple[str, str, bytes, Any, bool]] = []
        self.refuse: Optional[BaseException] = None  # what basic_publish raises
        self.on_return: Callable[..., None] = _unset
        self.on_close: Callable[..., None] = _unset
        self.on_ack_nack: Callable[..., None] = _unset
        self.on_select_ok: Callable[..., None] = _unset

    def add_on_return_callback(self, callback: Callable[..., None]) -> None:
        self.on_return = callback

    def add_on_close_callback(self, callback: Callable[..., None]) -> None:
        self.on_close = callback

    def confirm_delivery(
        self, ack_nack_callback: Callable[..., None], callback: Optional[Callable[..., None]] = None
    ) -> None:
        self.on_ack_nack, self.on_select_ok = ack_nack_callback, callback or _unset

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any = None,
        mandatory: bool = False,
    ) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.published.append((exchange, routing_key, body, properties, mandatory))


def _unset(*_args: Any) -> None:
    raise AssertionError('the pipeline did not register this callback')


class FakeTransport:
    """What ``DirectSocket`` reads of pika's transport: the bytes pika still has to write."""

    def __init__(self) -> None:
        self.buffered = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeWire:
    """``_pika.Wire.direct_socket`` for a plaintext socket of the test's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.transport = sock, FakeTransport()
        self.lock: Optional[threading.Lock] = None

    def direct_socket(self, lock: threading.Lock, io_wait: float) -> DirectSocket:
        self.lock = lock
        return DirectSocket(self.sock, self.transport, lock, FRAME_MAX)


class Ledger:
    """A started pipeline on a fake channel (Confirm.SelectOk received) and what it settled.

    ``handler(pub, outcome, returned)``, when given, runs after the settlement is recorded
    (it may raise); by default each settled publication is finished as the outbox does."""

    def __init__(
        self,
        wire: Optional[FakeWire] = None,
        handler: Optional[Callable[[Publication, str, Optional[tuple]], None]] = None,
    ) -> None:
        self.channel = FakeChannel()
        self.settled: List[Tuple[Publication, str, Optional[tuple]]] = []
        self._handler = handler
        self.pipeline = Pipeline(self.channel, self._on_settled)
        self.ready = self.pipeline.start(wire)
        assert not self.ready()
        self.channel.on_select_ok(pika.frame.Method(1, pika.spec.Confirm.SelectOk()))
        assert self.ready()

    def _on_settled(self, pub: Publication, outcome: str, returned: Optional[tuple]) -> None:
        self.settled.append((pub, outcome, returned))
        if self._handler is not None:
            self._handler(pub, outcome, returned)
        else:
            pub.returned = returned
            pub._finish(None if outcome == SETTLED_ACK else PublishError('nacked'))

    def publish(self, pub: Publication) -> int:
        return self.pipeline.publish(
            pub, pub.exchange, pub.routing_key, pub.body, properties_of(pub), pub.mandatory
        )

    def ack(self, tag: int, multiple: bool = False) -> None:
        self.channel.on_ack_nack(pika.frame.Method(1, pika.spec.Basic.Ack(tag, multiple)))

    def nack(self, tag: int, multiple: bool = False) -> None:
        self.channel.on_ack_nack(pika.frame.Method(1, pika.spec.Basic.Nack(tag, multiple)))

    def give_back(self, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
        """The broker's ``basic.return`` of a message, its properties as pika decodes them."""
        method = pika.spec.Basic.Return(NO_ROUTE[0], NO_ROUTE[1], exchange, routing_key)
        self.channel.on_return(self.channel, method, decoded(properties), body)

    def outcomes(self) -> List[Tuple[str, str, Optional[tuple]]]:
        """``(correlation id, outcome, returned)`` of each settlement, in settling order."""
        return [(pub.correlation_id, outcome, returned) for pub, outcome, returned in self.settled]


def publication(
    correlation_id: str,
    body: bytes = b'body',
    routing_key: str = 'rk',
    exchange: str = 'ex',
    **properties: Any,
) -> Publication:
    return Publication(exchange, routing_key, body, dict(properties, correlation_id=correlation_id))


def properties_of(pub: Publication) -> pika.spec.BasicProperties:
    return pika.spec.BasicProperties(**pub.properties)


def decoded(properties: Dict[str, Any]) -> pika.spec.BasicProperties:
    """``properties`` encoded as on the wire, then decoded by pika (as a return carries them)."""
    out = pika.spec.BasicProperties()
    out.decode(b''.join(pika.spec.BasicProperties(**properties).encode()))
    return out


# ------------------------------------------------------------------ tags


def test_publications_take_consecutive_tags_from_one_in_publish_order():
    ledger = Ledger()
    pubs = [publication(f'c{i}') for i in range(5)]
    assert [ledger.publish(pub) for pub in pubs] == [1, 2, 3, 4, 5]
    assert ledger.pipeline.in_flight == 5 and ledger.pipeline.peak_in_flight == 5
    assert all(ledger.pipeline.holds(pub) for pub in pubs)
    assert [p[2] for p in ledger.channel.published] == [b'body'] * 5


def test_a_publish_pika_refuses_takes_no_tag_and_stays_off_the_ledger():
    ledger = Ledger()
    refused = publication('refused')
    ledger.channel.refuse = ValueError('cannot encode')
    with pytest.raises(ValueError, match='cannot encode'):
        ledger.publish(refused)
    assert not ledger.pipeline.holds(refused) and ledger.pipeline.in_flight == 0
    ledger.channel.refuse = None
    accepted = publication('accepted')
    assert ledger.publish(accepted) == 1  # the broker numbers it 1 too
    ledger.ack(1)
    assert ledger.outcomes() == [('accepted', SETTLED_ACK, None)]


def test_holds_is_true_exactly_while_the_ledger_owns_the_publication():
    ledger = Ledger()
    pub, other = publication('c'), publication('c')  # equal in every field
    assert not ledger.pipeline.holds(pub)
    ledger.publish(pub)
    assert ledger.pipeline.holds(pub) and not ledger.pipeline.holds(other)
    ledger.ack(1)
    assert not ledger.pipeline.holds(pub)


# ------------------------------------------------------------------ acks and nacks


def test_a_single_ack_settles_its_own_tag_only():
    ledger = Ledger()
    pubs = [publication(f'c{i}') for i in range(1, 4)]
    for pub in pubs:
        ledger.publish(pub)
    ledger.ack(2)
    assert ledger.outcomes() == [('c2', SETTLED_ACK, None)]
    assert pubs[1].done.is_set() and pubs[1].error is None
    assert [ledger.pipeline.holds(pub) for pub in pubs] == [True, False, True]


def test_a_multiple_ack_settles_every_tag_up_to_it_in_tag_order_and_none_after_it():
    ledger = Ledger()
    pubs = [publication(f'c{i}') for i in range(1, 7)]
    for pub in pubs:
        ledger.publish(pub)
    ledger.ack(2)
    ledger.ack(4, multiple=True)
    assert [c for c, _, _ in ledger.outcomes()] == ['c2', 'c1', 'c3', 'c4']
    assert ledger.pipeline.in_flight == 2
    assert [ledger.pipeline.holds(pub) for pub in pubs[4:]] == [True, True]
    ledger.ack(6, multiple=True)
    assert [c for c, _, _ in ledger.outcomes()][4:] == ['c5', 'c6']
    assert ledger.pipeline.in_flight == 0


def test_an_ack_of_a_tag_not_on_the_ledger_settles_nothing_and_none_is_settled_twice():
    ledger = Ledger()
    for i in range(1, 4):
        ledger.publish(publication(f'c{i}'))
    ledger.ack(2)
    ledger.ack(2)  # again
    ledger.ack(99)  # never given
    assert ledger.outcomes() == [('c2', SETTLED_ACK, None)]
    ledger.ack(3, multiple=True)
    assert [c for c, _, _ in ledger.outcomes()] == ['c2', 'c1', 'c3']


def test_a_nack_settles_its_tag_as_nacked_and_a_multiple_nack_every_tag_up_to_it():
    ledger = Ledger()
    for i in range(1, 5):
        ledger.publish(publication(f'c{i}'))
    ledger.nack(2)
    ledger.nack(3, multiple=True)
    ledger.ack(4)
    assert ledger.outcomes() == [
        ('c2', SETTLED_NACK, None),
        ('c1', SETTLED_NACK, None),
        ('c3', SETTLED_NACK, None),
        ('c4', SETTLED_ACK, None),
    ]


def test_on_confirm_settles_as_the_frames_do():
    ledger = Ledger()  # the delivery reader calls on_confirm itself
    for i in range(1, 4):
        ledger.publish(publication(f'c{i}'))
    ledger.pipeline.on_confirm(2, True, False)
    ledger.pipeline.on_confirm(3, False, True)
    assert ledger.outcomes() == [
        ('c1', SETTLED_ACK, None),
        ('c2', SETTLED_ACK, None),
        ('c3', SETTLED_NACK, None),
    ]


# ------------------------------------------------------------------ a faulty settle handler


def test_a_settle_handler_that_raises_fails_that_publication_only_and_the_rest_settle(caplog):
    def handler(pub: Publication, outcome: str, returned: Optional[tuple]) -> None:
        if pub.correlation_id == 'c2':
            raise RuntimeError('handler bug')
        pub._finish(None)

    ledger = Ledger(handler=handler)
    pubs = [publication(f'c{i}', routing_key=f'rk{i}') for i in range(1, 4)]
    for pub in pubs:
        ledger.publish(pub)
    with caplog.at_level(logging.ERROR, logger='pika_rpc._confirms'):
        ledger.ack(3, multiple=True)
    assert [c for c, _, _ in ledger.outcomes()] == ['c1', 'c2', 'c3']
    assert all(pub.done.is_set() for pub in pubs)
    assert pubs[0].error is None and pubs[2].error is None
    assert isinstance(pubs[1].error, PublishError)
    assert "'rk2'" in str(pubs[1].error) and 'RuntimeError: handler bug' in str(pubs[1].error)
    assert ledger.pipeline.in_flight == 0
    assert any('rk2' in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_publication_settled_before_its_handler_raised_keeps_its_outcome():
    def handler(pub: Publication, outcome: str, returned: Optional[tuple]) -> None:
        pub._finish(None)
        raise RuntimeError('after the fact')

    ledger = Ledger(handler=handler)
    pub = publication('c1')
    ledger.publish(pub)
    ledger.ack(1)
    assert pub.done.is_set() and pub.error is None


# ------------------------------------------------------------------ returns


def test_a_return_flags_the_publication_of_its_exchange_routing_key_and_correlation_id():
    ledger = Ledger()
    ledger.publish(publication('c1', routing_key='a'))
    ledger.publish(publication('c2', routing_key='a'))
    ledger.publish(publication('c1', routing_key='b'))
    ledger.publish(publication('c1', routing_key='a', exchange='other'))
    ledger.give_back('ex', 'a', b'body', correlation_id='c2')
    ledger.ack(4, multiple=True)
    assert [
        (pub.exchange, pub.routing_key, pub.correlation_id, returned)
        for pub, _, returned in ledger.settled
    ] == [
        ('ex', 'a', 'c1', None),
        ('ex', 'a', 'c2', NO_ROUTE),
        ('ex', 'b', 'c1', None),
        ('other', 'a', 'c1', None),
    ]
    assert ledger.settled[1][0].returned == NO_ROUTE


def test_a_return_among_publications_of_the_same_key_is_matched_by_body():
    ledger = Ledger()
    ledger.publish(publication('c', body=b'one'))
    ledger.publish(publication('c', body=b'two'))
    ledger.publish(publication('c', body=b'three'))
    ledger.give_back('ex', 'rk', b'two', correlation_id='c')
    ledger.ack(3, multiple=True)
    assert [(pub.body, returned) for pub, _, returned in ledger.settled] == [
        (b'one', None),
        (b'two', NO_ROUTE),
        (b'three', None),
    ]


def test_a_return_among_identical_bodies_of_the_same_key_is_matched_by_properties():
    ledger = Ledger()
    ledger.publish(publication('c', priority=1, headers={'n': 1}))
    ledger.publish(publication('c', priority=1, headers={'n': 2}))
    ledger.publish(publication('c', priority=2, headers={'n': 2}))
    ledger.give_back('ex', 'rk', b'body', correlation_id='c', priority=1, headers={'n': 2})
    ledger.ack(3, multiple=True)
    assert [returned for _, _, returned in ledger.settled] == [None, NO_ROUTE, None]


def test_identical_publications_are_flagged_oldest_first_one_per_return():
    ledger = Ledger()
    for _ in range(3):
        ledger.publish(publication('c', headers={'same': True}))
    for _ in range(2):
        ledger.give_back('ex', 'rk', b'body', correlation_id='c', headers={'same': True})
    ledger.ack(3, multiple=True)
    assert [returned for _, _, returned in ledger.settled] == [NO_ROUTE, NO_ROUTE, None]


def test_a_text_body_is_matched_as_its_utf8_bytes():
    ledger = Ledger()
    ledger.publish(publication('c', body='caf\u00e9'))  # type: ignore[arg-type]
    ledger.publish(publication('c', body='cafe'))  # type: ignore[arg-type]
    ledger.give_back('ex', 'rk', 'cafe'.encode(), correlation_id='c')
    ledger.ack(2, multiple=True)
    assert [returned for _, _, returned in ledger.settled] == [None, NO_ROUTE]


def test_a_return_that_matches_no_unconfirmed_publication_flags_nothing():
    ledger = Ledger()
    ledger.publish(publication('c1'))
    ledger.ack(1)  # settled: no longer a candidate
    ledger.give_back('ex', 'rk', b'body', correlation_id='c1')
    ledger.give_back('ex', 'rk', b'body', correlation_id='never-sent')
    ledger.give_back('ex', 'elsewhere', b'body', correlation_id='c1')
    ledger.publish(publication('c1'))
    ledger.ack(2)
    assert ledger.outcomes() == [('c1', SETTLED_ACK, None), ('c1', SETTLED_ACK, None)]


def test_a_nacked_return_reports_both():
    ledger = Ledger()
    ledger.publish(publication('c1'))
    ledger.give_back('ex', 'rk', b'body', correlation_id='c1')
    ledger.nack(1)
    assert ledger.outcomes() == [('c1', SETTLED_NACK, NO_ROUTE)]


# ------------------------------------------------------------------ retiring the ledger


def test_take_unsettled_hands_over_every_unsettled_publication_oldest_first_and_keeps_none():
    ledger = Ledger()
    pubs = [publication(f'c{i}') for i in range(1, 5)]
    for pub in pubs:
        ledger.publish(pub)
    ledger.ack(2)
    ledger.give_back('ex', 'rk', b'body', correlation_id='c3')
    taken = ledger.pipeline.take_unsettled()
    assert taken == [pubs[0], pubs[2], pubs[3]]
    assert ledger.pipeline.in_flight == 0
    assert not any(ledger.pipeline.holds(pub) for pub in pubs)
    ledger.ack(4, multiple=True)  # late confirms of the lost channel
    ledger.give_back('ex', 'rk', b'body', correlation_id='c4')
    assert ledger.outcomes() == [('c2', SETTLED_ACK, None)]
    assert not any(pub.done.is_set() for pub in taken)  # the taker's to hand on
    assert ledger.pipeline.take_unsettled() == []


def test_a_closed_channel_is_recorded_and_stops_direct_writes():
    writer, _peer = socket.socketpair()
    with writer, _peer:
        ledger = Ledger(FakeWire(writer))
        pub = publication('c1')
        assert ledger.pipeline.takes_direct(pub)
        reason = RuntimeError('channel closed by the broker')
        ledger.channel.on_close(ledger.channel, reason)
        assert ledger.pipeline.closed_reason is reason
        assert not ledger.pipeline.takes_direct(pub)
        assert ledger.pipeline.publish_direct(pub, properties_of(pub), lambda: False) is False


# ------------------------------------------------------------------ direct writes


@contextlib.contextmanager
def direct_ledger(**kwargs: Any) -> Iterator[Tuple[Ledger, socket.socket, FakeWire]]:
    """A ledger whose direct writes go to a socketpair; yields it, the peer end and the wire."""
    writer, peer = socket.socketpair()
    writer.setblocking(False)  # as pika's socket is
    with writer, peer:
        wire = FakeWire(writer)
        yield Ledger(wire, **kwargs), peer, wire


def nothing_written(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        peer.recv(1)
    except BlockingIOError:
        return True
    return False


class WireReader:
    """Decodes the publishes on the peer end of a socketpair into correlation ids, in order."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self._data = b''
        self.correlation_ids: List[str] = []

    def read(self) -> List[str]:
        """Blocks for at least one more byte; returns the correlation ids of the messages
        completed by it (a header frame ends each: the bodies here fit one frame)."""
        self._data += self.peer.recv(65536)
        done = []
        while True:
            consumed, frame = pika.frame.decode_frame(self._data)
            if frame is None:
                break
            self._data = self._data[consumed:]
            if isinstance(frame, pika.frame.Header):
                done.append(frame.properties.correlation_id)
        self.correlation_ids += done
        return done


def test_a_direct_write_puts_the_message_on_the_wire_and_continues_the_io_threads_tags():
    with direct_ledger() as (ledger, peer, _wire):
        ledger.publish(publication('queued'))  # tag 1, through pika
        pub = publication('direct', body=b'direct body')
        assert ledger.pipeline.publish_direct(pub, properties_of(pub), lambda: False) is True
        assert ledger.pipeline.holds(pub) and ledger.pipeline.direct_writes == 1
        peer.settimeout(WAIT)
        reader = WireReader(peer)
        while not reader.correlation_ids:
            reader.read()
        assert reader.correlation_ids == ['direct']
        ledger.ack(2)
        assert ledger.outcomes() == [('direct', SETTLED_ACK, None)]


@pytest.mark.parametrize(
    'why',
    [
        'publications wait in the queue',
        'pika has bytes to write',
        'the body is too big',
        'too many are unconfirmed',
    ],
)
def test_a_direct_write_is_refused_and_nothing_registered_when(why: str):
    with direct_ledger() as (ledger, peer, wire):
        queued, body = False, b'body'
        if why == 'publications wait in the queue':
            queued = True
        elif why == 'pika has bytes to write':
            wire.transport.buffered = 1
        elif why == 'the body is too big':
            body = b'x' * (DIRECT_MAX_BODY + 1)
        else:
            for i in range(DIRECT_MAX_IN_FLIGHT):
                ledger.publish(publication(f'in-flight-{i}'))
        pub = publication('c', body=body)
        before = ledger.pipeline.in_flight
        assert ledger.pipeline.publish_direct(pub, properties_of(pub), lambda: queued) is False
        assert not ledger.pipeline.holds(pub) and ledger.pipeline.in_flight == before
        assert nothing_written(peer)


def test_the_io_threads_publish_raises_write_busy_while_a_caller_holds_the_write_lock():
    with direct_ledger() as (ledger, _peer, wire):
        held, release = threading.Event(), threading.Event()

        def writer() -> None:  # a caller in the middle of a frame
            with wire.lock:
                held.set()
                release.wait(WAIT)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            assert held.wait(WAIT)
            with pytest.raises(WriteBusy):
                ledger.publish(publication('busy'))
        finally:
            release.set()
            thread.join(WAIT)
        assert ledger.channel.published == [] and ledger.pipeline.in_flight == 0
        assert ledger.publish(publication('later')) == 1


def test_a_direct_writer_past_its_checks_when_the_ledger_is_retired_registers_and_writes_nothing():
    with direct_ledger() as (ledger, peer, _wire):
        in_checks, retired = threading.Event(), threading.Event()
        sent: List[bool] = []

        def queued() -> bool:  # the writer's last check before it registers
            in_checks.set()
            assert retired.wait(WAIT)
            return False

        pub = publication('late writer')
        writer = threading.Thread(
            target=lambda: sent.append(
                ledger.pipeline.publish_direct(pub, properties_of(pub), queued)
            ),
            daemon=True,
        )
        writer.start()
        assert in_checks.wait(WAIT)
        taken = ledger.pipeline.take_unsettled()  # the I/O thread, after a loss
        retired.set()
        writer.join(WAIT)
        assert not writer.is_alive()
        assert sent == [False] and taken == []
        assert not ledger.pipeline.holds(pub) and ledger.pipeline.in_flight == 0
        assert nothing_written(peer) and ledger.pipeline.direct_writes == 0


def test_tags_follow_the_wire_order_when_many_threads_write_directly_while_confirms_settle():
    threads_n, per_thread = 6, 40
    total = threads_n * per_thread
    progress = threading.Condition()
    errors: List[BaseException] = []
    with direct_ledger() as (ledger, peer, _wire):
        pipeline = ledger.pipeline
        peer.settimeout(WAIT)
        reader = WireReader(peer)
        start = threading.Barrier(threads_n + 1, timeout=WAIT)

        def io_thread() -> None:  # reads the wire and acks each message, in order
            try:
                acked = 0
                while acked < total:
                    for _ in reader.read():
                        acked += 1
                        pipeline.on_confirm(acked, False, False)
                    with progress:
                        progress.notify_all()
            except BaseException as exc:
                errors.append(exc)

        def caller(n: int) -> None:
            try:
                start.wait()
                for k in range(per_thread):
                    pub = publication(f'{n}-{k}')
                    while not pipeline.publish_direct(pub, properties_of(pub), lambda: False):
                        with progress:  # too many unconfirmed: wait for an ack
                            assert progress.wait_for(
                                lambda: pipeline.in_flight < DIRECT_MAX_IN_FLIGHT, WAIT
                            )
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=io_thread, daemon=True)]
        workers += [
            threading.Thread(target=caller, args=(n,), daemon=True) for n in range(threads_n)
        ]
        for thread in workers:
            thread.start()
        start.wait()
        for thread in workers:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in workers) and errors == []
    wire = reader.correlation_ids
    assert [pub.correlation_id for pub, _, _ in ledger.settled] == wire  # tag n = n-th sent
    assert sorted(wire) == sorted(f'{n}-{k}' for n in range(threads_n) for k in range(per_thread))
    for n in range(threads_n):  # each caller's order kept
        mine = [int(c.split('-')[1]) for c in wire if c.startswith(f'{n}-')]
        assert mine == list(range(per_thread))
    assert pipeline.in_flight == 0 and pipeline.direct_writes == total
