#!/usr/bin/env python3
"""pika_rpc demo: a real Worker and a client in one process, on one connection.

Finds a broker ($AMQP_URL, else localhost:5672, else a throwaway Docker container), starts
a ``pika_rpc.Worker`` (4 threads) in the background on a queue of its own, then sends
tasks and shows what came back: values, live PROGRESS states, a failure re-raised, a
timeout, a group joined natively and many threads waiting at once. Removes its queues.

    python scripts/demo.py            # a few seconds
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import pika_rpc  # noqa: E402
from pika_rpc.findbroker import BrokerNotFound, find_broker  # noqa: E402

RELEASE = threading.Event()  # lets the "slow" task return when the demo is done with it


def define_tasks(app: pika_rpc.App) -> dict:
    @app.task(name='demo.add')
    def add(x, y):
        return x + y

    @app.task(name='demo.progress', bind=True)
    def progress(self, steps):
        for i in range(steps):
            self.update_state(state='PROGRESS', meta={'done': i + 1, 'total': steps})
            RELEASE.wait(0.05)  # pace it so the states are visibly live
        return steps

    @app.task(name='demo.boom')
    def boom(reason):
        raise ValueError(reason)

    @app.task(name='demo.slow')
    def slow():
        RELEASE.wait(10)
        return 'late'

    return {'add': add, 'progress': progress, 'boom': boom, 'slow': slow}


def ms(since: float) -> str:
    return f'{(time.perf_counter() - since) * 1000:.0f} ms'


def run(app: pika_rpc.App, tasks: dict) -> list:
    rows = []
    add, progress, boom, slow = tasks['add'], tasks['progress'], tasks['boom'], tasks['slow']

    t0 = time.perf_counter()
    rows.append(('add(2, 3)', add.delay(2, 3).get(timeout=10), ms(t0)))

    t0 = time.perf_counter()
    print('progress(4), states as they arrive:')
    seen = []

    def on_message(meta):
        info = meta['result'] if meta['status'] == 'PROGRESS' else ''
        print(f'    {ms(t0):>7}  {meta["status"]:<8} {info}')
        seen.append(meta['status'])

    value = progress.delay(4).get(timeout=10, on_message=on_message)
    rows.append(('progress(4)', value, ' -> '.join(seen)))

    failed = boom.delay('card declined')
    try:
        failed.get(timeout=10)
    except ValueError as exc:
        last = failed.traceback.strip().splitlines()[-1]
        rows.append(('boom(...)', f're-raised {type(exc).__name__}', f'{failed.state}: {last}'))

    waiting = slow.delay()
    try:
        waiting.get(timeout=0.3)
    except pika_rpc.TimeoutError:
        rows.append(
            (
                'slow() with get(timeout=0.3)',
                'raised TimeoutError',
                f'task still {waiting.state} at the deadline',
            )
        )
    RELEASE.set()
    rows.append(('slow() afterwards', waiting.get(timeout=10), waiting.state))

    t0 = time.perf_counter()
    group_id = str(uuid.uuid4())
    group = pika_rpc.GroupResult(
        group_id,
        [add.apply_async((i, i), group_id=group_id, group_index=i) for i in range(10)],
        app=app,
    )
    values = group.join_native(timeout=10)
    rows.append(
        ('group of 10 x add, join_native', values, f'{group.completed_count()}/10 done, {ms(t0)}')
    )

    t0 = time.perf_counter()
    results = [add.delay(i, i) for i in range(200)]
    got, errors = {}, []

    def waiter(chunk):
        for res in chunk:
            try:
                got[res.id] = res.get(timeout=20)
            except Exception as exc:  # shown in the table
                errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(results[i::40],)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ok = sum(1 for i, res in enumerate(results) if got.get(res.id) == 2 * i)
    rows.append(
        (
            '200 x add, 40 waiting threads',
            f'{ok}/200 correct, {len(errors)} errors',
            f'{ms(t0)} from first send to last result, one connection',
        )
    )
    return rows


def show(rows: list) -> None:
    width = max(len(r[0]) for r in rows)
    print(f'\n{"task":<{width}}  {"result":<38}  detail')
    print('-' * (width + 100))
    for name, value, detail in rows:
        print(f'{name:<{width}}  {str(value):<38}  {detail}')


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    # The worker logs a failing task at ERROR with its traceback; here the failure is the
    # point of one row, so keep the table readable.
    logging.getLogger('pika_rpc.worker').setLevel(logging.CRITICAL)
    try:
        broker = find_broker()
    except BrokerNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f'broker: {broker!r} (found via {broker.source})')
    queue = f'pika-rpc-demo-{uuid.uuid4().hex[:8]}'
    with (
        broker,
        pika_rpc.App(
            broker=broker.url, task_default_queue=queue, result_expires=300, task_track_started=True
        ) as app,
    ):
        tasks = define_tasks(app)
        worker = pika_rpc.Worker(app, queues=[queue], concurrency=4)
        worker.start()
        print(
            f'worker {worker.hostname}: queue {queue}, 4 threads; reply queue {app.backend.oid}\n'
        )
        try:
            rows = run(app, tasks)
        finally:
            RELEASE.set()
            clean = worker.stop(10)
            conn = pika_rpc.Connection(app.conf.broker_url)
            conn.control('delete_queue', queue=queue, timeout=10)
            conn.control('delete_exchange', exchange=queue, timeout=10)
            conn.release()
        show(rows)
        stats = worker.stats()
        print(
            f'\nworker: {stats["succeeded"]} succeeded, {stats["failed"]} failed, '
            f'stopped cleanly: {clean}'
        )
    ok = rows[-1][1].startswith('200/200') and clean
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
