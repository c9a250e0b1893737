#!/usr/bin/env python3
"""pika_rpc vs raw pika vs Celery 5 ``rpc://``: one benchmark run, the same scenarios for all.

Each figure is measured in a fresh subprocess per implementation; the implementations of a
scenario run interleaved (their order rotates every round), N rounds (``--repeats``, default
3); tables show medians and the ratios pika_rpc/raw pika and pika_rpc/Celery.

Implementations:

* ``pr``: pika_rpc, one ``App`` per process shared by every thread (one I/O thread, one
  connection, one reply queue): ``backend.store_result(...)`` (waits for the confirm),
  ``app.AsyncResult(id).get()``, ``backend.get_task_meta()``.
* ``raw``: pika ``BlockingConnection``; as it is not thread-safe, one connection and one
  reply queue per thread (declared as pika_rpc's), a ``basic_consume`` callback doing the
  JSON decode + correlation lookup, one ``multiple=True`` ack per ``process_data_events``
  turn (what pika_rpc does); publishing with sync confirms (``confirm_delivery()``) or
  without.
* ``celery``: Celery 5 ``Celery(broker=url, backend='rpc://')``, its own backend: per thread
  (``app.backend`` is thread-local: its own reply queue ``app.thread_oid``, its own consumer
  connection; publishing through the shared producer pool, no confirms). The reply queue
  is declared as ``send_task`` does it (``backend.on_task_call(producer, id)``);
  ``backend.store_result(id, v, 'SUCCESS', request=<reply_to, correlation_id>)``,
  ``AsyncResult(id, app=app).get()``, ``backend.get_task_meta()``.
  ``celery_shared`` (default run only): one backend shared by all threads (not Celery's
  default) to show what happens.

Scenarios (``--scenarios``, default all):

1. ``store``: results stored per second by 1 and by 8 threads to a queue nobody consumes
   (pika_rpc: confirmed; raw: sync confirms, and none; Celery: as it is, no confirms; the
   clock stops when the broker holds them all). Re-uses ``bench_link``'s workers.
2. ``get_seq``: SEQ results pre-published (nobody consuming), then the clock starts:
   subscribe and get() each in order (pika_rpc and raw: ``bench_backend``'s workers).
3. ``rtt``: one thread, publish -> woken get(), ITERS times: p50, p99.
4. ``threads``: T threads each await (in order) its share of 4,096 results that another
   process (raw pika, no confirms) publishes once all are waiting: results/s from the
   publish command to the last result, errors, wrong results, hangs (``--run-timeout``).
5. ``threads_rtt``: T threads doing ping-pongs (as ``rtt``) at once: p50, p99 (T=1: rtt).
6. ``poll``: another process publishes a result; this one calls get_task_meta() in a tight
   loop until it is ready (the Django-view pattern): p50, p99, polls per result. Raw pika
   polls with ``basic_get`` until the queue is empty + lookup (``raw_get``, the target's
   baseline), and, shown too, with a push consumer: ``process_data_events(0)`` + lookup.
   ``celery_after_get`` (default run only): the same after one get() started Celery's push
   consumer.
7. ``resources``: T=64 threads each did one ping-pong and now wait in get(): broker
   connections, channels and consumed queues of the process (``rabbitmqctl``, connections
   matched by the pid in their ``connection_name``), CPU of the process over IDLE seconds
   (``getrusage``), then they are woken; ``memory``: RSS growth over TASKS tasks (windows
   of 1,000 ids, two windows ahead, results from another process; growth = end - after 2
   windows; pika_rpc: ``bench_backend``'s worker with ``result_cache_max=3000``, as that
   bound also drops results that arrived and were not read yet).

8. ``large``: one result of 1, 4, 16, 24 and 64 MB (``--large-sizes``) stored by another
   process (raw pika, confirmed): the time from the publisher's confirm to ``get()``
   returning (pika_rpc, JSON decode included), against a raw pika ``basic_consume``
   consumer, from the same confirm to the body in its callback; ITERS per run, median.
   ``large_load`` (pika_rpc, 5 times per run): while a 24 MB result arrives, other
   threads' confirmed stores (their wait for the confirm) and small round trips, and small
   results published right behind the big one into the same reply queue (their arrival,
   from the big one's confirm); ops outside those windows are shown as the baseline, and
   ``large_load.pr_elsewhere`` measures the same ops while the 24 MB go to another process
   (same broker and CPU load, nothing big read here). The clock is ``time.monotonic()``,
   one clock for every process of the machine.

Usage::

    python scripts/bench.py --quick        # < 2 minutes: 1 round, T=1,8, smaller counts
    python scripts/bench.py                # 3 rounds, T=1,8,64 (~7-10 minutes on 2 cores)
    python scripts/bench.py --repeats 5 --scenarios rtt,threads --threads 1,8,64

Progress on stderr; a Markdown table, the targets and JSON lines on stdout. Every queue a
run created is deleted after it (Celery's per-thread reply queues too).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
import types
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402
import bench_backend as bb  # noqa: E402  (get_seq and memory workers of pika_rpc / raw)
import bench_link as bl  # noqa: E402  (store workers of pika_rpc / raw)

SCRIPT = os.path.abspath(__file__)
WINDOW = 1000
IMPLS = ('pr', 'raw', 'celery')
NAMES = {'pr': 'pika_rpc', 'raw': 'raw pika', 'celery': 'Celery'}


# ====================================================================== implementations
def _timeouts(impl: str) -> Tuple[type, ...]:
    """Exception types meaning 'not ready in time' (Celery's only imported for Celery: the
    other workers must not pay its import time and memory)."""
    out: List[type] = [TimeoutError, socket.timeout]
    if impl.startswith('celery'):
        from celery.exceptions import TimeoutError as CeleryTimeout
        out.append(CeleryTimeout)
    return tuple(out)


class PR:
    """pika_rpc: one App for the process; every thread uses it."""

    def __init__(self, url: str, **conf: Any) -> None:
        self.app = bc.pr_app(url, **conf)
        self.backend = self.app.backend
        self.oid = self.backend.oid
        bc.announce_queue(self.oid, url)
        self.backend.result_consumer.start()     # reply queue declared and consumed

    def thread_setup(self) -> str:
        return self.oid

    def register(self, tid: str) -> None:        # what send_task does before publishing
        self.backend.on_task_call(None, tid)

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.backend.store_result(tid, value, 'SUCCESS',
                                  request={'reply_to': queue, 'correlation_id': tid})

    def get(self, tid: str, timeout: float) -> Any:
        return self.app.AsyncResult(tid).get(timeout=timeout)

    def poll(self, tid: str) -> Optional[Any]:
        meta = self.backend.get_task_meta(tid)
        return meta if meta['status'] == 'SUCCESS' else None

    def close(self) -> None:
        self.app.close()


class RawClient:
    """One BlockingConnection: a reply queue declared as pika_rpc's, a consumer doing the
    JSON decode + correlation lookup (acks batched per turn), a publishing channel."""

    def __init__(self, url: str, confirm: bool = True) -> None:
        import json as _json
        self._loads = _json.loads
        self.conn = bc.raw_connection(url)
        self.queue = bc.unique('rawreply')
        bc.announce_queue(self.queue, url)
        self.cons = self.conn.channel()
        bc.raw_reply_queue(self.cons, self.queue)
        self.pub = self.conn.channel()
        if confirm:
            self.pub.confirm_delivery()
        self.results: Dict[str, Any] = {}
        self.last = self.acked = 0
        self.cons.basic_consume(self.queue, self._on_reply)

    def _on_reply(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        meta = self._loads(body)
        self.results[meta.get('task_id') or props.correlation_id] = meta
        self.last = method.delivery_tag

    def _ack(self) -> None:
        if self.last > self.acked:
            self.cons.basic_ack(self.last, multiple=True)
            self.acked = self.last

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.pub.basic_publish('', queue, bc.result_body(tid, value), bc.result_properties(tid),
                               mandatory=True)

    def get(self, tid: str, timeout: float) -> Any:
        dl = time.monotonic() + timeout
        results = self.results
        while tid not in results:
            left = dl - time.monotonic()
            if left <= 0:
                raise TimeoutError(f'task {tid} not ready after {timeout} s')
            self.conn.process_data_events(time_limit=min(1.0, left))
            self._ack()
        self._ack()
        return results.pop(tid)['result']

    def poll(self, tid: str) -> Optional[Any]:
        self.conn.process_data_events(0)
        self._ack()
        return self.results.pop(tid, None)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


class Raw:
    """Raw pika: one ``RawClient`` per thread (BlockingConnection is not thread-safe)."""

    def __init__(self, url: str, confirm: bool = True) -> None:
        self.url, self.confirm = url, confirm
        self.local = threading.local()
        self.clients: List[RawClient] = []

    def thread_setup(self) -> str:
        client = RawClient(self.url, self.confirm)
        self.local.client = client
        self.clients.append(client)
        return client.queue

    def register(self, tid: str) -> None:
        pass

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.local.client.store(tid, value, queue)

    def get(self, tid: str, timeout: float) -> Any:
        return self.local.client.get(tid, timeout)

    def poll(self, tid: str) -> Optional[Any]:
        return self.local.client.poll(tid)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class RawGet:
    """Raw pika polling as the issue's baseline for ``poll``: one connection, a reply queue
    declared as pika_rpc's and nobody consuming it; ``poll`` = ``basic_get`` until empty,
    JSON decode + correlation lookup."""

    def __init__(self, url: str) -> None:
        import json as _json
        self._loads = _json.loads
        self.url = url
        self.results: Dict[str, Any] = {}

    def thread_setup(self) -> str:
        self.conn = bc.raw_connection(self.url)
        self.ch = self.conn.channel()
        self.queue = bc.unique('rawget')
        bc.announce_queue(self.queue, self.url)
        bc.raw_reply_queue(self.ch, self.queue)
        return self.queue

    def register(self, tid: str) -> None:
        pass

    def poll(self, tid: str) -> Optional[Any]:
        while True:
            method, props, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            meta = self._loads(body)
            self.results[meta.get('task_id') or props.correlation_id] = meta
        return self.results.pop(tid, None)

    close = RawClient.close


def celery_app(url: str, **conf: Any) -> Any:
    """``Celery(broker=url, backend='rpc://')``; its connections are named ``bench-celery-PID``
    (``broker_transport_options`` -> py-amqp ``client_properties``) so the broker's
    listing can be matched to this process."""
    from celery import Celery
    app = Celery('bench', broker=url, backend='rpc://', set_as_current=False)
    app.conf.update(result_expires=600, broker_transport_options={
        'client_properties': {'connection_name': f'bench-celery-{os.getpid()}'}}, **conf)
    return app


class CeleryImpl:
    """Celery's rpc:// backend as Celery uses it: ``app.backend`` per thread (thread-local);
    ``shared``: one backend for every thread (not Celery's default)."""

    def __init__(self, url: str, shared: bool = False) -> None:
        self.url = url
        self.app = celery_app(url)
        self.shared = self.app.backend if shared else None

    @property
    def backend(self) -> Any:
        return self.shared if self.shared is not None else self.app.backend

    def thread_setup(self) -> str:
        """Declare this thread's reply queue as ``send_task`` does; return its name."""
        backend = self.backend
        bc.announce_queue(backend.oid, self.url)
        with self.app.producer_or_acquire() as producer:
            backend.on_task_call(producer, str(uuid.uuid4()))
        return backend.oid

    def register(self, tid: str) -> None:
        pass     # Celery's on_task_call only declares the queue (done in thread_setup)

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.backend.store_result(tid, value, 'SUCCESS', request=types.SimpleNamespace(
            reply_to=queue, correlation_id=tid))

    def get(self, tid: str, timeout: float) -> Any:
        from celery.result import AsyncResult
        return AsyncResult(tid, app=self.app, backend=self.shared).get(timeout=timeout)

    def poll(self, tid: str) -> Optional[Any]:
        meta = self.backend.get_task_meta(tid)
        return meta if meta['status'] == 'SUCCESS' else None

    def close(self) -> None:
        pass     # the process ends with os._exit (a hung Celery thread must not block it)


def make_impl(impl: str, url: str, **kw: Any) -> Any:
    if impl == 'pr':
        return PR(url, **kw)
    if impl in ('raw', 'raw_confirm'):
        return Raw(url, confirm=True)
    if impl == 'raw_noconfirm':
        return Raw(url, confirm=False)
    if impl == 'raw_get':
        return RawGet(url)
    if impl == 'celery':
        return CeleryImpl(url)
    if impl == 'celery_shared':
        return CeleryImpl(url, shared=True)
    raise ValueError(impl)


# ====================================================================== threads harness
class Threads:
    """T threads: ``setup(i)`` each, then all start ``body(i)`` together once the main
    thread calls ``go()``; ``join(deadline)`` tells which threads hang."""

    def __init__(self, threads: int, setup: Callable[[int], Any], body: Callable[[int], None],
                 setup_timeout: float = 120.0) -> None:
        self.n = threads
        self.setup_out: List[Any] = [None] * threads
        self.errors: List[str] = []
        self._ready = threading.Barrier(threads + 1, timeout=setup_timeout)
        self._go = threading.Event()
        self.pool = [threading.Thread(target=self._run, args=(i, setup, body), daemon=True)
                     for i in range(threads)]
        for t in self.pool:
            t.start()
        self._ready.wait()                        # every thread set up

    def _run(self, i: int, setup: Callable[[int], Any], body: Callable[[int], None]) -> None:
        ok = True
        try:
            self.setup_out[i] = setup(i)
        except BaseException as exc:  # noqa: B902 - counted
            self.errors.append(f'setup {i}: {exc!r}'[:300])
            ok = False
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:
            return
        self._go.wait()
        if ok:
            try:
                body(i)
            except BaseException as exc:  # noqa: B902 - counted
                self.errors.append(f'thread {i}: {exc!r}'[:300])

    def go(self) -> None:
        self._go.set()

    def join(self, deadline: float) -> int:
        """Wait until ``deadline`` (monotonic); return how many threads are still running."""
        for t in self.pool:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.pool)


# ====================================================================== workers
def w_store_celery(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """Celery store_result from ``threads`` threads (each its own backend, the producer pool
    shared), no confirms; the clock stops when the queue holds every message."""
    threads, n = p['threads'], p['n']
    queue = bl._target_queue(url, 'celerypub')
    impl = CeleryImpl(url)
    warm = bl.WARMUP // threads + 1

    def warmup(i: int) -> None:
        for _ in range(warm):
            tid = str(uuid.uuid4())
            impl.store(tid, 0, queue)

    bc.run_threads(threads, warmup)
    ids = [[str(uuid.uuid4()) for _ in range(n)] for _ in range(threads)]
    conn = bc.raw_connection(url)
    ch = conn.channel()
    expected = warm * threads + n * threads

    def work(i: int) -> None:
        store = impl.store
        for j, tid in enumerate(ids[i]):
            store(tid, j, queue)

    c0 = time.process_time()
    elapsed, _ = bc.run_threads(threads, work)
    t1 = time.perf_counter()
    while ch.queue_declare(queue, passive=True).method.message_count < expected:
        if time.perf_counter() - t1 > 60:
            raise RuntimeError('Celery results did not all reach the queue')
        conn.sleep(0.002)
    elapsed += time.perf_counter() - t1
    cpu = time.process_time() - c0
    conn.close()
    total = threads * n
    return {'messages': total, 'seconds': elapsed, 'rate': total / elapsed,
            'cpu_us_per_msg': cpu / total * 1e6}


def w_get_seq_celery(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """SEQ results already in Celery's reply queue; subscribe (first get) + get each in order."""
    n = p['n']
    impl = CeleryImpl(url)
    oid = impl.thread_setup()
    ids = [str(uuid.uuid4()) for _ in range(n)]
    bc.fill_queue(url, oid, ids, lambda ch: ch.queue_declare(oid, passive=True))
    t0, c0 = time.perf_counter(), time.process_time()
    for j, tid in enumerate(ids):
        if impl.get(tid, 60) != j:
            raise RuntimeError('wrong result')
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {'results': n, 'seconds': elapsed, 'rate': n / elapsed, 'cpu_us_per_result': cpu / n * 1e6}


def w_pingpong(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """T threads at once, each ITERS times: register, store to its reply queue, get()."""
    threads, iters, timeout = p['threads'], p['iters'], p['timeout']
    impl = make_impl(p['impl'], url)
    TIMEOUTS = _timeouts(p['impl'])
    lat: List[List[float]] = [[] for _ in range(threads)]
    stats = {'errors': 0, 'wrong': 0, 'timeouts': 0}
    lock = threading.Lock()
    warm = max(3, min(50, 400 // threads))

    def one(queue: str, value: int, out: Optional[List[float]], dl: float) -> None:
        tid = str(uuid.uuid4())
        t0 = time.perf_counter()
        impl.register(tid)
        impl.store(tid, value, queue)
        got = impl.get(tid, max(0.1, min(10.0, dl - time.monotonic())))
        if out is not None:
            out.append(time.perf_counter() - t0)
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
    c0, t0 = bc.cpu_seconds(), time.perf_counter()
    group.go()
    hung = group.join(deadline + 1)
    elapsed, cpu = time.perf_counter() - t0, bc.cpu_seconds() - c0
    flat = [x for xs in lat for x in xs]
    out = bc.percentiles(flat)
    out.update(threads=threads, iters=iters, round_trips=len(flat), seconds=elapsed,
               rate=len(flat) / elapsed, cpu_us_per_iter=cpu / max(1, len(flat)) * 1e6,
               errors=stats['errors'] + len(group.errors), wrong=stats['wrong'],
               timeouts=stats['timeouts'], hangs=hung, error_samples=group.errors[:3])
    if not hung:
        impl.close()
    return out


def w_threads(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """T threads each await its share (k % T == i, in order) of TOTAL results that another
    process publishes once all threads are set up; per-run timeout."""
    threads, total, timeout = p['threads'], p['total'], p['timeout']
    impl = make_impl(p['impl'], url)
    TIMEOUTS = _timeouts(p['impl'])
    prefix = bc.id_prefix()
    ids = bc.task_ids(prefix, 0, total)
    publisher = bc.Publisher(url)
    lock = threading.Lock()
    stats = {'received': 0, 'errors': 0, 'wrong': 0, 'timed_out_results': 0, 'timeouts': 0}
    for tid in ids:
        impl.register(tid)            # pika_rpc: as send_task does (untimed)

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
    publisher.prepare(group.setup_out, prefix, 0, total)      # encoded before the clock
    deadline = time.monotonic() + timeout
    c0, t0 = bc.cpu_seconds(), time.perf_counter()
    publisher.go()
    group.go()
    hung = group.join(deadline + 2)
    elapsed, cpu = time.perf_counter() - t0, bc.cpu_seconds() - c0
    try:
        pub = publisher.read(5)
    except RuntimeError:
        pub = {}
    publisher.close()
    ok = stats['received'] - stats['wrong']
    out = {'threads': threads, 'total': total, 'seconds': elapsed, 'rate': ok / elapsed,
           'received': stats['received'], 'errors': stats['errors'] + len(group.errors),
           'wrong': stats['wrong'], 'timeouts': stats['timeouts'],
           'timed_out_results': stats['timed_out_results'], 'hangs': hung,
           'hung_or_timed_out': hung + stats['timeouts'],
           'cpu_us_per_result': cpu / max(1, ok) * 1e6,
           'publisher_seconds': pub.get('seconds'),
           'publisher_rate': total / pub['seconds'] if pub.get('seconds') else None,
           'error_samples': group.errors[:3]}
    if not hung:
        impl.close()
    return out


def w_poll(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """Another process publishes one result; this thread get_task_meta()s in a tight loop
    until it is SUCCESS. Latency from the publish command to ready."""
    iters, timeout, after_get = p['iters'], p['timeout'], p.get('after_get', False)
    impl = make_impl(p['impl'], url)
    queue = impl.thread_setup()
    publisher = bc.Publisher(url)
    prefix = bc.id_prefix()
    if after_get:            # a get() first: Celery starts its push consumer on this queue
        tid = str(uuid.uuid4())
        impl.store(tid, 0, queue)
        impl.get(tid, 10)
    lat: List[float] = []
    polls: List[int] = []
    timeouts = 0
    warm = 0 if after_get else 20
    c0 = None
    for k in range(warm + iters):
        if k == warm:
            c0 = bc.cpu_seconds()
        tid = bc.task_ids(prefix, k, 1)[0]
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
    cpu = bc.cpu_seconds() - (c0 or 0)
    publisher.close()
    out = bc.percentiles(lat)
    polls.sort()
    out.update(iters=iters, ready=len(lat), timeouts=timeouts, hangs=timeouts,
               polls_p50=polls[len(polls) // 2] if polls else None,
               cpu_us_per_result=cpu / max(1, len(lat)) * 1e6)
    if not timeouts:
        impl.close()
    return out


def w_resources(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """T threads each do one ping-pong, then wait in get() for a result not sent yet:
    the broker's view of this process, its CPU over IDLE seconds, then all are woken."""
    threads, idle, timeout = p['threads'], p['idle'], p['timeout']
    impl = make_impl(p['impl'], url)
    TIMEOUTS = _timeouts(p['impl'])
    prefix = bc.id_prefix()
    ids = bc.task_ids(prefix, 0, threads)
    lock = threading.Lock()
    stats = {'woken': 0, 'wrong': 0, 'errors': 0, 'timeouts': 0}
    waiting = threading.Semaphore(0)

    def setup(i: int) -> str:
        queue = impl.thread_setup()
        tid = str(uuid.uuid4())           # one ping-pong: every per-thread resource exists
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
    time.sleep(1.0)                        # every thread is inside get() by now
    res = bc.broker_resources()
    rss = bc.rss_kb()
    c0, w0 = bc.cpu_seconds(), time.perf_counter()
    time.sleep(idle)
    cpu, wall = bc.cpu_seconds() - c0, time.perf_counter() - w0
    # Wake them: pika_rpc and Celery store through their own backend, raw with a connection
    # of its own (all after the measurement).
    queues = group.setup_out
    if isinstance(impl, Raw):
        waker = RawClient(url)
        for i, tid in enumerate(ids):
            waker.store(tid, i, queues[i])
        waker.close()
    else:
        for i, tid in enumerate(ids):
            impl.store(tid, i, queues[i])
    hung = group.join(time.monotonic() + timeout)
    out = {'threads': threads, 'idle_s': wall, 'idle_cpu_s': cpu,
           'idle_cpu_pct': cpu / wall * 100, 'rss_kb': rss,
           'threads_alive': threading.active_count(),
           'woken': stats['woken'], 'wrong': stats['wrong'], 'timeouts': stats['timeouts'],
           'errors': len(group.errors), 'hangs': hung, 'error_samples': group.errors[:3]}
    out.update({f'broker_{k}': v for k, v in res.items()})
    if not hung:
        impl.close()
    return out


def w_memory(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """RSS growth over TASKS tasks whose results another process publishes (windows of
    1,000 ids, two ahead). pika_rpc: ``bench_backend``'s worker (result_cache_max=3000)."""
    import gc
    tasks = p['tasks']
    if p['impl'] == 'pr':
        # result_cache_max covers every result that may be in flight unread (3 windows):
        # pika_rpc drops the oldest *unread* results beyond it (a later get() times out).
        return bb.w_pr_memory({'tasks': tasks, 'mode': 'process', 'cache_max': 3 * WINDOW}, url)
    rss_start = bc.rss_kb()
    impl = make_impl(p['impl'], url)
    queue = impl.thread_setup()
    prefix = bc.id_prefix()
    window = bc.window_ids(prefix, tasks, WINDOW)
    publisher = bc.Publisher(url)
    rss_connected = bc.rss_kb()

    def release(k: int) -> None:
        for tid in window(k):
            impl.register(tid)
        publisher.publish([queue], prefix, k * WINDOW, len(window(k)))

    run = bc.windowed_gets(tasks, WINDOW, window, release, lambda tid: impl.get(tid, 60))
    publisher.close()
    time.sleep(0.3)
    gc.collect()
    rss_end = bc.rss_kb()
    rss_warm = run['rss_after_warmup_kb']
    impl.close()
    return {'tasks': tasks, 'seconds': run['seconds'], 'rate': tasks / run['seconds'],
            'rss_start_kb': rss_start, 'rss_connected_kb': rss_connected,
            'rss_after_warmup_kb': rss_warm, 'rss_end_kb': rss_end,
            'rss_growth_kb': rss_end - (rss_warm or rss_connected),
            'rss_growth_from_start_kb': rss_end - rss_start, 'checkpoints': run['checkpoints']}


# ====================================================================== large results
MB = 1 << 20


def w_large_recv(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """One result of ``mb`` MB from another process, ``iters`` times: from the publisher's
    confirm to ``get()`` returning (pika_rpc) or to the body in the ``basic_consume``
    callback (raw pika; also once its ``json.loads`` returned: ``recv_decoded_ms``).
    ``decode_ms``: the JSON decode alone (pika_rpc: of the same body, afterwards)."""
    size, iters, impl = int(p['mb'] * MB), p['iters'], p['impl']
    publisher = bc.LargePublisher(url)
    recv: List[float] = []
    from_go: List[float] = []
    decode: List[float] = []
    if impl == 'pr':
        from pika_rpc import serialization
        app = bc.pr_app(url)
        backend = app.backend
        queue = backend.oid
        bc.announce_queue(queue, url)
        backend.result_consumer.start()
    else:
        conn = bc.raw_connection(url)
        ch = conn.channel()
        queue = bc.unique('rawlarge')
        bc.announce_queue(queue, url)
        bc.raw_reply_queue(ch, queue)
        seen: Dict[str, Tuple[float, float, int]] = {}

        def on_message(chan: Any, method: Any, props: Any, body: bytes) -> None:
            t = time.monotonic()                  # the body is here
            value = json.loads(body)['result']    # what a caller could use: decoded
            seen[props.correlation_id] = (t, time.monotonic(), len(value))
            chan.basic_ack(method.delivery_tag)
        ch.basic_consume(queue, on_message)
    for _ in range(iters):
        tid = str(uuid.uuid4())
        if impl == 'pr':
            backend.on_task_call(None, tid)
        publisher.prepare(queue, tid, size)
        publisher.go()
        if impl == 'pr':
            value = app.AsyncResult(tid).get(timeout=120)
            done = time.monotonic()
            if len(value) != size:
                raise RuntimeError('wrong result')
            app.AsyncResult(tid).forget()
        else:
            dl = time.monotonic() + 120
            while tid not in seen and time.monotonic() < dl:
                conn.process_data_events(time_limit=1)
            done, decoded, got = seen.pop(tid)
            if got != size:
                raise RuntimeError('wrong result')
            decode.append(decoded - done)
        pub = publisher.read(120)
        recv.append(done - pub['confirmed'])
        from_go.append(done - pub['go'])
        if impl == 'pr':          # where the time goes: the decode alone, same body
            body = bc.result_body(tid, 'x' * size)
            t0 = time.perf_counter()
            serialization.loads(body, 'application/json', 'utf-8')
            decode.append(time.perf_counter() - t0)
            del body
    publisher.close()
    if impl == 'pr':
        app.close()
    else:
        conn.close()
    med = lambda xs: statistics.median(xs) * 1e3 if xs else None
    out = {'mb': p['mb'], 'iters': iters, 'recv_ms': med(recv), 'recv_max_ms': max(recv) * 1e3,
           'from_publish_ms': med(from_go), 'decode_ms': med(decode),
           'runs_ms': [round(x * 1e3, 2) for x in recv]}
    if impl == 'raw':             # raw pika once its callback has the value decoded too
        out['recv_decoded_ms'] = med([r + d for r, d in zip(recv, decode)])
    return out


def w_large_load(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """While a ``mb`` MB result arrives (``iters`` times): other threads' confirmed stores
    and small round trips, and ``small`` results queued right behind the big one.

    ``elsewhere``: the big result goes to another process (the publisher consumes it):
    the same broker and CPU load, nothing big read here; the baseline of the figures."""
    size, iters, n_small = int(p['mb'] * MB), p['iters'], p['small']
    elsewhere = p.get('elsewhere', False)
    app = bc.pr_app(url)
    backend = app.backend
    oid = backend.oid
    bc.announce_queue(oid, url)
    backend.result_consumer.start()
    sink = bc.unique('largesink')                 # the other threads' stores go there
    bc.announce_queue(sink, url)
    conn = bc.raw_connection(url)
    bc.raw_reply_queue(conn.channel(), sink)
    conn.close()
    publisher = bc.LargePublisher(url)
    stop = threading.Event()
    errors: List[str] = []
    stores: List[List[Tuple[float, float]]] = [[] for _ in range(p['store_threads'])]
    trips: List[List[Tuple[float, float]]] = [[] for _ in range(p['rtt_threads'])]

    def storer(i: int) -> None:
        ops = stores[i]
        while not stop.is_set():
            tid = str(uuid.uuid4())
            t0 = time.monotonic()
            try:
                backend.store_result(tid, i, 'SUCCESS',
                                     request={'reply_to': sink, 'correlation_id': tid})
            except Exception as exc:              # counted, the run goes on
                errors.append(f'store: {exc!r}'[:200])
                continue
            ops.append((t0, time.monotonic()))

    def tripper(i: int) -> None:
        ops = trips[i]
        while not stop.is_set():
            tid = str(uuid.uuid4())
            t0 = time.monotonic()
            try:
                backend.on_task_call(None, tid)
                backend.store_result(tid, i, 'SUCCESS',
                                     request={'reply_to': oid, 'correlation_id': tid})
                if app.AsyncResult(tid).get(timeout=30) != i:
                    raise RuntimeError('wrong result')
            except Exception as exc:
                errors.append(f'round trip: {exc!r}'[:200])
                continue
            ops.append((t0, time.monotonic()))

    pool = [threading.Thread(target=storer, args=(i,), daemon=True)
            for i in range(p['store_threads'])]
    pool += [threading.Thread(target=tripper, args=(i,), daemon=True)
             for i in range(p['rtt_threads'])]
    for t in pool:
        t.start()
    windows: List[Tuple[float, float]] = []
    big_recv: List[float] = []
    small_arrival: List[float] = []
    for _ in range(iters):
        tid = str(uuid.uuid4())
        small = [str(uuid.uuid4()) for _ in range(n_small)]
        for t in [tid] + small:
            backend.on_task_call(None, t)
        arrived: Dict[str, float] = {}

        def wait_small(t: str) -> None:
            try:
                app.AsyncResult(t).get(timeout=120)
                arrived[t] = time.monotonic()
            except Exception as exc:
                errors.append(f'small result: {exc!r}'[:200])
        waiters = [threading.Thread(target=wait_small, args=(t,), daemon=True) for t in small]
        for w in waiters:
            w.start()
        publisher.prepare('@self' if elsewhere else oid, tid, size, [(oid, t) for t in small])
        stop.wait(0.3)          # background ops only, before the window (pacing, not a sync)
        publisher.go()
        if not elsewhere:
            value = app.AsyncResult(tid).get(timeout=120)
            done = time.monotonic()
            if len(value) != size:
                raise RuntimeError('wrong result')
            del value
            app.AsyncResult(tid).forget()
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
    app.close()

    def split(ops_by_thread: List[List[Tuple[float, float]]]) -> Tuple[List[float], List[float]]:
        inside, outside = [], []
        for ops in ops_by_thread:
            for t0, t1 in ops:
                hit = any(t0 < end and t1 > start for start, end in windows)
                (inside if hit else outside).append(t1 - t0)
        return inside, outside

    out: Dict[str, Any] = {'mb': p['mb'], 'iters': iters, 'errors': len(errors),
                           'error_samples': errors[:3]}
    for name, ops in (('store', stores), ('rtt', trips)):
        inside, outside = split(ops)
        for where, lat in (('during', inside), ('outside', outside)):
            pc = bc.percentiles(lat)
            out[f'{name}_{where}_n'] = len(lat)
            out[f'{name}_{where}_p50_ms'] = pc['p50_us'] / 1e3 if pc else None
            out[f'{name}_{where}_p99_ms'] = pc['p99_us'] / 1e3 if pc else None
            out[f'{name}_{where}_max_ms'] = pc['max_us'] / 1e3 if pc else None
    out['big_recv_ms'] = statistics.median(big_recv) * 1e3
    out['small_arrival_ms'] = statistics.median(small_arrival) * 1e3 if small_arrival else None
    out['small_arrival_runs_ms'] = [round(x * 1e3, 2) for x in small_arrival]
    return out


# ====================================================================== kinds
def kinds_and_params(a: argparse.Namespace) -> Tuple[List[List[str]], Dict[str, Dict[str, Any]],
                                                     List[List[str]]]:
    """(groups run ``repeats`` times, kind -> (worker name, params), groups run once)."""
    groups: List[List[str]] = []
    once: List[List[str]] = []
    P: Dict[str, Dict[str, Any]] = {}
    sc = a.scenarios
    if 'store' in sc:
        for t in (1, 8):
            g = []
            P[f'store{t}.pr'] = dict(worker='pr_store', threads=t, n=a.n)
            P[f'store{t}.raw_confirm'] = dict(worker='raw_publish', threads=t, n=a.n, confirm=True)
            P[f'store{t}.raw_noconfirm'] = dict(worker='raw_publish', threads=t, n=a.n,
                                                confirm=False)
            P[f'store{t}.celery'] = dict(worker='store_celery', threads=t, n=a.n)
            g = [f'store{t}.{i}' for i in ('pr', 'raw_confirm', 'raw_noconfirm', 'celery')]
            groups.append(g)
    if 'get_seq' in sc:
        P['get_seq.pr'] = dict(worker='pr_get_seq', n=a.seq, arrived=False)
        P['get_seq.raw'] = dict(worker='raw_get_seq', n=a.seq, ack='batch')
        P['get_seq.celery'] = dict(worker='get_seq_celery', n=a.seq)
        groups.append(['get_seq.pr', 'get_seq.raw', 'get_seq.celery'])
    if 'rtt' in sc or 'threads_rtt' in sc:
        for i in ('pr', 'raw_confirm', 'raw_noconfirm', 'celery'):
            P[f'rtt.{i}'] = dict(worker='pingpong', impl=i, threads=1, iters=a.iters,
                                 timeout=a.run_timeout)
        groups.append([f'rtt.{i}' for i in ('pr', 'raw_confirm', 'raw_noconfirm', 'celery')])
    if 'threads' in sc:
        for t in a.threads:
            impls = ['pr', 'raw', 'celery'] + (['celery_shared'] if a.shared and t == 8 else [])
            for i in impls:
                P[f'threads{t}.{i}'] = dict(worker='threads', impl=i, threads=t, total=a.total,
                                            timeout=a.run_timeout if i != 'celery_shared'
                                            else min(20, a.run_timeout))
            groups.append([f'threads{t}.{i}' for i in impls])
    if 'threads_rtt' in sc:
        for t in a.threads:
            if t == 1:
                continue                        # T=1 is the rtt scenario
            for i in ('pr', 'raw', 'celery'):
                P[f'threads_rtt{t}.{i}'] = dict(worker='pingpong', impl=i, threads=t,
                                                iters=max(20, a.iters_total // t),
                                                timeout=a.run_timeout)
            groups.append([f'threads_rtt{t}.{i}' for i in ('pr', 'raw', 'celery')])
    if 'poll' in sc:
        for i in ('pr', 'raw_get', 'raw', 'celery'):
            P[f'poll.{i}'] = dict(worker='poll', impl=i, iters=a.polls, timeout=10)
        groups.append([f'poll.{i}' for i in ('pr', 'raw_get', 'raw', 'celery')])
        if a.shared:
            P['poll.celery_after_get'] = dict(worker='poll', impl='celery', iters=3, timeout=3,
                                              after_get=True)
            once.append(['poll.celery_after_get'])
    if 'resources' in sc:
        t = a.res_threads
        for i in ('pr', 'raw', 'celery'):
            P[f'resources{t}.{i}'] = dict(worker='resources', impl=i, threads=t, idle=a.idle,
                                          timeout=60)
        groups.append([f'resources{t}.{i}' for i in ('pr', 'raw', 'celery')])
    if 'memory' in sc:
        for i in ('pr', 'raw', 'celery'):
            P[f'memory.{i}'] = dict(worker='memory', impl=i, tasks=a.tasks)
        (groups if a.memory_repeats else once).append([f'memory.{i}' for i in ('pr', 'raw',
                                                                              'celery')])
    if 'large' in sc:
        for mb in a.large_sizes:
            for i in ('pr', 'raw'):
                P[f'large{mb:g}.{i}'] = dict(worker='large_recv', impl=i, mb=mb,
                                             iters=a.large_iters, timeout=120)
            groups.append([f'large{mb:g}.{i}' for i in ('pr', 'raw')])
        for i, elsewhere in (('pr', False), ('pr_elsewhere', True)):
            P[f'large_load.{i}'] = dict(worker='large_load', impl='pr', mb=24,
                                        iters=max(5, a.large_iters), small=8, store_threads=2,
                                        rtt_threads=2, elsewhere=elsewhere, timeout=180)
        groups.append(['large_load.pr', 'large_load.pr_elsewhere'])
    return groups, P, once


WORKERS: Dict[str, Callable[[Dict[str, Any], str], Dict[str, Any]]] = {
    'pr_store': bl.w_pr_store, 'raw_publish': bl.w_raw_publish, 'store_celery': w_store_celery,
    'pr_get_seq': bb.w_pr_get_seq, 'raw_get_seq': bb.w_raw_get_seq,
    'get_seq_celery': w_get_seq_celery, 'pingpong': w_pingpong, 'threads': w_threads,
    'poll': w_poll, 'resources': w_resources, 'memory': w_memory,
    'large_recv': w_large_recv, 'large_load': w_large_load,
}


def run_timeout(params: Dict[str, Any]) -> float:
    """Subprocess bound of one run: its own timeout plus set-up and tear-down."""
    return float(params.get('timeout') or 0) + float(params.get('idle') or 0) + 120.0 + \
        (params.get('tasks') or 0) / 500.0


# ====================================================================== report
def _impl_of(kind: str) -> str:
    return kind.split('.', 1)[1]


def report(runs: Dict[str, List[Dict]], a: argparse.Namespace) -> Tuple[str, List[Dict]]:
    """The figures table and the targets table (Markdown) plus the target verdicts."""
    med = lambda kind, key: bc.median_of(runs.get(kind, []), key)
    rows: List[List[str]] = []
    targets: List[Dict[str, Any]] = []

    def row(figure: str, key: str, pr: str, raw: Optional[str], cel: Optional[str],
            unit: str = '', note: str = '') -> Tuple:
        vp, vr, vc = med(pr, key), med(raw, key) if raw else None, med(cel, key) if cel else None
        fails = lambda k: sum(1 for r in runs.get(k, []) if 'error' in r) if k else 0
        cell = lambda k, v: bc.fmt(v, unit) + (f' ({fails(k)} failed run(s))' if fails(k) else '')
        rows.append([figure, cell(pr, vp), cell(raw, vr) if raw else '-',
                     cell(cel, vc) if cel else '-', bc.fmt(bc.ratio(vp, vr)),
                     bc.fmt(bc.ratio(vp, vc)), note])
        return vp, vr, vc

    def totals(figure: str, keys: Sequence[str], kinds: Sequence[Optional[str]],
               note: str = '') -> None:
        """Sums over all runs (one hang in one run matters), 'a / b / c' per implementation."""
        def cell(kind: Optional[str]) -> str:
            if not kind or kind not in runs:
                return '-'
            rs = [r for r in runs[kind] if 'error' not in r]
            return ' / '.join(str(sum(int(r.get(k) or 0) for r in rs)) for k in keys)
        rows.append([figure] + [cell(k) for k in kinds] + ['', '', note])

    def target(name: str, value: Optional[float], ok: Optional[bool], want: str) -> None:
        targets.append({'target': name, 'want': want, 'value': value,
                        'met': None if ok is None else bool(ok)})

    def ge(x: Optional[float], y: Optional[float], f: float) -> Optional[bool]:
        return None if x is None or y is None else x >= f * y

    def le(x: Optional[float], y: Optional[float], f: float) -> Optional[bool]:
        return None if x is None or y is None else x <= f * y

    n_runs = f'{a.repeats} run(s)'
    # 1. store
    for t in (1, 8):
        if f'store{t}.pr' not in runs:
            continue
        what = f'store, {t} thread{"s" if t > 1 else ""} ({t * a.n:,} results)'
        vp, vr, vc = row(f'{what} [raw: sync confirms]', 'rate', f'store{t}.pr',
                         f'store{t}.raw_confirm', f'store{t}.celery', '/s',
                         'pika_rpc confirmed; Celery no confirms' + (
                             '; raw: a connection per thread' if t > 1 else ''))
        row('  same [raw: no confirms]', 'rate', f'store{t}.pr', f'store{t}.raw_noconfirm',
            None, '/s')
        row('  CPU per result stored [raw: sync confirms]', 'cpu_us_per_msg', f'store{t}.pr',
            f'store{t}.raw_confirm', f'store{t}.celery', ' us')
        if t == 1:
            target('store 1 thread with confirms >= 0.8x raw pika (sync confirms)',
                   bc.ratio(vp, vr), ge(vp, vr, 0.8), '>= 0.8')
    # 2. get_seq
    if 'get_seq.pr' in runs:
        vp, vr, vc = row(f'get_seq ({a.seq:,} pre-published, get() each in order)', 'rate',
                         'get_seq.pr', 'get_seq.raw', 'get_seq.celery', ' results/s')
        row('  CPU per result', 'cpu_us_per_result', 'get_seq.pr', 'get_seq.raw',
            'get_seq.celery', ' us')
        target('get_seq >= 0.8x raw pika', bc.ratio(vp, vr), ge(vp, vr, 0.8), '>= 0.8')
        target('get_seq >= 4x Celery', bc.ratio(vp, vc), ge(vp, vc, 4), '>= 4')
    # 3. rtt
    if 'rtt.pr' in runs:
        p50 = row(f'rtt p50 (1 thread, {a.iters:,} round trips) [raw: sync confirms]', 'p50_us',
                  'rtt.pr', 'rtt.raw_confirm', 'rtt.celery', ' us')
        p99 = row('rtt p99 [raw: sync confirms]', 'p99_us', 'rtt.pr', 'rtt.raw_confirm',
                  'rtt.celery', ' us')
        row('  rtt p50 [raw: no confirms]', 'p50_us', 'rtt.pr', 'rtt.raw_noconfirm', None, ' us')
        row('  rtt p99 [raw: no confirms]', 'p99_us', 'rtt.pr', 'rtt.raw_noconfirm', None, ' us')
        row('  CPU per round trip [raw: sync confirms]', 'cpu_us_per_iter', 'rtt.pr',
            'rtt.raw_confirm', 'rtt.celery', ' us')
        target('rtt p50 <= 1.3x raw pika (sync confirms)', bc.ratio(p50[0], p50[1]),
               le(p50[0], p50[1], 1.3), '<= 1.3')
        target('rtt p99 <= 1.5x raw pika (sync confirms)', bc.ratio(p99[0], p99[1]),
               le(p99[0], p99[1], 1.5), '<= 1.5')
    # 4. threads
    for t in a.threads:
        k = f'threads{t}'
        if f'{k}.pr' not in runs:
            continue
        vp, vr, vc = row(f'threads T={t}: {a.total:,} results from another process', 'rate',
                         f'{k}.pr', f'{k}.raw', f'{k}.celery', ' results/s',
                         'raw: a connection + queue per thread; Celery: a backend per thread')
        row(f'  T={t} client CPU per result', 'cpu_us_per_result', f'{k}.pr', f'{k}.raw',
            f'{k}.celery', ' us')
        row(f'  T={t} publisher rate (other process)', 'publisher_rate', f'{k}.pr', f'{k}.raw',
            f'{k}.celery', '/s', 'the publisher alone; when close to results/s it is the bound')
        totals(f'  T={t} errors / wrong results / threads hung or timed out ({n_runs})',
               ('errors', 'wrong', 'hung_or_timed_out'), (f'{k}.pr', f'{k}.raw', f'{k}.celery'),
               f'per-run timeout {a.run_timeout:g} s')
        target(f'threads T={t} >= 0.8x raw pika', bc.ratio(vp, vr), ge(vp, vr, 0.8), '>= 0.8')
        target(f'threads T={t} >= 4x Celery', bc.ratio(vp, vc), ge(vp, vc, 4), '>= 4')
        if f'{k}.celery_shared' in runs:
            rs = [r for r in runs[f'{k}.celery_shared'] if 'error' not in r]
            got = sum(r.get('received', 0) for r in rs)
            rows.append([f'  T={t} Celery, ONE backend shared by all threads ({len(rs)} run(s))',
                         '', '', f"{got:,} of {len(rs) * a.total:,} results received; threads "
                         f"timed out: {sum(r.get('timeouts', 0) for r in rs)}, hung past the "
                         f"deadline: {sum(r.get('hangs', 0) for r in rs)} (of {len(rs) * t})",
                         '', '', 'not Celery\'s default (app.backend is per thread)'])
    # 5. threads_rtt
    for t in a.threads:
        if t == 1:
            if 'rtt.pr' not in runs:
                continue
            pr_k, raw_k, cel_k = 'rtt.pr', 'rtt.raw_confirm', 'rtt.celery'
        else:
            if f'threads_rtt{t}.pr' not in runs:
                continue
            pr_k, raw_k, cel_k = (f'threads_rtt{t}.{i}' for i in ('pr', 'raw', 'celery'))
        row(f'threads_rtt T={t} p50' + (' (= rtt)' if t == 1 else ''), 'p50_us', pr_k, raw_k,
            cel_k, ' us')
        vp, vr, vc = row(f'threads_rtt T={t} p99', 'p99_us', pr_k, raw_k, cel_k, ' us')
        if t != 1:
            row(f'  T={t} round trips/s', 'rate', pr_k, raw_k, cel_k, '/s')
            totals(f'  T={t} errors / wrong / timeouts / hung threads ({n_runs})',
                   ('errors', 'wrong', 'timeouts', 'hangs'), (pr_k, raw_k, cel_k))
        if t == 64:
            target('threads_rtt T=64 p99 <= 0.5x Celery', bc.ratio(vp, vc), le(vp, vc, 0.5),
                   '<= 0.5')
    # 6. poll
    if 'poll.pr' in runs:
        vp, vr, _vc = row(f'poll p50 (get_task_meta() loop, {a.polls} results) [raw: basic_get]',
                          'p50_us', 'poll.pr', 'poll.raw_get', 'poll.celery', ' us',
                          'raw: publish, then basic_get until ready (the issue\'s baseline)')
        row('poll p99 [raw: basic_get]', 'p99_us', 'poll.pr', 'poll.raw_get', 'poll.celery', ' us')
        row('  poll p50 [raw: push consumer]', 'p50_us', 'poll.pr', 'poll.raw', None, ' us',
            'raw: basic_consume, process_data_events(0) + lookup per poll')
        row('  poll p99 [raw: push consumer]', 'p99_us', 'poll.pr', 'poll.raw', None, ' us')
        row('  polls per result (p50)', 'polls_p50', 'poll.pr', 'poll.raw_get', 'poll.celery')
        row('  CPU per result', 'cpu_us_per_result', 'poll.pr', 'poll.raw_get', 'poll.celery',
            ' us')
        totals(f'  results never ready ({n_runs})', ('timeouts',),
               ('poll.pr', 'poll.raw_get', 'poll.celery'), '10 s per result')
        target('poll p50 <= 1.5x raw pika (publish, then basic_get until ready)',
               bc.ratio(vp, vr), le(vp, vr, 1.5), '<= 1.5')
        if runs.get('poll.celery_after_get'):
            r = runs['poll.celery_after_get'][0]
            rows.append(['  Celery poll after a get() in the same thread', '', '',
                         f"{r.get('ready', '?')}/{r.get('iters', '?')} ready, "
                         f"{r.get('timeouts', '?')} never ready in 3 s"
                         if 'error' not in r else 'run failed', '', '',
                         'its push consumer holds the message; basic_get never sees it'])
    # 7. resources
    t = a.res_threads
    k = f'resources{t}'
    if f'{k}.pr' in runs:
        c = row(f'resources T={t}: broker connections of the process', 'broker_connections',
                f'{k}.pr', f'{k}.raw', f'{k}.celery')
        q = row(f'resources T={t}: queues consumed by the process', 'broker_queues',
                f'{k}.pr', f'{k}.raw', f'{k}.celery')
        row(f'resources T={t}: channels', 'broker_channels', f'{k}.pr', f'{k}.raw', f'{k}.celery')
        cpu = row(f'idle CPU, {t} threads in get() for {a.idle:g} s', 'idle_cpu_pct', f'{k}.pr',
                  f'{k}.raw', f'{k}.celery', '% of a core')
        row(f'  RSS with {t} threads waiting', 'rss_kb', f'{k}.pr', f'{k}.raw', f'{k}.celery',
            ' kB')
        totals(f'  woken after the idle period / hung ({n_runs})', ('woken', 'hangs'),
               (f'{k}.pr', f'{k}.raw', f'{k}.celery'), f'{t} threads per run')
        target(f'one connection per process at T={t}', c[0],
               None if c[0] is None else c[0] == 1, '== 1')
        target(f'one reply queue per process at T={t}', q[0],
               None if q[0] is None else q[0] == 1, '== 1')
        target('idle CPU < 1 % of a core', cpu[0], None if cpu[0] is None else cpu[0] < 1,
               '< 1 %')
    if 'memory.pr' in runs:
        vp = row(f'RSS growth over {a.tasks:,} tasks (after 2,000 warm-up)', 'rss_growth_kb',
                 'memory.pr', 'memory.raw', 'memory.celery', ' kB',
                 'pika_rpc: result_cache_max=3000 (3 windows of 1,000 in flight)')[0]
        row('  get() rate in the memory run', 'rate', 'memory.pr', 'memory.raw',
            'memory.celery', '/s')
        target(f'RSS growth over {a.tasks:,} tasks < 20 MB', vp,
               None if vp is None else vp < 20 * 1024, '< 20,480 kB')
    # 8. large
    for mb in (a.large_sizes if 'large' in a.scenarios else ()):
        k = f'large{mb:g}'
        if f'{k}.pr' not in runs:
            continue
        vp, vr, _ = row(f'large {mb:g} MB: confirm -> received ({a.large_iters} per run)',
                        'recv_ms', f'{k}.pr', f'{k}.raw', None, ' ms',
                        'pika_rpc: get() returned (decoded); raw: body in the callback')
        row(f'  {mb:g} MB: JSON decode alone', 'decode_ms', f'{k}.pr', f'{k}.raw', None,
            ' ms', 'pika_rpc: the same body decoded afterwards; raw: json.loads in the callback')
        dr = med(f'{k}.raw', 'recv_decoded_ms')
        rows.append([f'  {mb:g} MB: raw pika, confirm -> json.loads done in its callback',
                     bc.fmt(vp, ' ms'), bc.fmt(dr, ' ms'), '-', bc.fmt(bc.ratio(vp, dr)), 'n/a',
                     'both decoded'])
        target(f'large {mb:g} MB receive <= 1.5x raw pika', bc.ratio(vp, vr), le(vp, vr, 1.5),
               '<= 1.5')
        target(f'  same, raw pika with json.loads in its callback (both decoded)',
               bc.ratio(vp, dr), le(vp, dr, 1.5), '<= 1.5')
    if 'large_load.pr' in runs:
        k, ke = 'large_load.pr', 'large_load.pr_elsewhere'
        raw24 = med('large24.raw', 'recv_ms')
        row('large_load: 24 MB result arriving, confirm -> get()', 'big_recv_ms', k, None, None,
            ' ms')
        for name, what in (('store', "other threads' store_result, wait for the confirm"),
                           ('rtt', 'other threads\' small round trips')):
            for q in ('p50', 'p99', 'max'):
                vp = med(k, f'{name}_during_{q}_ms')
                ve = med(ke, f'{name}_during_{q}_ms')
                rows.append([f'  {what}: {q} while it arrives', bc.fmt(vp, ' ms'),
                             bc.fmt(ve, ' ms'), '-', bc.fmt(bc.ratio(vp, ve)), 'n/a',
                             'raw pika column: the same while the 24 MB go to another '
                             'process' if q == 'p50' else ''])
            row(f'  {what}: p99 otherwise (baseline)', f'{name}_outside_p99_ms', k, None, None,
                ' ms')
            row(f'  {what}: ops while it arrives', f'{name}_during_n', k, None, None)
        small = row('  8 small results queued behind it: the last one, confirm -> get()',
                    'small_arrival_ms', k, None, None, ' ms',
                    f'target: raw pika 24 MB receive ({bc.fmt(raw24, " ms")}) + 10 ms')[0]
        totals('  errors (all runs)', ('errors',), (k, None, None))
        p99 = med(k, 'store_during_p99_ms')
        target("other threads' confirms wait <= 50 ms (p99) while 24 MB arrive", p99,
               None if p99 is None else p99 <= 50, '<= 50 ms')
        target('small results behind 24 MB arrive <= raw 24 MB receive + 10 ms', small,
               None if small is None or raw24 is None else small <= raw24 + 10,
               f'<= {bc.fmt(raw24)} + 10 ms')
    table = bc.markdown_table(
        [f'figure (median of {a.repeats})', 'pika_rpc', 'raw pika', 'Celery 5 rpc://',
         'pika_rpc/raw', 'pika_rpc/Celery', 'note'], rows)
    trows = [[t['target'], t['want'], bc.fmt(t['value']),
              {True: 'met', False: 'MISSED', None: 'n/a'}[t['met']]] for t in targets]
    ttable = bc.markdown_table(['target', 'wanted', 'measured (ratio or value)', 'verdict'],
                               trows) if trows else ''
    return ('Ratios are pika_rpc / other: for rates higher favours pika_rpc; for latencies, '
            'CPU, connections and memory lower does.\n\n' + table +
            '\n\nTargets (ratios of medians in this run):\n\n' + ttable), targets


# ====================================================================== driver
SCENARIOS = ('store', 'get_seq', 'rtt', 'threads', 'threads_rtt', 'poll', 'resources', 'memory',
             'large')


def main() -> None:
    args = bc.worker_args()
    if args.worker:
        params = json.loads(args.params)
        res = WORKERS[params['worker']](params, args.url)
        bc.emit_result(res)
        if 'celery' in args.worker or res.get('hangs'):
            sys.stderr.flush()
            os._exit(0)      # a hung thread (or Celery's connections) must not block the exit
        return
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='< 2 minutes: 1 round, T=1,8, less')
    ap.add_argument('--repeats', type=int, help='rounds (default 3, quick 1)')
    ap.add_argument('--scenarios', help=f'comma-separated of {",".join(SCENARIOS)} (default all)')
    ap.add_argument('--threads', help='T values for threads/threads_rtt (default 1,8,64; quick 1,8)')
    ap.add_argument('--n', type=int, help='store: results per thread (default 2000, quick 500)')
    ap.add_argument('--seq', type=int, help='get_seq: results (default 5000)')
    ap.add_argument('--iters', type=int, help='rtt: round trips (default 2000, quick 500)')
    ap.add_argument('--iters-total', type=int, dest='iters_total',
                    help='threads_rtt: round trips over all threads (default 2048, quick 400)')
    ap.add_argument('--total', type=int, help='threads: results (default 4096)')
    ap.add_argument('--polls', type=int, help='poll: results (default 500, quick 150)')
    ap.add_argument('--res-threads', type=int, dest='res_threads',
                    help='resources: threads (default 64)')
    ap.add_argument('--idle', type=float, help='resources: idle seconds (default 10, quick 3)')
    ap.add_argument('--tasks', type=int, help='memory: tasks (default 100000, quick 10000)')
    ap.add_argument('--memory-repeats', action='store_true', dest='memory_repeats',
                    help='repeat the memory runs too (default: once each)')
    ap.add_argument('--run-timeout', type=float, dest='run_timeout',
                    help='threads/threads_rtt/rtt: per-run timeout in s (default 60, quick 30)')
    ap.add_argument('--large-sizes', dest='large_sizes',
                    help='large: result sizes in MB (default 1,4,16,24,64; 24 is the baseline '
                         'of large_load)')
    ap.add_argument('--large-iters', type=int, dest='large_iters',
                    help='large: results per run and size (default 3)')
    ap.add_argument('--no-shared', action='store_false', dest='shared',
                    help='skip the Celery-shared-backend and Celery-poll-after-get runs')
    a = ap.parse_args()
    q = a.quick
    a.repeats = a.repeats or (1 if q else 3)
    a.scenarios = a.scenarios.split(',') if a.scenarios else list(SCENARIOS)
    unknown = set(a.scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f'unknown scenarios: {", ".join(sorted(unknown))}')
    a.threads = [int(x) for x in a.threads.split(',')] if a.threads else ([1, 8] if q else [1, 8, 64])
    a.n = a.n or (500 if q else 2000)
    a.seq = a.seq or 5000
    a.iters = a.iters or (500 if q else 2000)
    a.iters_total = a.iters_total or (400 if q else 2048)
    a.total = a.total or 4096
    a.polls = a.polls or (150 if q else 500)
    a.res_threads = a.res_threads or 64
    a.idle = a.idle or (3.0 if q else 10.0)
    a.tasks = a.tasks or (10000 if q else 100000)
    a.run_timeout = a.run_timeout or (30.0 if q else 60.0)
    a.large_sizes = [float(x) for x in (a.large_sizes or '1,4,16,24,64').split(',')]
    a.large_iters = a.large_iters or 3
    if q:
        a.shared = False
    groups, P, once = kinds_and_params(a)
    url = bc.broker_url()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    from pika_rpc.findbroker import mask_url
    log(f'bench: broker {mask_url(url)}, {a.repeats} round(s), scenarios {",".join(a.scenarios)}, '
        f'T={a.threads}; {sum(len(g) for g in groups)} kinds x {a.repeats} + '
        f'{sum(len(g) for g in once)} once')
    load0 = bc.loadavg()
    t0 = time.monotonic()
    timeout = lambda kind: run_timeout(P[kind])
    runs = bc.interleave(SCRIPT, groups, lambda k: P[k], a.repeats, url, log, timeout=timeout,
                         retries=1) if groups else {}
    if once:
        runs.update(bc.interleave(SCRIPT, once, lambda k: P[k], 1, url, log, timeout=timeout,
                                  retries=1))
    took = time.monotonic() - t0
    left = bc.queues_left(bc.DELETED_QUEUES)
    if left:
        log(f'{len(left)} queue(s) still there after deleting them (deleting again): {left[:5]}')
        bc.delete_queues(url, left)
    import celery
    import pika
    print(f'## bench ({"quick" if q else "default"}; {a.repeats} round(s), fresh process per run, '
          f'implementations interleaved; {took:.0f} s; cpus={os.cpu_count()}; loadavg before '
          f'{load0}, after {bc.loadavg()}; pika {pika.__version__}, celery {celery.__version__}; '
          f'{len(set(bc.DELETED_QUEUES))} queues created and deleted, '
          f'{"?" if left is None else len(left)} left over)\n')
    table, targets = report(runs, a)
    print(table)
    print('\nJSON lines:')
    for kind, rs in runs.items():
        keys = sorted({k for r in rs for k in r if isinstance(r[k], (int, float))
                       and not isinstance(r[k], bool)})
        print(json.dumps({'bench': 'bench', 'kind': kind, 'impl': _impl_of(kind),
                          'params': P[kind], 'median': {k: bc.median_of(rs, k) for k in keys},
                          'runs': rs}))
    for t in targets:
        print(json.dumps({'bench': 'bench', 'target': t['target'], 'want': t['want'],
                          'value': t['value'], 'met': t['met']}))


if __name__ == '__main__':
    main()
