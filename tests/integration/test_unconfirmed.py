"""Publishing without confirms (``broker_transport_options={'confirm_publish': False}``,
kombu's name) against the real broker; confirms stay on by default.

The difference shows on the broker (``rabbitmqctl list_channels``: which channels are in
confirm mode) and on a queue that refuses every message (``x-overflow: reject-publish``,
``x-max-length: 0``): the broker nacks each publish to it, which a confirming publisher
hears as a ``PublishError`` and one without confirms never hears of.
"""

from __future__ import annotations

import json
import threading
from typing import Dict, Iterator, List

import pika
import pytest

from pika_rpc import App
from pika_rpc.errors import PublishError
from pika_rpc.messaging import Connection, Producer
from tests.helpers import eventually, pika_parameters, rabbitmqctl

WAIT = 30.0
UNCONFIRMED = {'confirm_publish': False}


def confirm_modes(connection_name: str) -> List[bool]:
    """The confirm mode of each channel of the connection our link named ``connection_name``
    (``rabbitmqctl``: connections by client property, channels by connection name); raises
    ``RuntimeError`` when ``rabbitmqctl`` fails (a busy broker: the caller tries again)."""
    conns = json.loads(
        rabbitmqctl('list_connections', 'name', 'client_properties', '--formatter', 'json') or '[]'
    )
    names = [
        row['name']
        for row in conns
        if any(
            item[0] == 'connection_name' and item[-1] == connection_name
            for item in row.get('client_properties') or ()
        )
    ]
    assert len(names) == 1, (connection_name, names)
    chans = json.loads(
        rabbitmqctl('list_channels', 'name', 'confirm', '--formatter', 'json') or '[]'
    )
    return [row['confirm'] for row in chans if row['name'].startswith(names[0] + ' (')]


@pytest.fixture
def queues(amqp_url: str, unique_name: str) -> Iterator[Dict[str, str]]:
    """A plain queue and one that refuses (nacks) every message published to it."""
    names = {'plain': f'{unique_name}-plain', 'refusing': f'{unique_name}-refusing'}
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.queue_declare(names['plain'], arguments={'x-expires': 60000})
        ch.queue_declare(
            names['refusing'],
            arguments={'x-expires': 60000, 'x-max-length': 0, 'x-overflow': 'reject-publish'},
        )
    yield names
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        for name in names.values():
            ch.queue_delete(name)


def get_one(amqp_url: str, queue: str) -> bytes:
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()

        def got() -> bytes:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            return body if method is not None else b''

        return eventually(got, WAIT)


@pytest.mark.timeout(120)
def test_without_confirms_tasks_and_results_flow_and_no_channel_confirms(
    amqp_url: str, unique_name: str
) -> None:
    app = App(
        amqp_url,
        task_default_queue=unique_name,
        result_expires=120,
        broker_transport_options=UNCONFIRMED,
    )
    try:
        result = app.send_task('tasks.add', (2, 3))
        request = {'id': result.id, 'reply_to': app.backend.oid, 'correlation_id': result.id}
        app.backend.mark_as_done(result.id, 5, request=request)
        assert result.get(timeout=WAIT) == 5
        link = app.backend._link
        assert link.confirms is False
        stats = link.stats()
        assert stats['publishes'] >= 2 and stats['confirms'] == 0
        modes = eventually(
            lambda: confirm_modes(link.name), retry_on=(RuntimeError, AssertionError)
        )
        assert not any(modes), modes
    finally:
        app.close()
        with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
            ch = conn.channel()
            ch.queue_delete(unique_name)
            ch.exchange_delete(unique_name)


@pytest.mark.timeout(120)
def test_by_default_the_publish_channel_confirms(amqp_url: str, queues: Dict[str, str]) -> None:
    with Connection(amqp_url) as conn:
        Producer(conn, routing_key=queues['plain']).publish({'n': 1})
        link = conn._link
        assert link.confirms is True and link.stats()['confirms'] >= 1
        modes = eventually(
            lambda: confirm_modes(link.name), retry_on=(RuntimeError, AssertionError)
        )
        assert True in modes, modes
    assert json.loads(get_one(amqp_url, queues['plain'])) == {'n': 1}


@pytest.mark.timeout(120)
def test_a_nack_fails_a_confirmed_publish_and_is_never_heard_without_confirms(
    amqp_url: str, queues: Dict[str, str]
) -> None:
    with Connection(amqp_url) as conn:
        with pytest.raises(PublishError, match='nacked'):
            Producer(conn, routing_key=queues['refusing']).publish({'n': 1}, retry=False)
    with Connection(amqp_url, transport_options=UNCONFIRMED) as conn:
        producer = Producer(conn)
        producer.publish({'n': 2}, routing_key=queues['refusing'])  # returns: nothing to hear
        producer.publish({'n': 3}, routing_key=queues['plain'])
        assert conn._link.confirms is False
    assert json.loads(get_one(amqp_url, queues['plain'])) == {'n': 3}


@pytest.mark.timeout(120)
def test_many_threads_publish_without_confirms_and_every_message_arrives(
    amqp_url: str, queues: Dict[str, str]
) -> None:
    """Direct writes from many threads and the I/O thread's own path, without a ledger to
    settle them: each publish returns, and the broker has every message."""
    per_thread, threads = 50, 8
    with Connection(amqp_url, transport_options=UNCONFIRMED) as conn:
        errors: List[BaseException] = []

        def publish(i: int) -> None:
            try:
                producer = Producer(conn, routing_key=queues['plain'])
                for j in range(per_thread):
                    producer.publish({'i': i, 'j': j})
            except BaseException as exc:  # collected: must fail the test
                errors.append(exc)

        workers = [threading.Thread(target=publish, args=(i,)) for i in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(WAIT)
        assert not errors and not any(t.is_alive() for t in workers)
    with pika.BlockingConnection(pika_parameters(amqp_url)) as raw:
        ch = raw.channel()

        def all_there() -> bool:
            count = ch.queue_declare(queues['plain'], passive=True).method.message_count
            return count == per_thread * threads

        eventually(all_there, WAIT)
