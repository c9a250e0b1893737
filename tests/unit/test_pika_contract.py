"""The pika contract of ``_deliveries``: DeliveryReader installed on a real pika connection.

No fake of pika's reader: a real ``pika.SelectConnection`` (made without connecting; its
transport only records what pika writes) opens real ``pika.channel.Channel`` objects — a
publish channel in confirm mode, consumer channels — by reading the broker's replies
through its own ``_on_data_available``, then reads a stream of frames marshalled by pika
(deliveries large and small, frames of other channels between a delivery's content frames,
confirms, a returned message, heartbeats) split at many points, with the reader installed.
Everything pika should see reaches pika's own callbacks, in order; the bytes are counted
as they arrive (pika's real heartbeat checker is asked).

Each test runs twice: with the installed pika's reader, and with that reader replaced by
one that empties its ``bytearray`` frame buffer in place, as pika's main branch does.

``setup.cfg``'s pika range is the one these tests passed on: every release from the lowest
it accepts to the newest, plus pika's main branch, each in its own virtualenv::

    python -m venv /tmp/venv-pika1.3.0
    /tmp/venv-pika1.3.0/bin/pip install 'pika==1.3.0' pytest pytest-timeout
    PYTHONPATH=$PWD /tmp/venv-pika1.3.0/bin/python -m pytest -p no:cacheprovider \
        tests/unit/test_pika_contract.py tests/unit/test_deliveries.py
    # pika's main branch: git archive of https://github.com/pika/pika into /tmp/pika-main,
    # then pip install /tmp/pika-main into another virtualenv and run the same.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, List, Tuple

import pika
import pika.channel
import pika.connection
import pika.exceptions
import pika.frame
import pika.heartbeat
import pika.spec
import pytest

from pika_rpc import _pika
from pika_rpc._deliveries import DeliveryReader
from pika_rpc._pika import PikaContractError
from pika_rpc._pika import check_pika as check_pika_internals

CTAG = 'ctag-%d'
FRAME_MAX = 131072 - 8  # body bytes per frame at RabbitMQ's default frame_max


# ---------------------------------------------------------------- pika's main-branch reader
def _on_data_available_in_place(self: Any, data_in: bytes) -> None:
    """pika's main-branch frame reader: a ``bytearray`` buffer appended to and emptied in
    place, an offset walked over it, and a stop when the buffer is replaced."""
    buffer = self._frame_buffer
    buffer += data_in
    if self._processing_frame_buffer:
        return
    self._processing_frame_buffer = True
    offset = 0
    try:
        while offset < len(buffer):
            consumed, value = pika.frame.decode_frame(bytes(buffer[offset:]))
            if not value:
                break
            offset += consumed
            self.bytes_received += consumed
            self._process_frame(value)
            if self._frame_buffer is not buffer:
                return
    finally:
        self._processing_frame_buffer = False
        if offset and self._frame_buffer is buffer:
            del buffer[:offset]


@pytest.fixture(params=['installed', 'in_place'])
def pika_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == 'in_place':
        init_state = pika.connection.Connection._init_connection_state

        def init_connection_state(self: Any) -> None:
            init_state(self)
            self._frame_buffer = bytearray()
            self._processing_frame_buffer = False

        monkeypatch.setattr(
            pika.connection.Connection, '_init_connection_state', init_connection_state
        )
        monkeypatch.setattr(
            pika.connection.Connection, '_on_data_available', _on_data_available_in_place
        )
    return request.param


# ---------------------------------------------------------------- a real connection, offline
class RecordingTransport:
    """Where pika writes: kept, never sent."""

    def __init__(self) -> None:
        self.written: List[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.aborted = True


def method(channel: int, value: Any) -> bytes:
    return pika.frame.Method(channel, value).marshal()


def content(
    channel: int, value: Any, body: bytes, frame_max: int = FRAME_MAX, **props: Any
) -> List[bytes]:
    """The frames of a content method: method, header, body frames (default: RabbitMQ's
    sizes)."""
    out = [
        method(channel, value),
        pika.frame.Header(channel, len(body), pika.spec.BasicProperties(**props)).marshal(),
    ]
    out += [
        pika.frame.Body(channel, body[i : i + frame_max]).marshal()
        for i in range(0, len(body), frame_max)
    ]
    return out


def deliver(
    channel: int, tag: int, body: bytes, frame_max: int = FRAME_MAX, **props: Any
) -> List[bytes]:
    return content(
        channel,
        pika.spec.Basic.Deliver(CTAG % channel, tag, False, 'ex', 'rk'),
        body,
        frame_max,
        **props,
    )


def open_connection() -> Any:
    """A ``SelectConnection`` opened by reading the broker's side of the handshake through
    its own reader (heartbeats off: the tests run pika's checker by hand)."""
    conn = pika.SelectConnection(pika.ConnectionParameters(), internal_connection_workflow=False)
    conn._proto_connection_made(RecordingTransport())  # pika sends its protocol header
    capabilities = {
        'publisher_confirms': True,
        'basic.nack': True,
        'consumer_cancel_notify': True,
        'connection.blocked': True,
    }
    for reply in (
        pika.spec.Connection.Start(
            server_properties={'capabilities': capabilities}, mechanisms=b'PLAIN', locales=b'en_US'
        ),
        pika.spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=0),
        pika.spec.Connection.OpenOk(),
    ):
        conn._proto_data_received(method(0, reply))
    assert conn.is_open
    return conn


class Client:
    """A ``SelectConnection`` in the state a BlockingConnection's impl is in once open, with
    channel 1 (confirm mode, confirms read by the reader), channels 2 and 4 (consumers read
    by the reader) and channel 3 (a consumer pika reads). ``log`` gets every event."""

    def __init__(self) -> None:
        self.log: List[Tuple[Any, ...]] = []
        self.conn = conn = open_connection()
        self.heartbeat = pika.heartbeat.HeartbeatChecker(conn, 60)
        conn._heartbeat_checker = self.heartbeat
        received = self.heartbeat.received

        def on_heartbeat() -> None:
            self.log.append(('heartbeat',))
            received()

        self.heartbeat.received = on_heartbeat
        self.channels = {n: self._open_channel(n) for n in (1, 2, 3, 4)}
        publish = self.channels[1]
        selected: List[Any] = []
        publish.confirm_delivery(
            lambda frame: self.log.append(('pika-confirm',)), callback=selected.append
        )
        self.reply(method(1, pika.spec.Confirm.SelectOk()))
        assert selected
        publish.add_on_return_callback(
            lambda ch, m, p, body: self.log.append(('returned', m.reply_code, body))
        )
        for n in (2, 3, 4):
            self.channels[n].basic_consume(f'q{n}', self._pika_delivery, consumer_tag=CTAG % n)
            self.reply(method(n, pika.spec.Basic.ConsumeOk(CTAG % n)))
        self.reader = DeliveryReader(_pika.Wire.of(conn))
        self.reader.register_confirms(
            publish, lambda tag, multiple, nack: self.log.append(('confirm', tag, multiple, nack))
        )
        for n in (2, 4):
            self.reader.register(self.channels[n], self._our_delivery)

    def _open_channel(self, number: int) -> pika.channel.Channel:
        opened: List[Any] = []
        channel = self.conn.channel(channel_number=number, on_open_callback=opened.append)
        self.reply(method(number, pika.spec.Channel.OpenOk()))
        assert opened == [channel] and channel.is_open
        return channel

    def reply(self, data: bytes) -> None:
        """What the broker sends, read the way pika's transport hands it on."""
        self.conn._proto_data_received(data)

    def _pika_delivery(self, channel: Any, m: Any, props: Any, body: bytes) -> None:
        self.log.append(
            ('pika-deliver', channel.channel_number, m.delivery_tag, body, props.correlation_id)
        )

    def _our_delivery(self, channel: Any, m: Any, props: Any, body: bytes) -> None:
        assert type(body) is bytes and isinstance(m, pika.spec.Basic.Deliver)
        self.log.append(
            ('deliver', channel.channel_number, m.delivery_tag, body, props.correlation_id)
        )

    def close(self) -> None:
        self.heartbeat.stop()
        self.conn.ioloop.close()


@pytest.fixture
def client(pika_reader: str) -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


BIG = bytes(range(256)) * 4096 + b'tail'  # 1 MiB + 4: 9 body frames, the last short
HEARTBEAT = pika.frame.Heartbeat().marshal()


def _stream() -> Tuple[List[bytes], List[Tuple[Any, ...]]]:
    big = deliver(2, 3, BIG, correlation_id='big')
    frames = (
        [HEARTBEAT]
        + deliver(2, 1, b'{"small": 1}', correlation_id='s1')
        + [method(1, pika.spec.Basic.Ack(1, multiple=False))]
        + deliver(3, 2, b'for pika', correlation_id='p2')
        # the big one, with frames of other channels between its content frames
        + big[:2]
        + [HEARTBEAT]
        + big[2:4]
        + deliver(3, 4, b'pika between')
        + big[4:5]
        + [method(1, pika.spec.Basic.Ack(3, multiple=True))]
        + big[5:6]
        + deliver(4, 5, b'four between', correlation_id='f5')
        + big[6:]
        + content(1, pika.spec.Basic.Return(312, 'NO_ROUTE', '', 'q'), b'returned')
        + deliver(4, 6, b'x' * (FRAME_MAX + 10))
        + [method(1, pika.spec.Basic.Nack(7, multiple=False, requeue=False))]
        + deliver(2, 8, b'', correlation_id='empty')
        + deliver(2, 9, b'last')
    )
    events = [
        ('heartbeat',),
        ('deliver', 2, 1, b'{"small": 1}', 's1'),
        ('confirm', 1, False, False),
        ('pika-deliver', 3, 2, b'for pika', 'p2'),
        ('heartbeat',),
        ('pika-deliver', 3, 4, b'pika between', None),
        ('confirm', 3, True, False),
        ('deliver', 4, 5, b'four between', 'f5'),
        ('deliver', 2, 3, BIG, 'big'),
        ('returned', 312, b'returned'),
        ('deliver', 4, 6, b'x' * (FRAME_MAX + 10), None),
        ('confirm', 7, False, True),
        ('deliver', 2, 8, b'', 'empty'),
        ('deliver', 2, 9, b'last', None),
    ]
    return frames, events


FRAMES, EVENTS = _stream()
DATA = b''.join(FRAMES)
# The same shapes, small enough to be split at every point: body frames of 10 bytes.
_MID = deliver(2, 3, b'0123456789abcdefghijklmnopqrstu', 10, correlation_id='mid')
SMALL_DATA = b''.join(
    FRAMES[:8]
    + _MID[:2]
    + [HEARTBEAT]
    + _MID[2:4]
    + deliver(3, 4, b'pika between')
    + [method(1, pika.spec.Basic.Ack(3, multiple=True))]
    + _MID[4:5]
    + deliver(4, 5, b'four between', 7, correlation_id='f5')
    + _MID[5:]
    + deliver(2, 9, b'last')
)
SMALL_EVENTS = EVENTS[:4] + [
    ('heartbeat',),
    ('pika-deliver', 3, 4, b'pika between', None),
    ('confirm', 3, True, False),
    ('deliver', 4, 5, b'four between', 'f5'),
    ('deliver', 2, 3, b'0123456789abcdefghijklmnopqrstu', 'mid'),
    ('deliver', 2, 9, b'last', None),
]


def feed(client: Client, data: bytes, sizes: List[int]) -> None:
    """Hand ``data`` to the connection in reads of ``sizes``; after each, every byte read is
    counted as received or is the start of a frame the reader keeps."""
    fed = 0
    base = client.conn.bytes_received
    for size in sizes:
        client.reply(data[fed : fed + size])
        fed = min(fed + size, len(data))
        assert client.conn.bytes_received - base + len(client.reader._buf) == fed
    assert fed == len(data)


def test_pika_reads_what_the_reader_hands_it_and_nothing_is_lost(client: Client) -> None:
    feed(client, DATA, [len(DATA)])
    assert client.log == EVENTS
    assert client.reader.fast == 6
    assert len(client.conn._frame_buffer) == 0


def test_reads_of_4_kb_as_pikas_transport_makes_give_the_same_events(client: Client) -> None:
    feed(client, DATA, [4096] * (len(DATA) // 4096 + 1))
    assert client.log == EVENTS


@pytest.mark.parametrize('seed', range(8))
def test_any_split_of_the_input_gives_the_same_events(client: Client, seed: int) -> None:
    rng = random.Random(seed)
    sizes: List[int] = []
    while sum(sizes) < len(DATA):
        sizes.append(rng.choice([1, 2, 3, 7, 8, 9, 64, 1000, 4096, 65536, 200000]))
    feed(client, DATA, sizes)
    assert client.log == EVENTS


def test_every_two_way_split_and_byte_by_byte(pika_reader: str) -> None:
    for sizes in [[1] * len(SMALL_DATA)] + [
        [cut, len(SMALL_DATA)] for cut in range(1, len(SMALL_DATA))
    ]:
        c = Client()
        try:
            feed(c, SMALL_DATA, sizes)
            assert c.log == SMALL_EVENTS, sizes[:2]
        finally:
            c.close()


def test_every_split_around_the_frame_boundaries_of_a_large_delivery(pika_reader: str) -> None:
    big = b''.join(deliver(2, 3, BIG, correlation_id='big') + deliver(2, 9, b'last'))
    bounds, pos = [], 0
    while pos < len(big):
        bounds.append(pos)
        pos += 8 + int.from_bytes(big[pos + 3 : pos + 7], 'big')
    cuts = sorted({b + d for b in bounds for d in range(-2, 10) if 0 < b + d < len(big)})
    for cut in cuts:
        c = Client()
        try:
            feed(c, big, [cut, 4096] + [4096] * (len(big) // 4096))
            assert c.log == [('deliver', 2, 3, BIG, 'big'), ('deliver', 2, 9, b'last', None)]
        finally:
            c.close()


def test_a_partial_frame_pika_held_when_the_reader_came_is_read(pika_reader: str) -> None:
    # pika read the first bytes of a heartbeat before the reader was installed
    conn = open_connection()
    try:
        conn._proto_data_received(HEARTBEAT[:3])
        frames, received = conn.frames_received, conn.bytes_received
        reader = DeliveryReader(_pika.Wire.of(conn))
        assert len(conn._frame_buffer) == 0 and reader._buf == HEARTBEAT[:3]
        conn._proto_data_received(HEARTBEAT[3:] + HEARTBEAT * 3)
        assert conn.frames_received == frames + 4  # 1 of 4 before the fix
        assert conn.bytes_received == received + 4 * len(HEARTBEAT)
    finally:
        conn.ioloop.close()


def test_a_large_delivery_arriving_slowly_keeps_pikas_heartbeat_checker_content(
    client: Client,
) -> None:
    big = b''.join(deliver(2, 3, BIG))
    checker = client.heartbeat
    checker._update_counters()
    for pos in range(0, len(big), 50000):  # one check interval per 50 kB
        client.reply(big[pos : pos + 50000])
        checker._check_heartbeat()  # what pika's timer runs
        assert client.conn.is_open, f'closed for idleness after {pos + 50000} bytes'
    assert not client.conn._transport.aborted
    assert client.log == [('deliver', 2, 3, BIG, None)]


# ---------------------------------------------------------------- the feature check
@pytest.fixture(autouse=True)
def fresh_check() -> Iterator[None]:
    """The behaviour check is cached per frame reader; the tests patch more than that."""
    _pika._check_pika_classes.cache_clear()
    yield
    _pika._check_pika_classes.cache_clear()


def test_the_feature_check_passes_on_this_pika(pika_reader: str) -> None:
    check_pika_internals()
    c = Client()
    c.close()


def _patch_reader(monkeypatch: pytest.MonkeyPatch, wrapper: Any) -> None:
    real = pika.connection.Connection._on_data_available
    monkeypatch.setattr(
        pika.connection.Connection,
        '_on_data_available',
        lambda self, data_in: wrapper(real, self, data_in),
    )


def test_a_pika_that_does_not_count_bytes_received_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def uncounted(real: Any, self: Any, data_in: bytes) -> None:
        before = self.bytes_received
        real(self, data_in)
        self.bytes_received = before

    _patch_reader(monkeypatch, uncounted)
    with pytest.raises(PikaContractError, match='counted 0 of 24 bytes in bytes_received'):
        check_pika_internals()


def test_a_pika_that_reads_one_frame_per_call_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def one_frame(real: Any, self: Any, data_in: bytes) -> None:
        self._frame_buffer += data_in
        consumed, value = pika.frame.decode_frame(bytes(self._frame_buffer))
        if value is not None:
            self._frame_buffer = self._frame_buffer[consumed:]
            self.bytes_received += consumed
            self._process_frame(value)

    _patch_reader(monkeypatch, one_frame)
    with pytest.raises(PikaContractError, match='of 3 whole frames .* it read 1'):
        check_pika_internals()


def test_a_main_branch_reader_with_a_bytes_buffer_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its buffer must be the bytearray it empties in place: with bytes it reads 1 frame.
    init_state = pika.connection.Connection._init_connection_state

    def init_connection_state(self: Any) -> None:
        init_state(self)
        self._frame_buffer = b''
        self._processing_frame_buffer = False

    monkeypatch.setattr(pika.connection.Connection, '_init_connection_state', init_connection_state)
    monkeypatch.setattr(
        pika.connection.Connection, '_on_data_available', _on_data_available_in_place
    )
    with pytest.raises(PikaContractError, match='_frame_buffer held'):
        check_pika_internals()


def test_a_connection_without_the_attributes_the_reader_uses_fails_the_check() -> None:
    class Bare:
        _on_data_available = staticmethod(lambda data: None)
        bytes_received = 0

    with pytest.raises(PikaContractError, match='_frame_buffer is NoneType'):
        check_pika_internals(Bare())
    bare = Bare()
    bare._frame_buffer = b''
    bare.bytes_received = 0.0
    with pytest.raises(PikaContractError, match='bytes_received is not an int'):
        DeliveryReader(_pika.Wire.of(bare))


def test_a_reader_taking_more_than_one_argument_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = pika.connection.Connection._on_data_available
    monkeypatch.setattr(
        pika.connection.Connection,
        '_on_data_available',
        lambda self, data_in, offset: real(self, data_in),
    )
    with pytest.raises(PikaContractError, match='not one data argument'):
        check_pika_internals()


def test_the_check_is_made_once_per_frame_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []
    real = _pika._check_reader_behaviour
    monkeypatch.setattr(_pika, '_check_reader_behaviour', lambda: calls.append(1) or real())
    _pika._check_pika_classes.cache_clear()
    for _ in range(3):
        check_pika_internals()
    assert calls == [1]


# ---------------------------------------------------------------- channel closures
class _LoopRaising:
    """A connection whose ``process_data_events`` raises as pika's main branch does for a
    ``BlockingChannel`` the broker closed (pika 1.3/1.4 raise it from the channel's calls)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.limits: List[Any] = []

    def process_data_events(self, time_limit: Any = 0) -> None:
        self.limits.append(time_limit)
        raise self.exc


def test_a_channel_closure_raised_by_the_ioloop_is_not_a_lost_connection() -> None:
    loop = _LoopRaising(pika.exceptions.ChannelClosedByBroker(404, 'NOT_FOUND - no exchange'))
    _pika.process_data_events(loop, 0.25)
    assert loop.limits == [0.25]


def test_a_connection_closure_raised_by_the_ioloop_still_ends_the_connection() -> None:
    loop = _LoopRaising(pika.exceptions.ConnectionClosedByBroker(320, 'CONNECTION_FORCED'))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        _pika.process_data_events(loop, None)
