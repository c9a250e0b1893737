#!/usr/bin/env python
"""Node loss on a RabbitMQ cluster, for pika_rpc and for Celery 5's own ``rpc://`` side by side.

Starts the throwaway 3-node cluster of ``tests/localcluster.py`` (beside the system node, which
it never touches; ~20 s), then runs each scenario once per implementation: 16 client threads in
this process doing round trips (``send_task`` then ``get()``), a worker with 16 pool threads in
its own process (pika_rpc's ``Worker`` through its CLI; Celery's worker with
``--pool=threads``), a fault, and prints one table::

    PYTHONPATH=$PWD python scripts/cluster_failover.py              # every scenario, ~7 min
    PYTHONPATH=$PWD python scripts/cluster_failover.py --quick      # shorter waits
    PYTHONPATH=$PWD python scripts/cluster_failover.py --scenarios reply-classic,task-quorum

Scenarios (``--list``):

* ``reply-classic``: stop (``stop_app``) the node hosting the client's reply queue; the client
  is connected to it (round-robin: the first address), the worker and the task queue are on
  another node. ``reply-kill``: the same with SIGKILL.
* ``reply-quorum``: the same with ``result_queue_type='quorum'`` (pika_rpc only: Celery's
  ``rpc://`` has no replicated reply queue).
* ``task-classic``: stop the node hosting a classic task queue (the worker is connected to
  it), keep it down ``--down`` seconds, start it again.
* ``task-quorum``: stop the node leading a quorum task queue (the worker is connected to it);
  ``task-quorum-kill``: the same with SIGKILL.
* ``worker-quorum``: a worker on a quorum task queue with default settings under load for
  ``--duration`` seconds; no fault (the connection must never close).

Columns: ``again``, seconds from the fault (the start of the stop command) until every thread
had a success of a task sent after it; ``again/ref``, the same from the node's return
(``task-classic``) or the new leader's election as seen by ``rabbitmqctl`` (``task-quorum``);
``stall``, the longest time one thread went without a success after the fault; ``ok``;
``lost``, a ``get()`` ran out (20 s) and nobody said why; ``dup``, tasks the worker ran twice;
``reported``, round trips that raised another error (``ReplyQueueLost`` and friends: the
caller knows); ``c-conn``, connections the client (re)established after the fault;
``w-close``, the worker's connection closes after the fault (its own WARNING lines).

Whatever happens (an error, Ctrl-C, SIGTERM), every node, worker and epmd it started is
stopped on exit. The cluster's lock makes a second run (or the cluster tests) wait:
``--lock-wait`` (default ``$PIKA_RPC_CLUSTER_LOCK_WAIT`` or 300 s).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from _failover.clients import CLIENTS, THREADS, RoundTrips, Row, again_after, longest_stall  # noqa: E402
from _failover.procs import WorkerProcess  # noqa: E402

from tests.helpers import pika_parameters  # noqa: E402
from tests.localcluster import LocalCluster  # noqa: E402

LOGGER = logging.getLogger('cluster_failover')

#: name -> (description, fault, how, task queue type, result queue type, implementations)
SCENARIOS: Dict[str, tuple] = {
    'reply-classic': (
        'stop the node of the reply queue', 'reply', 'stop_app', 'classic', 'classic', None),
    'reply-kill': (
        'kill -9 the node of the reply queue', 'reply', 'kill', 'classic', 'classic', None),
    'reply-quorum': (
        'stop the leader of a quorum reply queue', 'reply', 'stop_app', 'classic', 'quorum',
        ('pika_rpc',)),
    'task-classic': (
        'stop, then start, the node of a classic task queue', 'task', 'stop_app', 'classic',
        'classic', None),
    'task-quorum': (
        'stop the leader of a quorum task queue', 'task', 'stop_app', 'quorum', 'classic', None),
    'task-quorum-kill': (
        'kill -9 the leader of a quorum task queue', 'task', 'kill', 'quorum', 'classic', None),
    'worker-quorum': (
        'worker on a quorum task queue, default settings', None, None, 'quorum', 'classic',
        None),
}  # fmt: skip
QUICK = ('reply-classic', 'reply-quorum', 'task-classic', 'task-quorum', 'worker-quorum')
IMPLS = ('pika_rpc', 'celery')
AGAIN = 3  # successes per thread after the fault that end a scenario
RECOVERY_LIMIT = 60.0  # a scenario gives up waiting for recovery after this long


class Stop(Exception):
    """SIGTERM: unwind, so every node and worker is stopped."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stop(f'signal {signum}')


def order(cluster: LocalCluster, *numbers: int) -> str:
    return ';'.join(cluster.urls[n - 1] for n in numbers)


def delete_queue(cluster: LocalCluster, queue: str) -> None:
    import pika

    params = [pika_parameters(u, connection_attempts=1, socket_timeout=5) for u in cluster.urls]
    try:
        with pika.BlockingConnection(params) as conn:
            conn.channel().queue_delete(queue)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        LOGGER.warning('could not delete %s: %s', queue, exc)


def restore(cluster: LocalCluster, timeout: float = 60.0) -> None:
    """Bring back every node stopped or killed, and wait until each one takes AMQP
    connections again (so the next scenario's clients connect where it expects)."""
    restored = cluster.restore()
    if not restored:
        return
    LOGGER.info('restored %s', restored)
    import pika

    deadline = time.monotonic() + timeout
    for url in cluster.urls:
        while True:
            try:
                pika.BlockingConnection(pika_parameters(url, connection_attempts=1)).close()
                break
            except pika.exceptions.AMQPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # a node that boots: poll its listener


def reply_node(cluster: LocalCluster, queues: List[str], notes: List[str]) -> str:
    """The node hosting most of the client's reply queues (Celery has one per thread); never
    the worker's node (n3), which the reply scenarios keep up."""
    nodes = collections.Counter(cluster.queue_node(q) for q in queues)
    if len(nodes) > 1:
        notes.append('reply queues on ' + ', '.join(f'{n} x{c}' for n, c in nodes.items()))
    for node, _ in nodes.most_common():
        if node != cluster.node(3).name:
            return node
    raise RuntimeError(f"every reply queue is on the worker's node: {dict(nodes)}")


class LeaderWatch(threading.Thread):
    """Polls the queue's leader (``rabbitmqctl``) until it is not ``old``; ``.at`` is when."""

    def __init__(self, cluster: LocalCluster, queue: str, old: str) -> None:
        super().__init__(daemon=True, name='leader-watch')
        self.cluster, self.queue, self.old = cluster, queue, old
        self.at: Optional[float] = None
        self.new: Optional[str] = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                node = self.cluster.queue_node(self.queue, timeout=10)
            except Exception:  # noqa: BLE001 - no leader yet, or the node went mid-call
                node = None
            if node and node != self.old:
                self.at, self.new = time.monotonic(), node
                return
            self.stop.wait(0.2)


def run_one(
    cluster: LocalCluster, name: str, impl: str, opts: argparse.Namespace
) -> Dict[str, Any]:
    """One scenario for one implementation; returns its row of the table."""
    _, fault, how, queue_type, result_type, _ = SCENARIOS[name]
    queue = f'failover-{name}-{impl}-{uuid.uuid4().hex[:8]}'
    if fault == 'reply':  # worker and task queue on n3; the client on n1 (round-robin: first)
        worker_url, client_url = order(cluster, 3), order(cluster, 1, 2, 3)
    else:  # the worker on n1 (so its queue is, or leads, there); the client on n3
        worker_url, client_url = order(cluster, 1, 2, 3), order(cluster, 3, 2, 1)
    out: Dict[str, Any] = {'scenario': name, 'impl': impl, 'notes': []}
    worker = WorkerProcess(impl, worker_url, queue, queue_type).start()
    client = CLIENTS[impl](client_url, queue, queue_type, result_type)
    trips = RoundTrips(client).start()
    ref: Optional[float] = None
    try:
        if not trips.wait_each_ok(2, 0.0, RECOVERY_LIMIT):
            raise RuntimeError(f'{impl}: no round trips before the fault:\n{worker.tail()}')
        if fault == 'reply':
            lost = reply_node(cluster, client.reply_queues(), out['notes'])
        elif fault == 'task':
            lost = cluster.queue_node(queue)
        else:
            lost = None
        watch = None
        if fault == 'task' and queue_type == 'quorum':
            watch = LeaderWatch(cluster, queue, lost)
        began = time.monotonic()
        connects_before = client.connections()
        if lost is None:
            trips.wait_each_ok(10**9, began, opts.duration)  # just run under load
        else:
            if how == 'kill':
                cluster.kill(lost)
            else:
                cluster.stop_app(lost)
            out['notes'].append(f'{how} {lost} took {time.monotonic() - began:.1f} s')
            if watch is not None:
                watch.start()
            if name == 'task-classic':
                time.sleep(opts.down)  # the node stays down this long (the fault itself)
                cluster.start_app(lost)
                ref = time.monotonic()
                out['notes'].append(f'{lost} back after {ref - began:.1f} s')
            trips.wait_each_ok(AGAIN, ref or began, RECOVERY_LIMIT)
            if watch is not None:
                watch.join(30)  # rabbitmqctl may see the new leader after the clients do
                watch.stop.set()
                ref = watch.at
                if ref is not None:
                    out['notes'].append(f'new leader {watch.new} after {ref - began:.1f} s')
        end = time.monotonic()
        rows: List[Row] = trips.snapshot()
    finally:
        trips.stop()
        client.close()
        worker.stop()
        delete_queue(cluster, queue)
        restore(cluster)
    rows = trips.snapshot()
    after = [r for r in rows if r.done >= began]
    again = again_after(rows, began) if lost else None
    again_ref = again_after(rows, ref) if ref else None
    errors: Dict[str, str] = {}  # error type -> its first message
    for r in after:
        if r.outcome != 'ok' and r.error:
            errors.setdefault(r.error.split(':')[0], r.error[:150])
    out.update(
        again=again,
        again_ref=again_ref,
        stall=longest_stall(rows, began, end),
        ok=sum(1 for r in after if r.outcome == 'ok'),
        lost=sum(1 for r in rows if r.outcome == 'lost'),
        dup=worker.duplicates(),
        reported=sum(1 for r in rows if r.outcome == 'reported'),
        c_conn=client.connections() - connects_before,
        w_close=worker.closes_since(began),
        hung=trips.hung,
    )
    for kind in sorted(errors):
        out['notes'].append(f'{errors[kind]!r}')
    return out


def fmt(value: Any) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.2f}'
    return str(value)


COLUMNS = [
    ('scenario', 16), ('impl', 9), ('again', 6), ('again/ref', 9), ('stall', 6), ('ok', 6),
    ('lost', 5), ('dup', 4), ('reported', 8), ('c-conn', 6), ('w-close', 7),
]  # fmt: skip
KEYS = {'again/ref': 'again_ref', 'c-conn': 'c_conn', 'w-close': 'w_close'}


def table(rows: List[Dict[str, Any]]) -> str:
    head = ' '.join(f'{c:>{w}}' if i > 1 else f'{c:<{w}}' for i, (c, w) in enumerate(COLUMNS))
    lines = [head, '-' * len(head)]
    notes = []
    for row in rows:
        cells = []
        for i, (c, w) in enumerate(COLUMNS):
            text = fmt(row.get(KEYS.get(c, c)))
            cells.append(f'{text:>{w}}' if i > 1 else f'{text:<{w}}')
        lines.append(' '.join(cells))
        if row.get('notes'):
            notes.append(f'  {row["scenario"]} / {row["impl"]}: ' + '; '.join(row['notes']))
    return '\n'.join(lines + ([''] + notes if notes else []))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scenarios', help='comma-separated names (default: all)')
    parser.add_argument('--impls', default=','.join(IMPLS), help='pika_rpc,celery')
    parser.add_argument('--quick', action='store_true', help='shorter waits, no kill -9 runs')
    parser.add_argument('--down', type=float, help='seconds task-classic keeps its node down')
    parser.add_argument('--duration', type=float, help='seconds of worker-quorum')
    parser.add_argument('--list', action='store_true', help='list the scenarios and exit')
    parser.add_argument(
        '--lock-wait', type=float, default=float(os.environ.get('PIKA_RPC_CLUSTER_LOCK_WAIT', 300))
    )
    parser.add_argument('-v', '--verbose', action='store_true', help='INFO logs')
    opts = parser.parse_args(argv)
    if opts.list:
        for name, spec in SCENARIOS.items():
            print(f'{name:15} {spec[0]}')
        return 0
    names = (
        opts.scenarios.split(',') if opts.scenarios else list(QUICK if opts.quick else SCENARIOS)
    )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f'unknown scenarios {unknown}; --list shows them')
    impls = opts.impls.split(',')
    opts.down = opts.down if opts.down is not None else (5.0 if opts.quick else 10.0)
    opts.duration = opts.duration if opts.duration is not None else (5.0 if opts.quick else 10.0)
    logging.basicConfig(
        level=logging.INFO if opts.verbose else logging.ERROR,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s',
    )
    LOGGER.setLevel(logging.INFO)
    logging.getLogger('pika').setLevel(logging.WARNING if opts.verbose else logging.CRITICAL)
    signal.signal(signal.SIGTERM, _on_sigterm)
    rows: List[Dict[str, Any]] = []
    cluster = LocalCluster()
    try:
        began = time.monotonic()
        cluster.start(lock_timeout=opts.lock_wait)
        print(f'cluster up in {time.monotonic() - began:.1f} s: {cluster.url}', flush=True)
        for name in names:
            for impl in impls:
                only = SCENARIOS[name][5]
                if only and impl not in only:
                    rows.append({'scenario': name, 'impl': impl, 'notes': ['not offered']})
                    continue
                began = time.monotonic()
                try:
                    rows.append(run_one(cluster, name, impl, opts))
                except (KeyboardInterrupt, Stop):
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed run is a row, not the end
                    LOGGER.exception('%s / %s failed', name, impl)
                    rows.append({'scenario': name, 'impl': impl, 'notes': [f'FAILED: {exc}']})
                    restore(cluster)
                print(f'{name} / {impl}: {time.monotonic() - began:.0f} s', flush=True)
    except (KeyboardInterrupt, Stop) as exc:
        print(f'interrupted ({exc or "Ctrl-C"}): stopping the cluster', file=sys.stderr)
        return_code = 130
    else:
        return_code = 0
    finally:
        cluster.close()
    print()
    print(f'{THREADS} client threads; worker in its own process, 16 pool threads; RabbitMQ cluster')
    print(table(rows))
    return return_code


if __name__ == '__main__':
    sys.exit(main())
