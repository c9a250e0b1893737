"""After-fork reset under a real ``os.fork()`` and ``multiprocessing`` (fork start method).

The child never writes to the parent's socket, gets a new oid and reply queue, and starts
its own I/O thread on first use; the parent keeps working with its waiters intact.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

from pika_rpc import App
from tests.helpers import eventually, list_queues


def request_for(backend, task_id):
    return {'id': task_id, 'reply_to': backend.oid, 'correlation_id': task_id}


def _child_round_trip(app, parent_oid, write_fd):
    """In a forked child: send and receive a task of its own; report through the pipe."""
    code = 1
    try:
        backend = app.backend
        r = app.send_task('tasks.child', ())
        backend.mark_as_done(r.id, os.getpid(), request=request_for(backend, r.id))
        ok = r.get(timeout=20) == os.getpid() and backend.oid != parent_oid
        link = backend._get_link()
        ok = ok and link.pid == os.getpid()
        os.write(write_fd, f'{int(ok)} {backend.oid}\n'.encode())
        backend.close(timeout=5)
        code = 0
    finally:
        os._exit(code)


def test_fifty_forks_while_the_parent_has_waiters_each_child_gets_its_own_results(app):
    parent = app.backend
    parent_oid = parent.oid
    pending = [app.send_task('tasks.wait', ()) for _ in range(10)]
    got, errors, started = [], [], threading.Barrier(11)

    def waiter(result):
        started.wait(10)
        try:
            got.append(result.get(timeout=120))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(r,)) for r in pending]
    for t in threads:
        t.start()
    started.wait(10)
    reconnects_before = parent.stats()['reconnects']

    children, oids = [], set()
    for _ in range(50):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child_round_trip(app, parent_oid, write_fd)
        os.close(write_fd)
        children.append((pid, read_fd))
    for pid, read_fd in children:
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_fd) as f:
            line = f.read().split()
        assert status == 0 and line[0] == '1', (status, line)
        oids.add(line[1])
    assert len(oids) == 50 and parent_oid not in oids

    for r in pending:  # the parent still works
        parent.mark_as_done(r.id, r.id, request=request_for(parent, r.id))
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert errors == [] and sorted(got) == sorted(r.id for r in pending)
    assert parent.oid == parent_oid
    assert parent.stats()['reconnects'] == reconnects_before
    assert eventually(lambda: not (oids & set(list_queues())))  # children deleted theirs


def _pool_task(args):
    url, queue = args
    child = App(broker=url, task_default_queue=queue, result_expires=60)
    r = child.send_task('tasks.pool', ())
    child.backend.mark_as_done(r.id, 'ok', request=request_for(child.backend, r.id))
    try:
        return r.get(timeout=20), child.backend.oid, os.getpid()
    finally:
        child.close()


def _preloaded_task(_):
    """Uses the module-level backend created before the fork (the preload pattern)."""
    backend = _PRELOADED['app'].backend
    r = _PRELOADED['app'].send_task('tasks.pool', ())
    backend.mark_as_done(r.id, os.getpid(), request=request_for(backend, r.id))
    return r.get(timeout=20), backend.oid


_PRELOADED = {}


def test_a_backend_created_before_fork_works_in_multiprocessing_children(app):
    _PRELOADED['app'] = app
    parent_oid = app.backend.oid
    ctx = multiprocessing.get_context('fork')
    with ctx.Pool(4) as pool:
        results = pool.map(_preloaded_task, range(8), chunksize=1)
    oids = {oid for _value, oid in results}
    assert all(isinstance(value, int) for value, _ in results)
    assert parent_oid not in oids and 1 <= len(oids) <= 4
    r = app.send_task('tasks.after', ())  # the parent is untouched
    app.backend.mark_as_done(r.id, 1, request=request_for(app.backend, r.id))
    assert r.get(timeout=20) == 1


def test_children_of_a_fork_pool_each_use_their_own_app(app, amqp_url, unique_name):
    ctx = multiprocessing.get_context('fork')
    with ctx.Pool(2) as pool:
        results = pool.map(_pool_task, [(amqp_url, unique_name)] * 4)
    assert [v for v, _, _ in results] == ['ok'] * 4
    assert app.backend.oid not in {oid for _, oid, _ in results}
