"""pika_rpc._control without a broker: which node a command is for, its dispatch, and the
replies to Celery's inspect/control commands (published by a stand-in).

The control queue and real revoke broadcasts are tested against RabbitMQ in
tests/integration/test_worker.py and tests/interop; here only the pure logic, with a message
stand-in that has the one method the handler reads (``decode``).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

import pytest

from pika_rpc import protocol
from pika_rpc._control import ControlHandler, RevokedIds, control_queue
from pika_rpc._jobs import DONE, HELD, QUEUED, RUNNING, Job
from pika_rpc.errors import DecodeError, EncodeError, PublishError


class _Message:
    def __init__(self, body: Any = None, error: Optional[Exception] = None) -> None:
        self._body, self._error = body, error
        self.headers = {'clock': 5}

    def decode(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._body


def _handler() -> Tuple[ControlHandler, List[tuple]]:
    calls: List[tuple] = []
    return ControlHandler(
        'w1@host', on_revoke=lambda ids, terminate: calls.append((ids, terminate))
    ), calls


@pytest.mark.parametrize(
    'body, meant',
    [
        ({}, True),
        ({'destination': ['w1@host', 'w2@host']}, True),
        ({'destination': ['w2@host']}, False),
        ({'pattern': 'w*@host', 'matcher': 'glob'}, True),
        ({'pattern': 'w2*', 'matcher': 'glob'}, False),
        ({'pattern': r'^w\d@', 'matcher': 'pcre'}, True),
        ({'pattern': r'^x', 'matcher': 'pcre'}, False),
        ({'pattern': 'nothing', 'matcher': None}, True),  # no matcher: a broadcast
    ],
)
def test_a_command_is_for_this_node_by_destination_or_pattern(body, meant):
    handler, _ = _handler()
    assert handler.for_me(body) is meant


def test_a_revoke_broadcast_calls_the_workers_revoke_with_its_ids():
    handler, calls = _handler()
    _, body, _ = protocol.control_revoke(['a', 'b'], terminate=True)
    handler._on_message(_Message(body))
    _, body, _ = protocol.control_revoke('c')
    handler._on_message(_Message(body))
    assert calls == [(['a', 'b'], True), (['c'], False)]


def test_a_revoke_keeps_only_the_ids_that_are_strings():
    handler, calls = _handler()
    handler._on_message(_Message({'method': 'revoke', 'arguments': {'task_id': ['a', 5, None]}}))
    assert calls == [(['a'], False)]


@pytest.mark.parametrize(
    'message',
    [
        _Message({'method': 'ping', 'arguments': {}}),  # no reply wanted
        _Message({'method': ['revoke']}),  # not a name
        _Message({'method': 'revoke', 'destination': ['w2@host']}),  # for another node
        _Message(['revoke']),  # not a dict
        _Message(error=DecodeError('bad json')),
    ],
)
def test_what_is_not_a_revoke_for_this_node_is_ignored(message):
    handler, calls = _handler()
    handler._on_message(message)
    assert calls == []


def test_the_control_queue_is_declared_as_celery_declares_it():
    queue = control_queue('w1@host')
    steps = dict(queue.declarations())
    assert steps['declare_exchange'] == dict(
        exchange=protocol.PIDBOX_EXCHANGE,
        exchange_type=protocol.PIDBOX_EXCHANGE_TYPE,
        passive=False,
        durable=False,
        auto_delete=False,
        arguments=None,
    )
    assert steps['declare_queue']['queue'] == protocol.pidbox_queue_name('w1@host')
    assert steps['declare_queue']['exclusive'] and not steps['declare_queue']['durable']
    assert steps['declare_queue']['arguments'] == {
        'x-expires': int(protocol.PIDBOX_QUEUE_EXPIRES * 1000),
        'x-message-ttl': int(protocol.PIDBOX_QUEUE_TTL * 1000),
    }


def test_revoked_ids_are_bounded_and_keep_the_newest():
    revoked = RevokedIds(maxlen=3)
    for task_id in 'abcd':
        revoked.add(task_id)
    assert len(revoked) == 3 and 'a' not in revoked and 'd' in revoked


def test_revoked_ids_are_forgotten_after_they_expire():
    revoked = RevokedIds(expires=-1.0)  # every id is past its expiry when added
    revoked.add('a')
    assert 'a' not in revoked and len(revoked) == 0


# ------------------------------------------------------------------ commands and their replies

REPLY_TO = {'exchange': 'reply.celery.pidbox', 'routing_key': 'client-oid'}


class _Inline:
    """Stands in for the control thread: runs what is submitted at once, in order."""

    def submit(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def stop(self, timeout: Optional[float] = None) -> None:
        pass


def _request(method: str, ticket: Optional[str] = 't-1', **arguments: Any) -> _Message:
    body = {'method': method, 'arguments': arguments, 'destination': ['w1@host']}
    if ticket is not None:
        body.update(ticket=ticket, reply_to=REPLY_TO)
    return _Message(body)


def _replying(**callbacks: Any) -> Tuple[ControlHandler, List[tuple]]:
    """A handler whose replies (and after-reply actions) are recorded, in order."""
    sent: List[tuple] = []
    callbacks.setdefault('on_revoke', lambda ids, terminate: [])
    handler = ControlHandler('w1@host', **callbacks)
    handler._replies = _Inline()
    handler._publish = lambda exchange, key, ticket, reply: sent.append(
        (exchange, key, ticket, reply)
    )
    return handler, sent


def _reply_to(message: _Message, **callbacks: Any) -> Any:
    handler, sent = _replying(**callbacks)
    handler._on_message(message)
    assert [s[:3] for s in sent] == [('reply.celery.pidbox', 'client-oid', 't-1')]
    return sent[0][3]


def _job(state: str, task_id: str, eta: Optional[datetime] = None) -> Tuple[str, Job]:
    request = protocol.TaskRequest(
        id=task_id,
        name='t.add',
        args=[1, 2],
        kwargs={'z': 3},
        eta=eta,
        argsrepr='(1, 2)',
        kwargsrepr="{'z': 3}",
        priority=5,
        delivery_info={'exchange': '', 'routing_key': 'q', 'priority': 5, 'redelivered': False},
        hostname='w1@host',
    )
    job = Job(request, message=None, task=None)
    job.state = state
    if state == RUNNING:
        job.time_start = 1700000000.5
    return state, job


def test_a_command_that_asks_for_a_reply_gets_it_with_its_ticket():
    handler, sent = _replying()
    handler._on_message(_request('ping', ticket='t-7'))
    assert sent == [('reply.celery.pidbox', 'client-oid', 't-7', {'ok': 'pong'})]


@pytest.mark.parametrize(
    'message',
    [
        _request('ping', ticket=None),  # a cast: no reply_to
        _Message({'method': 'ping', 'ticket': 't', 'reply_to': {'exchange': 'x'}}),  # no key
        _Message({'method': 'ping', 'ticket': 't', 'reply_to': REPLY_TO, 'destination': ['w2']}),
    ],
)
def test_no_reply_is_sent_unless_one_is_asked_for_by_a_command_for_this_node(message):
    handler, sent = _replying()
    handler._on_message(message)
    assert sent == []


def test_an_unknown_command_gets_celerys_error_shape_naming_the_commands_answered():
    reply = _reply_to(_request('conf'))
    assert list(reply) == ['error'] and reply['error'].startswith("unknown command 'conf'")
    assert 'ping, rate_limit, registered' in reply['error']


def test_a_command_that_raises_gets_kombus_error_reply():
    def broken() -> Dict[str, Any]:
        raise RuntimeError('no stats today')

    assert _reply_to(_request('stats'), stats=broken) == {'error': "RuntimeError('no stats today')"}


def test_active_reserved_and_scheduled_show_the_jobs_in_their_state():
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    jobs = [_job(RUNNING, 'run'), _job(QUEUED, 'wait'), _job(HELD, 'later', eta), _job(DONE, 'x')]
    active = _reply_to(_request('active'), jobs=lambda: jobs)
    assert [i['id'] for i in active] == ['run']
    assert active[0]['time_start'] == 1700000000.5 and active[0]['worker_pid'] == os.getpid()
    assert active[0]['args'] == [1, 2] and active[0]['kwargs'] == {'z': 3}
    reserved = _reply_to(_request('dump_reserved'), jobs=lambda: jobs)  # Celery's alias
    assert [i['id'] for i in reserved] == ['wait'] and reserved[0]['worker_pid'] is None
    scheduled = _reply_to(_request('scheduled'), jobs=lambda: jobs)
    assert scheduled == [
        {'eta': '2030-01-02T03:04:05+00:00', 'priority': 5, 'request': scheduled[0]['request']}
    ]
    assert scheduled[0]['request']['id'] == 'later'


def test_active_with_safe_shows_the_argument_reprs():
    jobs = [_job(RUNNING, 'run')]
    info = _reply_to(_request('active', safe=True), jobs=lambda: jobs)[0]
    assert (info['args'], info['kwargs']) == ('(1, 2)', "{'z': 3}")


def test_registered_lists_the_task_names_sorted_without_celerys_builtins():
    tasks = {'b.second': object(), 'a.first': object(), 'celery.chord_unlock': object()}
    assert _reply_to(_request('registered', taskinfoitems=[]), tasks=lambda: tasks) == [
        'a.first',
        'b.second',
    ]


def test_revoked_lists_the_revoked_ids_oldest_first():
    revoked = RevokedIds()
    for task_id in ('b', 'a'):
        revoked.add(task_id)
    assert _reply_to(_request('revoked'), revoked=revoked) == ['b', 'a']


def test_revoke_replies_as_celery_with_the_ids_flagged():
    calls: List[tuple] = []

    def on_revoke(ids: List[str], terminate: bool) -> List[str]:
        calls.append((ids, terminate))
        return []

    reply = _reply_to(_request('revoke', task_id=['b', 'a']), on_revoke=on_revoke)
    assert reply == {'ok': "tasks {'a', 'b'} flagged as revoked"}
    assert calls == [(['b', 'a'], False)]


def test_terminate_revokes_and_says_the_running_task_was_not_killed():
    calls: List[tuple] = []

    def on_revoke(ids: List[str], terminate: bool) -> List[str]:
        calls.append((ids, terminate))
        return ['run']

    reply = _reply_to(_request('terminate', signal='SIGKILL', task_id=['run']), on_revoke=on_revoke)
    assert calls == [(['run'], True)]
    assert reply['ok'].startswith('terminate: run: REVOKED stored and the message acked')
    assert 'the running task was not killed' in reply['ok']


def test_terminate_of_tasks_not_running_here_says_so():
    reply = _reply_to(_request('revoke', task_id='a', terminate=True))
    assert reply == {
        'ok': "terminate: none of these tasks is running here; tasks {'a'} flagged as revoked"
    }


def test_rate_limit_is_an_error_reply_while_the_worker_has_no_rate_limits():
    reply = _reply_to(_request('rate_limit', task_name='t.add', rate_limit='5/s'))
    assert reply == {
        'error': 'rate_limit is not supported: a pika_rpc worker has no per-task rate '
        "limits, so 't.add' was not limited to '5/s'"
    }


def test_rate_limit_is_handed_to_the_worker_when_it_has_rate_limits():
    calls: List[tuple] = []

    def on_rate_limit(name: Any, limit: Any) -> Dict[str, Any]:
        calls.append((name, limit))
        return {'ok': 'new rate limit set successfully'}

    reply = _reply_to(
        _request('rate_limit', task_name='t.add', rate_limit='5/s'), on_rate_limit=on_rate_limit
    )
    assert reply == {'ok': 'new rate limit set successfully'} and calls == [('t.add', '5/s')]


def test_shutdown_replies_first_then_stops_the_worker():
    order: List[str] = []
    handler, sent = _replying(on_shutdown=lambda: order.append(f'stop after {len(sent)} reply'))
    handler._on_message(_request('shutdown'))
    assert [s[3] for s in sent] == [{'ok': 'shutting down'}]
    assert order == ['stop after 1 reply']


def test_shutdown_without_a_reply_still_stops_the_worker():
    stopped: List[bool] = []
    handler, sent = _replying(on_shutdown=lambda: stopped.append(True))
    handler._on_message(_request('shutdown', ticket=None))
    assert sent == [] and stopped == [True]


def test_a_reply_that_cannot_be_encoded_is_replaced_by_an_error_reply(caplog):
    handler = ControlHandler('w1@host', on_revoke=lambda ids, terminate: [])
    sent: List[Any] = []

    def publish(exchange: str, key: str, ticket: Optional[str], reply: Any) -> None:
        if not isinstance(reply, dict):
            raise EncodeError('json cannot encode a object')
        sent.append(reply)

    handler._publish = publish
    handler._send_reply(('reply.celery.pidbox', 'oid', 't'), 'active', object())
    assert sent == [{'error': 'reply not encodable: json cannot encode a object'}]
    assert 'cannot be encoded' in caplog.text


def test_a_reply_that_cannot_be_published_is_logged_and_dropped(caplog):
    handler = ControlHandler('w1@host', on_revoke=lambda ids, terminate: [])

    def publish(*args: Any) -> None:
        raise PublishError('not confirmed in time')

    handler._publish = publish
    handler._send_reply(('reply.celery.pidbox', 'oid', 't'), 'ping', {'ok': 'pong'})
    assert 'the reply to ping was not sent (oid): not confirmed in time' in caplog.text


def test_the_clock_moves_past_every_clock_received():
    handler, _ = _replying()
    message = _request('ping', ticket=None)
    message.headers = {'clock': 41}
    handler._on_message(message)
    assert handler.clock.value == 42
