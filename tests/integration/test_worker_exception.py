"""The Worker's error paths: raising tasks, unknown names, malformed messages, bad arguments.

Each test ends by showing the worker is still alive (it runs another task).
"""

from __future__ import annotations

import json
import uuid

import pika
import pytest

from pika_rpc import MaxRetriesExceededError, NotRegistered, Worker, states
from tests.helpers import eventually, pika_parameters
from tests.integration.worker_support import app, queue_depth, start_worker  # noqa: F401


def add_task(app):
    @app.task(name='t.add')
    def add(x, y):
        return x + y

    return add


def publish_raw(
    amqp_url,
    queue,
    body,
    *,
    headers=None,
    content_type='application/json',
    reply_to=None,
    correlation_id=None,
):
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.channel().basic_publish(
            '',
            queue,
            data,
            pika.BasicProperties(
                content_type=content_type,
                content_encoding='utf-8',
                headers=headers,
                reply_to=reply_to,
                correlation_id=correlation_id,
                delivery_mode=2,
            ),
        )


def test_a_raising_task_stores_failure_with_its_traceback_and_the_worker_goes_on(app, start_worker):
    add = add_task(app)

    @app.task(name='t.boom')
    def boom(message):
        raise ValueError(message)

    start_worker(concurrency=1)
    result = boom.delay('card declined')
    with pytest.raises(ValueError, match='card declined'):
        result.get(timeout=10)
    assert result.state == states.FAILURE
    assert 'raise ValueError(message)' in result.traceback
    assert result.traceback.rstrip().endswith('ValueError: card declined')
    assert 'pika_rpc/worker.py' not in result.traceback
    assert add.delay(1, 1).get(timeout=10) == 2


def test_a_task_calling_sys_exit_fails_as_runtime_error_without_killing_its_thread(
    app, start_worker
):
    add = add_task(app)

    @app.task(name='t.exit')
    def leave():
        raise SystemExit(3)

    worker = start_worker(concurrency=1)
    result = leave.delay()
    with pytest.raises(RuntimeError, match=r'the task raised SystemExit\(3\)'):
        result.get(timeout=10)
    assert 'SystemExit: 3' in result.traceback
    assert add.delay(2, 2).get(timeout=10) == 4
    assert worker.stats()['failed'] == 1


def test_an_unknown_task_gets_a_not_registered_failure_and_is_rejected(
    app, start_worker, amqp_url, unique_name
):
    add = add_task(app)
    start_worker()
    result = app.send_task('t.no_such_task', (1,))
    with pytest.raises(NotRegistered) as info:
        result.get(timeout=10)
    assert info.value.args == ('t.no_such_task',)
    assert result.state == states.FAILURE
    assert add.delay(3, 4).get(timeout=10) == 7
    assert queue_depth(amqp_url, unique_name) == 0  # rejected, not requeued


def test_an_unknown_task_gets_not_registered_even_when_results_are_ignored(app, start_worker):
    start_worker()
    task_id = str(uuid.uuid4())
    app.backend.on_task_call(None, task_id)  # ignore_result skips this: listen anyway
    assert app.send_task('t.no_such_task', task_id=task_id, ignore_result=True).ignored
    with pytest.raises(NotRegistered):
        app.AsyncResult(task_id).get(timeout=10)  # the ignored one's get() returns None


@pytest.mark.parametrize(
    'body,headers,content_type',
    [
        (b'{not json', {'task': 't.add', 'id': 'bad-json'}, 'application/json'),
        ({'task': 't.add', 'id': 'v1', 'args': [1, 2]}, None, 'application/json'),  # protocol v1
        ([[1, 2], {}, {}], {'id': 'no-task-header'}, 'application/json'),
        ([[1, 2], {}], {'task': 't.add', 'id': 'two-items'}, 'application/json'),
        (b'\x80\x04K\x01.', {'task': 't.add', 'id': 'pickled'}, 'application/x-python-serialize'),
    ],
    ids=['undecodable', 'protocol-v1', 'no-task-header', 'short-body', 'pickle-refused'],
)
def test_a_malformed_message_is_rejected_and_the_worker_lives_on(
    app, start_worker, amqp_url, unique_name, body, headers, content_type
):
    add = add_task(app)
    worker = start_worker(concurrency=1)
    publish_raw(
        amqp_url,
        unique_name,
        body,
        headers=headers,
        content_type=content_type,
        reply_to=app.backend.oid,
    )
    eventually(lambda: worker.stats()['rejected'] == 1, timeout=10)
    assert add.delay(1, 2).get(timeout=10) == 3
    assert queue_depth(amqp_url, unique_name) == 0  # dropped, not requeued
    assert worker.stats()['received'] == 1  # only the good one became a task


def test_a_task_message_without_reply_to_runs_and_stores_nothing(
    app, start_worker, amqp_url, unique_name, caplog
):
    add = add_task(app)
    ran = []

    @app.task(name='t.note')
    def note(x):
        ran.append(x)
        return x

    start_worker(concurrency=1)
    caplog.set_level('WARNING', logger='pika_rpc.backend')
    publish_raw(
        amqp_url,
        unique_name,
        [[7], {}, {}],
        headers={'task': 't.note', 'id': str(uuid.uuid4()), 'retries': 0},
    )
    assert add.delay(1, 1).get(timeout=10) == 2
    eventually(lambda: ran == [7], timeout=10)
    eventually(lambda: 'no reply_to' in caplog.text, timeout=10)
    assert queue_depth(amqp_url, unique_name) == 0


def test_retry_past_max_retries_fails_with_the_original_exception(app, start_worker):
    @app.task(name='t.always', bind=True, max_retries=1)
    def always(self):
        raise self.retry(exc=KeyError('still missing'), countdown=0)

    start_worker()
    seen = []
    with pytest.raises(KeyError, match='still missing'):
        always.delay().get(timeout=10, on_message=seen.append)
    assert [m['status'] for m in seen] == ['RETRY', 'FAILURE']


def test_retry_past_max_retries_without_an_exception_raises_max_retries_exceeded(app, start_worker):
    @app.task(name='t.again', bind=True, max_retries=0)
    def again(self):
        raise self.retry(countdown=0)

    start_worker()
    with pytest.raises(MaxRetriesExceededError, match='max retries'):
        again.delay().get(timeout=10)


def test_a_failure_whose_exception_cannot_be_serialized_keeps_its_repr(app, start_worker):
    class Odd(Exception):
        pass

    @app.task(name='t.odd')
    def odd():
        raise Odd(object())

    start_worker()
    with pytest.raises(Exception) as info:
        odd.delay().get(timeout=10)
    assert type(info.value).__name__ == 'Odd'
    assert info.value.args[0].startswith('<object object at')


def test_a_value_that_cannot_be_serialized_is_stored_as_an_encode_error_failure(
    app, start_worker, amqp_url, unique_name
):
    from pika_rpc import EncodeError

    add = add_task(app)

    @app.task(name='t.unserializable')
    def unserializable():
        return object()

    start_worker(concurrency=1)
    result = unserializable.delay()
    with pytest.raises(EncodeError, match='not serializable'):
        result.get(timeout=10)
    assert add.delay(5, 5).get(timeout=10) == 10
    assert queue_depth(amqp_url, unique_name) == 0


@pytest.mark.parametrize(
    'kwargs',
    [{'concurrency': 0}, {'concurrency': 1.5}, {'concurrency': True}, {'prefetch_count': -1}],
)
def test_bad_worker_arguments_raise_value_error(app, kwargs):
    with pytest.raises(ValueError):
        Worker(app, **kwargs)


def test_a_worker_cannot_be_started_twice(app, start_worker):
    worker = start_worker()
    with pytest.raises(RuntimeError, match='already started'):
        worker.start()


def test_stop_is_idempotent_and_a_never_started_worker_stops_at_once(app, start_worker):
    assert Worker(app).stop(1) is True
    worker = start_worker()
    assert worker.stop(10) is True
    assert worker.stop(10) is True


def test_a_worker_that_cannot_declare_its_queue_raises_and_leaves_nothing_running(
    app, amqp_url, unique_name
):
    from pika_rpc.errors import PreconditionFailed

    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        conn.channel().queue_declare(unique_name, durable=True, arguments={'x-expires': 60000})
    worker = Worker(app, queues=unique_name)
    with pytest.raises(PreconditionFailed):
        worker.start()
    assert worker.stats()['state'] == 'STOPPED'
    assert worker.stop(1) is True
