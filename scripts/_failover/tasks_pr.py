"""The pika_rpc worker's tasks (``python -m pika_rpc worker -A _failover.tasks_pr``): ``failover.echo``
prints ``RAN <task id>`` (so the driver counts tasks run twice) and returns its argument. The
broker from ``$FAILOVER_URL``, the queue from ``$FAILOVER_QUEUE``, its type from
``$FAILOVER_QUEUE_TYPE``; every other setting is the default."""

from __future__ import annotations

import os
from typing import Any

import pika_rpc

app = pika_rpc.App(
    broker=os.environ['FAILOVER_URL'],
    task_default_queue=os.environ['FAILOVER_QUEUE'],
    task_default_queue_type=os.environ.get('FAILOVER_QUEUE_TYPE', 'classic'),
    result_expires=600,
)


@app.task(name='failover.echo', bind=True)
def echo(self: Any, value: Any) -> Any:
    print(f'RAN {self.request.id}', flush=True)
    return value
