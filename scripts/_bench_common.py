"""Shared plumbing of ``scripts/bench_link.py`` and ``scripts/bench_backend.py``.

Each measured implementation runs in a fresh subprocess (``--worker KIND``); the driver
runs every kind once per repeat, in a rotated order (interleaved, so machine noise hits
all kinds alike), and reports medians. A worker prints JSON lines on stdout:
``{"queue": NAME}`` as soon as it knows a queue name (so the driver can delete it even if
the worker dies) and one final ``{"result": {...}}``.

Also: helpers every benchmark shares (threads started together, percentiles, pre-filled
queues, task ids both processes derive, a raw-pika publisher in another process, the
broker's view of a process's connections and queues, CPU and RSS readings).

Not part of the library: benchmark helpers only. Run as a script (``--publisher --url URL``)
it is the publisher process of ``Publisher`` (``--large-publisher``: of ``LargePublisher``).
"""
from __future__ import annotations

import json
import os
import queue as _queue
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ---------------------------------------------------------------------- broker & raw pika
def broker_url() -> str:
    """The broker URL from ``pika_rpc.findbroker.find_broker()`` ($AMQP_URL, localhost, docker)."""
    from pika_rpc.findbroker import find_broker
    return find_broker().url


def raw_parameters(url: str) -> Any:
    """``pika.ConnectionParameters`` for the first address of a pika_rpc/kombu-style URL."""
    import pika
    from pika_rpc.config import Settings, connection_options
    opts = connection_options(Settings(broker_url=url))[0]
    return pika.ConnectionParameters(
        host=opts['host'], port=opts['port'], virtual_host=opts['virtual_host'],
        credentials=pika.PlainCredentials(opts['userid'], opts['password']),
        client_properties={'connection_name': f'bench-raw-{os.getpid()}'})


def raw_connection(url: str) -> Any:
    import pika
    return pika.BlockingConnection(raw_parameters(url))


def delete_queues(url: str, names: Iterable[str]) -> List[str]:
    """Delete queues by name (deleting a missing queue is a no-op on RabbitMQ)."""
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        return []
    conn = raw_connection(url)
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
    finally:
        conn.close()
    return names


def loadavg() -> str:
    """1-minute load average (other work on this machine skews every figure)."""
    try:
        return f'{os.getloadavg()[0]:.2f}'
    except OSError:
        return 'n/a'


def unique(prefix: str) -> str:
    return f'bench-{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}'


# ---------------------------------------------------------------------- worker side
_worker_queues: List[str] = []
_worker_url: List[str] = []


def announce_queue(name: str, url: str) -> None:
    """Worker: tell the driver about a queue before using it, and delete it at exit.

    The driver deletes every announced queue after the worker ended (even a crashed one);
    a worker run by hand deletes its own at interpreter exit.
    """
    sys.stdout.write(json.dumps({'queue': name}) + '\n')
    sys.stdout.flush()
    if not _worker_queues:
        import atexit
        atexit.register(_delete_worker_queues)
    if not _worker_url:
        _worker_url.append(url)
    _worker_queues.append(name)


def _delete_worker_queues() -> None:
    if _worker_url and _worker_queues:
        try:
            delete_queues(_worker_url[0], _worker_queues)
        except Exception as exc:
            sys.stderr.write(f'warning: could not delete {_worker_queues}: {exc}\n')


def emit_result(result: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({'result': result}) + '\n')
    sys.stdout.flush()


def rss_kb() -> int:
    """VmRSS of this process in kB (from /proc/self/status)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return -1


def result_body(task_id: str, value: Any) -> bytes:
    """A Celery-5-shaped SUCCESS body, JSON-encoded the plain way (for the raw-pika side)."""
    from datetime import datetime, timezone
    return json.dumps({'status': 'SUCCESS', 'result': value, 'traceback': None, 'children': [],
                       'date_done': datetime.now(timezone.utc).isoformat(),
                       'task_id': task_id}).encode()


def result_properties(task_id: str) -> Any:
    """The AMQP properties pika_rpc's ``store_result`` sets, for the raw-pika side."""
    import pika
    return pika.BasicProperties(content_type='application/json', content_encoding='utf-8',
                                correlation_id=task_id, delivery_mode=1, priority=0, headers={})


# ---------------------------------------------------------------------- shared measurement helpers
def pr_app(url: str, **conf: Any) -> Any:
    """A pika_rpc App as every benchmark builds it (reply queues expire after 600 s)."""
    import pika_rpc
    return pika_rpc.App(url, result_expires=600, **conf)


def percentiles(lat: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99/max/mean in microseconds of latencies given in seconds."""
    lat = sorted(lat)
    if not lat:
        return {}
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    return {'p50_us': pick(0.50), 'p90_us': pick(0.90), 'p99_us': pick(0.99),
            'max_us': lat[-1] * 1e6, 'mean_us': statistics.fmean(lat) * 1e6}


def run_threads(threads: int, work: Callable[[int], None]) -> Tuple[float, float]:
    """Start ``threads`` threads running ``work(index)`` together.

    Returns ``(elapsed wall seconds, process CPU seconds)`` (CPU of every thread); the first
    exception of a thread is raised after all joined.
    """
    barrier = threading.Barrier(threads + 1)
    errors: List[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: B902 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in pool:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if errors:
        raise errors[0]
    return elapsed, cpu


def raw_reply_queue(ch: Any, name: str, expires: int = 600) -> None:
    """Declare ``name`` as pika_rpc declares its reply queue (durable, x-expires)."""
    from pika_rpc.config import Settings, reply_queue_arguments
    ch.queue_declare(name, durable=True, auto_delete=False, exclusive=False,
                     arguments=reply_queue_arguments(Settings(result_expires=expires)))


def task_ids(prefix: str, start: int, count: int) -> List[str]:
    """uuid-shaped ids ``prefix`` (24 chars) + 12 hex digits, derivable in both processes."""
    return [f'{prefix}{i:012x}' for i in range(start, start + count)]


def id_prefix() -> str:
    return str(uuid.uuid4())[:24]


def fill_queue(url: str, queue: str, ids: List[str], declare: Callable[[Any], None],
               check: bool = True) -> None:
    """Publish one result per id to ``queue`` (raw pika, value = index), untimed.

    With ``check``, return once the queue holds them all (nobody may consume it);
    without, after one round trip (everything reached the broker).
    """
    conn = raw_connection(url)
    ch = conn.channel()
    declare(ch)
    for j, tid in enumerate(ids):
        ch.basic_publish('', queue, result_body(tid, j), result_properties(tid))
    if not check:
        ch.queue_declare(queue, passive=True)
        conn.close()
        return
    dl = time.monotonic() + 60
    while True:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count >= len(ids) or time.monotonic() > dl:
            break
        conn.sleep(0.02)
    conn.close()
    if count != len(ids):
        raise RuntimeError(f'{queue} holds {count} messages, expected {len(ids)}')


def publisher_main(url: str) -> None:
    """The publisher process: one JSON command a line on stdin, ``END`` stops.

    ``{"queues": [...], "prefix": P, "start": S, "count": C, "ack": bool}`` publishes the
    results of tasks S..S+C-1 (id ``task_ids(P, k, 1)``, value k) to ``queues[k % len]``
    (raw pika, no confirms, as a Celery worker does); with ``ack``, after one round trip
    it prints ``{"done": C, "seconds": publish time}``. With ``"prepare": true`` it only
    encodes the messages, prints ``{"prepared": C}`` and publishes them at the next line
    (``GO``): the publisher's own encoding cost stays out of the measured interval.

    Publishing goes through the channel's impl (``BlockingChannel._impl.basic_publish``)
    and is flushed once at the end: ``BlockingChannel.basic_publish`` flushes the socket per
    message, which capped the publisher at ~10-16k messages/s on 2 cores and made it, not
    the clients measured, the bound of the ``threads`` figures.
    """
    conn = raw_connection(url)
    ch = conn.channel()
    print(json.dumps({'ready': os.getpid()}), flush=True)
    lines = iter(sys.stdin)
    for line in lines:
        line = line.strip()
        if not line or line == 'END':
            break
        cmd = json.loads(line)
        queues, prefix, start, count = cmd['queues'], cmd['prefix'], cmd['start'], cmd['count']
        batch = []
        for k in range(start, start + count):
            tid = f'{prefix}{k:012x}'
            batch.append((queues[k % len(queues)], result_body(tid, k), result_properties(tid)))
        if cmd.get('prepare'):
            print(json.dumps({'prepared': count}), flush=True)
            if next(lines, 'END').strip() != 'GO':
                break
        t0 = time.perf_counter()
        publish = ch._impl.basic_publish
        for queue, body, props in batch:
            publish('', queue, body, props)
        conn.process_data_events(0)            # writes everything buffered
        if cmd.get('ack'):
            ch.queue_declare(queues[0], passive=True)
            print(json.dumps({'done': count, 'seconds': time.perf_counter() - t0}), flush=True)
        else:
            conn.process_data_events(0)
    conn.close()


class Publisher:
    """A raw-pika publisher in another process (``publisher_main``), ready on return."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--publisher',
                                      '--url', url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self._lines: 'Any' = _queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.read(timeout)                 # {"ready": pid}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def read(self, timeout: float) -> Dict[str, Any]:
        try:
            item = self._lines.get(timeout=timeout)
        except _queue.Empty:
            raise RuntimeError(f'publisher silent for {timeout} s') from None
        if item is None:
            raise RuntimeError('publisher exited')
        return item

    def publish(self, queues: Sequence[str], prefix: str, start: int, count: int,
                ack: bool = False) -> None:
        self.proc.stdin.write(json.dumps({'queues': list(queues), 'prefix': prefix,
                                          'start': start, 'count': count, 'ack': ack}) + '\n')
        self.proc.stdin.flush()

    def prepare(self, queues: Sequence[str], prefix: str, start: int, count: int,
                timeout: float = 60.0) -> None:
        """Have the publisher encode a batch now; ``go()`` publishes it (then it acks)."""
        self.proc.stdin.write(json.dumps({'queues': list(queues), 'prefix': prefix,
                                          'start': start, 'count': count, 'ack': True,
                                          'prepare': True}) + '\n')
        self.proc.stdin.flush()
        self.read(timeout)                 # {"prepared": count}

    def go(self) -> None:
        self.proc.stdin.write('GO\n')
        self.proc.stdin.flush()

    def close(self, timeout: float = 30.0) -> None:
        try:
            self.proc.stdin.write('END\n')
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def large_publisher_main(url: str) -> None:
    """The publisher process of ``LargePublisher``: one JSON command a line on stdin.

    ``{"queue": Q, "task_id": T, "size": N, "small": [[queue, task_id], ...]}`` encodes the
    result of T (a string of N characters) and the small ones, prints ``{"prepared": N}``,
    and at the next line (``GO``) publishes the big one, then the small ones right behind
    it, without waiting in between (confirms are pipelined; raw pika, as a Celery worker
    with confirms). It prints ``{"go": t, "confirmed": t_big, "all_confirmed": t_all}``:
    ``time.monotonic()`` readings (one clock for every process of the machine) of the
    first publish and of the broker's confirms. ``END`` stops.

    With ``Q`` = ``"@self"`` the big one goes to a queue this process consumes itself (so
    the broker moves it in and out, but to another process than the one measured); then
    ``"received"`` is when its consumer had it.
    """
    conn = raw_connection(url)
    impl = conn.channel()._impl
    own = conn.channel()
    own_queue = own.queue_declare('', exclusive=True, auto_delete=True).method.queue
    received: Dict[str, float] = {}
    own.basic_consume(own_queue, lambda ch, m, props, body: received.__setitem__(
        props.correlation_id, time.monotonic()), auto_ack=True)
    acks: List[Tuple[float, int, bool]] = []
    selected: List[Any] = []
    impl.confirm_delivery(lambda frame: acks.append((time.monotonic(), frame.method.delivery_tag,
                                                     frame.method.multiple)),
                          callback=selected.append)
    while not selected:
        conn.process_data_events(time_limit=0.01)
    tag = 0
    print(json.dumps({'ready': os.getpid()}), flush=True)
    lines = iter(sys.stdin)
    for line in lines:
        line = line.strip()
        if not line or line == 'END':
            break
        cmd = json.loads(line)
        big_queue = own_queue if cmd['queue'] == '@self' else cmd['queue']
        batch = [(big_queue, result_body(cmd['task_id'], 'x' * cmd['size']),
                  result_properties(cmd['task_id']))]
        batch += [(q, result_body(tid, i), result_properties(tid))
                  for i, (q, tid) in enumerate(cmd.get('small') or ())]
        print(json.dumps({'prepared': cmd['size']}), flush=True)
        if next(lines, 'END').strip() != 'GO':
            break
        del acks[:]
        first, last = tag + 1, tag + len(batch)
        t0 = time.monotonic()
        for queue, body, props in batch:
            impl.basic_publish('', queue, body, props)
        tag = last
        confirmed = lambda t: next((at for at, n, multiple in acks
                                    if n == t or (multiple and n >= t)), None)
        dl = t0 + 120
        while (confirmed(last) is None or (big_queue == own_queue and cmd['task_id']
                                           not in received)) and time.monotonic() < dl:
            conn.process_data_events(time_limit=0.05)
        print(json.dumps({'go': t0, 'confirmed': confirmed(first),
                          'all_confirmed': confirmed(last),
                          'received': received.pop(cmd['task_id'], None)}), flush=True)
    conn.close()


class LargePublisher:
    """A raw-pika publisher of large results in another process (``large_publisher_main``)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                      '--large-publisher', '--url', url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self._lines: 'Any' = _queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.read(timeout)                 # {"ready": pid}

    _read = Publisher._read
    read = Publisher.read
    close = Publisher.close

    def prepare(self, queue: str, task_id: str, size: int,
                small: Sequence[Tuple[str, str]] = (), timeout: float = 60.0) -> None:
        """Have it encode the results now (untimed); ``go()`` publishes them."""
        self.proc.stdin.write(json.dumps({'queue': queue, 'task_id': task_id, 'size': size,
                                          'small': [list(s) for s in small]}) + '\n')
        self.proc.stdin.flush()
        self.read(timeout)                 # {"prepared": size}

    def go(self) -> None:
        self.proc.stdin.write('GO\n')
        self.proc.stdin.flush()


def window_ids(prefix: str, tasks: int, window: int) -> Callable[[int], List[str]]:
    """k -> the ids of window k of ``tasks`` ids ``task_ids(prefix, ...)``."""
    return lambda k: task_ids(prefix, k * window, min(window, tasks - k * window))


def windowed_gets(tasks: int, window: int, ids_of: Callable[[int], List[str]],
                  release: Callable[[int], None], get: Callable[[str], Any]) -> Dict[str, Any]:
    """The memory run's loop: ``tasks`` results in windows of ``window`` ids.

    ``release(k)`` makes window k's results come (register the ids, tell a publisher);
    two windows are in flight ahead of the gets. Each id of window k is ``get(tid)`` in
    order and must return its index (ids: ``ids_of(k)``, e.g. ``window_ids``). RSS is read
    after a ``gc.collect()`` once two windows were done (the warm-up) and at ten checkpoints.
    """
    import gc
    windows = (tasks + window - 1) // window
    checkpoints: List[List[int]] = []
    rss_warm = None
    t0 = time.perf_counter()
    for k in range(min(2, windows)):
        release(k)
    for k in range(windows):
        for i, tid in enumerate(ids_of(k), k * window):
            if get(tid) != i:
                raise RuntimeError(f'wrong result for task {i}')
        if k + 2 < windows:
            release(k + 2)
        if k == 1:
            gc.collect()
            rss_warm = rss_kb()
        if (k + 1) % max(1, windows // 10) == 0:
            checkpoints.append([(k + 1) * window, rss_kb()])
    return {'seconds': time.perf_counter() - t0, 'checkpoints': checkpoints,
            'rss_after_warmup_kb': rss_warm}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rabbitmqctl_json(*args: str) -> List[Dict[str, Any]]:
    out = subprocess.run(['rabbitmqctl', '-q', *args, '--formatter', 'json'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f'rabbitmqctl {" ".join(args)}: {out.stderr.strip()[-300:]}')
    return json.loads(out.stdout or '[]')


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
        conns = _rabbitmqctl_json('list_connections', 'pid', 'client_properties')
        chans = _rabbitmqctl_json('list_channels', 'pid', 'connection')
        consumers = _rabbitmqctl_json('list_consumers', 'queue_name', 'channel_pid')
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
    return {'connections': len(names), 'channels': len(chan_pids), 'queues': len(queues),
            'connection_names': sorted(names.values())[:5], 'queue_names': queues[:5]}


# ---------------------------------------------------------------------- driver side
DELETED_QUEUES: List[str] = []     # every queue a worker announced (and the driver deleted)


def queues_left(names: Iterable[str]) -> Optional[List[str]]:
    """Which of ``names`` still exist on the broker (``rabbitmqctl``; None without it)."""
    try:
        existing = {q['name'] for q in _rabbitmqctl_json('list_queues', 'name')}
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
        return None
    return sorted(set(names) & existing)


def run_worker(script: str, kind: str, params: Dict[str, Any], url: str,
               timeout: float = 300.0) -> Dict[str, Any]:
    """Run one measurement in a fresh interpreter; delete every queue it announced."""
    cmd = [sys.executable, script, '--worker', kind, '--params', json.dumps(params), '--url', url]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    queues: List[str] = []
    result: Optional[Dict[str, Any]] = None
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env=env)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or '')
        err, rc = f'timed out after {timeout} s', -1
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if 'queue' in item:
            queues.append(item['queue'])
        elif 'result' in item:
            result = item['result']
    try:
        delete_queues(url, queues)
    except Exception as exc:  # report, never hide
        sys.stderr.write(f'warning: could not delete queues {queues}: {exc}\n')
    DELETED_QUEUES.extend(queues)
    if result is None or rc != 0:
        raise RuntimeError(f'worker {kind} failed (rc={rc}):\n{err[-3000:]}')
    return result


def interleave(script: str, kinds: Sequence[Union[str, Sequence[str]]],
               params_for: Callable[[str], Dict[str, Any]], repeats: int, url: str,
               log: Callable[[str], None], timeout: Union[float, Callable[[str], float]] = 300.0,
               retries: int = 0) -> Dict[str, List[Dict]]:
    """Run each kind ``repeats`` times, rotating the order each round. Returns kind -> runs.

    ``kinds`` may hold groups (lists of kinds): each round runs every group in turn, each
    group's kinds in an order rotated by the round (so the implementations compared in one
    group take turns going first). ``timeout`` (seconds, or kind -> seconds) bounds a run;
    a failed run is retried ``retries`` times (the broker may restart under us), then kept
    as ``{'error': ...}`` and the suite goes on.
    """
    groups = [[k] if isinstance(k, str) else list(k) for k in kinds]
    if all(len(g) == 1 for g in groups):
        groups = [[g[0] for g in groups]]
    runs: Dict[str, List[Dict]] = {k: [] for g in groups for k in g}
    total, done, t_start = repeats * len(runs), 0, time.monotonic()
    for r in range(repeats):
        for group in groups:
            order = group[r % len(group):] + group[:r % len(group)]
            for kind in order:
                t0 = time.monotonic()
                limit = timeout(kind) if callable(timeout) else timeout
                for attempt in range(retries + 1):
                    try:
                        res = run_worker(script, kind, params_for(kind), url, timeout=limit)
                        break
                    except RuntimeError as exc:
                        last = str(exc)
                        log(f'  round {r + 1}/{repeats} {kind}: attempt {attempt + 1} failed: '
                            f'{last.strip().splitlines()[-1] if last.strip() else last}')
                else:
                    res = {'error': last[-2000:]}
                runs[kind].append(res)
                done += 1
                spent = time.monotonic() - t_start
                log(f'  [{done}/{total}, {spent:4.0f} s, eta {spent / done * (total - done):4.0f} s] '
                    f'round {r + 1}/{repeats} {kind:<28} {time.monotonic() - t0:5.1f} s  '
                    f'{_short(res)}')
    return runs


def _short(res: Dict[str, Any]) -> str:
    if 'error' in res:
        return 'FAILED'
    keys = [k for k in ('rate', 'p50_us', 'p99_us', 'rss_growth_kb', 'errors', 'hangs')
            if k in res]
    return ' '.join(f'{k}={res[k]:.1f}' if isinstance(res[k], float) else f'{k}={res[k]}'
                    for k in keys)


def median_of(runs: List[Dict], key: str) -> Optional[float]:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: Optional[float], unit: str = '') -> str:
    if v is None:
        return 'n/a'
    if abs(v) >= 100:
        s = f'{v:,.0f}'
    elif abs(v) >= 10:
        s = f'{v:.1f}'
    else:
        s = f'{v:.3g}'
    return f'{s}{unit}'


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or not b:
        return None
    return a / b


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths)) + ' |'
    out = [line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    out += [line(r) for r in rows]
    return '\n'.join(out)


def worker_args(argv: Optional[List[str]] = None) -> Any:
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument('--worker')
    p.add_argument('--params', default='{}')
    p.add_argument('--url')
    args, _ = p.parse_known_args(argv)
    return args


if __name__ == '__main__':
    if '--publisher' in sys.argv:
        publisher_main(sys.argv[sys.argv.index('--url') + 1])
    elif '--large-publisher' in sys.argv:
        large_publisher_main(sys.argv[sys.argv.index('--url') + 1])
