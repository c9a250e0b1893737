"""The Celery worker's tasks (``celery -A _failover.tasks_celery worker``): the same
``failover.echo`` as :mod:`_failover.tasks_pr`, Celery's ``rpc://`` result backend, default
settings but the queue and its type; prints ``READY`` once the worker consumes."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready

READY = 'FAILOVER-CELERY-WORKER-READY'

app = Celery('failover', broker=os.environ['FAILOVER_URL'], backend='rpc://')
app.conf.update(
    task_default_queue=os.environ['FAILOVER_QUEUE'],
    task_default_queue_type=os.environ.get('FAILOVER_QUEUE_TYPE', 'classic'),
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task(name='failover.echo', bind=True)
def echo(self: Any, value: Any) -> Any:
    print(f'RAN {self.request.id}', flush=True)
    return value


@worker_ready.connect
def _say_ready(**kwargs: Any) -> None:
    print(READY, flush=True)
