"""pika_rpc._pidbox: Celery's remote-control facts as data (replies, the shapes of inspect
answers, the Lamport clock), checked against what Celery 5.7 and kombu write.

The replies of a real Celery worker were captured from RabbitMQ (``celery -A ... worker``,
``inspect ping``): properties ``delivery_mode=1, priority=0, headers={'ticket': <ticket>,
'clock': <n>}``, content type ``application/json``, body ``{"<node>": {"ok": "pong"}}``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from pika_rpc import _pidbox, protocol, serialization

# celery.worker.request.Request.info() keys (Celery 5.5-5.7).
CELERY_INFO_KEYS = [
    'id',
    'name',
    'args',
    'kwargs',
    'type',
    'hostname',
    'time_start',
    'acknowledged',
    'delivery_info',
    'worker_pid',
]


def test_a_reply_is_the_nodes_name_over_its_reply_with_kombus_properties():
    body, props = _pidbox.reply_message('w1@host', {'ok': 'pong'}, 'ticket-1', 3)
    assert serialization.dumps(body, 'json') == (
        'application/json',
        'utf-8',
        b'{"w1@host": {"ok": "pong"}}',
    )
    assert props == {
        'delivery_mode': 1,
        'priority': 0,
        'headers': {'clock': 3, 'ticket': 'ticket-1'},
    }


def test_a_reply_without_a_ticket_carries_no_ticket_header():
    _, props = _pidbox.reply_message('w1@host', [], None, 1)
    assert props['headers'] == {'clock': 1}


@pytest.mark.parametrize(
    'body, target',
    [
        (
            {'ticket': 't', 'reply_to': {'exchange': 'reply.celery.pidbox', 'routing_key': 'oid'}},
            ('reply.celery.pidbox', 'oid', 't'),
        ),
        ({'reply_to': {'exchange': 'r', 'routing_key': 'k'}}, ('r', 'k', None)),
        ({'ticket': 't'}, None),  # a cast
        ({'ticket': 't', 'reply_to': {'exchange': 'r'}}, None),
        ({'ticket': 't', 'reply_to': {'exchange': 5, 'routing_key': 'k'}}, None),
        ({'ticket': 't', 'reply_to': 'r'}, None),
    ],
)
def test_the_reply_target_is_read_from_reply_to_and_ticket(body, target):
    assert _pidbox.reply_target(body) == target


def test_ok_and_nok_are_celerys_reply_shapes():
    assert _pidbox.ok('pong') == {'ok': 'pong'}
    assert _pidbox.nok('unknown task') == {'error': 'unknown task'}


def _request(**fields):
    values = dict(
        id='t1',
        name='t.add',
        args=[1],
        kwargs={},
        priority=None,
        delivery_info={'exchange': 'ex', 'routing_key': 'rk', 'priority': 2, 'redelivered': True},
        hostname=None,
        argsrepr=None,
        kwargsrepr=None,
    )
    values.update(fields)
    return protocol.TaskRequest(**values)


def test_request_info_has_celerys_keys_in_celerys_order():
    info = _pidbox.request_info(_request(), 'w1@host', time_start=1.5, worker_pid=7)
    assert list(info) == CELERY_INFO_KEYS
    assert info['hostname'] == 'w1@host' and info['type'] == 't.add'
    assert info['delivery_info'] == {
        'exchange': 'ex',
        'routing_key': 'rk',
        'priority': 2,
        'redelivered': True,
    }
    assert (info['time_start'], info['worker_pid'], info['acknowledged']) == (1.5, 7, False)


def test_request_info_safe_uses_the_reprs_or_a_capped_repr():
    info = _pidbox.request_info(_request(argsrepr='(1,)'), 'w', safe=True)
    assert info['args'] == '(1,)' and info['kwargs'] == '{}'
    info = _pidbox.request_info(_request(args=['x' * 5000]), 'w', safe=True)
    assert len(info['args']) == 1024 and info['args'].endswith('...')


def test_scheduled_info_writes_the_eta_in_iso_format():
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert _pidbox.scheduled_info(eta, 0, {'id': 't'}) == {
        'eta': '2030-01-02T03:04:05+00:00',
        'priority': 0,
        'request': {'id': 't'},
    }


def test_registered_entry_shows_the_attributes_that_are_set_as_celery_does():
    task = SimpleNamespace(rate_limit='5/s', exchange=None, options={'routing_key': 'rk'})
    assert _pidbox.registered_entry('t.add', task) == 't.add [routing_key=rk rate_limit=5/s]'
    assert _pidbox.registered_entry('t.add', SimpleNamespace()) == 't.add'
    assert _pidbox.registered_entry('t.add', task, ['_secret', 'rate_limit', 3]) == (
        't.add [rate_limit=5/s]'
    )


def test_broker_info_never_holds_a_password_and_lists_the_failover_alternates():
    info = _pidbox.broker_info(
        'amqp://user:s3cret@h1:5673/v1;amqp://user:s3cret@h2//', heartbeat=60, connect_timeout=4
    )
    assert 's3cret' not in json.dumps(info)
    assert (info['hostname'], info['port'], info['userid'], info['virtual_host']) == (
        'h1',
        5673,
        'user',
        'v1',
    )
    assert info['alternates'] == ['amqp://user:**@h2:5672//']
    assert info['heartbeat'] == 60 and info['transport'] == 'amqp' and info['ssl'] is False


def test_stats_reply_has_celerys_keys_and_keeps_the_workers_own_counters():
    worker = {
        'total': {'t.add': 2},
        'uptime': 12.6,
        'concurrency': 4,
        'threads': 4,
        'prefetch_count': 16,
        'received': 3,
        'state': 'RUNNING',
    }
    stats = _pidbox.stats_reply(worker, clock=9, broker={'hostname': 'h'})
    assert stats['total'] == {'t.add': 2} and stats['clock'] == '9' and stats['uptime'] == 13
    assert stats['pool'] == {
        'implementation': 'pika_rpc.worker:Worker',
        'max-concurrency': 4,
        'threads': 4,
    }
    assert stats['prefetch_count'] == 16 and stats['broker'] == {'hostname': 'h'}
    assert stats['pika_rpc'] == {'received': 3, 'state': 'RUNNING'}
    assert stats['rusage']['maxrss'] > 0


def test_the_lamport_clock_adjusts_past_what_it_receives_and_forwards_on_send():
    clock = _pidbox.LamportClock()
    assert clock.adjust(10) == 11
    assert clock.adjust(3) == 12  # an older clock still moves it on
    assert clock.adjust('junk') == 13
    assert clock.forward() == 14


def test_the_pidbox_names_are_still_importable_from_protocol():
    assert protocol.control_revoke is _pidbox.control_revoke
    assert protocol.pidbox_queue_name('w1@host') == 'w1@host.celery.pidbox'
