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
from pika_rpc.errors import ConnectionLost

from tests.helpers import eventually

WAIT = 10.0


def success(task_id: str, value: Any = None) -> Tuple[Dict, Dict]:
    raw = {'task_id': task_id, 'status': 'SUCCESS', 'result': value}
    return raw, {'status': 'SUCCESS', 'result': value, 'task_id': task_id}


def started(task_id: str) -> Tuple[Dict, Dict]:
    raw = {'task_id': task_id, 'status': 'STARTED', 'result': None}
    return raw, {'status': 'STARTED', 'result': None, 'task_id': task_id}


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
        except BaseException as exc:      # recorded: the test asserts on it
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


# ------------------------------------------------------------------ a watch misses nothing

def test_watch_reports_a_final_result_it_adopts_from_the_out_of_band_buffer():
    table = PendingTable()
    assert table.deliver('late', *success('late', 7)) == 'oob'   # its slot was dropped
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
    assert table.deliver('sent', *success('sent', 3)) == 'final'     # still expected
    assert table.wait('sent', time.monotonic())['result'] == 3


def test_a_wait_that_ends_keeps_a_slot_that_received_a_state():
    class Seen(Exception):
        pass

    def stop(raw: Dict) -> None:              # ends the wait once a state was shown
        raise Seen(raw['status'])
    table = PendingTable()
    done = queue.SimpleQueue()
    thread = threading.Thread(target=lambda: done.put(pytest.raises(Seen, table.wait, 'progress',
                                                                    None, stop)), daemon=True)
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
    third = Waiter(table, 'c')                         # the table is full of waited slots
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
    assert table.deliver('idle', *success('idle', 0)) == 'oob'       # evicted
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
    assert table.peek('big')['status'] == 'SUCCESS'               # AsyncResult.state
    assert table.cached('big', poll=True)['result'] == 'big'      # get_task_meta
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
    assert sizes['cached'] == 1 and table.cached('read-2')['result'] == 2   # the last read
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
    table.clear_errors(ConnectionLost)                  # a new connection cycle starts
    assert table.down is None
    waiters = [Waiter(table, 'sent'), Waiter(table, 'never-sent')]
    eventually(lambda: waited(table, 'sent') and waited(table, 'never-sent'))
    table.fail_pending(lost, sticky=True)               # ... and gives up too
    for waiter in waiters:
        with pytest.raises(ConnectionLost):
            waiter.result()
