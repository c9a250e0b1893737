"""pika_rpc's Worker against the real broker: tasks, states, retries, eta, expires, revoke,
groups, many waiting threads and a graceful stop.

The worker runs in this process on the test's App, so the client and the worker share the
process's one connection, as a web process running a worker in-process would.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pika
import pytest

from pika_rpc import (
    Exchange,
    GroupResult,
    Queue,
    ResultSet,
    Worker,
    protocol,
    serialization,
    states,
)
from pika_rpc.errors import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from tests.helpers import eventually, list_queues, pika_parameters
from tests.integration.worker_support import app, gate, queue_depth, start_worker  # noqa: F401


def add_task(app):
    @app.task(name='t.add')
    def add(x, y):
        return x + y

    return add


def statuses(messages):
    return [m['status'] for m in messages]


# ------------------------------------------------------------------ running tasks


def test_worker_runs_a_task_and_stores_its_value(app, start_worker):
    add = add_task(app)
    start_worker()
    result = add.delay(2, 3)
    assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS
    assert result.date_done.utcoffset() == timedelta(0)


def test_started_is_stored_with_pid_and_hostname_when_tracked(app, start_worker):
    app.conf.task_track_started = True
    add = add_task(app)
    worker = start_worker()
    seen = []
    assert add.delay(1, 1).get(timeout=10, on_message=seen.append) == 2
    assert statuses(seen) == ['STARTED', 'SUCCESS']
    assert set(seen[0]['result']) == {'pid', 'hostname'}
    assert seen[0]['result']['hostname'] == worker.hostname


def test_started_is_not_stored_unless_tracked(app, start_worker):
    add = add_task(app)

    @app.task(name='t.tracked', track_started=True)
    def tracked():
        return 'ok'

    start_worker()
    untracked_seen, tracked_seen = [], []
    add.delay(1, 1).get(timeout=10, on_message=untracked_seen.append)
    tracked.delay().get(timeout=10, on_message=tracked_seen.append)
    assert statuses(untracked_seen) == ['SUCCESS']
    assert statuses(tracked_seen) == ['STARTED', 'SUCCESS']


def test_update_state_progress_is_seen_live_by_on_message(app, start_worker):
    @app.task(name='t.progress', bind=True)
    def progress(self, n):
        for i in range(n):
            self.update_state(state='PROGRESS', meta={'done': i + 1, 'total': n})
        return n

    start_worker()
    seen = []
    assert progress.delay(3).get(timeout=10, on_message=seen.append) == 3
    assert statuses(seen) == ['PROGRESS', 'PROGRESS', 'PROGRESS', 'SUCCESS']
    assert [m['result'] for m in seen[:3]] == [{'done': i, 'total': 3} for i in (1, 2, 3)]


def test_a_bound_task_sees_its_request(app, start_worker, unique_name):
    @app.task(name='t.whoami', bind=True)
    def whoami(self, x, y=0):
        r = self.request
        return {
            'id': r.id,
            'args': r.args,
            'kwargs': r.kwargs,
            'retries': r.retries,
            'reply_to': r.reply_to,
            'correlation_id': r.correlation_id,
            'root_id': r.root_id,
            'parent_id': r.parent_id,
            'group': r.group,
            'hostname': r.hostname,
            'routing_key': r.delivery_info['routing_key'],
        }

    worker = start_worker()
    group_id = str(uuid.uuid4())
    result = whoami.apply_async((1,), {'y': 2}, group_id=group_id)
    assert result.get(timeout=10) == {
        'id': result.id,
        'args': [1],
        'kwargs': {'y': 2},
        'retries': 0,
        'reply_to': app.backend.oid,
        'correlation_id': result.id,
        'root_id': result.id,
        'parent_id': None,
        'group': group_id,
        'hostname': worker.hostname,
        'routing_key': unique_name,
    }


def test_a_queue_object_is_declared_and_consumed_as_given(app, start_worker, amqp_url, unique_name):
    add = add_task(app)
    topic = Exchange(f'{unique_name}-topic', type='topic', durable=False, auto_delete=True)
    start_worker(queues=[Queue(unique_name, exchange=topic, routing_key='jobs.#', expires=60)])
    result = add.apply_async((4, 4), exchange=topic.name, routing_key='jobs.add')
    assert result.get(timeout=10) == 8
    assert list_queues()[unique_name].arguments.get('x-expires') == 60000


def test_a_queue_declared_as_celery_declares_it_is_consumed_without_a_406(
    app, start_worker, amqp_url, unique_name
):
    # What Celery 5.7 declares for a task queue and for its control exchange (kombu pidbox).
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(unique_name, 'direct', durable=True, auto_delete=False)
        ch.queue_declare(unique_name, durable=True, auto_delete=False, exclusive=False)
        ch.queue_bind(unique_name, unique_name, unique_name)
        ch.exchange_declare('celery.pidbox', 'fanout', durable=False, auto_delete=False)
    add = add_task(app)
    start_worker(queues=unique_name)
    assert add.delay(1, 2).get(timeout=10) == 3


def test_the_control_queue_is_exclusive_and_bound_to_celerys_pidbox(app, start_worker):
    worker = start_worker()
    info = list_queues()[f'{worker.hostname}.celery.pidbox']
    assert info.exclusive and not info.durable
    assert info.arguments == {'x-expires': 10000, 'x-message-ttl': 300000}


def test_get_inside_a_task_refuses_unless_sync_subtasks_are_allowed(app, start_worker):
    add = add_task(app)

    @app.task(name='t.nested')
    def nested(allow):
        return add.delay(1, 1).get(timeout=10, disable_sync_subtasks=not allow)

    start_worker(concurrency=2)
    with pytest.raises(RuntimeError, match='inside a running task'):
        nested.delay(False).get(timeout=10)
    assert nested.delay(True).get(timeout=10) == 2


def test_a_child_sent_from_a_task_names_its_parent_and_root(app, start_worker):
    @app.task(name='t.child', bind=True)
    def child(self):
        return [self.request.parent_id, self.request.root_id]

    @app.task(name='t.parent', bind=True)
    def parent(self):
        return child.delay().get(timeout=10, disable_sync_subtasks=False) + [self.request.id]

    start_worker(concurrency=2)
    parent_of_child, root_of_child, parent_id = parent.delay().get(timeout=10)
    assert parent_of_child == parent_id and root_of_child == parent_id


# ------------------------------------------------------------------ retry


def test_a_task_that_retries_twice_then_succeeds(app, start_worker):
    seen_retries = []

    @app.task(name='t.flaky', bind=True, max_retries=5)
    def flaky(self):
        seen_retries.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=KeyError('missing'), countdown=0.1)
        return 'finally'

    start_worker()
    seen = []
    result = flaky.delay()
    assert result.get(timeout=10, on_message=seen.append) == 'finally'
    assert seen_retries == [0, 1, 2]
    assert statuses(seen) == ['RETRY', 'RETRY', 'SUCCESS']
    assert seen[0]['result'] == {
        'exc_type': 'KeyError',
        'exc_message': ['missing'],
        'exc_module': 'builtins',
    }
    assert 'Retry in 0.1s' in seen[0]['traceback']
    assert seen[0]['children'] == [[[result.id, None], None]]


def test_a_retry_keeps_the_id_and_reply_to_and_uses_new_arguments(app, start_worker):
    requests = []

    @app.task(name='t.again', bind=True)
    def again(self, n):
        requests.append((self.request.id, self.request.reply_to, self.request.parent_id, n))
        if n == 0:
            raise self.retry(args=(1,), countdown=0)
        return n

    start_worker()
    result = again.delay(0)
    assert result.get(timeout=10) == 1
    assert requests == [
        (result.id, app.backend.oid, None, 0),
        (result.id, app.backend.oid, result.id, 1),
    ]


# ------------------------------------------------------------------ eta, expires


def test_countdown_runs_the_task_no_earlier_than_its_eta(app, start_worker):
    add = add_task(app)
    start_worker()
    sent = datetime.now(timezone.utc)
    result = add.apply_async((1, 2), countdown=1)
    assert result.get(timeout=10) == 3
    assert result.date_done >= sent + timedelta(seconds=1)


def test_a_held_eta_task_does_not_block_the_prefetch_window(app, start_worker):
    add = add_task(app)
    worker = start_worker(concurrency=1, prefetch_count=1)
    later = add.apply_async((1, 1), countdown=60)
    eventually(lambda: worker.stats()['held'] == 1, timeout=10)
    assert add.delay(2, 2).get(timeout=10) == 4  # the window was raised to 2
    assert later.state == states.PENDING
    later.revoke()  # REVOKED at once, not at the eta
    with pytest.raises(TaskRevokedError, match='revoked'):
        later.get(timeout=10)
    eventually(lambda: worker.stats()['held'] == 0, timeout=10)


def test_a_task_past_its_expires_time_is_revoked_as_expired(app, start_worker):
    ran = []

    @app.task(name='t.mark')
    def mark():
        ran.append(1)

    start_worker()
    past = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    result = mark.apply_async(headers={'expires': past})
    with pytest.raises(TaskRevokedError) as info:
        result.get(timeout=10)
    assert info.value.args == ('expired',) and result.state == states.REVOKED
    assert ran == []


def test_a_task_that_expires_while_held_for_its_eta_is_revoked_as_expired(app, start_worker):
    add = add_task(app)
    start_worker()
    result = add.apply_async((1, 1), countdown=1, expires=0.5)
    with pytest.raises(TaskRevokedError, match='expired'):
        result.get(timeout=10)


# ------------------------------------------------------------------ revoke


def test_revoke_of_a_queued_task_stores_revoked_at_once(app, start_worker, gate):
    ran = []

    @app.task(name='t.block')
    def block():
        gate.started.set()
        gate.release.wait(30)
        return 'unblocked'

    @app.task(name='t.victim')
    def victim():
        ran.append(1)

    worker = start_worker(concurrency=1)
    blocker = block.delay()
    assert gate.started.wait(10)
    queued = victim.delay()
    eventually(lambda: worker.stats()['queued'] == 1, timeout=10)
    queued.revoke()
    with pytest.raises(TaskRevokedError, match='revoked'):
        queued.get(timeout=10)  # while the only pool thread is still busy
    gate.release.set()
    assert blocker.get(timeout=10) == 'unblocked'
    assert ran == []


def test_revoke_before_the_message_arrives_revokes_it_on_arrival(app, start_worker):
    add = add_task(app)
    worker = start_worker()
    task_id = str(uuid.uuid4())
    app.control_revoke(task_id)
    eventually(lambda: task_id in worker.revoked, timeout=10)
    result = add.apply_async((1, 1), task_id=task_id)
    with pytest.raises(TaskRevokedError, match='revoked'):
        result.get(timeout=10)


def test_revoke_aimed_at_another_worker_is_ignored(app, start_worker):
    worker = start_worker()
    other = start_worker(hostname=f'other-{uuid.uuid4().hex[:6]}@test')
    exchange, body, props = protocol.control_revoke(['aimed'], destination=[other.hostname])
    with pika.BlockingConnection(pika_parameters(app.conf.broker_url)) as conn:
        _, _, data = serialization.dumps(body, 'json')
        conn.channel().basic_publish(
            exchange,
            '',
            data,
            pika.BasicProperties(content_type='application/json', content_encoding='utf-8'),
        )
    eventually(lambda: 'aimed' in other.revoked, timeout=10)
    assert 'aimed' not in worker.revoked


def test_revoke_with_terminate_of_a_running_task_stores_revoked_terminated(app, start_worker, gate):
    add = add_task(app)
    finished = threading.Event()

    @app.task(name='t.long')
    def long_task():
        gate.started.set()
        gate.release.wait(30)
        finished.set()
        return 'too late'

    worker = start_worker(concurrency=1)
    running = long_task.delay()
    assert gate.started.wait(10)
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError, match='terminated'):
        running.get(timeout=10)
    assert not finished.is_set()  # the thread was not killed: it still waits
    assert add.delay(3, 3).get(timeout=10) == 6  # a new pool thread took its place
    gate.release.set()
    assert finished.wait(10)
    assert running.state == states.REVOKED
    assert worker.stats()['abandoned'] == 1


def test_revoke_without_terminate_lets_a_running_task_finish(app, start_worker, gate):
    @app.task(name='t.long')
    def long_task():
        gate.started.set()
        gate.release.wait(30)
        return 'finished'

    worker = start_worker(concurrency=1)
    running = long_task.delay()
    assert gate.started.wait(10)
    running.revoke()
    eventually(lambda: running.id in worker.revoked, timeout=10)
    gate.release.set()
    assert running.get(timeout=10) == 'finished'


# ------------------------------------------------------------------ ignore_result, time limits


def test_ignore_result_stores_no_states_but_update_state(app, start_worker):
    app.conf.task_track_started = True
    add = add_task(app)

    @app.task(name='t.quiet', bind=True)
    def quiet(self):
        self.update_state(state='PROGRESS', meta={'step': 1})
        return 'not stored'

    start_worker(concurrency=1)
    # ignore_result=True would also stop this client from listening: put it in the header only.
    ignored = quiet.apply_async(ignore_result=False, headers={'ignore_result': True})
    # One pool thread runs them in order and results are published in order: once the
    # second is back, a final state of the first would have arrived before it.
    assert add.delay(1, 1).get(timeout=10) == 2
    eventually(lambda: ignored.state == 'PROGRESS', timeout=10)
    assert ignored.result == {'step': 1}


def test_a_task_ignoring_results_by_its_own_option_stores_nothing_final(app, start_worker):
    add = add_task(app)
    ran = threading.Event()

    @app.task(name='t.fire', ignore_result=True)
    def fire():
        ran.set()
        return 'dropped'

    start_worker(concurrency=1)
    fired = fire.delay()
    assert ran.wait(10)
    assert add.delay(2, 2).get(timeout=10) == 4
    assert fired.state == states.PENDING


def test_the_soft_time_limit_raises_soft_time_limit_exceeded_in_the_task(
    app, start_worker, gate, caplog
):
    @app.task(name='t.slow')
    def slow():
        try:
            while not gate.release.wait(0.01):
                pass
        except SoftTimeLimitExceeded:
            return 'cleaned up'
        return 'done'

    start_worker()
    caplog.set_level('WARNING', logger='pika_rpc')
    result = slow.apply_async(soft_time_limit=1)
    assert result.get(timeout=10) == 'cleaned up'
    assert 'passed its soft time limit (1s)' in caplog.text


def test_the_hard_time_limit_stores_time_limit_exceeded_while_the_thread_runs_on(
    app, start_worker, gate
):
    add = add_task(app)

    @app.task(name='t.stuck')
    def stuck():
        gate.started.set()
        gate.release.wait(30)

    start_worker(concurrency=1)
    result = stuck.apply_async(time_limit=1)
    assert gate.started.wait(10)
    with pytest.raises(TimeLimitExceeded) as info:
        result.get(timeout=10)
    assert info.value.args == (1,)
    assert add.delay(1, 2).get(timeout=10) == 3  # a new thread serves the pool


# ------------------------------------------------------------------ groups, many threads


def test_a_group_is_joined_natively_in_its_own_order(app, start_worker):
    add = add_task(app)
    start_worker(concurrency=4)
    group_id = str(uuid.uuid4())
    group = GroupResult(
        group_id,
        [add.apply_async((i, i), group_id=group_id, group_index=i) for i in range(10)],
        app=app,
    )
    assert group.join_native(timeout=10) == [2 * i for i in range(10)]
    assert group.ready() and group.successful() and group.completed_count() == 10
    assert group.get(timeout=1) == [2 * i for i in range(10)]


def test_iter_native_yields_each_task_once_as_it_completes(app, start_worker):
    add = add_task(app)
    start_worker(concurrency=4)
    results = ResultSet([add.delay(i, 1) for i in range(8)], app=app)
    got = dict((task_id, meta['result']) for task_id, meta in results.iter_native(timeout=10))
    assert got == {r.id: i + 1 for i, r in enumerate(results)}


def test_a_result_set_with_a_failure_propagates_it_and_counts_the_rest(app, start_worker):
    add = add_task(app)

    @app.task(name='t.fail')
    def fail():
        raise ValueError('one bad')

    start_worker(concurrency=2)
    results = ResultSet([add.delay(1, 1), fail.delay(), add.delay(2, 2)], app=app)
    with pytest.raises(ValueError, match='one bad'):
        results.join_native(timeout=10)
    assert results.join_native(timeout=10, propagate=False)[0::2] == [2, 4]
    assert results.completed_count() == 2 and results.ready()
    assert not results.successful() and results.failed()


def test_64_threads_calling_delay_get_against_a_worker_of_concurrency_4(app, start_worker):
    add = add_task(app)
    start_worker(concurrency=4)
    barrier = threading.Barrier(64)
    values, errors = {}, []

    def call(i):
        try:
            barrier.wait(10)
            values[i] = add.delay(i, i).get(timeout=30)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert values == {i: 2 * i for i in range(64)}


# ------------------------------------------------------------------ stop


def test_stop_hands_prefetched_messages_to_another_worker_and_waits_for_the_running_one(
    app, start_worker, gate
):
    @app.task(name='t.block')
    def block():
        gate.started.set()
        gate.release.wait(30)
        return 'finished by A'

    @app.task(name='t.who', bind=True)
    def who(self):
        return self.request.hostname

    first = start_worker(concurrency=1, prefetch_count=10, hostname=f'a-{uuid.uuid4().hex[:6]}@t')
    blocked = block.delay()
    assert gate.started.wait(10)
    waiting = [who.delay() for _ in range(3)]
    eventually(lambda: first.stats()['queued'] == 3, timeout=10)
    second = start_worker(concurrency=2, hostname=f'b-{uuid.uuid4().hex[:6]}@t')
    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(first.stop(30)))
    stopper.start()
    assert [r.get(timeout=10) for r in waiting] == [second.hostname] * 3
    assert stopper.is_alive()  # still waiting for the running task
    gate.release.set()
    stopper.join(30)
    assert stopped == [True]
    assert blocked.get(timeout=10) == 'finished by A'


def test_stop_returns_unacked_messages_when_nothing_runs(app, start_worker, amqp_url, unique_name):
    add = add_task(app)
    worker = start_worker(concurrency=1)
    held = add.apply_async((1, 1), countdown=60)
    eventually(lambda: worker.stats()['held'] == 1, timeout=10)
    assert worker.stop(10) is True
    eventually(lambda: queue_depth(amqp_url, unique_name) == 1, timeout=10)
    assert held.state == states.PENDING


def test_run_blocks_until_stop_is_requested(app):
    add = add_task(app)
    worker = Worker(app)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        assert worker.ready.wait(10)
        assert add.delay(5, 5).get(timeout=10) == 10
    finally:
        worker.request_stop()
        runner.join(20)
    assert not runner.is_alive()
    assert worker.stats()['state'] == 'STOPPED'
