"""``_threads``: ``SerialExecutor`` (order, faulty calls, stop, many submitters, a forked child)
and ``Counters`` (named counters several threads add to).

Pure logic with real threads, and a real ``os.fork()`` whose child reports through a pipe
and ``os._exit``s. The executors pika_rpc runs against the real broker (user hooks, the
decoder) are exercised by tests/integration/test_backend.py and tests/faults/test_fork.py.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from typing import Any, Callable, List, Tuple

import pytest

from pika_rpc._threads import Counters, SerialExecutor
from tests.helpers import eventually

WAIT = 10.0
CHILD_WAIT = 5.0  # the child's own waits: it reports a timeout rather than hang


@pytest.fixture
def executor() -> Any:
    executor = SerialExecutor('unit-executor')
    yield executor
    executor.stop(WAIT)


def executor_threads(executor: SerialExecutor) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f'unit-executor-{os.getpid()}']


def test_calls_run_one_at_a_time_in_submission_order_on_one_thread(executor):
    ran: List[Tuple[int, threading.Thread]] = []
    done = threading.Event()
    for i in range(200):
        executor.submit(lambda i=i: ran.append((i, threading.current_thread())))
    executor.submit(done.set)
    assert done.wait(WAIT)
    assert [i for i, _ in ran] == list(range(200))
    threads = {thread for _, thread in ran}
    assert len(threads) == 1 and threads.pop() is not threading.current_thread()
    assert executor.pending == 0


def test_a_raising_call_is_logged_and_the_next_call_runs(executor, caplog):
    def faulty() -> None:
        raise ValueError('a faulty hook')

    done = threading.Event()
    with caplog.at_level(logging.ERROR, logger='pika_rpc._threads'):
        executor.submit(faulty)
        executor.submit(done.set)
        assert done.wait(WAIT)
    [record] = [r for r in caplog.records if r.name == 'pika_rpc._threads']
    assert 'unit-executor' in record.getMessage() and 'faulty' in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_a_call_raising_system_exit_does_not_stop_the_calls_after_it(executor):
    def exits() -> None:
        raise SystemExit(3)

    gate, done = threading.Event(), threading.Event()
    threads: List[threading.Thread] = []
    executor.submit(lambda: (threads.append(threading.current_thread()), gate.wait(WAIT)))
    executor.submit(exits)
    executor.submit(done.set)
    gate.set()
    eventually(lambda: done.is_set() or not threads[0].is_alive(), WAIT)
    assert done.is_set(), 'the executor thread ended'


def test_stop_runs_what_is_queued_then_ends_the_thread(executor):
    started, gate = threading.Event(), threading.Event()
    ran: List[int] = []
    executor.submit(lambda: (started.set(), gate.wait(WAIT)))
    assert started.wait(WAIT)
    for i in range(5):
        executor.submit(ran.append, i)
    assert executor.pending == 5
    stopper = threading.Thread(target=executor.stop, args=(WAIT,), daemon=True)
    stopper.start()
    gate.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert ran == [0, 1, 2, 3, 4] and executor_threads(executor) == []


def test_stop_returns_after_its_timeout_while_a_call_still_runs(executor):
    started, gate = threading.Event(), threading.Event()
    ran: List[str] = []
    executor.submit(lambda: (started.set(), gate.wait(WAIT)))
    assert started.wait(WAIT)
    executor.submit(ran.append, 'queued')
    executor.stop(timeout=0.01)  # returns: the call still runs
    [thread] = executor_threads(executor)
    assert thread.is_alive() and ran == []
    gate.set()
    thread.join(WAIT)
    assert not thread.is_alive() and ran == ['queued']


def test_a_call_may_stop_its_own_executor_without_waiting_for_itself(executor):
    ran: List[str] = []
    executor.submit(lambda: ran.append(f'stop returned {executor.stop(WAIT)}'))
    executor.submit(ran.append, 'queued before the stop')
    [thread] = executor_threads(executor)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert ran == ['stop returned None', 'queued before the stop']


def test_stopping_an_executor_that_never_ran_returns_at_once_and_later_calls_start_nothing():
    executor = SerialExecutor('unit-executor')
    executor.stop(WAIT)
    ran: List[str] = []
    executor.submit(ran.append, 'after the stop')  # never raises
    assert executor_threads(executor) == [] and ran == []


def test_calls_submitted_from_many_threads_all_run_in_each_submitters_order(executor):
    submitters, per_submitter = 8, 100
    start = threading.Barrier(submitters, timeout=WAIT)
    ran: List[Tuple[int, int]] = []
    ran_on: set = set()
    done = threading.Semaphore(0)

    def call(n: int, k: int) -> None:
        ran.append((n, k))
        ran_on.add(threading.current_thread().ident)
        done.release()

    def submit(n: int) -> None:
        start.wait()
        for k in range(per_submitter):
            executor.submit(call, n, k)

    threads = [threading.Thread(target=submit, args=(n,), daemon=True) for n in range(submitters)]
    for thread in threads:
        thread.start()
    for _ in range(submitters * per_submitter):
        assert done.acquire(timeout=WAIT)
    for thread in threads:
        thread.join(WAIT)
    assert len(ran) == submitters * per_submitter and len(ran_on) == 1
    for n in range(submitters):
        assert [k for m, k in ran if m == n] == list(range(per_submitter))
    assert len(executor_threads(executor)) == 1


def in_forked_child(child: Callable[[], str]) -> str:
    """Fork; the child runs ``child()``, writes what it returns (or raised) to a pipe and
    ``os._exit``s. Returns the report ('no report' when none came in time: child killed)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            try:
                report = child()
            except BaseException as exc:
                report = f'raised {type(exc).__name__}: {exc}'
            os.write(write_fd, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        readable, _, _ = select.select([read_fd], [], [], WAIT)
        if not readable:
            os.kill(pid, signal.SIGKILL)
            return 'no report'
        chunks = []
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                return b''.join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)


def test_a_forked_childs_executor_starts_empty_and_runs_its_own_calls(executor):
    started, gate = threading.Event(), threading.Event()
    ran: List[str] = []
    executor.submit(lambda: (started.set(), gate.wait(WAIT)))  # the parent's thread, busy
    assert started.wait(WAIT)
    executor.submit(ran.append, 'parent-1')
    executor.submit(ran.append, 'parent-2')

    def child() -> str:
        pending = executor.pending
        done = threading.Event()
        executor.submit(ran.append, 'child')
        executor.submit(done.set)
        finished = done.wait(CHILD_WAIT)
        executor.stop(CHILD_WAIT)
        return f'pending={pending} finished={finished} ran={ran}'

    try:
        report = in_forked_child(child)
    finally:
        gate.set()
    assert report == "pending=0 finished=True ran=['child']"
    done = threading.Event()
    executor.submit(done.set)  # the parent's queue is its own
    assert done.wait(WAIT) and ran == ['parent-1', 'parent-2']


# ------------------------------------------------------------------ Counters


def test_counts_added_from_many_threads_are_all_kept():
    counters = Counters('a', 'b')
    start = threading.Barrier(8)

    def add() -> None:
        start.wait(30)
        for _ in range(20000):
            counters.add('a')
        counters.add('b', 3)

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert counters.snapshot() == {'a': 8 * 20000, 'b': 8 * 3}


def test_a_snapshot_is_a_copy_and_an_unknown_name_is_a_key_error():
    counters = Counters('a')
    snapshot = counters.snapshot()
    counters.add('a')
    assert snapshot == {'a': 0} and counters.snapshot() == {'a': 1}
    with pytest.raises(KeyError):
        counters.add('typo')
