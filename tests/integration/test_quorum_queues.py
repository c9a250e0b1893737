"""Quorum queues, refused options, commands that close the connection and unroutable tasks,
against the single system broker (RabbitMQ 3.10 runs quorum queues on one node too).

What needs several nodes (a node lost, a leader re-elected) and Celery's native delayed
delivery end to end (its 28 shared ``celery_delayed_*`` queues are not made on the shared
broker) are in tests/cluster/test_worker_failover.py.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, List

import pytest

from pika_rpc import App, Worker
from pika_rpc._consumers import ConsumerSpec
from pika_rpc.entities import Queue
from pika_rpc.errors import BrokerRefused, PreconditionFailed, Unroutable
from pika_rpc.messaging import Connection, Consumer
from tests.helpers import LinkEvents, eventually, list_queues
from tests.integration.worker_support import delete_queue

WAIT = 20.0
QUORUM = {'x-queue-type': 'quorum'}


def add_task(app: App) -> Any:
    @app.task(name='t.add')
    def add(x, y):
        return x + y

    return add


@pytest.fixture
def quorum_app(amqp_url: str, unique_name: str) -> Iterator[App]:
    """An App whose default queue (the test's unique name) is a quorum queue."""
    app = App(
        broker=amqp_url,
        task_default_queue=unique_name,
        task_default_queue_type='quorum',
        result_expires=300,
    )
    yield app
    app.close()
    delete_queue(amqp_url, unique_name)


@pytest.fixture
def workers() -> Iterator[List[Worker]]:
    started: List[Worker] = []
    yield started
    for worker in started:
        worker.stop(10)


def started(workers: List[Worker], *args: Any, **kwargs: Any) -> Worker:
    worker = Worker(*args, **kwargs)
    workers.append(worker)
    worker.start()
    return worker


# ------------------------------------------------------------------ no connection closes


def test_a_command_that_makes_the_broker_close_the_connection_fails_at_once_not_in_a_storm(
    private_link: Any, unique_name: str
) -> None:
    events = LinkEvents(private_link)
    with pytest.raises(BrokerRefused, match='the broker closed the connection') as caught:
        private_link.control(
            'declare_exchange', exchange=unique_name, exchange_type='bogus', timeout=WAIT
        )
    assert caught.value.reply_code == 503 and 'unknown exchange type' in caught.value.reply_text
    assert events.wait('connected', 2, timeout=WAIT)  # the first connect, one reconnect
    private_link.control('declare_queue', queue=unique_name, exclusive=True, timeout=WAIT)
    assert (events.count('lost'), private_link.stats()['reconnects']) == (1, 1)


def test_a_worker_on_a_quorum_task_queue_runs_tasks_without_a_single_connection_close(
    quorum_app: App, unique_name: str, workers: List[Worker]
) -> None:
    add = add_task(quorum_app)
    worker = started(workers, quorum_app, concurrency=2)
    link = worker._link
    assert add.delay(2, 3).get(timeout=WAIT) == 5
    assert list_queues()[unique_name].arguments.get('x-queue-type') == 'quorum'
    assert worker.stats()['queues'][unique_name]['consuming'] is True
    assert link.stats()['reconnects'] == 0 and link.state == 'OPEN'


def test_a_held_eta_task_on_a_quorum_queue_widens_the_window_by_a_new_consumer_requeuing_nothing(
    quorum_app: App, workers: List[Worker]
) -> None:
    add = add_task(quorum_app)
    worker = started(workers, quorum_app, concurrency=1, prefetch_count=1)
    later = add.apply_async((1, 1), countdown=60)
    eventually(lambda: worker.stats()['held'] == 1, timeout=WAIT)
    assert add.delay(2, 2).get(timeout=WAIT) == 4  # a window of 1 would wait 60 s
    later.revoke()
    eventually(lambda: (worker.stats()['held'], worker.stats()['revoked']) == (0, 1), timeout=WAIT)
    stats = worker.stats()
    assert (stats['received'], stats['revoked']) == (2, 1)  # the held one never came again
    assert worker._link.stats()['reconnects'] == 0


def test_a_consumer_that_asks_a_quorum_queue_for_a_global_window_falls_back_after_one_close(
    amqp_url: str, unique_name: str, workers: List[Worker]
) -> None:
    app = App(
        broker=amqp_url,
        task_default_queue=unique_name,
        task_default_queue_type='quorum',
        worker_detect_quorum_queues=False,  # as Celery without detection: a global window
    )
    try:
        add = add_task(app)
        worker = started(workers, app)
        assert add.delay(1, 2).get(timeout=WAIT) == 3
        assert worker._link.stats()['reconnects'] == 1  # one 540, then per-consumer
        assert add.delay(3, 4).get(timeout=WAIT) == 7
        assert worker._link.stats()['reconnects'] == 1
    finally:
        for worker in workers:
            worker.stop(10)
        app.close()
        delete_queue(amqp_url, unique_name)


def test_a_quorum_queue_declared_elsewhere_is_used_as_it_is_by_send_task_and_the_worker(
    amqp_url: str, unique_name: str, raw_channel: Any, workers: List[Worker]
) -> None:
    raw_channel.queue_declare(unique_name, durable=True, arguments=QUORUM)
    app = App(broker=amqp_url, result_expires=300)  # its default queue is another one
    try:
        add = add_task(app)
        # The process's link for these settings, shared with earlier tests: count from here.
        link = Connection.from_settings(app.conf).link
        before = link.stats()['reconnects']
        worker = started(workers, app, queues=[unique_name])
        assert worker._link is link
        result = app.send_task('t.add', (20, 22), queue=unique_name)
        assert result.get(timeout=WAIT) == 42
        assert link.stats()['reconnects'] == before
        assert add.name == 't.add'
    finally:
        app.close()
        delete_queue(amqp_url, unique_name)


def test_a_queue_send_task_creates_is_of_task_create_missing_queue_type(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    app = App(broker=amqp_url, task_create_missing_queue_type='quorum', result_expires=300)
    try:
        app.send_task('t.add', (1, 1), queue=unique_name, ignore_result=True)
        assert list_queues()[unique_name].arguments.get('x-queue-type') == 'quorum'
        assert raw_channel.queue_declare(unique_name, passive=True).method.message_count == 1
    finally:
        app.close()
        delete_queue(amqp_url, unique_name)


def test_a_configured_queue_of_another_type_than_the_broker_has_is_a_406_naming_the_type(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    raw_channel.queue_declare(unique_name, durable=True)  # classic
    app = App(broker=amqp_url, task_queues=[Queue(unique_name, queue_arguments=QUORUM)])
    try:
        with pytest.raises(PreconditionFailed) as caught:
            app.send_task('t.add', (1, 1), queue=unique_name, ignore_result=True)
        assert 'already exists with x-queue-type=(none) and this declaration asks ' in str(
            caught.value
        )
    finally:
        app.close()
        delete_queue(amqp_url, unique_name)


# ------------------------------------------------------------------ refused options


@pytest.mark.parametrize(
    'options, why',
    [
        ({'exclusive': True}, 'exclusive=True (no connection owns a replicated queue)'),
        ({'auto_delete': True}, 'auto_delete=True (it is deleted only explicitly'),
        ({'durable': False}, 'durable=False (a quorum queue is always durable)'),
        ({'max_priority': 10}, 'max_priority (RabbitMQ 3.x quorum queues have no priorities)'),
    ],
)
def test_an_option_a_quorum_queue_refuses_is_refused_here_saying_why_and_nothing_is_sent(
    conn: Connection, unique_name: str, options: dict, why: str
) -> None:
    queue = Queue(unique_name, queue_arguments=QUORUM, **options)
    with pytest.raises(ValueError, match='is a quorum queue') as caught:
        queue.declare(channel=conn)
    assert why in str(caught.value)
    assert unique_name not in list_queues()


@pytest.mark.parametrize(
    'declaration, advice',
    [
        ({'exclusive': True}, 'refuses exclusive=True for queue'),
        ({'auto_delete': True}, 'refuses auto_delete=True for queue'),
        ({'durable': False}, 'refuses durable=False for queue'),
        (
            {'arguments': dict(QUORUM, **{'x-max-priority': 10})},
            'A quorum queue does not take the argument x-max-priority',
        ),
    ],
)
def test_the_brokers_406_for_a_quorum_queue_option_is_advised_as_such_never_already_exists(
    conn: Connection, unique_name: str, declaration: dict, advice: str
) -> None:
    kwargs = dict(queue=unique_name, durable=True, arguments=QUORUM)
    kwargs.update(declaration)
    with pytest.raises(PreconditionFailed) as caught:
        conn.control('declare_queue', **kwargs)  # the broker's own answer: no local check
    assert advice in str(caught.value)
    assert 'already exists' not in str(caught.value)


# ------------------------------------------------------------------ unroutable tasks


def test_a_task_message_the_broker_returns_raises_unroutable_and_is_not_retried(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    raw_channel.exchange_declare(unique_name, 'direct', auto_delete=True)
    app = App(broker=amqp_url)
    try:
        link = app.connection_for_write().link
        before = link.stats()['republishes']  # the link may be shared with earlier tests
        with pytest.raises(Unroutable) as caught:
            app.send_task('t.add', (1, 1), exchange=unique_name, routing_key='nowhere')
        err = caught.value
        assert (err.exchange, err.routing_key, err.reply_code) == (unique_name, 'nowhere', 312)
        assert 't.add[' in str(err)
        assert link.stats()['republishes'] == before
    finally:
        app.close()


# ------------------------------------------------------------------ re-subscription refused


def test_a_refused_resubscription_is_retried_with_a_warning_each_time_until_it_consumes(
    amqp_url: str, unique_name: str, raw_channel: Any, workers: List[Worker], caplog: Any
) -> None:
    raw_channel.queue_declare(unique_name, durable=True)
    app = App(broker=amqp_url, broker_consumer_retry_interval=0.2, result_expires=300)
    try:
        add = add_task(app)
        worker = started(workers, app, queues=[Queue(unique_name, no_declare=True)])
        raw_channel.queue_delete(unique_name)  # the broker cancels; re-subscribing: 404
        eventually(lambda: worker.stats()['queues'][unique_name]['failures'] >= 2, timeout=WAIT)
        stats = worker.stats()
        assert stats['consuming'] is False and 'NOT_FOUND' in (
            stats['queues'][unique_name]['last_error'] or ''
        )
        retries = [
            r
            for r in caplog.records
            if r.levelname == 'WARNING' and 'cannot consume from' in r.message
        ]
        assert len(retries) >= 2 and 'retry 1 in 0.2 s' in retries[0].message
        raw_channel.queue_declare(unique_name, durable=True)
        eventually(lambda: worker.stats()['consuming'], timeout=WAIT)
        result = app.send_task('t.add', (4, 4), queue=unique_name)
        assert result.get(timeout=WAIT) == 8
        assert worker.stats()['queues'][unique_name]['failures'] == 0
        assert add.name == 't.add'
    finally:
        app.close()
        delete_queue(amqp_url, unique_name)


def test_a_worker_whose_queue_stays_refused_past_the_limit_fails_and_run_raises(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    from pika_rpc.errors import ConsumerGaveUp

    raw_channel.queue_declare(unique_name, durable=True)
    app = App(broker=amqp_url, broker_consumer_retry_interval=0.1, broker_consumer_max_retries=2)
    worker = Worker(app, queues=[Queue(unique_name, no_declare=True)])
    raised: List[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            raised.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert worker.ready.wait(WAIT)
        raw_channel.queue_delete(unique_name)
        runner.join(WAIT)
        assert not runner.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], ConsumerGaveUp)
        assert (raised[0].queue, raised[0].failures) == (unique_name, 3)
        stats = worker.stats()
        assert stats['state'] == 'STOPPED' and stats['consuming'] is False
        assert stats['failure'] == str(raised[0]) and 'NOT_FOUND' in stats['failure']
    finally:
        worker.request_stop()
        runner.join(WAIT)
        app.close()


@pytest.mark.parametrize('handled', [True, False])
def test_on_refused_true_stops_the_consumer_and_false_lets_it_be_retried(
    private_link: Any, unique_name: str, raw_channel: Any, handled: bool
) -> None:
    raw_channel.queue_declare(unique_name, durable=True)
    refusals: List[BaseException] = []
    told = threading.Event()

    def on_refused(err: BaseException) -> bool:
        refusals.append(err)
        told.set()
        return handled

    spec = ConsumerSpec(
        unique_name, lambda delivery: None, retry_interval=0.1, on_refused=on_refused
    )
    private_link.consume(spec, timeout=WAIT)
    try:
        raw_channel.queue_delete(unique_name)
        assert told.wait(WAIT)
        assert refusals[0].reply_code == 404 and unique_name in str(refusals[0])
        if handled:
            eventually(lambda: not spec.active, timeout=WAIT)
            assert len(refusals) == 1 and spec.failures == 0
        else:
            eventually(lambda: len(refusals) >= 2, timeout=WAIT)
            raw_channel.queue_declare(unique_name, durable=True)
            eventually(lambda: spec.consuming, timeout=WAIT)
    finally:
        private_link.cancel(spec, timeout=WAIT)
        raw_channel.queue_delete(unique_name)


# ------------------------------------------------------------------ per-consumer windows


def test_a_per_consumer_window_changes_by_a_new_consumer_and_held_messages_stay_ackable(
    conn: Connection, unique_name: str, raw_channel: Any
) -> None:
    raw_channel.queue_declare(unique_name, durable=True, arguments=QUORUM)
    for i in range(3):
        raw_channel.basic_publish('', unique_name, str(i).encode())
    received: List[Any] = []
    arrived = threading.Condition()

    def on_message(message: Any) -> None:
        with arrived:
            received.append(message)
            arrived.notify_all()

    queue = Queue(unique_name, queue_arguments=QUORUM)
    before = conn.link.stats()['reconnects']  # the link may be shared with earlier tests
    consumer = Consumer(conn, [queue], on_message=on_message, prefetch_count=1)
    consumer.consume()
    try:
        with arrived:
            assert arrived.wait_for(lambda: len(received) == 1, WAIT)
        consumer.qos(prefetch_count=2)  # a new consumer with a window of 2, the old cancelled
        with arrived:
            assert arrived.wait_for(lambda: len(received) == 3, WAIT)
        for message in received:
            message.ack()
        eventually(
            lambda: raw_channel.queue_declare(unique_name, passive=True).method.message_count == 0,
            timeout=WAIT,
        )
        assert [m.body for m in received] == [b'0', b'1', b'2']
        assert not any(m.delivery_info['redelivered'] for m in received)
    finally:
        consumer.cancel()
        raw_channel.queue_delete(unique_name)
    assert conn.link.stats()['reconnects'] == before
