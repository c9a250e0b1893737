"""Connection, Producer, Consumer, Exchange and Queue against the real broker.

Every queue has a unique name, expires on the broker after a minute, and is deleted at the
end of its test. Waits are on Events with generous timeouts; nothing sleeps.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional

import pytest

from pika_rpc._link import Link
from pika_rpc.entities import Exchange, Message, Queue, binding
from pika_rpc.errors import PublishError, TimeoutError
from pika_rpc.messaging import Connection, Consumer, Producer
from tests.helpers import eventually, list_queues

WAIT = 30.0


class Inbox:
    """A Consumer callback collecting ``(body, message)``; ``wait(n)`` blocks until n arrived."""

    def __init__(
        self, ack: bool = True, on_each: Optional[Callable[[Any, Message], None]] = None
    ) -> None:
        self.ack, self.on_each = ack, on_each
        self.items: List[tuple] = []
        self.errors: List[BaseException] = []
        self._changed = threading.Condition()

    def __call__(self, body: Any, message: Message) -> None:
        try:
            if self.on_each is not None:
                self.on_each(body, message)
            if self.ack:
                message.ack()
        except Exception as exc:  # collected: a helper thread's error must fail the test
            self.errors.append(exc)
        with self._changed:
            self.items.append((body, message))
            self._changed.notify_all()

    def wait(self, n: int = 1, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.items) >= n, timeout)

    @property
    def bodies(self) -> List[Any]:
        return [b for b, _ in self.items]


def ready_count(raw_channel: Any, queue: str) -> int:
    return raw_channel.queue_declare(queue, passive=True).method.message_count


# ------------------------------------------------------------------ round trips


def test_round_trip_producer_to_consumer_keeps_body_and_properties(
    conn: Connection, names: Any
) -> None:
    name = names('q')
    exchange = Exchange(names('ex'), 'direct')
    queue = Queue(name, exchange, routing_key='rk', expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, exchange=exchange, routing_key='rk').publish(
            {'n': 1, 'text': 'héllo'},
            correlation_id='c-1',
            reply_to='r',
            headers={'h': [1, 'x']},
            priority=3,
            message_id='m-1',
        )
        assert inbox.wait(1)
    body, message = inbox.items[0]
    assert body == {'n': 1, 'text': 'héllo'} and inbox.errors == []
    assert message.content_type == 'application/json' and message.content_encoding == 'utf-8'
    props = message.properties
    assert (
        props['correlation_id'],
        props['reply_to'],
        props['priority'],
        props['message_id'],
        props['delivery_mode'],
    ) == ('c-1', 'r', 3, 'm-1', 2)
    assert message.headers == {'h': [1, 'x']}
    assert message.delivery_info['routing_key'] == 'rk'
    assert message.delivery_info['exchange'] == exchange.name and message.acknowledged


def test_64_threads_publishing_lose_and_duplicate_nothing(conn: Connection, names: Any) -> None:
    threads_n, per_thread = 64, 25
    queue = Queue(names('q'), expires=60)
    inbox = Inbox()
    shared = Producer(conn, routing_key=queue.name)
    barrier = threading.Barrier(threads_n)
    failures: List[BaseException] = []

    def publish(i: int) -> None:
        producer = shared if i % 2 else Producer(conn, routing_key=queue.name)
        try:
            barrier.wait(WAIT)
            for j in range(per_thread):
                producer.publish({'id': f'{i}-{j}'})
        except BaseException as exc:
            failures.append(exc)

    with Consumer(conn, [queue], callbacks=[inbox]):
        threads = [threading.Thread(target=publish, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads) and failures == []
        assert inbox.wait(threads_n * per_thread, timeout=60), (
            len(inbox.items),
            inbox.errors[:3],
            conn.link.stats(),
        )
    ids = [b['id'] for b in inbox.bodies]
    assert len(ids) == len(set(ids)) == threads_n * per_thread
    assert set(ids) == {f'{i}-{j}' for i in range(threads_n) for j in range(per_thread)}
    assert inbox.errors == []


def test_concurrent_publishers_share_pipelined_confirms_and_few_wake_ups(
    private_link: Link, names: Any
) -> None:
    conn = Connection.from_link(private_link)
    queue = Queue(names('q'), expires=60)
    queue.declare(channel=conn)
    before = private_link.stats()
    barrier = threading.Barrier(64)
    failures: List[BaseException] = []

    def publish() -> None:
        producer = Producer(conn, routing_key=queue.name)
        try:
            barrier.wait(WAIT)
            for i in range(20):
                producer.publish({'i': i})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert failures == [] and not any(t.is_alive() for t in threads)
    after = private_link.stats()
    delta = {
        k: after[k] - before.get(k, 0)
        for k in ('publishes', 'direct_publishes', 'commands', 'wake_ups', 'confirms')
    }
    assert delta['confirms'] == delta['publishes'] == 64 * 20, delta
    # Written by the publishing threads themselves, or queued for the I/O thread while the
    # socket was busy; the queued ones share wake-ups.
    assert delta['direct_publishes'] + delta['commands'] == 64 * 20, delta
    assert delta['wake_ups'] * 4 < max(4, delta['commands']) or delta['wake_ups'] <= 1, delta
    assert after['peak_in_flight'] > 1  # many publishes awaited their confirm at once


def test_no_ack_consumer_gets_messages_the_broker_already_forgot(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox(ack=True)  # ack() on a no_ack delivery does nothing
    consumer = Consumer(conn, [queue], callbacks=[inbox], no_ack=True, accept=['text/plain'])
    consumer.consume()
    Producer(conn, routing_key=queue.name).publish('one')  # a str: text/plain, as kombu
    assert inbox.wait(1)
    consumer.cancel()  # a manual-ack consumer's unacked message would return to the queue
    assert ready_count(raw_channel, queue.name) == 0
    assert inbox.bodies == ['one'] and inbox.errors == []
    assert inbox.items[0][1].properties['content_type'] == 'text/plain'


def test_messages_waiting_in_the_queue_are_all_read_by_the_delivery_reader(
    private_link: Link, names: Any
) -> None:
    """Those the broker sends right after the ConsumeOk (often in the same socket read) take
    the reader's path too, not pika's: the reader has the channel before the consume."""
    conn = Connection.from_link(private_link)
    queue = Queue(names('q'), expires=60)
    Producer(conn, routing_key=queue.name).publish({'first': 1}, declare=[queue])
    for n in range(199):
        Producer(conn, routing_key=queue.name).publish(n)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox], prefetch_count=500):
        assert inbox.wait(200)
        assert private_link.reader is not None
        assert private_link.reader.fast == 200
    assert inbox.bodies == [{'first': 1}] + list(range(199)) and inbox.errors == []


def test_on_message_gets_the_undecoded_message(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    got = []
    arrived = threading.Event()

    def on_message(message: Message) -> None:
        got.append((message.body, message.payload))
        message.ack()
        arrived.set()

    with Consumer(conn, [queue], on_message=on_message):
        Producer(conn, routing_key=queue.name).publish([1, 2])
        assert arrived.wait(WAIT)
    assert got == [(b'[1, 2]', [1, 2])]


# ------------------------------------------------------------------ mandatory and returns


def test_mandatory_publish_to_no_queue_calls_on_return_and_warns(
    conn: Connection, names: Any, caplog: Any
) -> None:
    returned = []
    called = threading.Event()

    def on_return(exc: BaseException, exchange: str, routing_key: str, message: Message) -> None:
        returned.append((exc, exchange, routing_key, message, threading.current_thread().name))
        called.set()

    missing = names('nowhere')
    with caplog.at_level(logging.WARNING, logger='pika_rpc.connection'):
        Producer(conn, on_return=on_return).publish({'x': 1}, routing_key=missing, mandatory=True)
    assert called.wait(WAIT)
    exc, exchange, routing_key, message, thread = returned[0]
    assert (exchange, routing_key, exc.reply_code) == ('', missing, 312)
    assert message.decode() == {'x': 1}
    assert thread.startswith('pika-rpc-callbacks')
    assert any(r.levelno == logging.WARNING and missing in r.getMessage() for r in caplog.records)


def test_publish_without_mandatory_to_no_queue_is_not_returned(
    conn: Connection, names: Any, caplog: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger='pika_rpc.messaging'):
        Producer(conn).publish({'x': 1}, routing_key=names('nowhere'))
    assert not [r for r in caplog.records if 'unroutable' in r.getMessage()]


# ------------------------------------------------------------------ declarations


def test_queue_options_reach_the_broker_as_x_arguments(conn: Connection, names: Any) -> None:
    name = names('q')
    Queue(
        name, expires=60, message_ttl=1.5, max_length=10, max_length_bytes=10000, max_priority=5
    ).declare(channel=conn)

    def listed() -> bool:
        info = list_queues()[name]
        assert info.arguments == {
            'x-expires': 60000,
            'x-message-ttl': 1500,
            'x-max-length': 10,
            'x-max-length-bytes': 10000,
            'x-max-priority': 5,
        }
        assert info.durable and not info.auto_delete and not info.exclusive
        return True

    eventually(listed, timeout=WAIT)


def test_second_maybe_declare_sends_no_command(private_link: Link, names: Any) -> None:
    conn = Connection.from_link(private_link)
    producer = Producer(conn)
    queue = Queue(names('q'), Exchange(names('ex')), routing_key='k')
    assert producer.maybe_declare(queue) is True
    before = private_link.stats()['commands']
    assert producer.maybe_declare(queue) is False
    assert producer.maybe_declare(queue.exchange) is False
    assert private_link.stats()['commands'] == before


def test_publishing_to_a_named_exchange_checks_it_only_once(private_link: Link, names: Any) -> None:
    conn = Connection.from_link(private_link)
    exchange = Exchange(names('ex'), 'fanout')
    exchange.declare(channel=conn)
    private_link.forget_declared(('exchange', exchange.name))
    producer = Producer(conn, exchange=exchange.name)  # a str: checked, never declared

    def operations() -> int:  # commands for the I/O thread + publishes written directly
        stats = private_link.stats()
        return stats['commands'] + stats['direct_publishes']

    start = operations()
    producer.publish('a')
    first = operations() - start
    producer.publish('b')
    second = operations() - start - first
    assert (first, second) == (2, 1)  # passive check + publish, then publish


def test_auto_declare_declares_the_producer_exchange_on_first_publish(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    exchange = Exchange(names('ex'), 'topic', durable=False)
    Producer(conn, exchange=exchange).publish('x', routing_key='a.b')
    raw_channel.exchange_declare(exchange.name, exchange_type='topic', passive=True)


def test_exchange_to_exchange_binding_routes(conn: Connection, names: Any) -> None:
    source = Exchange(names('src'), 'fanout', channel=conn)
    dest = Exchange(names('dst'), 'fanout', channel=conn)
    source.declare()
    dest.declare()
    dest.bind_to(source)
    queue = Queue(names('q'), dest, expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, exchange=source).publish('through two exchanges', serializer='json')
        assert inbox.wait(1)
    assert inbox.bodies == ['through two exchanges']


def test_queue_bound_through_bindings_gets_both_routes(conn: Connection, names: Any) -> None:
    a, b = Exchange(names('a'), 'direct'), Exchange(names('b'), 'fanout')
    queue = Queue(names('q'), [binding(a, 'ka'), binding(b)], expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, exchange=a).publish('via a', routing_key='ka', serializer='json')
        Producer(conn, exchange=b).publish('via b', serializer='json')
        assert inbox.wait(2)
    assert sorted(inbox.bodies) == ['via a', 'via b']


def test_exchange_publish_sends_a_prepared_message(conn: Connection, names: Any) -> None:
    exchange = Exchange(names('ex'), 'direct', channel=conn, delivery_mode='transient')
    queue = Queue(names('q'), exchange, routing_key='k', expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        exchange.publish(
            exchange.Message(b'{"raw": true}', content_type='application/json', correlation_id='c'),
            routing_key='k',
        )
        assert inbox.wait(1)
    body, message = inbox.items[0]
    assert body == {'raw': True} and message.properties['delivery_mode'] == 1


def test_purge_and_delete(conn: Connection, names: Any, raw_channel: Any) -> None:
    queue = Queue(names('q'), expires=60, channel=conn)
    queue.declare()
    producer = Producer(conn, routing_key=queue.name)
    for i in range(3):
        producer.publish(i)
    consumer = Consumer(conn, [queue])
    assert consumer.purge() == 3
    assert ready_count(raw_channel, queue.name) == 0
    queue.delete()
    assert queue.name not in list_queues()


# ------------------------------------------------------------------ consumer controls


def test_consumer_block_consumes_then_cancels(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]) as consumer:
        assert consumer.consuming_from(queue) and consumer.consuming_from(queue.name)
        Producer(conn, routing_key=queue.name).publish('in', serializer='json')
        assert inbox.wait(1)
    assert not consumer.consuming_from(queue)
    Producer(conn, routing_key=queue.name).publish('after', serializer='json')
    assert ready_count(raw_channel, queue.name) == 1


def test_cancel_by_queue_stops_only_that_queue(conn: Connection, names: Any) -> None:
    q1, q2 = Queue(names('q1'), expires=60), Queue(names('q2'), expires=60)
    consumer = Consumer(conn, [q1, q2], callbacks=[Inbox()])
    consumer.consume()
    consumer.cancel_by_queue(q1.name)
    assert not consumer.consuming_from(q1) and consumer.consuming_from(q2)
    assert [q.name for q in consumer.queues] == [q2.name]
    consumer.close()
    assert not consumer.consuming_from(q2)


def test_add_queue_then_consume_starts_it(conn: Connection, names: Any) -> None:
    inbox = Inbox()
    consumer = Consumer(conn, [], callbacks=[inbox])
    queue = consumer.add_queue(Queue(names('q'), expires=60))
    consumer.consume()
    try:
        Producer(conn, routing_key=queue.name).publish('added', serializer='json')
        assert inbox.wait(1) and inbox.bodies == ['added']
    finally:
        consumer.close()


def test_prefetch_count_limits_unacked_deliveries(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox(ack=False)
    with Consumer(conn, [queue], callbacks=[inbox], prefetch_count=1):
        producer = Producer(conn, routing_key=queue.name)
        for i in range(3):
            producer.publish(i)
        assert inbox.wait(1)
        eventually(lambda: ready_count(raw_channel, queue.name) == 2, timeout=WAIT)
        assert len(inbox.items) == 1
        inbox.items[0][1].ack()
        assert inbox.wait(2)


def test_qos_changes_prefetch_of_a_running_consumer(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox(ack=False)
    with Consumer(conn, [queue], callbacks=[inbox]) as consumer:
        consumer.qos(prefetch_count=2)
        producer = Producer(conn, routing_key=queue.name)
        for i in range(5):
            producer.publish(i)
        assert inbox.wait(2)
        eventually(lambda: ready_count(raw_channel, queue.name) == 3, timeout=5)


def test_recover_with_requeue_redelivers_unacked_messages(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox(ack=False)
    with Consumer(conn, [queue], callbacks=[inbox]) as consumer:
        Producer(conn, routing_key=queue.name).publish('again', serializer='json')
        assert inbox.wait(1)
        consumer.recover(requeue=True)
        assert inbox.wait(2)
        assert inbox.items[1][1].delivery_info['redelivered'] is True
        inbox.items[1][1].ack()


def test_requeued_message_comes_back(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox(
        ack=False,
        on_each=lambda b, m: m.requeue() if not m.delivery_info['redelivered'] else m.ack(),
    )
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, routing_key=queue.name).publish('twice', serializer='json')
        assert inbox.wait(2)
    assert inbox.bodies == ['twice', 'twice'] and inbox.errors == []


def test_drain_events_returns_once_a_message_was_handled(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.05)
        publisher = threading.Thread(
            target=lambda: Producer(conn, routing_key=queue.name).publish('tick', serializer='json')
        )
        publisher.start()
        conn.drain_events(timeout=WAIT)
        publisher.join(WAIT)
    assert inbox.bodies == ['tick']


# ------------------------------------------------------------------ publish options


def test_expiration_in_seconds_becomes_milliseconds(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, routing_key=queue.name).publish('ttl', expiration=30.5, serializer='json')
        assert inbox.wait(1)
    assert inbox.items[0][1].properties['expiration'] == '30500'


def test_compressed_publish_is_decompressed_by_the_consumer(conn: Connection, names: Any) -> None:
    queue = Queue(names('q'), expires=60)
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, routing_key=queue.name, compression='zlib').publish({'big': 'x' * 1000})
        assert inbox.wait(1)
    body, message = inbox.items[0]
    assert body == {'big': 'x' * 1000}
    assert message.headers['compression'] == 'application/x-gzip'
    assert message.body == b'{"big": "' + b'x' * 1000 + b'"}'  # decompressed on receipt


def test_publish_with_retry_policy_succeeds_and_calls_no_errback(
    conn: Connection, names: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    errbacks = []
    inbox = Inbox()
    with Consumer(conn, [queue], callbacks=[inbox]):
        Producer(conn, routing_key=queue.name).publish(
            'retry',
            serializer='json',
            retry=True,
            declare=[queue],
            retry_policy={'max_retries': 2, 'errback': lambda *a: errbacks.append(a)},
        )
        assert inbox.wait(1)
    assert errbacks == []


def test_publish_to_a_missing_exchange_is_a_clear_publish_error(
    conn: Connection, names: Any
) -> None:
    reconnects = conn.link.stats().get('reconnects', 0)
    missing = names('ex')
    with pytest.raises(PublishError, match='does not exist'):
        Producer(conn).publish('x', exchange=missing)
    assert conn.link.stats().get('reconnects', 0) == reconnects and conn.link.state == 'OPEN'


# ------------------------------------------------------------------ connections


def test_default_channel_none_uses_the_process_link(
    amqp_url: str, conn: Connection, monkeypatch: Any, names: Any
) -> None:
    monkeypatch.setenv('AMQP_URL', amqp_url)
    producer = Producer(None)
    try:
        assert producer.connection.link is conn.link
        producer.publish('hello', routing_key=names('nowhere'))
    finally:
        producer.close()
    assert conn.link.state == 'OPEN'  # the shared link outlives one user's release


def test_connection_hides_its_password_and_is_reusable_after_release(amqp_url: str) -> None:
    c = Connection(amqp_url, broker_heartbeat=33)
    c.release()  # releasing an unused handle is a no-op
    assert c.link.state in ('IDLE', 'CONNECTING', 'OPEN')
    assert 'guest:guest' not in repr(c) and 'guest:guest' not in c.as_uri()
    c.release()
    c.release()
    assert c._link is None
    assert c.link is not None
    c.release()


def test_every_queue_declared_here_is_durable_or_exclusive(conn: Connection, names: Any) -> None:
    durable, exclusive = (
        Queue(names('d'), expires=60),
        Queue(names('x'), exclusive=True, durable=False),
    )
    durable.declare(channel=conn)
    exclusive.declare(channel=conn)
    try:

        def listed() -> bool:
            queues = list_queues()
            assert queues[durable.name].durable and queues[exclusive.name].exclusive
            return True

        eventually(listed, timeout=WAIT)
    finally:
        exclusive.bind(conn).delete()
