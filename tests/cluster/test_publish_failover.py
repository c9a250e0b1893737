"""Publishing tasks to a quorum queue while its leader's node is stopped.

16 threads send tasks (``ignore_result``: only the publish path is under test) to a quorum
queue whose leader is n1, under ``task_publish_retry_policy``; n1 is stopped meanwhile. The
client is connected either to n1 (its connection is lost: unconfirmed publications are
re-published after the reconnect) or to n3 (its connection stays: the broker holds, and may
nack, the publications while the queue elects a new leader). n1 is stopped (``stop_app``) or
killed.

What this found: after a kill, the client reconnected to n2 within ~50 ms, before the queue
had a new leader, and RabbitMQ 3.10 then nacked every publish of that new publish channel for
as long as it lived (every ``send_task`` failed with ``PublishError`` for 90 s); a new channel
publishes normally. The link now moves to a new publish channel after a nack
(``_outbox``: ``publish_channels_replaced``).

Publishing is at-least-once: a publication whose confirm was lost with the connection is sent
again, so the broker may hold a task twice (same task id). What must hold:

* every ``send_task`` returns or raises a ``PikaRPCError`` (never another exception), within
  its publish timeout (nobody hangs);
* every task whose ``send_task`` returned is in the queue (confirmed means stored);
* no task is in the queue more than once unless its publication was in flight when a
  connection was lost (the duplicates are counted and bounded, never silent multiplication).
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from typing import Any, Counter, Dict, Iterator, List, Tuple

import pika
import pytest

from pika_rpc import App
from pika_rpc.errors import PikaRPCError
from tests.helpers import pika_parameters
from tests.localcluster import LocalCluster

THREADS = 16
PUBLISH_TIMEOUT = 10.0
SLACK = 5.0  # a send_task may end this much after its publish timeout (a loaded machine)
AGAIN = 5  # publications per thread after the loss
RECOVERY = 90.0
QUORUM = {'x-queue-type': 'quorum'}


def raw(cluster: LocalCluster, *nodes: int) -> pika.BlockingConnection:
    urls = [cluster.urls[n - 1] for n in nodes] if nodes else cluster.urls
    return pika.BlockingConnection(
        [pika_parameters(u, connection_attempts=1, socket_timeout=5) for u in urls]
    )


class Senders:
    """``THREADS`` threads calling ``send_task`` with ids of their own until stopped; each call
    is ``(thread, task_id, sent, done, outcome)``, outcome ``'ok'``, an error's type name."""

    def __init__(self, app: App, queue: str) -> None:
        self.app, self.queue = app, queue
        self.calls: List[Tuple[int, str, float, float, str]] = []
        self.untyped: List[BaseException] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(THREADS)
        ]

    def __enter__(self) -> 'Senders':
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(PUBLISH_TIMEOUT + SLACK + 5)
        assert not any(t.is_alive() for t in self._threads), 'a send_task hangs'

    def _loop(self, i: int) -> None:
        while not self._stop.is_set():
            task_id, sent = str(uuid.uuid4()), time.monotonic()
            try:
                self.app.send_task('t.x', (i,), task_id=task_id, ignore_result=True)
                outcome = 'ok'
            except PikaRPCError as exc:
                outcome = type(exc).__name__
            except BaseException as exc:  # noqa: BLE001 - recorded: the test fails on it
                outcome = 'untyped'
                self.untyped.append(exc)
            with self._changed:
                self.calls.append((i, task_id, sent, time.monotonic(), outcome))
                self._changed.notify_all()
            if outcome != 'ok':
                self._stop.wait(0.05)  # as a caller that retries would

    def wait_each_ok(self, times: int, sent_after: float, timeout: float) -> bool:
        def done() -> bool:
            counts = collections.Counter(
                c[0] for c in self.calls if c[4] == 'ok' and c[2] >= sent_after
            )
            return all(counts[i] >= times for i in range(THREADS))

        with self._changed:
            return self._changed.wait_for(done, timeout)


def drain(cluster: LocalCluster, queue: str, node: int) -> Counter[str]:
    """Every task id in the queue, with how often it is there (the queue is emptied)."""
    ids: Counter[str] = collections.Counter()
    with raw(cluster, node) as conn:
        channel = conn.channel()
        while True:
            method, props, _ = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            ids[(props.headers or {}).get('id')] += 1


@pytest.fixture
def quorum_queue(rabbit_cluster: LocalCluster, unique_name: str) -> Iterator[str]:
    """A quorum queue declared on n1, so n1 leads it."""
    with raw(rabbit_cluster, 1) as conn:
        conn.channel().queue_declare(unique_name, durable=True, arguments=QUORUM)
    assert rabbit_cluster.queue_node(unique_name) == 'n1@localhost'
    yield unique_name
    rabbit_cluster.restore()
    with raw(rabbit_cluster) as conn:
        conn.channel().queue_delete(unique_name)


@pytest.mark.parametrize('how', ['stop_app', 'kill'])
@pytest.mark.parametrize('client_on', [1, 3], ids=['client-on-the-leader', 'client-elsewhere'])
def test_send_task_to_a_quorum_queue_whose_leader_is_lost_succeeds_or_raises_typed_errors(
    rabbit_cluster: LocalCluster, quorum_queue: str, client_on: int, how: str
) -> None:
    order = [client_on] + [n for n in (1, 2, 3) if n != client_on]
    app = App(
        broker=';'.join(rabbit_cluster.urls[n - 1] for n in order),
        task_default_queue=quorum_queue,
        task_default_queue_type='quorum',
        publish_timeout=PUBLISH_TIMEOUT,
    )
    losses: List[float] = []
    try:
        link = app.backend._get_link()
        link.add_listener(lambda event, info: event == 'lost' and losses.append(time.monotonic()))
        with Senders(app, quorum_queue) as senders:
            assert senders.wait_each_ok(AGAIN, 0.0, RECOVERY)
            if how == 'kill':
                rabbit_cluster.kill(1)
            else:
                rabbit_cluster.stop_app(1)
            recovered = senders.wait_each_ok(AGAIN, time.monotonic(), RECOVERY)
        stats = link.stats()
    finally:
        app.close()
    calls = senders.calls
    per_thread = collections.Counter(c[0] for c in calls if c[4] == 'ok')
    print(
        f'{how} n1, client on n{client_on}: errors',
        collections.Counter(c[4] for c in calls if c[4] != 'ok'),
        'stats',
        {k: stats[k] for k in ('reconnects', 'republishes', 'state', 'in_flight')},
        'ok per thread',
        sorted(per_thread.values()),
        'last error',
        stats['last_error'],
    )
    assert not senders.untyped, f'untyped errors: {senders.untyped[:3]!r}'
    assert recovered, 'send_task did not succeed again from every thread'
    slowest = max(done - sent for _, _, sent, done, _ in calls)
    assert slowest <= PUBLISH_TIMEOUT + SLACK, f'a send_task took {slowest:.1f} s'
    assert (stats['reconnects'] > 0) == (client_on == 1) and len(losses) == stats['reconnects']

    in_queue = drain(rabbit_cluster, quorum_queue, 3)
    confirmed = {c[1] for c in calls if c[4] == 'ok'}
    missing = confirmed - set(in_queue)
    assert not missing, f'{len(missing)} confirmed tasks are not in the queue'
    extra = sum(n - 1 for n in in_queue.values())
    duplicated = {i for i, n in in_queue.items() if n > 1}
    # A second copy of a task comes only from a re-publish (after a lost connection or a
    # nack), never from anything else; with no nack, only a publication that was in flight
    # when the connection went (each thread has one in flight at a time) is sent again.
    assert extra <= stats['republishes']
    spanning = {
        task_id for _, task_id, sent, done, _ in calls if any(sent <= t <= done for t in losses)
    }
    nacks = stats['republishes'] - len(spanning)
    if nacks <= 0:
        assert duplicated <= spanning and len(duplicated) <= THREADS * len(losses)
    errors: Dict[str, int] = collections.Counter(c[4] for c in calls if c[4] != 'ok')
    print(
        f'{how} n1, client on n{client_on}: {len(calls)} send_task, {len(confirmed)} confirmed, '
        f'errors {dict(errors)}, {len(duplicated)} tasks in the queue twice or more '
        f'({extra} extra copies), republishes {stats["republishes"]}, '
        f'reconnects {stats["reconnects"]}, slowest send_task {slowest:.2f} s'
    )
