"""What a Consumer callback raises comes out of ``Connection.drain_events()``, as with kombu.

Callbacks run on the callback thread; the exception they raise is kept and raised, as the
same object, by the connection's next ``drain_events()``. Its message stays unacknowledged,
the connection and the subscription stay up, and later messages are still handled. Checked
against the real broker: a raw channel sees the unacked message back in the queue after the
consumer is cancelled.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, List

import pytest

from pika_rpc.entities import Message, Queue
from pika_rpc.errors import TimeoutError
from pika_rpc.messaging import Connection, Consumer, Producer

WAIT = 30.0


class Boom(Exception):
    pass


class Recorder:
    """A callback that acks good bodies and raises ``make_error(body)`` for the 'bad' ones;
    'hold' waits for ``release`` (the callback thread is serial: what came before is done)."""

    def __init__(self, make_error: Any = Boom) -> None:
        self.make_error = make_error
        self.seen: List[Any] = []
        self.raised: List[BaseException] = []
        self.release = threading.Event()
        self._changed = threading.Condition()

    def __call__(self, body: Any, message: Message) -> None:
        with self._changed:
            self.seen.append(body)
            self._changed.notify_all()
        if body == 'hold':
            self.release.wait(WAIT)
        if str(body).startswith('bad'):
            error = self.make_error(body)
            self.raised.append(error)
            raise error
        message.ack()

    def wait(self, n: int, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.seen) >= n, timeout)


def ready_count(raw_channel: Any, queue: str) -> int:
    return raw_channel.queue_declare(queue, passive=True).method.message_count


def test_drain_events_raises_the_callbacks_exception_and_its_message_stays_unacked(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    callback = Recorder()
    reconnects = conn.link.stats()['reconnects']
    consumer = Consumer(conn, [queue], callbacks=[callback])
    consumer.consume()
    producer = Producer(conn, routing_key=queue.name, serializer='json')
    producer.publish('bad')
    with pytest.raises(Boom) as info:
        conn.drain_events(timeout=WAIT)
    assert info.value is callback.raised[0] and info.value.args == ('bad',)
    producer.publish('good')  # the subscription goes on: no raise now
    conn.drain_events(timeout=WAIT)
    assert callback.seen == ['bad', 'good']
    assert consumer.consuming_from(queue) and conn.link.stats()['reconnects'] == reconnects
    consumer.cancel()
    assert ready_count(raw_channel, queue.name) == 1  # 'bad' was never acked: back


def test_only_the_first_exception_not_raised_yet_is_kept_and_later_messages_count(
    conn: Connection, names: Any, caplog: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    callback = Recorder()
    with caplog.at_level(logging.ERROR, logger='pika_rpc.messaging'):
        with Consumer(conn, [queue], callbacks=[callback]):
            producer = Producer(conn, routing_key=queue.name, serializer='json')
            for body in ('bad-1', 'bad-2', 'good', 'hold'):
                producer.publish(body)
            assert callback.wait(4)  # the first three are handled, 'hold' is not
            with pytest.raises(Boom) as info:
                conn.drain_events(timeout=WAIT)
            assert info.value is callback.raised[0]
            conn.drain_events(timeout=WAIT)  # 'bad-2' and 'good' were handled after it
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.05)
            callback.release.set()
            conn.drain_events(timeout=WAIT)  # 'hold'
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert logged == callback.raised and len(logged) == 2  # the second one is logged only


def test_a_system_exit_in_a_callback_is_raised_and_the_callback_thread_lives_on(
    conn: Connection, names: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    callback = Recorder(make_error=lambda body: SystemExit(3))
    with Consumer(conn, [queue], callbacks=[callback]):
        producer = Producer(conn, routing_key=queue.name, serializer='json')
        producer.publish('bad')
        with pytest.raises(SystemExit) as info:
            conn.drain_events(timeout=WAIT)
        assert info.value.code == 3
        producer.publish('good')
        conn.drain_events(timeout=WAIT)
    assert callback.seen == ['bad', 'good']


def test_a_raising_on_decode_error_is_raised_by_drain_events(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)

    def on_decode_error(message: Message, exc: BaseException) -> None:
        raise Boom('decode', type(exc).__name__)

    with Consumer(conn, [queue], callbacks=[lambda b, m: m.ack()], on_decode_error=on_decode_error):
        Producer(conn, routing_key=queue.name).publish(
            b'\x80', content_type='application/json', content_encoding='binary'
        )
        with pytest.raises(Boom) as info:
            conn.drain_events(timeout=WAIT)
    assert info.value.args == ('decode', 'DecodeError')
