"""Revive after loss, retry counting and giving up, through the fault proxy.

The client ``App`` talks to the broker through :class:`~tests.faultproxy.FaultProxy`; the
worker's side (``store_result``) is a second ``App`` connected straight to the broker, so it
keeps working while the client's connection is cut or refused. Retry intervals are a few
milliseconds, so each test takes well under a second or two unless marked ``slow``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterator, List

import pytest

from pika_rpc import App
from pika_rpc.errors import ConnectionLost, PublishError, ReplyQueueLost, TimeoutError
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents, eventually, list_queues

WAIT = 30.0
#: Re-publish at once, then every 10-50 ms.
FAST_RETRY = {'interval_start': 0, 'interval_step': 0.01, 'interval_max': 0.05}


def reply(app: App, task_id: str) -> Dict[str, str]:
    """The request a worker would store ``task_id``'s result with."""
    return {'id': task_id, 'reply_to': app.backend.oid, 'correlation_id': task_id}


def queue_messages(name: str) -> int:
    return list_queues()[name].messages


class Waiters:
    """Threads that each call ``result.get(timeout=WAIT)`` and record the value or the error."""

    def __init__(self, results: List[Any]) -> None:
        self.values: Dict[str, Any] = {}
        self.errors: Dict[str, BaseException] = {}
        self._barrier = threading.Barrier(len(results) + 1)
        self._threads = [threading.Thread(target=self._wait, args=(r,)) for r in results]
        for t in self._threads:
            t.start()
        self._barrier.wait(WAIT)  # every waiter is about to call get()

    def _wait(self, result: Any) -> None:
        self._barrier.wait(WAIT)
        try:
            self.values[result.id] = result.get(timeout=WAIT)
        except BaseException as exc:  # recorded: the test asserts on it
            self.errors[result.id] = exc

    def join(self, timeout: float = WAIT * 2) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), 'a waiter hangs'


# ------------------------------------------------------------------ revive


def test_the_link_reconnects_by_itself_after_the_connection_is_cut(
    client: App, fault_proxy: FaultProxy
) -> None:
    client.send_task('tasks.add', (1, 1))  # the reply consumer runs from here
    link = client.backend._get_link()
    events = LinkEvents(link)
    old_connection, attempts = link.connection, fault_proxy.connection_attempts
    assert fault_proxy.cut() == 1
    assert events.wait('connected')  # nobody called: the I/O thread did it
    assert link.wait_for_state('OPEN', timeout=WAIT)
    assert link.connection is not old_connection and link.stats()['reconnects'] == 1
    assert fault_proxy.connection_attempts == attempts + 1
    assert fault_proxy.active_connections == 1
    assert client.backend.stats()['reconnects'] == 1


def test_waiters_keep_waiting_through_a_cut_and_get_results_stored_after_it(
    client: App, worker: App, fault_proxy: FaultProxy
) -> None:
    results = [client.send_task('tasks.add', (i, i)) for i in range(3)]
    events = LinkEvents(client.backend._get_link())
    waiters = Waiters(results)
    assert fault_proxy.cut() == 1
    assert events.wait('connected')
    for i, result in enumerate(results):
        worker.backend.mark_as_done(result.id, i * 2, request=reply(client, result.id))
    waiters.join()
    assert waiters.errors == {}
    assert waiters.values == {r.id: i * 2 for i, r in enumerate(results)}


def test_results_stored_while_the_broker_is_unreachable_arrive_after_the_reconnect(
    client: App, worker: App, fault_proxy: FaultProxy
) -> None:
    result = client.send_task('tasks.add', (2, 2))
    oid = client.backend.oid
    link = client.backend._get_link()
    events = LinkEvents(link)
    fault_proxy.refuse(True)
    attempts = fault_proxy.connection_attempts
    fault_proxy.cut()
    assert fault_proxy.wait_for(lambda: fault_proxy.connection_attempts >= attempts + 2)
    assert link.state != 'OPEN'  # mid-outage: reconnects are being refused
    worker.backend.mark_as_done(result.id, 4, request=reply(client, result.id))
    eventually(lambda: queue_messages(oid) == 1, timeout=WAIT)  # kept by the durable queue
    assert events.count('connected') == 0
    fault_proxy.refuse(False)
    assert result.get(timeout=WAIT) == 4
    # The result may wake its waiter while the link is still re-subscribing, just before it
    # reports 'connected'.
    assert events.wait('connected') and events.count('connected') == 1
    assert link.stats()['reconnects'] == 1


# ------------------------------------------------------------------ retry counting


def _store(app: App, queue: str, task_id: str, **policy: Any) -> None:
    app.backend.retry_policy = dict(app.backend.retry_policy, **FAST_RETRY, **policy)
    app.backend.store_result(
        task_id, 42, 'SUCCESS', request={'id': task_id, 'reply_to': queue}, timeout=WAIT
    )


def _send(app: App, queue: str, task_id: str, **policy: Any) -> None:
    app.send_task(
        'tasks.add', (1, 2), task_id=task_id, retry_policy=dict(FAST_RETRY, **policy), timeout=WAIT
    )


SENDERS = {'store_result': _store, 'send_task': _send}


def _target(how: str, unique_name: str, result_queue: str) -> str:
    return result_queue if how == 'store_result' else unique_name


@pytest.mark.parametrize('how', sorted(SENDERS))
def test_with_max_retries_zero_a_cut_publish_is_sent_once_and_raises_publish_error(
    how: str, client: App, fault_proxy: FaultProxy, result_queue: str, unique_name: str
) -> None:
    send, queue = SENDERS[how], _target(how, unique_name, result_queue)
    send(client, queue, 'warm-up', max_retries=0)  # connected, queues declared
    link = client.backend._get_link()
    events = LinkEvents(link)
    published, cuts = fault_proxy.publish_count, fault_proxy.cut_count
    republishes = link.stats()['republishes']
    fault_proxy.cut_at_next_publish()
    with pytest.raises(PublishError):
        send(client, queue, 'lost', max_retries=0)
    assert fault_proxy.wait_for(lambda: fault_proxy.cut_count == cuts + 1)  # its one attempt
    assert events.wait('connected')
    send(client, queue, 'after', max_retries=0)
    assert fault_proxy.publish_count == published + 1  # only 'after': 'lost' was never re-sent
    assert link.stats()['republishes'] == republishes
    assert queue_messages(queue) == 2  # 'warm-up' and 'after'


@pytest.mark.parametrize('how', sorted(SENDERS))
def test_with_max_retries_three_a_cut_publish_is_resent_after_the_reconnect_and_the_errback_runs_once(
    how: str, client: App, fault_proxy: FaultProxy, result_queue: str, unique_name: str
) -> None:
    send, queue = SENDERS[how], _target(how, unique_name, result_queue)
    send(client, queue, 'warm-up', max_retries=3)
    link = client.backend._get_link()
    calls: List[tuple] = []
    published = fault_proxy.publish_count
    fault_proxy.cut_at_next_publish()
    send(
        client,
        queue,
        'resent',
        max_retries=3,
        errback=lambda exc, interval: calls.append(
            (exc, interval, threading.current_thread().name)
        ),
    )
    flushed = threading.Event()
    link.callbacks.submit(flushed.set)  # errbacks run in order before this
    assert flushed.wait(WAIT)
    assert fault_proxy.wait_for(lambda: fault_proxy.cut_count == 1)
    assert 1 <= fault_proxy.publish_count - published <= 4
    assert fault_proxy.publish_count - published == 1  # exactly one re-publish was needed
    assert len(calls) == 1
    exc, interval, thread_name = calls[0]
    assert isinstance(exc, PublishError) and interval == 0
    assert thread_name != link.name  # never on the I/O thread
    assert link.stats()['reconnects'] == 1
    assert queue_messages(queue) == 2  # 'warm-up' and one 'resent'


@pytest.fixture
def nacking_queue(unique_name: str, raw_channel: Any) -> Iterator[str]:
    """A queue that is always full (``x-max-length`` 0, ``reject-publish``): the broker nacks
    every publish routed to it."""
    name = f'{unique_name}-full'
    raw_channel.queue_declare(
        name,
        durable=True,
        arguments={'x-max-length': 0, 'x-overflow': 'reject-publish', 'x-expires': 60000},
    )
    yield name
    raw_channel.queue_delete(name)


def _store_to(app: App, queue: str, task_id: str, policy: Dict[str, Any]) -> None:
    app.backend.retry_policy = dict(policy)
    app.backend.store_result(
        task_id, 42, 'SUCCESS', request={'id': task_id, 'reply_to': queue}, timeout=WAIT
    )


def _send_to(app: App, queue: str, task_id: str, policy: Dict[str, Any]) -> None:
    app.send_task(
        'tasks.add',
        (1, 2),
        task_id=task_id,
        queue=queue,  # as Celery: exchange='' with a routing key goes to the default queue
        retry_policy=policy,
        timeout=WAIT,
    )


@pytest.mark.parametrize('step', [0, 0.02], ids=['at_once', 'after_a_pause'])
@pytest.mark.parametrize('send', [_store_to, _send_to], ids=['store_result', 'send_task'])
def test_a_nacked_publish_is_retried_on_the_same_connection_until_its_retries_run_out(
    send: Callable[..., None], step: float, client: App, fault_proxy: FaultProxy, nacking_queue: str
) -> None:
    client.backend._get_link().call(lambda: None, timeout=WAIT)  # connected
    calls: List[tuple] = []
    policy = dict(
        max_retries=2,
        interval_start=0,
        interval_step=step,
        interval_max=1,
        errback=lambda exc, interval: calls.append((exc, interval)),
    )
    published = fault_proxy.publish_count
    with pytest.raises(PublishError, match='3 attempt'):
        send(client, nacking_queue, 'nacked', policy)
    link = client.backend._get_link()
    flushed = threading.Event()
    link.callbacks.submit(flushed.set)
    assert flushed.wait(WAIT)
    assert fault_proxy.publish_count - published == 3  # the first try and two retries
    assert [interval for _, interval in calls] == [0, step]  # errback(exc, interval)
    assert all(isinstance(exc, PublishError) and 'nack' in str(exc) for exc, _ in calls)
    assert link.stats()['reconnects'] == 0


def test_a_publish_waiting_out_its_retry_interval_is_retried_after_a_reconnect(
    client: App, fault_proxy: FaultProxy, nacking_queue: str
) -> None:
    client.backend._get_link().call(lambda: None, timeout=WAIT)
    events = LinkEvents(client.backend._get_link())
    nacked = threading.Event()
    # After the first nack the retry waits 10 s: the connection is cut long before that.
    policy = dict(
        max_retries=1,
        interval_start=10,
        interval_step=0,
        interval_max=0,
        errback=lambda exc, interval: nacked.set(),
    )
    published = fault_proxy.publish_count
    raised: List[BaseException] = []

    def send() -> None:
        try:
            _store_to(client, nacking_queue, 'waiting', policy)
        except BaseException as exc:  # recorded: asserted below
            raised.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert nacked.wait(WAIT)
    fault_proxy.cut()
    assert events.wait('connected')
    sender.join(WAIT * 2)
    assert not sender.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], PublishError)
    assert '2 attempt' in str(raised[0]), raised[0]  # re-sent after the reconnect, nacked
    assert fault_proxy.publish_count - published == 2


def test_an_unreachable_broker_gives_connection_lost_after_max_retries_plus_one_attempts(
    make_client: Callable[..., App], fault_proxy: FaultProxy
) -> None:
    fault_proxy.refuse(True)
    client = make_client(broker_connection_max_retries=2)
    raised: List[BaseException] = []

    def send() -> None:
        try:
            client.send_task('tasks.add', (1, 2), timeout=WAIT)
        except BaseException as exc:  # recorded: asserted below
            raised.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(WAIT)
    assert not sender.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], ConnectionLost), raised
    assert isinstance(raised[0], ConnectionError) and '3 attempt' in str(raised[0])
    assert fault_proxy.wait_for(lambda: fault_proxy.connection_attempts >= 3)
    assert fault_proxy.connection_attempts == 3 and client.backend._get_link().state == 'IDLE'


def test_a_failover_list_connects_to_the_second_broker_when_the_first_refuses(
    make_client: Callable[..., App], fault_proxy: FaultProxy, broker: Any, amqp_url: str
) -> None:
    fault_proxy.refuse(True)
    with FaultProxy(broker.host, broker.port) as good:
        client = make_client(f'{fault_proxy.url(amqp_url)};{good.url(amqp_url)}')
        result = client.send_task('tasks.add', (3, 4))
        client.backend.mark_as_done(result.id, 7, request=reply(client, result.id))
        assert result.get(timeout=WAIT) == 7
        link = client.backend._get_link()
        assert link.address == f'127.0.0.1:{good.port}'
        assert fault_proxy.wait_for(lambda: fault_proxy.connection_attempts >= 1)
        assert good.connection_attempts == 1
        assert good.publish_count >= 2
        client.close()


# ------------------------------------------------------------------ giving up


def test_a_link_that_gives_up_wakes_every_waiter_with_connection_lost(
    make_client: Callable[..., App], fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_connection_max_retries=2)
    results = [client.send_task('tasks.add', (i, i)) for i in range(3)]
    events = LinkEvents(client.backend._get_link())
    waiters = Waiters(results)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    assert events.wait('gave_up')
    waiters.join()
    assert waiters.values == {}
    assert set(waiters.errors) == {r.id for r in results}
    assert all(isinstance(e, ConnectionLost) for e in waiters.errors.values()), waiters.errors
    with pytest.raises(ConnectionLost):  # a later waiter is told at once too
        results[0].get(timeout=WAIT)


def test_after_giving_up_the_next_call_connects_again_and_results_flow(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_connection_max_retries=2)
    client.send_task('tasks.add', (0, 0))
    link = client.backend._get_link()
    events = LinkEvents(link)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    assert events.wait('gave_up')
    assert link.wait_for_state('IDLE', timeout=WAIT)
    fault_proxy.refuse(False)
    result = client.send_task('tasks.add', (5, 5))  # starts a new connection cycle
    worker.backend.mark_as_done(result.id, 10, request=reply(client, result.id))
    assert result.get(timeout=WAIT) == 10
    assert link.state == 'OPEN'


# ------------------------------------------------------------------ reply queue lost


def test_waiters_get_reply_queue_lost_naming_their_tasks_when_the_queue_is_deleted(
    client: App, worker: App, raw_channel: Any
) -> None:
    results = [client.send_task('tasks.add', (i, i)) for i in range(2)]
    oid = client.backend.oid
    waiters = Waiters(results)
    raw_channel.queue_delete(oid)
    waiters.join()
    assert waiters.values == {} and set(waiters.errors) == {r.id for r in results}
    for result in results:
        error = waiters.errors[result.id]
        assert isinstance(error, ReplyQueueLost) and error.queue == oid
        assert set(error.task_ids) == {r.id for r in results}
        assert result.id in str(error)


def test_new_tasks_work_after_the_reply_queue_was_deleted(
    client: App, worker: App, raw_channel: Any
) -> None:
    lost = client.send_task('tasks.add', (1, 1))
    oid = client.backend.oid
    raw_channel.queue_delete(oid)
    with pytest.raises(ReplyQueueLost):
        lost.get(timeout=WAIT)
    result = client.send_task('tasks.add', (2, 2))
    worker.backend.mark_as_done(result.id, 4, request=reply(client, result.id))
    assert result.get(timeout=WAIT) == 4
    assert client.backend.oid == oid and oid in list_queues()  # re-declared under the same oid
    assert client.backend.stats()['reconnects'] == 0


def test_waiters_get_reply_queue_lost_when_the_queue_expired_during_an_outage(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    client = make_client(result_expires=1)  # x-expires 1 s once it has no consumer
    results = [client.send_task('tasks.add', (i, i)) for i in range(2)]
    oid = client.backend.oid
    waiters = Waiters(results)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    eventually(lambda: oid not in list_queues(), timeout=WAIT)
    fault_proxy.refuse(False)
    waiters.join()
    assert waiters.values == {} and set(waiters.errors) == {r.id for r in results}
    assert all(
        isinstance(e, ReplyQueueLost) and set(e.task_ids) == {r.id for r in results}
        for e in waiters.errors.values()
    ), waiters.errors
    result = client.send_task('tasks.add', (3, 3))  # the queue is back under the same oid
    worker.backend.mark_as_done(result.id, 6, request=reply(client, result.id))
    assert result.get(timeout=WAIT) == 6 and client.backend.oid == oid


# ------------------------------------------------------------------ timeouts are not faults


def test_a_get_timeout_never_triggers_a_reconnect(
    client: App, worker: App, fault_proxy: FaultProxy
) -> None:
    result = client.send_task('tasks.add', (1, 1))
    link = client.backend._get_link()
    connection, attempts = link.connection, fault_proxy.connection_attempts
    with pytest.raises(TimeoutError):
        result.get(timeout=0.2)
    with pytest.raises(TimeoutError):
        result.get(timeout=0)
    assert link.connection is connection and link.stats()['reconnects'] == 0
    assert fault_proxy.connection_attempts == attempts and fault_proxy.active_connections == 1
    worker.backend.mark_as_done(result.id, 2, request=reply(client, result.id))
    assert result.get(timeout=WAIT) == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stalled_connection_is_dropped_on_missed_heartbeats_and_replaced(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_heartbeat=1, broker_connection_timeout=2)
    result = client.send_task('tasks.add', (1, 1))
    link = client.backend._get_link()
    events = LinkEvents(link)
    waiters = Waiters([result])
    fault_proxy.pause()  # no byte either way: heartbeats go missing
    assert events.wait('lost', timeout=60)
    fault_proxy.resume()
    assert events.wait('connected', timeout=60)
    worker.backend.mark_as_done(result.id, 2, request=reply(client, result.id))
    waiters.join()
    assert waiters.errors == {} and waiters.values == {result.id: 2}


# ------------------------------------------------------------------ unreachable broker, per call


def test_store_result_to_an_unreachable_broker_raises_connection_lost(
    make_client: Callable[..., App], fault_proxy: FaultProxy
) -> None:
    fault_proxy.refuse(True)
    client = make_client(broker_connection_max_retries=2)
    with pytest.raises(ConnectionLost):
        client.backend.store_result(
            't', 1, 'SUCCESS', request={'id': 't', 'reply_to': 'q'}, timeout=WAIT
        )


def test_send_task_to_a_broker_retried_until_the_deadline_raises_connection_lost_with_advice_at_its_timeout(
    make_client: Callable[..., App], fault_proxy: FaultProxy
) -> None:
    fault_proxy.refuse(True)
    client = make_client(broker_connection_max_retries=0, publish_timeout=3)  # 0: until deadline
    with pytest.raises(ConnectionLost) as info:
        client.send_task('tasks.add', (1, 2), timeout=0.5)
    text = str(info.value)
    assert 'not sent: cannot connect to amqp://guest:**@127.0.0.1:' in text
    assert 'next attempt in' in text and 'check the broker' in text
