"""The order a link tries the broker addresses in (``broker_failover_strategy``): pure logic,
no connection is made (``_connector.Connector.order`` and ``connected_to``)."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from pika_rpc import _connector
from pika_rpc._connector import Connector, QuietConnects
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


# ------------------------------------------------------------------ pika's records of our connects


def _record(level: int, thread: int) -> logging.LogRecord:
    record = logging.LogRecord(
        'pika.adapters.blocking_connection', level, __file__, 1, 'failed', None, None
    )
    record.thread = thread
    return record


def test_pika_errors_made_while_our_thread_connects_are_demoted_to_debug_and_others_pass():
    quiet = QuietConnects()
    logger = logging.getLogger('pika.adapters.blocking_connection')
    assert any(isinstance(f, QuietConnects) for f in logger.filters)  # installed at import
    me = threading.get_ident()
    other = _record(logging.ERROR, me)
    assert quiet.filter(other) and other.levelno == logging.ERROR  # not connecting: untouched
    _connector.quiet_begin()
    try:
        ours = _record(logging.ERROR, me)
        old = logger.level
        logger.setLevel(logging.INFO)
        try:
            assert not quiet.filter(ours)  # demoted, and pika is not logged at DEBUG: dropped
            logger.setLevel(logging.DEBUG)
            kept = _record(logging.ERROR, me)
            assert quiet.filter(kept) and kept.levelname == 'DEBUG'
        finally:
            logger.setLevel(old)
        elsewhere = _record(logging.ERROR, me + 1)  # the application's own pika connection
        assert quiet.filter(elsewhere) and elsewhere.levelno == logging.ERROR
        info = _record(logging.INFO, me)
        assert quiet.filter(info) and info.levelno == logging.INFO
    finally:
        _connector.quiet_end()
