"""The kombu-style surface (Connection, Exchange, Queue, Producer, Consumer, SimpleQueue,
pools), as a user writes it with type hints."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

from typing_extensions import assert_type

from pika_rpc import (
    ChannelPool,
    Connection,
    ConnectionPool,
    Consumer,
    Exchange,
    Message,
    Producer,
    Queue,
    SimpleQueue,
)

received: List[Any] = []
done = threading.Event()


def on_message(body: Any, message: Message) -> None:
    received.append(body)
    headers: Dict[str, Any] = message.headers
    print(message.content_type, message.delivery_info, headers)
    message.ack()
    done.set()


with Connection('amqp://guest:guest@localhost:5672//') as conn:
    exchange = Exchange('orders', 'direct', durable=True)
    queue = Queue('orders.new', exchange, routing_key='new', expires=60)
    producer = Producer(conn, exchange=exchange, routing_key='new')
    producer.publish({'id': 1}, correlation_id='c-1', headers={'h': 1}, priority=3)
    with Consumer(conn, [queue], callbacks=[on_message]):
        done.wait(10)

    with conn.SimpleQueue('simple') as sq:
        assert_type(sq, SimpleQueue)
        sq.put({'hello': 'world'}, headers={'k': 'v'})
        message = sq.get(timeout=10)
        assert_type(message, Message)
        print(message.payload)
        message.reject(requeue=True)
        again = sq.get_nowait()
        again.ack()
        try:
            sq.get(timeout=0.1)
        except sq.Empty:
            pass
        print(len(sq), sq.qsize())

pool = ConnectionPool(Connection('amqp://guest:guest@localhost:5672//'), limit=4)
print(pool, ChannelPool)
