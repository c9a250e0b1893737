"""tests.faultproxy.FaultProxy against the real broker, driven with raw pika.

What reached the broker is checked through ``raw_channel``, a direct connection that bypasses
the proxy. The frame scanner's handling of split reads is checked without a broker.
"""

from __future__ import annotations

import struct
import threading
from typing import Iterator, List

import pika
import pytest

from tests.faultproxy import _FrameScanner
from tests.helpers import eventually, list_queues, pika_parameters

QUEUE_ARGUMENTS = {'x-expires': 60_000}  # a leaked queue goes away by itself


@pytest.fixture
def queue(raw_channel, unique_name) -> Iterator[str]:
    """A durable queue declared straight on the broker, deleted afterwards."""
    raw_channel.queue_declare(unique_name, durable=True, arguments=QUEUE_ARGUMENTS)
    yield unique_name
    raw_channel.queue_delete(unique_name)


@pytest.fixture
def proxied(fault_proxy, amqp_url) -> Iterator[pika.BlockingConnection]:
    """A pika connection through the proxy (heartbeats off: tests decide when bytes flow)."""
    connection = pika.BlockingConnection(pika_parameters(fault_proxy.url(amqp_url), heartbeat=0))
    yield connection
    if connection.is_open:
        try:
            connection.close()
        except pika.exceptions.AMQPError:
            pass


def _message_count(raw_channel, queue: str) -> int:
    return raw_channel.queue_declare(queue, passive=True).method.message_count


def test_forwards_a_declare_a_publish_and_a_get(fault_proxy, proxied, unique_name):
    channel = proxied.channel()
    channel.queue_declare(unique_name, exclusive=True)  # gone with the connection
    channel.basic_publish('', unique_name, b'round trip')

    body = eventually(lambda: channel.basic_get(unique_name, auto_ack=True)[2])

    assert body == b'round trip'
    assert fault_proxy.connection_attempts == 1 and fault_proxy.active_connections == 1


def test_counts_each_basic_publish_passing_to_the_broker(fault_proxy, proxied, queue, raw_channel):
    channel = proxied.channel()
    for n in range(3):
        channel.basic_publish('', queue, b'message %d' % n)

    assert fault_proxy.wait_for(lambda: fault_proxy.publish_count == 3, timeout=10)

    def three_messages_listed():  # the broker-side fact, as rabbitmqctl sees it
        info = list_queues()[queue]
        assert info.messages == 3, info
        return info

    info = eventually(three_messages_listed)
    assert (info.durable, info.auto_delete, info.exclusive) == (True, False, False)
    assert info.arguments == QUEUE_ARGUMENTS
    assert fault_proxy.publish_count == 3


def test_cut_makes_the_next_pika_operation_fail(fault_proxy, proxied, unique_name):
    channel = proxied.channel()
    assert fault_proxy.active_connections == 1

    assert fault_proxy.cut() == 1

    with pytest.raises(pika.exceptions.AMQPConnectionError):
        channel.queue_declare(unique_name, exclusive=True)
    assert fault_proxy.wait_for(lambda: fault_proxy.active_connections == 0, timeout=10)
    assert fault_proxy.cut_count == 1


# pika 1.4 reports a reset that lands before its getpeername() check as a bare ValueError
# ("Expected connected socket, but getpeername() failed"), otherwise as AMQPConnectionError.
CONNECT_FAILED = (pika.exceptions.AMQPConnectionError, ValueError)


def test_refuse_makes_connect_fail_and_counts_every_attempt(fault_proxy, amqp_url):
    fault_proxy.refuse(True)
    params = pika_parameters(fault_proxy.url(amqp_url), connection_attempts=1)

    for _ in range(3):
        with pytest.raises(CONNECT_FAILED):
            pika.BlockingConnection(params)
    assert fault_proxy.connection_attempts == 3
    assert fault_proxy.active_connections == 0

    fault_proxy.refuse(False)
    connection = pika.BlockingConnection(params)
    try:
        assert connection.is_open and fault_proxy.connection_attempts == 4
    finally:
        connection.close()


def test_cut_at_next_publish_drops_the_connection_before_the_broker_gets_the_message(
    fault_proxy, proxied, queue, raw_channel
):
    channel = proxied.channel()
    channel.confirm_delivery()  # so basic_publish waits for the broker's answer
    channel.queue_declare(queue, passive=True)  # the handshake and set-up went through
    fault_proxy.cut_at_next_publish()

    with pytest.raises(pika.exceptions.AMQPConnectionError):
        channel.basic_publish('', queue, b'must never arrive')

    assert fault_proxy.wait_for(lambda: fault_proxy.cut_count == 1, timeout=10)
    assert fault_proxy.publish_count == 0
    # A confirmed marker sent straight to the broker after the cut: had the proxy passed the
    # first message on, it would be in the queue ahead of the marker.
    raw_channel.confirm_delivery()
    raw_channel.basic_publish('', queue, b'marker')
    assert _message_count(raw_channel, queue) == 1
    assert raw_channel.basic_get(queue, auto_ack=True)[2] == b'marker'


def test_cut_at_next_method_drops_the_connection_at_the_named_method_and_no_earlier(
    fault_proxy, proxied, queue, raw_channel
):
    channel = proxied.channel()
    fault_proxy.cut_at_next_method(85, 10)  # confirm.select
    channel.basic_publish('', queue, b'before the cut')  # other methods pass
    channel.queue_declare(queue, passive=True)  # a round trip: the publish went first
    assert fault_proxy.cut_count == 0

    with pytest.raises(pika.exceptions.AMQPConnectionError):
        channel.confirm_delivery()

    assert fault_proxy.wait_for(lambda: fault_proxy.cut_count == 1, timeout=10)
    assert fault_proxy.publish_count == 1
    assert _message_count(raw_channel, queue) == 1


def test_pause_stalls_a_confirmed_publish_until_resume(fault_proxy, proxied, queue, raw_channel):
    channel = proxied.channel()
    channel.confirm_delivery()
    confirmed = threading.Event()
    errors: List[BaseException] = []

    def publish() -> None:
        try:
            channel.basic_publish('', queue, b'held back')
            confirmed.set()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    fault_proxy.pause()
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    assert not confirmed.wait(0.5), 'the publish was confirmed while the proxy was paused'
    assert _message_count(raw_channel, queue) == 0

    fault_proxy.resume()
    assert confirmed.wait(10), errors
    thread.join(10)
    assert not thread.is_alive() and errors == []
    assert fault_proxy.publish_count == 1
    assert eventually(lambda: _message_count(raw_channel, queue) == 1)


def _frame(frame_type: int, payload: bytes, channel: int = 1) -> bytes:
    return struct.pack('>BHI', frame_type, channel, len(payload)) + payload + b'\xce'


def test_frame_scanner_finds_a_publish_split_across_reads_byte_by_byte():
    """No broker: feed the scanner one byte at a time; frames come out whole, in order."""
    header = b'AMQP\x00\x00\x09\x01'
    declare = _frame(1, struct.pack('>HH', 50, 10) + b'\x00\x00\x01q')
    publish = _frame(1, struct.pack('>HH', 60, 40) + b'\x00\x00\x00\x01q\x00')
    content_header = _frame(2, struct.pack('>HHQH', 60, 0, 2, 0))
    body = _frame(3, b'hi')
    stream = header + declare + publish + content_header + body
    scanner = _FrameScanner()

    units = []
    for i in range(len(stream)):
        units.extend(scanner.feed(stream[i : i + 1]))

    assert units == [
        (header, False),
        (declare, False),
        (publish, True),
        (content_header, False),
        (body, False),
    ]
    assert scanner.pending == 0


def test_frame_scanner_passes_a_stream_that_is_not_amqp_through_untouched():
    scanner = _FrameScanner()
    assert scanner.feed(b'GET / HTTP/1.1\r\n') == [(b'GET / HTTP/1.1\r\n', False)]
    assert scanner.feed(b'Host: x\r\n') == [(b'Host: x\r\n', False)]
