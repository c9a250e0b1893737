#!/usr/bin/env python3
"""Benchmark of the I/O thread ("Foundation II"): publish and consume rates vs raw pika.

Every figure is measured in a fresh subprocess per implementation, the kinds interleaved
(rotated order each round), N rounds; the table shows medians. Measured:

* publish with confirms: ``backend.store_result`` (blocks until confirmed) from 1 and from 8
  caller threads, and ``Link.publish`` of pre-built publications waited on at the end (the
  I/O thread's ceiling), vs raw pika ``BlockingConnection`` (a) with ``confirm_delivery()``
  (one round trip per publish), (b) without confirms (ended by one round trip so every
  message reached the broker), and (c) 8 threads with a confirming connection each;
* consume: M messages pre-published to a queue, then the time from subscribing until all
  were received by the backend's reply consumer (``AsyncResult.get`` of the last id), by a
  ``pika_rpc.Consumer`` (``no_ack=True``, and with ``message.ack()`` per message), vs raw
  ``basic_consume`` with JSON decode + correlation lookup and one ``multiple=True`` ack per
  ``process_data_events`` turn (what the backend does), an ack per message, or ``auto_ack``;
* the large pipelined publish also times ``_confirms.Pipeline.on_confirm`` (instrumented
  by wrapping, the library is unchanged) to show its share of the wall time;
* wake-ups per publish with 64 caller threads: ``link.stats()`` ``wake_ups / commands`` and
  ``peak_in_flight`` (also shown for 1 and 8 threads).

Message bodies: pika_rpc encodes Celery's result body itself; the raw side JSON-encodes the
same keys per message with the same properties (``mandatory=True``, delivery mode 1).

Usage::

    python scripts/bench_link.py --quick      # < 1 minute
    python scripts/bench_link.py              # < 3 minutes
    python scripts/bench_link.py --repeats 7 --n 5000 --m 20000

Prints progress on stderr, then a Markdown table and JSON lines on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

SCRIPT = os.path.abspath(__file__)
WARMUP = 200


# ====================================================================== workers: publish
def _target_queue(url: str, prefix: str) -> str:
    """Declare a fresh non-durable queue (nobody consumes it) with a throwaway connection."""
    name = bc.unique(prefix)
    bc.announce_queue(name, url)
    conn = bc.raw_connection(url)
    conn.channel().queue_declare(name, durable=False, auto_delete=False)
    conn.close()
    return name


_pr_app = bc.pr_app
_run_threads = bc.run_threads


def w_pr_store(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """store_result (blocking on its confirm) from ``threads`` threads, ``n`` each."""
    threads, n = p['threads'], p['n']
    queue = _target_queue(url, 'pub')
    app = _pr_app(url)
    backend = app.backend
    link = backend._get_link()
    for _ in range(WARMUP):
        tid = str(uuid.uuid4())
        backend.store_result(tid, 0, 'SUCCESS', request={'reply_to': queue, 'correlation_id': tid})
    ids = [[str(uuid.uuid4()) for _ in range(n)] for _ in range(threads)]
    s0 = link.stats()

    def work(i: int) -> None:
        store = backend.store_result
        for j, tid in enumerate(ids[i]):
            store(tid, j, 'SUCCESS', request={'reply_to': queue, 'correlation_id': tid})

    elapsed, cpu = _run_threads(threads, work)
    s1 = link.stats()
    app.close()
    return _pub_result(threads * n, elapsed, cpu, s0, s1)


def _pub_result(total: int, elapsed: float, cpu: float, s0: dict, s1: dict) -> Dict[str, Any]:
    commands = s1.get('commands', 0) - s0.get('commands', 0)
    wake_ups = s1.get('wake_ups', 0) - s0.get('wake_ups', 0)
    return {'messages': total, 'seconds': elapsed, 'rate': total / elapsed,
            'cpu_us_per_msg': cpu / total * 1e6, 'commands': commands, 'wake_ups': wake_ups,
            'wake_ups_per_publish': wake_ups / commands if commands else None,
            'peak_in_flight': s1.get('peak_in_flight'),
            'publishes': s1.get('publishes', 0) - s0.get('publishes', 0),
            'confirms': s1.get('confirms', 0) - s0.get('confirms', 0)}


def _time_ack_handler() -> List[float]:
    """Instrument (not change) ``_confirms.Pipeline.on_confirm``: seconds spent in it.
    Must run before the link connects (the handler is registered when the channel opens)."""
    from pika_rpc import _confirms
    spent = [0.0, 0]
    orig = _confirms.Pipeline.on_confirm

    def timed(self: Any, tag: int, multiple: bool, nack: bool) -> None:
        t = time.perf_counter()
        try:
            orig(self, tag, multiple, nack)
        finally:
            spent[0] += time.perf_counter() - t
            spent[1] += 1
    _confirms.Pipeline.on_confirm = timed
    return spent


def w_pr_link_pipelined(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """One thread: ``Link.publish`` n publications without waiting, then wait for all."""
    from pika_rpc import protocol, serialization
    from pika_rpc._handoff import Publication
    n = p['n']
    spent = _time_ack_handler()
    queue = _target_queue(url, 'pipe')
    app = _pr_app(url)
    backend = app.backend
    link = backend._get_link()

    def make(tid: str, value: int) -> Any:
        ctype, cenc, data = serialization.dumps(protocol.result_body(tid, 'SUCCESS', value), 'json')
        return Publication('', queue, data, {'content_type': ctype, 'content_encoding': cenc,
                                             'correlation_id': tid, 'delivery_mode': 1,
                                             'priority': 0, 'headers': {}},
                           mandatory=True, timeout=120)

    warm = [link.publish(make(str(uuid.uuid4()), 0)) for _ in range(WARMUP)]
    for pub in warm:
        pub.wait(30)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    s0 = link.stats()
    spent[:] = [0.0, 0]
    t0, c0 = time.perf_counter(), time.process_time()
    pubs = [link.publish(make(tid, j)) for j, tid in enumerate(ids)]
    for pub in pubs:
        if not pub.wait(120) or pub.error is not None:
            raise RuntimeError(f'publication not confirmed: {pub.error}')
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    s1 = link.stats()
    app.close()
    out = _pub_result(n, elapsed, cpu, s0, s1)
    out.update(ack_frames=spent[1], ack_handler_s=spent[0], ack_handler_share=spent[0] / elapsed)
    return out


def w_raw_publish(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """Raw pika, one BlockingConnection per thread, sync confirms or none."""
    threads, n, confirm = p['threads'], p['n'], p['confirm']
    queue = _target_queue(url, 'rawpub')
    conns = [bc.raw_connection(url) for _ in range(threads)]
    chans = []
    for conn in conns:
        ch = conn.channel()
        if confirm:
            ch.confirm_delivery()
        chans.append(ch)
    ids = [[str(uuid.uuid4()) for _ in range(n)] for _ in range(threads)]
    for ch in chans:
        for _ in range(WARMUP // threads + 1):
            tid = str(uuid.uuid4())
            ch.basic_publish('', queue, bc.result_body(tid, 0), bc.result_properties(tid),
                             mandatory=True)
        ch.queue_declare(queue, passive=True)

    def work(i: int) -> None:
        ch = chans[i]
        publish, body, props = ch.basic_publish, bc.result_body, bc.result_properties
        for j, tid in enumerate(ids[i]):
            publish('', queue, body(tid, j), props(tid), mandatory=True)
        ch.queue_declare(queue, passive=True)   # one round trip: everything reached the broker

    elapsed, cpu = _run_threads(threads, work)
    for conn in conns:
        conn.close()
    return {'messages': threads * n, 'seconds': elapsed, 'rate': threads * n / elapsed,
            'cpu_us_per_msg': cpu / (threads * n) * 1e6}


# ====================================================================== workers: consume
_prepublish = bc.fill_queue   # fill a queue nobody consumes; returns once it holds them all


def _plain_queue(url: str, prefix: str, ids: List[str]) -> str:
    queue = bc.unique(prefix)
    bc.announce_queue(queue, url)
    _prepublish(url, queue, ids, lambda ch: ch.queue_declare(queue, durable=False,
                                                              auto_delete=False))
    return queue


def w_pr_backend_consume(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """The backend's reply consumer: time from subscribe to the last of m results in the table."""
    from pika_rpc.config import reply_queue_arguments
    m = p['m']
    app = _pr_app(url, result_cache_max=max(10000, m))
    backend = app.backend
    bc.announce_queue(backend.oid, url)
    ids = [str(uuid.uuid4()) for _ in range(m)]
    for tid in ids:                      # what send_task does before publishing a task
        backend.on_task_call(None, tid)
    backend.result_consumer.stop()       # queue stays; fill it while nobody consumes
    oid = backend.oid
    _prepublish(url, oid, ids, lambda ch: ch.queue_declare(
        oid, durable=True, auto_delete=False, arguments=reply_queue_arguments(app.conf)))
    link = backend._get_link()
    s0 = link.stats()
    t0, c0 = time.perf_counter(), time.process_time()
    backend.result_consumer.start()
    value = app.AsyncResult(ids[-1]).get(timeout=120)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    s1 = link.stats()
    sizes = backend.stats()
    if value != m - 1 or sizes['pending'] != 0 or sizes['cached'] + sizes['unread'] < m:
        raise RuntimeError(f'not all results arrived: {sizes}')
    app.close()
    return {'messages': m, 'seconds': elapsed, 'rate': m / elapsed,
            'cpu_us_per_msg': cpu / m * 1e6,
            'ack_frames': s1.get('ack_frames', 0) - s0.get('ack_frames', 0)}


def w_pr_consumer(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """A ``pika_rpc.Consumer`` on a pre-filled queue; ``ack``: message.ack() per message."""
    import pika_rpc
    m, ack = p['m'], p['ack']
    ids = [str(uuid.uuid4()) for _ in range(m)]
    queue = _plain_queue(url, 'cons', ids)
    conn = pika_rpc.Connection(url)
    done = threading.Event()
    count = [0]

    def on_message(body: Any, message: Any) -> None:
        if ack:
            message.ack()
        count[0] += 1
        if count[0] == m:
            done.set()

    consumer = pika_rpc.Consumer(conn, [pika_rpc.Queue(queue, durable=False, auto_delete=False)],
                                 auto_declare=False, callbacks=[on_message], no_ack=not ack)
    link = conn.link
    link.call(lambda: None, timeout=30)          # connected before the clock starts
    s0 = link.stats()
    t0, c0 = time.perf_counter(), time.process_time()
    consumer.consume()
    if not done.wait(180):
        raise RuntimeError(f'only {count[0]} of {m} messages arrived')
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    s1 = link.stats()
    consumer.close()
    conn.release()
    return {'messages': m, 'seconds': elapsed, 'rate': m / elapsed,
            'cpu_us_per_msg': cpu / m * 1e6,
            'commands': s1.get('commands', 0) - s0.get('commands', 0),
            'wake_ups': s1.get('wake_ups', 0) - s0.get('wake_ups', 0)}


def w_raw_consume(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """Raw basic_consume: JSON decode + correlation lookup; ``ack``: 'each' (basic_ack per
    message), 'batch' (one ``multiple=True`` ack per process_data_events turn, as the
    backend's reply consumer does) or 'auto' (``auto_ack``)."""
    m, ack = p['m'], p['ack']
    ids = [str(uuid.uuid4()) for _ in range(m)]
    queue = _plain_queue(url, 'rawcons', ids)
    conn = bc.raw_connection(url)
    ch = conn.channel()
    results: Dict[str, Any] = {}
    last = [0]

    def on_message(chan: Any, method: Any, props: Any, body: bytes) -> None:
        meta = json.loads(body)
        results[meta.get('task_id') or props.correlation_id] = meta
        if ack == 'each':
            chan.basic_ack(method.delivery_tag)
        else:
            last[0] = method.delivery_tag

    t0, c0 = time.perf_counter(), time.process_time()
    ch.basic_consume(queue, on_message, auto_ack=ack == 'auto')
    acked = 0
    while len(results) < m:
        conn.process_data_events(time_limit=1)
        if ack == 'batch' and last[0] > acked:
            ch.basic_ack(last[0], multiple=True)
            acked = last[0]
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return {'messages': m, 'seconds': elapsed, 'rate': m / elapsed, 'cpu_us_per_msg': cpu / m * 1e6}


WORKERS: Dict[str, Callable[[Dict[str, Any], str], Dict[str, Any]]] = {
    'pr_store_1t': w_pr_store,
    'pr_store_8t': w_pr_store,
    'pr_store_64t': w_pr_store,
    'pr_link_pipelined': w_pr_link_pipelined,
    'pr_link_pipelined_big': w_pr_link_pipelined,
    'raw_confirm_1t': w_raw_publish,
    'raw_noconfirm_1t': w_raw_publish,
    'raw_confirm_8conn': w_raw_publish,
    'pr_backend_consume': w_pr_backend_consume,
    'pr_consumer_noack': w_pr_consumer,
    'pr_consumer_ack': w_pr_consumer,
    'raw_consume_ack': w_raw_consume,
    'raw_consume_batchack': w_raw_consume,
    'raw_consume_noack': w_raw_consume,
}


def params_for(kind: str, a: argparse.Namespace) -> Dict[str, Any]:
    return {
        'pr_store_1t': dict(threads=1, n=a.n),
        'pr_store_8t': dict(threads=8, n=a.n),
        'pr_store_64t': dict(threads=64, n=a.k64),
        'pr_link_pipelined': dict(n=a.n),
        'pr_link_pipelined_big': dict(n=a.n_big),
        'raw_confirm_1t': dict(threads=1, n=a.n, confirm=True),
        'raw_noconfirm_1t': dict(threads=1, n=a.n, confirm=False),
        'raw_confirm_8conn': dict(threads=8, n=a.n, confirm=True),
        'pr_backend_consume': dict(m=a.m),
        'pr_consumer_noack': dict(m=a.m, ack=False),
        'pr_consumer_ack': dict(m=a.m_ack, ack=True),
        'raw_consume_ack': dict(m=a.m, ack='each'),
        'raw_consume_batchack': dict(m=a.m, ack='batch'),
        'raw_consume_noack': dict(m=a.m, ack='auto'),
    }[kind]


# ====================================================================== driver
def report(runs: Dict[str, List[Dict]], a: argparse.Namespace) -> str:
    med = lambda kind, key='rate': bc.median_of(runs.get(kind, []), key)
    rows = []

    def row(what: str, kind: str, base: str, note: str = '') -> None:
        pr, raw = med(kind), med(base)
        cpu = f'{bc.fmt(med(kind, "cpu_us_per_msg"))} / {bc.fmt(med(base, "cpu_us_per_msg"))}'
        rows.append([what, bc.fmt(pr, '/s'), f'{base}: {bc.fmt(raw, "/s")}',
                     bc.fmt(bc.ratio(pr, raw)), cpu, note])

    n8 = 8 * a.n
    row(f'publish+confirm, store_result, 1 thread ({a.n} msgs)', 'pr_store_1t', 'raw_confirm_1t')
    row('  same', 'pr_store_1t', 'raw_noconfirm_1t', 'raw without confirms')
    row(f'publish+confirm, store_result, 8 threads ({n8} msgs)', 'pr_store_8t', 'raw_confirm_1t',
        'raw is 1 thread (BlockingConnection is not thread-safe)')
    row('  same', 'pr_store_8t', 'raw_noconfirm_1t', 'raw without confirms')
    row('  same', 'pr_store_8t', 'raw_confirm_8conn', 'raw: 8 threads x own connection')
    row(f'publish+confirm, store_result, 64 threads ({64 * a.k64} msgs)', 'pr_store_64t',
        'raw_confirm_8conn')
    share = lambda kind: bc.fmt(100 * (med(kind, 'ack_handler_share') or 0), '%')
    row(f'Link.publish pipelined, 1 thread, wait at end ({a.n} msgs)', 'pr_link_pipelined',
        'raw_noconfirm_1t', f'I/O-thread ceiling; ack handler {share("pr_link_pipelined")} of wall')
    row(f'Link.publish pipelined, 1 thread, wait at end ({a.n_big} msgs)', 'pr_link_pipelined_big',
        'raw_noconfirm_1t', f'ack handler {share("pr_link_pipelined_big")} of wall '
        f'(peak_in_flight {bc.fmt(med("pr_link_pipelined_big", "peak_in_flight"))})')
    row(f'consume: backend reply consumer -> get() ({a.m} msgs)', 'pr_backend_consume',
        'raw_consume_batchack', 'raw: decode + lookup + multiple ack per turn')
    row('  same', 'pr_backend_consume', 'raw_consume_ack', 'raw: decode + lookup + ack each')
    row(f'consume: pika_rpc.Consumer no_ack ({a.m} msgs)', 'pr_consumer_noack', 'raw_consume_noack')
    row(f'consume: pika_rpc.Consumer message.ack() each ({a.m_ack} msgs)', 'pr_consumer_ack',
        'raw_consume_ack', 'each ack() is a blocking command')
    table = bc.markdown_table(['figure (median of %d)' % a.repeats, 'pika_rpc', 'raw pika',
                               'ratio pika_rpc/raw', 'CPU us/msg pika_rpc / raw', 'note'], rows)
    wrows = []
    for kind, threads in (('pr_store_1t', 1), ('pr_store_8t', 8), ('pr_store_64t', 64)):
        if runs.get(kind):
            wrows.append([str(threads), bc.fmt(med(kind, 'wake_ups_per_publish')),
                          bc.fmt(med(kind, 'peak_in_flight')), bc.fmt(med(kind, 'commands')),
                          bc.fmt(med(kind, 'wake_ups'))])
    wtable = bc.markdown_table(['caller threads', 'wake_ups / commands', 'peak_in_flight',
                                'commands', 'wake_ups'], wrows) if wrows else ''
    return table + '\n\nWake-ups (link.stats(), store_result, medians):\n\n' + wtable


def main() -> None:
    args = bc.worker_args()
    if args.worker:
        bc.emit_result(WORKERS[args.worker](json.loads(args.params), args.url))
        return
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer messages and rounds (< 1 minute)')
    ap.add_argument('--repeats', type=int, help='rounds (default 5, quick 3)')
    ap.add_argument('--n', type=int, help='messages per publishing thread')
    ap.add_argument('--k64', type=int, help='messages per thread with 64 threads')
    ap.add_argument('--n-big', type=int, dest='n_big',
                    help='messages for the large pipelined publish (many in flight)')
    ap.add_argument('--m', type=int, help='messages to consume')
    ap.add_argument('--m-ack', type=int, dest='m_ack', help='messages for Consumer with ack()')
    ap.add_argument('--only', help='comma-separated kinds (default: all)')
    a = ap.parse_args()
    q = a.quick
    a.repeats = a.repeats or (3 if q else 5)
    a.n = a.n or (500 if q else 2000)
    a.k64 = a.k64 or (30 if q else 60)
    a.n_big = a.n_big or (8000 if q else 30000)
    a.m = a.m or (3000 if q else 10000)
    a.m_ack = a.m_ack or (600 if q else 2000)
    kinds = a.only.split(',') if a.only else list(WORKERS)
    url = bc.broker_url()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    log(f'bench_link: broker {bc_mask(url)}, {a.repeats} rounds, kinds: {", ".join(kinds)}')
    load0 = bc.loadavg()
    t0 = time.monotonic()
    runs = bc.interleave(SCRIPT, kinds, lambda k: params_for(k, a), a.repeats, url, log)
    took = time.monotonic() - t0
    print(f'## bench_link ({"quick" if q else "default"}; {a.repeats} rounds, fresh process per '
          f'run, interleaved; {took:.0f} s; cpus={os.cpu_count()}; '
          f'loadavg before {load0}, after {bc.loadavg()})\n')
    print(report(runs, a))
    print('\nJSON lines:')
    for kind, rs in runs.items():
        keys = sorted({k for r in rs for k in r if isinstance(r[k], (int, float))})
        print(json.dumps({'bench': 'link', 'kind': kind, 'params': params_for(kind, a),
                          'median': {k: bc.median_of(rs, k) for k in keys}, 'runs': rs}))


def bc_mask(url: str) -> str:
    from pika_rpc.findbroker import mask_url
    return mask_url(url)


if __name__ == '__main__':
    main()
