"""The pending table's own logic, with real threads waiting (no broker: pure logic).

Each behaviour here also has a real-broker test (tests/integration/test_production_shapes.py,
tests/faults/test_given_up_link.py).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from pika_rpc._pending import PendingTable
from pika_rpc.config import Settings
from pika_rpc.errors import ConnectionLost, ReplyQueueLost
from tests.helpers import eventually

WAIT = 10.0


def success(task_id: str, value: Any = None) -> Tuple[Dict, Dict]:
    raw = {'task_id': task_id, 'status': 'SUCCESS', 'result': value}
    return raw, {'status': 'SUCCESS', 'result': value, 'task_id': task_id}


def started(task_id: str) -> Tuple[Dict, Dict]:
    raw = {'task_id': task_id, 'status': 'STARTED', 'result': None}
    return raw, {'status': 'STARTED', 'result': None, 'task_id': task_id}


def progress(task_id: str, step: int) -> Tuple[Dict, Dict]:
    raw = {'task_id': task_id, 'status': 'PROGRESS', 'result': step}
    return raw, {'status': 'PROGRESS', 'result': step, 'task_id': task_id}


class Waiter(threading.Thread):
    """``table.wait(task_id, timeout)`` on its own thread; ``meta``/``error`` when done."""

    def __init__(self, table: PendingTable, task_id: str, timeout: float = WAIT) -> None:
        super().__init__(daemon=True)
        self.table, self.task_id, self.timeout = table, task_id, timeout
        self.meta: Optional[Dict] = None
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.meta = self.table.wait(self.task_id, time.monotonic() + self.timeout)
        except BaseException as exc:  # recorded: the test asserts on it
            self.error = exc

    def result(self) -> Optional[Dict]:
        self.join(WAIT * 2)
        assert not self.is_alive(), f'the waiter on {self.task_id} hangs'
        if self.error is not None:
            raise self.error
        return self.meta


def waited(table: PendingTable, task_id: str, n: int = 1) -> bool:
    """True once ``n`` threads wait on ``task_id``'s slot (for ``eventually``)."""
    with table.mutex:
        slot = table._slots.get(task_id)
        return slot is not None and slot.waiters >= n


def drain(q: queue.SimpleQueue) -> List:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class Outcome(threading.Thread):
    """Runs ``fn()`` on its own thread; ``result()`` returns what it returned, or raises."""

    def __init__(self, fn: Any) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # recorded: the test asserts on it
            self.error = exc

    def result(self) -> Any:
        self.join(WAIT * 2)
        assert not self.is_alive(), 'the thread hangs'
        if self.error is not None:
            raise self.error
        return self.value


# ------------------------------------------------------------------ a watch misses nothing


def test_watch_reports_a_final_result_it_adopts_from_the_out_of_band_buffer():
    table = PendingTable()
    assert table.deliver('late', *success('late', 7)) == 'oob'  # its slot was dropped
    q, done = table.watch(['late'])
    reported = [(t, m and m['result'], e) for t, m, e in done + drain(q)]
    assert reported == [('late', 7, None)]
    table.unwatch(['late'], q)


def test_watch_reports_a_result_read_already_and_one_that_arrives_later():
    table = PendingTable()
    table.register('a')
    table.register('b')
    table.deliver('a', *success('a', 1))
    q, done = table.watch(['a', 'b'])
    table.deliver('b', *success('b', 2))
    reported = sorted((t, m['result']) for t, m, _ in done + drain(q))
    assert reported == [('a', 1), ('b', 2)]
    table.unwatch(['a', 'b'], q)
    assert table.sizes()['pending'] == 0 and table.sizes()['watched'] == 0


# ------------------------------------------------------------------ slots of waits


def test_timed_out_waits_on_ids_nothing_arrived_for_leave_no_slot():
    table = PendingTable()
    for i in range(1000):
        assert table.wait(f'nobody-{i}', time.monotonic()) is None
    assert table.sizes()['pending'] == 0


def test_a_timed_out_wait_keeps_the_slot_of_a_task_sent_from_here():
    table = PendingTable()
    table.register('sent')
    assert table.wait('sent', time.monotonic()) is None
    assert table.sizes()['pending'] == 1
    assert table.deliver('sent', *success('sent', 3)) == 'final'  # still expected
    assert table.wait('sent', time.monotonic())['result'] == 3


def test_a_wait_that_ends_keeps_a_slot_that_received_a_state():
    class Seen(Exception):
        pass

    def stop(raw: Dict) -> None:  # ends the wait once a state was shown
        raise Seen(raw['status'])

    table = PendingTable()
    done = queue.SimpleQueue()
    thread = threading.Thread(
        target=lambda: done.put(pytest.raises(Seen, table.wait, 'progress', None, stop)),
        daemon=True,
    )
    thread.start()
    eventually(lambda: waited(table, 'progress'))
    table.deliver('progress', *started('progress'))
    assert str(done.get(timeout=WAIT).value) == 'STARTED'
    assert table.sizes()['pending'] == 1 and table.sizes()['out_of_band'] == 0
    assert table.peek('progress')['status'] == 'STARTED'
    assert table.deliver('progress', *success('progress', 1)) == 'final'


def test_a_finished_watch_leaves_no_slot_for_ids_nothing_arrived_for():
    table = PendingTable()
    table.register('sent')
    q, done = table.watch(['sent', 'other-1', 'other-2'])
    assert done == [] and table.sizes()['pending'] == 3
    table.unwatch(['sent', 'other-1', 'other-2'], q)
    assert table.sizes()['pending'] == 1
    assert table.deliver('other-1', *success('other-1', 1)) == 'oob'
    assert table.deliver('sent', *success('sent', 1)) == 'final'


def test_a_new_slot_is_never_evicted_while_it_is_waited_on():
    table = PendingTable(pending_max=2)
    first, second = Waiter(table, 'a'), Waiter(table, 'b')
    eventually(lambda: waited(table, 'a') and waited(table, 'b'))
    third = Waiter(table, 'c')  # the table is full of waited slots
    eventually(lambda: waited(table, 'c'))
    assert table.deliver('c', *success('c', 'c')) == 'final'
    assert third.result()['result'] == 'c'
    for task_id, waiter in (('a', first), ('b', second)):
        table.deliver(task_id, *success(task_id, task_id))
        assert waiter.result()['result'] == task_id


def test_a_full_table_evicts_an_idle_expected_slot_not_the_waited_ones():
    table = PendingTable(pending_max=2)
    table.register('idle')
    waiter = Waiter(table, 'waited')
    eventually(lambda: waited(table, 'waited'))
    table.register('new')
    assert table.sizes()['pending'] == 2
    assert table.deliver('idle', *success('idle', 0)) == 'oob'  # evicted
    assert table.deliver('new', *success('new', 2)) == 'final'
    table.deliver('waited', *success('waited', 1))
    assert waiter.result()['result'] == 1


# ------------------------------------------------------------------ bytes


def test_results_read_once_are_bounded_by_bytes_as_well_as_by_count():
    table = PendingTable(cache_max=1000, cache_max_bytes=1000)
    for i in range(20):
        table.register(f't{i}')
        table.deliver(f't{i}', *success(f't{i}', i), size=300)
        assert table.cached(f't{i}')['result'] == i
    sizes = table.sizes()
    assert sizes['cached'] == 3 and sizes['cached_bytes'] == 900
    assert sizes['unread'] == 0 and sizes['unread_bytes'] == 0
    assert table.cached('t19')['result'] == 19 and table.cached('t0') is None


def test_a_result_larger_than_the_byte_bound_is_handed_to_its_waiter_and_not_kept():
    table = PendingTable(cache_max_bytes=1000)
    table.register('big')
    waiter = Waiter(table, 'big')
    eventually(lambda: waited(table, 'big'))
    table.deliver('big', *success('big', 'x' * 5000), size=5000)
    assert waiter.result()['result'] == 'x' * 5000
    sizes = table.sizes()
    kept = (sizes['cached'], sizes['cached_bytes'], sizes['unread'], sizes['pending'])
    assert kept == (0, 0, 0, 0)


def test_a_poll_leaves_an_unread_result_larger_than_the_bound_for_the_next_get():
    table = PendingTable(cache_max_bytes=1000)
    table.register('big')
    table.deliver('big', *success('big', 'big'), size=5000)
    assert table.sizes()['unread_bytes'] == 5000
    assert table.peek('big')['status'] == 'SUCCESS'  # AsyncResult.state
    assert table.cached('big', poll=True)['result'] == 'big'  # get_task_meta
    assert table.wait('big', time.monotonic())['result'] == 'big'  # get(): read, not kept
    assert table.peek('big') is None
    assert table.sizes()['unread_bytes'] == 0 and table.sizes()['cached_bytes'] == 0


def test_unread_results_are_never_dropped_for_bytes_but_push_read_ones_out():
    table = PendingTable(cache_max_bytes=1000)
    for i in range(3):
        table.register(f'read-{i}')
        table.deliver(f'read-{i}', *success(f'read-{i}', i), size=300)
        table.cached(f'read-{i}')
    for i in range(5):
        table.register(f'unread-{i}')
        table.deliver(f'unread-{i}', *success(f'unread-{i}', i), size=300)
    sizes = table.sizes()
    assert sizes['unread'] == 5 and sizes['unread_bytes'] == 1500
    assert sizes['cached'] == 1 and table.cached('read-2')['result'] == 2  # the last read
    read = [table.wait(f'unread-{i}', time.monotonic())['result'] for i in range(5)]
    assert read == list(range(5))
    assert table.sizes()['cached_bytes'] <= 1000


def test_forget_returns_the_bytes_of_what_it_drops():
    table = PendingTable()
    table.register('a')
    table.deliver('a', *success('a'), size=100)
    table.deliver('foreign', *success('foreign'), size=50)
    table.forget('a')
    table.forget('foreign')
    sizes = table.sizes()
    assert (sizes['unread_bytes'], sizes['out_of_band_bytes']) == (0, 0)


def test_result_cache_max_bytes_defaults_to_64_mib_and_must_be_a_positive_integer():
    assert Settings().result_cache_max_bytes == 64 * 1024 * 1024
    assert Settings(result_cache_max_bytes=1).result_cache_max_bytes == 1
    for bad in (0, -1, 1.5, 'big', True):
        with pytest.raises((TypeError, ValueError), match='result_cache_max_bytes'):
            Settings(result_cache_max_bytes=bad)


# ------------------------------------------------------------------ a given-up link


def lost(ids: List[str]) -> ConnectionLost:
    return ConnectionLost(f'gave up; {len(ids)} task(s)')


def test_after_the_link_gave_up_a_wait_on_a_new_id_is_told_at_once():
    table = PendingTable()
    table.fail_pending(lost, sticky=True)
    with pytest.raises(ConnectionLost):
        table.wait('new', time.monotonic() + WAIT)
    assert table.sizes()['pending'] == 0


def test_clearing_the_errors_of_a_given_up_link_lets_waits_wait_and_a_new_give_up_wake_them():
    table = PendingTable()
    table.register('sent')
    table.fail_pending(lost, sticky=True)
    table.clear_errors(ConnectionLost)  # a new connection cycle starts
    assert table.down is None
    waiters = [Waiter(table, 'sent'), Waiter(table, 'never-sent')]
    eventually(lambda: waited(table, 'sent') and waited(table, 'never-sent'))
    table.fail_pending(lost, sticky=True)  # ... and gives up too
    for waiter in waiters:
        with pytest.raises(ConnectionLost):
            waiter.result()


# ------------------------------------------------------------------ watchers


def test_a_watcher_is_told_of_one_failed_task_and_of_every_task_of_a_failed_table():
    table = PendingTable()
    for t in ('a', 'b', 'c'):
        table.register(t)
    q, done = table.watch(['a', 'b', 'c'])
    assert done == []
    refused = RuntimeError('cannot decode a')
    assert table.fail_one('a', refused) is True
    ids = table.fail_pending(lost)
    assert sorted(ids) == ['b', 'c']  # 'a' has its error already
    reported = drain(q)
    assert reported[0] == ('a', None, refused)
    assert sorted(t for t, _, _ in reported[1:]) == ['b', 'c']
    assert all(m is None and isinstance(e, ConnectionLost) for _, m, e in reported[1:])
    table.unwatch(['a', 'b', 'c'], q)


def test_watch_reports_an_error_already_on_a_slot_with_the_known_outcomes():
    table = PendingTable()
    table.register('failed')
    table.fail_pending(lost)
    q, done = table.watch(['failed'])
    assert [(t, m, type(e)) for t, m, e in done] == [('failed', None, ConnectionLost)]
    table.unwatch(['failed'], q)


def test_every_watcher_of_a_task_is_told_and_one_that_unwatched_is_not():
    table = PendingTable()
    table.register('t')
    first, _ = table.watch(['t'])
    second, _ = table.watch(['t'])
    table.unwatch(['t'], first)
    table.deliver('t', *success('t', 1))
    assert drain(first) == []
    assert [(t, m['result'], e) for t, m, e in drain(second)] == [('t', 1, None)]
    table.unwatch(['t'], second)
    assert table.sizes()['watched'] == 0


def test_a_watcher_hears_each_of_many_results_once_as_another_thread_delivers_them():
    table = PendingTable()
    ids = [f't{i}' for i in range(300)]
    for t in ids:
        table.register(t)
    q, done = table.watch(ids)
    assert done == []

    def deliver() -> None:
        for t in reversed(ids):
            table.deliver(t, *started(t))
            table.deliver(t, *success(t, t))

    threading.Thread(target=deliver, daemon=True).start()
    heard = [q.get(timeout=WAIT) for _ in ids]
    assert sorted(t for t, _, _ in heard) == sorted(ids)
    assert all(m['result'] == t and e is None for t, m, e in heard)
    assert drain(q) == []
    table.unwatch(ids, q)
    assert table.sizes()['pending'] == 0 and table.sizes()['watched'] == 0


# ------------------------------------------------------------------ history, shown to on_message


class Shown:
    """An ``on_message`` recording the status (and result) of every raw state it is shown."""

    def __init__(self) -> None:
        self.states: List[Any] = []

    def __call__(self, raw: Dict) -> None:
        self.states.append((raw['status'], raw['result']))


def test_a_waiter_is_shown_the_kept_history_first_then_each_new_state_once():
    table = PendingTable()
    table.register('t')
    table.deliver('t', *started('t'))
    table.deliver('t', *progress('t', 1))
    shown = Shown()
    waiter = Outcome(lambda: table.wait('t', time.monotonic() + WAIT, shown))
    eventually(lambda: waited(table, 't'))
    table.deliver('t', *progress('t', 2))
    table.deliver('t', *success('t', 'done'))
    assert waiter.result()['result'] == 'done'
    assert shown.states == [
        ('STARTED', None),
        ('PROGRESS', 1),
        ('PROGRESS', 2),
        ('SUCCESS', 'done'),
    ]


def test_only_the_last_history_max_states_are_kept_for_a_later_waiter():
    table = PendingTable(history_max=3)
    table.register('t')
    for step in range(5):
        table.deliver('t', *progress('t', step))
    assert table.sizes()['history_max_len'] == 3
    table.deliver('t', *success('t', 'done'))
    shown = Shown()
    assert table.wait('t', time.monotonic(), shown)['result'] == 'done'
    assert shown.states == [('PROGRESS', 3), ('PROGRESS', 4), ('SUCCESS', 'done')]


def test_states_before_a_final_one_nobody_waited_for_are_replayed_to_the_first_wait_only():
    table = PendingTable()
    table.register('t')
    table.deliver('t', *started('t'))
    table.deliver('t', *success('t', 1))
    assert table.sizes()['replay'] == 1
    first, second = Shown(), Shown()
    assert table.wait('t', time.monotonic(), first)['result'] == 1
    assert table.wait('t', time.monotonic(), second)['result'] == 1
    assert first.states == [('STARTED', None), ('SUCCESS', 1)]
    assert second.states == [('SUCCESS', 1)]
    assert table.sizes()['replay'] == 0


def test_a_final_state_alone_keeps_nothing_to_replay():
    table = PendingTable()
    table.register('t')
    table.deliver('t', *success('t', 1))
    assert table.sizes()['replay'] == 0
    shown = Shown()
    table.wait('t', time.monotonic(), shown)
    assert shown.states == [('SUCCESS', 1)]


def test_the_replay_buffer_keeps_the_states_of_the_newest_oob_max_tasks():
    table = PendingTable(oob_max=2)
    for t in ('a', 'b', 'c'):
        table.register(t)
        table.deliver(t, *started(t))
        table.deliver(t, *success(t, t))
    assert table.sizes()['replay'] == 2
    shown = {t: Shown() for t in ('a', 'b', 'c')}
    for t in ('a', 'b', 'c'):
        table.wait(t, time.monotonic(), shown[t])
    assert [len(shown[t].states) for t in ('a', 'b', 'c')] == [1, 2, 2]


def test_a_wait_adopts_the_states_buffered_out_of_band_and_shows_them_all():
    table = PendingTable()
    assert table.deliver('foreign', *started('foreign')) == 'oob'
    assert table.deliver('foreign', *success('foreign', 9), size=40) == 'oob'
    assert table.sizes()['out_of_band_bytes'] == 40
    shown = Shown()
    assert table.wait('foreign', time.monotonic(), shown)['result'] == 9
    assert shown.states == [('STARTED', None), ('SUCCESS', 9)]
    sizes = table.sizes()
    assert (sizes['out_of_band'], sizes['out_of_band_bytes'], sizes['cached_bytes']) == (0, 0, 40)


def test_registering_adopts_the_out_of_band_result_as_unread_with_its_bytes():
    table = PendingTable()
    table.deliver('early', *success('early', 1), size=100)
    table.register('early')
    sizes = table.sizes()
    assert (sizes['out_of_band_bytes'], sizes['unread'], sizes['unread_bytes']) == (0, 1, 100)
    assert table.cached('early')['result'] == 1


# ------------------------------------------------------------------ failing and clearing


def test_fail_pending_for_waited_tasks_only_leaves_the_others_to_their_results():
    table = PendingTable()
    table.register('waited')
    table.register('idle')
    waiter = Waiter(table, 'waited')
    eventually(lambda: waited(table, 'waited'))
    asked: List[List[str]] = []

    def make_error(ids: List[str]) -> ConnectionLost:
        asked.append(ids)
        return lost(ids)

    assert table.fail_pending(make_error, only_waited=True) == ['waited']
    assert asked == [['waited']]
    with pytest.raises(ConnectionLost):
        waiter.result()
    assert table.peek('idle') is None  # no error on it
    table.deliver('idle', *success('idle', 2))
    assert table.wait('idle', time.monotonic())['result'] == 2


def test_fail_pending_of_a_lost_reply_queue_fails_its_tasks_and_leaves_the_new_queues():
    table = PendingTable()
    table.register('old', queue='q1')
    table.register('new', queue='q2')
    old_waiter, new_waiter = Waiter(table, 'old'), Waiter(table, 'new')
    eventually(lambda: waited(table, 'old') and waited(table, 'new'))
    failed = table.fail_pending(
        lambda ids: ReplyQueueLost('q1', ids, 'is lost: its home node n1 is down'), queue='q1'
    )
    assert failed == ['old']
    with pytest.raises(ReplyQueueLost) as raised:
        old_waiter.result()
    assert raised.value.task_ids == ('old',)
    table.deliver('new', *success('new', 3))
    assert new_waiter.result()['result'] == 3


def test_fail_pending_with_nothing_pending_makes_no_error_unless_sticky():
    table = PendingTable()
    asked: List[List[str]] = []

    def make_error(ids: List[str]) -> ConnectionLost:
        asked.append(ids)
        return lost(ids)

    assert table.fail_pending(make_error) == [] and asked == [] and table.down is None
    assert table.fail_pending(make_error, sticky=True) == [] and asked == [[]]
    assert isinstance(table.down, ConnectionLost)


def test_fail_one_fails_a_pending_task_only():
    table = PendingTable()
    assert table.fail_one('unknown', RuntimeError('x')) is False
    assert table.fail_one(None, RuntimeError('x')) is False
    table.register('t')
    assert table.fail_one('t', RuntimeError('undecodable')) is True
    with pytest.raises(RuntimeError, match='undecodable'):
        table.wait('t', time.monotonic() + WAIT)
    with pytest.raises(RuntimeError, match='undecodable'):
        table.peek('t')


def test_a_failed_task_fails_later_waits_at_once_until_errors_of_its_type_are_cleared():
    table = PendingTable()
    table.register('t')
    assert table.fail_pending(lost) == ['t']
    with pytest.raises(ConnectionLost):
        table.wait('t', time.monotonic() + WAIT)
    table.clear_errors(RuntimeError)  # another type: kept
    with pytest.raises(ConnectionLost):
        table.wait('t', time.monotonic() + WAIT)
    table.clear_errors(ConnectionLost)
    assert table.wait('t', time.monotonic()) is None  # waits again (and times out)
    table.deliver('t', *success('t', 5))
    assert table.wait('t', time.monotonic())['result'] == 5


def test_clear_errors_keeps_the_error_of_a_slot_someone_is_watching():
    table = PendingTable()
    table.register('watched')
    table.register('idle')
    q, _ = table.watch(['watched'])
    table.fail_pending(lost)
    table.clear_errors(ConnectionLost)
    with pytest.raises(ConnectionLost):
        table.wait('watched', time.monotonic() + WAIT)
    assert table.wait('idle', time.monotonic()) is None
    table.unwatch(['watched'], q)


def test_a_final_result_beats_the_error_left_on_its_slot():
    table = PendingTable()
    table.register('t')
    table.fail_pending(lost)
    assert table.deliver('t', *success('t', 1)) == 'final'
    assert table.wait('t', time.monotonic() + WAIT)['result'] == 1


# ------------------------------------------------------------------ forget and discard


def test_forget_drops_results_and_an_idle_slot_but_not_a_slot_someone_waits_on():
    table = PendingTable()
    table.register('read')
    table.deliver('read', *success('read', 1))
    table.cached('read')
    table.register('unread')
    table.deliver('unread', *started('unread'))
    table.deliver('unread', *success('unread', 2))
    table.register('idle')
    waiter = Waiter(table, 'waited')
    eventually(lambda: waited(table, 'waited'))
    for t in ('read', 'unread', 'idle', 'waited'):
        table.forget(t)
    sizes = table.sizes()
    assert (sizes['cached'], sizes['unread'], sizes['replay'], sizes['pending']) == (0, 0, 0, 1)
    assert table.deliver('idle', *started('idle')) == 'oob'  # no longer expected
    assert table.deliver('read', *success('read', 1)) == 'oob'  # no longer a duplicate
    table.deliver('waited', *success('waited', 3))
    assert waiter.result()['result'] == 3


def test_discard_stops_expecting_an_idle_task_so_its_late_result_is_out_of_band():
    table = PendingTable()
    table.register('idle')
    table.register('waited')
    waiter = Waiter(table, 'waited')
    eventually(lambda: waited(table, 'waited'))
    table.discard('idle')
    table.discard('waited')
    table.discard('never')
    assert table.sizes()['pending'] == 1  # the waited one stays
    assert table.deliver('idle', *success('idle')) == 'oob'
    assert table.deliver('waited', *success('waited', 4)) == 'final'
    assert waiter.result()['result'] == 4


def test_discard_leaves_a_final_result_in_place():
    table = PendingTable()
    table.register('t')
    table.deliver('t', *success('t', 1))
    table.discard('t')
    assert table.cached('t')['result'] == 1


# ------------------------------------------------------------------ bounds


def test_the_result_cache_drops_the_least_recently_read_result_first():
    table = PendingTable(cache_max=2)
    for t in ('a', 'b', 'c'):
        table.register(t)
        table.deliver(t, *success(t, t))
    assert table.cached('a')['result'] == 'a'
    assert table.cached('b')['result'] == 'b'
    assert table.cached('a')['result'] == 'a'  # read again: the most recent
    assert table.cached('c')['result'] == 'c'  # 'b' goes
    assert table.cached('b') is None
    assert table.cached('a')['result'] == 'a' and table.sizes()['cached'] == 2


def test_a_redelivered_final_state_is_counted_as_a_duplicate_and_dropped():
    table = PendingTable()
    table.register('t')
    table.deliver('t', *success('t', 'first'), size=10)
    assert table.deliver('t', *success('t', 'second'), size=10) == 'duplicate'
    table.cached('t')
    assert table.deliver('t', *success('t', 'third'), size=10) == 'duplicate'
    sizes = table.sizes()
    assert (sizes['duplicates'], sizes['cached_bytes']) == (2, 10)
    assert table.cached('t')['result'] == 'first'


def test_unread_results_past_pending_max_drop_the_oldest_with_its_bytes():
    table = PendingTable(pending_max=2)
    for t in ('a', 'b', 'c'):
        table.register(t)
        table.deliver(t, *success(t, t), size=100)
    sizes = table.sizes()
    assert (sizes['unread'], sizes['unread_bytes']) == (2, 200)
    assert table.cached('a') is None and table.cached('c')['result'] == 'c'


def test_the_out_of_band_buffer_keeps_the_newest_oob_max_ids_and_history_max_states_each():
    table = PendingTable(oob_max=2, history_max=2)
    for t in ('a', 'b', 'c'):
        table.deliver(t, *progress(t, 0), size=10)
    for step in (1, 2):
        table.deliver('c', *progress('c', step), size=10)
    sizes = table.sizes()
    assert (sizes['out_of_band'], sizes['out_of_band_bytes']) == (2, 30)  # b: 1, c: 2 kept
    assert table.peek('a') is None and table.peek('c')['result'] == 2
    shown = Shown()
    assert table.wait('c', time.monotonic(), shown) is None
    assert shown.states == [('PROGRESS', 1), ('PROGRESS', 2)]
