"""A Worker with concurrency > 1 under load loses nothing (what tests/integration/test_worker*.py
did not already cover: everything at once).

Two workers of concurrency 4 share a queue carrying 200 tasks that succeed, raise, or pass
their hard time limit; the first worker is stopped mid-run with a timeout shorter than a task
it runs. Every task ends with exactly one final state, the right one, and the task the
stopped worker abandoned runs again on the other worker; its first run's late outcome is
dropped, never stored as a second result.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, List

from pika_rpc import App, ResultSet
from pika_rpc.errors import TimeLimitExceeded
from tests.helpers import eventually
from tests.integration.worker_support import app, gate, start_worker  # noqa: F401

LOAD = 200


def test_nothing_is_lost_when_tasks_raise_time_out_and_a_worker_stops_mid_run(
    app: App, start_worker: Any, gate: Any
) -> None:
    lock = threading.Lock()
    hold_runs: List[threading.Thread] = []

    work = threading.Event()  # never set: a task's 20 ms of "work" is a bounded wait on it

    @app.task(name='load.add')
    def add(x, y):
        work.wait(0.02)
        return x + y

    @app.task(name='load.boom')
    def boom(i):
        raise ValueError(f'boom {i}')

    @app.task(name='load.stuck', time_limit=1)
    def stuck():
        gate.release.wait(30)
        return 'too late'

    @app.task(name='load.hold')
    def hold():
        with lock:
            hold_runs.append(threading.current_thread())
            first = len(hold_runs) == 1
        if first:  # the first run outlives its worker's stop timeout
            gate.started.set()
            gate.release.wait(30)
            return 'first run'
        return 'second run'

    first = start_worker(concurrency=4, hostname=f'a-{uuid.uuid4().hex[:6]}@t')
    held = hold.delay()
    assert gate.started.wait(10)
    second = start_worker(concurrency=4, hostname=f'b-{uuid.uuid4().hex[:6]}@t')

    expected: List[Any] = []
    results = []
    for i in range(LOAD):
        if i % 50 == 7:
            results.append(stuck.delay())
            expected.append(TimeLimitExceeded)
        elif i % 10 == 3:
            results.append(boom.delay(i))
            expected.append(ValueError(f'boom {i}'))
        else:
            results.append(add.delay(i, i))
            expected.append(2 * i)

    def mid_run() -> bool:  # it has run tasks, runs load.hold, and has messages waiting
        stats = first.stats()
        return stats['succeeded'] >= 20 and stats['running'] >= 2 and stats['queued'] >= 2

    eventually(mid_run, timeout=10, interval=0.01)
    assert first.stop(timeout=1.5) is False  # load.hold was still running: abandoned
    assert held.get(timeout=10) == 'second run'  # ... and ran again on the other worker

    values = ResultSet(results, app=app).join_native(timeout=30, propagate=False)
    for value, want in zip(values, expected):
        if want is TimeLimitExceeded:
            assert isinstance(value, TimeLimitExceeded)
        elif isinstance(want, Exception):
            assert type(value) is type(want) and str(value) == str(want)
        else:
            assert value == want

    gate.release.set()  # the first run of load.hold returns now
    hold_runs[0].join(10)
    assert not hold_runs[0].is_alive()
    assert add.delay(1, 1).get(timeout=10) == 2  # anything it stored would be in by now
    assert app.AsyncResult(held.id).get(timeout=1) == 'second run'
    assert app.backend.stats()['duplicates'] == 0
    counts = [w.stats() for w in (first, second)]
    assert sum(c['succeeded'] for c in counts) == LOAD - 4 - 20 + 1 + 1  # adds, hold, add(1, 1)
    assert sum(c['failed'] for c in counts) >= 4 + 20
    assert second.stats()['state'] == 'RUNNING'
