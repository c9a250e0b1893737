"""The hand-off records and queue (``_handoff``): ``Latch``, ``Publication``, ``HandOff``.

Pure logic with real threads; a thread is known to be blocked when its innermost Python
frame is the blocking function (``blocked_in``), never by sleeping. The link that drives
the hand-off against the real broker: tests/integration/test_link.py,
tests/faults/test_publish_path.py.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import pytest

from pika_rpc._handoff import Command, HandOff, Latch, Publication
from pika_rpc.errors import ClosedError
from tests.helpers import eventually

WAIT = 10.0


def blocked_in(thread: threading.Thread, function: Callable[..., Any]) -> bool:
    """True while ``thread``'s innermost Python frame is ``function`` (it is blocked in a
    lock or a condition there: nothing else in these functions takes time)."""
    frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
    return frame is not None and frame.f_code is function.__code__


class Outcome(threading.Thread):
    """Runs ``fn()`` on its own thread; ``result()`` returns what it returned, or raises."""

    def __init__(self, fn: Callable[[], Any], start: bool = True) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.value: Any = None
        self.error: Optional[BaseException] = None
        if start:
            self.start()

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # recorded: the test asserts on it
            self.error = exc

    def result(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), 'the thread hangs'
        if self.error is not None:
            raise self.error
        return self.value


# ------------------------------------------------------------------ Latch


def test_a_latch_starts_unset_and_a_wait_with_a_timeout_returns_false():
    latch = Latch()
    assert not latch.is_set()
    assert latch.wait(0.01) is False
    assert latch.wait(0) is False
    assert latch.wait(-1) is False  # a deadline already passed
    assert not latch.is_set()


def test_setting_a_latch_wakes_every_thread_waiting_on_it():
    latch = Latch()
    waiters = [Outcome(lambda: latch.wait(None)) for _ in range(8)]  # no timeout to end it
    eventually(lambda: all(blocked_in(w, Latch.wait) for w in waiters))
    latch.set()
    assert [w.result() for w in waiters] == [True] * 8
    assert latch.is_set() and latch.wait(0) and latch.wait(None)


def test_a_latch_set_twice_stays_set_and_waits_return_at_once():
    latch = Latch()
    latch.set()
    latch.set()
    assert latch.is_set()
    assert [latch.wait(0) for _ in range(3)] == [True] * 3


def test_two_threads_setting_a_latch_at_once_both_return_and_later_waits_see_it_set():
    for _ in range(50):
        latch = Latch()
        start = threading.Barrier(2, timeout=WAIT)

        def setter(start: threading.Barrier = start, latch: Latch = latch) -> None:
            start.wait()
            latch.set()

        setters = [Outcome(setter) for _ in range(2)]
        for thread in setters:
            thread.result()  # neither raised
        assert latch.is_set() and latch.wait(0) is True


class _SteppedLatch(Latch):
    """A ``Latch`` whose flag reads can be paused, to run one interleaving on purpose.

    The methods are Latch's own; only reads of ``_set`` by ``pause_thread`` go through
    ``on_read`` first."""

    pause_thread: Optional[threading.Thread] = None
    on_read: Callable[[], None] = staticmethod(lambda: None)

    @property  # type: ignore[override]
    def _set(self) -> bool:
        value = Latch._set.__get__(self, Latch)  # type: ignore[attr-defined]
        if threading.current_thread() is self.pause_thread:
            self.pause_thread = None  # the first read only
            self.on_read()
        return value

    @_set.setter
    def _set(self, value: bool) -> None:
        Latch._set.__set__(self, value)  # type: ignore[attr-defined]


class _SteppedLock:
    """The latch's lock; a waiter that has just acquired it stops until ``go`` is set."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.waiter: Optional[threading.Thread] = None
        self.acquired, self.go = threading.Event(), threading.Event()

    def acquire(self, timeout: float = -1) -> bool:
        got = self._lock.acquire(timeout=timeout)
        if got and threading.current_thread() is self.waiter:
            self.acquired.set()
            assert self.go.wait(WAIT)
        return got

    def release(self) -> None:
        self._lock.release()


def stuck_in(thread: threading.Thread, function: Callable[..., Any]) -> Callable[[], bool]:
    """A check for ``eventually``: ``thread`` was found at one place of ``function`` (its
    innermost frame) at three checks in a row, so it waits for a lock there."""
    seen: List[Any] = []

    def check() -> bool:
        frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
        seen.append((frame.f_code, frame.f_lasti) if frame is not None else None)
        return (
            seen[-1] is not None
            and seen[-1][0] is function.__code__
            and seen[-3:] == [seen[-1]] * 3
        )

    return check


def test_a_waiter_woken_while_two_threads_set_the_latch_at_once_returns_true():
    # The interleaving: setter B reads the flag (unset); setter A sets it and releases the
    # lock; the waiter acquires it; B, past its check, releases it again; the waiter's own
    # release ("pass it on") then finds it unlocked. A Latch whose set() is atomic makes A
    # wait for B instead (stuck_in): then the steps run in the only order left.
    latch = _SteppedLatch()
    lock = _SteppedLock(latch._lock)
    latch._lock = lock  # type: ignore[assignment]
    b_checked, b_go = threading.Event(), threading.Event()

    def pause_b() -> None:
        b_checked.set()
        assert b_go.wait(WAIT)

    latch.on_read = pause_b  # type: ignore[assignment]

    waiter = lock.waiter = Outcome(lambda: latch.wait(WAIT))
    eventually(lambda: blocked_in(waiter, _SteppedLock.acquire))
    setter_b = Outcome(latch.set, start=False)
    latch.pause_thread = setter_b
    setter_b.start()
    try:
        eventually(lambda: b_checked.is_set() or not setter_b.is_alive())
        setter_a = Outcome(latch.set)
        a_stuck = stuck_in(setter_a, Latch.set)
        eventually(lambda: lock.acquired.is_set() or a_stuck())
        b_go.set()
        setter_b.result()  # B's release, then the waiter's
    finally:
        b_go.set()
        lock.go.set()
    setter_a.result()
    assert waiter.result() is True


# ------------------------------------------------------------------ Publication


def test_a_publication_without_a_policy_is_tried_once_and_has_no_deadline():
    pub = Publication('ex', 'rk', b'body', {'correlation_id': 'c1', 'priority': 3})
    assert (pub.exchange, pub.routing_key, pub.body) == ('ex', 'rk', b'body')
    assert pub.correlation_id == 'c1' and pub.mandatory is True
    assert (pub.max_retries, pub.errback, pub.deadline, pub.timeout) == (0, None, None, None)
    assert pub.policy == {'max_retries': 0} and pub.waits is None
    assert (pub.attempts, pub.cancelled, pub.gen, pub.error, pub.returned) == (
        0,
        False,
        -1,
        None,
        None,
    )
    assert not pub.done.is_set() and pub.wait(0) is False


def test_a_publication_takes_its_retry_policy():
    def errback(exc: BaseException, interval: float) -> None:
        pass

    pub = Publication(
        '',
        'rk',
        b'',
        {},
        mandatory=False,
        policy={
            'max_retries': None,
            'interval_start': 2,
            'interval_step': 0.5,
            'interval_max': 3,
            'errback': errback,
        },
    )
    assert pub.correlation_id is None and pub.mandatory is False
    assert (pub.max_retries, pub.errback) == (None, errback)  # None: retry for ever
    assert pub.policy['interval_start'] == 2 and pub.waits is None  # made at the first retry


def test_a_publication_deadline_is_its_timeout_from_now():
    before = time.monotonic()
    pub = Publication('', 'rk', b'', {}, timeout=30.0)
    after = time.monotonic()
    assert before + 30.0 <= pub.deadline <= after + 30.0 and pub.timeout == 30.0
    with pytest.raises(ValueError, match='timeout'):
        Publication('', 'rk', b'', {}, timeout=-1)


def test_finishing_a_publication_records_its_error_and_wakes_its_waiter():
    pub = Publication('', 'rk', b'', {})
    waiter = Outcome(lambda: pub.wait(WAIT))
    eventually(lambda: blocked_in(waiter, Latch.wait))
    error = RuntimeError('nacked')
    pub._finish(error)
    assert waiter.result() is True and pub.error is error and pub.done.is_set()


# ------------------------------------------------------------------ HandOff: putting


def never() -> bool:
    return False


def nothing() -> None:
    return None


def pub(tag: Any = None) -> Publication:
    return Publication('', 'rk', b'', {'correlation_id': str(tag)})


def command(tag: Any = None) -> Command:
    return Command(print, (tag,), f'command {tag}')


def test_the_first_put_of_a_batch_asks_for_the_wake_up_and_the_others_do_not():
    handoff = HandOff(10)
    assert [handoff.put(pub(i), None, never, nothing)[:2] for i in range(3)] == [
        (True, True),
        (True, False),
        (True, False),
    ]
    handoff.take_all()
    assert handoff.put(pub(3), None, never, nothing)[:2] == (True, True)


def test_put_runs_locked_under_the_mutex_once_queued_and_returns_what_it_returned():
    handoff = HandOff(1)
    seen: List[Tuple[bool, int]] = []

    def locked() -> str:
        seen.append((handoff.mutex.locked(), len(handoff)))
        return 'connection'

    assert handoff.put(command(), None, never, locked) == (True, True, 'connection')
    assert seen == [(True, 1)]
    assert handoff.put(command(), time.monotonic(), never, locked) == (False, False, None)
    assert seen == [(True, 1)]  # not queued: not run


def test_only_publications_count_as_queued_publications():
    handoff = HandOff(10)
    for item in (pub(1), command(2), pub(3), command(4)):
        handoff.put(item, None, never, nothing)
    assert len(handoff) == 4 and handoff.queued_pubs == 2


def test_a_put_on_a_full_queue_whose_deadline_passed_returns_false_and_queues_nothing():
    handoff = HandOff(2)
    for i in range(2):
        handoff.put(pub(i), None, never, nothing)
    assert handoff.put(pub('late'), time.monotonic(), never, nothing) == (False, False, None)
    assert handoff.put(pub('later'), time.monotonic() + 0.05, never, nothing) == (
        False,
        False,
        None,
    )
    assert len(handoff) == 2 and handoff.queued_pubs == 2


def test_a_put_on_a_full_queue_blocks_until_the_io_thread_takes_the_queue():
    handoff = HandOff(2)
    first = [pub(i) for i in range(2)]
    for item in first:
        handoff.put(item, None, never, nothing)
    late = pub('late')
    producer = Outcome(lambda: handoff.put(late, time.monotonic() + WAIT, never, nothing))
    eventually(lambda: blocked_in(producer, threading.Condition.wait))
    assert len(handoff) == 2
    assert handoff.take_all() == first
    assert producer.result()[0] is True
    assert handoff.take_all() == [late] and handoff.queued_pubs == 3


def test_a_put_blocked_on_a_full_queue_raises_closed_error_when_the_link_stops():
    handoff = HandOff(1)
    handoff.put(pub(0), None, never, nothing)
    stopped = threading.Event()
    producer = Outcome(lambda: handoff.put(pub('blocked'), None, stopped.is_set, nothing))
    eventually(lambda: blocked_in(producer, threading.Condition.wait))
    with handoff.mutex:  # as Link.close does
        stopped.set()
        handoff.not_full.notify_all()
    with pytest.raises(ClosedError):
        producer.result()
    assert len(handoff) == 1 and handoff.queued_pubs == 1


def test_a_put_after_the_link_stopped_raises_closed_error_at_once():
    handoff = HandOff(10)
    with pytest.raises(ClosedError):
        handoff.put(pub(), None, lambda: True, nothing)
    assert len(handoff) == 0 and handoff.queued_pubs == 0 and not handoff.wake_pending


def test_a_put_wakes_the_io_thread_waiting_for_work():
    handoff = HandOff(10)

    def io_thread() -> int:
        with handoff.mutex:
            assert handoff.work.wait_for(lambda: len(handoff) > 0, WAIT)
            return len(handoff)

    waiting = Outcome(io_thread)
    eventually(lambda: blocked_in(waiting, threading.Condition.wait))
    handoff.put(command(), None, never, nothing)
    assert waiting.result() == 1


# ------------------------------------------------------------------ HandOff: the I/O thread's side


def test_take_all_empties_the_queue_oldest_first_and_keeps_publications_counted_until_handed():
    handoff = HandOff(10)
    items = [pub(1), command(2), pub(3)]
    for item in items:
        handoff.put(item, None, never, nothing)
    assert handoff.take_all() == items
    assert len(handoff) == 0 and not handoff.wake_pending and handoff.queued_pubs == 2
    assert handoff.take_all() == []
    handoff.handed(1)
    assert handoff.queued_pubs == 1
    handoff.handed(0)
    assert handoff.queued_pubs == 1
    handoff.handed(5)  # never below zero
    assert handoff.queued_pubs == 0


def test_put_back_returns_unrun_items_to_the_front_in_order_still_counted():
    handoff = HandOff(10)
    batch = [pub(1), command(2), pub(3)]
    for item in batch:
        handoff.put(item, None, never, nothing)
    taken = handoff.take_all()
    newer = pub(4)
    handoff.put(newer, None, never, nothing)
    handoff.put_back(taken[1:])  # the first ran
    handoff.handed(1)
    assert handoff.take_all() == [batch[1], batch[2], newer]
    assert handoff.queued_pubs == 2


def test_requeue_adds_publications_at_the_back_or_the_front_and_counts_them():
    handoff = HandOff(10)
    queued = pub('queued')
    handoff.put(queued, None, never, nothing)
    retried, lost = pub('retried'), [pub('lost-1'), pub('lost-2')]
    handoff.requeue([retried])
    handoff.requeue(lost, front=True)
    handoff.requeue([])
    assert handoff.queued_pubs == 4
    assert handoff.take_all() == lost + [queued, retried]


def test_clear_returns_everything_zeroes_the_count_and_lets_a_blocked_producer_in():
    handoff = HandOff(2)
    items = [pub(1), pub(2)]
    for item in items:
        handoff.put(item, None, never, nothing)
    late = pub('late')
    producer = Outcome(lambda: handoff.put(late, None, never, nothing))
    eventually(lambda: blocked_in(producer, threading.Condition.wait))
    assert handoff.clear() == items
    assert producer.result()[:2] == (True, True)  # the cleared queue's flag was reset
    assert handoff.queued_pubs == 1 and handoff.take_all() == [late]


# ------------------------------------------------------------------ HandOff under load


def test_many_producers_and_one_consumer_lose_nothing_and_keep_each_producers_order():
    producers, per_producer = 8, 150
    handoff = HandOff(4)  # small: producers block often
    start = threading.Barrier(producers + 2, timeout=WAIT)
    wakes: List[bool] = []
    got: List[Publication] = []
    takes = [0]

    def produce(n: int) -> None:
        start.wait()
        for k in range(per_producer):
            queued, wake, _ = handoff.put(pub((n, k)), time.monotonic() + WAIT, never, nothing)
            assert queued
            wakes.append(wake)

    def consume() -> None:
        start.wait()
        while len(got) < producers * per_producer:
            with handoff.mutex:
                assert handoff.work.wait_for(lambda: len(handoff) > 0, WAIT)
            batch = handoff.take_all()
            takes[0] += 1
            got.extend(batch)
            handoff.handed(len(batch))

    threads = [Outcome(lambda n=n: produce(n)) for n in range(producers)]
    consumer = Outcome(consume)
    start.wait()
    for thread in threads:
        thread.result()
    consumer.result()
    order = [item.correlation_id for item in got]
    assert len(order) == len(set(order)) == producers * per_producer
    for n in range(producers):
        mine = [item for item in order if item.startswith(f'({n},')]
        assert mine == [str((n, k)) for k in range(per_producer)]
    assert len(handoff) == 0 and handoff.queued_pubs == 0
    assert 1 <= wakes.count(True) <= takes[0] + 1  # one wake-up per batch at most
