"""Celery's ``t/integration/test_tasks.py`` for ``foreign_suites.py``: the three runs' suites.

Celery's own integration conftest needs Redis and runs its worker inside the test process;
this one runs the worker as a separate process and gives the fixtures the tests use
(``celery_session_app``, ``celery_session_worker``, ``app``, ``manager``), by two variables:

* ``FOREIGN_CLIENT``: ``celery`` (Celery's own client: the baseline) or ``pika`` (the tests'
  ``shared_task`` is pika_rpc's, so ``.delay()``/``get()`` are pika_rpc's App and results);
* ``FOREIGN_WORKER``: ``celery`` (a ``celery worker`` process, prefork, one child, on
  Celery's own copy of ``tasks.py``) or ``pika`` (pika_rpc's ``Worker``, one thread, in the
  test process).

Every run uses one fresh queue on the broker, deleted afterwards. The exclusions are the same
for every run, so the counts compare on the same set.
"""

from __future__ import annotations

from typing import Dict, List

CELERY_VERSION = '5.7.0'
_DIR = 't/integration'

#: The test's own files; ``_worker/`` holds Celery's unswapped copy for the worker process.
FILES = ('t/__init__.py', f'{_DIR}/__init__.py', f'{_DIR}/tasks.py', f'{_DIR}/test_tasks.py')
WORKER_FILES = ('t/__init__.py', f'{_DIR}/__init__.py', f'{_DIR}/tasks.py')

#: pydantic is not installed here: its tests are excluded, its model classes become plain.
PYDANTIC = (
    'from pydantic import BaseModel\n',
    'try:\n    from pydantic import BaseModel\nexcept ImportError:  # its tests are excluded\n'
    '    BaseModel = object\n',
)

#: Celery refuses ``pydantic=True`` without pydantic, at the worker's start.
PYDANTIC_TASKS = ('@shared_task(pydantic=True)\n', '@shared_task  # pydantic=True: not installed\n')

#: (path, old, new) for the pika_rpc client: only names.
PIKA_SWAPS = (
    (
        f'{_DIR}/tasks.py',
        'from celery import Signature, Task, chain, chord, group, shared_task\n',
        'from celery import Signature, Task, chain, chord, group\n'
        'from pika_rpc import shared_task\n',
    ),
    # Only the excluded replacement tests use it; pika_rpc refuses task classes (``base``).
    (
        f'{_DIR}/tasks.py',
        '@shared_task(bind=True, base=StampedTaskOnReplace)\n',
        '@shared_task(bind=True)  # base=StampedTaskOnReplace: no task classes in pika_rpc\n',
    ),
    (f'{_DIR}/test_tasks.py', '\nimport celery\n', '\nimport celery\nimport pika_rpc\n'),
    (f'{_DIR}/test_tasks.py', 'celery.exceptions.TimeoutError', 'pika_rpc.errors.TimeoutError'),
    (
        f'{_DIR}/test_tasks.py',
        'celery.exceptions.TaskRevokedError',
        'pika_rpc.errors.TaskRevokedError',
    ),
    (f'{_DIR}/test_tasks.py', 'celery.states.', 'pika_rpc.states.'),
)

_IN_PROCESS = (
    'reads the state, signals or logs of a Celery worker running inside the test process '
    '(celery.worker.state, task_received, caplog); here the worker is another process'
)
_CANVAS = 'canvas (group/chord/chain, stamping): pika_rpc offers no canvas'
EXCLUSIONS: Dict[str, str] = {
    '*test_class_based_tasks::*': (
        'registers a celery.Task subclass instance with app.register_task: pika_rpc has no '
        'class-based tasks'
    ),
    '*test_task_sent_event_respects_publish_retry_limit': (
        "patches app.amqp's kombu Producer and reads its event dispatcher: Celery internals"
    ),
    '*test_send_task_without_ignore_result_*': _IN_PROCESS,
    '*test_pydantic_*': 'needs pydantic, not installed in this environment',
    '*test_revoked_by_headers_*': _CANVAS,
    '*test_revoke_by_stamped_headers_no_match': _CANVAS,
    '*test_unicode_task': _CANVAS,
    '*test_trace_log_arguments::*': _IN_PROCESS,
    '*test_task_redis_result_backend::*': 'needs the Redis result backend',
    '*test_task_replacement::*': f'{_CANVAS}; Redis; {_IN_PROCESS}',
    '*test_signal_bound_method_receivers::*': _IN_PROCESS,
}

#: Written as ``t/integration/conftest.py`` (Celery's own needs Redis and an in-process worker).
CONFTEST = r'''
import os
import subprocess
import sys
import threading
import time

import pytest

TEST_BACKEND = 'rpc://'
CLIENT = os.environ['FOREIGN_CLIENT']
WORKER = os.environ['FOREIGN_WORKER']
BROKER = os.environ['FOREIGN_BROKER']
QUEUE = os.environ['FOREIGN_QUEUE']
CONF = dict(
    result_extended=True,
    task_create_missing_queues=False,
    task_default_queue=QUEUE,
    result_expires=600,
)
_flaky = pytest.mark.flaky(reruns=5, reruns_delay=1)
_timeout = pytest.mark.timeout(timeout=300)


def flaky(fn):
    return _timeout(_flaky(fn))


def get_redis_connection():
    raise RuntimeError('no Redis here')


def get_active_redis_channels():
    raise RuntimeError('no Redis here')


def _make_app():
    if CLIENT == 'celery':
        from celery import Celery

        app = Celery('t', broker=BROKER, backend=TEST_BACKEND, set_as_current=False)
        app.conf.update(CONF, broker_connection_retry_on_startup=True)
        app.set_current()
        app.set_default()
        return app
    from pika_rpc import App

    return App('t', broker=BROKER, backend=TEST_BACKEND, **CONF)


class _PikaManager:
    """The part of celery.contrib.testing.manager.Manager the tests use, on a pika_rpc App
    (``wait_until_idle`` is Celery's own, through a Celery app used only for that)."""

    def __init__(self, app):
        self.app = app

    def wait_for(self, fun, catch, desc='thing', args=(), kwargs=None, max_retries=10, **_):
        for attempt in range(max_retries + 1):
            try:
                return fun(*args, **(kwargs or {}))
            except tuple(catch):
                if attempt == max_retries:
                    raise
                time.sleep(0.5)

    def join(self, r, propagate=False, **kwargs):
        return r.get(propagate=propagate, **kwargs)

    def assert_accepted(self, ids, **_):
        raise NotImplementedError('needs the inspect API')

    def wait_until_idle(self):
        # Celery's own: purge the queue, then wait until no worker has an active task (the
        # worker answers Celery's inspect; pika_rpc's does too). Test tooling, not the client.
        from celery import Celery
        from celery.contrib.testing.manager import Manager

        helper = Celery('t-manager', broker=BROKER, set_as_current=False)
        helper.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
        try:
            Manager(helper).wait_until_idle()
        finally:
            helper.close()


@pytest.fixture(scope='session')
def celery_session_app():
    app = _make_app()
    yield app
    app.close()


@pytest.fixture(scope='session')
def celery_session_worker(celery_session_app, tmp_path_factory):
    if WORKER == 'pika':
        from pika_rpc import App, Worker

        wapp = App('t-worker', broker=BROKER, set_as_current=False, **CONF)
        worker = Worker(wapp, queues=[QUEUE], concurrency=1)
        worker.start()
        yield worker
        worker.stop(30)
        wapp.close()
        return
    log = tmp_path_factory.mktemp('worker') / 'worker.log'
    env = dict(os.environ, PYTHONPATH=os.environ['FOREIGN_WORKER_TREE'])
    with open(log, 'wb') as out:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'celery', '-A', '_worker_app', 'worker', '-P', 'prefork',
             '-c', '1', '-Q', QUEUE, '-l', 'info', '--without-gossip', '--without-mingle',
             '--without-heartbeat', '-n', f'{QUEUE}@%h'],
            cwd=os.environ['FOREIGN_WORKER_TREE'], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b' ready.' not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError('celery worker did not start:\n' + log.read_text()[-3000:])
        time.sleep(0.2)
    yield proc
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def app(celery_session_app):
    yield celery_session_app


@pytest.fixture(autouse=True)
def ZZZZ_set_app_current(celery_session_app):
    # Celery's conftest makes the session app current for every test (shared tasks use it).
    if CLIENT == 'celery':
        celery_session_app.set_current()
        celery_session_app.set_default()
    yield


@pytest.fixture
def manager(app, celery_session_worker):
    if CLIENT == 'celery':
        from celery.contrib.testing.manager import Manager

        manager = Manager(app)
    else:
        manager = _PikaManager(app)
    yield manager
    try:
        manager.wait_until_idle()
    except Exception:
        pass
'''

#: The Celery worker's app, in the worker's tree.
WORKER_APP = """
import os

from celery import Celery

app = Celery('t', broker=os.environ['FOREIGN_BROKER'], backend='rpc://',
             include=['t.integration.tasks'])
app.conf.update(
    result_extended=True,
    task_create_missing_queues=False,
    task_default_queue=os.environ['FOREIGN_QUEUE'],
    broker_connection_retry_on_startup=True,
)
"""


def runs() -> List[Dict[str, str]]:
    """The three runs: (suite name, client, worker)."""
    return [
        {'name': 'celery-tasks-baseline', 'client': 'celery', 'worker': 'celery'},
        {'name': 'celery-tasks', 'client': 'pika', 'worker': 'celery'},
        {'name': 'celery-tasks-pika-worker', 'client': 'pika', 'worker': 'pika'},
    ]
