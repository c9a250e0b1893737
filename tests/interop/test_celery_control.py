"""Celery's remote control against pika_rpc's Worker: Celery's real command line
(``python -m celery -A tests.interop.celery_tasks inspect|control|status ...``) and Celery's
Python API (:mod:`tests.interop.celery_control_client`), each in a subprocess.

One in-process ``Worker`` (concurrency 1, a node name of its own) serves the module; the
``shutdown`` test starts ``python -m pika_rpc worker`` instead and checks that it exits 0.
Calls aimed at our node (``-d``) return as soon as it replied; ``celery status`` and the
pattern ping wait out their few seconds, since any node on the broker may answer them.
The test process never imports Celery.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any, Dict, Iterator, List, NamedTuple, Tuple

import pytest

from pika_rpc import App, Worker
from pika_rpc.errors import TaskRevokedError
from tests.helpers import eventually
from tests.interop.conftest import delete_queues, need_celery
from tests.interop.harness import ROOT, child_env

GATES: Dict[str, threading.Event] = {}  # ctl.block(key) waits on GATES[key]


class Node(NamedTuple):
    app: App
    worker: Worker
    queue: str
    hostname: str
    amqp_url: str


def register(app: App) -> None:
    @app.task(name='ctl.block')
    def block(key):
        gate = GATES.get(key)
        return 'released' if gate is not None and gate.wait(60) else 'not released'

    @app.task(name='ctl.add')
    def add(x, y):
        return x + y


@pytest.fixture(scope='module')
def node(amqp_url: str, interop_prefix: str) -> Iterator[Node]:
    need_celery()
    tag = uuid.uuid4().hex[:8]
    queue = f'{interop_prefix}-ctl-{tag}'
    hostname = f'pika-ctl-{tag}@{socket.gethostname()}'
    app = App(broker=amqp_url, task_default_queue=queue, result_expires=600)
    register(app)
    worker = Worker(app, queues=[queue], concurrency=1, hostname=hostname)
    worker.start()
    try:
        yield Node(app, worker, queue, hostname, amqp_url)
    finally:
        for gate in GATES.values():
            gate.set()
        worker.stop(10)
        app.close()
        delete_queues(amqp_url, queue)


@pytest.fixture
def gate() -> Iterator[Tuple[str, threading.Event]]:
    """A key for ``ctl.block`` and the Event that releases it (set at teardown)."""
    key = uuid.uuid4().hex
    event = GATES[key] = threading.Event()
    yield key, event
    event.set()


def celery(node: Node, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run Celery's command line (``-A tests.interop.celery_tasks``) on the test broker."""
    cmd = [sys.executable, '-m', 'celery', '-A', 'tests.interop.celery_tasks', *args]
    try:
        return subprocess.run(
            cmd,
            cwd=ROOT,
            env=child_env(node.amqp_url, node.queue),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f'{cmd} still running after {timeout} s:\n{exc.stdout}\n{exc.stderr}')


def celery_json(node: Node, *args: str) -> Any:
    """``celery <args> -d <our node> --timeout 10 -j``: its exit status must be 0; returns the
    JSON it printed (inspect: ``{node: reply}``; control: ``[{node: reply}]``)."""
    proc = celery(node, *args, '-d', node.hostname, '--timeout', '10', '-j')
    assert proc.returncode == 0, f'exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}'
    return json.loads(next(line for line in proc.stdout.splitlines() if line[:1] in '{['))


def inspect(node: Node, command: str) -> Any:
    """Our node's reply to ``celery inspect <command>``."""
    replies = celery_json(node, 'inspect', command)
    assert list(replies) == [node.hostname]
    return replies[node.hostname]


def control(node: Node, *args: str) -> Any:
    """Our node's reply to ``celery control <args>``."""
    replies = celery_json(node, 'control', *args)
    assert replies == [{node.hostname: replies[0].get(node.hostname)}]
    return replies[0][node.hostname]


def by_id(infos: List[Dict[str, Any]], task_id: str) -> Dict[str, Any]:
    found = [info for info in infos if info.get('id', info.get('request', {}).get('id')) == task_id]
    assert len(found) == 1, infos
    return found[0]


# ------------------------------------------------------------------ inspect and status


def test_celery_inspect_ping_gets_pong_from_our_worker(node):
    proc = celery(node, 'inspect', 'ping', '-d', node.hostname, '--timeout', '10')
    assert proc.returncode == 0, proc.stderr
    lines = [' '.join(line.split()) for line in proc.stdout.splitlines() if line.strip()]
    assert lines == [f'-> {node.hostname}: OK', 'pong', '1 node online.']


def test_celery_status_lists_our_worker_among_the_online_nodes(node):
    proc = celery(node, 'status', '--timeout', '3', '-j')  # a broadcast: waits the 3 s
    assert proc.returncode == 0, proc.stderr
    replies = json.loads(proc.stdout.splitlines()[0])
    assert replies[node.hostname] == {'ok': 'pong'}


def test_celery_inspect_stats_has_celerys_keys_and_our_counters(node):
    assert node.app.send_task('ctl.add', (1, 2)).get(timeout=10) == 3
    stats = inspect(node, 'stats')
    celery_keys = {'total', 'pid', 'clock', 'uptime', 'pool', 'broker', 'prefetch_count'}
    assert celery_keys | {'rusage', 'pika_rpc'} == set(stats)
    assert stats['pid'] == os.getpid() and int(stats['clock']) > 0
    assert stats['total']['ctl.add'] >= 1 and stats['pika_rpc']['succeeded'] >= 1
    assert stats['pool']['max-concurrency'] == 1 and stats['prefetch_count'] >= 4
    assert stats['broker']['transport'] == 'amqp' and stats['broker']['port'] > 0
    assert 'password' not in json.dumps(stats['broker'])
    assert stats['rusage']['maxrss'] > 0


def test_celery_inspect_active_reserved_and_scheduled_show_our_jobs(node, gate):
    key, release = gate
    running = node.app.send_task('ctl.block', (key,))
    queued = node.app.send_task('ctl.add', (2, 3))
    held = node.app.send_task('ctl.add', (4, 5), countdown=600)
    eventually(
        lambda: (
            (
                node.worker.stats()['running'],
                node.worker.stats()['queued'],
                node.worker.stats()['held'],
            )
            == (1, 1, 1)
        ),
        timeout=10,
    )
    active = by_id(inspect(node, 'active'), running.id)
    assert active['name'] == active['type'] == 'ctl.block' and active['args'] == [key]
    assert active['hostname'] == node.hostname and active['worker_pid'] == os.getpid()
    assert isinstance(active['time_start'], float) and active['acknowledged'] is False
    assert active['delivery_info']['routing_key'] == node.queue
    reserved = by_id(inspect(node, 'reserved'), queued.id)
    assert reserved['args'] == [2, 3] and reserved['time_start'] is None
    scheduled = by_id(inspect(node, 'scheduled'), held.id)
    assert scheduled['request']['args'] == [4, 5] and scheduled['eta'].startswith('20')
    node.worker.revoke(held.id)
    release.set()
    assert running.get(timeout=10) == 'released' and queued.get(timeout=10) == 5


def test_celery_inspect_registered_lists_our_tasks(node):
    assert inspect(node, 'registered') == ['ctl.add', 'ctl.block']


def test_celery_inspect_revoked_lists_the_ids_revoked_here(node):
    task_id = str(uuid.uuid4())
    node.worker.revoke(task_id)
    assert task_id in inspect(node, 'revoked')


# ------------------------------------------------------------------ control


def test_celery_control_revoke_of_a_waiting_task_stores_revoked(node):
    held = node.app.send_task('ctl.add', (1, 1), countdown=600)
    eventually(lambda: node.worker.stats()['held'] == 1, timeout=10)
    assert control(node, 'revoke', held.id) == {'ok': f"tasks {{'{held.id}'}} flagged as revoked"}
    with pytest.raises(TaskRevokedError, match='revoked'):
        held.get(timeout=10)


def test_celery_control_terminate_revokes_a_running_task_and_says_it_was_not_killed(node, gate):
    key, _ = gate
    running = node.app.send_task('ctl.block', (key,))
    eventually(lambda: node.worker.stats()['running'] == 1, timeout=10)
    reply = control(node, 'terminate', 'SIGKILL', running.id)
    assert list(reply) == ['ok'] and running.id in reply['ok']
    assert 'the running task was not killed' in reply['ok']
    with pytest.raises(TaskRevokedError, match='terminated'):
        running.get(timeout=10)


def test_celery_control_rate_limit_sets_the_rate_limit_of_our_worker(node):
    assert control(node, 'rate_limit', 'ctl.add', '5/s') == {
        'ok': 'new rate limit set successfully'
    }
    assert node.worker._buckets['ctl.add'].rate == 5.0
    assert control(node, 'rate_limit', 'ctl.nope', '5/s') == {'error': 'unknown task'}
    assert control(node, 'rate_limit', 'ctl.add', '0') == {'ok': 'rate limit disabled successfully'}
    assert node.worker._buckets['ctl.add'] is None


def test_celerys_python_api_sees_and_controls_our_worker(node):
    host = node.hostname
    proc = subprocess.run(
        [sys.executable, '-m', 'tests.interop.celery_control_client', host, 'pika-ctl-*'],
        cwd=ROOT,
        env=child_env(node.amqp_url, node.queue),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out['inspect_ping'] == {host: {'ok': 'pong'}}
    assert out['control_ping'] == [{host: {'ok': 'pong'}}]
    assert out['pattern_ping'][host] == {'ok': 'pong'}
    assert out['stats'][host]['pid'] == os.getpid()
    assert out['registered'] == {host: ['ctl.add', 'ctl.block']}
    assert isinstance(out['active'][host], list)
    assert out['revoke'] == [{host: {'ok': "tasks {'api-revoked-id'} flagged as revoked"}}]
    assert 'api-revoked-id' in out['revoked'][host]
    assert out['rate_limit'] == [{host: {'ok': 'new rate limit set successfully'}}]
    node.worker.set_rate_limit('ctl.add', None)  # the other tests run ctl.add unlimited
    assert out['conf'][host]['error'].startswith("unknown command 'conf'")


# ------------------------------------------------------------------ shutdown

CLI_APP = textwrap.dedent("""
    import os

    from pika_rpc import App

    app = App(broker=os.environ['AMQP_URL'], task_default_queue=os.environ['CTL_QUEUE'])
""")


def test_celery_control_shutdown_stops_a_pika_rpc_worker_process_which_exits_0(node, tmp_path):
    queue, host = f'{node.queue}-cli', f'pika-ctl-cli-{uuid.uuid4().hex[:8]}@{socket.gethostname()}'
    (tmp_path / 'ctl_app.py').write_text(CLI_APP)
    env = dict(child_env(node.amqp_url, queue), CTL_QUEUE=queue)
    log_path = tmp_path / 'worker.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'pika_rpc', 'worker', '-A', 'ctl_app', '-n', host],
            cwd=str(tmp_path),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return f'{host} ready' in log_path.read_text()

        eventually(ready, timeout=30)
        reply = celery(node, 'control', 'shutdown', '-d', host, '--timeout', '10')
        assert reply.returncode == 0, reply.stderr
        assert f'{host}: OK' in reply.stdout and 'shutting down' in reply.stdout
        assert proc.wait(timeout=30) == 0, log_path.read_text()
        assert 'remote shutdown: warm shutdown' in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        delete_queues(node.amqp_url, queue)
