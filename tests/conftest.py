"""Fixtures and run policy shared by every test.

Policy:

* A test that uses the ``broker`` fixture, directly or through ``amqp_url``, ``raw_channel``,
  ``fault_proxy`` or ``tls_proxy``, gets the ``broker`` marker, so ``-m "not broker"`` runs the
  rest. The broker is looked for once per run (:func:`pika_rpc.findbroker.find_broker`:
  ``AMQP_URL`` -> localhost -> Docker). If none is found, those tests are skipped with the
  finder's message, or fail with it when ``CI`` is true.
* A test that uses the ``rabbit_cluster`` fixture (``tests/cluster/conftest.py``) gets the
  ``cluster`` marker, so ``-m "not cluster"`` runs the rest.
* Order: the other tests first, then the ``cluster`` tests (so the cluster, started at the first
  of them, does not sit beside the rest of the run), then those marked ``disturbs_broker``;
  each group keeps its collected order.

Fixtures need the broker only when they say so: ``unique_name`` works without one.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator, List

import pytest

from pika_rpc.findbroker import Broker, BrokerNotFound, find_broker
from tests.faultproxy import FaultProxy
from tests.helpers import list_queues, pika_parameters, under_ci
from tests.tlsproxy import TLSProxy

UNIQUE_PREFIX = 'pika-rpc-test-'


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so "-m 'not broker'" sees our markers
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, 'fixturenames', ())
        for fixture, marker in (('broker', 'broker'), ('rabbit_cluster', 'cluster')):
            if fixture in fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(getattr(pytest.mark, marker))

    def group(item: pytest.Item) -> int:
        if item.get_closest_marker('disturbs_broker') is not None:
            return 2
        return 1 if item.get_closest_marker('cluster') is not None else 0

    items.sort(key=group)  # stable: each group keeps its collected order


@pytest.fixture(scope='session')
def broker() -> Iterator[Broker]:
    """The run's broker; a container started for it is removed at the end of the run.

    Looked for once: pytest keeps a session fixture's skip or failure for every later test.
    """
    try:
        found = find_broker()
    except BrokerNotFound as exc:
        if under_ci():
            pytest.fail(f'CI is set and a test needs RabbitMQ, but {exc}', pytrace=False)
        pytest.skip(f'needs RabbitMQ: {exc}')
    with found, pytest.MonkeyPatch.context() as patch:
        if found.container_name:  # tests.helpers.rabbitmqctl then talks to the container
            patch.setenv('RABBITMQCTL', f'docker exec {found.container_name} rabbitmqctl')
        yield found
        _delete_leftover_test_queues(found.url)


def _delete_leftover_test_queues(url: str) -> None:
    """Delete the durable task queues and exchanges named ``pika-rpc-test-*`` that some tests
    leave (a task queue has no x-expires, as Celery's): the broker is shared by later runs."""
    try:
        # Empty ones only: a concurrent run's queue in use usually holds its task messages.
        names = [
            n
            for n, info in list_queues().items()
            if n.startswith(UNIQUE_PREFIX) and info.messages == 0
        ]
    except Exception:  # no rabbitmqctl for this broker: leave them
        return
    import pika

    with pika.BlockingConnection(pika_parameters(url)) as conn:
        for name in names:
            channel = conn.channel()  # an error closes only this channel
            try:
                channel.queue_delete(name)
                channel.exchange_delete(name)
                channel.close()
            except pika.exceptions.AMQPError:
                pass


@pytest.fixture(scope='session')
def amqp_url(broker: Broker) -> str:
    """The broker's kombu-style URL (holds the password: never print it)."""
    return broker.url


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses: ``pika-rpc-test-<uuid4 hex>``."""
    return UNIQUE_PREFIX + uuid.uuid4().hex


@pytest.fixture
def fault_proxy(broker: Broker) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` to the broker; ``fault_proxy.url(amqp_url)`` to use it."""
    with FaultProxy(broker.host, broker.port) as proxy:
        yield proxy


@pytest.fixture
def tls_proxy(broker: Broker, tmp_path) -> Iterator[TLSProxy]:
    """A started :class:`TLSProxy` to the broker, its certificates in ``tmp_path``."""
    with TLSProxy(broker.host, broker.port, str(tmp_path)) as proxy:
        yield proxy


@pytest.fixture
def raw_channel(amqp_url: str):
    """A channel of a plain ``pika.BlockingConnection`` straight to the broker (no proxy).

    For test set-up and for looking at what really reached the broker. Closed afterwards.
    """
    import pika

    connection = pika.BlockingConnection(pika_parameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def result_queue(unique_name: str, raw_channel: Any) -> Iterator[str]:
    """A durable queue (gone a minute after its last use) for results stored in a test."""
    name = f'{unique_name}-results'
    raw_channel.queue_declare(name, durable=True, arguments={'x-expires': 60000})
    yield name
    raw_channel.queue_delete(name)
