"""The one publish-and-wait path: every sender fails the same way, and early.

``send_task``, ``control_revoke``, ``store_result``, ``Producer.publish`` and the Worker's
retry all go through ``pika_rpc._publish.publish_and_wait``. These tests pin the points where
the copies it replaced behaved differently.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

import pytest

from pika_rpc import App
from pika_rpc.errors import (
    AccessRefused,
    BrokerRefused,
    ConnectionLost,
    NotFound,
    PreconditionFailed,
    PublishError,
    Unroutable,
    refusal,
)
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents


def test_send_task_refuses_a_header_amqp_cannot_carry_before_anything_is_sent(
    make_app: Callable[..., App], raw_channel: Any, unique_name: str
) -> None:
    app = make_app()
    with pytest.raises(TypeError, match='header headers.weight is a float'):
        app.send_task('tasks.add', (1, 2), headers={'weight': 0.5})
    app.send_task('tasks.add', (1, 2), ignore_result=True)  # the queue exists now
    assert raw_channel.queue_declare(unique_name, passive=True).method.message_count == 1


def test_revoke_raises_connection_lost_like_every_sender_when_the_broker_is_unreachable(
    make_client: Callable[..., App], fault_proxy: FaultProxy, raw_channel: Any
) -> None:
    raw_channel.exchange_declare('celery.pidbox', 'fanout', durable=False, auto_delete=False)
    app = make_client(broker_connection_max_retries=1)
    app.control_revoke('some-task', timeout=20)  # the exchange is known: no declare next
    events = LinkEvents(app.connection_for_write().link)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    assert events.wait('gave_up')
    for send in (
        lambda: app.control_revoke('some-task', timeout=20),
        lambda: app.send_task('tasks.add', (1, 2), ignore_result=True, timeout=20),
    ):
        with pytest.raises(ConnectionLost):  # a new cycle, refused, given up
            send()


def test_broker_refusals_are_typed_by_reply_code_and_survive_pickling() -> None:
    for code, cls in [
        (404, NotFound),
        (403, AccessRefused),
        (406, PreconditionFailed),
        (405, BrokerRefused),
    ]:
        err = refusal(code, f'declare x: {code} text', 'text')
        assert type(err) is cls and isinstance(err, BrokerRefused)
        again = pickle.loads(pickle.dumps(err))
        assert (type(again), again.reply_code, again.reply_text, str(again)) == (
            cls,
            code,
            'text',
            f'declare x: {code} text',
        )
    returned = Unroutable('ex', 'rk', 312, 'NO_ROUTE', 'task t[1]')
    again = pickle.loads(pickle.dumps(returned))
    assert isinstance(again, PublishError) and str(again) == str(returned)
    assert (again.exchange, again.routing_key, again.reply_code) == ('ex', 'rk', 312)
