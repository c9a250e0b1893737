"""Process pools forked from a process whose link is running (fork: the child drops the
inherited connection unused and starts its own).

``multiprocessing.Pool`` and ``ProcessPoolExecutor`` with the *fork* start method: the
parent has sent tasks (its I/O thread is consuming its reply queue) when the pool forks;
the pool processes store the results to the parent's reply queue with
``store_result(..., request={'reply_to': parent_oid, 'correlation_id': task_id})``, each on
a connection of its own. Half the tasks are sent by the parent, half by pool processes
(``reply_to`` = the parent's queue; the parent reads those as out-of-band results).
Every result reaches the parent once, correct, and the parent's link never reconnected.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, List, Optional, Tuple

import pytest

from pika_rpc import App, states
from tests.integration.worker_support import app  # noqa: F401

TASKS = 100  # per origin: the parent sends TASKS, the pool processes send TASKS
PROCESSES = 4

#: The test's App, set before the pool forks; each pool process inherits it.
_APP: Optional[App] = None


def _send(job: Tuple[int, str, str]) -> str:
    """In a pool process: send a task whose result goes to the parent's reply queue."""
    i, reply_to, queue = job
    # ignore_result: this process does not wait for it (no reply queue of its own); the
    # parent does.
    return _APP.send_task('pool.job', (i,), queue=queue, reply_to=reply_to, ignore_result=True).id


def _store(job: Tuple[str, int, str]) -> Tuple[int, str, str]:
    """In a pool process: store a task's result on this process's own connection."""
    task_id, value, reply_to = job
    backend = _APP.backend
    backend.store_result(
        task_id, value, states.SUCCESS, request={'reply_to': reply_to, 'correlation_id': task_id}
    )
    return os.getpid(), backend.oid, backend._get_link().name


def _run(kind: str, fn: Any, jobs: List[Any]) -> List[Any]:
    context = multiprocessing.get_context('fork')
    if kind == 'Pool':
        with context.Pool(PROCESSES) as pool:
            out = pool.map(fn, jobs, chunksize=5)
            pool.close()
            pool.join()
        return out
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as executor:
        return list(executor.map(fn, jobs, chunksize=5))


@pytest.mark.parametrize('kind', ['Pool', 'ProcessPoolExecutor'])
def test_forked_pool_processes_store_results_that_reach_the_parent_once(
    app: App, kind: str
) -> None:
    global _APP
    _APP = app
    queue = app.conf.task_default_queue  # nobody consumes it; deleted after the test
    parent_oid, parent_link = app.backend.oid, app.backend._get_link()
    sent_here = [app.send_task('pool.job', (i,)) for i in range(TASKS)]  # the link runs now
    try:
        sent_there = _run(kind, _send, [(TASKS + i, parent_oid, queue) for i in range(TASKS)])
        ids = [r.id for r in sent_here] + sent_there
        jobs = [(task_id, 10 * n, parent_oid) for n, task_id in enumerate(ids)]
        stored_by = _run(kind, _store, jobs)
    finally:
        _APP = None
    results = [app.AsyncResult(task_id) for task_id in ids]
    assert [r.get(timeout=30) for r in results] == [10 * n for n in range(2 * TASKS)]
    stats = app.backend.stats()
    assert stats['duplicates'] == 0 and stats['reconnects'] == 0
    assert app.backend.oid == parent_oid and app.backend._get_link() is parent_link
    pids = {pid for pid, _, _ in stored_by}
    assert os.getpid() not in pids and len(pids) >= 2
    for pid, oid, link_name in stored_by:
        assert oid != parent_oid and link_name.startswith(f'pika-rpc-io-{pid}-')
