"""pika_rpc client -> a real Celery worker (``rpc://`` results), solo and threads pools.

Each test sends with ``App.send_task`` (or ``Task.delay``) to a ``celery worker`` subprocess
(:mod:`tests.interop.celery_tasks`) and reads the states that worker publishes.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid

import pytest

from pika_rpc import App, TaskRevokedError, states
from tests.helpers import eventually

pytestmark = [pytest.mark.interop]

T = 'tests.interop.celery_tasks.'


@pytest.fixture
def client(amqp_url, celery_worker):
    app = App(broker=amqp_url, task_default_queue=celery_worker.queue, result_expires=600)
    yield app
    app.close()


def test_send_task_returns_the_celery_workers_value(client):
    assert client.send_task(T + 'add', (2, 3)).get(timeout=20) == 5


def test_delay_of_a_same_named_pika_rpc_task_runs_on_the_celery_worker(client):
    @client.task(name=T + 'add')
    def add(x, y):
        raise AssertionError('ran in the test process instead of the Celery worker')

    assert add.delay(20, 22).get(timeout=20) == 42


def test_values_kombu_wraps_in_envelopes_come_back_typed(client):
    value = client.send_task(T + 'typed_values').get(timeout=20)
    assert value == {
        'datetime': datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc),
        'naive': datetime.datetime(2026, 1, 2, 3, 4, 5),
        'decimal': decimal.Decimal('1.10'),
        'uuid': uuid.UUID(int=1),
        'bytes': b'caf\xc3\xa9',
        'tuple': [1, 2],
        'text': 'caf\u00e9 \u2603',
    }
    assert value['naive'].tzinfo is None
    assert str(value['decimal']) == '1.10'


SENT = {
    'datetime': datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    'date': datetime.date(2026, 1, 2),
    'time': datetime.time(3, 4, 5),
    'decimal': decimal.Decimal('2.50'),
    'uuid': uuid.UUID(int=5),
    'utf8': b'abc',
    'binary': b'\xff\x00',
}


def test_values_we_wrap_in_envelopes_reach_the_celery_task_typed(client):
    types = client.send_task(T + 'describe', (SENT,)).get(timeout=20)
    assert types == {
        'datetime': 'datetime',
        'date': 'date',
        'time': 'time',
        'decimal': 'Decimal',
        'uuid': 'UUID',
        'utf8': 'bytes',
        'binary': 'bytes',
    }


def test_values_round_trip_through_the_celery_worker_unchanged(client):
    assert client.send_task(T + 'echo', (SENT,)).get(timeout=20) == SENT


def test_failure_reraises_the_builtin_exception_with_its_message(client):
    result = client.send_task(T + 'boom', ('bad input',))
    with pytest.raises(ValueError) as info:
        result.get(timeout=20)
    assert type(info.value) is ValueError and info.value.args == ('bad input',)
    assert result.state == states.FAILURE and result.failed()
    assert 'ValueError: bad input' in result.traceback


def test_failure_of_a_class_unknown_here_reraises_by_name_and_args(client):
    with pytest.raises(Exception) as info:
        client.send_task(T + 'decline', ('card', 42)).get(timeout=20)
    assert type(info.value).__name__ == 'PaymentDeclined'
    assert info.value.args == ('card', 42)


def test_get_with_propagate_false_returns_the_exception(client):
    value = client.send_task(T + 'boom', ('quiet',)).get(timeout=20, propagate=False)
    assert isinstance(value, ValueError) and value.args == ('quiet',)


def test_on_message_sees_started_then_custom_progress_states(client, celery_worker):
    seen = []
    assert client.send_task(T + 'progress', (3,)).get(timeout=20, on_message=seen.append) == 3
    assert [m['status'] for m in seen] == ['STARTED', 'PROGRESS', 'PROGRESS', 'PROGRESS', 'SUCCESS']
    started = seen[0]['result']
    assert isinstance(started['pid'], int) and started['hostname'].startswith(celery_worker.queue)
    assert [m['result'] for m in seen[1:4]] == [{'done': i, 'total': 3} for i in (1, 2, 3)]


def test_retry_is_followed_through_retry_state_to_success(client):
    seen = []
    value = client.send_task(T + 'flaky', (1,)).get(timeout=20, on_message=seen.append)
    assert value == {'retries': 1}
    assert [m['status'] for m in seen] == ['STARTED', 'RETRY', 'STARTED', 'SUCCESS']
    retry = seen[1]['result']  # on_message gets the raw dict: the exception is not rebuilt
    assert retry == {'exc_type': 'KeyError', 'exc_message': ['missing'], 'exc_module': 'builtins'}


def test_state_and_get_task_meta_show_the_result_without_a_waiter(client, celery_worker):
    result = client.send_task(T + 'add', (1, 2))

    def succeeded():
        return result.state == states.SUCCESS

    eventually(succeeded, timeout=20)
    meta = client.backend.get_task_meta(result.id)
    assert meta['status'] == states.SUCCESS and meta['result'] == 3
    assert meta['task_id'] == result.id
    assert meta.get('date_done', 'absent before Celery 5.7')  # a string when present
    if 'name' in meta:  # result_extended keys (Celery 5.7) are kept as sent
        assert meta['name'] == T + 'add' and meta['args'] == [1, 2]
        assert meta['queue'] == celery_worker.queue
    assert result.get(timeout=0) == 3


def test_a_sender_chosen_correlation_id_still_reaches_its_task(client):
    result = client.send_task(T + 'add', (4, 4), correlation_id='corr-' + uuid.uuid4().hex)
    assert result.get(timeout=20) == 8


def test_the_celery_worker_reads_our_request_fields(client, celery_worker):
    result = client.send_task(T + 'whoami')
    seen = result.get(timeout=20)
    assert seen['id'] == result.id == seen['correlation_id'] == seen['root_id']
    assert seen['reply_to'] == client.backend.oid
    assert seen['retries'] == 0 and seen['parent_id'] is None and seen['ignore_result'] is None
    assert seen['origin'].startswith('gen')
    assert seen['delivery_info'] == {'exchange': '', 'routing_key': celery_worker.queue}


def test_many_threads_each_get_their_own_results(client):
    errors, values = [], {}
    barrier = threading.Barrier(6)

    def run(n):
        try:
            barrier.wait(10)
            results = [client.send_task(T + 'add', (i, n * 100)) for i in range(5)]
            values[n] = [r.get(timeout=30) for r in results]
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    assert values == {n: [i + n * 100 for i in range(5)] for n in range(6)}


@pytest.mark.slow
def test_a_task_that_expires_before_its_eta_is_revoked(client, celery_worker):
    seen = []
    result = client.send_task(T + 'add', (1, 1), countdown=2, expires=1)
    with pytest.raises(TaskRevokedError) as info:
        result.get(timeout=20, on_message=seen.append)
    assert info.value.args == ('expired',)
    assert [m['status'] for m in seen] == ['REVOKED']
    assert result.state == states.REVOKED


@pytest.mark.slow
def test_revoke_of_a_task_waiting_for_its_eta_stops_it_before_it_runs(client, celery_worker):
    seen = []
    result = client.send_task(T + 'add', (1, 1), countdown=3)
    celery_worker.wait_for_log(rf'\[{result.id}\] received', timeout=10)
    result.revoke()
    with pytest.raises(TaskRevokedError) as info:
        result.get(timeout=20, on_message=seen.append)
    assert info.value.args == ('revoked',)
    assert [m['status'] for m in seen] == ['REVOKED']
    log = celery_worker.log()
    assert f'Discarding revoked task: {T}add[{result.id}]' in log
    assert f'[{result.id}] succeeded' not in log


def test_celerys_solo_and_threads_pools_ignore_time_limits(client):
    # Only Celery's prefork pool enforces them (signals, killed processes). pika_rpc's Worker
    # raises SoftTimeLimitExceeded in the task and abandons it at the hard limit instead
    # (tests/integration/test_worker_task_options.py).
    result = client.send_task(T + 'sleep_then', (2, 'slept'), soft_time_limit=1, time_limit=1)
    assert result.get(timeout=20) == 'slept'
