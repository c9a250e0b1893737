"""The task of the benchmark's Celery worker (``celery -A _bench.tasks_celery worker``, started
by ``taskworkers.TaskWorker``): ``bench.add``; the broker from ``$BENCH_URL``, the result
backend from ``$BENCH_BACKEND`` (``rpc://`` or ``pika-rpc://``). Prints ``READY`` once the
worker consumes (its own "ready." line is logged at INFO, below the level it runs at)."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_ready

from .impls import celery_app
from .taskworkers import READY, TASK

app = celery_app(
    os.environ['BENCH_URL'],
    backend=os.environ.get('BENCH_BACKEND') or 'rpc://',
    task_serializer='json',
    result_serializer='json',
    accept_content=['json'],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)
app.set_current()


@app.task(name=TASK)
def add(x: int, y: int) -> int:
    return x + y


@worker_ready.connect
def _say_ready(**kwargs: Any) -> None:
    print(READY, flush=True)
