"""A process that only waits revives a link that gave up (through the fault proxy).

The client ``App`` reaches the broker through the proxy, with a small
``broker_connection_max_retries`` so its link gives up quickly once the proxy refuses; the
worker's side is a second ``App`` straight to the broker, so results land in the client's
durable reply queue while the client is cut off. Nothing is published by the client after
giving up: only its waits and polls may bring the link back.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

from pika_rpc import App
from pika_rpc.errors import ConnectionLost, TimeoutError
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents, eventually, list_queues

WAIT = 30.0


def reply(app: App, task_id: str) -> Dict[str, str]:
    return {'id': task_id, 'reply_to': app.backend.oid, 'correlation_id': task_id}


def give_up(client: App, fault_proxy: FaultProxy) -> LinkEvents:
    """Cut the client off until its link gives up; the proxy keeps refusing."""
    client.backend.result_consumer.start()
    link = client.backend._get_link()
    events = LinkEvents(link)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    assert events.wait('gave_up', timeout=WAIT)
    assert link.wait_for_state('IDLE', timeout=WAIT)
    return events


def store_while_cut_off(client: App, worker: App, task_id: str, value: Any) -> None:
    """The worker stores the result: it waits in the client's durable reply queue."""
    worker.backend.mark_as_done(task_id, value, request=reply(client, task_id))
    assert list_queues()[client.backend.oid].messages == 1


def test_get_on_a_given_up_link_connects_again_and_returns_the_result(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_connection_max_retries=2)
    client.backend.on_task_call(None, 'waited')
    events = give_up(client, fault_proxy)
    store_while_cut_off(client, worker, 'waited', 7)
    attempts = fault_proxy.connection_attempts
    result = client.AsyncResult('waited')
    with pytest.raises(ConnectionLost):  # a new cycle, refused: gives up too
        result.get(timeout=WAIT)
    assert fault_proxy.connection_attempts > attempts and events.count('gave_up') == 2
    fault_proxy.refuse(False)
    assert result.get(timeout=WAIT) == 7  # the next wait connects again
    assert events.wait('connected')
    assert client.backend._get_link().wait_for_state('OPEN', timeout=WAIT)


def test_get_on_a_given_up_link_connects_again_and_raises_timeout_error_when_no_result_comes(
    make_client: Callable[..., App], fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_connection_max_retries=2)
    client.backend.on_task_call(None, 'never-stored')
    events = give_up(client, fault_proxy)
    fault_proxy.refuse(False)
    with pytest.raises(TimeoutError):  # connected; the result never comes
        client.AsyncResult('never-stored').get(timeout=2.0)
    assert events.wait('connected')


def test_get_task_meta_on_a_given_up_link_raises_at_once_and_a_later_poll_sees_the_result(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_connection_max_retries=2)
    client.backend.on_task_call(None, 'polled')
    give_up(client, fault_proxy)
    store_while_cut_off(client, worker, 'polled', 'done')
    fault_proxy.refuse(False)
    backend = client.backend
    with pytest.raises(ConnectionLost):  # known down: no blocking connect
        backend.get_task_meta('polled')

    def polled_success() -> bool:
        return backend.get_task_meta('polled')['status'] == 'SUCCESS'

    eventually(polled_success, timeout=WAIT, retry_on=(AssertionError, ConnectionLost))
    assert client.AsyncResult('polled').get(timeout=0) == 'done'


def test_get_many_on_a_given_up_link_connects_again_and_returns_every_result(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    client = make_client(broker_connection_max_retries=2)
    for task_id in ('many-1', 'many-2'):
        client.backend.on_task_call(None, task_id)
    give_up(client, fault_proxy)
    for i, task_id in enumerate(('many-1', 'many-2')):
        worker.backend.mark_as_done(task_id, i, request=reply(client, task_id))
    fault_proxy.refuse(False)
    got = dict(
        (t, m['result']) for t, m in client.backend.get_many(['many-1', 'many-2'], timeout=WAIT)
    )
    assert got == {'many-1': 0, 'many-2': 1}
