"""A ``basic.return`` is pinned on the publication it gives back, against the real broker.

The broker's return names the exchange, the routing key and the message (properties and
body), not the delivery tag: mandatory publications in flight at once that differ in any of
these must never be confused, whichever of them is routed.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import pika.spec
import pytest

from pika_rpc._confirms import _returned_one
from pika_rpc._handoff import Publication
from pika_rpc._link import Link
from pika_rpc.config import Settings, connection_options

WAIT = 30.0
ROUNDS = 200
NO_ROUTE = (312, 'NO_ROUTE')


def _noop() -> None:
    pass


@pytest.fixture
def link(amqp_url: str) -> Iterator[Link]:
    """A link of this test alone, connected."""
    private = Link(connection_options(Settings(broker_url=amqp_url)))
    private.call(_noop, timeout=WAIT)
    yield private
    private.close(5.0)


def _publish_pairs(link: Link, pairs: List[Tuple[Publication, Publication]]) -> List[str]:
    """Publish each ``(routed, dropped)`` pair back to back (both in flight at once; every
    other round the dropped one first); returns a description of each round gone wrong."""
    wrong = []
    for i, (routed, dropped) in enumerate(pairs):
        for pub in (routed, dropped) if i % 2 == 0 else (dropped, routed):
            link.publish(pub)
        assert routed.wait(WAIT) and dropped.wait(WAIT)
        assert routed.error is None and dropped.error is None
        if routed.returned is not None or dropped.returned != NO_ROUTE:
            wrong.append(
                f'round {i}: routed.returned={routed.returned}, dropped.returned={dropped.returned}'
            )
    return wrong


def test_a_return_from_one_of_two_exchanges_is_pinned_on_the_publication_to_that_exchange(
    link: Link, raw_channel: Any, unique_name: str
) -> None:
    routed_exchange, dropping_exchange = f'{unique_name}-routed', f'{unique_name}-dropping'
    raw_channel.exchange_declare(routed_exchange, 'direct', auto_delete=True)
    raw_channel.exchange_declare(dropping_exchange, 'direct', auto_delete=True)
    raw_channel.queue_declare(unique_name, arguments={'x-expires': 60_000})
    raw_channel.queue_bind(unique_name, routed_exchange, routing_key='task')
    try:
        # Same routing key, same (no) correlation id, same body and properties: only the
        # exchange tells them apart.
        pairs = [
            (
                Publication(routed_exchange, 'task', b'same', {}, timeout=WAIT),
                Publication(dropping_exchange, 'task', b'same', {}, timeout=WAIT),
            )
            for _ in range(ROUNDS)
        ]
        assert _publish_pairs(link, pairs) == []
        assert raw_channel.queue_declare(unique_name, passive=True).method.message_count == ROUNDS
    finally:
        raw_channel.queue_delete(unique_name)
        raw_channel.exchange_delete(routed_exchange)
        raw_channel.exchange_delete(dropping_exchange)


def test_a_return_is_pinned_on_the_publication_whose_properties_it_carries(
    link: Link, raw_channel: Any, unique_name: str
) -> None:
    # A headers exchange routes by the message's headers: same exchange, routing key,
    # correlation id and body; only the properties tell them apart.
    exchange = f'{unique_name}-headers'
    raw_channel.exchange_declare(exchange, 'headers', auto_delete=True)
    raw_channel.queue_declare(unique_name, arguments={'x-expires': 60_000})
    raw_channel.queue_bind(unique_name, exchange, arguments={'x-match': 'all', 'route': 'yes'})
    try:
        props = {'correlation_id': 'same-id', 'content_type': 'application/json'}
        pairs = [
            (
                Publication(
                    exchange, 'task', b'{}', {**props, 'headers': {'route': 'yes'}}, timeout=WAIT
                ),
                Publication(
                    exchange, 'task', b'{}', {**props, 'headers': {'route': 'no'}}, timeout=WAIT
                ),
            )
            for _ in range(ROUNDS)
        ]
        assert _publish_pairs(link, pairs) == []
        assert raw_channel.queue_declare(unique_name, passive=True).method.message_count == ROUNDS
    finally:
        raw_channel.queue_delete(unique_name)
        raw_channel.exchange_delete(exchange)


def test_among_publications_differing_only_in_body_a_return_goes_to_the_one_with_its_body() -> None:
    # Pure matching logic (no broker can route two such messages differently at once, short
    # of a binding changing between them): the body decides, then the oldest.
    def pub(body: bytes) -> Publication:
        return Publication('ex', 'rk', body, {'correlation_id': 'c'})

    candidates = [(1, pub(b'first')), (2, pub(b'second')), (3, pub(b'second'))]
    returned = pika.spec.BasicProperties(correlation_id='c')
    assert _returned_one(candidates, returned, b'second') == 2
    assert _returned_one(candidates, returned, b'first') == 1
