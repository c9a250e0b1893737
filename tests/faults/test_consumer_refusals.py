"""``ConsumerSpec.on_refused``: the owner of a consumer hears every (re)subscribe the broker
refuses, with its typed error, at each of the three places a subscribe runs (a ``consume``
command, ``check`` after the broker cancelled the consumer, ``resubscribe`` after a
reconnect); returning True stops the spec there, for good.

The refusal is made real on one node: the spec's declaration is a *passive* declare of a
queue the test deletes, so the broker answers the (re)subscribe with 404 NOT_FOUND.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, List

import pytest

from pika_rpc._consumers import ConsumerSpec
from pika_rpc._link import Link
from pika_rpc.config import Settings, connection_options
from pika_rpc.errors import BrokerRefused, NotFound
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents, eventually

WAIT = 30.0


class Owner:
    """Records each refusal it hears (any thread may wait for them); answers ``handles``."""

    def __init__(self, handles: bool) -> None:
        self.handles = handles
        self.refusals: List[BrokerRefused] = []
        self._heard = threading.Condition()

    def __call__(self, error: BrokerRefused) -> bool:  # I/O thread
        with self._heard:
            self.refusals.append(error)
            self._heard.notify_all()
        return self.handles

    def wait(self, n: int = 1) -> bool:
        with self._heard:
            return self._heard.wait_for(lambda: len(self.refusals) >= n, WAIT)


def spec_of(queue: str, owner: Owner) -> ConsumerSpec:
    return ConsumerSpec(
        queue,
        lambda delivery: None,
        batch_ack=True,
        declarations=(('declare_queue', dict(queue=queue, passive=True)),),
        on_refused=owner,
    )


@pytest.fixture
def link(fault_proxy: FaultProxy, amqp_url: str) -> Iterator[Link]:
    settings = Settings(broker_url=fault_proxy.url(amqp_url))
    link = Link(connection_options(settings), connect_interval=(0.0, 0.01, 0.05))
    link.call(lambda: None, timeout=WAIT)
    yield link
    fault_proxy.refuse(False)
    link.close(5.0)


@pytest.fixture
def queue(unique_name: str, raw_channel: Any) -> Iterator[str]:
    raw_channel.queue_declare(unique_name, durable=True, arguments={'x-expires': 60000})
    yield unique_name
    raw_channel.queue_delete(unique_name)


def test_a_refused_consume_is_raised_typed_and_told_to_the_owner_first(
    link: Link, unique_name: str
) -> None:
    owner = Owner(handles=False)
    spec = spec_of(unique_name, owner)  # no such queue: the passive declare is refused
    with pytest.raises(NotFound) as raised:
        link.consume(spec, timeout=WAIT)
    assert len(owner.refusals) == 1 and isinstance(owner.refusals[0], NotFound)
    assert owner.refusals[0].reply_code == 404 and unique_name in str(raised.value)
    assert not spec.active


def test_a_re_subscribe_refused_after_a_broker_cancel_stops_the_spec_its_owner_took_over(
    link: Link, queue: str, raw_channel: Any
) -> None:
    owner = Owner(handles=True)
    spec = spec_of(queue, owner)
    link.consume(spec, timeout=WAIT)
    raw_channel.queue_delete(queue)  # the broker cancels; check() re-subscribes: refused
    assert owner.wait(1)
    assert isinstance(owner.refusals[0], NotFound)
    eventually(lambda: not spec.active, WAIT)
    assert len(owner.refusals) == 1 and spec not in link._consumers._specs.values()


def test_a_re_subscribe_refused_after_a_reconnect_stops_the_spec_its_owner_took_over(
    link: Link, queue: str, raw_channel: Any, fault_proxy: FaultProxy
) -> None:
    owner = Owner(handles=True)
    spec = spec_of(queue, owner)
    link.consume(spec, timeout=WAIT)
    events = LinkEvents(link)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    raw_channel.queue_delete(queue)  # while the link cannot reconnect
    fault_proxy.refuse(False)
    assert events.wait('connected', 1, timeout=WAIT)
    assert owner.wait(1)
    assert isinstance(owner.refusals[0], NotFound)
    eventually(lambda: not spec.active, WAIT)
    assert len(owner.refusals) == 1 and spec not in link._consumers._specs.values()
    link.call(lambda: None, timeout=WAIT)  # the link lives on
