"""Fixtures shared by the integration tests of the messaging layer."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pika
import pytest

from pika_rpc._link import Link
from pika_rpc.config import Settings, connection_options
from pika_rpc.messaging import Connection


@pytest.fixture
def conn(amqp_url: str) -> Iterator[Connection]:
    c = Connection(amqp_url)
    yield c
    c.release()


@pytest.fixture
def private_link(amqp_url: str) -> Iterator[Link]:
    """A link of this test alone, so its counters see nothing else."""
    link = Link(connection_options(Settings(broker_url=amqp_url)))
    yield link
    link.close(5.0)


@pytest.fixture
def names(unique_name: str, raw_channel: Any) -> Iterator[Callable[[str], str]]:
    """``names('q')`` -> a unique name; queues and exchanges by those names are deleted after."""
    made: List[str] = []

    def make(suffix: str) -> str:
        made.append(f'{unique_name}-{suffix}')
        return made[-1]

    yield make
    for name in made:
        for delete in ('queue_delete', 'exchange_delete'):
            channel = raw_channel.connection.channel()  # an error closes only this channel
            try:
                getattr(channel, delete)(name)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # e.g. an exclusive queue of our link
            else:
                channel.close()
