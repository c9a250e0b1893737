#!/usr/bin/env python3
"""pika_rpc demo: send tasks, watch their states arrive, read results from many threads.

Finds a broker ($AMQP_URL, else localhost:5672, else a throwaway Docker container), then
runs a client and, in this same process, a small *responder* that plays the worker's part
with the public API (a ``Consumer`` on the task queue and ``backend.store_result``). The
full ``Worker`` class and the worker command line are not part of this release yet; the
responder says so in its output and does only what is written here.

    python scripts/demo.py            # about 5 seconds
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
from pika_rpc import states  # noqa: E402
from pika_rpc.findbroker import BrokerNotFound, find_broker  # noqa: E402


def responder(app: pika_rpc.App, queue: str, stop: threading.Event) -> pika_rpc.Consumer:
    """Answer task messages on ``queue``: add, progress, boom (raises), slow (never answers)."""
    backend = app.backend
    conn = pika_rpc.Connection(app.conf.broker_url)

    def on_message(body, message):
        args, kwargs, _embed = body
        headers = message.headers
        request = {'id': headers['id'], 'reply_to': message.properties.get('reply_to'),
                   'correlation_id': message.properties.get('correlation_id')}
        task_id, name = headers['id'], headers['task']
        backend.mark_as_started(task_id, request=request, pid=os.getpid(), hostname='demo')
        if name == 'demo.add':
            backend.mark_as_done(task_id, args[0] + args[1], request=request)
        elif name == 'demo.progress':
            for i in range(args[0]):
                backend.store_result(task_id, {'done': i + 1, 'total': args[0]}, 'PROGRESS',
                                     request=request)
                stop.wait(0.05)   # pace the demo so the states are visible
            backend.mark_as_done(task_id, args[0], request=request)
        elif name == 'demo.boom':
            try:
                raise ValueError(args[0])
            except ValueError as exc:
                import traceback
                backend.mark_as_failure(task_id, exc, traceback.format_exc(), request=request)
        message.ack()

    consumer = pika_rpc.Consumer(conn, [pika_rpc.Queue(queue, durable=True)],
                                 callbacks=[on_message], prefetch_count=16)
    consumer.consume()
    return consumer


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        broker = find_broker()
    except BrokerNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f'broker: {broker!r} (found via {broker.source})')
    queue = f'pika-rpc-demo-{uuid.uuid4().hex[:8]}'
    stop = threading.Event()
    with broker, pika_rpc.App(broker.url, task_default_queue=queue, result_expires=300) as app:
        try:
            return run(app, queue, stop)
        finally:
            stop.set()
            pika_rpc.Connection(app.conf.broker_url).control('delete_queue', queue=queue, timeout=10)


def run(app: pika_rpc.App, queue: str, stop: threading.Event) -> int:
    consumer = responder(app, queue, stop)
    print(f'reply queue (one per process): {app.backend.oid}\n')
    rows = []

    t0 = time.perf_counter()
    r = app.send_task('demo.add', (2, 3))
    rows.append(('demo.add(2, 3)', r.get(timeout=10), f'{(time.perf_counter() - t0) * 1000:.1f} ms'))

    seen = []
    r = app.send_task('demo.progress', (5,))
    value = r.get(timeout=10, on_message=lambda m: seen.append(
        m['status'] + (f" {m['result']['done']}/{m['result']['total']}"
                       if m['status'] == 'PROGRESS' else '')))
    rows.append(('demo.progress(5)', value, ' -> '.join(seen)))

    r = app.send_task('demo.boom', ('card declined',))
    try:
        r.get(timeout=10)
    except ValueError as exc:
        rows.append(('demo.boom(...)', f'raised {type(exc).__name__}({exc})', r.state))

    r = app.send_task('demo.slow', ())
    try:
        r.get(timeout=0.5)
    except pika_rpc.TimeoutError as exc:
        rows.append(('demo.slow()', 'TimeoutError', str(exc)))

    results = [app.send_task('demo.add', (i, i)) for i in range(200)]
    got, errors = {}, []

    def waiter(chunk):
        for res in chunk:
            try:
                got[res.id] = res.get(timeout=20)
            except Exception as exc:  # shown in the table below
                errors.append(exc)
    threads = [threading.Thread(target=waiter, args=(results[i::20],)) for i in range(20)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ok = sum(1 for i, res in enumerate(results) if got.get(res.id) == 2 * i)
    rows.append(('200 x demo.add from 20 threads', f'{ok}/200 correct, {len(errors)} errors',
                 f'{(time.perf_counter() - t0) * 1000:.0f} ms, one connection'))

    width = max(len(r[0]) for r in rows)
    print(f'{"task":<{width}}  {"result":<34}  detail')
    print('-' * (width + 60))
    for name, value, detail in rows:
        print(f'{name:<{width}}  {str(value):<34}  {detail}')
    stats = app.backend.stats()
    print(f"\nbackend: {stats['cached']} results cached, {stats['pending']} pending, "
          f"{stats['reconnects']} reconnects")
    consumer.cancel()
    consumer.close()
    print('\n(the responder above stands in for pika_rpc.Worker, which is not in this release yet)')
    return 0 if ok == 200 and not errors else 1


if __name__ == '__main__':
    sys.exit(main())
