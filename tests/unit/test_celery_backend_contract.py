"""What the Celery plug-in relies on in Celery itself, checked on the installed release.

``scripts/interop_matrix.py`` runs this on Celery 5.5, 5.6 and 5.7. No broker is needed: the
plug-in connects lazily, on the first task sent or result stored.

* the one Celery private the plug-in touches: ``app.thread_oid`` caches the thread's reply
  queue name as ``app._local.oid`` (a ``threading.local``); a forked child that drops it gets a
  name of its own (the pid is part of it);
* ``thread_safe`` makes Celery keep one backend for every thread;
* Celery's ``AsyncResult.get()`` calls ``add_pending_result`` and ``wait_for_pending`` with
  the arguments the plug-in accepts.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import threading
from typing import Any, Iterator, List

import pytest

pytest.importorskip('celery', reason='the plug-in contract needs Celery: pip install celery')

from celery import Celery  # noqa: E402
from celery.result import AsyncResult  # noqa: E402

from pika_rpc.celery_backend import PikaRPCBackend  # noqa: E402

DOTTED = 'pika_rpc.celery_backend:PikaRPCBackend'


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery('contract', broker='amqp://guest:guest@127.0.0.1:5672//', backend=DOTTED)
    yield app
    app.close()


def test_thread_oid_is_cached_in_app_local_oid(app: Celery) -> None:
    assert isinstance(app._local, threading.local)
    oid = app.thread_oid
    assert vars(app._local).get('oid') == oid  # the private the fork reset deletes
    other: List[str] = []
    t = threading.Thread(target=lambda: other.append(app.thread_oid))
    t.start()
    t.join(10)
    assert other and other[0] != oid  # one queue name per thread


def test_forked_child_gets_a_thread_oid_of_its_own(app: Celery) -> None:
    backend = app.backend
    assert isinstance(backend, PikaRPCBackend)
    parent_oid = app.thread_oid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            out = {'oid': app.thread_oid, 'backend_oid': app.backend.oid}
        except BaseException as exc:
            out = {'error': repr(exc)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert 'error' not in child, child
    assert child['oid'] != parent_oid
    assert child['backend_oid'] == child['oid']
    assert app.thread_oid == parent_oid  # the parent keeps its own


def test_thread_safe_backend_is_shared_by_every_thread(app: Celery) -> None:
    seen: List[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(app.backend)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 4 and all(b is seen[0] for b in seen)
    assert seen[0].thread_safe is True
    assert seen[0].as_uri() == 'pika-rpc://'
    assert seen[0].is_async is True


def test_async_result_calls_what_the_plugin_overrides(app: Celery) -> None:
    source = inspect.getsource(AsyncResult.get)
    assert 'self.backend.add_pending_result(self)' in source
    assert 'self.backend.wait_for_pending(' in source
    accepted = inspect.signature(PikaRPCBackend.wait_for_pending).parameters
    for name in ('timeout', 'interval', 'on_interval', 'no_ack', 'propagate', 'callback'):
        assert name in source and name in accepted
    assert 'on_message' in accepted
    # Celery's bookkeeping of waiting results is replaced, under a lock, by the plug-in's.
    for method in ('add_pending_result', 'remove_pending_result', 'iter_native', 'get_task_meta'):
        assert method in vars(PikaRPCBackend), method
    assert 'remove_pending_result' in inspect.getsource(AsyncResult.__del__)


def test_a_pickled_backend_comes_back_as_the_apps_one(app: Celery) -> None:
    backend = app.backend
    app.set_current()
    assert pickle.loads(pickle.dumps(backend)) is backend
    result = app.AsyncResult('some-task-id')
    assert pickle.loads(pickle.dumps(result)).backend is backend
    # The same class made again for the app (Celery's unlocked app.backend) is the same too.
    assert PikaRPCBackend(app=app, url='pika-rpc://') is backend
