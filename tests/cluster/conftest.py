"""Fixtures of the cluster tests: the throwaway 3-node cluster of :mod:`tests.localcluster`.

This directory has its own conftest because only its tests need the cluster: it is started once
per run, at the first test that asks for ``rabbit_cluster`` (~20 s, ~400 MB), and the root
conftest runs the ``cluster`` tests after all others, so it lives only as long as they do.

Policy: where the RabbitMQ package is not installed the cluster tests are skipped, also under
``CI``; where it is installed but the cluster will not start (ports taken, another run holds it),
they are skipped with the reason, or fail with it when ``CI`` is true.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator, List, Optional

import pytest

from tests.cluster.system_node import SystemNode, system_node
from tests.helpers import under_ci
from tests.localcluster import ClusterError, LocalCluster, missing_reason

LOGGER = logging.getLogger(__name__)


@pytest.fixture(scope='session')
def system_node_before_cluster() -> Optional[SystemNode]:
    """The system node as it was before ``rabbit_cluster`` started (None: not reachable)."""
    return system_node()


@pytest.fixture(scope='session')
def rabbit_cluster(system_node_before_cluster: Optional[SystemNode]) -> Iterator[LocalCluster]:
    """A running :class:`LocalCluster` (``.url`` is the ``;`` URL list); removed at the end.

    A test may stop and kill its nodes: ``_restore_cluster`` brings them back after it.
    """
    reason = missing_reason()
    if reason:
        pytest.skip(f'the cluster tests need RabbitMQ installed: {reason}')
    cluster = LocalCluster()
    began = time.monotonic()
    try:
        # Another run on this machine holds the cluster: wait for it this long (developers
        # running cluster tests side by side set PIKA_RPC_CLUSTER_LOCK_WAIT higher).
        cluster.start(lock_timeout=float(os.environ.get('PIKA_RPC_CLUSTER_LOCK_WAIT', 30)))
    except ClusterError as exc:
        message = f'the local RabbitMQ cluster did not start: {exc}'
        if under_ci():
            pytest.fail(f'CI is set and RabbitMQ is installed, but {message}', pytrace=False)
        pytest.skip(message)
    LOGGER.info('local cluster started in %.1f s', time.monotonic() - began)
    try:
        yield cluster
    finally:
        began = time.monotonic()
        cluster.close()
        LOGGER.info('local cluster removed in %.1f s', time.monotonic() - began)


@pytest.fixture(autouse=True)
def _restore_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the cluster, bring back every node it stopped or killed.

    Autouse, so its teardown runs after the test's own fixtures (e.g. Apps) are closed.
    """
    if 'rabbit_cluster' not in request.fixturenames:
        yield
        return
    cluster: LocalCluster = request.getfixturevalue('rabbit_cluster')
    yield
    restored: List[str] = cluster.restore()
    if restored:
        LOGGER.info('restored %s after %s', restored, request.node.name)
