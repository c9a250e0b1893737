"""After a nack, the link publishes on a new channel (RabbitMQ 3.10 keeps nacking a channel
that first published to a quorum queue during its leader election; a new channel works), and
the replaced channel is closed once the broker settled what it held. The cluster case itself
is in ``tests/cluster/test_publish_failover.py``."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, List

import pytest

from pika_rpc import App
from pika_rpc._outbox import NACK_NEW_CHANNEL_INTERVAL
from pika_rpc.errors import PublishError
from tests.helpers import eventually

WAIT = 10.0


@pytest.fixture
def nacking_queue(unique_name: str, raw_channel: Any) -> Iterator[str]:
    """Always full (``x-max-length`` 0, ``reject-publish``): every publish to it is nacked."""
    name = f'{unique_name}-full'
    raw_channel.queue_declare(
        name,
        durable=True,
        arguments={'x-max-length': 0, 'x-overflow': 'reject-publish', 'x-expires': 60000},
    )
    yield name
    raw_channel.queue_delete(name)


@pytest.fixture
def plain_queue(unique_name: str, raw_channel: Any) -> Iterator[str]:
    raw_channel.queue_declare(unique_name, durable=True, arguments={'x-expires': 60000})
    yield unique_name
    raw_channel.queue_delete(unique_name)


@pytest.fixture
def client(amqp_url: str) -> Iterator[App]:
    app = App(broker=amqp_url)
    yield app
    app.close()


def _send(app: App, queue: str, retries: int = 0) -> None:
    app.send_task(
        'tasks.x',
        (),
        queue=queue,
        ignore_result=True,
        retry_policy=dict(max_retries=retries, interval_start=0, interval_step=0),
        timeout=WAIT,
    )


def test_a_nack_moves_publishing_to_a_new_channel_and_the_old_one_is_closed(
    client: App, nacking_queue: str, plain_queue: str, raw_channel: Any
) -> None:
    link = client.backend._get_link()
    _send(client, plain_queue)
    outbox = link._outbox
    first = outbox.pipeline
    assert link.stats()['publish_channels_replaced'] == 0
    with pytest.raises(PublishError, match='nack'):
        _send(client, nacking_queue)
    _send(client, plain_queue)  # published on the new channel, confirmed
    assert link.stats()['publish_channels_replaced'] == 1
    assert outbox.pipeline is not first
    eventually(lambda: not outbox._draining and first.closed_reason is not None, timeout=WAIT)
    assert link.stats()['reconnects'] == 0
    assert raw_channel.queue_declare(plain_queue, passive=True).method.message_count == 2


def test_a_nack_storm_replaces_the_channel_at_most_twice_a_second_and_every_publish_settles(
    client: App, nacking_queue: str, plain_queue: str
) -> None:
    link = client.backend._get_link()
    _send(client, plain_queue)
    errors: List[BaseException] = []
    oks: List[int] = []

    def sender(queue: str) -> None:
        for _ in range(50):
            try:
                _send(client, queue, retries=2)
                oks.append(1)
            except PublishError as exc:
                errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=sender, args=(q,)) for q in [nacking_queue, plain_queue] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 6)
    assert not any(t.is_alive() for t in threads)
    elapsed = time.monotonic() - began
    assert len(errors) == 200 and all('nack' in str(e) for e in errors)  # 4 x 50 nacked
    assert len(oks) == 200  # the plain queue's publications all confirmed
    stats = link.stats()
    # A replacement at most every NACK_NEW_CHANNEL_INTERVAL (and the one after the last nack).
    assert 1 <= stats['publish_channels_replaced'] <= 2 + elapsed / NACK_NEW_CHANNEL_INTERVAL
    assert stats['reconnects'] == 0
