"""DeliveryReader: deliveries of registered channels parsed ahead of pika, in order, from any
split of the input; everything else reaches pika whole and in order.

The connection is a fake recording what pika would have been handed (frames built with
pika's own marshalling); the real broker path is covered by every integration test that
receives a result.
"""

from __future__ import annotations

import random
import struct
from typing import Any, List, Optional, Tuple

import pika.exceptions
import pika.frame
import pika.spec
import pytest

from pika_rpc import _deliveries, _pika
from pika_rpc._deliveries import DeliveryReader


class FakeConnection:
    """The attributes DeliveryReader uses of pika's ``SelectConnection``."""

    def __init__(self, partial: bytes = b'') -> None:
        self._frame_buffer = partial
        self.bytes_received = 0
        self.is_closed = False
        self.log: List[Tuple[str, Any]] = []
        self._pending = b''

    def _on_data_available(self, data: bytes) -> None:  # pika's frame reader
        self._pending += data
        while self._pending:
            consumed, frame = pika.frame.decode_frame(self._pending)
            assert frame is not None, 'pika was handed part of a frame'
            self._pending = self._pending[consumed:]
            self.bytes_received += consumed  # as pika counts them
            self.log.append(('pika', _describe(frame)))


class FakeChannel:
    def __init__(self, number: int) -> None:
        self.channel_number = number
        self.is_open = True


def _describe(frame: Any) -> Any:
    if isinstance(frame, pika.frame.Method):
        return (frame.channel_number, frame.method.NAME)
    return (frame.channel_number, type(frame).__name__)


def deliver(channel: int, tag: int, body: bytes, frame_max: int = 131072, **props: Any) -> bytes:
    out = [
        pika.frame.Method(
            channel,
            pika.spec.Basic.Deliver(f'ctag-{channel}', tag, tag % 2 == 0, 'ex', f'rk-{tag}'),
        ).marshal(),
        pika.frame.Header(channel, len(body), pika.spec.BasicProperties(**props)).marshal(),
    ]
    for start in range(0, len(body), frame_max):
        out.append(pika.frame.Body(channel, body[start : start + frame_max]).marshal())
    return b''.join(out)


def method(channel: int, value: Any) -> bytes:
    return pika.frame.Method(channel, value).marshal()


STREAM = [
    pika.frame.Heartbeat().marshal(),
    deliver(2, 1, b'{"a": 1}', content_type='application/json', correlation_id='c1'),
    method(2, pika.spec.Basic.QosOk()),
    deliver(3, 7, b'for pika'),  # not registered
    deliver(2, 2, b'x' * 1000, frame_max=300, headers={'k': [1, 'two']}),  # 4 body frames
    deliver(2, 3, b'', content_type='text/plain'),  # no body frame at all
    method(1, pika.spec.Basic.Ack(5, multiple=True)),
    deliver(2, 4, b'last'),
]

EXPECTED = [
    ('pika', (0, 'Heartbeat')),
    ('deliver', (1, b'{"a": 1}', 'c1')),
    ('pika', (2, 'Basic.QosOk')),
    ('pika', (3, 'Basic.Deliver')),
    ('pika', (3, 'Header')),
    ('pika', (3, 'Body')),
    ('deliver', (2, b'x' * 1000, None)),
    ('deliver', (3, b'', None)),
    ('pika', (1, 'Basic.Ack')),
    ('deliver', (4, b'last', None)),
]


def reader_on(conn: FakeConnection, channel: FakeChannel) -> DeliveryReader:
    reader = DeliveryReader(_pika.Wire.of(conn))

    def handler(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        assert ch is channel and method.consumer_tag == 'ctag-2'
        assert method.redelivered == (method.delivery_tag % 2 == 0)
        assert (method.exchange, method.routing_key) == ('ex', f'rk-{method.delivery_tag}')
        if method.delivery_tag == 2:
            assert properties.headers == {'k': [1, 'two']}
        conn.log.append(('deliver', (method.delivery_tag, body, properties.correlation_id)))

    reader.register(channel, handler)
    return reader


def feed(reader: DeliveryReader, data: bytes, sizes: List[int]) -> None:
    pos = 0
    for size in sizes:
        reader._on_data(data[pos : pos + size])
        pos += size
    assert pos >= len(data)


def test_all_at_once_deliveries_are_read_here_and_the_rest_reaches_pika_in_order() -> None:
    conn = FakeConnection()
    reader = reader_on(conn, FakeChannel(2))
    data = b''.join(STREAM)
    reader._on_data(data)
    assert conn.log == EXPECTED
    assert reader.fast == 4
    assert conn.bytes_received == len(data)  # the heartbeat checker sees the traffic


@pytest.mark.parametrize('seed', range(20))
def test_any_split_of_the_input_gives_the_same_events(seed: int) -> None:
    data = b''.join(STREAM)
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < len(data):
        sizes.append(rng.choice([1, 2, 3, 7, 8, 11, 64, 300, 4096]))
    conn = FakeConnection()
    feed(reader_on(conn, FakeChannel(2)), data, sizes)
    assert conn.log == EXPECTED


def test_byte_by_byte() -> None:
    data = b''.join(STREAM)
    conn = FakeConnection()
    feed(reader_on(conn, FakeChannel(2)), data, [1] * len(data))
    assert conn.log == EXPECTED


def test_a_partial_frame_pika_already_held_is_taken_over() -> None:
    data = b''.join(STREAM)
    conn = FakeConnection(partial=data[:5])
    reader = reader_on(conn, FakeChannel(2))
    assert conn._frame_buffer == b''
    reader._on_data(data[5:])
    assert conn.log == EXPECTED


def test_a_delivery_whose_content_frames_do_not_follow_it_at_once_is_assembled() -> None:
    # Another channel's frames between a delivery's method and header frames: AMQP allows it.
    interleaved = (
        method(2, pika.spec.Basic.Deliver('ctag-2', 9, False, 'ex', 'rk-9'))
        + pika.frame.Header(5, 1, pika.spec.BasicProperties()).marshal()
        + pika.frame.Body(5, b'z').marshal()
        + pika.frame.Header(2, 1, pika.spec.BasicProperties()).marshal()
        + pika.frame.Body(2, b'y').marshal()
    )
    conn = FakeConnection()
    reader_on(conn, FakeChannel(2))._on_data(interleaved + STREAM[7])
    assert conn.log == [
        ('pika', (5, 'Header')),
        ('pika', (5, 'Body')),
        ('deliver', (9, b'y', None)),
        ('deliver', (4, b'last', None)),
    ]


def test_after_unregister_or_close_deliveries_are_not_handled_here() -> None:
    conn = FakeConnection()
    channel = FakeChannel(2)
    reader = reader_on(conn, channel)
    channel.is_open = False  # closing: its deliveries are dropped
    reader._on_data(STREAM[1])
    assert conn.log == []
    reader.unregister(channel)  # gone: pika reads its frames again
    reader._on_data(STREAM[7])
    assert [e[1][1] for e in conn.log] == ['Basic.Deliver', 'Header', 'Body']


def test_frames_after_pika_closed_the_connection_are_not_handed_on() -> None:
    class ClosingConnection(FakeConnection):
        def _on_data_available(self, data: bytes) -> None:
            super()._on_data_available(data)
            self.is_closed = True  # e.g. a Connection.Close was in there

    conn = ClosingConnection()
    reader_on(conn, FakeChannel(2))._on_data(STREAM[2] + STREAM[1] + STREAM[6])
    assert conn.log == [('pika', (2, 'Basic.QosOk'))]


def test_confirms_of_a_registered_publish_channel_are_read_here_in_order() -> None:
    conn = FakeConnection()
    reader = DeliveryReader(_pika.Wire.of(conn))
    reader.register_confirms(
        FakeChannel(1),
        lambda tag, multiple, nack: conn.log.append(('confirm', (tag, multiple, nack))),
    )
    returned = (
        method(1, pika.spec.Basic.Return(312, 'NO_ROUTE', '', 'q'))
        + pika.frame.Header(1, 1, pika.spec.BasicProperties()).marshal()
        + pika.frame.Body(1, b'r').marshal()
    )
    data = (
        method(1, pika.spec.Basic.Ack(1, multiple=False))
        + returned
        + method(1, pika.spec.Basic.Ack(3, multiple=True))
        + method(1, pika.spec.Basic.Nack(4, multiple=False, requeue=False))
        + method(2, pika.spec.Basic.Ack(9, multiple=False))
    )  # not registered
    feed(reader, data, [5] * (len(data) // 5 + 1))
    assert conn.log == [
        ('confirm', (1, False, False)),
        ('pika', (1, 'Basic.Return')),
        ('pika', (1, 'Header')),
        ('pika', (1, 'Body')),  # before the ack after it
        ('confirm', (3, True, False)),
        ('confirm', (4, False, True)),
        ('pika', (2, 'Basic.Ack')),
    ]


# ---------------------------------------------------------------- deliveries spanning reads
def frames_of(channel: int, tag: int, body: bytes, frame_max: int, **props: Any) -> List[bytes]:
    """A delivery's frames, one bytes each: method, header, body frames."""
    data = deliver(channel, tag, body, frame_max, **props)
    out, pos = [], 0
    while pos < len(data):
        size = 8 + int.from_bytes(data[pos + 3 : pos + 7], 'big')
        out.append(data[pos : pos + size])
        pos += size
    return out


def logging_reader(conn: FakeConnection, *channels: FakeChannel) -> DeliveryReader:
    reader = DeliveryReader(_pika.Wire.of(conn))
    for channel in channels:
        reader.register(
            channel,
            lambda ch, m, p, body: conn.log.append(
                ('deliver', (ch.channel_number, m.delivery_tag, body, p.correlation_id))
            ),
        )
    return reader


BIG = bytes(range(256)) * 4096  # 1 MiB holding every byte value
HEARTBEAT = pika.frame.Heartbeat().marshal()


def test_a_large_delivery_read_4_kb_at_a_time_is_parsed_once_and_never_buffered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parses: List[int] = []
    real_parse = _deliveries._parse_delivery
    monkeypatch.setattr(
        _deliveries, '_parse_delivery', lambda *args: parses.append(1) or real_parse(*args)
    )
    data = HEARTBEAT + deliver(2, 11, BIG, 131064, correlation_id='big') + deliver(2, 12, b's')
    conn = FakeConnection()
    reader = logging_reader(conn, FakeChannel(2))
    kept = []
    for pos in range(0, len(data), 4096):
        reader._on_data(data[pos : pos + 4096])
        kept.append(len(reader._buf))
        # every byte read counts as received as soon as it is consumed
        assert conn.bytes_received + len(reader._buf) == min(pos + 4096, len(data))
    assert conn.log == [
        ('pika', (0, 'Heartbeat')),
        ('deliver', (2, 11, BIG, 'big')),
        ('deliver', (2, 12, b's', None)),
    ]
    assert type(conn.log[1][1][2]) is bytes
    assert len(parses) == 2  # once per delivery, not once per read
    assert max(kept) < 64  # at most a frame header or a header frame


# Frames of a delivery on channel 2 with others between them: pika's (heartbeat, channel 3),
# a confirm of the registered publish channel 1, a delivery of the registered channel 4
# (itself interleaved) and a whole one of the registered channel 5.
D2 = frames_of(2, 21, b'a' * 300 + b'b' * 300 + b'c' * 7, 300, correlation_id='two')
D4 = frames_of(4, 41, b'four' * 100, 150)
INTERLEAVED = [
    D2[0],
    HEARTBEAT,
    D2[1],
    D2[2],
    deliver(3, 31, b'pika'),
    D4[0],
    D4[1],
    D2[3],
    method(1, pika.spec.Basic.Ack(5, multiple=False)),
    D4[2],
    deliver(5, 51, b'whole'),
    D4[3],
    D2[4],
    D4[4],
]
INTERLEAVED_EVENTS = [
    ('pika', (0, 'Heartbeat')),
    ('pika', (3, 'Basic.Deliver')),
    ('pika', (3, 'Header')),
    ('pika', (3, 'Body')),
    ('confirm', (5, False, False)),
    ('deliver', (5, 51, b'whole', None)),
    ('deliver', (2, 21, b'a' * 300 + b'b' * 300 + b'c' * 7, 'two')),
    ('deliver', (4, 41, b'four' * 100, None)),
]


def interleaved_reader(conn: FakeConnection) -> DeliveryReader:
    reader = logging_reader(conn, FakeChannel(2), FakeChannel(4), FakeChannel(5))
    reader.register_confirms(
        FakeChannel(1),
        lambda tag, multiple, nack: conn.log.append(('confirm', (tag, multiple, nack))),
    )
    return reader


@pytest.mark.parametrize('seed', range(20))
def test_frames_of_other_channels_between_content_frames_are_handled_in_order(seed: int) -> None:
    data = b''.join(INTERLEAVED)
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < len(data):
        sizes.append(rng.choice([1, 2, 7, 8, 9, 40, 150, 301, 4096]))
    conn = FakeConnection()
    reader = interleaved_reader(conn)
    fed = 0
    for size in sizes:
        reader._on_data(data[fed : fed + size])
        fed = min(fed + size, len(data))
        assert conn.bytes_received + len(reader._buf) == fed
    assert conn.log == INTERLEAVED_EVENTS
    assert reader._assembling == {} and reader._stream is None


def test_interleaved_frames_byte_by_byte_and_at_every_two_way_split() -> None:
    data = b''.join(INTERLEAVED)
    for sizes in [[1] * len(data)] + [[cut, len(data)] for cut in range(1, len(data))]:
        conn = FakeConnection()
        feed(interleaved_reader(conn), data, sizes)
        assert conn.log == INTERLEAVED_EVENTS, sizes[:2]


def test_frames_behind_a_partial_delivery_reach_pika_before_the_delivery_completes() -> None:
    big = frames_of(2, 11, BIG, 131064)
    conn = FakeConnection()
    reader = logging_reader(conn, FakeChannel(2))
    reader._on_data(big[0] + big[1] + big[2][:5000])
    reader._on_data(big[2][5000:] + HEARTBEAT + big[3][:100])
    assert conn.log == [('pika', (0, 'Heartbeat'))]
    reader._on_data(big[3][100:] + b''.join(big[4:]))
    assert conn.log == [('pika', (0, 'Heartbeat')), ('deliver', (2, 11, BIG, None))]


@pytest.mark.parametrize('cut', [None, 20, 40])
def test_a_body_longer_than_its_header_says_raises_pikas_error(cut: Optional[int]) -> None:
    data = (
        method(2, pika.spec.Basic.Deliver('ctag-2', 9, False, 'ex', 'rk'))
        + pika.frame.Header(2, 3, pika.spec.BasicProperties()).marshal()
        + pika.frame.Body(2, b'12345').marshal()
    )
    conn = FakeConnection()
    reader = logging_reader(conn, FakeChannel(2))
    with pytest.raises(pika.exceptions.BodyTooLongError):
        for part in [data] if cut is None else [data[:cut], data[cut:]]:
            reader._on_data(part)
    assert conn.log == []


def test_a_bad_frame_end_inside_a_body_read_in_pieces_raises_pikas_error() -> None:
    big = frames_of(2, 11, BIG, 131064)
    bad = big[2][:-1] + b'\x00'
    conn = FakeConnection()
    reader = logging_reader(conn, FakeChannel(2))
    reader._on_data(big[0] + big[1] + bad[:1000])
    with pytest.raises(pika.exceptions.InvalidFrameError):
        reader._on_data(bad[1000:])


def test_a_method_frame_before_a_delivery_is_complete_raises_pikas_error() -> None:
    big = frames_of(2, 11, BIG, 131064)
    conn = FakeConnection()
    reader = logging_reader(conn, FakeChannel(2))
    reader._on_data(big[0] + big[1] + big[2])
    with pytest.raises(pika.exceptions.UnexpectedFrameError):
        reader._on_data(HEARTBEAT + method(2, pika.spec.Basic.QosOk()))
    assert conn.log == [('pika', (0, 'Heartbeat'))]  # what came before it went on


def test_a_delivery_being_assembled_when_its_channel_goes_is_read_to_its_end_and_dropped() -> None:
    big = frames_of(2, 11, BIG, 131064)
    conn = FakeConnection()
    channel = FakeChannel(2)
    reader = logging_reader(conn, channel)
    reader._on_data(big[0] + big[1] + big[2][:100])
    reader.unregister(channel)
    reader._on_data(b''.join(big)[len(big[0] + big[1]) + 100 :] + STREAM[7])
    assert conn.log == [
        ('pika', (2, 'Basic.Deliver')),
        ('pika', (2, 'Header')),
        ('pika', (2, 'Body')),
    ]  # the later one: pika's again


@pytest.mark.parametrize('big', [False, True])
def test_a_delivery_whose_handler_raised_is_not_handed_on_again(big: bool) -> None:
    body = BIG if big else b'x'
    first = deliver(2, 1, body, 131064)
    conn = FakeConnection()
    reader = DeliveryReader(_pika.Wire.of(conn))
    calls: List[int] = []

    def handler(ch: Any, m: Any, p: Any, got: bytes) -> None:
        calls.append(m.delivery_tag)
        if m.delivery_tag == 1:
            raise RuntimeError('a bug in a handler')

    reader.register(FakeChannel(2), handler)
    with pytest.raises(RuntimeError):
        for pos in range(0, len(first), 4096):
            reader._on_data(first[pos : pos + 4096])
    reader._on_data(deliver(2, 2, b'next'))
    assert calls == [1, 2]


# ------------------------------------------------------------------ properties
@pytest.mark.parametrize(
    'properties',
    [
        pika.spec.BasicProperties(),
        pika.spec.BasicProperties(
            content_type='application/json',
            content_encoding='utf-8',
            headers={},
            delivery_mode=1,
            priority=0,
            correlation_id='1c6e0b2a-8f57-4b1e-9bd5-3c4c7c0e7f0a',
        ),
        pika.spec.BasicProperties(
            content_type='t',
            content_encoding='e',
            headers={'k': [1, 'v', {'n': None}], 'b': True},
            delivery_mode=2,
            priority=255,
            correlation_id='c',
            reply_to='r',
            expiration='60000',
            message_id='m',
            timestamp=1700000000,
            type='y',
            user_id='guest',
            app_id='a',
            cluster_id='x',
        ),
        pika.spec.BasicProperties(timestamp=0, app_id='only these two'),
        pika.spec.BasicProperties(correlation_id=b'\xff\xfe not utf-8', reply_to='q'),
        pika.spec.BasicProperties(content_type='\u00e9t\u00e9', headers={'x': 'y'}),
    ],
    ids=['none', 'celery-result', 'every-field', 'rare-only', 'not-utf8', 'non-ascii'],
)
def test_properties_decode_as_pika_decodes_them(properties: Any) -> None:
    encoded = b'\x00' * 5 + b''.join(properties.encode())
    ours = _deliveries.decode_properties(encoded, 5)
    theirs = pika.spec.BasicProperties().decode(encoded, 5)
    assert type(ours) is pika.spec.BasicProperties
    assert list(vars(ours).items()) == list(vars(theirs).items())


def test_a_property_list_cut_short_raises_as_pika_does() -> None:
    """The flags promise a delivery mode and a priority the buffer no longer holds: both
    decoders raise (the delivery is then read by pika's own frame reader)."""
    encoded = b''.join(pika.spec.BasicProperties(delivery_mode=2, priority=1).encode())[:-2]
    with pytest.raises(struct.error):
        pika.spec.BasicProperties().decode(encoded, 0)
    with pytest.raises(IndexError):
        _deliveries.decode_properties(encoded, 0)
