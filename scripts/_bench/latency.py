"""Round trips and polling: ``rtt``, ``rtt_plain``, ``rtt_detail``, ``threads_rtt``, ``procs``,
``poll``.

``rtt``: one thread, ITERS times: register the id as ``send_task`` does, store a result to
its own reply queue, ``get()`` it (woken): p50, p99, and the split store / get.
``rtt_detail``: pika_rpc without registering first (the result waits in the out-of-band
buffer until ``get()`` adopts it), and the split. ``threads_rtt``: T threads doing those
ping-pongs at once (T=1 is ``rtt``). ``rtt_plain``: ``rtt`` with neither side confirming
its publishes: pika_rpc with ``broker_transport_options={'confirm_publish': False}`` (where
it honours it: checked by publishing, else the run says ``unsupported``), raw pika without
``confirm_delivery()``.

``procs``: P processes (fresh, started together) of 16 threads each doing those round trips
at once: aggregate round trips/s and p99 over all, and the broker connections of all the
processes (``rabbitmqctl`` once they are set up; their TCP connections to the broker from
/proc while they run). Raw pika has a connection per thread.

``poll``: another process publishes a result; this one calls ``get_task_meta()`` in a tight
loop until it is ready (the Django-view pattern): p50, p99, polls per result. Raw pika
polls with ``basic_get`` until the queue is empty + lookup (``raw_get``, the target's
baseline), and with a push consumer: ``process_data_events(0)`` + lookup.
``celery_after_get`` (default run only): the same after one ``get()`` started Celery's push
consumer in that thread.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import rawpika
from .features import confirms_off
from .harness import (
    ENTRY,
    Kind,
    Stopwatch,
    Threads,
    broker_pid,
    broker_sockets,
    child_env,
    percentiles,
    process_cpu,
    rabbitmqctl_json,
)
from .impls import make_impl, timeouts_of
from .publishers import Publisher
from .report import Report, fmt


def w_pingpong(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``threads`` threads at once, ``iters`` times each: register, store to its reply
    queue, get(); ``timeout``: of the whole run. ``pr_plain``: ``{'unsupported': why}``
    when this pika_rpc does not publish without confirms."""
    return pingpong(p, url)


def pingpong(
    p: Dict[str, Any], url: str, before_go: Optional[Callable[[], None]] = None
) -> Dict[str, Any]:
    """``w_pingpong``; ``before_go()`` runs once every thread is set up and warmed up, just
    before the clock starts (``procs``: wait for the other processes). With ``p['lat']``
    the result holds every round trip's latency in us (``lat_us``) and the clock's start
    and end (``t_go``, ``t_end``, monotonic: one clock for every process)."""
    threads, iters, timeout = p['threads'], p['iters'], p['timeout']
    try:
        impl = make_impl(p['impl'], url)
    except (TypeError, ValueError) as exc:  # a setting this pika_rpc does not have
        return {'unsupported': f'{p["impl"]}: {exc}'[:300]}
    if p['impl'] == 'pr_plain':
        honoured, why = confirms_off(impl)
        if not honoured:
            impl.close()
            return {'unsupported': why}
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
    if before_go is not None:
        before_go()
    deadline = time.monotonic() + timeout
    t_go = time.monotonic()
    clock = Stopwatch()
    group.go()
    hung = group.join(deadline + 1)
    elapsed, cpu = clock.read()
    t_end = time.monotonic()
    split = [x for xs in lat for x in xs]
    out = percentiles([store + get for store, get in split])
    if p.get('lat'):
        out.update(
            lat_us=[round((s + g) * 1e6, 1) for s, g in split],
            t_go=t_go,
            t_end=t_end,
            pid=os.getpid(),
        )
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


# ---------------------------------------------------------------------- procs
def w_procs_child(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """One of ``w_procs``'s processes: ``pingpong`` that says ``{"ready": pid}`` once set up
    and starts its clock when ``GO`` comes on stdin."""

    def ready_then_wait() -> None:
        sys.stdout.write(json.dumps({'ready': os.getpid()}) + '\n')
        sys.stdout.flush()
        if sys.stdin.readline().strip() != 'GO':
            raise RuntimeError('the coordinator went away before GO')

    return pingpong(dict(p, lat=True), url, ready_then_wait)


class _Child:
    """A ``w_procs_child`` process; its stdout read by a thread: queue announcements passed
    on to ours (the driver deletes them), ``ready`` and ``result`` kept."""

    def __init__(self, params: Dict[str, Any], url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, ENTRY, '--worker', f'procs_child.{params["impl"]}']
            + ['--params', json.dumps(params), '--url', url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.ready = threading.Event()
        self.done = threading.Event()
        self.result: Optional[Dict[str, Any]] = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if 'queue' in item or 'exchange' in item:
                sys.stdout.write(line)
                sys.stdout.flush()
            elif 'ready' in item:
                self.ready.set()
            elif 'result' in item:
                self.result = item['result']
        self.ready.set()  # exited: nobody waits for it any longer
        self.done.set()

    def go(self) -> None:
        self.proc.stdin.write('GO\n')
        self.proc.stdin.flush()

    def end(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _connections_of(pids: List[int]) -> Optional[int]:
    """The broker's connections whose ``connection_name`` holds one of ``pids``
    (``rabbitmqctl list_connections``: pika_rpc names them ``pika-rpc-io-PID-N``, the
    benchmark ``bench-raw-PID`` / ``bench-celery-PID``); None without rabbitmqctl."""
    import re

    pattern = re.compile(r'(?<!\d)(' + '|'.join(map(str, pids)) + r')(?!\d)')
    try:
        conns = rabbitmqctl_json('list_connections', 'client_properties')
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
        return None
    count = 0
    for c in conns:
        props = {x[0]: x[-1] for x in c.get('client_properties') or [] if isinstance(x, list)}
        name = props.get('connection_name')
        count += isinstance(name, str) and bool(pattern.search(name))
    return count


def w_procs(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``procs`` processes of ``threads`` threads, each thread ``iters`` round trips, all
    started together: aggregate round trips/s (from the first process's start to the last
    one's end), p50/p99 over every round trip, the broker connections of the processes
    (``rabbitmqctl`` once all are set up, and their TCP connections to the broker read
    from /proc while they run: the most at once)."""
    from pika_rpc.config import Settings, connection_options

    port = connection_options(Settings(broker_url=url))[0]['port']
    child = dict(p, worker='_bench.latency:w_procs_child')
    children = [_Child(child, url) for _ in range(p['procs'])]
    try:
        dl = time.monotonic() + 120
        for c in children:
            c.ready.wait(max(0.0, dl - time.monotonic()))
        if not all(c.ready.is_set() and c.proc.poll() is None for c in children):
            raise RuntimeError('a process did not get ready')
        pids = [c.proc.pid for c in children]
        listed = _connections_of(pids)
        broker = broker_pid()
        b0 = process_cpu(broker)
        for c in children:
            c.go()
        most, hard = 0, time.monotonic() + p['timeout'] + 60
        while time.monotonic() < hard:
            most = max(most, sum(broker_sockets(pids, port).values()))
            running = [c for c in children if not c.done.is_set()]
            if not running:
                break
            running[0].done.wait(0.25)  # the next sample in 0.25 s, or sooner when it ends
        b1 = process_cpu(broker)
    finally:
        for c in children:
            c.end(p['timeout'] + 60)
    results = [c.result for c in children]
    if any(r is None for r in results):
        raise RuntimeError(f'{sum(r is None for r in results)} process(es) gave no result')
    out = _procs_result(p, results, listed, most)
    if b0 is not None and b1 is not None:
        out['broker_cpu_us_per_iter'] = (b1 - b0) / max(1, out['round_trips']) * 1e6
    return out


def _procs_result(
    p: Dict[str, Any], results: List[Dict[str, Any]], listed: Optional[int], most: int
) -> Dict[str, Any]:
    lat = [x / 1e6 for r in results for x in r.get('lat_us', [])]
    round_trips = len(lat)
    span = max(r['t_end'] for r in results) - min(r['t_go'] for r in results)
    cpu = sum(r['cpu_us_per_iter'] * r['round_trips'] for r in results)
    out = percentiles(lat)
    out.update(
        procs=p['procs'],
        threads=p['threads'],
        round_trips=round_trips,
        seconds=span,
        rate=round_trips / span,
        per_process_rate=[round(r['rate'], 1) for r in results],
        cpu_us_per_iter=cpu / max(1, round_trips),
        connections=listed,
        connections_during=most,
        errors=sum(r['errors'] for r in results),
        wrong=sum(r['wrong'] for r in results),
        timeouts=sum(r['timeouts'] for r in results),
        hangs=sum(r['hangs'] for r in results),
        error_samples=[e for r in results for e in r.get('error_samples', [])][:3],
    )
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


def rtt_plain_report(r: Report, o: Any) -> None:
    why = r.unsupported('rtt_plain.pr_plain')
    if why:
        r.line('  rtt_plain: pika_rpc publishing without confirms', 'not available', note=why)


def procs_plan(o: Any) -> List[List[Kind]]:
    return [
        [
            Kind(
                f'procs{n}.{i}',
                w_procs,
                dict(
                    impl=i,
                    procs=n,
                    threads=o.procs_threads,
                    iters=o.procs_iters,
                    timeout=o.run_timeout,
                ),
            )
            for i in ('pr', 'raw', 'celery')
        ]
        for n in o.procs
    ]


def procs_report(r: Report, o: Any) -> None:
    for n, cols in r.ran('procs{}', o.procs, ('pr', 'raw', 'celery')):
        t = o.procs_threads
        vp, vr, vc = r.row(
            f'procs P={n} x {t} threads: round trips/s in all ({o.procs_iters} per thread)',
            'rate',
            cols,
            '/s',
            'raw: a connection per thread; Celery: a backend per thread',
        )
        r.row(f'  P={n} p50', 'p50_us', cols, ' us')
        r.row(f'  P={n} p99', 'p99_us', cols, ' us')
        c = r.row(
            f'  P={n} broker connections of the {n} process(es) (rabbitmqctl)',
            'connections',
            cols,
            '',
            'listed once all were set up',
        )
        r.row(
            f'  P={n} TCP connections to the broker, most at once while running',
            'connections_during',
            cols,
            '',
            'from /proc/PID/fd and /proc/net/tcp',
        )
        r.row(f'  P={n} CPU per round trip (all processes)', 'cpu_us_per_iter', cols, ' us')
        r.row(
            f'  P={n} broker CPU per round trip',
            'broker_cpu_us_per_iter',
            cols,
            ' us',
            'beam.smp over the run (shared: other work on the machine counts too)',
        )
        r.totals(
            f'  P={n} errors / wrong / timeouts / hung threads ({o.repeats} run(s))',
            ('errors', 'wrong', 'timeouts', 'hangs'),
            cols,
        )
        if n == max(o.procs):
            r.target_ratio(f'procs P={n}: round trips/s >= 0.9x raw pika', vp, vr, '>=', 0.9)
            r.target(f'procs P={n}: {n} broker connections in all', c[0], '==', n)
            r.target_ratio(f'procs P={n}: round trips/s >= 4x Celery', vp, vc, '>=', 4)


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
