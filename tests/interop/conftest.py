"""Fixtures for the interop tests: real Celery workers and pika_rpc's Worker on one broker.

* ``celery_workers`` (session): starts at most one ``celery worker`` per pool type, on its own
  queue ``<session prefix>-<pool>``, the first time a test asks for that pool; stops them all
  (SIGTERM, then SIGKILL) and deletes their queues at the end. A worker that failed to start
  fails every test that needs it, with its log.
* ``celery_worker``: parametrized over the ``solo`` and ``threads`` pools; checks after each
  test that the worker logged no PRECONDITION_FAILED.
* ``pika_worker`` (module): pika_rpc's own ``Worker`` with the ``interop.*`` tasks of
  :mod:`tests.interop.pika_tasks`; skipped while ``pika_rpc.worker`` does not exist.

The test process never imports Celery: Celery runs only in subprocesses.
"""

from __future__ import annotations

import importlib.util
import uuid
from typing import Callable, Dict, Iterator, NamedTuple

import pika
import pytest

from pika_rpc import App
from tests.helpers import pika_parameters
from tests.interop import pika_tasks
from tests.interop.harness import CeleryWorker, WorkerFailed

POOLS = ('solo', 'threads')


def need_celery() -> None:
    if importlib.util.find_spec('celery') is None:
        pytest.skip('interop tests need Celery in this environment: pip install "celery>=5.5,<6"')


def delete_queues(amqp_url: str, *names: str) -> None:
    """Delete queues and same-named exchanges (Celery's direct exchange per queue)."""
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        for name in names:
            ch = conn.channel()
            ch.queue_delete(name)
            ch.exchange_delete(name)
            ch.close()


@pytest.fixture(scope='session')
def interop_prefix() -> str:
    return 'pika-rpc-interop-' + uuid.uuid4().hex[:12]


@pytest.fixture(scope='session')
def celery_workers(
    amqp_url: str, interop_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], CeleryWorker]]:
    need_celery()
    workers: Dict[str, CeleryWorker] = {}
    failures: Dict[str, str] = {}
    log_dir = tmp_path_factory.mktemp('celery-workers')

    def get(pool: str) -> CeleryWorker:
        if pool in failures:
            pytest.fail(failures[pool], pytrace=False)
        worker = workers.get(pool)
        if worker is None:
            worker = CeleryWorker(
                pool, f'{interop_prefix}-{pool}', amqp_url, str(log_dir / f'{pool}.log')
            )
            workers[pool] = worker
            try:
                worker.start()
            except WorkerFailed as exc:
                failures[pool] = str(exc)
                pytest.fail(failures[pool], pytrace=False)
        elif worker.proc.poll() is not None:
            failures[pool] = (
                f'celery worker ({pool}) died with {worker.proc.returncode}; log:\n{worker.log()}'
            )
            pytest.fail(failures[pool], pytrace=False)
        return worker

    yield get
    for worker in workers.values():
        worker.stop()
    if workers:
        delete_queues(amqp_url, *(w.queue for w in workers.values()))


@pytest.fixture(params=POOLS)
def celery_worker(
    request: pytest.FixtureRequest, celery_workers: Callable[[str], CeleryWorker]
) -> Iterator[CeleryWorker]:
    """The shared worker of one pool; after the test, its log must hold no 406."""
    worker = celery_workers(request.param)
    yield worker
    assert worker.precondition_lines() == [], 'a declaration clashed (406) in the Celery worker'


class PikaWorker(NamedTuple):
    app: App
    worker: object
    queue: str


@pytest.fixture(scope='module')
def pika_worker(amqp_url: str, interop_prefix: str) -> Iterator[PikaWorker]:
    need_celery()
    try:
        from pika_rpc.worker import Worker
    except ImportError as exc:
        pytest.skip(
            f'pika_rpc.worker is not importable yet ({exc}); these tests run a real '
            'Celery client against our Worker once it exists'
        )
    queue = f'{interop_prefix}-ours-{uuid.uuid4().hex[:6]}'
    app = App(
        broker=amqp_url, task_default_queue=queue, task_track_started=True, result_expires=600
    )
    pika_tasks.register(app)
    worker = Worker(app, queues=[queue], concurrency=4)
    worker.start()
    try:
        yield PikaWorker(app, worker, queue)
    finally:
        worker.stop(10)
        app.close()
        delete_queues(amqp_url, queue)
