#!/usr/bin/env python3
"""Benchmark of the result backend: round-trip latency, sequential gets, memory.

Every figure is measured in a fresh subprocess per implementation, kinds interleaved
(rotated order each round), N rounds; the tables show medians. Measured:

(a) round trip, one thread, ``ITERS`` times: register the id as ``send_task`` does
    (``backend.on_task_call``), ``store_result`` to the process's own reply queue (blocks
    until confirmed), then ``AsyncResult(id).get()``; p50/p99. Also without registering
    first (the result lands in the out-of-band buffer and ``get`` adopts it). Raw pika does
    the same on one ``BlockingConnection``: a durable reply queue with ``x-expires`` (as the
    backend's), ``basic_consume`` callback with JSON decode + correlation lookup + ack,
    publish (with ``confirm_delivery()``, and without), then ``process_data_events`` until
    the reply is there.
(b) get_seq: ``SEQ`` results pre-published by raw pika to the reply queue while nobody
    consumes it, then the clock starts: subscribe and ``AsyncResult(id).get()`` each id in
    order. Also: the same gets when all results already arrived (table hits only). Raw
    pika: ``basic_consume`` + ``process_data_events`` until each id in turn is there.
(c) memory: ``TASKS`` tasks with ``result_cache_max=1000``; a raw pika publisher in another
    process sends each result to the backend's oid (in windows of 1000 ids the client
    registered first), the client ``get()``s each. VmRSS (from /proc/self/status) before,
    after a warm-up and at the end, and ``app.backend.stats()`` plus the link's internal
    table sizes at the end. Also an in-process variant: a second thread
    ``store_result(wait=False)``s the results through the same link. Memory runs once per
    variant (not repeated).

Usage::

    python scripts/bench_backend.py --quick   # < 1 minute (memory: 20,000 tasks)
    python scripts/bench_backend.py           # < 3 minutes (memory: 100,000 tasks)

Prints progress on stderr, then Markdown tables and JSON lines on stdout.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

SCRIPT = os.path.abspath(__file__)
WARMUP = 100


_pr_app = bc.pr_app
_percentiles = bc.percentiles


# ====================================================================== (a) round trip
def w_pr_pingpong(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    iters, register = p['iters'], p['register']
    app = _pr_app(url)
    backend = app.backend
    oid = backend.oid
    bc.announce_queue(oid, url)
    AsyncResult = app.AsyncResult
    backend.result_consumer.start()            # reply queue declared and consumed

    def once(i: int, split: List[float]) -> None:
        tid = str(uuid.uuid4())
        t0 = time.perf_counter()
        if register:
            backend.on_task_call(None, tid)
        backend.store_result(tid, i, 'SUCCESS', request={'reply_to': oid, 'correlation_id': tid})
        t1 = time.perf_counter()
        if AsyncResult(tid).get(timeout=10) != i:
            raise RuntimeError('wrong result')
        t2 = time.perf_counter()
        split.append((t1 - t0, t2 - t1))

    scratch: List = []
    for i in range(WARMUP):
        once(i, scratch)
    split: List = []
    c0 = time.process_time()
    for i in range(iters):
        once(i, split)
    cpu = time.process_time() - c0
    total = [a + b for a, b in split]
    out = _percentiles(total)
    out.update(iters=iters, cpu_us_per_iter=cpu / iters * 1e6,
               store_p50_us=statistics.median(a for a, _ in split) * 1e6,
               get_p50_us=statistics.median(b for _, b in split) * 1e6,
               out_of_band=backend.stats()['out_of_band'])
    app.close()
    return out


_raw_reply_queue = bc.raw_reply_queue


def w_raw_pingpong(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    iters, confirm = p['iters'], p['confirm']
    conn = bc.raw_connection(url)
    queue = bc.unique('rawreply')
    bc.announce_queue(queue, url)
    cons = conn.channel()
    _raw_reply_queue(cons, queue)
    pub = conn.channel()
    if confirm:
        pub.confirm_delivery()
    pending: Dict[str, Any] = {}

    def on_reply(ch: Any, method: Any, props: Any, body: bytes) -> None:
        meta = json.loads(body)
        tid = meta.get('task_id') or props.correlation_id
        if tid in pending:
            pending[tid] = meta
        ch.basic_ack(method.delivery_tag)

    cons.basic_consume(queue, on_reply)

    def once(i: int, split: List[float]) -> None:
        tid = str(uuid.uuid4())
        t0 = time.perf_counter()
        pending[tid] = None
        pub.basic_publish('', queue, bc.result_body(tid, i), bc.result_properties(tid),
                          mandatory=True)
        t1 = time.perf_counter()
        while pending[tid] is None:
            conn.process_data_events(time_limit=1)
        if pending.pop(tid)['result'] != i:
            raise RuntimeError('wrong result')
        t2 = time.perf_counter()
        split.append((t1 - t0, t2 - t1))

    scratch: List = []
    for i in range(WARMUP):
        once(i, scratch)
    split: List = []
    c0 = time.process_time()
    for i in range(iters):
        once(i, split)
    cpu = time.process_time() - c0
    out = _percentiles([a + b for a, b in split])
    out.update(iters=iters, cpu_us_per_iter=cpu / iters * 1e6,
               store_p50_us=statistics.median(a for a, _ in split) * 1e6,
               get_p50_us=statistics.median(b for _, b in split) * 1e6)
    conn.close()
    return out


# ====================================================================== (b) get_seq
_fill = bc.fill_queue


def _arrived(backend: Any) -> int:
    """Results in the table: read ones (cached) and not yet read ones (unread)."""
    stats = backend.stats()
    return stats['cached'] + stats['unread']


def w_pr_get_seq(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``arrived=False``: clock starts at subscribe; True: all results already in the table."""
    from pika_rpc.config import reply_queue_arguments
    n, arrived = p['n'], p['arrived']
    app = _pr_app(url)
    backend = app.backend
    oid = backend.oid
    bc.announce_queue(oid, url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for tid in ids:
        backend.on_task_call(None, tid)
    if not arrived:
        backend.result_consumer.stop()
    _fill(url, oid, ids, lambda ch: ch.queue_declare(
        oid, durable=True, auto_delete=False, arguments=reply_queue_arguments(app.conf)),
        check=not arrived)
    if arrived:
        dl = time.monotonic() + 60
        while _arrived(backend) < n and time.monotonic() < dl:
            time.sleep(0.01)
        if _arrived(backend) < n:
            raise RuntimeError(f'results did not arrive: {backend.stats()}')
    AsyncResult = app.AsyncResult
    t0, c0 = time.perf_counter(), time.process_time()
    if not arrived:
        backend.result_consumer.start()
    for j, tid in enumerate(ids):
        if AsyncResult(tid).get(timeout=60) != j:
            raise RuntimeError('wrong result')
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    app.close()
    return {'results': n, 'seconds': elapsed, 'rate': n / elapsed, 'cpu_us_per_result': cpu / n * 1e6}


def w_raw_get_seq(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``ack``: 'batch' (one multiple=True ack per process_data_events turn, as the backend
    does) or 'each' (basic_ack in the callback)."""
    n, ack = p['n'], p['ack']
    queue = bc.unique('rawseq')
    bc.announce_queue(queue, url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    _fill(url, queue, ids, lambda ch: _raw_reply_queue(ch, queue))
    conn = bc.raw_connection(url)
    ch = conn.channel()
    results: Dict[str, Any] = {}
    last = [0]

    def on_reply(chan: Any, method: Any, props: Any, body: bytes) -> None:
        meta = json.loads(body)
        results[meta.get('task_id') or props.correlation_id] = meta
        if ack == 'each':
            chan.basic_ack(method.delivery_tag)
        else:
            last[0] = method.delivery_tag

    t0, c0 = time.perf_counter(), time.process_time()
    ch.basic_consume(queue, on_reply)
    acked = 0
    for j, tid in enumerate(ids):
        while tid not in results:
            conn.process_data_events(time_limit=1)
            if last[0] > acked:
                ch.basic_ack(last[0], multiple=True)
                acked = last[0]
        if results.pop(tid)['result'] != j:
            raise RuntimeError('wrong result')
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return {'results': n, 'seconds': elapsed, 'rate': n / elapsed, 'cpu_us_per_result': cpu / n * 1e6}


# ====================================================================== (c) memory
WINDOW = 1000


_task_ids = bc.task_ids


def _sizes(app: Any) -> Dict[str, Any]:
    backend = app.backend
    out = {k: v for k, v in backend.stats().items() if isinstance(v, (int, float))}
    link = backend._link
    ls = link.stats()
    out.update({f'link_{k}': ls.get(k) for k in ('in_flight', 'peak_in_flight', 'queued_commands',
                                                 'commands', 'wake_ups', 'deliveries', 'ack_frames',
                                                 'publishes', 'confirms')})
    # Internal structures (read-only peek, diagnostics only).
    pipe = link._outbox.pipeline
    table = backend._pending
    out.update(pipeline_unconfirmed=len(pipe._unconfirmed) if pipe else None,
               pipeline_by_key=len(pipe._by_key) if pipe else None,
               pipeline_returned=len(pipe._returned) if pipe else None,
               link_acks=len(link._consumers._acks), link_consumers=len(link._consumers),
               link_retry_later=len(link._outbox.retry_later),
               link_declared=len(link._declarations._done),
               table_slots=len(table._slots), table_final=len(table._final),
               table_oob=len(table._oob), table_replay=len(table._replay),
               table_watchers=len(table._watchers),
               threads=threading.active_count(), gc_objects=len(gc.get_objects()))
    return out


def w_pr_memory(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    tasks, mode = p['tasks'], p['mode']
    rss_start = bc.rss_kb()
    # result_cache_max also bounds results that arrived and were not read yet: with two
    # windows in flight ahead of the reader, a starved reader can have > 1000 unread (then
    # the oldest are dropped and their get() times out); callers may raise it (bench.py).
    app = _pr_app(url, result_cache_max=p.get('cache_max', 1000))
    backend = app.backend
    oid = backend.oid
    bc.announce_queue(oid, url)
    prefix = bc.id_prefix()
    AsyncResult = app.AsyncResult
    window = bc.window_ids(prefix, tasks, WINDOW)
    backend.result_consumer.start()
    rss_connected = bc.rss_kb()

    if mode == 'process':
        child = bc.Publisher(url)

        def release(k: int) -> None:
            for tid in window(k):
                backend.on_task_call(None, tid)
            child.publish([oid], prefix, k * WINDOW, len(window(k)))
    else:
        todo: 'Any' = __import__('queue').SimpleQueue()

        def storer() -> None:
            while True:
                k = todo.get()
                if k is None:
                    return
                for i, tid in enumerate(window(k), k * WINDOW):
                    backend.store_result(tid, i, 'SUCCESS',
                                         request={'reply_to': oid, 'correlation_id': tid},
                                         wait=False)
        thread = threading.Thread(target=storer, daemon=True)
        thread.start()

        def release(k: int) -> None:
            for tid in window(k):
                backend.on_task_call(None, tid)
            todo.put(k)

    run = bc.windowed_gets(tasks, WINDOW, window, release,
                           lambda tid: AsyncResult(tid).get(timeout=60))
    elapsed, checkpoints, rss_warm = run['seconds'], run['checkpoints'], run['rss_after_warmup_kb']
    if mode == 'process':
        child.close()
    else:
        todo.put(None)
        thread.join(30)
    time.sleep(0.3)      # let the last batched ack go out
    gc.collect()
    rss_end = bc.rss_kb()
    sizes = _sizes(app)
    app.close()
    return {'tasks': tasks, 'mode': mode, 'seconds': elapsed, 'rate': tasks / elapsed,
            'rss_start_kb': rss_start, 'rss_connected_kb': rss_connected,
            'rss_after_warmup_kb': rss_warm, 'rss_end_kb': rss_end,
            'rss_growth_kb': rss_end - (rss_warm or rss_connected),
            'rss_growth_from_start_kb': rss_end - rss_start,
            'checkpoints': checkpoints, 'sizes': sizes}


WORKERS: Dict[str, Callable[[Dict[str, Any], str], Dict[str, Any]]] = {
    'pr_pingpong': w_pr_pingpong,
    'pr_pingpong_unregistered': w_pr_pingpong,
    'raw_pingpong_confirm': w_raw_pingpong,
    'raw_pingpong_noconfirm': w_raw_pingpong,
    'pr_get_seq': w_pr_get_seq,
    'pr_get_seq_arrived': w_pr_get_seq,
    'raw_get_seq': w_raw_get_seq,
    'raw_get_seq_ackeach': w_raw_get_seq,
    'pr_memory_process': w_pr_memory,
    'pr_memory_inproc': w_pr_memory,
}
REPEATED = ['pr_pingpong', 'pr_pingpong_unregistered', 'raw_pingpong_confirm',
            'raw_pingpong_noconfirm', 'pr_get_seq', 'pr_get_seq_arrived', 'raw_get_seq', 'raw_get_seq_ackeach']
ONCE = ['pr_memory_process', 'pr_memory_inproc']


def params_for(kind: str, a: argparse.Namespace) -> Dict[str, Any]:
    return {
        'pr_pingpong': dict(iters=a.iters, register=True),
        'pr_pingpong_unregistered': dict(iters=a.iters, register=False),
        'raw_pingpong_confirm': dict(iters=a.iters, confirm=True),
        'raw_pingpong_noconfirm': dict(iters=a.iters, confirm=False),
        'pr_get_seq': dict(n=a.seq, arrived=False),
        'pr_get_seq_arrived': dict(n=a.seq, arrived=True),
        'raw_get_seq': dict(n=a.seq, ack='batch'),
        'raw_get_seq_ackeach': dict(n=a.seq, ack='each'),
        'pr_memory_process': dict(tasks=a.tasks, mode='process'),
        'pr_memory_inproc': dict(tasks=a.tasks, mode='inproc'),
    }[kind]


# ====================================================================== driver
def report(runs: Dict[str, List[Dict]], a: argparse.Namespace) -> str:
    med = lambda kind, key: bc.median_of(runs.get(kind, []), key)
    out = []
    rows = []
    for kind, base, what in (
            ('pr_pingpong', 'raw_pingpong_confirm', 'registered (as send_task does)'),
            ('pr_pingpong', 'raw_pingpong_noconfirm', 'registered; raw without confirms'),
            ('pr_pingpong_unregistered', 'raw_pingpong_confirm', 'not registered (oob adopt)')):
        if not runs.get(kind) or not runs.get(base):
            continue
        for q in ('p50_us', 'p99_us'):
            pr, raw = med(kind, q), med(base, q)
            rows.append([f'round trip {q[:3]}, {what}', bc.fmt(pr, ' us'),
                         f'{base}: {bc.fmt(raw, " us")}', bc.fmt(bc.ratio(pr, raw))])
        rows.append([f'  split p50: store / get, {what}',
                     f'{bc.fmt(med(kind, "store_p50_us"))} / {bc.fmt(med(kind, "get_p50_us"))} us',
                     f'{bc.fmt(med(base, "store_p50_us"))} / {bc.fmt(med(base, "get_p50_us"))} us', ''])
        rows.append([f'  CPU per round trip, {what}', bc.fmt(med(kind, 'cpu_us_per_iter'), ' us'),
                     bc.fmt(med(base, 'cpu_us_per_iter'), ' us'),
                     bc.fmt(bc.ratio(med(kind, 'cpu_us_per_iter'), med(base, 'cpu_us_per_iter')))])
    for kind, base, what in (
            ('pr_get_seq', 'raw_get_seq', f'get_seq {a.seq}: subscribe + get() each in order'),
            ('pr_get_seq', 'raw_get_seq_ackeach', '  same; raw acks each message'),
            ('pr_get_seq_arrived', 'raw_get_seq',
             f'get_seq {a.seq}: all already arrived (cache hits)')):
        if runs.get(kind) and runs.get(base):
            pr, raw = med(kind, 'rate'), med(base, 'rate')
            rows.append([what, bc.fmt(pr, ' results/s'), f'{base}: {bc.fmt(raw, " results/s")}',
                         bc.fmt(bc.ratio(pr, raw))])
            rows.append(['  CPU per result', bc.fmt(med(kind, 'cpu_us_per_result'), ' us'),
                         bc.fmt(med(base, 'cpu_us_per_result'), ' us'),
                         bc.fmt(bc.ratio(med(kind, 'cpu_us_per_result'),
                                         med(base, 'cpu_us_per_result')))])
    if rows:
        out.append(bc.markdown_table([f'figure (median of {a.repeats}; {a.iters} round trips)',
                                      'pika_rpc', 'raw pika', 'ratio pika_rpc/raw'], rows))
    mrows = []
    for kind in ONCE:
        for r in runs.get(kind, []):
            s = r['sizes']
            mrows.append([r['mode'], f"{r['tasks']:,}", bc.fmt(r['rate'], '/s'),
                          f"{r['rss_start_kb']:,}", f"{r['rss_after_warmup_kb']:,}",
                          f"{r['rss_end_kb']:,}", f"{r['rss_growth_kb']:+,}",
                          f"pending={s['pending']} cached={s['cached']} oob={s['out_of_band']} "
                          f"replay={s['replay']} watched={s['watched']} "
                          f"pipeline_by_key={s['pipeline_by_key']} link_acks={s['link_acks']} "
                          f"threads={s['threads']}"])
    if mrows:
        out.append(f'Memory (result_cache_max=1000; one run each; VmRSS kB; growth = end - after '
                   f'warm-up of {2 * WINDOW} tasks):\n\n' + bc.markdown_table(
                       ['results sent by', 'tasks', 'rate', 'RSS start', 'RSS after warm-up',
                        'RSS end', 'growth', 'backend.stats() / internals at end'], mrows))
    return '\n\n'.join(out)


def main() -> None:
    args = bc.worker_args()
    if args.worker:
        bc.emit_result(WORKERS[args.worker](json.loads(args.params), args.url))
        return
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer iterations and rounds (< 1 minute)')
    ap.add_argument('--repeats', type=int, help='rounds of (a) and (b) (default 5, quick 3)')
    ap.add_argument('--iters', type=int, help='round trips per run (default 2000)')
    ap.add_argument('--seq', type=int, help='results for get_seq (default 5000)')
    ap.add_argument('--tasks', type=int, help='tasks for the memory run (default 100000, quick 20000)')
    ap.add_argument('--only', help='comma-separated kinds (default: all)')
    a = ap.parse_args()
    q = a.quick
    a.repeats = a.repeats or (3 if q else 5)
    a.iters = a.iters or 2000
    a.seq = a.seq or 5000
    a.tasks = a.tasks or (20000 if q else 100000)
    kinds = a.only.split(',') if a.only else REPEATED + ONCE
    url = bc.broker_url()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    from pika_rpc.findbroker import mask_url
    log(f'bench_backend: broker {mask_url(url)}, {a.repeats} rounds, kinds: {", ".join(kinds)}')
    load0 = bc.loadavg()
    t0 = time.monotonic()
    rep = [k for k in kinds if k in REPEATED]
    runs = bc.interleave(SCRIPT, rep, lambda k: params_for(k, a), a.repeats, url, log) if rep else {}
    once = [k for k in kinds if k in ONCE]
    if once:
        runs.update(bc.interleave(SCRIPT, once, lambda k: params_for(k, a), 1, url, log))
    took = time.monotonic() - t0
    print(f'## bench_backend ({"quick" if q else "default"}; {a.repeats} rounds, fresh process '
          f'per run, interleaved; {took:.0f} s; cpus={os.cpu_count()}; '
          f'loadavg before {load0}, after {bc.loadavg()})\n')
    print(report(runs, a))
    print('\nJSON lines:')
    for kind, rs in runs.items():
        keys = sorted({k for r in rs for k in r if isinstance(r[k], (int, float))})
        print(json.dumps({'bench': 'backend', 'kind': kind, 'params': params_for(kind, a),
                          'median': {k: bc.median_of(rs, k) for k in keys}, 'runs': rs}))


if __name__ == '__main__':
    main()
