"""Error paths of Connection, Producer, Consumer, Exchange and Queue on the real broker.

Each refusal is checked for its type and message, and for what must survive it: the link
stays OPEN with no reconnect, and later messages still arrive (the I/O thread is alive).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List

import pytest

from pika_rpc._link import Link
from pika_rpc.entities import Exchange, Message, MessageStateError, NotBoundError, Queue
from pika_rpc.errors import (
    BrokerRefused,
    ContentDisallowed,
    DecodeError,
    NotFound,
    NotSupportedByRabbitMQ,
    PikaRPCError,
    PreconditionFailed,
)
from pika_rpc.messaging import Connection, Consumer, Producer

WAIT = 30.0


class Events:
    """Thread-safe record of callback calls; ``wait(n)`` blocks until n were recorded."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self._changed = threading.Condition()

    def add(self, *call: Any) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def wait(self, n: int = 1, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.calls) >= n, timeout)


def assert_link_healthy(conn: Connection, reconnects: int) -> None:
    """No reconnect happened and a round trip to the broker still works."""
    stats = conn.link.stats()
    assert stats.get('reconnects', 0) == reconnects and stats['state'] == 'OPEN', stats
    assert conn.control('declare_exchange', exchange='amq.direct', passive=True) is None


def ready_count(raw_channel: Any, queue: str) -> int:
    return raw_channel.queue_declare(queue, passive=True).method.message_count


# ------------------------------------------------------------------ broker refusals


def test_406_precondition_failed_names_the_fix_and_the_link_keeps_working(
    conn: Connection, names: Any
) -> None:
    name = names('q')
    Queue(name, expires=60).declare(channel=conn)
    reconnects = conn.link.stats().get('reconnects', 0)
    with pytest.raises(PreconditionFailed, match='406') as info:
        Queue(name, expires=120).declare(channel=conn)
    assert 'same arguments' in str(info.value) and 'x-expires' in str(info.value)
    assert_link_healthy(conn, reconnects)
    got = Events()
    with Consumer(conn, [Queue(name, expires=60)], callbacks=[lambda b, m: (m.ack(), got.add(b))]):
        Producer(conn, routing_key=name).publish({'after': 406})
        assert got.wait(1)
    assert got.calls == [({'after': 406},)]


def test_consuming_a_missing_queue_without_declaring_it_is_a_404(
    conn: Connection, names: Any
) -> None:
    reconnects = conn.link.stats().get('reconnects', 0)
    consumer = Consumer(conn, [Queue(names('q'), expires=60)], auto_declare=False, callbacks=[])
    with pytest.raises(NotFound) as info:
        consumer.consume()
    assert info.value.reply_code == 404 and isinstance(info.value, BrokerRefused)
    assert not consumer.consuming_from(names('q'))
    assert_link_healthy(conn, reconnects)


def test_publish_to_a_missing_exchange_names_the_fix_without_a_reconnect(
    conn: Connection, names: Any
) -> None:
    reconnects = conn.link.stats().get('reconnects', 0)
    missing = Exchange(names('ex'), channel=conn)
    with pytest.raises(PikaRPCError, match='declare'):
        Producer(conn, exchange=missing.name).publish({'x': 1})
    with pytest.raises(PikaRPCError, match='does not exist'):
        missing.publish(Message(b'{}', content_type='application/json'))
    assert_link_healthy(conn, reconnects)


def test_passive_declare_of_a_missing_queue_is_a_404(conn: Connection, names: Any) -> None:
    with pytest.raises(NotFound) as info:
        Queue(names('q')).queue_declare(passive=True, channel=conn)
    assert info.value.reply_code == 404 and 'NOT_FOUND' in info.value.reply_text


# ------------------------------------------------------------------ refused locally


@pytest.mark.parametrize(
    'call',
    [
        pytest.param(lambda c, q: c.flow(False), id='flow'),
        pytest.param(lambda c, q: c.recover(requeue=False), id='recover-no-requeue'),
        pytest.param(lambda c, q: c.qos(prefetch_size=1024), id='qos-prefetch-size'),
        pytest.param(
            lambda c, q: Producer(c.connection).publish(
                {'a': 1}, routing_key=q.name, immediate=True
            ),
            id='immediate',
        ),
        pytest.param(
            lambda c, q: Exchange('amq.direct', channel=c.connection).publish(
                b'x', routing_key=q.name, immediate=True
            ),
            id='exchange-immediate',
        ),
        pytest.param(
            lambda c, q: c.connection.basic_publish(Message(b'x'), immediate=True),
            id='basic-publish-immediate',
        ),
    ],
)
def test_what_rabbitmq_answers_with_540_is_refused_locally(
    conn: Connection, names: Any, call: Callable[[Consumer, Queue], Any]
) -> None:
    queue = Queue(names('q'), expires=60)
    with Consumer(conn, [queue], callbacks=[lambda b, m: m.ack()]) as consumer:
        reconnects = conn.link.stats().get('reconnects', 0)
        commands = conn.link.stats()['commands']
        with pytest.raises(NotSupportedByRabbitMQ, match='RabbitMQ'):
            call(consumer, queue)
        assert conn.link.stats()['commands'] == commands  # nothing reached the broker
        assert consumer.consuming_from(queue)
        assert_link_healthy(conn, reconnects)
    assert isinstance(NotSupportedByRabbitMQ('x'), NotImplementedError)


def test_non_durable_non_exclusive_queue_is_refused_before_any_command(
    conn: Connection, names: Any
) -> None:
    commands = conn.link.stats().get('commands', 0)
    with pytest.raises(ValueError, match='neither durable nor exclusive'):
        Queue(names('q'), durable=False).declare(channel=conn)
    with pytest.raises(ValueError):
        Consumer(conn, [Queue(names('q2'), durable=False)])
    assert conn.link.stats().get('commands', 0) == commands


@pytest.mark.parametrize(
    'kwargs, error',
    [
        ({'headers': {'ratio': 0.5}}, TypeError),  # pika cannot encode a float header
        ({'headers': {'o': object()}}, TypeError),
        ({'correlation_id': 42}, TypeError),
        ({'priority': 256}, ValueError),
        ({'user_id': 'someone-else'}, ValueError),  # the broker would close the channel
        ({'colour': 'red'}, TypeError),
        ({'expiration': -1}, ValueError),
    ],
)
def test_properties_the_broker_or_pika_would_choke_on_are_refused_before_publishing(
    conn: Connection, names: Any, kwargs: dict, error: type
) -> None:
    producer = Producer(conn, routing_key=names('q'))
    producer.publish({'warm': 'up'})
    stats = conn.link.stats()
    with pytest.raises(error):
        producer.publish({'a': 1}, **kwargs)
    assert conn.link.stats()['commands'] == stats['commands']
    assert_link_healthy(conn, stats.get('reconnects', 0))
    producer.publish({'still': 'works'})


def test_unbound_entities_raise_not_bound_naming_the_fix() -> None:
    with pytest.raises(NotBoundError, match='bind'):
        Queue('q').purge()
    with pytest.raises(NotBoundError):
        Exchange('e').publish(b'x')


def test_unserialized_body_with_content_type_must_be_bytes_or_str(conn: Connection) -> None:
    with pytest.raises(TypeError, match='bytes or str'):
        Producer(conn).publish({'a': 1}, content_type='application/json')


def test_unknown_serializer_and_compression_are_refused(conn: Connection) -> None:
    with pytest.raises(ValueError, match='serializer'):
        Producer(conn).publish({'a': 1}, serializer='nope')
    with pytest.raises(ValueError, match='compression'):
        Producer(conn).publish({'a': 1}, compression='snappy')


# ------------------------------------------------------------------ bad messages


def test_undecodable_json_goes_to_on_decode_error_and_later_messages_arrive(
    conn: Connection, names: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    errors, good = Events(), Events()

    def on_decode_error(message: Message, exc: BaseException) -> None:
        errors.add(message.body, exc, threading.current_thread().name)
        message.ack()

    with Consumer(
        conn,
        [queue],
        callbacks=[lambda b, m: (m.ack(), good.add(b))],
        on_decode_error=on_decode_error,
    ):
        producer = Producer(conn, routing_key=queue.name)
        producer.publish(b'{"not": json', content_type='application/json', content_encoding='utf-8')
        producer.publish({'fine': True})
        assert errors.wait(1) and good.wait(1)
    body, exc, thread = errors.calls[0]
    assert body == b'{"not": json' and isinstance(exc, DecodeError)
    assert thread.startswith('pika-rpc-callbacks')
    assert good.calls == [({'fine': True},)]
    assert conn.link.state == 'OPEN'


def test_disallowed_content_type_gives_content_disallowed_to_on_decode_error(
    conn: Connection, names: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    errors = Events()
    with Consumer(
        conn, [queue], callbacks=[], on_decode_error=lambda m, e: (m.ack(), errors.add(e))
    ):
        Producer(conn, routing_key=queue.name).publish(
            b'\x80\x04\x95\x00.',
            content_type='application/x-python-serialize',
            content_encoding='binary',
        )
        assert errors.wait(1)
    assert isinstance(errors.calls[0][0], ContentDisallowed)
    assert 'application/x-python-serialize' in str(errors.calls[0][0])


def test_without_on_decode_error_a_bad_message_is_logged_and_rejected(
    conn: Connection, names: Any, raw_channel: Any, caplog: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    good = Events()
    consumer = Consumer(conn, [queue], callbacks=[lambda b, m: (m.ack(), good.add(b))])
    with caplog.at_level(logging.ERROR, logger='pika_rpc.messaging'):
        with consumer:
            producer = Producer(conn, routing_key=queue.name)
            producer.publish(b'garbage', content_type='application/json')
            producer.publish({'next': 1})
            assert good.wait(1)  # one callback thread: the bad one was handled first
    # Cancelling returns unacked messages to the queue: the rejected one is gone for good.
    assert ready_count(raw_channel, queue.name) == 0
    assert any("can't decode" in r.getMessage() for r in caplog.records)


def test_a_raising_callback_does_not_stop_later_deliveries(
    conn: Connection, names: Any, caplog: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    seen = Events()

    def callback(body: Any, message: Message) -> None:
        seen.add(body)
        message.ack()
        if body == 1:
            raise RuntimeError('user bug')

    with caplog.at_level(logging.ERROR):
        with Consumer(conn, [queue], callbacks=[callback]):
            producer = Producer(conn, routing_key=queue.name)
            producer.publish(1)
            producer.publish(2)
            assert seen.wait(2)
    assert [c[0] for c in seen.calls] == [1, 2]
    assert any('user bug' in (r.exc_text or '') or r.exc_info for r in caplog.records)


def test_a_consumer_without_callbacks_logs_not_implemented(
    conn: Connection, names: Any, caplog: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    with caplog.at_level(logging.ERROR, logger='pika_rpc.messaging'):
        with Consumer(conn, [queue]):
            Producer(conn, routing_key=queue.name).publish({'lonely': 1})
            with pytest.raises(NotImplementedError):  # as kombu, out of drain_events
                conn.drain_events(timeout=WAIT)
    assert any(r.exc_info and r.exc_info[0] is NotImplementedError for r in caplog.records)


def test_acking_twice_raises_message_state_error(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    outcome = Events()

    def callback(body: Any, message: Message) -> None:
        message.ack()
        try:
            message.ack()
        except MessageStateError as exc:
            outcome.add(exc)

    with Consumer(conn, [queue], callbacks=[callback]):
        Producer(conn, routing_key=queue.name).publish({'once': True})
        assert outcome.wait(1)
    assert 'already acknowledged' in str(outcome.calls[0][0])


def test_acking_after_cancel_is_reported_and_the_message_comes_back(
    conn: Connection, names: Any, raw_channel: Any, caplog: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    held = Events()
    consumer = Consumer(conn, [queue], callbacks=[lambda b, m: held.add(m)])
    with consumer:
        Producer(conn, routing_key=queue.name).publish({'late': 1})
        assert held.wait(1)
    message = held.calls[0][0]
    with caplog.at_level(logging.WARNING, logger='pika_rpc.message'):
        message.ack()  # its channel is gone: nothing acked, a warning instead
    assert any('deliver it again' in r.getMessage() for r in caplog.records)
    assert ready_count(raw_channel, queue.name) == 1


def test_private_link_closed_makes_its_connection_raise(private_link: Link) -> None:
    conn = Connection.from_link(private_link)
    assert conn.control('declare_exchange', exchange='amq.direct', passive=True) is None
    private_link.close(5.0)
    with pytest.raises(PikaRPCError, match='closed'):
        conn.control('declare_exchange', exchange='amq.direct', passive=True)
