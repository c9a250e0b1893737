"""RPCBackend, AsyncResult and App.send_task against the real broker.

The worker's side is played by ``store_result`` with an explicit request (the client's
``reply_to``), or by raw pika publishing hand-crafted Celery messages.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import threading
import uuid

import pika
import pytest

import pika_rpc
from pika_rpc import App, states
from pika_rpc.errors import (
    ClosedError,
    ContentDisallowed,
    DecodeError,
    PikaRPCError,
    SecurityError,
    TaskRevokedError,
)
from tests.helpers import eventually, list_queues, pika_parameters


@pytest.fixture
def app(amqp_url, unique_name):
    application = App(broker=amqp_url, task_default_queue=unique_name, result_expires=120)
    yield application
    application.close()
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.queue_delete(unique_name)
        ch.exchange_delete(unique_name)


def request_for(app, task_id, **extra):
    return dict({'id': task_id, 'reply_to': app.backend.oid, 'correlation_id': task_id}, **extra)


def publish_raw(amqp_url, queue, body, *, correlation_id=None, content_type='application/json'):
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        ch.basic_publish(
            '',
            queue,
            data,
            pika.BasicProperties(
                content_type=content_type, content_encoding='utf-8', correlation_id=correlation_id
            ),
        )


def test_send_task_then_result_round_trip(app):
    result = app.send_task('tasks.add', (2, 3))
    app.backend.mark_as_done(result.id, 5, request=request_for(app, result.id))
    assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS and result.successful() and result.ready()
    assert result.date_done.utcoffset() == datetime.timedelta(0)  # a datetime, as Celery's
    assert result.backend.get_task_meta(result.id)['date_done'].endswith('+00:00')


def test_task_message_on_the_wire_is_celery_protocol_v2(app, amqp_url, unique_name):
    result = app.send_task(
        'tasks.add',
        (2, 3),
        {'z': 1},
        expires=600,
        priority=5,
        time_limit=60,
        soft_time_limit=50,
        countdown=30,
    )
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        method, props, body = conn.channel().basic_get(unique_name, auto_ack=True)
    assert method is not None
    assert props.correlation_id == result.id and props.reply_to == app.backend.oid
    assert props.delivery_mode == 2 and props.priority == 5 and props.expiration == '600000'
    assert props.content_type == 'application/json'
    h = props.headers
    assert h['task'] == 'tasks.add' and h['id'] == result.id and h['lang'] == 'py'
    assert h['timelimit'] == [60, 50] and h['root_id'] == result.id and h['retries'] == 0
    assert h['eta'] and h['expires'] and h['ignore_result'] is None
    assert json.loads(body) == [
        [2, 3],
        {'z': 1},
        {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None},
    ]


def test_send_task_rejects_unknown_options(app):
    with pytest.raises(TypeError):
        app.send_task('tasks.add', (1, 2), not_an_option=True)


def test_stored_result_bytes_match_celery_5_7(app, amqp_url, unique_name):
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.queue_declare(unique_name + '-capture', durable=True, arguments={'x-expires': 60000})
        app.backend.store_result(
            't-1',
            {'answer': 42},
            states.SUCCESS,
            request={'reply_to': unique_name + '-capture', 'correlation_id': 'c-1'},
        )
        method, props, body = ch.basic_get(unique_name + '-capture', auto_ack=True)
        ch.queue_delete(unique_name + '-capture')
    assert props.content_type == 'application/json' and props.content_encoding == 'utf-8'
    assert props.delivery_mode == 1 and props.priority == 0 and props.headers == {}
    assert props.correlation_id == 'c-1' and props.reply_to is None
    text = body.decode()
    assert text.startswith(
        '{"status": "SUCCESS", "result": {"answer": 42}, "traceback": null, '
        '"children": [], "date_done": "'
    )
    assert text.endswith('+00:00", "task_id": "t-1"}')


@pytest.mark.parametrize(
    'body',
    [
        {
            'task_id': 'ID',
            'status': 'SUCCESS',
            'result': 5,
            'traceback': None,
            'children': [],
        },  # 5.5
        {
            'status': 'SUCCESS',
            'result': 5,
            'traceback': None,
            'children': [],
            'date_done': '2026-11-24T12:39:32.380869+00:00',
            'task_id': 'ID',
        },  # 5.7
        {'result': 5, 'task_id': 'ID', 'status': 'SUCCESS', 'future_key': 1},  # reordered
    ],
    ids=['celery-5.5', 'celery-5.7', 'reordered'],
)
def test_hand_crafted_celery_messages_are_read(app, amqp_url, body):
    task_id = str(uuid.uuid4())
    result = app.send_task('tasks.add', (2, 3))
    body = dict(body, task_id=result.id)
    publish_raw(amqp_url, app.backend.oid, body, correlation_id=task_id)
    assert result.get(timeout=10) == 5


def test_kombu_envelopes_are_unwrapped(app, amqp_url):
    result = app.send_task('tasks.now', ())
    publish_raw(
        amqp_url,
        app.backend.oid,
        {
            'status': 'SUCCESS',
            'task_id': result.id,
            'traceback': None,
            'children': [],
            'result': {
                'd': {'__type__': 'decimal', '__value__': '1.10'},
                'u': {'__type__': 'uuid', '__value__': {'hex': '0' * 31 + '1'}},
            },
        },
    )
    value = result.get(timeout=10)
    from decimal import Decimal

    assert value == {'d': Decimal('1.10'), 'u': uuid.UUID(int=1)}


def test_failure_reraises_the_task_exception_with_its_traceback(app):
    result = app.send_task('tasks.boom', ('x',))
    app.backend.mark_as_failure(
        result.id,
        ValueError('bad'),
        'Traceback ...\nValueError: bad\n',
        request=request_for(app, result.id),
    )
    with pytest.raises(ValueError, match='bad'):
        result.get(timeout=10)
    assert isinstance(result.get(timeout=10, propagate=False), ValueError)
    assert result.failed() and 'ValueError: bad' in result.traceback


def test_revoked_reraises_task_revoked_error(app):
    result = app.send_task('tasks.slow', ())
    app.backend.mark_as_revoked(result.id, 'revoked', request=request_for(app, result.id))
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)


def test_get_raises_timeout_error_naming_the_task(app):
    result = app.send_task('tasks.never', ())
    with pytest.raises(pika_rpc.TimeoutError, match=result.id) as info:
        result.get(timeout=0.2)
    assert isinstance(info.value, TimeoutError)


def test_get_with_timeout_zero_on_an_unready_result_raises_at_once(app):
    result = app.send_task('tasks.never', ())
    with pytest.raises(pika_rpc.TimeoutError):
        result.get(timeout=0)


def test_on_message_sees_every_state_in_order(app):
    result = app.send_task('tasks.progress', (3,))
    req = request_for(app, result.id)
    app.backend.mark_as_started(result.id, request=req, pid=1, hostname='h')
    for i in range(3):
        app.backend.store_result(result.id, {'done': i + 1}, 'PROGRESS', request=req)
    app.backend.mark_as_done(result.id, 3, request=req)
    seen = []
    assert result.get(timeout=10, on_message=seen.append) == 3
    assert [m['status'] for m in seen] == ['STARTED', 'PROGRESS', 'PROGRESS', 'PROGRESS', 'SUCCESS']


def test_a_result_arriving_before_any_wait_is_delivered(app):
    result = app.send_task('tasks.add', (1, 1))
    app.backend.mark_as_done(result.id, 2, request=request_for(app, result.id))
    assert eventually(lambda: app.backend.get_task_meta(result.id)['status'] == 'SUCCESS')
    assert result.get(timeout=0) == 2  # cached: no waiting at all


def test_foreign_id_is_pending_at_once(app):
    assert app.backend.get_task_meta('never-sent') == {'status': 'PENDING', 'result': None}
    assert app.AsyncResult('never-sent').state == 'PENDING'


def test_get_task_meta_has_celerys_decoded_shape(app):
    result = app.send_task('tasks.add', (1, 1))
    app.backend.mark_as_done(
        result.id, 2, request=request_for(app, result.id, group='g', parent_id='p')
    )
    result.get(timeout=10)
    meta = app.backend.get_task_meta(result.id)
    assert meta['status'] == 'SUCCESS' and meta['result'] == 2 and meta['task_id'] == result.id
    assert meta['traceback'] is None and meta['children'] == [] and 'date_done' in meta
    assert meta['group_id'] == 'g' and meta['parent_id'] == 'p'


def test_task_sent_in_one_thread_is_awaited_in_two_others(app):
    holder, got, errors = [], [], []
    sent = threading.Event()

    def sender():
        holder.append(app.send_task('tasks.add', (20, 22)))
        sent.set()

    def waiter():
        try:
            assert sent.wait(10)
            got.append(app.AsyncResult(holder[0].id).get(timeout=10))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    threading.Thread(target=sender).start()
    assert sent.wait(10)
    app.backend.mark_as_done(holder[0].id, 42, request=request_for(app, holder[0].id))
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    assert errors == [] and got == [42, 42]


def test_200_threads_times_5_tasks_without_cross_talk(app):
    errors, wrong = [], []
    barrier = threading.Barrier(200)

    def client(n):
        try:
            barrier.wait(30)
            results = [(app.send_task('tasks.add', (n, i)), n * 1000 + i) for i in range(5)]
            for r, expected in results:
                app.backend.mark_as_done(r.id, expected, request=request_for(app, r.id))
            for r, expected in results:
                value = r.get(timeout=60)
                if value != expected:
                    wrong.append((r.id, value, expected))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and wrong == []
    assert app.backend.stats()['pending'] == 0


def test_get_many_yields_in_completion_order(app):
    results = [app.send_task('tasks.add', (i, i)) for i in range(3)]
    for r in reversed(results):
        app.backend.mark_as_done(r.id, 'x', request=request_for(app, r.id))
    order = [
        task_id for task_id, _meta in app.backend.get_many([r.id for r in results], timeout=10)
    ]
    assert order == [r.id for r in reversed(results)]


def test_get_many_timeout_names_how_many_are_left(app):
    results = [app.send_task('tasks.never', ()) for _ in range(3)]
    app.backend.mark_as_done(results[0].id, 1, request=request_for(app, results[0].id))
    with pytest.raises(pika_rpc.TimeoutError, match='2 of 3'):
        list(app.backend.get_many([r.id for r in results], timeout=0.5))


def test_poison_message_for_a_pending_task_fails_its_waiters(app, amqp_url):
    result = app.send_task('tasks.add', (1, 1))
    publish_raw(amqp_url, app.backend.oid, b'{not json', correlation_id=result.id)
    with pytest.raises(DecodeError):
        result.get(timeout=10)


def test_disallowed_content_type_fails_the_pending_task(app, amqp_url):
    result = app.send_task('tasks.add', (1, 1))
    publish_raw(
        amqp_url,
        app.backend.oid,
        b'\x80\x04K\x01.',
        correlation_id=result.id,
        content_type='application/x-python-serialize',
    )
    with pytest.raises(ContentDisallowed):
        result.get(timeout=10)


def test_security_error_for_a_result_naming_a_non_exception(app, amqp_url):
    result = app.send_task('tasks.add', (1, 1))
    publish_raw(
        amqp_url,
        app.backend.oid,
        {
            'status': 'FAILURE',
            'task_id': result.id,
            'result': {'exc_type': 'system', 'exc_module': 'os', 'exc_message': ['echo hi']},
        },
    )
    with pytest.raises(SecurityError):
        result.get(timeout=10)


def test_poison_message_for_no_task_is_dropped_and_later_results_arrive(app, amqp_url, caplog):
    caplog.set_level(logging.WARNING, logger='pika_rpc.backend')
    app.backend.get_task_meta('warm-up')  # the consumer starts, in the background
    assert eventually(lambda: app.backend.oid in list_queues())
    publish_raw(amqp_url, app.backend.oid, b'garbage', correlation_id='nobody')
    result = app.send_task('tasks.add', (1, 1))
    app.backend.mark_as_done(result.id, 2, request=request_for(app, result.id))
    assert result.get(timeout=10) == 2
    assert app.backend.stats()['bad_messages'] == 1
    assert eventually(lambda: 'nobody' in caplog.text)
    assert eventually(lambda: list_queues()[app.backend.oid].messages == 0)


def test_store_result_to_a_vanished_queue_warns_and_calls_on_unroutable(app, caplog):
    caplog.set_level(logging.WARNING, logger='pika_rpc.backend')
    called = threading.Event()
    seen = []
    app.backend.on_unroutable = lambda task_id, queue: (seen.append((task_id, queue)), called.set())
    app.backend.store_result(
        't-gone', 1, states.SUCCESS, request={'reply_to': 'no-such-queue-' + uuid.uuid4().hex}
    )
    assert called.wait(10)
    assert seen[0][0] == 't-gone'
    assert 't-gone' in caplog.text and 'unroutable' in caplog.text


def test_store_result_without_reply_to_sends_nothing_and_warns(app, caplog):
    caplog.set_level(logging.WARNING, logger='pika_rpc.backend')
    assert app.backend.store_result('t-none', 1, states.SUCCESS, request={'id': 't-none'}) == 1
    assert 't-none' in caplog.text
    assert app.backend.stats()['stored'] == 0


def test_store_result_without_request_outside_a_task_is_a_clear_error(app):
    with pytest.raises(PikaRPCError, match='no request'):
        app.backend.store_result('t-x', 1, states.SUCCESS)


def test_forget_drops_the_kept_result(app):
    result = app.send_task('tasks.add', (1, 1))
    app.backend.mark_as_done(result.id, 2, request=request_for(app, result.id))
    result.get(timeout=10)
    result.forget()
    assert result.state == 'PENDING'


def test_close_wakes_waiters_and_app_backend_is_renewed(app):
    backend = app.backend
    result = app.send_task('tasks.never', ())
    errors = []
    started = threading.Event()

    def waiter():
        started.set()
        try:
            result.get(timeout=30)
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert started.wait(5)
    eventually(lambda: backend.stats()['pending'] >= 1)
    old_oid = backend.oid
    backend.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], pika_rpc.ConnectionLost)
    backend.close()  # a second close is a no-op
    with pytest.raises(ClosedError):
        backend.store_result('x', 1, states.SUCCESS, request={'reply_to': 'q'})
    assert eventually(lambda: old_oid not in list_queues())
    assert app.backend is not backend and app.backend.oid != old_oid


def test_reply_queue_is_durable_not_auto_delete_with_x_expires(app):
    app.backend.get_task_meta('x')
    info = eventually(lambda: list_queues().get(app.backend.oid))
    assert info.durable and not info.auto_delete and not info.exclusive
    assert info.arguments.get('x-expires') == 120000


def test_every_queue_we_declare_is_durable_or_exclusive(app, unique_name):
    app.send_task('tasks.add', (1, 1))
    queues = list_queues()
    for name in (app.backend.oid, unique_name):
        assert queues[name].durable or queues[name].exclusive


def test_backend_api_surface(app):
    backend = app.backend
    assert backend.as_uri() == 'rpc://' and backend.as_uri(include_password=True) == 'rpc://'
    assert backend.supports_native_join and backend.supports_autoexpire and not backend.persistent
    assert backend.retry_policy['max_retries'] == 20
    assert backend.binding.name == backend.oid
    assert backend.destination_for('t', {'reply_to': 'r', 'correlation_id': None}) == ('r', 't')
    for name in ('reload_task_result', 'reload_group_result', 'delete_group'):
        with pytest.raises(NotImplementedError):
            getattr(backend, name)('x')
    with pytest.raises(NotImplementedError):
        backend.ensure_chords_allowed()
    with pytest.raises(NotImplementedError):
        backend.save_group('g', None)
    with pytest.raises(NotImplementedError):
        backend.restore_group('g')
    backend.revive(None)  # a no-op: the I/O thread revives


def test_pickled_backend_rebuilds_from_its_configuration(app):
    clone = pickle.loads(pickle.dumps(app.backend))
    try:
        assert isinstance(clone, pika_rpc.RPCBackend) and clone.oid != app.backend.oid
        assert clone.expires == app.backend.expires
    finally:
        clone.close()


def test_result_consumer_seed_methods(app):
    rc = app.backend.result_consumer
    result = app.send_task('tasks.add', (1, 1))
    rc.consume_from(result.id)
    drained, started = [], threading.Event()

    def drain():
        started.set()
        drained.append(rc.drain_events(timeout=30))

    t = threading.Thread(target=drain)
    t.start()
    assert started.wait(5)
    app.backend.mark_as_done(result.id, 2, request=request_for(app, result.id))
    t.join(20)
    assert not t.is_alive() and drained == [True]
    assert eventually(lambda: result.ready())
    assert rc.drain_events(timeout=0) is False
    rc.cancel_for('unknown')
    assert app.backend.poll(result.id)['result'] == 2


def test_async_result_identity_and_tuple_form(app):
    a, b = app.AsyncResult('same'), app.AsyncResult('same')
    assert a == b and a == 'same' and hash(a) == hash(b) and a != app.AsyncResult('other')
    assert a.as_tuple() == (('same', None), None)
    assert repr(a) == '<AsyncResult: same>'


def test_forked_child_gets_a_new_oid_and_never_closes_the_parent_connection(app):
    result = app.send_task('tasks.add', (1, 1))
    parent_oid = app.backend.oid
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            child = App(broker=app.conf.broker_url, result_expires=60)
            r = child.send_task('tasks.add', (2, 2), queue=app.conf.task_default_queue)
            child.backend.mark_as_done(r.id, 4, request={'reply_to': child.backend.oid})
            ok = r.get(timeout=10) == 4 and app.backend.oid != parent_oid
            os.write(write_fd, f'{app.backend.oid} {int(ok)}'.encode())
            child.close()
            app.backend.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    child_oid, ok = os.read(read_fd, 200).decode().split()
    os.close(read_fd)
    assert status == 0 and ok == '1' and child_oid != parent_oid
    app.backend.mark_as_done(result.id, 2, request=request_for(app, result.id))
    assert result.get(timeout=10) == 2  # the parent's connection still works
    assert app.backend.oid == parent_oid and app.backend.stats()['reconnects'] == 0
