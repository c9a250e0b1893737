"""Large results: ``large`` (and its ``large_load`` runs).

``large``: one result of 1, 4, 16, 24 and 64 MB (``--large-sizes``) stored by another
process (raw pika, confirmed): the time from the publisher's confirm to ``get()`` returning
(pika_rpc, JSON decode included), against a raw pika ``basic_consume`` consumer, from the
same confirm to the body in its callback; ITERS per run, median.

``large_load`` (pika_rpc, 5 times per run): while a 24 MB result arrives, other threads'
confirmed stores (their wait for the confirm) and small round trips, and small results
published right behind the big one into the same reply queue (their arrival, from the big
one's confirm); ops outside those windows are shown as the baseline, and
``large_load.pr_elsewhere`` measures the same ops while the 24 MB go to another process
(same broker and CPU load, nothing big read here). The clock is ``time.monotonic()``, one
clock for every process of the machine.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from typing import Any, Dict, List, Tuple

from . import rawpika
from .harness import Kind, announce_queue, percentiles
from .impls import PR
from .publishers import Publisher
from .report import Report, fmt, ratio

MB = 1 << 20


def w_large_recv(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """One result of ``mb`` MB from another process, ``iters`` times: from the publisher's
    confirm to ``get()`` returning (pika_rpc) or to the body in the ``basic_consume``
    callback (raw pika; also once its ``json.loads`` returned: ``recv_decoded_ms``).
    ``decode_ms``: the JSON decode alone (pika_rpc: of the same body, afterwards)."""
    size, iters = int(p['mb'] * MB), p['iters']
    receive = _LargePR(url) if p['impl'] == 'pr' else _LargeRaw(url)
    publisher = Publisher(url)
    recv: List[float] = []
    from_go: List[float] = []
    decode: List[float] = []
    for _ in range(iters):
        tid = str(uuid.uuid4())
        receive.register(tid)
        publisher.prepare_large(receive.queue, tid, size)
        publisher.go()
        done = receive.wait(tid, size)
        pub = publisher.read(120)
        recv.append(done - pub['confirmed'])
        from_go.append(done - pub['go'])
        decode.append(receive.decode_seconds(tid, size))
    publisher.close()
    receive.close()
    med = lambda xs: statistics.median(xs) * 1e3 if xs else None
    out = {
        'mb': p['mb'],
        'iters': iters,
        'recv_ms': med(recv),
        'recv_max_ms': max(recv) * 1e3,
        'from_publish_ms': med(from_go),
        'decode_ms': med(decode),
        'runs_ms': [round(x * 1e3, 2) for x in recv],
    }
    if p['impl'] == 'raw':  # raw pika once its callback has the value decoded too
        out['recv_decoded_ms'] = med([r + d for r, d in zip(recv, decode)])
    return out


class _LargePR(PR):
    """pika_rpc receiving: ``wait`` returns when ``get()`` did (monotonic);
    ``decode_seconds``: the decode alone of the same body, afterwards (where the time goes)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.queue = self.oid

    def wait(self, tid: str, size: int) -> float:
        value = self.get(tid, 120)
        done = time.monotonic()
        if len(value) != size:
            raise RuntimeError('wrong result')
        self.app.AsyncResult(tid).forget()
        return done

    def decode_seconds(self, tid: str, size: int) -> float:
        from pika_rpc import serialization

        body = rawpika.result_body(tid, 'x' * size)
        t0 = time.perf_counter()
        serialization.loads(body, 'application/json', 'utf-8')
        return time.perf_counter() - t0


class _LargeRaw:
    """Raw pika receiving: ``basic_consume``; the callback notes when the body is there
    and decodes it (``json.loads``), as ``_LargePR`` is driven."""

    def __init__(self, url: str) -> None:
        self.conn = rawpika.raw_connection(url)
        ch = self.conn.channel()
        self.queue = rawpika.unique('rawlarge')
        announce_queue(self.queue, url)
        rawpika.declare_reply_queue(ch, self.queue)
        self.seen: Dict[str, Tuple[float, float, int]] = {}
        ch.basic_consume(self.queue, self._on_message)

    def _on_message(self, chan: Any, method: Any, props: Any, body: bytes) -> None:
        t = time.monotonic()  # the body is here
        value = json.loads(body)['result']  # what a caller could use: decoded
        self.seen[props.correlation_id] = (t, time.monotonic(), len(value))
        chan.basic_ack(method.delivery_tag)

    def register(self, tid: str) -> None:
        pass

    def wait(self, tid: str, size: int) -> float:
        """When the body was in the callback (monotonic)."""
        dl = time.monotonic() + 120
        while tid not in self.seen and time.monotonic() < dl:
            self.conn.process_data_events(time_limit=1)
        done, decoded, got = self.seen[tid]
        if got != size:
            raise RuntimeError('wrong result')
        return done

    def decode_seconds(self, tid: str, size: int) -> float:
        """The ``json.loads`` in the callback."""
        done, decoded, _ = self.seen.pop(tid)
        return decoded - done

    def close(self) -> None:
        self.conn.close()


def w_large_load(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """While a ``mb`` MB result arrives (``iters`` times): other threads' confirmed stores
    and small round trips, and ``small`` results queued right behind the big one.

    ``elsewhere``: the big result goes to another process (the publisher consumes it):
    the same broker and CPU load, nothing big read here; the baseline of the figures."""
    size, iters, n_small = int(p['mb'] * MB), p['iters'], p['small']
    elsewhere = p.get('elsewhere', False)
    pr = PR(url)
    oid = pr.oid
    sink = rawpika.unique('largesink')  # the other threads' stores go there
    announce_queue(sink, url)
    conn = rawpika.raw_connection(url)
    rawpika.declare_reply_queue(conn.channel(), sink)
    conn.close()
    publisher = Publisher(url)
    stop = threading.Event()
    errors: List[str] = []
    stores: List[List[Tuple[float, float]]] = [[] for _ in range(p['store_threads'])]
    trips: List[List[Tuple[float, float]]] = [[] for _ in range(p['rtt_threads'])]

    def timed(ops: List[Tuple[float, float]], what: str, op: Any, i: int) -> None:
        while not stop.is_set():
            tid = str(uuid.uuid4())
            t0 = time.monotonic()
            try:
                op(tid, i)
            except Exception as exc:  # counted, the run goes on
                errors.append(f'{what}: {exc!r}'[:200])
                continue
            ops.append((t0, time.monotonic()))

    def store(tid: str, i: int) -> None:
        pr.store(tid, i, sink)

    def round_trip(tid: str, i: int) -> None:
        pr.register(tid)
        pr.store(tid, i, oid)
        if pr.get(tid, 30) != i:
            raise RuntimeError('wrong result')

    pool = [
        threading.Thread(target=timed, args=(stores[i], 'store', store, i), daemon=True)
        for i in range(p['store_threads'])
    ]
    pool += [
        threading.Thread(target=timed, args=(trips[i], 'round trip', round_trip, i), daemon=True)
        for i in range(p['rtt_threads'])
    ]
    for t in pool:
        t.start()
    windows: List[Tuple[float, float]] = []
    big_recv: List[float] = []
    small_arrival: List[float] = []
    for _ in range(iters):
        tid = str(uuid.uuid4())
        small = [str(uuid.uuid4()) for _ in range(n_small)]
        for t in [tid] + small:
            pr.register(t)
        arrived: Dict[str, float] = {}

        def wait_small(t: str, arrived: Dict[str, float] = arrived) -> None:
            try:
                pr.get(t, 120)
                arrived[t] = time.monotonic()
            except Exception as exc:
                errors.append(f'small result: {exc!r}'[:200])

        waiters = [threading.Thread(target=wait_small, args=(t,), daemon=True) for t in small]
        for w in waiters:
            w.start()
        publisher.prepare_large('@self' if elsewhere else oid, tid, size, [(oid, t) for t in small])
        stop.wait(0.3)  # background ops only, before the window (pacing, not a sync)
        publisher.go()
        if not elsewhere:
            value = pr.get(tid, 120)
            done = time.monotonic()
            if len(value) != size:
                raise RuntimeError('wrong result')
            del value
            pr.app.AsyncResult(tid).forget()
        for w in waiters:
            w.join(120)
        pub = publisher.read(120)
        if elsewhere:
            done = pub['received']
        windows.append((pub['go'], done))
        big_recv.append(done - pub['confirmed'])
        if arrived:
            small_arrival.append(max(arrived.values()) - pub['confirmed'])
        stop.wait(0.3)
    stop.set()
    for t in pool:
        t.join(60)
    publisher.close()
    pr.close()
    out: Dict[str, Any] = {
        'mb': p['mb'],
        'iters': iters,
        'errors': len(errors),
        'error_samples': errors[:3],
    }
    for name, ops in (('store', stores), ('rtt', trips)):
        inside, outside = _split(ops, windows)
        for where, lat in (('during', inside), ('outside', outside)):
            pc = percentiles(lat)
            out[f'{name}_{where}_n'] = len(lat)
            for q in ('p50', 'p99', 'max'):
                out[f'{name}_{where}_{q}_ms'] = pc[f'{q}_us'] / 1e3 if pc else None
    out['big_recv_ms'] = statistics.median(big_recv) * 1e3
    out['small_arrival_ms'] = statistics.median(small_arrival) * 1e3 if small_arrival else None
    out['small_arrival_runs_ms'] = [round(x * 1e3, 2) for x in small_arrival]
    return out


def _split(
    ops_by_thread: List[List[Tuple[float, float]]], windows: List[Tuple[float, float]]
) -> Tuple[List[float], List[float]]:
    """Durations of the ops that overlap a window, and of the others."""
    inside, outside = [], []
    for ops in ops_by_thread:
        for t0, t1 in ops:
            hit = any(t0 < end and t1 > start for start, end in windows)
            (inside if hit else outside).append(t1 - t0)
    return inside, outside


# ---------------------------------------------------------------------- plans and reports
def large_plan(o: Any) -> List[List[Kind]]:
    groups = [
        [
            Kind(
                f'large{mb:g}.{i}',
                w_large_recv,
                dict(impl=i, mb=mb, iters=o.large_iters, timeout=120),
            )
            for i in ('pr', 'raw')
        ]
        for mb in o.large_sizes
    ]
    if o.quick:  # results <= 16 MB: no 24 MB under load
        return groups
    groups.append(
        [
            Kind(
                f'large_load.{i}',
                w_large_load,
                dict(
                    impl='pr',
                    mb=24,
                    iters=max(5, o.large_iters),
                    small=8,
                    store_threads=2,
                    rtt_threads=2,
                    elsewhere=elsewhere,
                    timeout=180,
                ),
            )
            for i, elsewhere in (('pr', False), ('pr_elsewhere', True))
        ]
    )
    return groups


def large_report(r: Report, o: Any) -> None:
    for mb, cols in r.ran('large{:g}', o.large_sizes, ('pr', 'raw')):
        vp, vr, _ = r.row(
            f'large {mb:g} MB: confirm -> received ({o.large_iters} per run)',
            'recv_ms',
            cols,
            ' ms',
            'pika_rpc: get() returned (decoded); raw: body in the callback',
        )
        r.row(
            f'  {mb:g} MB: JSON decode alone',
            'decode_ms',
            cols,
            ' ms',
            'pika_rpc: the same body decoded afterwards; raw: json.loads in the callback',
        )
        dr = r.med(cols[1], 'recv_decoded_ms')
        r.line(
            f'  {mb:g} MB: raw pika, confirm -> json.loads done in its callback',
            fmt(vp, ' ms'),
            fmt(dr, ' ms'),
            '-',
            fmt(ratio(vp, dr)),
            'n/a',
            'both decoded',
        )
        if vr is not None and vr <= 0:
            # Small bodies reach raw pika's callback before the publisher has read its
            # confirm: a time from the confirm means nothing then; compare from the publish.
            vp = r.med(cols[0], 'from_publish_ms')
            vr = r.med(cols[1], 'from_publish_ms')
            label = f'large {mb:g} MB receive <= 1.5x raw pika (from the publish: see note)'
            r.line(
                f'  {mb:g} MB: publish -> received (raw body came before the confirm)',
                fmt(vp, ' ms'),
                fmt(vr, ' ms'),
                '-',
                fmt(ratio(vp, vr)),
                'n/a',
                'the time from the confirm is negative for raw pika at this size',
            )
            r.target_ratio(label, vp, vr, '<=', 1.5)
            continue
        r.target_ratio(f'large {mb:g} MB receive <= 1.5x raw pika', vp, vr, '<=', 1.5)
        r.target_ratio(
            '  same, raw pika with json.loads in its callback (both decoded)', vp, dr, '<=', 1.5
        )
    if r.has('large_load.pr'):
        _large_load_report(r)


def _large_load_report(r: Report) -> None:
    k, ke = 'large_load.pr', 'large_load.pr_elsewhere'
    raw24 = r.med('large24.raw', 'recv_ms')
    r.row('large_load: 24 MB result arriving, confirm -> get()', 'big_recv_ms', (k,), ' ms')
    for name, what in (
        ('store', "other threads' store_result, wait for the confirm"),
        ('rtt', "other threads' small round trips"),
    ):
        for q in ('p50', 'p99', 'max'):
            vp, ve = r.med(k, f'{name}_during_{q}_ms'), r.med(ke, f'{name}_during_{q}_ms')
            r.line(
                f'  {what}: {q} while it arrives',
                fmt(vp, ' ms'),
                fmt(ve, ' ms'),
                '-',
                fmt(ratio(vp, ve)),
                'n/a',
                'raw pika column: the same while the 24 MB go to another process'
                if q == 'p50'
                else '',
            )
        r.row(f'  {what}: p99 otherwise (baseline)', f'{name}_outside_p99_ms', (k,), ' ms')
        r.row(f'  {what}: ops while it arrives', f'{name}_during_n', (k,))
    small = r.row(
        '  8 small results queued behind it: the last one, confirm -> get()',
        'small_arrival_ms',
        (k,),
        ' ms',
        f'target: raw pika 24 MB receive ({fmt(raw24, " ms")}) + 10 ms',
    )[0]
    r.totals('  errors (all runs)', ('errors',), (k,))
    p99 = r.med(k, 'store_during_p99_ms')
    r.target(
        "other threads' confirms wait <= 50 ms (p99) while 24 MB arrive", p99, '<=', 50, '<= 50 ms'
    )
    r.target(
        'small results behind 24 MB arrive <= raw 24 MB receive + 10 ms',
        small,
        '<=',
        None if raw24 is None else raw24 + 10,
        f'<= {fmt(raw24)} + 10 ms',
    )
