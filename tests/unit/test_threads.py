"""pika_rpc._threads.Counters: named counters several threads add to (no broker).

Fork safety of the counters is tested by really forking in tests/faults/test_fork_locks.py.
"""
from __future__ import annotations

import threading

import pytest

from pika_rpc._threads import Counters


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
