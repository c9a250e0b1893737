"""Fixtures shared by the Worker tests (imported by name into each test module).

* ``app``: an ``App`` whose default queue is the test's unique name; closed afterwards, and
  the queue and its same-named exchange deleted.
* ``start_worker(**kwargs)``: starts a ``Worker`` of ``app`` (or of ``target_app=``); every
  worker started is stopped at the end of the test.
* ``gate``: Events for tasks that must block until the test lets them go (``release``),
  set at teardown *before* the workers stop, so no test leaves a pool thread stuck.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, List

import pika
import pytest

from pika_rpc import App, Worker
from tests.helpers import pika_parameters


def delete_queue(amqp_url: str, name: str) -> None:
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.queue_delete(name)
        ch.exchange_delete(name)


def queue_depth(amqp_url: str, name: str) -> int:
    """Ready messages in queue ``name`` (a passive declare)."""
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        return conn.channel().queue_declare(name, passive=True).method.message_count


@pytest.fixture
def app(amqp_url: str, unique_name: str) -> Iterator[App]:
    application = App(broker=amqp_url, task_default_queue=unique_name, result_expires=300)
    yield application
    application.close()
    delete_queue(amqp_url, unique_name)


@pytest.fixture
def start_worker(app: App) -> Iterator[Any]:
    workers: List[Worker] = []

    def start(target_app: Any = None, **kwargs: Any) -> Worker:
        worker = Worker(target_app or app, **kwargs)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop(10)


class Gate:
    """``started``: set by a blocking task once it runs; ``release``: lets it return."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def gate(start_worker: Any) -> Iterator[Gate]:
    g = Gate()
    yield g
    g.release.set()
