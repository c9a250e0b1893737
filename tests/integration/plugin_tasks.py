"""Tasks for a real Celery worker storing results through ``pika-rpc://`` (or ``rpc://``).

``celery -A tests.integration.plugin_tasks worker``; configured from the environment so the
same module serves both sides of the wire-compatibility tests:

* ``AMQP_URL``: the broker (``amqp://guest:guest@127.0.0.1:5672//`` if unset);
* ``PIKA_RPC_PLUGIN_QUEUE``: the worker's queue;
* ``PIKA_RPC_PLUGIN_BACKEND``: ``result_backend`` (default ``pika-rpc://``).
"""

from __future__ import annotations

import os
import threading

from celery import Celery

app = Celery(
    'tests.integration.plugin_tasks',
    broker=os.environ.get('AMQP_URL') or 'amqp://guest:guest@127.0.0.1:5672//',
    backend=os.environ.get('PIKA_RPC_PLUGIN_BACKEND', 'pika-rpc://'),
)
app.conf.update(
    task_default_queue=os.environ.get('PIKA_RPC_PLUGIN_QUEUE', 'pika-rpc-plugin'),
    task_serializer='json',
    result_serializer='json',
    accept_content=['json'],
    task_track_started=True,
    result_expires=300,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=8,
)


class Declined(Exception):
    """An application error raised by a task."""


@app.task
def add(x, y):
    return x + y


@app.task
def echo(value):
    return value


@app.task
def fail(message):
    raise Declined(message)


_WORK = threading.Event()  # never set: sleep_then's work is a bounded wait on it


@app.task
def sleep_then(seconds, value):
    _WORK.wait(seconds)
    return value


@app.task(bind=True)
def whoami(self):
    return {'pid': os.getpid(), 'reply_to': self.request.reply_to}
