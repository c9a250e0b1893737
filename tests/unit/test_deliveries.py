"""DeliveryReader: deliveries of registered channels parsed ahead of pika, in order, from any
split of the input; everything else reaches pika whole and in order.

The connection is a fake recording what pika would have been handed (frames built with
pika's own marshalling); the real broker path is covered by every integration test that
receives a result.
"""
from __future__ import annotations

import random
from typing import Any, List, Tuple

import pika.frame
import pika.spec
import pytest

from pika_rpc._deliveries import DeliveryReader


class FakeConnection:
    """The attributes DeliveryReader uses of pika's ``SelectConnection``."""

    def __init__(self, partial: bytes = b'') -> None:
        self._frame_buffer = partial
        self.bytes_received = 0
        self.is_closed = False
        self.log: List[Tuple[str, Any]] = []
        self._pending = b''

    def _on_data_available(self, data: bytes) -> None:       # pika's frame reader
        self._pending += data
        while self._pending:
            consumed, frame = pika.frame.decode_frame(self._pending)
            assert frame is not None, 'pika was handed part of a frame'
            self._pending = self._pending[consumed:]
            self.log.append(('pika', _describe(frame)))


class FakeChannel:
    def __init__(self, number: int) -> None:
        self.channel_number = number
        self.is_open = True


def _describe(frame: Any) -> Any:
    if isinstance(frame, pika.frame.Method):
        return (frame.channel_number, frame.method.NAME)
    return (frame.channel_number, type(frame).__name__)


def deliver(channel: int, tag: int, body: bytes, frame_max: int = 131072,
            **props: Any) -> bytes:
    out = [pika.frame.Method(channel, pika.spec.Basic.Deliver(
               f'ctag-{channel}', tag, tag % 2 == 0, 'ex', f'rk-{tag}')).marshal(),
           pika.frame.Header(channel, len(body), pika.spec.BasicProperties(**props)).marshal()]
    for start in range(0, len(body), frame_max):
        out.append(pika.frame.Body(channel, body[start:start + frame_max]).marshal())
    return b''.join(out)


def method(channel: int, value: Any) -> bytes:
    return pika.frame.Method(channel, value).marshal()


STREAM = [
    pika.frame.Heartbeat().marshal(),
    deliver(2, 1, b'{"a": 1}', content_type='application/json', correlation_id='c1'),
    method(2, pika.spec.Basic.QosOk()),
    deliver(3, 7, b'for pika'),                                     # not registered
    deliver(2, 2, b'x' * 1000, frame_max=300, headers={'k': [1, 'two']}),  # 4 body frames
    deliver(2, 3, b'', content_type='text/plain'),                  # no body frame at all
    method(1, pika.spec.Basic.Ack(5, multiple=True)),
    deliver(2, 4, b'last'),
]

EXPECTED = [
    ('pika', (0, 'Heartbeat')),
    ('deliver', (1, b'{"a": 1}', 'c1')),
    ('pika', (2, 'Basic.QosOk')),
    ('pika', (3, 'Basic.Deliver')), ('pika', (3, 'Header')), ('pika', (3, 'Body')),
    ('deliver', (2, b'x' * 1000, None)),
    ('deliver', (3, b'', None)),
    ('pika', (1, 'Basic.Ack')),
    ('deliver', (4, b'last', None)),
]


def reader_on(conn: FakeConnection, channel: FakeChannel) -> DeliveryReader:
    reader = DeliveryReader(conn)

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
        reader._on_data(data[pos:pos + size])
        pos += size
    assert pos >= len(data)


def test_all_at_once_deliveries_are_read_here_and_the_rest_reaches_pika_in_order() -> None:
    conn = FakeConnection()
    reader = reader_on(conn, FakeChannel(2))
    data = b''.join(STREAM)
    reader._on_data(data)
    assert conn.log == EXPECTED
    assert reader.fast == 4
    fast_bytes = len(STREAM[1]) + len(STREAM[4]) + len(STREAM[5]) + len(STREAM[7])
    assert conn.bytes_received == fast_bytes       # the heartbeat checker sees the traffic


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


def test_a_delivery_whose_header_is_on_another_channel_is_left_to_pika() -> None:
    bad = (method(2, pika.spec.Basic.Deliver('ctag-2', 9, False, 'ex', 'rk-9'))
           + pika.frame.Header(5, 1, pika.spec.BasicProperties()).marshal()
           + pika.frame.Body(5, b'z').marshal())
    conn = FakeConnection()
    reader_on(conn, FakeChannel(2))._on_data(bad + STREAM[7])
    assert conn.log == [('pika', (2, 'Basic.Deliver')), ('pika', (5, 'Header')),
                        ('pika', (5, 'Body')), ('deliver', (4, b'last', None))]


def test_after_unregister_or_close_deliveries_are_not_handled_here() -> None:
    conn = FakeConnection()
    channel = FakeChannel(2)
    reader = reader_on(conn, channel)
    channel.is_open = False                       # closing: its deliveries are dropped
    reader._on_data(STREAM[1])
    assert conn.log == []
    reader.unregister(channel)                    # gone: pika reads its frames again
    reader._on_data(STREAM[7])
    assert [e[1][1] for e in conn.log] == ['Basic.Deliver', 'Header', 'Body']


def test_frames_after_pika_closed_the_connection_are_not_handed_on() -> None:
    class ClosingConnection(FakeConnection):
        def _on_data_available(self, data: bytes) -> None:
            super()._on_data_available(data)
            self.is_closed = True                 # e.g. a Connection.Close was in there
    conn = ClosingConnection()
    reader_on(conn, FakeChannel(2))._on_data(STREAM[2] + STREAM[1] + STREAM[6])
    assert conn.log == [('pika', (2, 'Basic.QosOk'))]


def test_confirms_of_a_registered_publish_channel_are_read_here_in_order() -> None:
    conn = FakeConnection()
    reader = DeliveryReader(conn)
    reader.register_confirms(FakeChannel(1), lambda tag, multiple, nack: conn.log.append(
        ('confirm', (tag, multiple, nack))))
    returned = (method(1, pika.spec.Basic.Return(312, 'NO_ROUTE', '', 'q'))
                + pika.frame.Header(1, 1, pika.spec.BasicProperties()).marshal()
                + pika.frame.Body(1, b'r').marshal())
    data = (method(1, pika.spec.Basic.Ack(1, multiple=False)) + returned
            + method(1, pika.spec.Basic.Ack(3, multiple=True))
            + method(1, pika.spec.Basic.Nack(4, multiple=False, requeue=False))
            + method(2, pika.spec.Basic.Ack(9, multiple=False)))        # not registered
    feed(reader, data, [5] * (len(data) // 5 + 1))
    assert conn.log == [('confirm', (1, False, False)),
                        ('pika', (1, 'Basic.Return')), ('pika', (1, 'Header')),
                        ('pika', (1, 'Body')),                  # before the ack after it
                        ('confirm', (3, True, False)), ('confirm', (4, False, True)),
                        ('pika', (2, 'Basic.Ack'))]
