"""A Consumer's first deliveries: messages already queued when it subscribes (or re-subscribes).

The broker may deliver queued messages right behind its Basic.ConsumeOk, while the I/O thread
is still finishing the subscription; an ack from the callback must count for them as for any
other. Checked against the real broker: after the consumer is cancelled, a raw channel sees
the queue empty, and no message was ever delivered twice (``redelivered``).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pika

from pika_rpc.entities import Message, Queue
from pika_rpc.messaging import Connection, Consumer
from tests.helpers import FAST_RECONNECT, LinkEvents, eventually, list_queues

WAIT = 30.0
MESSAGES = 100
STARTS = 5


class AckingInbox:
    """A Consumer callback that acks each message and records its body and redelivered flag."""

    def __init__(self) -> None:
        self.bodies: List[Any] = []
        self.redelivered: List[Any] = []
        self.errors: List[BaseException] = []
        self._changed = threading.Condition()

    def __call__(self, body: Any, message: Message) -> None:
        try:
            message.ack()
        except Exception as exc:  # a helper thread's error must fail the test
            self.errors.append(exc)
        with self._changed:
            self.bodies.append(body)
            if message.delivery_info['redelivered']:
                self.redelivered.append(body)
            self._changed.notify_all()

    def wait(self, n: int, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.bodies) >= n, timeout)


def publish_raw(raw_channel: Any, queue: str, bodies: List[str]) -> None:
    for body in bodies:
        raw_channel.basic_publish(
            '',
            queue,
            f'"{body}"'.encode(),
            pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8', delivery_mode=2
            ),
        )


def queue_counts(raw_channel: Any, queue: str) -> Dict[str, int]:
    method = raw_channel.queue_declare(queue, passive=True).method
    return {'ready': method.message_count, 'consumers': method.consumer_count}


def test_messages_queued_before_a_consumer_starts_are_acked_at_every_start(
    conn: Connection, names: Any, raw_channel: Any
) -> None:
    queue = Queue(names('q'), expires=60)
    queue.declare(channel=conn)
    inbox = AckingInbox()
    for start in range(STARTS):
        bodies = [f'{start}-{i}' for i in range(MESSAGES)]
        publish_raw(raw_channel, queue.name, bodies)
        consumer = Consumer(conn, [queue], callbacks=[inbox])
        consumer.consume()
        assert inbox.wait(MESSAGES * (start + 1)), (start, len(inbox.bodies))
        consumer.cancel()
        # cancel() returns once the channel is closed: unacked messages are back by then.
        assert queue_counts(raw_channel, queue.name) == {'ready': 0, 'consumers': 0}, start
    assert inbox.redelivered == [] and inbox.errors == []
    assert sorted(inbox.bodies) == sorted(
        f'{s}-{i}' for s in range(STARTS) for i in range(MESSAGES)
    )


def test_messages_queued_while_disconnected_are_acked_after_the_resubscribe(
    fault_proxy: Any, amqp_url: str, names: Any, raw_channel: Any
) -> None:
    conn = Connection(
        fault_proxy.url(amqp_url),
        broker_transport_options=FAST_RECONNECT,
        broker_connection_max_retries=1000,
    )
    try:
        queue = Queue(names('q'), expires=60)
        queue.declare(channel=conn)
        inbox = AckingInbox()
        events = LinkEvents(conn.link)
        consumer = Consumer(conn, [queue], callbacks=[inbox])
        consumer.consume()
        for start in range(STARTS):
            fault_proxy.refuse(True)
            fault_proxy.cut()
            assert events.wait('lost', start + 1)
            # Until the broker sees the cut, it delivers to the old consumer (then requeues).
            assert eventually(
                lambda: queue_counts(raw_channel, queue.name)['consumers'] == 0, timeout=WAIT
            )
            publish_raw(raw_channel, queue.name, [f'{start}-{i}' for i in range(MESSAGES)])
            fault_proxy.refuse(False)
            assert events.wait('connected', start + 1)
            assert inbox.wait(MESSAGES * (start + 1)), (start, len(inbox.bodies))
            # Acks are not confirmed: only the broker can say they all counted (ready and
            # unacked) before the next cut, which would requeue the unacked ones.
            assert eventually(lambda: list_queues()[queue.name].messages == 0, timeout=WAIT), start
        consumer.cancel()
        assert queue_counts(raw_channel, queue.name) == {'ready': 0, 'consumers': 0}
        assert inbox.redelivered == [] and inbox.errors == []
        assert len(inbox.bodies) == MESSAGES * STARTS
    finally:
        fault_proxy.refuse(False)
        conn.release()
