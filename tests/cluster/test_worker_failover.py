"""The worker side on a real 3-node cluster: a queue's node lost and back, a quorum queue's
leader lost, quorum task queues without a connection close, and a Celery client's
countdown task through native delayed delivery.

Tasks here record their runs in this process (``Runs``) and are mostly sent with
``ignore_result``: what is tested is that the worker consumes, not the client's reply queue
(whose node loss is the client side's business). Bounds are generous (``RECOVERY``); the
recovery times themselves are measured by a script, never asserted.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from typing import Any, Dict, Iterator, List

import pika
import pytest

from pika_rpc import App, Worker
from pika_rpc.entities import Exchange, Queue
from tests.helpers import eventually, pika_parameters
from tests.localcluster import LocalCluster

WAIT = 30.0
RECOVERY = 90.0  # a node's stop_app/start_app takes several seconds on a loaded machine
QUORUM = {'x-queue-type': 'quorum'}


class Runs:
    """What the tasks of one test ran, by tag; ``wait(tag)`` blocks until it ran."""

    def __init__(self) -> None:
        self.ran: Dict[str, Any] = {}
        self._changed = threading.Condition()

    def record(self, tag: str, info: Any) -> None:
        with self._changed:
            self.ran[tag] = info
            self._changed.notify_all()

    def wait(self, tag: str, timeout: float = WAIT) -> Any:
        with self._changed:
            assert self._changed.wait_for(lambda: tag in self.ran, timeout), f'{tag} never ran'
            return self.ran[tag]


@pytest.fixture
def runs() -> Runs:
    return Runs()


@pytest.fixture
def cluster_apps(rabbit_cluster: LocalCluster) -> Iterator[List[App]]:
    """Apps of this test (closed at the end; closed first, so the cluster restore comes after)."""
    apps: List[App] = []
    yield apps
    for app in apps:
        app.close()


@pytest.fixture
def workers() -> Iterator[List[Worker]]:
    made: List[Worker] = []
    yield made
    for worker in made:
        worker.stop(10)


def make_app(apps: List[App], runs: Runs, url: str, **conf: Any) -> App:
    app = App(broker=url, result_expires=600, **conf)
    apps.append(app)

    @app.task(name='t.mark', bind=True)
    def mark(self, tag):
        runs.record(tag, dict(self.request.delivery_info or {}))
        return tag

    return app


def start_worker(workers: List[Worker], app: App, **kwargs: Any) -> Worker:
    worker = Worker(app, **kwargs)
    workers.append(worker)
    worker.start()
    return worker


def raw(cluster: LocalCluster, *nodes: int) -> pika.BlockingConnection:
    urls = [cluster.urls[n - 1] for n in nodes] if nodes else cluster.urls
    return pika.BlockingConnection(
        [pika_parameters(u, connection_attempts=1, socket_timeout=5) for u in urls]
    )


def delete(cluster: LocalCluster, *names: str) -> None:
    with raw(cluster) as conn:
        for name in names:
            channel = conn.channel()
            channel.queue_delete(name)
            channel.exchange_delete(name)


def node_number(node: str) -> int:
    return int(node.split('@')[0][1:])


# ------------------------------------------------------------------ a node lost


def test_a_worker_consumes_again_once_the_node_of_its_classic_queue_returns(
    rabbit_cluster: LocalCluster,
    cluster_apps: List[App],
    workers: List[Worker],
    runs: Runs,
    unique_name: str,
    caplog: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger='pika_rpc._consumers')
    app = make_app(
        cluster_apps,
        runs,
        rabbit_cluster.url,
        task_default_queue=unique_name,
        broker_consumer_retry_interval=0.5,
    )
    worker = start_worker(workers, app)
    home = rabbit_cluster.queue_node(unique_name)
    assert home == 'n1@localhost'  # the worker's connection is on n1: it moves, its queue not
    app.send_task('t.mark', ('before',), ignore_result=True)
    runs.wait('before')

    rabbit_cluster.stop_app(home)
    eventually(lambda: worker.stats()['queues'][unique_name]['failures'] >= 2, timeout=RECOVERY)
    assert worker.stats()['consuming'] is False
    assert 'is down' in worker.stats()['queues'][unique_name]['last_error']

    rabbit_cluster.start_app(home)
    eventually(lambda: worker.stats()['consuming'], timeout=RECOVERY)
    app.send_task('t.mark', ('after',), ignore_result=True)
    runs.wait('after')

    retries = [r.getMessage() for r in caplog.records if 'cannot consume from' in r.getMessage()]
    numbers = [int(m.split(' retry ')[1].split()[0]) for m in retries]
    assert numbers[:2] == [1, 2] and numbers == list(range(1, len(numbers) + 1))
    assert all(r.levelname == 'WARNING' for r in caplog.records if 'cannot consume' in r.message)
    delete(rabbit_cluster, unique_name)


def test_a_worker_on_a_quorum_queue_consumes_again_after_its_leader_is_lost(
    rabbit_cluster: LocalCluster,
    cluster_apps: List[App],
    workers: List[Worker],
    runs: Runs,
    unique_name: str,
) -> None:
    app = make_app(
        cluster_apps,
        runs,
        rabbit_cluster.url,
        task_default_queue=unique_name,
        task_default_queue_type='quorum',
        broker_consumer_retry_interval=0.5,
    )
    worker = start_worker(workers, app)
    app.send_task('t.mark', ('before',), ignore_result=True)
    runs.wait('before')
    leader = rabbit_cluster.queue_node(unique_name)

    rabbit_cluster.kill(leader)
    eventually(
        lambda: rabbit_cluster.queue_node(unique_name) != leader,
        timeout=RECOVERY,
        retry_on=(KeyError,),
    )
    eventually(lambda: worker.stats()['consuming'], timeout=RECOVERY)
    app.send_task('t.mark', ('after',), ignore_result=True)
    runs.wait('after', timeout=RECOVERY)
    assert worker.stats()['failure'] is None
    delete(rabbit_cluster, unique_name)


# ------------------------------------------------------------------ quorum task queues


def test_a_worker_on_a_quorum_task_queue_with_default_settings_never_closes_its_connection(
    rabbit_cluster: LocalCluster,
    cluster_apps: List[App],
    workers: List[Worker],
    runs: Runs,
    unique_name: str,
) -> None:
    app = make_app(
        cluster_apps,
        runs,
        rabbit_cluster.url,
        task_default_queue=unique_name,
        task_default_queue_type='quorum',
    )
    worker = start_worker(workers, app, concurrency=2)
    link = worker._link
    result = app.send_task('t.mark', ('quorum',))
    assert result.get(timeout=WAIT) == 'quorum'  # results too, end to end
    stats = link.stats()
    assert (stats['reconnects'], stats['state']) == (0, 'OPEN')
    assert rabbit_cluster.queue_node(unique_name)  # a leader: it is a quorum queue
    delete(rabbit_cluster, unique_name)


def test_send_task_to_a_quorum_queue_declared_by_someone_else_is_no_406(
    rabbit_cluster: LocalCluster, cluster_apps: List[App], runs: Runs, unique_name: str
) -> None:
    with raw(rabbit_cluster, 2) as conn:
        conn.channel().queue_declare(unique_name, durable=True, arguments=QUORUM)
    app = make_app(cluster_apps, runs, rabbit_cluster.url)  # default settings
    app.send_task('t.mark', ('x',), queue=unique_name, ignore_result=True)
    with raw(rabbit_cluster, 3) as conn:
        assert conn.channel().queue_declare(unique_name, passive=True).method.message_count == 1
    delete(rabbit_cluster, unique_name)


# ------------------------------------------------------------------ native delayed delivery

CELERY_CLIENT = """
import json, sys, time
from celery import Celery
from kombu import Exchange, Queue
url, queue, exchange = sys.argv[1:4]
app = Celery('client', broker=url, backend='rpc://')
app.conf.task_queues = [
    Queue(queue, Exchange(exchange, type='topic'), routing_key=queue,
          queue_arguments={'x-queue-type': 'quorum'}),
]
app.conf.task_default_queue = queue
began = time.monotonic()
result = app.send_task('t.mark', args=['delayed'], countdown=2)
value = result.get(timeout=60)
print(json.dumps({'value': value, 'seconds': time.monotonic() - began}))
"""


def test_a_celery_clients_countdown_task_on_a_quorum_queue_reaches_the_worker_when_due(
    rabbit_cluster: LocalCluster,
    cluster_apps: List[App],
    workers: List[Worker],
    runs: Runs,
    unique_name: str,
) -> None:
    pytest.importorskip('celery')
    exchange = f'{unique_name}-topic'
    queue = Queue(
        unique_name, Exchange(exchange, type='topic'), unique_name, queue_arguments=QUORUM
    )
    app = make_app(
        cluster_apps, runs, rabbit_cluster.url, task_queues=[queue], task_default_queue=unique_name
    )
    start_worker(workers, app)
    proc = subprocess.run(
        [sys.executable, '-c', CELERY_CLIENT, rabbit_cluster.urls[1], unique_name, exchange],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['value'] == 'delayed'
    info = runs.wait('delayed')
    # It came through the delay chain: dead-lettered by level 1 (2 s) to the exchange of level
    # 0, which passed it on to celery_delayed_delivery and the queue's own topic exchange;
    # the countdown's bits stay before the queue's routing key.
    assert info['exchange'] == 'celery_delayed_0'
    bits, key = info['routing_key'].rsplit('.', 1)[0], info['routing_key'][-len(unique_name) :]
    assert key == unique_name and bits.endswith('0.0.1.0')  # 2 s in 28 bits
    delete(rabbit_cluster, unique_name, exchange)
