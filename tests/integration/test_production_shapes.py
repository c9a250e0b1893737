"""Production's shapes against the real broker: raising hooks, results already buffered out of
band, megabyte results read once, timed-out waits by the thousand, a table full of waiters.

The worker's side is played by ``store_result`` (``mark_as_done``) with the client's request.
Bounds are asserted as structure sizes (``backend.stats()``), never as RSS.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Dict, Iterator, List

import pytest

from pika_rpc import App
from pika_rpc._consumers import ConsumerSpec, Delivery
from pika_rpc.errors import TimeoutError
from tests.helpers import eventually, list_queues

WAIT = 30.0
MB = 1 << 20


@pytest.fixture
def make_app(amqp_url: str) -> Iterator:
    made: List[App] = []

    def make(**conf: Any) -> App:
        app = App(broker=amqp_url, result_expires=120, **conf)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def request_for(app: App, task_id: str) -> Dict[str, str]:
    return {'id': task_id, 'reply_to': app.backend.oid, 'correlation_id': task_id}


def store(app: App, task_id: str, value: Any) -> None:
    """What a worker does: store ``value`` as the result of ``task_id`` for ``app``."""
    app.backend.mark_as_done(task_id, value, request=request_for(app, task_id))


def reply_queue_is_empty(app: App) -> bool:
    """Every message of the reply queue was acknowledged (none ready, none unacked)."""
    assert list_queues()[app.backend.oid].messages == 0
    return True


class Getter(threading.Thread):
    """``result.get(timeout=WAIT)`` on its own thread; ``value``/``error`` when joined."""

    def __init__(self, result: Any) -> None:
        super().__init__(daemon=True)
        self.result, self.value, self.error = result, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.result.get(timeout=WAIT)
        except BaseException as exc:  # recorded: the test asserts on it
            self.error = exc

    def outcome(self) -> Any:
        self.join(WAIT * 2)
        assert not self.is_alive(), f'get() of {self.result.id} hangs'
        if self.error is not None:
            raise self.error
        return self.value


# ------------------------------------------------------------------ raising hooks (item 5)


@pytest.mark.parametrize('size', [16, 256 * 1024], ids=['small-body', 'large-body'])
def test_a_raising_on_state_change_is_logged_with_the_task_id_and_the_link_stays_up(
    make_app, caplog, size
):
    app = make_app()
    backend = app.backend
    calls: List[str] = []

    def on_state_change(meta: dict, message: Any) -> None:
        calls.append(meta['task_id'])
        raise RuntimeError('bug in a user hook')

    backend.result_consumer.on_state_change = on_state_change
    task_id = f'hooked-{size}'
    backend.on_task_call(None, task_id)
    link = backend._get_link()
    drained: List[bool] = []
    drainer = threading.Thread(
        target=lambda: drained.append(backend.result_consumer.drain_events(timeout=WAIT)),
        daemon=True,
    )
    drainer.start()
    eventually(lambda: backend.result_consumer._drain_waiters == 1)
    caplog.set_level(logging.ERROR, logger='pika_rpc')

    store(app, task_id, 'x' * size)
    assert app.AsyncResult(task_id).get(timeout=WAIT) == 'x' * size  # state recorded
    drainer.join(WAIT)
    assert drained == [True]  # its waiters woke
    eventually(lambda: reply_queue_is_empty(app))  # acked: no redelivery
    assert calls == [task_id]
    assert link.stats()['reconnects'] == 0 and link.state == 'OPEN'
    assert any(
        task_id in r.getMessage() and 'on_state_change' in r.getMessage() and r.exc_info
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    store(app, 'after', 1)  # the link still works
    assert app.AsyncResult('after').get(timeout=WAIT) == 1


def test_a_raising_on_out_of_band_result_keeps_the_link_and_the_result(make_app, caplog):
    app = make_app()
    backend = app.backend
    calls: List[str] = []

    def on_out_of_band_result(task_id: str, message: Any) -> None:
        calls.append(task_id)
        raise ValueError('bug in a user hook')

    backend.on_out_of_band_result = on_out_of_band_result
    backend.result_consumer.start()
    link = backend._get_link()
    caplog.set_level(logging.ERROR, logger='pika_rpc')
    store(app, 'never-sent-from-here', 42)
    eventually(lambda: calls and reply_queue_is_empty(app))
    assert calls == ['never-sent-from-here']
    assert link.stats()['reconnects'] == 0
    assert app.AsyncResult('never-sent-from-here').get(timeout=WAIT) == 42
    assert any('never-sent-from-here' in r.getMessage() for r in caplog.records)


@pytest.fixture
def poison_queue(raw_channel: Any) -> Iterator[str]:
    """A queue of this test, named outside ``pika-rpc-test-*``: another run's clean-up deletes
    empty queues by that prefix, and this one is empty on purpose."""
    name = f'pika-rpc-poison-{uuid.uuid4().hex}'
    raw_channel.queue_declare(name, arguments={'x-expires': 60000})
    yield name
    raw_channel.queue_delete(name)


def test_a_consumer_whose_on_delivery_raises_has_the_message_rejected_and_keeps_consuming(
    private_link, poison_queue, raw_channel
):
    queue = poison_queue
    seen: List[bytes] = []

    def on_delivery(delivery: Delivery) -> None:  # manual acks
        seen.append(delivery.body)
        if delivery.body == b'poison':
            raise RuntimeError('bug in a consumer callback')
        private_link.ack(delivery.spec, delivery.gen, delivery.delivery_tag, wait=False)

    private_link.consume(ConsumerSpec(queue, on_delivery), timeout=WAIT)
    raw_channel.basic_publish('', queue, b'poison')
    eventually(lambda: seen and list_queues()[queue].messages == 0)  # rejected, not requeued
    raw_channel.basic_publish('', queue, b'fine')
    eventually(lambda: b'fine' in seen and list_queues()[queue].messages == 0)
    assert seen == [b'poison', b'fine']  # never redelivered
    assert private_link.stats()['reconnects'] == 0


# ------------------------------------------------------------------ out of band (item 7)


@pytest.mark.parametrize('how', ['cancel_for', 'forget', 'pending_max'])
def test_get_many_and_join_native_return_a_result_already_buffered_out_of_band(make_app, how):
    app = make_app(pending_max=1)
    backend = app.backend
    backend.on_task_call(None, 'early')
    if how == 'cancel_for':
        backend.cancel_for('early')
    elif how == 'forget':
        backend.forget('early')
    else:
        backend.on_task_call(None, 'evicts-early')  # the table holds one
    store(app, 'early', 'here')
    eventually(lambda: backend.stats()['out_of_band'] == 1)
    assert [(t, m['result']) for t, m in backend.get_many(['early'], timeout=WAIT)] == [
        ('early', 'here')
    ]
    backend.forget('early')  # out of band once more
    store(app, 'early', 'again')
    eventually(lambda: backend.stats()['out_of_band'] == 1)
    assert app.ResultSet([app.AsyncResult('early')]).join_native(timeout=WAIT) == ['again']


# ------------------------------------------------------------------ bytes (item 9)


def test_megabyte_results_read_once_keep_at_most_64_mib_by_default(make_app):
    app = make_app()
    backend = app.backend
    body = 'r' * MB
    for i in range(80):
        task_id = f'mb-{i}'
        backend.on_task_call(None, task_id)
        store(app, task_id, body)
        assert app.AsyncResult(task_id).get(timeout=WAIT) == body
    stats = backend.stats()
    assert stats['cached'] < 64 and stats['cached_bytes'] <= 64 * MB
    assert stats['unread'] == 0 and stats['pending'] == 0
    assert app.AsyncResult('mb-79').state == 'SUCCESS'  # the newest is still kept
    assert app.AsyncResult('mb-0').state == 'PENDING'  # the oldest went


def test_result_cache_max_bytes_bounds_the_results_kept(make_app):
    app = make_app(result_cache_max_bytes=4 * MB)
    body = 'r' * MB
    for i in range(10):
        app.backend.on_task_call(None, f'small-bound-{i}')
        store(app, f'small-bound-{i}', body)
        assert app.AsyncResult(f'small-bound-{i}').get(timeout=WAIT) == body
    stats = app.backend.stats()
    assert stats['cached'] < 4 and stats['cached_bytes'] <= 4 * MB


def test_a_result_larger_than_result_cache_max_bytes_is_returned_by_get_and_not_kept(make_app):
    app = make_app(result_cache_max_bytes=64 * 1024)
    result = app.AsyncResult('too-big')
    app.backend.on_task_call(None, result.id)
    store(app, result.id, 'b' * (256 * 1024))
    eventually(lambda: app.backend.stats()['unread'] == 1)
    assert result.state == 'SUCCESS' and result.ready()  # polls leave it for get()
    seen: List[dict] = []
    assert result.get(timeout=WAIT, on_message=seen.append) == 'b' * (256 * 1024)
    assert [m['status'] for m in seen] == ['SUCCESS']
    stats = app.backend.stats()
    assert (stats['cached'], stats['cached_bytes'], stats['unread'], stats['unread_bytes']) == (
        0,
        0,
        0,
        0,
    )
    assert result.state == 'PENDING'  # read once, not kept


def test_unread_results_are_kept_past_the_byte_bound_until_read(make_app):
    app = make_app(result_cache_max_bytes=2 * MB)
    backend = app.backend
    ids = [f'unread-{i}' for i in range(6)]
    for task_id in ids:
        backend.on_task_call(None, task_id)
        store(app, task_id, task_id * (MB // 16))
    eventually(lambda: backend.stats()['unread'] == 6)
    assert backend.stats()['unread_bytes'] > 2 * MB
    assert [app.AsyncResult(t).get(timeout=WAIT) for t in ids] == [t * (MB // 16) for t in ids]
    assert backend.stats()['cached_bytes'] <= 2 * MB


# ------------------------------------------------------------------ slots of waits (item 10)


def test_timed_out_waits_on_distinct_ids_leave_no_slot_behind(make_app):
    app = make_app()
    app.backend.result_consumer.start()
    for i in range(100_000):
        with pytest.raises(TimeoutError):
            app.AsyncResult(f'nothing-{i}').get(timeout=0)
    stats = app.backend.stats()
    assert stats['pending'] == 0 and stats['watched'] == 0
    with pytest.raises(TimeoutError):
        list(app.backend.get_many([f'nothing-{i}' for i in range(1000)], timeout=0))
    assert app.backend.stats()['pending'] == 0


def test_a_timed_out_wait_keeps_expecting_a_task_sent_from_here(make_app):
    app = make_app()
    result = app.AsyncResult('sent-here')
    app.backend.on_task_call(None, result.id)
    with pytest.raises(TimeoutError):
        result.get(timeout=0)
    store(app, result.id, 'late')
    eventually(lambda: app.backend.stats()['unread'] == 1)  # not out of band
    assert app.backend.stats()['out_of_band'] == 0
    assert result.get(timeout=WAIT) == 'late'


def test_a_waiter_on_a_new_id_gets_its_result_when_the_table_is_full_of_waited_slots(make_app):
    app = make_app(pending_max=2)
    backend = app.backend
    backend.result_consumer.start()
    first, second = Getter(app.AsyncResult('a')), Getter(app.AsyncResult('b'))
    eventually(lambda: backend.stats()['waited'] == 2)
    third = Getter(app.AsyncResult('c'))  # a new slot in a full table
    eventually(lambda: backend.stats()['waited'] == 3)
    store(app, 'c', 3)
    assert third.outcome() == 3
    store(app, 'a', 1)
    store(app, 'b', 2)
    assert (first.outcome(), second.outcome()) == (1, 2)
    assert backend.stats()['out_of_band'] == 0
