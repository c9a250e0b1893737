"""Round trips and polling: ``rtt``, ``rtt_detail``, ``threads_rtt``, ``poll``.

``rtt``: one thread, ITERS times: register the id as ``send_task`` does, store a result to
its own reply queue, ``get()`` it (woken): p50, p99, and the split store / get.
``rtt_detail``: pika_rpc without registering first (the result waits in the out-of-band
buffer until ``get()`` adopts it), and the split. ``threads_rtt``: T threads doing those
ping-pongs at once (T=1 is ``rtt``).

``poll``: another process publishes a result; this one calls ``get_task_meta()`` in a tight
loop until it is ready (the Django-view pattern): p50, p99, polls per result. Raw pika
polls with ``basic_get`` until the queue is empty + lookup (``raw_get``, the target's
baseline), and with a push consumer: ``process_data_events(0)`` + lookup.
``celery_after_get`` (default run only): the same after one ``get()`` started Celery's push
consumer in that thread.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from . import rawpika
from .harness import Kind, Stopwatch, Threads, percentiles
from .impls import make_impl, timeouts_of
from .publishers import Publisher
from .report import Report, fmt


def w_pingpong(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``threads`` threads at once, ``iters`` times each: register, store to its reply
    queue, get(); ``timeout``: of the whole run."""
    threads, iters, timeout = p['threads'], p['iters'], p['timeout']
    impl = make_impl(p['impl'], url)
    TIMEOUTS = timeouts_of(p['impl'])
    lat: List[List[Tuple[float, float]]] = [[] for _ in range(threads)]
    stats = {'errors': 0, 'wrong': 0, 'timeouts': 0}
    lock = threading.Lock()
    warm = max(3, min(50, 400 // threads))

    def one(queue: str, value: int, out: Optional[List[Tuple[float, float]]], dl: float) -> None:
        tid = str(uuid.uuid4())
        t0 = time.perf_counter()
        impl.register(tid)
        impl.store(tid, value, queue)
        t1 = time.perf_counter()
        got = impl.get(tid, max(0.1, min(10.0, dl - time.monotonic())))
        if out is not None:
            out.append((t1 - t0, time.perf_counter() - t1))
        if got != value:
            with lock:
                stats['wrong'] += 1

    def setup(i: int) -> str:
        queue = impl.thread_setup()
        dl = time.monotonic() + timeout
        for j in range(warm):
            one(queue, j, None, dl)
        return queue

    def body(i: int) -> None:
        queue = group.setup_out[i]
        for j in range(iters):
            try:
                one(queue, j, lat[i], deadline)
            except TIMEOUTS:
                with lock:
                    stats['timeouts'] += 1
                if time.monotonic() > deadline:
                    return
            except Exception:
                with lock:
                    stats['errors'] += 1

    group = Threads(threads, setup, body)
    deadline = time.monotonic() + timeout
    clock = Stopwatch()
    group.go()
    hung = group.join(deadline + 1)
    elapsed, cpu = clock.read()
    split = [x for xs in lat for x in xs]
    out = percentiles([store + get for store, get in split])
    out.update(
        threads=threads,
        iters=iters,
        round_trips=len(split),
        seconds=elapsed,
        rate=len(split) / elapsed,
        cpu_us_per_iter=cpu / max(1, len(split)) * 1e6,
        store_p50_us=statistics.median(s for s, _ in split) * 1e6 if split else None,
        get_p50_us=statistics.median(g for _, g in split) * 1e6 if split else None,
        errors=stats['errors'] + len(group.errors),
        wrong=stats['wrong'],
        timeouts=stats['timeouts'],
        hangs=hung,
        error_samples=group.errors[:3],
    )
    if p['impl'].startswith('pr'):
        out['out_of_band'] = impl.backend.stats()['out_of_band']
    if not hung:
        impl.close()
    return out


def w_poll(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """Another process publishes one result; this thread get_task_meta()s in a tight loop
    until it is SUCCESS. Latency from the publish command to ready."""
    iters, timeout, after_get = p['iters'], p['timeout'], p.get('after_get', False)
    impl = make_impl(p['impl'], url)
    queue = impl.thread_setup()
    publisher = Publisher(url)
    prefix = rawpika.id_prefix()
    if after_get:  # a get() first: Celery starts its push consumer on this queue
        tid = str(uuid.uuid4())
        impl.store(tid, 0, queue)
        impl.get(tid, 10)
    lat: List[float] = []
    polls: List[int] = []
    timeouts = 0
    warm = 0 if after_get else 20
    clock = Stopwatch()
    for k in range(warm + iters):
        if k == warm:
            clock = Stopwatch()
        tid = rawpika.task_ids(prefix, k, 1)[0]
        impl.register(tid)
        t0 = time.perf_counter()
        publisher.publish([queue], prefix, k, 1)
        n = 0
        while True:
            n += 1
            meta = impl.poll(tid)
            if meta is not None:
                break
            if n % 64 == 0 and time.perf_counter() - t0 > timeout:
                break
        if meta is None:
            timeouts += 1
            continue
        if k >= warm:
            lat.append(time.perf_counter() - t0)
            polls.append(n)
    cpu = clock.read()[1]
    publisher.close()
    out = percentiles(lat)
    polls.sort()
    out.update(
        iters=iters,
        ready=len(lat),
        timeouts=timeouts,
        hangs=timeouts,
        polls_p50=polls[len(polls) // 2] if polls else None,
        cpu_us_per_result=cpu / max(1, len(lat)) * 1e6,
    )
    if not timeouts:
        impl.close()
    return out


# ---------------------------------------------------------------------- plans and reports
def rtt_detail_report(r: Report, o: Any) -> None:
    if not r.has('rtt.pr'):
        return
    split = lambda kind: f'{fmt(r.med(kind, "store_p50_us"))} / {fmt(r.med(kind, "get_p50_us"))} us'
    r.line(
        '  rtt split p50: store / get() [raw: sync confirms]',
        split('rtt.pr'),
        split('rtt.raw_confirm'),
        split('rtt.celery'),
        note='store: until the confirm (raw: sync confirm); get: until woken with it',
    )
    if r.has('rtt_detail.pr_unregistered'):
        cols = ('rtt_detail.pr_unregistered', 'rtt.raw_confirm')
        r.row(
            '  rtt p50, ids not registered first [raw: sync confirms]',
            'p50_us',
            cols,
            ' us',
            'pika_rpc: the result waits out of band until get() adopts it',
        )
        r.row('  rtt p99, ids not registered first [raw: sync confirms]', 'p99_us', cols, ' us')
        r.line(
            '  rtt split p50, not registered: store / get()', split('rtt_detail.pr_unregistered')
        )


def threads_rtt_report(r: Report, o: Any) -> None:
    one = r.ran('rtt', [1] if 1 in o.threads else [], ('pr', 'raw_confirm', 'celery'))  # T=1: rtt
    for t, cols in [*one, *r.ran('threads_rtt{}', o.threads, ('pr', 'raw', 'celery'))]:
        r.row(f'threads_rtt T={t} p50' + (' (= rtt)' if t == 1 else ''), 'p50_us', cols, ' us')
        vp, vr, vc = r.row(f'threads_rtt T={t} p99', 'p99_us', cols, ' us')
        if t != 1:
            r.row(f'  T={t} round trips/s', 'rate', cols, '/s')
            r.totals(
                f'  T={t} errors / wrong / timeouts / hung threads ({o.repeats} run(s))',
                ('errors', 'wrong', 'timeouts', 'hangs'),
                cols,
            )
        if t == 64:
            r.target_ratio('threads_rtt T=64 p99 <= 0.5x Celery', vp, vc, '<=', 0.5)


def poll_plan(o: Any) -> List[List[Kind]]:
    impls = ('pr', 'raw_get', 'raw', 'celery')
    groups = [[Kind(f'poll.{i}', w_poll, dict(impl=i, iters=o.polls, timeout=10)) for i in impls]]
    if o.shared:
        groups.append(
            [
                Kind(
                    'poll.celery_after_get',
                    w_poll,
                    dict(impl='celery', iters=3, timeout=3, after_get=True),
                    once=True,
                )
            ]
        )
    return groups


def poll_report(r: Report, o: Any) -> None:
    if not r.has('poll.pr'):
        return
    cols = ('poll.pr', 'poll.raw_get', 'poll.celery')
    vp, vr, _vc = r.row(
        f'poll p50 (get_task_meta() loop, {o.polls} results) [raw: basic_get]',
        'p50_us',
        cols,
        ' us',
        "raw: publish, then basic_get until ready (the issue's baseline)",
    )
    r.row('poll p99 [raw: basic_get]', 'p99_us', cols, ' us')
    r.row(
        '  poll p50 [raw: push consumer]',
        'p50_us',
        ('poll.pr', 'poll.raw'),
        ' us',
        'raw: basic_consume, process_data_events(0) + lookup per poll',
    )
    r.row('  poll p99 [raw: push consumer]', 'p99_us', ('poll.pr', 'poll.raw'), ' us')
    r.row('  polls per result (p50)', 'polls_p50', cols)
    r.row('  CPU per result', 'cpu_us_per_result', cols, ' us')
    r.totals(f'  results never ready ({o.repeats} run(s))', ('timeouts',), cols, '10 s per result')
    r.target_ratio(
        'poll p50 <= 1.5x raw pika (publish, then basic_get until ready)', vp, vr, '<=', 1.5
    )
    if r.has('poll.celery_after_get'):
        x = r.runs['poll.celery_after_get'][0]
        r.line(
            '  Celery poll after a get() in the same thread',
            celery=f'{x.get("ready", "?")}/{x.get("iters", "?")} ready, '
            f'{x.get("timeouts", "?")} never ready in 3 s'
            if 'error' not in x
            else 'run failed',
            note='its push consumer holds the message; basic_get never sees it',
        )
