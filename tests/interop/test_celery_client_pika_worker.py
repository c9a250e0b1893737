"""A real Celery client -> pika_rpc's Worker.

Each test runs :mod:`tests.interop.celery_client` (``Celery(broker=..., backend='rpc://')``) in a
subprocess that sends an ``interop.*`` task to our Worker and prints what Celery made of the
states our Worker stored: values, exceptions (Celery's own classes), ``on_message`` states and
``backend.get_task_meta`` polls. Skipped while ``pika_rpc.worker`` does not exist.
"""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest

from pika_rpc import serialization
from tests.interop.harness import run_celery_client

pytestmark = [pytest.mark.interop]


def call(amqp_url, pika_worker, task, args=(), **spec):
    spec = dict({'scenario': 'call', 'task': task, 'args': list(args)}, **spec)
    out = run_celery_client(amqp_url, pika_worker.queue, spec)
    assert 'ContentDisallowed' not in out['stderr'], out['stderr']
    return out


def value_of(out):
    assert out['ok'], out.get('error')
    return serialization.loads(out['value']['json'].encode(), 'application/json', 'utf-8')


def test_celery_get_returns_our_workers_value(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.add', (2, 3))
    assert value_of(out) == 5
    assert out['state'] == 'SUCCESS'


def test_celery_get_task_meta_polls_our_stored_result(amqp_url, pika_worker):
    out = run_celery_client(
        amqp_url, pika_worker.queue, {'scenario': 'poll', 'task': 'interop.add', 'args': [20, 22]}
    )
    assert 'ContentDisallowed' not in out['stderr'], out['stderr']
    assert out['statuses'][-1] == 'SUCCESS'
    assert out['meta']['status'] == 'SUCCESS' and out['meta']['result']['json'] == '42'
    assert {'task_id', 'date_done', 'children', 'traceback'} <= set(out['meta']['keys'])


def test_celery_decodes_the_envelopes_our_worker_writes(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.typed_values')
    assert out['value']['types'] == {
        'datetime': 'datetime',
        'naive': 'datetime',
        'decimal': 'Decimal',
        'uuid': 'UUID',
        'bytes': 'bytes',
        'binary': 'bytes',
        'tuple': 'list',
        'text': 'str',
    }
    assert value_of(out) == {
        'datetime': datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc),
        'naive': datetime.datetime(2026, 1, 2, 3, 4, 5),
        'decimal': decimal.Decimal('1.10'),
        'uuid': uuid.UUID(int=1),
        'bytes': b'caf\xc3\xa9',
        'binary': b'\xff\x00',
        'tuple': [1, 2],
        'text': 'caf\u00e9 \u2603',
    }


def test_our_worker_decodes_the_envelopes_celery_writes(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.describe', typed_args=True)
    assert value_of(out) == {
        'datetime': 'datetime',
        'date': 'date',
        'time': 'time',
        'decimal': 'Decimal',
        'uuid': 'UUID',
        'bytes': 'bytes',
        'text': 'str',
    }


def test_celery_reraises_our_failure_as_the_builtin_class(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.boom', ('bad input',))
    assert not out['ok'] and out['state'] == 'FAILURE'
    assert out['error']['class'] == 'ValueError' and out['error']['module'] == 'builtins'
    assert out['error']['args'] == ["'bad input'"]
    assert 'ValueError' in (out['traceback'] or '')


def test_celery_reraises_a_class_it_does_not_know_by_name_and_args(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.decline', ('card', 42))
    assert not out['ok']
    assert out['error']['class'] == 'PaymentDeclined'
    assert out['error']['args'] == ["'card'", '42']


def test_celery_gets_not_registered_for_a_task_our_worker_lacks(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.no_such_task', timeout=20)
    assert not out['ok'] and out['state'] == 'FAILURE'
    assert out['error']['class'] == 'NotRegistered'
    assert out['error']['module'] == 'celery.exceptions'


def test_celery_on_message_sees_our_started_and_progress_states(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.progress', (3,))
    assert value_of(out) == 3
    statuses = [m['status'] for m in out['messages']]
    assert statuses == ['STARTED', 'PROGRESS', 'PROGRESS', 'PROGRESS', 'SUCCESS']
    started = serialization.loads(
        out['messages'][0]['result']['json'].encode(), 'application/json', 'utf-8'
    )
    assert set(started) >= {'pid', 'hostname'}
    progress = [
        serialization.loads(m['result']['json'].encode(), 'application/json', 'utf-8')
        for m in out['messages'][1:4]
    ]
    assert progress == [{'done': i, 'total': 3} for i in (1, 2, 3)]


def test_celery_follows_our_retry_to_success(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.flaky', (1,))
    assert value_of(out) == {'retries': 1}
    statuses = [m['status'] for m in out['messages']]
    assert statuses == ['STARTED', 'RETRY', 'STARTED', 'SUCCESS']
    retry = serialization.loads(
        out['messages'][1]['result']['json'].encode(), 'application/json', 'utf-8'
    )  # on_message: the raw dict
    assert retry == {'exc_type': 'KeyError', 'exc_message': ['missing'], 'exc_module': 'builtins'}


@pytest.mark.slow
def test_celerys_revoke_is_honoured_by_our_worker(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.add', (1, 1), options={'countdown': 3}, revoke=True)
    assert not out['ok'] and out['state'] == 'REVOKED'
    assert out['error']['class'] == 'TaskRevokedError'
    assert out['error']['module'] == 'celery.exceptions'
    assert out['error']['celery_task_revoked_error'] is True
    assert out['error']['args'] == ["'revoked'"]
    assert [m['status'] for m in out['messages']] == ['REVOKED']


@pytest.mark.slow
def test_celery_sees_our_worker_revoke_an_expired_task(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.add', (1, 1), options={'countdown': 2, 'expires': 1})
    assert not out['ok'] and out['state'] == 'REVOKED'
    assert out['error']['celery_task_revoked_error'] is True
    assert out['error']['args'] == ["'expired'"]


def test_celerys_custom_headers_survive_our_workers_retries(amqp_url, pika_worker):
    out = call(
        amqp_url, pika_worker, 'interop.traced', options={'headers': {'trace_id': 'celery-abc'}}
    )
    assert value_of(out) == ['celery-abc'] * 3


def test_our_workers_autoretry_is_seen_by_celery_as_retries(amqp_url, pika_worker):
    out = call(amqp_url, pika_worker, 'interop.auto_flaky')
    assert value_of(out) == 2
    assert [m['status'] for m in out['messages']] == ['STARTED', 'RETRY'] * 2 + [
        'STARTED',
        'SUCCESS',
    ]


def test_celerys_soft_time_limit_raises_soft_time_limit_exceeded_in_our_workers_task(
    amqp_url, pika_worker
):
    # Whole seconds: Celery's client sends header numbers as AMQP integers (0.5 arrives as 0).
    out = call(amqp_url, pika_worker, 'interop.soft_limited', options={'soft_time_limit': 1})
    assert value_of(out) == 'cleaned up'
