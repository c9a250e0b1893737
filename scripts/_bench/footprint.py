"""What a process holds: ``resources``, ``memory``, ``memory_detail``, ``quorum``.

``resources``: T threads each did one ping-pong and now wait in ``get()``: the broker's
connections, channels and consumed queues of the process (``rabbitmqctl``, connections
matched by the pid in their ``connection_name``), its CPU over IDLE seconds, then they are
woken.

``memory``: RSS growth over TASKS tasks whose results another process publishes (windows
of 1,000 ids, two windows ahead; growth = end - after 2 windows). pika_rpc runs with
``result_cache_max=3000``, as that bound also drops results that arrived and were not read
yet. ``memory_detail``: pika_rpc with the results stored by a thread of the same process
(``store_result(wait=False)`` through the same link), and the sizes of the library's
tables at the end of both pika_rpc runs (read-only peeks at pika_rpc's own structures).

``quorum``: the cost of ``result_queue_type='quorum'`` reply queues on one node, where
pika_rpc has the setting (``features.quorum``): round trips (``rtt`` with a quorum reply
queue against a classic one), and K reply queues declared as pika_rpc declares them of
each type: the declare's and the delete's latency (one connection, a fresh name each) and
the broker's memory per queue (``rabbitmqctl list_queues name memory``).
"""

from __future__ import annotations

import gc
import os
import queue as _queue
import re
import statistics
import subprocess
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import rawpika
from .features import quorum
from .harness import Kind, Threads, announce_queue, percentiles, rabbitmqctl_json, rss_kb
from .impls import PR, Raw, RawClient, make_impl, timeouts_of
from .publishers import Publisher
from .report import Report, fmt

WINDOW = 1000


# ---------------------------------------------------------------------- resources
def broker_resources(pid: Optional[int] = None) -> Dict[str, Any]:
    """The broker's view of process ``pid`` (default: this one), from ``rabbitmqctl``.

    Connections whose ``connection_name`` client property contains the pid as a whole
    number (pika_rpc names its connection ``pika-rpc-io-PID-N``; the benchmarks name raw
    and Celery connections ``bench-raw-PID`` / ``bench-celery-PID``), their channels, and
    the queues those channels consume. ``{'error': ...}`` without rabbitmqctl.
    """
    pid = os.getpid() if pid is None else pid
    pattern = re.compile(rf'(?<!\d){pid}(?!\d)')
    try:
        conns = rabbitmqctl_json('list_connections', 'pid', 'client_properties')
        chans = rabbitmqctl_json('list_channels', 'pid', 'connection')
        consumers = rabbitmqctl_json('list_consumers', 'queue_name', 'channel_pid')
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        return {'error': str(exc)[:300]}
    names = {}
    for c in conns:
        props = {p[0]: p[-1] for p in c.get('client_properties') or [] if isinstance(p, list)}
        name = props.get('connection_name')
        if isinstance(name, str) and pattern.search(name):
            names[c['pid']] = name
    chan_pids = {ch['pid'] for ch in chans if ch.get('connection') in names}
    queues = sorted({c['queue_name'] for c in consumers if c.get('channel_pid') in chan_pids})
    return {
        'connections': len(names),
        'channels': len(chan_pids),
        'queues': len(queues),
        'connection_names': sorted(names.values())[:5],
        'queue_names': queues[:5],
    }


def w_resources(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """T threads each do one ping-pong, then wait in get() for a result not sent yet:
    the broker's view of this process, its CPU over IDLE seconds, then all are woken."""
    threads, idle, timeout = p['threads'], p['idle'], p['timeout']
    impl = make_impl(p['impl'], url)
    TIMEOUTS = timeouts_of(p['impl'])
    ids = rawpika.task_ids(rawpika.id_prefix(), 0, threads)
    lock = threading.Lock()
    stats = {'woken': 0, 'wrong': 0, 'errors': 0, 'timeouts': 0}
    waiting = threading.Semaphore(0)

    def setup(i: int) -> str:
        queue = impl.thread_setup()
        tid = str(uuid.uuid4())  # one ping-pong: every per-thread resource exists
        impl.register(tid)
        impl.store(tid, i, queue)
        if impl.get(tid, 30) != i:
            raise RuntimeError('wrong result')
        impl.register(ids[i])
        return queue

    def body(i: int) -> None:
        waiting.release()
        try:
            value = impl.get(ids[i], idle + timeout)
        except TIMEOUTS:
            with lock:
                stats['timeouts'] += 1
            return
        with lock:
            stats['woken'] += 1
            stats['wrong'] += value != i

    group = Threads(threads, setup, body)
    group.go()
    for _ in range(threads):
        waiting.acquire(timeout=30)
    time.sleep(1.0)  # every thread is inside get() by now
    res = broker_resources()
    rss = rss_kb()
    c0, w0 = time.process_time(), time.perf_counter()
    time.sleep(idle)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    # Wake them: pika_rpc and Celery store through their own backend, raw with a connection
    # of its own (all after the measurement).
    queues = group.setup_out
    waker = RawClient(url) if isinstance(impl, Raw) else impl
    for i, tid in enumerate(ids):
        waker.store(tid, i, queues[i])
    if waker is not impl:
        waker.close()
    hung = group.join(time.monotonic() + timeout)
    out = {
        'threads': threads,
        'idle_s': wall,
        'idle_cpu_s': cpu,
        'idle_cpu_pct': cpu / wall * 100,
        'rss_kb': rss,
        'threads_alive': threading.active_count(),
        'woken': stats['woken'],
        'wrong': stats['wrong'],
        'timeouts': stats['timeouts'],
        'errors': len(group.errors),
        'hangs': hung,
        'error_samples': group.errors[:3],
    }
    out.update({f'broker_{k}': v for k, v in res.items()})
    if not hung:
        impl.close()
    return out


# ---------------------------------------------------------------------- memory
def windowed_gets(
    tasks: int,
    ids_of: Callable[[int], List[str]],
    release: Callable[[int], None],
    get: Callable[[str], Any],
) -> Dict[str, Any]:
    """``tasks`` results in windows of ``WINDOW`` ids, two windows in flight ahead.

    ``release(k)`` makes window k's results come (register the ids, tell a publisher); each
    id of window k (``ids_of(k)``) is ``get(tid)`` in order and must return its index. RSS
    is read after a ``gc.collect()`` once two windows were done (the warm-up) and at ten
    checkpoints.
    """
    windows = (tasks + WINDOW - 1) // WINDOW
    checkpoints: List[List[int]] = []
    rss_warm = None
    t0 = time.perf_counter()
    for k in range(min(2, windows)):
        release(k)
    for k in range(windows):
        for i, tid in enumerate(ids_of(k), k * WINDOW):
            if get(tid) != i:
                raise RuntimeError(f'wrong result for task {i}')
        if k + 2 < windows:
            release(k + 2)
        if k == 1:
            gc.collect()
            rss_warm = rss_kb()
        if (k + 1) % max(1, windows // 10) == 0:
            checkpoints.append([(k + 1) * WINDOW, rss_kb()])
    return {
        'seconds': time.perf_counter() - t0,
        'checkpoints': checkpoints,
        'rss_after_warmup_kb': rss_warm,
    }


def w_memory(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """RSS growth over ``tasks`` tasks. ``impl``: pr, raw, celery (results from another
    process) or pr_inproc (from a thread of this one, ``store_result(wait=False)``)."""
    tasks, inproc = p['tasks'], p['impl'] == 'pr_inproc'
    rss_start = rss_kb()
    # pika_rpc: result_cache_max covers every result that may be in flight unread (3
    # windows); it drops the oldest *unread* results beyond it (a later get() times out).
    conf = {'result_cache_max': 3 * WINDOW} if p['impl'].startswith('pr') else {}
    impl = make_impl('pr' if inproc else p['impl'], url, **conf)
    queue = impl.thread_setup()
    prefix = rawpika.id_prefix()
    ids_of = lambda k: rawpika.task_ids(prefix, k * WINDOW, min(WINDOW, tasks - k * WINDOW))
    rss_connected = rss_kb()
    if inproc:
        todo: 'Any' = _queue.SimpleQueue()

        def storer() -> None:
            store = impl.backend.store_result
            for k in iter(todo.get, None):
                for i, tid in enumerate(ids_of(k), k * WINDOW):
                    store(
                        tid,
                        i,
                        'SUCCESS',
                        request={'reply_to': queue, 'correlation_id': tid},
                        wait=False,
                    )

        thread = threading.Thread(target=storer, daemon=True)
        thread.start()
        send, stop = todo.put, lambda: (todo.put(None), thread.join(30))
    else:
        publisher = Publisher(url)
        send = lambda k: publisher.publish([queue], prefix, k * WINDOW, len(ids_of(k)))
        stop = publisher.close

    def release(k: int) -> None:
        for tid in ids_of(k):
            impl.register(tid)
        send(k)

    run = windowed_gets(tasks, ids_of, release, lambda tid: impl.get(tid, 60))
    stop()
    time.sleep(0.3)  # let the last batched ack go out
    gc.collect()
    rss_end = rss_kb()
    rss_warm = run['rss_after_warmup_kb']
    out = {
        'tasks': tasks,
        'seconds': run['seconds'],
        'rate': tasks / run['seconds'],
        'rss_start_kb': rss_start,
        'rss_connected_kb': rss_connected,
        'rss_after_warmup_kb': rss_warm,
        'rss_end_kb': rss_end,
        'rss_growth_kb': rss_end - (rss_warm or rss_connected),
        'rss_growth_from_start_kb': rss_end - rss_start,
        'checkpoints': run['checkpoints'],
    }
    if isinstance(impl, PR):
        out['sizes'] = pr_sizes(impl)
    impl.close()
    return out


def pr_sizes(pr: PR) -> Dict[str, Any]:
    """``backend.stats()``, the link's counters, and the sizes of pika_rpc's own tables
    (read-only peeks at its private structures: diagnostics only)."""
    backend = pr.backend
    out = {k: v for k, v in backend.stats().items() if isinstance(v, (int, float))}
    link = backend._link
    ls = link.stats()
    out.update(
        {
            f'link_{k}': ls.get(k)
            for k in (
                'in_flight',
                'peak_in_flight',
                'queued_commands',
                'commands',
                'wake_ups',
                'deliveries',
                'ack_frames',
                'publishes',
                'confirms',
            )
        }
    )
    pipe = link._outbox.pipeline
    table = backend._pending
    out.update(
        pipeline_unconfirmed=len(pipe._unconfirmed) if pipe else None,
        pipeline_by_key=len(pipe._by_key) if pipe else None,
        pipeline_returned=len(pipe._returned) if pipe else None,
        link_acks=len(link._consumers._acks),
        link_consumers=len(link._consumers),
        link_retry_later=len(link._outbox.retry_later),
        link_declared=len(link._declarations._done),
        table_slots=len(table._slots),
        table_final=len(table._final),
        table_oob=len(table._oob),
        table_replay=len(table._replay),
        table_watchers=len(table._watchers),
        threads=threading.active_count(),
        gc_objects=len(gc.get_objects()),
    )
    return out


# ---------------------------------------------------------------------- quorum
def w_declare(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``k`` reply queues of ``type`` (classic or quorum) declared as pika_rpc declares its
    reply queue: each declare's latency, the broker's memory per queue, each delete's."""
    from pika_rpc.config import Settings, reply_queue_arguments

    conf = {} if p['type'] == 'classic' else {'result_queue_type': p['type']}
    args = reply_queue_arguments(Settings(result_expires=600, **conf))
    conn = rawpika.raw_connection(url)
    ch = conn.channel()
    names, declare, delete = [], [], []
    for _ in range(p['k']):
        name = rawpika.unique(f'decl{p["type"]}')
        announce_queue(name, url)
        t0 = time.perf_counter()
        ch.queue_declare(name, durable=True, auto_delete=False, arguments=args)
        declare.append(time.perf_counter() - t0)
        names.append(name)
    mine = set(names)
    memory = [
        q['memory']
        for q in rabbitmqctl_json('list_queues', 'name', 'memory')
        if q.get('name') in mine and isinstance(q.get('memory'), int)
    ]
    for name in names:
        t0 = time.perf_counter()
        ch.queue_delete(name)
        delete.append(time.perf_counter() - t0)
    conn.close()
    med = lambda xs: statistics.median(xs) if xs else None
    out = {f'declare_{k}': v for k, v in percentiles(declare).items()}
    out.update(
        type=p['type'],
        queues=len(names),
        arguments=args,
        delete_p50_us=med(delete) * 1e6 if delete else None,
        memory_bytes_per_queue=med(memory),
        memory_listed=len(memory),
    )
    return out


def quorum_plan(o: Any) -> List[List[Kind]]:
    """Nothing where pika_rpc has no ``result_queue_type`` (the report says so)."""
    if not quorum()[0]:
        return []
    from .latency import w_pingpong

    rtt = {'threads': 1, 'iters': o.iters, 'timeout': o.run_timeout}
    return [
        [
            Kind(f'quorum_rtt.{i}', w_pingpong, dict(rtt, impl=i))
            for i in ('pr_quorum', 'pr_classic')
        ],
        [
            Kind(f'quorum_declare.{t}', w_declare, {'type': t, 'k': o.quorum_queues})
            for t in ('quorum', 'classic')
        ],
    ]


def quorum_report(r: Report, o: Any) -> None:
    available, why = quorum()
    if not available:
        r.line("quorum: result_queue_type='quorum'", 'not available', note=why)
        return
    rtt = ('quorum_rtt.pr_quorum', 'quorum_rtt.pr_classic')
    note = 'raw pika column: pika_rpc with a classic reply queue; ratio: quorum / classic'
    r.row(
        f'quorum: rtt p50, quorum reply queue (1 thread, {o.iters:,})', 'p50_us', rtt, ' us', note
    )
    r.row('  rtt p99, quorum reply queue', 'p99_us', rtt, ' us')
    r.row('  CPU per round trip', 'cpu_us_per_iter', rtt, ' us')
    decl = ('quorum_declare.quorum', 'quorum_declare.classic')
    r.row(
        f'  reply queue declare p50 ({o.quorum_queues} queues)',
        'declare_p50_us',
        decl,
        ' us',
        'raw pika column: classic; as pika_rpc declares its reply queue',
    )
    r.row('  reply queue declare p99', 'declare_p99_us', decl, ' us')
    r.row('  reply queue delete p50', 'delete_p50_us', decl, ' us')
    r.row(
        '  broker memory per empty reply queue',
        'memory_bytes_per_queue',
        decl,
        ' B',
        'rabbitmqctl list_queues name memory; one node',
    )


# ---------------------------------------------------------------------- plans and reports
def resources_report(r: Report, o: Any) -> None:
    for t, cols in r.ran('resources{}', (o.res_threads,), ('pr', 'raw', 'celery')):
        _resources_rows(r, o, t, cols)


def _resources_rows(r: Report, o: Any, t: int, cols: Tuple[str, ...]) -> None:
    c = r.row(f'resources T={t}: broker connections of the process', 'broker_connections', cols)
    q = r.row(f'resources T={t}: queues consumed by the process', 'broker_queues', cols)
    r.row(f'resources T={t}: channels', 'broker_channels', cols)
    cpu = r.row(
        f'idle CPU, {t} threads in get() for {o.idle:g} s', 'idle_cpu_pct', cols, '% of a core'
    )
    r.row(f'  RSS with {t} threads waiting', 'rss_kb', cols, ' kB')
    r.totals(
        f'  woken after the idle period / hung ({o.repeats} run(s))',
        ('woken', 'hangs'),
        cols,
        f'{t} threads per run',
    )
    r.target(f'one connection per process at T={t}', c[0], '==', 1)
    r.target(f'one reply queue per process at T={t}', q[0], '==', 1)
    r.target('idle CPU < 1 % of a core', cpu[0], '<', 1, '< 1 %')


def memory_report(r: Report, o: Any) -> None:
    if not r.has('memory.pr'):
        return
    cols = ('memory.pr', 'memory.raw', 'memory.celery')
    vp = r.row(
        f'RSS growth over {o.tasks:,} tasks (after 2,000 warm-up)',
        'rss_growth_kb',
        cols,
        ' kB',
        'pika_rpc: result_cache_max=3000 (3 windows of 1,000 in flight)',
    )[0]
    r.row('  get() rate in the memory run', 'rate', cols, '/s')
    r.target(f'RSS growth over {o.tasks:,} tasks < 20 MB', vp, '<', 20 * 1024, '< 20,480 kB')


def memory_detail_report(r: Report, o: Any) -> None:
    for kind, what in (
        ('memory.pr', 'another process'),
        ('memory_detail.pr_inproc', 'a thread of this process'),
    ):
        for x in r.ok_runs(kind):
            s = x.get('sizes') or {}
            r.line(
                f'  memory, results stored by {what}: RSS start / after warm-up / end',
                f'{x["rss_start_kb"]:,} / {x["rss_after_warmup_kb"]:,} / '
                f'{x["rss_end_kb"]:,} kB ({x["rss_growth_kb"]:+,})',
                note=f'{fmt(x["rate"], "/s")}; at the end: pending={s.get("pending")} '
                f'cached={s.get("cached")} oob={s.get("out_of_band")} '
                f'replay={s.get("replay")} watched={s.get("watched")} '
                f'pipeline_by_key={s.get("pipeline_by_key")} '
                f'link_acks={s.get("link_acks")} threads={s.get("threads")}',
            )
