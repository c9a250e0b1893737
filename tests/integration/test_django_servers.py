"""The Django example (``examples/django_project``) under real servers, as users run it.

A pika_rpc worker subprocess (``python -m pika_rpc worker -A demo.tasks``, the README's
command) answers the tasks on a queue of this module. Servers are subprocesses on a free
port, polled until they answer, stopped with SIGTERM and a timeout; a failing test prints
their logs.

* Django's threaded dev server (``runserver --noreload``): 120 concurrent requests that each
  send a task and wait for it, all correct, over exactly one broker connection.
* The dev server with its autoreloader: the watching parent never connects; the serving
  child has one connection.
* gunicorn ``--preload -w 3 --threads 4`` (raw ``os.fork()`` of a master that already
  connected in ``AppConfig.ready()``): every worker has its own reply queue and
  connection, no request sees another's result, the master's connection is untouched.
* The known limit (README: a result reaches only the process that sent the task): ``get_task_meta`` in a worker that did not send the task
  says PENDING; the pattern README shows (the sender stores the outcome) works.
"""

from __future__ import annotations

import collections
import re
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.helpers import eventually
from tests.integration.web_support import (
    DJANGO_PROJECT,
    Proc,
    children_of,
    free_port,
    get_json,
    pika_connections,
    queue_consumers,
    show_logs_on_failure,
    subprocess_env,
    wait_http,
)
from tests.integration.worker_support import delete_queue

pytest.importorskip('django')

pytestmark = pytest.mark.slow

REQUESTS = 120
WAIT = 30.0


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope='module')
def web_queue(amqp_url: str) -> Iterator[str]:
    name = f'pika-rpc-test-django-{uuid.uuid4().hex}'
    yield name
    delete_queue(amqp_url, name)


@pytest.fixture(scope='module')
def server_env(amqp_url: str, web_queue: str, tmp_path_factory: Any) -> Dict[str, str]:
    return subprocess_env(
        AMQP_URL=amqp_url,
        CELERY_TASK_DEFAULT_QUEUE=web_queue,
        CELERY_RESULT_EXPIRES='120',  # a reply queue left behind goes soon
        DJANGO_CACHE_DIR=str(tmp_path_factory.mktemp('django-cache')),
        DJANGO_SETTINGS_MODULE='djproject.settings',
    )


@pytest.fixture(scope='module')
def task_worker(server_env: Dict[str, str], tmp_path_factory: Any) -> Iterator[Proc]:
    """``python -m pika_rpc worker -A demo.tasks -c 8``, ready once it printed so."""
    log = tmp_path_factory.mktemp('worker') / 'worker.log'
    proc = Proc(
        'pika_rpc worker',
        [
            sys.executable,
            '-m',
            'pika_rpc',
            'worker',
            '-A',
            'demo.tasks',
            '-c',
            '8',
            '-l',
            'WARNING',
        ],
        log,
        cwd=DJANGO_PROJECT,
        env=server_env,
    )
    try:
        with show_logs_on_failure(proc):
            eventually(lambda: proc.alive() and ' ready: ' in proc.log(), timeout=WAIT)
        yield proc
    finally:
        status = proc.stop(20)
    assert status == 0, proc.log()


def start_server(
    name: str, args: List[str], env: Dict[str, str], tmp_path: Any, new_session: bool = False
) -> Tuple[Proc, str]:
    """Start a server on a free port; return it and its base URL once ``/info`` answers."""
    port = free_port()
    proc = Proc(
        name,
        [a.replace('{port}', str(port)) for a in args],
        tmp_path / f'{name}.log',
        cwd=DJANGO_PROJECT,
        env=env,
        new_session=new_session,
    )
    base = f'http://127.0.0.1:{port}'
    try:
        with show_logs_on_failure(proc):
            wait_http(f'{base}/info', proc, timeout=WAIT)
    except BaseException:
        proc.stop(10)
        raise
    return proc, base


def many_adds(base: str, count: int, offset: int = 0) -> List[Tuple[int, Dict[str, Any], int]]:
    """``count`` concurrent ``/add?x=i&y=offset`` requests: ``[(status, body, i)]``."""

    def one(i: int) -> Tuple[int, Dict[str, Any], int]:
        status, body = get_json(f'{base}/add?x={i}&y={offset}', timeout=WAIT)
        return status, body, i

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def assert_all_correct(answers: List[Tuple[int, Dict[str, Any], int]], offset: int) -> None:
    wrong = [
        (status, body, i)
        for status, body, i in answers
        if status != 200 or body.get('result') != i + offset
    ]
    assert wrong == [], f'{len(wrong)} of {len(answers)} requests wrong, e.g. {wrong[:3]}'
    assert len({body['task_id'] for _, body, _ in answers}) == len(answers)


# ------------------------------------------------------------------ Django's dev server


def test_the_threaded_dev_server_answers_120_concurrent_requests_over_one_connection(
    task_worker: Proc, server_env: Dict[str, str], tmp_path: Any
) -> None:
    server, base = start_server(
        'runserver',
        [sys.executable, 'manage.py', 'runserver', '--noreload', '127.0.0.1:{port}'],
        server_env,
        tmp_path,
    )
    try:
        with show_logs_on_failure(server, task_worker):
            answers = many_adds(base, REQUESTS, offset=1000)
            assert_all_correct(answers, 1000)
            assert {body['pid'] for _, body, _ in answers} == {server.pid}
            assert len({body['oid'] for _, body, _ in answers}) == 1
            connections = pika_connections()
            assert len(connections.get(server.pid, [])) == 1, connections.get(server.pid)
            # Send now, ask later, same process: get_task_meta sees it.
            status, sent = get_json(f'{base}/send?x=20&y=22')
            assert status == 200 and sent['pid'] == server.pid

            def succeeded() -> bool:
                return get_json(f'{base}/state/{sent["task_id"]}')[1]['status'] == 'SUCCESS'

            eventually(succeeded, timeout=WAIT)
            assert get_json(f'{base}/state/{sent["task_id"]}')[1]['result'] == 42
    finally:
        server.stop(15)  # SIGTERM: no atexit; its reply queue expires (CELERY_RESULT_EXPIRES)


def test_the_autoreloader_parent_never_connects_and_its_serving_child_does_once(
    task_worker: Proc, server_env: Dict[str, str], tmp_path: Any
) -> None:
    # The autoreloader re-executes manage.py in a child and watches it: two processes that
    # both run AppConfig.ready(). Started as a session so SIGTERM reaches both.
    server, base = start_server(
        'runserver-autoreload',
        [sys.executable, 'manage.py', 'runserver', '127.0.0.1:{port}'],
        server_env,
        tmp_path,
        new_session=True,
    )
    try:
        with show_logs_on_failure(server, task_worker):
            answers = many_adds(base, 10, offset=7)
            assert_all_correct(answers, 7)
            serving = {body['pid'] for _, body, _ in answers}
            assert len(serving) == 1 and server.pid not in serving
            assert serving <= set(children_of(server.pid))
            connections = pika_connections()
            assert server.pid not in connections
            assert len(connections.get(serving.pop(), [])) == 1
    finally:
        server.stop(15)


# ------------------------------------------------------------------ gunicorn --preload


@pytest.fixture(scope='module')
def preloaded(
    task_worker: Proc, server_env: Dict[str, str], tmp_path_factory: Any
) -> Iterator[Dict[str, Any]]:
    """gunicorn --preload -w 3 --threads 4; the master connects in ready() before forking."""
    pytest.importorskip('gunicorn')
    env = dict(server_env, PIKA_RPC_CONNECT_AT_START='1')
    server, base = start_server(
        'gunicorn',
        [
            sys.executable,
            '-m',
            'gunicorn',
            '--preload',
            '-w',
            '3',
            '--threads',
            '4',
            '-b',
            '127.0.0.1:{port}',
            '--graceful-timeout',
            '10',
            '--timeout',
            '60',
            'djproject.wsgi:application',
        ],
        env,
        tmp_path_factory.mktemp('gunicorn'),
    )
    try:
        with show_logs_on_failure(server, task_worker):
            workers = eventually(
                lambda: len(children_of(server.pid)) == 3 and children_of(server.pid), timeout=WAIT
            )
            match = re.search(
                rf'pika_rpc connected: pid {server.pid}, reply queue (\S+)', server.log()
            )
            assert match, 'the master did not connect in AppConfig.ready()'
            master_connections = eventually(
                lambda: pika_connections().get(server.pid), timeout=WAIT
            )
        state = {
            'server': server,
            'base': base,
            'workers': set(workers),
            'oids': set(),
            'master_oid': match.group(1),
            'master_connections': master_connections,
        }
        yield state
    finally:
        status = server.stop(20)
    assert status == 0, server.log()
    # Every process deleted its reply queue as it exited (SIGTERM is gunicorn's clean stop).
    oids = state['oids'] | {state['master_oid']}
    eventually(lambda: not oids & set(queue_consumers()), timeout=WAIT)


def test_preloaded_gunicorn_workers_each_get_their_own_reply_queue_and_connection(
    preloaded: Dict[str, Any], task_worker: Proc
) -> None:
    server, base, workers = preloaded['server'], preloaded['base'], preloaded['workers']
    with show_logs_on_failure(server, task_worker):
        assert len(preloaded['master_connections']) == 1
        answers: List[Tuple[int, Dict[str, Any], int]] = []

        def every_worker_served() -> bool:
            answers.extend(many_adds(base, REQUESTS, offset=len(answers)))
            return {body.get('pid') for _, body, _ in answers} >= workers

        eventually(every_worker_served, timeout=WAIT, interval=0)
        oids: Dict[int, set] = collections.defaultdict(set)
        for start in range(0, len(answers), REQUESTS):  # each batch had its own offset
            assert_all_correct(answers[start : start + REQUESTS], start)
        for _, body, _ in answers:
            oids[body['pid']].add(body['oid'])
        assert set(oids) == workers
        assert all(len(o) == 1 for o in oids.values()), oids  # one reply queue per process
        distinct = {next(iter(o)) for o in oids.values()}
        assert len(distinct) == 3 and preloaded['master_oid'] not in distinct
        preloaded['oids'] |= distinct

        connections = pika_connections()
        per_worker = {pid: len(connections.get(pid, [])) for pid in workers}
        assert per_worker == {pid: 1 for pid in workers}
        # The master's connection: the same one (same peer address), no channel opened or
        # closed by a child, its reply queue still consumed.
        assert connections.get(server.pid) == preloaded['master_connections']
        assert queue_consumers().get(preloaded['master_oid']) == 1


def _poll_state(base: str, path: str, rounds_until: Any) -> Dict[int, List[Dict[str, Any]]]:
    """GET ``path`` 12 at a time (so several workers answer) until ``rounds_until(seen)``."""
    seen: Dict[int, List[Dict[str, Any]]] = collections.defaultdict(list)

    def enough() -> bool:
        with ThreadPoolExecutor(max_workers=12) as pool:
            for status, body in pool.map(lambda _: get_json(f'{base}{path}'), range(12)):
                assert status in (200, 404), (status, body)
                seen[body['pid']].append(body)
        return rounds_until(seen)

    eventually(enough, timeout=WAIT, interval=0.05)
    return seen


def test_a_result_reaches_only_the_worker_that_sent_the_task(
    preloaded: Dict[str, Any], task_worker: Proc
) -> None:
    server, base = preloaded['server'], preloaded['base']
    with show_logs_on_failure(server, task_worker):
        status, sent = get_json(f'{base}/send?x=40&y=2')
        assert status == 200
        sender = sent['pid']

        def sender_done_and_another_asked(seen: Dict[int, List[Dict[str, Any]]]) -> bool:
            return (
                any(b['status'] == 'SUCCESS' for b in seen.get(sender, ()))
                and len(set(seen) - {sender}) >= 1
            )

        seen = _poll_state(base, f'/state/{sent["task_id"]}', sender_done_and_another_asked)
        others = {
            pid: {b['status'] for b in bodies} for pid, bodies in seen.items() if pid != sender
        }
        assert others and all(s == {'PENDING'} for s in others.values()), others
        final = [b for b in seen[sender] if b['status'] == 'SUCCESS']
        assert final[-1]['result'] == 42


def test_the_sender_stores_the_outcome_where_every_worker_reads_it(
    preloaded: Dict[str, Any], task_worker: Proc
) -> None:
    server, base = preloaded['server'], preloaded['base']
    with show_logs_on_failure(server, task_worker):
        status, sent = get_json(f'{base}/submit?x=40&y=2')
        assert status == 202

        def two_workers_saw_it(seen: Dict[int, List[Dict[str, Any]]]) -> bool:
            return (
                sum(any(b['status'] == 'SUCCESS' for b in bodies) for bodies in seen.values()) >= 2
            )

        seen = _poll_state(base, f'/status/{sent["task_id"]}', two_workers_saw_it)
        done = [b for bodies in seen.values() for b in bodies if b['status'] == 'SUCCESS']
        assert {b['result'] for b in done} == {42} and {b['sender'] for b in done} == {sent['pid']}
        assert all(b['status'] in ('PENDING', 'SUCCESS') for bs in seen.values() for b in bs)
