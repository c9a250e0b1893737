"""The I/O thread's waits for replies to its own requests (Confirm.SelectOk, Channel.OpenOk,
Basic.ConsumeOk, Channel.CloseOk) end when the reply arrives, not at the end of a slice.

With the slice made far longer than the tests' timeouts, connecting, subscribing and
cancelling can only finish in time if each reply ends its wait (``Link.wait_until``).
"""

from __future__ import annotations

import threading
from typing import Iterator

import pika
import pytest

from pika_rpc import _link
from pika_rpc._consumers import ConsumerSpec
from pika_rpc._link import Link
from pika_rpc.config import Settings, connection_options
from tests.helpers import pika_parameters

WAIT = 20.0
LONG_SLICE = 600.0  # a wait that ran out its slice would outlast every timeout here


def _noop() -> None:
    pass


@pytest.fixture
def slow_sliced_link(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Link]:
    monkeypatch.setattr(_link, 'WAIT_SLICE', LONG_SLICE)
    link = Link(connection_options(Settings(broker_url=amqp_url)))
    yield link
    link.close(5.0)


@pytest.mark.timeout(120)
def test_connect_subscribe_and_cancel_end_their_waits_on_the_reply(
    slow_sliced_link: Link, amqp_url: str, unique_name: str
) -> None:
    link = slow_sliced_link
    link.call(_noop, timeout=WAIT)  # connect: the publish channel waits for Confirm.SelectOk
    got = threading.Event()
    spec = ConsumerSpec(
        unique_name,
        lambda delivery: got.set(),
        batch_ack=True,
        declarations=(('declare_queue', {'queue': unique_name, 'auto_delete': True}),),
    )
    try:
        link.consume(spec, timeout=WAIT)  # Channel.OpenOk, then Basic.ConsumeOk
        with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
            conn.channel().basic_publish('', unique_name, b'x')
        assert got.wait(WAIT)
        link.cancel(spec, timeout=WAIT)  # Channel.CloseOk
    finally:
        with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
            conn.channel().queue_delete(unique_name)


@pytest.mark.timeout(60)
def test_a_refused_subscribe_still_ends_its_wait(slow_sliced_link: Link, unique_name: str) -> None:
    """A reply that closes the channel (404: no such queue) ends the wait as well."""
    from pika_rpc.errors import NotFound

    link = slow_sliced_link
    spec = ConsumerSpec(f'{unique_name}-missing', lambda delivery: None)
    with pytest.raises(NotFound):
        link.consume(spec, timeout=WAIT)
