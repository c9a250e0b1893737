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
it is the publisher process of ``Publisher``.
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


# ---------------------------------------------------------------------- driver side
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
    if result is None or rc != 0:
        raise RuntimeError(f'worker {kind} failed (rc={rc}):\n{err[-3000:]}')
    return result


def interleave(script: str, kinds: Sequence[str], params_for: Callable[[str], Dict[str, Any]],
               repeats: int, url: str, log: Callable[[str], None]) -> Dict[str, List[Dict]]:
    """Run each kind ``repeats`` times, rotating the order each round. Returns kind -> runs."""
    runs: Dict[str, List[Dict]] = {k: [] for k in kinds}
    kinds = list(kinds)
    for r in range(repeats):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        for kind in order:
            t0 = time.monotonic()
            res = run_worker(script, kind, params_for(kind), url)
            runs[kind].append(res)
            log(f'  round {r + 1}/{repeats} {kind:<24} {time.monotonic() - t0:5.1f} s  '
                f'{_short(res)}')
    return runs


def _short(res: Dict[str, Any]) -> str:
    keys = [k for k in ('rate', 'p50_us', 'rss_growth_kb') if k in res]
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
