"""The Worker's remote-control replies on the real broker, read with plain pika as kombu's
``Mailbox`` would read them (Celery's own tools are in tests/interop/test_celery_control.py).

A request is published to ``celery.pidbox`` with a ``ticket`` and a ``reply_to`` naming
``reply.celery.pidbox`` and a routing key of the test's own; the reply is read from a queue
bound to that key.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, Iterator, Tuple

import pika
import pytest

from tests.helpers import eventually, pika_parameters
from tests.integration.worker_support import app, start_worker  # noqa: F401


class Mailbox:
    """A kombu-style control client on its own pika connection."""

    def __init__(self, amqp_url: str) -> None:
        self.conn = pika.BlockingConnection(pika_parameters(amqp_url))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(
            'reply.celery.pidbox', 'direct', durable=False, auto_delete=False
        )
        self.oid = uuid.uuid4().hex
        self.queue = self.channel.queue_declare('', exclusive=True).method.queue
        self.channel.queue_bind(self.queue, 'reply.celery.pidbox', self.oid)

    def send(self, node: str, method: str, reply_exchange: str = 'reply.celery.pidbox') -> str:
        ticket = str(uuid.uuid4())
        body = {
            'method': method,
            'arguments': {},
            'destination': [node],
            'pattern': None,
            'matcher': None,
            'ticket': ticket,
            'reply_to': {'exchange': reply_exchange, 'routing_key': self.oid},
        }
        self.channel.basic_publish(
            'celery.pidbox',
            '',
            json.dumps(body),
            pika.BasicProperties(
                content_type='application/json',
                content_encoding='utf-8',
                headers={'clock': 100, 'expires': 0},
            ),
        )
        return ticket

    def reply(self, timeout: float = 10.0) -> Tuple[Any, Any, Dict[str, Any]]:
        """``(method, properties, body)`` of the next reply."""

        def get() -> Any:
            got = self.channel.basic_get(self.queue, auto_ack=True)
            if got[0] is None:
                self.conn.process_data_events(0)
                return None
            return got

        method, props, body = eventually(get, timeout=timeout)
        return method, props, json.loads(body)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def mailbox(amqp_url: str) -> Iterator[Mailbox]:
    box = Mailbox(amqp_url)
    yield box
    box.close()


def test_a_ping_is_answered_on_the_reply_exchange_exactly_as_celerys_worker_answers(
    start_worker, mailbox
):
    worker = start_worker()
    ticket = mailbox.send(worker.hostname, 'ping')
    method, props, body = mailbox.reply()
    assert (method.exchange, method.routing_key) == ('reply.celery.pidbox', mailbox.oid)
    assert body == {worker.hostname: {'ok': 'pong'}}
    assert (props.content_type, props.content_encoding) == ('application/json', 'utf-8')
    assert (props.delivery_mode, props.priority, props.correlation_id) == (1, 0, None)
    assert props.headers['ticket'] == ticket
    assert props.headers['clock'] > 100  # past the request's clock (Lamport)


def test_a_reply_that_cannot_be_sent_is_logged_and_the_next_command_is_answered(
    start_worker, mailbox, amqp_url, caplog
):
    worker = start_worker()
    clash = f'reply-clash-{uuid.uuid4().hex[:8]}'  # exists as a fanout: our declare gets a 406
    mailbox.channel.exchange_declare(clash, 'fanout', durable=False)
    try:
        mailbox.send(worker.hostname, 'ping', reply_exchange=clash)
        eventually(lambda: 'the reply to ping was not sent' in caplog.text, timeout=10)
        mailbox.send(worker.hostname, 'ping')
        assert mailbox.reply()[2] == {worker.hostname: {'ok': 'pong'}}
    finally:
        mailbox.channel.exchange_delete(clash)


def test_a_remote_shutdown_replies_then_stops_the_in_process_worker(start_worker, mailbox):
    worker = start_worker()
    mailbox.send(worker.hostname, 'shutdown')
    assert mailbox.reply()[2] == {worker.hostname: {'ok': 'shutting down'}}
    eventually(lambda: worker.stats()['state'] == 'STOPPED', timeout=30)
    assert worker.stop_requested and not worker.ready.is_set()
