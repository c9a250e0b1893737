"""Apps are cheap: App objects with the same result settings share one reply queue.

One App per request, per thread or per forked process is a common pattern; each used to own
a reply queue until the process exited. The backends of Apps with the same settings now
share one, reference-counted (``pika_rpc/_hub.py``): ``close()`` wakes only its own App's
waiters, the last user deletes the queue, and an App garbage-collected without ``close()``
lets go of it. Results are stored by a ``worker`` App with other settings (its own queue).
"""

from __future__ import annotations

import gc
import json
import os
import threading
import traceback
from typing import Any, Callable, Dict, Iterator, List

import pytest

from pika_rpc import App
from pika_rpc.errors import ClosedError
from tests.helpers import eventually, list_queues

WAIT = 30.0


@pytest.fixture
def make_app(amqp_url: str, unique_name: str, raw_channel: Any) -> Iterator[Callable[[], App]]:
    """``make_app()``: an App with this test's settings (all of them share a reply queue)."""
    made: List[App] = []

    def make() -> App:
        app = App(broker=amqp_url, task_default_queue=unique_name, result_expires=120)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()
    raw_channel.queue_delete(unique_name)


@pytest.fixture
def worker(amqp_url: str) -> Iterator[App]:
    """Stores results; other settings, so a reply queue of its own."""
    app = App(broker=amqp_url, result_expires=119)
    yield app
    app.close()


def store(worker: App, oid: str, task_id: str, value: Any) -> None:
    worker.backend.mark_as_done(task_id, value, request={'id': task_id, 'reply_to': oid})


def waiting(app: App, task_id: str, n: int = 1) -> bool:
    slot = app.backend._pending._slots.get(task_id)
    return slot is not None and slot.waiters >= n


class Waiter(threading.Thread):
    def __init__(self, app: App, task_id: str) -> None:
        super().__init__(name=f'waiter-{task_id}')
        self.result = app.AsyncResult(task_id)
        self.outcome: List[Any] = []
        self.start()

    def run(self) -> None:
        try:
            self.outcome.append(self.result.get(timeout=WAIT))
        except BaseException as exc:  # asserted by the test
            self.outcome.append(exc)


def test_thirty_apps_hold_one_reply_queue_and_the_last_close_deletes_it(
    make_app: Callable[[], App], worker: App
) -> None:
    apps = [make_app() for _ in range(30)]
    results = [app.send_task('tasks.add', (i, i)) for i, app in enumerate(apps)]
    oids = {app.backend.oid for app in apps}
    assert len(oids) == 1 and worker.backend.oid not in oids  # was 30 queues
    oid = oids.pop()
    assert oid in list_queues()
    for app in apps[:-1]:
        app.close()
    assert oid in list_queues()  # the last App still uses it
    store(worker, oid, results[-1].id, 'still here')
    assert results[-1].get(timeout=WAIT) == 'still here'
    apps[-1].close()
    assert eventually(lambda: oid not in list_queues(), timeout=WAIT)


def test_closing_one_app_wakes_only_its_own_waiters(
    make_app: Callable[[], App], worker: App
) -> None:
    a, b = make_app(), make_app()
    ta, tb = a.send_task('tasks.add', (1, 1)), b.send_task('tasks.add', (2, 2))
    oid = a.backend.oid
    assert b.backend.oid == oid
    a_own, a_shared, b_own, b_shared = (
        Waiter(a, ta.id),
        Waiter(a, tb.id),  # the same task through both Apps
        Waiter(b, tb.id),
        Waiter(b, ta.id),
    )
    assert eventually(lambda: waiting(a, ta.id, 2) and waiting(b, tb.id, 2), timeout=WAIT)
    a.close()
    a_own.join(WAIT)
    a_shared.join(WAIT)
    assert isinstance(a_own.outcome[0], ClosedError) and 'closed' in str(a_own.outcome[0])
    assert isinstance(a_shared.outcome[0], ClosedError)
    assert b_own.is_alive() and b_shared.is_alive()  # B's waiters still wait, on both tasks
    assert oid in list_queues()
    store(worker, oid, tb.id, 'for b')
    store(worker, oid, ta.id, 'for a, read by b')
    b_own.join(WAIT)
    b_shared.join(WAIT)
    assert b_own.outcome == ['for b'] and b_shared.outcome == ['for a, read by b']


def _app_left_unclosed(amqp_url: str, queue: str) -> str:
    app = App(broker=amqp_url, task_default_queue=queue, result_expires=120)
    app.send_task('tasks.add', (1, 1))
    return app.backend.oid


def test_apps_garbage_collected_without_close_let_go_of_the_queue(
    amqp_url: str, unique_name: str, make_app: Callable[[], App]
) -> None:
    keeper = make_app()
    oid = _app_left_unclosed(amqp_url, unique_name)
    assert _app_left_unclosed(amqp_url, unique_name) == oid == keeper.backend.oid
    gc.collect()
    hub = keeper.backend._hub
    assert eventually(lambda: hub.users == 1, timeout=WAIT)  # the two collected ones let go
    assert oid in list_queues()
    keeper.close()
    assert eventually(lambda: oid not in list_queues(), timeout=WAIT)

    alone = _app_left_unclosed(amqp_url, unique_name)  # a new queue: nobody else uses it
    assert alone != oid and alone in list_queues()
    gc.collect()
    assert eventually(lambda: alone not in list_queues(), timeout=WAIT)


def test_many_threads_making_and_closing_apps_share_one_queue_and_every_result_arrives(
    amqp_url: str, unique_name: str, make_app: Callable[[], App], worker: App
) -> None:
    keeper = make_app()
    oid = keeper.backend.oid
    threads, rounds = 12, 5
    barrier = threading.Barrier(threads)
    seen: Dict[str, List[Any]] = {}
    errors: List[str] = []

    def run(n: int) -> None:
        got = seen.setdefault(f't{n}', [])
        try:
            barrier.wait(WAIT)
            for i in range(rounds):
                app = App(broker=amqp_url, task_default_queue=unique_name, result_expires=120)
                try:
                    result = app.send_task('tasks.add', (n, i))
                    store(worker, app.backend.oid, result.id, [n, i])
                    got.append((app.backend.oid, result.get(timeout=WAIT)))
                finally:
                    app.close()
        except BaseException:
            errors.append(traceback.format_exc())

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(WAIT * 2)
    assert not any(t.is_alive() for t in workers) and errors == [], errors[:1]
    for n in range(threads):
        assert seen[f't{n}'] == [(oid, [n, i]) for i in range(rounds)]
    assert oid in list_queues() and keeper.backend._hub.users == 1
    keeper.close()
    assert eventually(lambda: oid not in list_queues(), timeout=WAIT)


def test_a_forked_child_shares_a_queue_of_its_own_and_the_parents_is_untouched(
    make_app: Callable[[], App], worker: App
) -> None:
    p1, p2 = make_app(), make_app()
    sent = p1.send_task('tasks.add', (1, 1))
    parent_oid = p1.backend.oid
    assert p2.backend.oid == parent_oid
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, then _exit
        code = 1
        try:
            os.close(read_end)
            c1, c2 = p1.backend.oid, p2.backend.oid
            result = p1.send_task('tasks.add', (2, 2))
            p2.backend.mark_as_done(result.id, 'child', request={'id': result.id, 'reply_to': c1})
            value = result.get(timeout=WAIT)
            report = {'c1': c1, 'c2': c2, 'value': value, 'in_queues': c1 in list_queues()}
            p1.close()
            p2.close()
            report['deleted'] = bool(eventually(lambda: c1 not in list_queues(), timeout=WAIT))
            code = 0
        except BaseException:
            report = {'error': traceback.format_exc()}
        finally:
            os.write(write_end, json.dumps(report).encode() + b'\n')
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        report = json.loads(reader.readline() or '{"error": "no report"}')
    _, status = os.waitpid(pid, 0)
    assert 'error' not in report, report.get('error')
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert report['c1'] == report['c2'] != parent_oid  # one queue in the child, its own
    assert report['value'] == 'child' and report['in_queues'] and report['deleted']
    assert parent_oid in list_queues()  # the child's closes left the parent's queue alone
    store(worker, parent_oid, sent.id, 'parent')
    assert sent.get(timeout=WAIT) == 'parent'
    assert p2.backend.oid == parent_oid


def test_closing_one_app_ends_only_its_own_get_many(
    make_app: Callable[[], App], worker: App
) -> None:
    a, b = make_app(), make_app()
    task = a.send_task('tasks.add', (1, 1))
    outcomes: Dict[str, List[Any]] = {'a': [], 'b': []}

    def join(name: str, app: App) -> None:
        try:
            outcomes[name].extend(app.backend.get_many([task.id], timeout=WAIT))
        except BaseException as exc:  # asserted below
            outcomes[name].append(exc)

    threads = {n: threading.Thread(target=join, args=(n, app)) for n, app in (('a', a), ('b', b))}
    for t in threads.values():
        t.start()
    assert eventually(lambda: waiting(a, task.id, 2), timeout=WAIT)  # both watch it
    a.close()
    threads['a'].join(WAIT)
    assert len(outcomes['a']) == 1 and isinstance(outcomes['a'][0], ClosedError)
    assert threads['b'].is_alive()
    store(worker, b.backend.oid, task.id, 2)
    threads['b'].join(WAIT)
    assert [(t, meta['result']) for t, meta in outcomes['b']] == [(task.id, 2)]
