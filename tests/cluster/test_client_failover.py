"""A client on a RabbitMQ cluster: its reply queue's node is lost, and the connection's
failover order. Each node loss happens under load: 16 threads doing round trips through an
in-process ``Worker`` whose connection and task queue are on n3, a node that stays up.

* A classic reply queue lives on one node. When that node is stopped or killed, the results
  in it are lost: their waiters get ``ReplyQueueLost`` naming their task, nobody hangs, and
  the client moves to a new reply queue on a live node, so new tasks succeed again.
* A quorum reply queue (``result_queue_type='quorum'``) loses nothing: every round trip
  succeeds, those in flight across the loss included, and the client keeps its queue.
* ``broker_failover_strategy``: round-robin reconnects to the next address each time;
  shuffle spreads first connections over the nodes.

How fast the client recovers is measured by hand (see the issue's report), not asserted.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pika
import pytest

from pika_rpc import App, Worker
from pika_rpc._link import OPEN, Link
from pika_rpc.config import Settings, connection_options
from pika_rpc.errors import PikaRPCError, ReplyQueueLost
from tests.helpers import LinkEvents, eventually, pika_parameters
from tests.localcluster import LocalCluster

THREADS = 16
#: Round trips each thread must complete after the node loss (tasks sent after it).
AGAIN = 5
#: Generous: the client recovers in well under a second (measured by hand).
RECOVERY_BOUND = 45.0
GET_TIMEOUT = 30.0  # a get() that runs out counts as a hang

# A task queue on n3 and a worker connected to n3 only: they survive the loss of n1.
WORKER_NODE = 3


@pytest.fixture
def task_queue(rabbit_cluster: LocalCluster, unique_name: str) -> Iterator[str]:
    """A task queue on n3 served by an in-process Worker of 16 threads connected to n3."""
    worker_app = App(broker=rabbit_cluster.urls[WORKER_NODE - 1], task_default_queue=unique_name)

    @worker_app.task(name='echo')
    def echo(value: Any) -> Any:
        return value

    worker = Worker(worker_app, concurrency=THREADS)
    worker.start()  # declares the task queue, on n3
    try:
        assert rabbit_cluster.queue_node(unique_name) == f'n{WORKER_NODE}@localhost'
        yield unique_name
    finally:
        worker.stop(10)
        worker_app.close()
        url = rabbit_cluster.urls[WORKER_NODE - 1]
        with pika.BlockingConnection(pika_parameters(url)) as conn:
            conn.channel().queue_delete(unique_name)


class RoundTrips:
    """``THREADS`` threads sending ``echo`` tasks and waiting for each result, until stopped.

    Each round trip is recorded as ``(sent, done, outcome, task_id, error)``: outcome is
    ``'ok'``, ``'lost'`` (a ``ReplyQueueLost``) or ``'error'`` (anything else, a get() that
    timed out included).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.rows: Dict[int, List[Tuple[float, float, str, Optional[str], Any]]] = {
            i: [] for i in range(THREADS)
        }
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f'round-trips-{i}', daemon=True)
            for i in range(THREADS)
        ]

    def __enter__(self) -> 'RoundTrips':
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(GET_TIMEOUT + 15)
        assert not any(t.is_alive() for t in self._threads), 'a round-trip thread hangs'

    def _loop(self, i: int) -> None:
        while not self._stop.is_set():
            sent, task_id = time.monotonic(), None
            try:
                result = self.app.send_task('echo', (i,))
                task_id = result.id
                assert result.get(timeout=GET_TIMEOUT) == i
                outcome, error = 'ok', None
            except ReplyQueueLost as exc:
                outcome, error = 'lost', exc
            except (PikaRPCError, AssertionError) as exc:
                outcome, error = 'error', exc
            with self._changed:
                self.rows[i].append((sent, time.monotonic(), outcome, task_id, error))
                self._changed.notify_all()

    def wait_until_each_succeeded(self, times: int, sent_after: float, timeout: float) -> bool:
        """Wait until every thread completed ``times`` round trips sent after ``sent_after``."""

        def done() -> bool:
            return all(
                sum(1 for s, _, o, _, _ in rows if o == 'ok' and s >= sent_after) >= times
                for rows in self.rows.values()
            )

        with self._changed:
            return self._changed.wait_for(done, timeout)

    def all_rows(self) -> List[Tuple[float, float, str, Optional[str], Any]]:
        with self._changed:
            return [row for rows in self.rows.values() for row in rows]


class LossTimes:
    """When the link lost its connection (monotonic times)."""

    def __init__(self, link: Link) -> None:
        self.times: List[float] = []
        link.add_listener(self)

    def __call__(self, event: str, info: Any) -> None:  # I/O thread: quick
        if event == 'lost':
            self.times.append(time.monotonic())


def cluster_app(cluster: LocalCluster, queue: str, **settings: Any) -> App:
    return App(broker=cluster.url, task_default_queue=queue, result_expires=300, **settings)


def _names_why(text: str, node: str) -> bool:
    """The text names the down node, or says it was stopping (RabbitMQ then does not name
    it), or that the broker cancelled the consumer (before the client knew why)."""
    return f'home node {node} is down' in text or any(
        why in text for why in ('home node is stopping', 'cancelled its consumer')
    )


def lose(cluster: LocalCluster, node: str, how: str) -> None:
    if how == 'stop_app':
        cluster.stop_app(node)
    else:
        cluster.kill(node)


def move_connection_off(cluster: LocalCluster, link: Link, node: str) -> None:
    """Close the link's connection on ``node`` (round-robin then takes the next node)."""
    events = LinkEvents(link)
    out = cluster.ctl(node, 'list_connections', 'pid', 'client_properties')
    pids = [line.split()[0] for line in out.splitlines() if f'"{link.name}"' in line]
    assert pids, f'no connection of {link.name} on {node}'
    for pid in pids:
        cluster.ctl(node, 'close_connection', pid, 'test: move the client to another node')
    assert events.wait('connected', 1, timeout=30)
    assert not link.address.endswith(f':{cluster.node(node).amqp_port}')


@pytest.mark.parametrize(
    'how, connection',
    [('stop_app', 'on that node'), ('kill', 'on that node'), ('stop_app', 'on another node')],
)
def test_new_tasks_succeed_again_after_the_reply_queue_node_is_lost_and_its_waiters_get_reply_queue_lost(
    rabbit_cluster: LocalCluster,
    task_queue: str,
    how: str,
    connection: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger='pika_rpc._replies')
    app = cluster_app(rabbit_cluster, task_queue)
    try:
        assert app.send_task('echo', ('first',)).get(timeout=GET_TIMEOUT) == 'first'
        old = app.backend.oid
        lost_node = rabbit_cluster.queue_node(old)
        assert lost_node == 'n1@localhost'  # round-robin: the first address
        if connection == 'on another node':  # its consumer hears a Basic.Cancel instead
            move_connection_off(rabbit_cluster, app.backend._link, lost_node)
        with RoundTrips(app) as trips:
            assert trips.wait_until_each_succeeded(2, 0.0, RECOVERY_BOUND)
            lose(rabbit_cluster, lost_node, how)
            after = time.monotonic()
            recovered = trips.wait_until_each_succeeded(AGAIN, after, RECOVERY_BOUND)
        rows = trips.all_rows()
        errors = [row for row in rows if row[2] == 'error']
        assert not errors, f'{len(errors)} round trips failed otherwise, e.g. {errors[0][4]!r}'
        assert recovered, 'new tasks did not succeed again from every thread'
        lost = [row for row in rows if row[2] == 'lost']
        assert lost, 'the tasks in flight at the loss should have been reported lost'
        for _, _, _, task_id, error in lost:
            assert task_id in error.task_ids and error.queue == old
            assert _names_why(str(error), lost_node)
        new = app.backend.oid
        assert new != old and app.backend.stats()['reply_queue_moves'] == 1
        assert rabbit_cluster.queue_node(new) != lost_node
        assert any(
            r.levelno == logging.WARNING
            and _names_why(r.getMessage(), lost_node)
            and new in r.getMessage()
            for r in caplog.records
        )
    finally:
        app.close()


@pytest.mark.parametrize('how', ['stop_app', 'kill'])
def test_a_quorum_reply_queue_loses_no_result_when_its_leader_node_is_lost(
    rabbit_cluster: LocalCluster, task_queue: str, how: str
) -> None:
    app = cluster_app(rabbit_cluster, task_queue, result_queue_type='quorum')
    try:
        assert app.send_task('echo', ('first',)).get(timeout=GET_TIMEOUT) == 'first'
        oid = app.backend.oid
        leader = rabbit_cluster.queue_node(oid)
        losses = LossTimes(app.backend._link)
        with RoundTrips(app) as trips:
            assert trips.wait_until_each_succeeded(2, 0.0, RECOVERY_BOUND)
            lose(rabbit_cluster, leader, how)
            after = time.monotonic()
            recovered = trips.wait_until_each_succeeded(AGAIN, after, RECOVERY_BOUND)
        rows = trips.all_rows()
        failed = [row for row in rows if row[2] != 'ok']
        assert not failed, f'{len(failed)} round trips did not succeed, e.g. {failed[0][4]!r}'
        assert recovered
        # Round trips in flight when the client's connection went succeeded too.
        if losses.times:  # else the leader was not the node the client was connected to
            assert any(sent < losses.times[0] < done for sent, done, *_ in rows)
        assert app.backend.oid == oid and app.backend.stats()['reply_queue_moves'] == 0
    finally:
        app.close()


def _port(address: Optional[str]) -> int:
    assert address is not None
    return int(address.rsplit(':', 1)[1])


def test_round_robin_reconnects_to_the_next_address_each_time(rabbit_cluster: LocalCluster) -> None:
    link = Link(
        connection_options(Settings(broker_url=rabbit_cluster.url)),
        failover_strategy='round-robin',
        connect_interval=(0.0, 0.05, 0.1),
    )
    try:
        link.revive()
        assert link.wait_for_state(OPEN, timeout=30)
        ports = [_port(link.address)]
        for _ in range(3):
            node = next(n for n in rabbit_cluster.nodes if n.amqp_port == ports[-1])
            move_connection_off(rabbit_cluster, link, node.name)
            ports.append(_port(link.address))
        assert ports == [5673, 5674, 5675, 5673]
    finally:
        link.close()


def test_shuffle_spreads_first_connections_over_the_nodes(rabbit_cluster: LocalCluster) -> None:
    options = connection_options(Settings(broker_url=rabbit_cluster.url))
    links = [Link(options, failover_strategy='shuffle') for _ in range(12)]
    try:
        for link in links:
            link.revive()
        for link in links:
            assert link.wait_for_state(OPEN, timeout=30)
        ports = {_port(link.address) for link in links}
        # 12 first connections all on one node: probability 3 * (1/3) ** 12, about 6e-6.
        assert len(ports) >= 2, f'every shuffled link connected to {ports}'
        assert ports <= {5673, 5674, 5675}
    finally:
        for link in links:
            link.close()


def test_round_robin_connects_every_first_connection_to_the_first_address(
    rabbit_cluster: LocalCluster,
) -> None:
    options = connection_options(Settings(broker_url=rabbit_cluster.url))
    links = [Link(options) for _ in range(4)]
    try:
        for link in links:
            link.revive()
        assert all(link.wait_for_state(OPEN, timeout=30) for link in links)
        assert eventually(lambda: {_port(link.address) for link in links} == {5673})
    finally:
        for link in links:
            link.close()
