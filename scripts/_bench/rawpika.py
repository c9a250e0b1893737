"""Raw pika as the benchmarks use it beside pika_rpc, through pika's public API only.

Connections to the broker pika_rpc finds, the result body and properties a Celery worker
(and pika_rpc's ``store_result``) sends, queues declared as pika_rpc declares them, queues
filled before a clock starts, task ids two processes derive alike.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Sequence

from .harness import announce_queue


def broker_url() -> str:
    """The broker URL from ``pika_rpc.findbroker.find_broker()`` ($AMQP_URL, localhost, docker)."""
    from pika_rpc.findbroker import find_broker

    return find_broker().url


def raw_parameters(url: str) -> Any:
    """``pika.ConnectionParameters`` for the first address of a pika_rpc/kombu-style URL,
    named ``bench-raw-PID`` (the broker's listing then tells whose connection it is)."""
    import pika

    from pika_rpc.config import Settings, connection_options

    opts = connection_options(Settings(broker_url=url))[0]
    return pika.ConnectionParameters(
        host=opts['host'],
        port=opts['port'],
        virtual_host=opts['virtual_host'],
        credentials=pika.PlainCredentials(opts['userid'], opts['password']),
        client_properties={'connection_name': f'bench-raw-{os.getpid()}'},
    )


def raw_connection(url: str) -> Any:
    import pika

    return pika.BlockingConnection(raw_parameters(url))


def delete_queues(url: str, names: Iterable[str]) -> List[str]:
    """Delete queues by name (deleting a missing queue is a no-op on RabbitMQ)."""
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        return []
    conn = raw_connection(url)
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
    finally:
        conn.close()
    return names


def delete_exchanges(url: str, names: Iterable[str]) -> List[str]:
    """Delete exchanges by name (a missing one is a no-op on RabbitMQ)."""
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        return []
    conn = raw_connection(url)
    try:
        ch = conn.channel()
        for name in names:
            ch.exchange_delete(name)
    finally:
        conn.close()
    return names


def unique(prefix: str) -> str:
    return f'bench-{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}'


def task_ids(prefix: str, start: int, count: int) -> List[str]:
    """uuid-shaped ids ``prefix`` (24 chars) + 12 hex digits, derivable in both processes."""
    return [f'{prefix}{i:012x}' for i in range(start, start + count)]


def id_prefix() -> str:
    return str(uuid.uuid4())[:24]


def result_body(task_id: str, value: Any) -> bytes:
    """A Celery-5-shaped SUCCESS body, JSON-encoded the plain way (for the raw-pika side)."""
    from datetime import datetime, timezone

    return json.dumps(
        {
            'status': 'SUCCESS',
            'result': value,
            'traceback': None,
            'children': [],
            'date_done': datetime.now(timezone.utc).isoformat(),
            'task_id': task_id,
        }
    ).encode()


def result_properties(task_id: str) -> Any:
    """The AMQP properties pika_rpc's ``store_result`` sets, for the raw-pika side."""
    import pika

    return pika.BasicProperties(
        content_type='application/json',
        content_encoding='utf-8',
        correlation_id=task_id,
        delivery_mode=1,
        priority=0,
        headers={},
    )


def declare_reply_queue(ch: Any, name: str, expires: int = 600) -> None:
    """Declare ``name`` as pika_rpc declares its reply queue (durable, x-expires)."""
    from pika_rpc.config import Settings, reply_queue_arguments

    ch.queue_declare(
        name,
        durable=True,
        auto_delete=False,
        exclusive=False,
        arguments=reply_queue_arguments(Settings(result_expires=expires)),
    )


def scratch_queue(url: str, prefix: str, ids: Sequence[str] = ()) -> str:
    """A fresh non-durable queue nobody consumes (announced), holding one result per id."""
    name = unique(prefix)
    announce_queue(name, url)
    fill_queue(url, name, ids, lambda ch: ch.queue_declare(name, durable=False, auto_delete=False))
    return name


def fill_queue(
    url: str, queue: str, ids: Sequence[str], declare: Callable[[Any], None], check: bool = True
) -> None:
    """Declare ``queue`` and publish one result per id to it (value = index), untimed.

    With ``check``, return once the queue holds them all (nobody may consume it);
    without, after one round trip (everything reached the broker).
    """
    conn = raw_connection(url)
    ch = conn.channel()
    declare(ch)
    for j, tid in enumerate(ids):
        ch.basic_publish('', queue, result_body(tid, j), result_properties(tid))
    if not check:
        ch.queue_declare(queue, passive=True)
        conn.close()
        return
    dl = time.monotonic() + 60
    while True:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count >= len(ids) or time.monotonic() > dl:
            break
        conn.sleep(0.02)
    conn.close()
    if count != len(ids):
        raise RuntimeError(f'{queue} holds {count} messages, expected {len(ids)}')


class RawConsumer:
    """``basic_consume`` on ``queue``: each result JSON-decoded into ``results`` by task id
    (what a caller could use). ``ack``: ``batch`` (one ``multiple=True`` ack per
    ``turn``, what pika_rpc's reply consumer does), ``each`` (in the callback) or ``auto``."""

    def __init__(self, conn: Any, queue: str, ack: str = 'batch') -> None:
        self.conn, self.queue, self.ack = conn, queue, ack
        self.ch = conn.channel()
        self.results: Dict[str, Any] = {}
        self.last = self.acked = 0

    def start(self) -> None:
        """Subscribe (the broker starts delivering)."""
        self.ch.basic_consume(self.queue, self._on_message, auto_ack=self.ack == 'auto')

    def _on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        meta = json.loads(body)
        self.results[meta.get('task_id') or props.correlation_id] = meta
        if self.ack == 'each':
            ch.basic_ack(method.delivery_tag)
        else:
            self.last = method.delivery_tag

    def turn(self, time_limit: float) -> None:
        """Process what arrives within ``time_limit`` seconds, then ack it (``batch``)."""
        self.conn.process_data_events(time_limit=time_limit)
        if self.ack == 'batch' and self.last > self.acked:
            self.ch.basic_ack(self.last, multiple=True)
            self.acked = self.last
