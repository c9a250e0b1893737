"""The order a link tries the broker addresses in (``broker_failover_strategy``): pure logic,
no connection is made (``_connector.Connector.order`` and ``connected_to``)."""

from __future__ import annotations

import random

import pytest

from pika_rpc._connector import Connector
from pika_rpc.config import Settings, connection_options

URLS = ';'.join(f'amqp://guest:guest@localhost:{port}//' for port in (5673, 5674, 5675))


def connector(strategy: str = 'round-robin', **kwargs) -> Connector:
    options = connection_options(Settings(broker_url=URLS))
    return Connector(
        options, 'test', max_retries=1, interval=(0, 1, 1), failover_strategy=strategy, **kwargs
    )


def ports(c: Connector) -> list:
    return [c.params[i].port for i in c.order()]


def test_round_robin_first_tries_the_addresses_in_the_given_order():
    assert ports(connector()) == [5673, 5674, 5675]


def test_round_robin_starts_after_the_address_last_connected_to():
    c = connector()
    seen = []
    for _ in range(4):
        first = ports(c)[0]
        seen.append(first)
        c.connected_to('localhost', first)
    assert seen == [5673, 5674, 5675, 5673]
    c.connected_to('localhost', 5673)  # reached the first address: the next starts after it
    assert ports(c) == [5674, 5675, 5673]


def test_a_connection_to_a_later_address_moves_the_start_past_it():
    c = connector()
    c.connected_to('localhost', 5675)  # 5673 and 5674 were down
    assert ports(c) == [5673, 5674, 5675]


def test_shuffle_shuffles_the_first_connection_too_then_rotates():
    c = connector('shuffle', rng=random.Random(4))
    first = ports(c)
    assert sorted(first) == [5673, 5674, 5675]
    orders = {tuple(ports(connector('shuffle', rng=random.Random(seed)))) for seed in range(40)}
    assert len({order[0] for order in orders}) == 3  # every node gets first connections
    c.connected_to('localhost', first[0])
    assert ports(c) == first[1:] + first[:1]


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match='round-robin'):
        connector('random')
