"""The client side of a failover run: 16 threads, each sending ``failover.echo`` and waiting for
its result in a loop, through pika_rpc's ``App`` (one for every thread, as pika_rpc is used) or
Celery 5's own client with ``backend='rpc://'`` (``app.backend`` per thread, as Celery does it).

Every round trip is a :class:`Row`: when it was sent and done, and its outcome:

* ``ok``: the right value came back;
* ``reported``: ``send_task`` or ``get()`` raised an error other than a timeout (pika_rpc's
  ``ReplyQueueLost``, ``QueueNodeDown``, ``PublishError``...; Celery's connection errors);
  the caller knows;
* ``lost``: ``get()`` ran out of time (``GET_TIMEOUT``): the result never came and nobody
  said so.

After an error a thread waits ``ERROR_PAUSE`` before its next task, as a caller that retries
would; a thread never sleeps otherwise.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

THREADS = 16
GET_TIMEOUT = 20.0
ERROR_PAUSE = 0.05
TASK = 'failover.echo'


class Row(NamedTuple):
    thread: int
    sent: float
    done: float
    outcome: str  # 'ok', 'reported' or 'lost'
    error: Optional[str]


class PikaRPCClient:
    """pika_rpc: one ``App`` for the process; connections counted from the link's stats."""

    impl = 'pika_rpc'

    def __init__(self, url: str, queue: str, queue_type: str, result_queue_type: str) -> None:
        import pika_rpc

        self.app = pika_rpc.App(
            broker=url,
            task_default_queue=queue,
            task_default_queue_type=queue_type,
            result_queue_type=result_queue_type,
            result_expires=600,
        )
        self._link = self.app.backend._get_link()  # the one link of the process

    def connections(self) -> int:
        """Connections established so far (the first one and every reconnect)."""
        return 1 + self._link.stats()['reconnects']

    def reply_queues(self) -> List[str]:
        return [self.app.backend.oid]

    def thread_setup(self) -> None:
        pass

    def call(self, value: Any) -> Any:
        result = self.app.send_task(TASK, (value,))
        return result.get(timeout=GET_TIMEOUT)

    @staticmethod
    def is_timeout(exc: BaseException) -> bool:
        from pika_rpc.errors import ReplyQueueLost

        return isinstance(exc, TimeoutError) and not isinstance(exc, ReplyQueueLost)

    def close(self) -> None:
        self.app.close()


class CeleryClient:
    """Celery 5's client, ``backend='rpc://'``; kombu connections established in this process
    are counted by wrapping ``kombu.Connection._establish_connection`` (pika_rpc does not use
    kombu, so only Celery's count)."""

    impl = 'celery'
    _connects: List[float] = []
    _patched = False

    def __init__(self, url: str, queue: str, queue_type: str, result_queue_type: str) -> None:
        from celery import Celery

        self._patch()
        self.app = Celery('failover-client', broker=url, backend='rpc://', set_as_current=False)
        self.app.conf.update(
            task_default_queue=queue, task_default_queue_type=queue_type, result_expires=600
        )
        self._oids: List[str] = []
        self._oids_lock = threading.Lock()
        CeleryClient._connects.clear()

    def connections(self) -> int:
        """Connections kombu established in this process so far."""
        return len(CeleryClient._connects)

    @classmethod
    def _patch(cls) -> None:
        if cls._patched:
            return
        from kombu import Connection

        establish = Connection._establish_connection

        def counted(self: Any) -> Any:
            out = establish(self)
            cls._connects.append(time.monotonic())
            return out

        Connection._establish_connection = counted
        cls._patched = True

    def reply_queues(self) -> List[str]:
        with self._oids_lock:
            return list(self._oids)

    def thread_setup(self) -> None:
        oid = self.app.backend.oid  # this thread's backend (thread-local) is made here
        with self._oids_lock:
            self._oids.append(oid)

    def call(self, value: Any) -> Any:
        return self.app.send_task(TASK, args=(value,)).get(timeout=GET_TIMEOUT)

    @staticmethod
    def is_timeout(exc: BaseException) -> bool:
        from celery.exceptions import TimeoutError as CeleryTimeout

        return isinstance(exc, (CeleryTimeout, TimeoutError))

    def close(self) -> None:
        self.app.close()


CLIENTS: Dict[str, Callable[..., Any]] = {'pika_rpc': PikaRPCClient, 'celery': CeleryClient}


class RoundTrips:
    """``THREADS`` threads doing round trips through ``client`` until :meth:`stop`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.rows: List[Row] = []
        self.hung = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f'client-{i}', daemon=True)
            for i in range(THREADS)
        ]

    def start(self) -> 'RoundTrips':
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + GET_TIMEOUT + 15
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.hung = sum(1 for t in self._threads if t.is_alive())

    def _loop(self, i: int) -> None:
        self.client.thread_setup()
        seq = 0
        while not self._stop.is_set():
            seq += 1
            value = [i, seq]
            sent, error = time.monotonic(), None
            try:
                got = self.client.call(value)
                outcome = 'ok' if list(got) == value else 'reported'
                if outcome != 'ok':
                    error = f'wrong value {got!r}'
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                outcome = 'lost' if self.client.is_timeout(exc) else 'reported'
                error = f'{type(exc).__name__}: {exc}'
            with self._changed:
                self.rows.append(Row(i, sent, time.monotonic(), outcome, error))
                self._changed.notify_all()
            if outcome != 'ok':
                self._stop.wait(ERROR_PAUSE)

    def wait_each_ok(self, times: int, sent_after: float, timeout: float) -> bool:
        """Wait until every thread has ``times`` successes sent at or after ``sent_after``."""

        def done() -> bool:
            counts = [0] * THREADS
            for row in self.rows:
                if row.outcome == 'ok' and row.sent >= sent_after:
                    counts[row.thread] += 1
            return min(counts) >= times

        with self._changed:
            return self._changed.wait_for(done, timeout)

    def snapshot(self) -> List[Row]:
        with self._changed:
            return list(self.rows)


def again_after(rows: List[Row], since: float) -> Optional[float]:
    """Seconds from ``since`` until every thread had a success of a task sent after it
    (None: some thread never had one)."""
    worst = 0.0
    for i in range(THREADS):
        done = [r.done for r in rows if r.thread == i and r.outcome == 'ok' and r.sent >= since]
        if not done:
            return None
        worst = max(worst, min(done) - since)
    return worst


def longest_stall(rows: List[Row], since: float, until: float) -> float:
    """The longest time one thread went without a success within ``[since, until]``."""
    worst = 0.0
    for i in range(THREADS):
        times = sorted(r.done for r in rows if r.thread == i and r.outcome == 'ok')
        marks = [since] + [t for t in times if since < t < until] + [until]
        worst = max(worst, max(b - a for a, b in zip(marks, marks[1:])))
    return worst
