"""Publishing results: ``store`` and ``publish``.

``store``: results stored per second by T threads to a queue nobody consumes. pika_rpc:
``backend.store_result`` (returns once confirmed); raw pika: a ``BlockingConnection`` per
thread, with sync confirms (``confirm_delivery()``: one round trip per publish) or none
(ended by one round trip, so every message reached the broker); Celery: ``store_result``
as it is (no confirms; the clock stops when the broker holds them all).

``publish`` (the I/O thread in detail): ``store_result`` from 64 threads; ``Link.publish``
of pre-built publications from one thread, waited on at the end (the I/O thread's
ceiling; ``_confirms.Pipeline.on_confirm`` timed by wrapping it, the library unchanged);
and the link's wake-ups per publish and peak in flight (``link.stats()``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, List

from . import rawpika
from .harness import Stopwatch, run_threads
from .impls import CeleryImpl, pr_app
from .report import Report, fmt

WARMUP = 200


def w_store(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``threads`` threads store ``n`` results each; ``impl``: pr, raw_confirm,
    raw_noconfirm or celery."""
    store = {'pr': _store_pr, 'celery': _store_celery}.get(p['impl'], _store_raw)
    return store(p['threads'], p['n'], url, p['impl'])


def _store_pr(threads: int, n: int, url: str, impl: str) -> Dict[str, Any]:
    queue = rawpika.scratch_queue(url, 'pub')
    app = pr_app(url)
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

    elapsed, cpu = run_threads(threads, work)
    s1 = link.stats()
    app.close()
    return _with_link_stats(_rate(threads * n, elapsed, cpu), s0, s1)


def _store_raw(threads: int, n: int, url: str, impl: str) -> Dict[str, Any]:
    queue = rawpika.scratch_queue(url, 'rawpub')
    conns = [rawpika.raw_connection(url) for _ in range(threads)]
    chans = []
    for conn in conns:
        ch = conn.channel()
        if impl == 'raw_confirm':
            ch.confirm_delivery()
        chans.append(ch)
    ids = [[str(uuid.uuid4()) for _ in range(n)] for _ in range(threads)]
    for ch in chans:
        for _ in range(WARMUP // threads + 1):
            tid = str(uuid.uuid4())
            ch.basic_publish(
                '',
                queue,
                rawpika.result_body(tid, 0),
                rawpika.result_properties(tid),
                mandatory=True,
            )
        ch.queue_declare(queue, passive=True)

    def work(i: int) -> None:
        ch = chans[i]
        publish, body, props = ch.basic_publish, rawpika.result_body, rawpika.result_properties
        for j, tid in enumerate(ids[i]):
            publish('', queue, body(tid, j), props(tid), mandatory=True)
        ch.queue_declare(queue, passive=True)  # one round trip: everything reached the broker

    elapsed, cpu = run_threads(threads, work)
    for conn in conns:
        conn.close()
    return _rate(threads * n, elapsed, cpu)


def _store_celery(threads: int, n: int, url: str, impl: str) -> Dict[str, Any]:
    """Each thread its own backend (the producer pool shared), no confirms; the clock stops
    when the queue holds every message."""
    queue = rawpika.scratch_queue(url, 'celerypub')
    celery = CeleryImpl(url)
    warm = WARMUP // threads + 1

    def warmup(i: int) -> None:
        for _ in range(warm):
            celery.store(str(uuid.uuid4()), 0, queue)

    run_threads(threads, warmup)
    ids = [[str(uuid.uuid4()) for _ in range(n)] for _ in range(threads)]
    conn = rawpika.raw_connection(url)
    ch = conn.channel()
    expected = warm * threads + n * threads

    def work(i: int) -> None:
        store = celery.store
        for j, tid in enumerate(ids[i]):
            store(tid, j, queue)

    clock = Stopwatch()
    elapsed, _ = run_threads(threads, work)
    t1 = time.perf_counter()
    while ch.queue_declare(queue, passive=True).method.message_count < expected:
        if time.perf_counter() - t1 > 60:
            raise RuntimeError('Celery results did not all reach the queue')
        conn.sleep(0.002)
    elapsed += time.perf_counter() - t1
    cpu = clock.read()[1]
    conn.close()
    return _rate(threads * n, elapsed, cpu)


def _rate(total: int, elapsed: float, cpu: float) -> Dict[str, Any]:
    return {
        'messages': total,
        'seconds': elapsed,
        'rate': total / elapsed,
        'cpu_us_per_msg': cpu / total * 1e6,
    }


def _with_link_stats(out: Dict[str, Any], s0: dict, s1: dict) -> Dict[str, Any]:
    """``out`` plus the link's counters over the measured interval (``link.stats()``)."""
    delta = lambda key: s1.get(key, 0) - s0.get(key, 0)
    commands, wake_ups = delta('commands'), delta('wake_ups')
    out.update(
        commands=commands,
        wake_ups=wake_ups,
        wake_ups_per_publish=wake_ups / commands if commands else None,
        peak_in_flight=s1.get('peak_in_flight'),
        publishes=delta('publishes'),
        confirms=delta('confirms'),
    )
    return out


def _time_ack_handler() -> List[float]:
    """Instrument (not change) ``_confirms.Pipeline.on_confirm``: [seconds in it, calls].
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


def w_pipelined(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """One thread: ``Link.publish`` n publications without waiting, then wait for all."""
    from pika_rpc import protocol, serialization
    from pika_rpc._handoff import Publication

    n = p['n']
    spent = _time_ack_handler()
    queue = rawpika.scratch_queue(url, 'pipe')
    app = pr_app(url)
    link = app.backend._get_link()

    def make(tid: str, value: int) -> Any:
        ctype, cenc, data = serialization.dumps(protocol.result_body(tid, 'SUCCESS', value), 'json')
        return Publication(
            '',
            queue,
            data,
            {
                'content_type': ctype,
                'content_encoding': cenc,
                'correlation_id': tid,
                'delivery_mode': 1,
                'priority': 0,
                'headers': {},
            },
            mandatory=True,
            timeout=120,
        )

    warm = [link.publish(make(str(uuid.uuid4()), 0)) for _ in range(WARMUP)]
    for pub in warm:
        pub.wait(30)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    s0 = link.stats()
    spent[:] = [0.0, 0]
    clock = Stopwatch()
    pubs = [link.publish(make(tid, j)) for j, tid in enumerate(ids)]
    for pub in pubs:
        if not pub.wait(120) or pub.error is not None:
            raise RuntimeError(f'publication not confirmed: {pub.error}')
    elapsed, cpu = clock.read()
    s1 = link.stats()
    app.close()
    out = _with_link_stats(_rate(n, elapsed, cpu), s0, s1)
    out.update(ack_frames=spent[1], ack_handler_s=spent[0], ack_handler_share=spent[0] / elapsed)
    return out


# ---------------------------------------------------------------------- plans and reports
def store_report(r: Report, o: Any) -> None:
    for t, (pr, confirm, noconfirm, celery) in r.ran(
        'store{}', (1, 8), ('pr', 'raw_confirm', 'raw_noconfirm', 'celery')
    ):
        what = f'store, {t} thread{"s" if t > 1 else ""} ({t * o.n:,} results)'
        vp, vr, vc = r.row(
            f'{what} [raw: sync confirms]',
            'rate',
            (pr, confirm, celery),
            '/s',
            'pika_rpc confirmed; Celery no confirms'
            + ('; raw: a connection per thread' if t > 1 else ''),
        )
        r.row('  same [raw: no confirms]', 'rate', (pr, noconfirm), '/s')
        r.row(
            '  CPU per result stored [raw: sync confirms]',
            'cpu_us_per_msg',
            (pr, confirm, celery),
            ' us',
        )
        if t == 1:
            r.target_ratio(
                'store 1 thread with confirms >= 1.0x raw pika (sync confirms)', vp, vr, '>=', 1.0
            )


def publish_report(r: Report, o: Any) -> None:
    """Against the raw pika runs of ``store``: 8 threads with sync confirms, and 1 thread
    without confirms (the ceiling of the pipelined publish)."""
    if r.has('publish64.pr'):
        cols = ('publish64.pr', 'store8.raw_confirm')
        r.row(
            f'store_result, 64 threads ({64 * o.k64:,} results) [raw: 8 threads, sync confirms]',
            'rate',
            cols,
            '/s',
            'raw: a connection per thread',
        )
        r.row('  CPU per result stored', 'cpu_us_per_msg', cols, ' us')
    for k, n in (('publish_pipelined', o.n), ('publish_pipelined_big', o.n_big)):
        if not r.has(f'{k}.pr'):
            continue
        cols = (f'{k}.pr', 'store1.raw_noconfirm')
        share = fmt(100 * (r.med(f'{k}.pr', 'ack_handler_share') or 0), '%')
        r.row(
            f'Link.publish pipelined, 1 thread, wait at end ({n:,} msgs) [raw: no confirms]',
            'rate',
            cols,
            '/s',
            f'I/O-thread ceiling; ack handler {share} of '
            f'wall; peak in flight {fmt(r.med(f"{k}.pr", "peak_in_flight"))}',
        )
        r.row('  CPU per message', 'cpu_us_per_msg', cols, ' us')
    for kind, t in (('store1.pr', 1), ('store8.pr', 8), ('publish64.pr', 64)):
        if r.has(kind) and r.has('publish64.pr'):
            r.row(
                f'  store_result, {t} thread(s): wake-ups / commands',
                'wake_ups_per_publish',
                (kind,),
                '',
                f'commands {fmt(r.med(kind, "commands"))} of '
                f'{fmt(r.med(kind, "publishes"))} publishes (the others written by their '
                f'caller); peak in flight {fmt(r.med(kind, "peak_in_flight"))}',
            )
