#!/usr/bin/env python3
"""64 threads of one process sharing one Celery result backend: ``rpc://`` vs ``pika-rpc://``.

The shape of a Django view under a threaded server: one Celery app, one backend
(``result_backend_thread_safe=True`` for Celery's own ``rpc://``, so Celery shares it as it
shares ``pika-rpc://``), and every thread doing ``add.delay(...).get()`` round trips.

For each backend this starts a real ``celery worker`` (``tests.integration.plugin_tasks``,
threads pool) storing through the same backend, then runs the client in a subprocess, so a
client that hangs is killed and reported rather than hanging the run. Per backend it prints
tasks/s (correct round trips per second of wall time), errors by type, wrong results, gets
that timed out, and threads still blocked when the client's deadline passed (hangs).

Usage::

    python scripts/plugin_threads.py [--threads 64] [--per-thread 50] [--get-timeout 10]
        [--backends rpc:// pika-rpc://] [--concurrency 16] [--warm]

``--warm`` makes the backend (one round trip) in the main thread before the threads start;
without it the threads touch ``app.backend`` first, all at once, as the first requests of a
freshly started server do.

Needs Celery and this checkout installed (``pip install -e .``) for the ``pika-rpc://``
scheme; the broker is ``AMQP_URL`` or localhost. Not part of CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = 'tests.integration.plugin_tasks'
DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672//'


def client(args: argparse.Namespace) -> Dict[str, Any]:
    """Run in the client subprocess: the threads, one shared backend; returns the figures."""
    from celery import Celery

    app = Celery('plugin-threads', broker=args.url, backend=args.backend)
    app.conf.update(
        task_default_queue=args.queue,
        result_backend_thread_safe=True,
        result_expires=300,
        broker_pool_limit=args.threads,
    )
    counts: Dict[str, int] = collections.Counter()
    errors: Dict[str, int] = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(args.threads + 1)
    backends = set()
    if args.warm:  # the backend made (and one round trip done) before the threads start
        app.send_task(f'{TASKS}.add', (0, 0)).get(timeout=args.get_timeout)

    def run(n: int) -> None:
        start.wait()
        backends.add(id(app.backend))
        for i in range(args.per_thread):
            try:
                value = app.send_task(f'{TASKS}.add', (n, i)).get(timeout=args.get_timeout)
            except Exception as exc:  # counted by type
                name = type(exc).__name__
                with lock:
                    errors[name] += 1
                    if name == 'TimeoutError':
                        counts['timeouts'] += 1
                continue
            with lock:
                counts['ok' if value == n + i else 'wrong'] += 1

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(args.threads)]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    deadline = began + args.deadline
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - began
    hung = sum(t.is_alive() for t in threads)
    return {
        'backend': args.backend,
        'threads': args.threads,
        'per_thread': args.per_thread,
        'ok': counts['ok'],
        'wrong': counts['wrong'],
        'timeouts': counts['timeouts'],
        'errors': dict(errors),
        'hung_threads': hung,
        'seconds': round(elapsed, 2),
        'tasks_per_s': round(counts['ok'] / elapsed, 1) if elapsed else 0.0,
        'backend_objects': len(backends),
        'warm': args.warm,
    }


def start_worker(url: str, backend: str, queue: str, concurrency: int, log_path: str) -> Any:
    env = dict(
        os.environ,
        AMQP_URL=url,
        PIKA_RPC_PLUGIN_QUEUE=queue,
        PIKA_RPC_PLUGIN_BACKEND=backend,
        PYTHONPATH=ROOT,
    )
    cmd = [
        sys.executable,
        '-m',
        'celery',
        '-A',
        TASKS,
        'worker',
        '--pool=threads',
        '-c',
        str(concurrency),
        '-Q',
        queue,
        '-n',
        f'{queue}@%h',
        '-l',
        'warning',
        '--without-gossip',
        '--without-mingle',
        '--without-heartbeat',
    ]
    log = open(log_path, 'wb')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    # -l warning hides "ready."; wait until the worker consumes its queue instead.
    deadline = time.monotonic() + 60
    while not _consumed(url, queue):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f'celery worker did not start; see {log_path}')
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    return proc


def _consumed(url: str, queue: str) -> bool:
    import pika

    params = pika.URLParameters(re.sub(r'/+$', '/%2F', url) if url.endswith('//') else url)
    try:
        with pika.BlockingConnection(params) as conn:
            ok = conn.channel().queue_declare(queue, passive=True)
            return ok.method.consumer_count > 0
    except Exception:
        return False


def stop(proc: Any) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def delete_queue(url: str, queue: str) -> None:
    import pika

    params = pika.URLParameters(re.sub(r'/+$', '/%2F', url) if url.endswith('//') else url)
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.queue_delete(queue)
        ch.exchange_delete(queue)


def scenario(args: argparse.Namespace, backend: str, workdir: str) -> Dict[str, Any]:
    queue = f'pika-rpc-bench-plugin-{uuid.uuid4().hex[:8]}'
    tag = backend.split(':')[0]
    worker = start_worker(
        args.url, backend, queue, args.concurrency, os.path.join(workdir, f'worker-{tag}.log')
    )
    try:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            '--client',
            '--backend',
            backend,
            '--queue',
            queue,
            '--url',
            args.url,
            '--threads',
            str(args.threads),
            '--per-thread',
            str(args.per_thread),
            '--get-timeout',
            str(args.get_timeout),
            '--deadline',
            str(args.deadline),
        ] + (['--warm'] if args.warm else [])
        env = dict(os.environ, PYTHONPATH=ROOT)
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.deadline + 60
            )
        except subprocess.TimeoutExpired:
            return {'backend': backend, 'hung_process': True}
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
        if not lines:
            return {'backend': backend, 'crashed': proc.returncode, 'stderr': proc.stderr[-2000:]}
        return json.loads(lines[-1])
    finally:
        stop(worker)
        delete_queue(args.url, queue)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=64)
    parser.add_argument('--per-thread', type=int, default=50)
    parser.add_argument('--get-timeout', type=float, default=10.0)
    parser.add_argument('--deadline', type=float, default=120.0, help='client wall-time limit')
    parser.add_argument('--concurrency', type=int, default=16, help="the worker's threads")
    parser.add_argument('--backends', nargs='+', default=['rpc://', 'pika-rpc://'])
    parser.add_argument(
        '--warm', action='store_true', help='make the backend in the main thread first'
    )
    parser.add_argument('--url', default=os.environ.get('AMQP_URL') or DEFAULT_URL)
    parser.add_argument('--client', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--backend', help=argparse.SUPPRESS)
    parser.add_argument('--queue', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        out = client(args)
        print(json.dumps(out), flush=True)
        os._exit(0)  # threads still blocked in a hung backend must not keep the process
    results = []
    with tempfile.TemporaryDirectory(prefix='pika-rpc-plugin-threads-') as workdir:
        for backend in args.backends:
            print(f'{backend}: running ...', file=sys.stderr, flush=True)
            results.append(scenario(args, backend, workdir))
            print(json.dumps(results[-1]), flush=True)
    print()
    print('| backend | tasks/s | ok | wrong | timeouts | other errors | hung threads | seconds |')
    print('|---|---|---|---|---|---|---|---|')
    for r in results:
        other = {k: v for k, v in (r.get('errors') or {}).items() if k != 'TimeoutError'}
        print(
            f'| {r["backend"]} | {r.get("tasks_per_s", "-")} | {r.get("ok", "-")} | '
            f'{r.get("wrong", "-")} | {r.get("timeouts", "-")} | {other or "-"} | '
            f'{r.get("hung_threads", "process hung" if r.get("hung_process") else "-")} | '
            f'{r.get("seconds", "-")} |'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
