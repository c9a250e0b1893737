"""Receiving results in bulk: ``get_seq``, ``get_seq_live``, ``get_seq_detail``, ``threads``,
``consume``.

``get_seq``: SEQ results pre-published to the reply queue while nobody consumes it, then
the clock starts: subscribe and ``get()`` each in order. Raw pika: ``basic_consume`` +
``process_data_events`` until each id in turn is there, one ``multiple=True`` ack per turn
(what the backend does), or (``get_seq_detail``) an ack per message; pika_rpc also when
every result had already arrived (table hits only).

``get_seq_live``: as ``get_seq``, but the results are published while the client waits, by
the raw pika publisher process (``publishers``, the same for every client): subscribed
first, SEQ results encoded by the publisher before the clock, then ``GO`` and ``get()``
each in order. Results/s and the client's CPU per result (the publisher and the client
share the machine's cores: CPU per result decides).

``threads``: T threads each await (in order) its share of TOTAL results that another
process (raw pika, no confirms) publishes once all are waiting: results/s from the publish
command to the last result, errors, wrong results, hangs (``--run-timeout``).

``consume`` (the I/O thread in detail): M messages pre-published, then the time from
subscribing until all were received, by the backend's reply consumer (``get()`` of the last
id), by a ``pika_rpc.Consumer`` (``no_ack=True``, and ``message.ack()`` per message), vs
raw ``basic_consume`` with JSON decode + correlation lookup and a batched ack, an ack per
message, or ``auto_ack``.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Dict, List

from . import rawpika
from .harness import Kind, Stopwatch, Threads, announce_queue
from .impls import CeleryImpl, make_impl, pr_app, timeouts_of
from .publishers import Publisher
from .report import Report

#: How each raw pika kind acks (``rawpika.RawConsumer``): ``raw`` as pika_rpc's consumer does.
RAW_ACKS = {'raw': 'batch', 'raw_batchack': 'batch', 'raw_ackeach': 'each', 'raw_noack': 'auto'}


def _rate(n: int, clock: Stopwatch) -> Dict[str, Any]:
    elapsed, cpu = clock.read()
    return {
        'results': n,
        'seconds': elapsed,
        'rate': n / elapsed,
        'cpu_us_per_result': cpu / n * 1e6,
    }


def _get_each(ids: List[str], get: Callable[[str], Any]) -> None:
    for j, tid in enumerate(ids):
        if get(tid) != j:
            raise RuntimeError('wrong result')


def w_get_seq(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``impl``: pr, pr_arrived (every result in the table before the clock starts), raw,
    raw_ackeach or celery."""
    get_seq = {'pr': _get_seq_pr, 'pr_arrived': _get_seq_pr, 'celery': _get_seq_celery}.get(
        p['impl'], _get_seq_raw
    )
    return get_seq(p['n'], url, p['impl'])


def _arrived(backend: Any) -> int:
    """Results in the table: read ones (cached) and not yet read ones (unread)."""
    stats = backend.stats()
    return stats['cached'] + stats['unread']


def _get_seq_pr(n: int, url: str, impl: str) -> Dict[str, Any]:
    from pika_rpc.config import reply_queue_arguments

    arrived = impl == 'pr_arrived'
    app = pr_app(url)
    backend = app.backend
    oid = backend.oid
    announce_queue(oid, url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for tid in ids:
        backend.on_task_call(None, tid)
    if not arrived:
        backend.result_consumer.stop()
    rawpika.fill_queue(
        url,
        oid,
        ids,
        lambda ch: ch.queue_declare(
            oid, durable=True, auto_delete=False, arguments=reply_queue_arguments(app.conf)
        ),
        check=not arrived,
    )
    if arrived:
        dl = time.monotonic() + 60
        while _arrived(backend) < n and time.monotonic() < dl:
            time.sleep(0.01)
        if _arrived(backend) < n:
            raise RuntimeError(f'results did not arrive: {backend.stats()}')
    AsyncResult = app.AsyncResult
    clock = Stopwatch()
    if not arrived:
        backend.result_consumer.start()
    _get_each(ids, lambda tid: AsyncResult(tid).get(timeout=60))
    out = _rate(n, clock)
    app.close()
    return out


def _get_seq_raw(n: int, url: str, impl: str) -> Dict[str, Any]:
    queue = rawpika.unique('rawseq')
    announce_queue(queue, url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rawpika.fill_queue(url, queue, ids, lambda ch: rawpika.declare_reply_queue(ch, queue))
    conn = rawpika.raw_connection(url)
    consumer = rawpika.RawConsumer(conn, queue, RAW_ACKS[impl])
    clock = Stopwatch()
    consumer.start()
    for j, tid in enumerate(ids):
        while tid not in consumer.results:
            consumer.turn(1)
        if consumer.results.pop(tid)['result'] != j:
            raise RuntimeError('wrong result')
    out = _rate(n, clock)
    conn.close()
    return out


def _get_seq_celery(n: int, url: str, impl: str) -> Dict[str, Any]:
    celery = CeleryImpl(url)
    oid = celery.thread_setup()
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rawpika.fill_queue(url, oid, ids, lambda ch: ch.queue_declare(oid, passive=True))
    clock = Stopwatch()
    _get_each(ids, lambda tid: celery.get(tid, 60))  # the first get() subscribes
    return _rate(n, clock)


def w_get_seq_live(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``n`` results from the publisher process while this one waits; ``impl``: pr, raw
    (``RawConsumer``, batched acks) or celery. The clock runs from ``GO`` to the last
    ``get()``."""
    n, impl = p['n'], p['impl']
    prefix = rawpika.id_prefix()
    ids = rawpika.task_ids(prefix, 0, n)
    publisher = Publisher(url)
    if impl == 'raw':
        queue = rawpika.unique('rawlive')
        announce_queue(queue, url)
        conn = rawpika.raw_connection(url)
        consumer = rawpika.RawConsumer(conn, queue)
        rawpika.declare_reply_queue(consumer.ch, queue)
        consumer.start()

        def get(tid: str) -> Any:
            while tid not in consumer.results:
                consumer.turn(1)
            return consumer.results.pop(tid)['result']

        close = conn.close
    else:
        client = make_impl(impl, url)
        queue = client.thread_setup()
        for tid in ids:
            client.register(tid)  # pika_rpc: as send_task does (untimed)
        get, close = (lambda tid: client.get(tid, 60)), client.close
    publisher.prepare([queue], prefix, 0, n)  # encoded before the clock
    clock = Stopwatch()
    publisher.go()
    _get_each(ids, get)
    out = _rate(n, clock)
    pub = publisher.read(30)
    publisher.close()
    close()
    out['publisher_rate'] = n / pub['seconds'] if pub.get('seconds') else None
    return out


def w_threads(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """T threads each await its share (k % T == i, in order) of TOTAL results that another
    process publishes once all threads are set up; per-run timeout."""
    threads, total, timeout = p['threads'], p['total'], p['timeout']
    impl = make_impl(p['impl'], url)
    TIMEOUTS = timeouts_of(p['impl'])
    prefix = rawpika.id_prefix()
    ids = rawpika.task_ids(prefix, 0, total)
    publisher = Publisher(url)
    lock = threading.Lock()
    stats = {'received': 0, 'errors': 0, 'wrong': 0, 'timed_out_results': 0, 'timeouts': 0}
    for tid in ids:
        impl.register(tid)  # pika_rpc: as send_task does (untimed)

    def body(i: int) -> None:
        got = wrong = errors = 0
        mine = range(i, total, threads)
        for pos, k in enumerate(mine):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                value = impl.get(ids[k], left)
            except TIMEOUTS:
                with lock:
                    stats['timeouts'] += 1
                    stats['timed_out_results'] += len(mine) - pos
                break
            except Exception:
                errors += 1
                continue
            got += 1
            if value != k:
                wrong += 1
        with lock:
            stats['received'] += got
            stats['wrong'] += wrong
            stats['errors'] += errors

    group = Threads(threads, lambda i: impl.thread_setup(), body)
    publisher.prepare(group.setup_out, prefix, 0, total)  # encoded before the clock
    deadline = time.monotonic() + timeout
    clock = Stopwatch()
    publisher.go()
    group.go()
    hung = group.join(deadline + 2)
    elapsed, cpu = clock.read()
    try:
        pub = publisher.read(5)
    except RuntimeError:
        pub = {}
    publisher.close()
    ok = stats['received'] - stats['wrong']
    out = {
        'threads': threads,
        'total': total,
        'seconds': elapsed,
        'rate': ok / elapsed,
        'received': stats['received'],
        'errors': stats['errors'] + len(group.errors),
        'wrong': stats['wrong'],
        'timeouts': stats['timeouts'],
        'timed_out_results': stats['timed_out_results'],
        'hangs': hung,
        'hung_or_timed_out': hung + stats['timeouts'],
        'cpu_us_per_result': cpu / max(1, ok) * 1e6,
        'publisher_seconds': pub.get('seconds'),
        'publisher_rate': total / pub['seconds'] if pub.get('seconds') else None,
        'error_samples': group.errors[:3],
    }
    if not hung:
        impl.close()
    return out


# ---------------------------------------------------------------------- consume
def w_consume(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``impl``: pr_backend, pr_consumer, pr_consumer_ack (``m_ack`` messages, the others
    ``m``), raw_batchack, raw_ackeach or raw_noack."""
    consume = {
        'pr_backend': _consume_backend,
        'pr_consumer': _consume_consumer,
        'pr_consumer_ack': _consume_consumer,
    }.get(p['impl'], _consume_raw)
    return consume(p['m_ack'] if p['impl'] == 'pr_consumer_ack' else p['m'], url, p['impl'])


def _consume_backend(m: int, url: str, impl: str) -> Dict[str, Any]:
    """The backend's reply consumer: from subscribe to the last of m results in the table."""
    from pika_rpc.config import reply_queue_arguments

    app = pr_app(url, result_cache_max=max(10000, m))
    backend = app.backend
    announce_queue(backend.oid, url)
    ids = [str(uuid.uuid4()) for _ in range(m)]
    for tid in ids:  # what send_task does before publishing a task
        backend.on_task_call(None, tid)
    backend.result_consumer.stop()  # queue stays; fill it while nobody consumes
    oid = backend.oid
    rawpika.fill_queue(
        url,
        oid,
        ids,
        lambda ch: ch.queue_declare(
            oid, durable=True, auto_delete=False, arguments=reply_queue_arguments(app.conf)
        ),
    )
    link = backend._get_link()
    s0 = link.stats()
    clock = Stopwatch()
    backend.result_consumer.start()
    value = app.AsyncResult(ids[-1]).get(timeout=120)
    out = _rate(m, clock)
    s1 = link.stats()
    sizes = backend.stats()
    if value != m - 1 or sizes['pending'] != 0 or sizes['cached'] + sizes['unread'] < m:
        raise RuntimeError(f'not all results arrived: {sizes}')
    app.close()
    out['ack_frames'] = s1.get('ack_frames', 0) - s0.get('ack_frames', 0)
    return out


def _consume_consumer(m: int, url: str, impl: str) -> Dict[str, Any]:
    """A ``pika_rpc.Consumer`` on a pre-filled queue; ``pr_consumer_ack``: ack() each."""
    import pika_rpc

    ack = impl == 'pr_consumer_ack'
    queue = rawpika.scratch_queue(url, 'cons', [str(uuid.uuid4()) for _ in range(m)])
    conn = pika_rpc.Connection(url)
    done = threading.Event()
    count = [0]

    def on_message(body: Any, message: Any) -> None:
        if ack:
            message.ack()
        count[0] += 1
        if count[0] == m:
            done.set()

    consumer = pika_rpc.Consumer(
        conn,
        [pika_rpc.Queue(queue, durable=False, auto_delete=False)],
        auto_declare=False,
        callbacks=[on_message],
        no_ack=not ack,
    )
    link = conn.link
    link.call(lambda: None, timeout=30)  # connected before the clock starts
    s0 = link.stats()
    clock = Stopwatch()
    consumer.consume()
    if not done.wait(180):
        raise RuntimeError(f'only {count[0]} of {m} messages arrived')
    out = _rate(m, clock)
    s1 = link.stats()
    consumer.close()
    conn.release()
    out.update(
        commands=s1.get('commands', 0) - s0.get('commands', 0),
        wake_ups=s1.get('wake_ups', 0) - s0.get('wake_ups', 0),
    )
    return out


def _consume_raw(m: int, url: str, impl: str) -> Dict[str, Any]:
    """Raw basic_consume: JSON decode + correlation lookup; acks as ``impl`` says."""
    queue = rawpika.scratch_queue(url, 'rawcons', [str(uuid.uuid4()) for _ in range(m)])
    conn = rawpika.raw_connection(url)
    consumer = rawpika.RawConsumer(conn, queue, RAW_ACKS[impl])
    clock = Stopwatch()
    consumer.start()
    while len(consumer.results) < m:
        consumer.turn(1)
    out = _rate(m, clock)
    conn.close()
    return out


# ---------------------------------------------------------------------- plans and reports
def threads_plan(o: Any) -> List[List[Kind]]:
    groups = []
    for t in o.threads:
        impls = ['pr', 'raw', 'celery'] + (['celery_shared'] if o.shared and t == 8 else [])
        groups.append(
            [
                Kind(
                    f'threads{t}.{i}',
                    w_threads,
                    dict(
                        impl=i,
                        threads=t,
                        total=o.total,
                        timeout=o.run_timeout if i != 'celery_shared' else min(20, o.run_timeout),
                    ),
                )
                for i in impls
            ]
        )
    return groups


def threads_report(r: Report, o: Any) -> None:
    for t, cols in r.ran('threads{}', o.threads, ('pr', 'raw', 'celery')):
        vp, vr, vc = r.row(
            f'threads T={t}: {o.total:,} results from another process',
            'rate',
            cols,
            ' results/s',
            'raw: a connection + queue per thread; Celery: a backend per thread',
        )
        r.row(f'  T={t} client CPU per result', 'cpu_us_per_result', cols, ' us')
        r.row(
            f'  T={t} publisher rate (other process)',
            'publisher_rate',
            cols,
            '/s',
            'the publisher alone; when close to results/s it is the bound',
        )
        r.totals(
            f'  T={t} errors / wrong results / threads hung or timed out ({o.repeats} run(s))',
            ('errors', 'wrong', 'hung_or_timed_out'),
            cols,
            f'per-run timeout {o.run_timeout:g} s',
        )
        r.target_ratio(f'threads T={t} >= 0.8x raw pika', vp, vr, '>=', 0.8)
        r.target_ratio(f'threads T={t} >= 4x Celery', vp, vc, '>=', 4)
        if r.has(f'threads{t}.celery_shared'):
            rs = r.ok_runs(f'threads{t}.celery_shared')
            got = sum(x.get('received', 0) for x in rs)
            r.line(
                f'  T={t} Celery, ONE backend shared by all threads ({len(rs)} run(s))',
                celery=f'{got:,} of {len(rs) * o.total:,} results received; threads timed '
                f'out: {sum(x.get("timeouts", 0) for x in rs)}, hung past the deadline: '
                f'{sum(x.get("hangs", 0) for x in rs)} (of {len(rs) * t})',
                note="not Celery's default (app.backend is per thread)",
            )


def get_seq_detail_report(r: Report, o: Any) -> None:
    if r.has('get_seq.pr') and r.has('get_seq_detail.raw_ackeach'):
        r.row(
            '  get_seq [raw: ack per message]',
            'rate',
            ('get_seq.pr', 'get_seq_detail.raw_ackeach'),
            ' results/s',
        )
        r.row(
            '    CPU per result [raw: ack per message]',
            'cpu_us_per_result',
            ('get_seq.pr', 'get_seq_detail.raw_ackeach'),
            ' us',
        )
    if r.has('get_seq_detail.pr_arrived'):
        r.row(
            f'  get_seq, all {o.seq:,} already arrived (table hits only)',
            'rate',
            ('get_seq_detail.pr_arrived', 'get_seq.raw'),
            ' results/s',
            'raw: as in get_seq (subscribe + get each)',
        )
        r.row(
            '    CPU per result',
            'cpu_us_per_result',
            ('get_seq_detail.pr_arrived', 'get_seq.raw'),
            ' us',
        )
