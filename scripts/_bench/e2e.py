"""Through a worker: ``e2e`` (tasks per second, client x worker) and ``first_result``.

``e2e``: a run starts one task worker of its own (``taskworkers``; pika_rpc's ``Worker``,
Celery's with the threads pool or the prefork pool) on a queue of its own, waits until it
consumes (outside the clock), then T client threads each do ``send_task('bench.add')`` ->
``get()`` for their share of TOTAL tasks, all started together. Clients: pika_rpc (one
``App`` for the process), Celery's own client with ``rpc://`` (its backend per thread),
and Celery's client with ``result_backend='pika-rpc://'`` (pika_rpc's plug-in, its
Celery workers configured alike; only where the plug-in exists: ``features``). Measured:
tasks/s, p50/p99 per task (``send_task`` to ``get()`` returning), CPU per task of the
client process and of the worker process (its children included: /proc, read before and
after the clock; its share of a core shows a saturated worker), errors and timeouts. The
worker is stopped, its queue and exchange deleted, after each run.

``first_result``: what a fresh process pays for its first result (every forked child and
CLI script): from the start of the run (nothing of pika, pika_rpc or Celery imported
yet) to the result: import, connect, declare, send ``bench.add`` to a worker that already
runs, get the result. pika_rpc (``App`` + ``send_task`` + ``get``), raw pika doing the
same steps (a reply queue declared as pika_rpc's, the task queue as Celery declares it, a
publish with a synchronous confirm of the same protocol-v2 bytes ``pika_rpc.protocol``
builds, made before the clock; consume, decode), and Celery (``Celery(...).send_task``
+ ``get``). One pika_rpc ``Worker`` answers all three: the driver starts it once for the
scenario (``harness.Service``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from . import rawpika
from .features import celery_plugin
from .harness import (
    DELETED_QUEUES,
    Kind,
    Service,
    Stopwatch,
    Threads,
    announce_exchange,
    announce_queue,
    broker_pid,
    percentiles,
    process_cpu,
    rss_kb,
)
from .impls import celery_app, pr_app, timeouts_of
from .report import Report, fmt, markdown_table, ratio
from .taskworkers import KINDS, TASK, TaskWorker

#: client -> label
CLIENTS = {
    'pr': 'pika_rpc',
    'celery': 'Celery client, rpc://',
    'celery_prb': "Celery client, result_backend='pika-rpc://'",
}
#: The baseline of the ratios: Celery's client and worker (threads pool, same concurrency).
BASELINE = 'celery+cthreads'


# ---------------------------------------------------------------------- e2e
class _PRClient:
    """pika_rpc: one App for every thread."""

    def __init__(self, url: str, queue: str) -> None:
        self.queue = queue
        self.app = pr_app(url)
        announce_queue(self.app.backend.oid, url)

    def thread_setup(self, url: str) -> None:
        pass

    def call(self, i: int, timeout: float) -> Any:
        return self.app.send_task(TASK, (i, 1), queue=self.queue).get(timeout=timeout)

    def close(self) -> None:
        self.app.close()


class _CeleryClient:
    """Celery's own client: ``app.backend`` is per thread (its reply queue too)."""

    def __init__(self, url: str, queue: str, backend: str) -> None:
        self.queue = queue
        self.app = celery_app(url, backend=backend)

    def thread_setup(self, url: str) -> None:
        oid = getattr(self.app.backend, 'oid', None)  # this thread's backend is made here
        if oid:
            announce_queue(oid, url)

    def call(self, i: int, timeout: float) -> Any:
        return self.app.send_task(TASK, args=(i, 1), queue=self.queue).get(timeout=timeout)

    def close(self) -> None:
        pass  # the process ends with os._exit


def _client(kind: str, url: str, queue: str) -> Any:
    if kind == 'pr':
        return _PRClient(url, queue)
    return _CeleryClient(url, queue, 'pika-rpc://' if kind == 'celery_prb' else 'rpc://')


def worker_backend(client: str, worker: str) -> str:
    """The result backend of a Celery worker serving ``client``: pika_rpc's plug-in for the
    plug-in's client, else ``rpc://`` (pika_rpc's ``Worker`` has its own)."""
    return 'pika-rpc://' if client == 'celery_prb' and worker != 'prw' else 'rpc://'


def w_e2e(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """``threads`` client threads of kind ``client`` through a fresh worker of kind
    ``worker``: ``total`` tasks in all, after ``warm`` each (see the module docstring)."""
    threads, total, timeout = p['threads'], p['total'], p['timeout']
    queue = rawpika.unique('e2e')
    announce_queue(queue, url)
    announce_exchange(queue)  # Celery's declaration of a task queue: an exchange of its name
    worker = TaskWorker(p['task_worker'], url, queue, worker_backend(p['client'], p['task_worker']))
    worker.start()
    try:
        out = _e2e_run(p, url, queue, worker, threads, total, timeout)
    finally:
        t0 = time.monotonic()
        code = worker.stop()
    out.update(worker_stop_s=time.monotonic() - t0, worker_exit=code)
    return out


def _e2e_run(
    p: Dict[str, Any],
    url: str,
    queue: str,
    worker: TaskWorker,
    threads: int,
    total: int,
    timeout: float,
) -> Dict[str, Any]:
    client = _client(p['client'], url, queue)
    TIMEOUTS = timeouts_of(p['client'])
    share = max(1, total // threads)
    warm = max(2, 32 // threads)
    lat: List[List[float]] = [[] for _ in range(threads)]
    stats = {'errors': 0, 'wrong': 0, 'timeouts': 0}
    lock = threading.Lock()

    def setup(i: int) -> None:
        client.thread_setup(url)
        for k in range(warm):
            if client.call(k, 30) != k + 1:
                raise RuntimeError('wrong result')

    def body(i: int) -> None:
        mine = lat[i]
        for k in range(i * share, (i + 1) * share):
            t0 = time.perf_counter()
            try:
                value = client.call(k, max(0.1, min(30.0, deadline - time.monotonic())))
            except TIMEOUTS:
                with lock:
                    stats['timeouts'] += 1
                if time.monotonic() > deadline:
                    return
                continue
            except Exception:
                with lock:
                    stats['errors'] += 1
                continue
            mine.append(time.perf_counter() - t0)
            if value != k + 1:
                with lock:
                    stats['wrong'] += 1

    group = Threads(threads, setup, body)
    broker = broker_pid()
    b0, w0 = process_cpu(broker), worker.cpu()
    deadline = time.monotonic() + timeout
    clock = Stopwatch()
    group.go()
    hung = group.join(deadline + 2)
    elapsed, cpu = clock.read()
    worker_cpu, b1 = worker.cpu() - w0, process_cpu(broker)
    done = sum(map(len, lat))
    out = percentiles([x for xs in lat for x in xs])
    out.update(
        client=p['client'],
        task_worker=p['task_worker'],
        threads=threads,
        tasks=done,
        seconds=elapsed,
        rate=done / elapsed,
        cpu_us_per_task=cpu / max(1, done) * 1e6,
        worker_cpu_us_per_task=worker_cpu / max(1, done) * 1e6,
        broker_cpu_us_per_task=None if b1 is None else (b1 - b0) / max(1, done) * 1e6,
        client_cpu_pct=cpu / elapsed * 100,
        worker_cpu_pct=worker_cpu / elapsed * 100,
        worker_rss_kb=worker.rss_kb(),
        worker_start_s=worker.start_seconds,
        errors=stats['errors'] + len(group.errors),
        wrong=stats['wrong'],
        timeouts=stats['timeouts'],
        hangs=hung,
        error_samples=group.errors[:3],
    )
    if not hung:
        client.close()
    return out


def combinations(o: Any) -> List[Tuple[str, str]]:
    """``(client, worker)`` pairs: every client with every worker (no prefork with
    ``--quick``; the plug-in's client only where the plug-in exists)."""
    clients = ['pr', 'celery'] + (['celery_prb'] if celery_plugin()[0] else [])
    workers = [w for w in KINDS if not (o.quick and w == 'cprefork')]
    return [(c, w) for c in clients for w in workers]


def e2e_plan(o: Any) -> List[List[Kind]]:
    """A group per T (its combinations interleaved)."""
    return [
        [
            Kind(
                f'e2e{t}.{c}+{w}',
                w_e2e,
                dict(client=c, task_worker=w, threads=t, total=o.e2e_total, timeout=o.run_timeout),
            )
            for c, w in combinations(o)
        ]
        for t in o.e2e_threads
    ]


def _label(combo: str) -> Tuple[str, str]:
    client, worker = combo.split('+')
    return CLIENTS[client], KINDS[worker][0]


def e2e_report(r: Report, o: Any) -> None:
    """One table of every combination that ran, then the targets at the largest T."""
    rows = []
    for t in o.e2e_threads:
        base = r.med(f'e2e{t}.{BASELINE}', 'rate')
        rows += [_e2e_row(r, t, k, base) for k in r.runs if k.startswith(f'e2e{t}.')]
    how, why = celery_plugin()
    notes = [
        f'T client threads, {o.e2e_total:,} tasks in all per run, send_task -> get() of '
        'bench.add; a fresh worker per run (its start-up outside the clock); CPU per task '
        "of the client process, of the worker's processes and of the broker (beam.smp: "
        'shared, other work on the machine counts too); worker CPU as % of one core '
        f'(2 = both cores); errors / timeouts+hung over all runs; ratio: tasks/s over '
        f'{" + ".join(_label(BASELINE))} at the same T.'
    ]
    if how is None:
        notes.append(
            "Celery client and worker with result_backend='pika-rpc://': not available "
            f'({why}); those rows appear once pika_rpc has the plug-in.'
        )
    if o.quick:
        notes.append('--quick: no prefork worker.')
    if rows:
        header = [
            'T',
            'client',
            'worker',
            'tasks/s',
            'p50 ms',
            'p99 ms',
            'client CPU/task us',
            'worker CPU/task us',
            'broker CPU/task us',
            'worker CPU (% of a core)',
            'errors / timeouts',
            'vs Celery+Celery',
        ]
        r.table(
            f'End to end through a worker (median of {r.repeats})',
            markdown_table(header, rows),
            notes,
        )
    _e2e_targets(r, o)


def _e2e_row(r: Report, t: int, kind: str, base: Optional[float]) -> List[str]:
    client, worker = _label(kind.split('.', 1)[1])
    m = lambda key: r.med(kind, key)
    failed = sum('error' in x for x in r.runs[kind])
    ok = r.ok_runs(kind)
    errors = sum(int(x.get('errors') or 0) + int(x.get('wrong') or 0) for x in ok)
    timeouts = sum(int(x.get('timeouts') or 0) + int(x.get('hangs') or 0) for x in ok)
    return [
        str(t),
        client,
        worker,
        fmt(m('rate')) + (f' ({failed} failed run(s))' if failed else ''),
        fmt(_ms(m('p50_us'))),
        fmt(_ms(m('p99_us'))),
        fmt(m('cpu_us_per_task')),
        fmt(m('worker_cpu_us_per_task')),
        fmt(m('broker_cpu_us_per_task')),
        fmt(m('worker_cpu_pct'), '%'),
        f'{errors} / {timeouts}',
        fmt(ratio(m('rate'), base)),
    ]


def _ms(us: Optional[float]) -> Optional[float]:
    return None if us is None else us / 1e3


def _e2e_targets(r: Report, o: Any) -> None:
    ts = [t for t in o.e2e_threads if r.has(f'e2e{t}.pr+prw')]
    if not ts:
        return
    t = 64 if 64 in ts else max(ts)
    k = lambda combo: f'e2e{t}.{combo}'
    base_rate, base_p99 = r.med(k(BASELINE), 'rate'), r.med(k(BASELINE), 'p99_us')
    r.target_ratio(
        f'e2e T={t}: pika_rpc client + Worker >= 3x Celery client + worker (threads -c 8)',
        r.med(k('pr+prw'), 'rate'),
        base_rate,
        '>=',
        3,
    )
    r.target_ratio(
        f'e2e T={t}: pika_rpc client + Celery worker >= 1.2x Celery client + worker',
        r.med(k('pr+cthreads'), 'rate'),
        base_rate,
        '>=',
        1.2,
    )
    r.target_ratio(
        f"e2e T={t}: p99 per task, pika_rpc client + Worker <= 0.5x Celery's",
        r.med(k('pr+prw'), 'p99_us'),
        base_p99,
        '<=',
        0.5,
    )
    r.target_ratio(
        f"e2e T={t}: p99 per task, pika_rpc client + Celery worker <= 0.5x Celery's",
        r.med(k('pr+cthreads'), 'p99_us'),
        base_p99,
        '<=',
        0.5,
    )


def plot_e2e(runs: Dict[str, List[Dict]], path: str, title: str = '') -> bool:
    """tasks/s and p99 per task against client threads, a line per combination (two
    panels), from the medians of this run's ``e2e`` runs; False when there are none."""
    import statistics

    series: Dict[str, List[Tuple[int, float, float]]] = {}
    for kind, rs in runs.items():
        if not kind.startswith('e2e'):
            continue
        ok = [x for x in rs if 'error' not in x and x.get('rate') and x.get('p99_us')]
        if not ok:
            continue
        t, combo = int(kind[3:].split('.', 1)[0]), kind.split('.', 1)[1]
        rate = statistics.median(x['rate'] for x in ok)
        p99 = statistics.median(x['p99_us'] for x in ok) / 1e3
        series.setdefault(combo, []).append((t, rate, p99))
    if not series:
        return False
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = {'prw': 'tab:green', 'cthreads': 'tab:orange', 'cprefork': 'tab:purple'}
    styles = {'pr': '-', 'celery': '--', 'celery_prb': ':'}
    order = lambda c: (list(styles).index(c.split('+')[0]), list(colors).index(c.split('+')[1]))
    for combo in sorted(series, key=order):
        client, worker = combo.split('+')
        points = sorted(series[combo])
        xs = [x[0] for x in points]
        kw = dict(color=colors[worker], linestyle=styles[client], marker='o')
        label = ' / '.join(_label(combo))
        left.plot(xs, [x[1] for x in points], label=label, **kw)
        right.plot(xs, [x[2] for x in points], label=label, **kw)
    for ax, what in ((left, 'tasks/s (higher is better)'), (right, 'p99 per task, ms (lower)')):
        ax.set_xscale('log', base=2)
        ax.set_xlabel('client threads')
        ax.set_ylabel(what)
        ax.grid(True, which='both', alpha=0.3)
        ticks = sorted({x[0] for ps in series.values() for x in ps})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(x) for x in ticks])
    right.set_yscale('log')
    left.legend(fontsize=7, loc='best')
    fig.suptitle(title or 'send_task -> get() through a worker (median of the runs)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------- first_result
TASK_ID_MARK = '00000000-task-id-mark-000000000000'
REPLY_TO_MARK = 'reply-to-mark'


class _FirstResultWorker(Service):
    """The pika_rpc Worker every run of ``first_result`` sends to (the driver's)."""

    def __init__(self, url: str) -> None:
        from .rawpika import delete_exchanges, delete_queues

        self.url = url
        self.queue = rawpika.unique('first')
        self.worker = TaskWorker('prw', url, self.queue)
        self._delete = lambda: (
            delete_queues(url, [self.queue]),
            delete_exchanges(url, [self.queue]),
        )
        self.worker.start()
        self.params = {'queue': self.queue}

    def __repr__(self) -> str:
        return f'<first_result worker on {self.queue}>'

    def stop(self) -> None:
        self.worker.stop()
        self._delete()
        DELETED_QUEUES.append(self.queue)


def first_result_worker(url: str) -> Service:
    """Start the pika_rpc Worker of ``first_result`` (``harness.ServiceStarter``)."""
    return _FirstResultWorker(url)


def task_template() -> Dict[str, Any]:
    """``bench.add(1, 2)`` as pika_rpc's ``send_task`` sends it (protocol v2: headers,
    properties, JSON body), with marks where the task id and reply queue go."""
    from pika_rpc import protocol, serialization

    headers, props, body = protocol.task_message(
        TASK, (1, 2), {}, task_id=TASK_ID_MARK, reply_to=REPLY_TO_MARK
    )
    ctype, cenc, data = serialization.dumps(body, 'json')
    props.update(content_type=ctype, content_encoding=cenc)
    return {'headers': headers, 'properties': props, 'body': data.decode()}


def _filled(value: Any, marks: Dict[str, str]) -> Any:
    if isinstance(value, str):
        return marks.get(value, value)
    if isinstance(value, dict):
        return {k: _filled(v, marks) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, marks) for v in value]
    return value


def w_first_result(p: Dict[str, Any], url: str) -> Dict[str, Any]:
    """A fresh process's first result through the running worker on ``queue``; the clock
    starts before anything of the library is imported."""
    import sys

    preloaded = sorted(m for m in ('pika', 'pika_rpc', 'celery', 'kombu') if m in sys.modules)
    if preloaded:
        raise RuntimeError(f'already imported before the clock: {preloaded}')
    first = {'pr': _first_pr, 'raw': _first_raw, 'celery': _first_celery}[p['impl']]
    clock = Stopwatch()
    value, import_s, queues = first(p, url)
    elapsed, cpu = clock.read()
    for q in queues:
        announce_queue(q, url)
    if value != 3:
        raise RuntimeError(f'wrong result {value!r}')
    return {
        'wall_ms': elapsed * 1e3,
        'cpu_ms': cpu * 1e3,
        'import_ms': import_s * 1e3,
        'rest_ms': (elapsed - import_s) * 1e3,
        'rss_kb': rss_kb(),
    }


def _first_pr(p: Dict[str, Any], url: str) -> Tuple[Any, float, List[str]]:
    t0 = time.perf_counter()
    import pika_rpc

    imported = time.perf_counter() - t0
    app = pika_rpc.App(broker=url, result_expires=600)
    value = app.send_task(TASK, (1, 2), queue=p['queue']).get(timeout=30)
    return value, imported, [app.backend.oid]


def _first_celery(p: Dict[str, Any], url: str) -> Tuple[Any, float, List[str]]:
    t0 = time.perf_counter()
    import celery  # noqa: F401 - the import is what is timed here

    imported = time.perf_counter() - t0
    app = celery_app(url)
    value = app.send_task(TASK, args=(1, 2), queue=p['queue']).get(timeout=30)
    return value, imported, [app.backend.oid]


def _first_raw(p: Dict[str, Any], url: str) -> Tuple[Any, float, List[str]]:
    """The same steps as pika_rpc's, by hand: connect, declare the reply queue (as pika_rpc,
    ``reply_args``) and the task queue (as Celery: a durable direct exchange, a durable
    queue, a binding), consume the reply queue, publish the task (confirmed), wait."""
    import uuid

    t0 = time.perf_counter()
    import pika

    imported = time.perf_counter() - t0
    conn = pika.BlockingConnection(_raw_parameters(pika, url))
    ch = conn.channel()
    reply = rawpika.unique('rawfirst')
    ch.queue_declare(reply, durable=True, arguments=p['reply_args'])
    task_queue = p['queue']
    ch.exchange_declare(task_queue, 'direct', durable=True)
    ch.queue_declare(task_queue, durable=True)
    ch.queue_bind(task_queue, task_queue, task_queue)
    got: Dict[str, Any] = {}

    def on_message(chan: Any, method: Any, props: Any, body: bytes) -> None:
        got[props.correlation_id] = json.loads(body)
        chan.basic_ack(method.delivery_tag)

    ch.basic_consume(reply, on_message)
    tid = str(uuid.uuid4())
    msg = _filled(p['message'], {TASK_ID_MARK: tid, REPLY_TO_MARK: reply})
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish(
        '',
        task_queue,
        msg['body'].encode(),
        pika.BasicProperties(headers=msg['headers'], **msg['properties']),
        mandatory=True,
    )
    dl = time.monotonic() + 30
    while tid not in got and time.monotonic() < dl:
        conn.process_data_events(time_limit=1)
    if tid not in got:
        raise RuntimeError('no result within 30 s')
    value = got[tid]['result']
    conn.close()
    return value, imported, [reply]


def _raw_parameters(pika: Any, url: str) -> Any:
    """Connection parameters from a kombu-style URL by hand (``//`` is the vhost ``/``;
    ``pika.URLParameters`` reads it as ``''``), without importing pika_rpc."""
    from urllib.parse import unquote, urlsplit

    u = urlsplit(url)
    return pika.ConnectionParameters(
        host=u.hostname or 'localhost',
        port=u.port or 5672,
        virtual_host=unquote(u.path[1:]) or '/',
        credentials=pika.PlainCredentials(
            unquote(u.username or 'guest'), unquote(u.password or 'guest')
        ),
        client_properties={'connection_name': f'bench-raw-{os.getpid()}'},
    )


def first_result_plan(o: Any) -> List[List[Kind]]:
    from pika_rpc.config import Settings, reply_queue_arguments

    params = {
        'reply_args': reply_queue_arguments(Settings(result_expires=600)),
        'message': task_template(),
    }
    return [
        [
            Kind(
                f'first_result.{i}',
                w_first_result,
                dict(params, impl=i),
                service=first_result_worker,
            )
            for i in ('pr', 'raw', 'celery')
        ]
    ]


def first_result_report(r: Report, o: Any) -> None:
    cols = ('first_result.pr', 'first_result.raw', 'first_result.celery')
    if not r.has(cols[0]):
        return
    vp, vr, _ = r.row(
        'first_result: fresh process, import -> connect -> declare -> send -> result',
        'wall_ms',
        cols,
        ' ms',
        'the same running pika_rpc Worker answers all three; interpreter start-up excluded',
    )
    r.row('  CPU of it', 'cpu_ms', cols, ' ms')
    r.row(
        '  of which the import',
        'import_ms',
        cols,
        ' ms',
        'raw: import pika; pika_rpc and Celery: the import is lazy (their modules load at '
        'first use, in the rest)',
    )
    r.row('  the rest: connect, declare, send, wait', 'rest_ms', cols, ' ms')
    r.row('  RSS after it', 'rss_kb', cols, ' kB')
    r.target_ratio('first_result wall time <= 1.3x raw pika', vp, vr, '<=', 1.3)
