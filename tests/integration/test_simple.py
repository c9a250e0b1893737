"""``SimpleQueue`` and ``SimpleBuffer`` (kombu's simple interface) against the real broker."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, List

import pytest

from pika_rpc import SimpleBuffer, SimpleQueue
from pika_rpc.connection import Connection
from pika_rpc.errors import ConnectionLost
from tests.helpers import eventually, list_queues

JOIN = 60.0


@pytest.fixture
def conn(amqp_url: str) -> Iterator[Connection]:
    c = Connection(amqp_url)
    yield c
    c.release()


def test_put_then_get_round_trips_body_type_and_headers(
    conn: Connection, names: Callable[[str], str]
) -> None:
    with conn.SimpleQueue(names('q')) as sq:
        assert isinstance(sq, SimpleQueue)
        sq.put({'Hello': 'World'}, headers={'k1': 'v1'})
        message = sq.get(timeout=JOIN)
        assert message.payload == {'Hello': 'World'}
        assert message.content_type == 'application/json'
        assert message.content_encoding == 'utf-8'
        assert message.headers == {'k1': 'v1'}
        message.ack()
        with pytest.raises(SimpleQueue.Empty) as info:
            sq.get_nowait()
        assert isinstance(info.value, queue.Empty)  # kombu raises queue.Empty
        with pytest.raises(sq.Empty):
            sq.get(block=False)


def test_get_nowait_returns_a_message_put_just_before(
    conn: Connection, names: Callable[[str], str]
) -> None:
    with conn.SimpleQueue(names('q')) as sq:
        sq.put(['first'])
        message = sq.get_nowait()  # one basic.get: the confirmed message is in the queue
        assert message.payload == ['first']
        message.reject(requeue=True)
        again = sq.get_nowait()
        assert again.payload == ['first'] and again.delivery_info['redelivered']
        again.ack()
        with pytest.raises(sq.Empty):
            sq.get_nowait()


def test_get_waits_for_a_message_put_later_by_another_thread(
    conn: Connection, names: Callable[[str], str]
) -> None:
    with conn.SimpleQueue(names('q')) as sq:
        with pytest.raises(sq.Empty):
            sq.get(timeout=0.1)  # subscribes; nothing there yet
        putter = threading.Thread(target=sq.put, args=(['later'],))
        putter.start()
        message = sq.get(timeout=JOIN)
        putter.join(JOIN)
        assert message.payload == ['later']
        message.ack()


def test_the_local_buffer_holds_at_most_buffer_max_and_qsize_counts_it(
    conn: Connection, names: Callable[[str], str]
) -> None:
    with conn.SimpleQueue(names('q'), buffer_max=5) as sq:
        for i in range(20):
            sq.put(i)
        assert sq.qsize() == 20 and len(sq) == 20
        first = sq.get(timeout=JOIN)  # subscribes: the broker pushes 5 (the window)
        assert first.payload == 0
        eventually(lambda: sq.qsize() == 19)  # 15 ready + 4 pushed here, 1 taken
        assert len(sq._buffer) == 4  # bounded by the prefetch window, not by the queue
        first.ack()
        got = []
        for _ in range(19):  # each ack lets the broker push one more (the window)
            message = sq.get(timeout=JOIN)
            message.ack()
            got.append(message.payload)
        assert got == list(range(1, 20))
        assert sq.qsize() == 0


def test_clear_drops_ready_and_pushed_messages(
    conn: Connection, names: Callable[[str], str]
) -> None:
    with conn.SimpleQueue(names('q'), buffer_max=3) as sq:
        for i in range(10):
            sq.put(i)
        sq.get(timeout=JOIN).ack()  # subscribes
        eventually(lambda: len(sq._buffer) == 3)
        assert sq.clear() == 9  # 6 ready + 3 pushed here
        assert sq.qsize() == 0
        with pytest.raises(sq.Empty):
            sq.get(timeout=0.1)


def test_messages_not_acked_go_back_to_the_queue_on_close(
    conn: Connection, names: Callable[[str], str]
) -> None:
    name = names('q')
    with conn.SimpleQueue(name) as sq:
        sq.put(['a'])
        sq.put(['b'])
        assert sq.get(timeout=JOIN).payload == ['a']  # taken, never acked
    with conn.SimpleQueue(name) as sq:
        assert sorted(sq.get(timeout=JOIN).payload for _ in range(2)) == [['a'], ['b']]


def test_no_ack_messages_are_acked_when_taken(
    conn: Connection, names: Callable[[str], str]
) -> None:
    name = names('q')
    with conn.SimpleQueue(name, no_ack=True) as sq:
        sq.put(['a'])
        message = sq.get(timeout=JOIN)
        message.ack()  # nothing to do: no MessageStateError
        message.ack()
        assert sq.qsize() == 0
    with conn.SimpleQueue(name) as sq:  # nothing came back with the close
        assert sq.qsize() == 0


def test_simple_buffer_queue_is_exclusive_auto_deleted_and_messages_transient(
    conn: Connection, names: Callable[[str], str]
) -> None:
    name = names('buf')
    buf = conn.SimpleBuffer(name, queue_opts={'max_priority': 10})
    assert isinstance(buf, SimpleBuffer) and buf.no_ack
    info = list_queues()[name]
    assert (info.durable, info.exclusive, info.auto_delete) == (False, True, True)
    assert info.arguments.get('x-max-priority') == 10
    buf.put({'n': 1}, priority=1)
    buf.put({'n': 2}, priority=9)
    first = buf.get(timeout=JOIN)
    assert first.payload == {'n': 2}  # the priority queue sorted them before the subscribe
    assert first.properties['delivery_mode'] == 1  # transient
    first.ack()
    assert buf.get(timeout=JOIN).payload == {'n': 1}
    buf.close()
    eventually(lambda: name not in list_queues())  # auto-deleted with its consumer


def test_get_raises_connection_lost_when_the_link_gives_up_while_waiting(
    fault_proxy: Any, amqp_url: str, names: Callable[[str], str]
) -> None:
    conn = Connection(fault_proxy.url(amqp_url), transport_options={'max_retries': 0})
    try:
        sq = conn.SimpleQueue(names('q'))
        with pytest.raises(sq.Empty):
            sq.get(timeout=0.1)  # subscribed
        outcome: List[BaseException] = []

        def wait() -> None:
            try:
                sq.get(timeout=JOIN)
            except BaseException as exc:  # noqa: B036 - reported to the test
                outcome.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        fault_proxy.refuse(True)
        fault_proxy.cut()
        waiter.join(JOIN)
        assert not waiter.is_alive()
        assert isinstance(outcome[0], ConnectionLost), outcome
        fault_proxy.refuse(False)
        sq.put(['after'])  # the next use connects again; the subscription is renewed
        assert sq.get(timeout=JOIN).payload == ['after']
        sq.close()
    finally:
        conn.release()
