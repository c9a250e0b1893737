"""The task of the benchmark's pika_rpc worker (``python -m pika_rpc worker -A _bench.tasks_pr``,
started by ``taskworkers.TaskWorker``): ``bench.add``; the broker from ``$BENCH_URL``."""

from __future__ import annotations

import os

import pika_rpc

from .taskworkers import TASK

app = pika_rpc.App(broker=os.environ['BENCH_URL'], result_expires=600)


@app.task(name=TASK)
def add(x: int, y: int) -> int:
    return x + y
