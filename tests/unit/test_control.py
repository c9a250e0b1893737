"""pika_rpc._control without a broker: which node a command is for, and its dispatch.

The control queue and real revoke broadcasts are tested against RabbitMQ in
tests/integration/test_worker.py and tests/interop; here only the pure logic, with a message
stand-in that has the one method the handler reads (``decode``).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest

from pika_rpc import protocol
from pika_rpc._control import ControlHandler, RevokedIds, control_queue
from pika_rpc.errors import DecodeError


class _Message:
    def __init__(self, body: Any = None, error: Optional[Exception] = None) -> None:
        self._body, self._error = body, error

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
        _Message({'method': 'ping', 'arguments': {}}),  # not supported yet
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
