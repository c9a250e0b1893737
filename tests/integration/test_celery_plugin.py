"""The Celery plug-in (``result_backend = 'pika-rpc://'``) with real Celery processes.

A real ``celery worker`` (threads and prefork pools) stores results through the plug-in; a
Celery client app in this process (Celery's own ``AsyncResult``) reads them through it.
Wire compatibility is checked both ways against Celery's own ``rpc://``: a Celery ``rpc://``
worker answering a ``pika-rpc://`` client, and a ``pika-rpc://`` worker answering a Celery
``rpc://`` client. The fork test runs in a subprocess (``os.fork()`` of a client that has
sent and received); the reconnect test cuts the client's connection with the fault proxy
while its result is being stored.

The scheme ``pika-rpc://`` needs the installed distribution (its entry point); without it the
tests use the dotted path, and the entry-point test is skipped.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pika
import pytest

from tests.helpers import pika_parameters
from tests.interop.harness import ROOT, CeleryWorker, child_env

celery = pytest.importorskip('celery', reason='the plug-in tests need Celery: pip install celery')

from celery import Celery, chain, group  # noqa: E402
from celery.exceptions import TaskRevokedError  # noqa: E402
from celery.exceptions import TimeoutError as CeleryTimeoutError  # noqa: E402

from pika_rpc.celery_backend import PikaRPCBackend  # noqa: E402

DOTTED = 'pika_rpc.celery_backend:PikaRPCBackend'
TASKS = 'tests.integration.plugin_tasks'
pytestmark = pytest.mark.timeout(180)


def _entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points()
    group_eps = (
        eps.select(group='celery.result_backends')
        if hasattr(eps, 'select')
        else eps.get('celery.result_backends', [])
    )
    return any(ep.name == 'pika-rpc' for ep in group_eps)


BACKEND = 'pika-rpc://' if _entry_point_installed() else DOTTED


class PluginWorker(CeleryWorker):
    """``celery worker -A tests.integration.plugin_tasks`` with a chosen result backend."""

    def __init__(
        self, pool: str, queue: str, amqp_url: str, log_path: str, backend: str, *extra: str
    ) -> None:
        super().__init__(pool, queue, amqp_url, log_path, concurrency=4)
        self._env['PIKA_RPC_PLUGIN_QUEUE'] = queue
        self._env['PIKA_RPC_PLUGIN_BACKEND'] = backend
        self._extra = list(extra)

    def command(self) -> List[str]:
        cmd = super().command()
        cmd[cmd.index('tests.interop.celery_tasks')] = TASKS
        return cmd + self._extra


def _delete_queues(amqp_url: str, names: List[str]) -> None:
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        for name in names:
            ch = conn.channel()
            ch.queue_delete(name)
            ch.exchange_delete(name)
            ch.close()


@pytest.fixture(scope='module')
def workers(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str, str], PluginWorker]]:
    """``workers(pool, backend)``: one started worker per (pool, backend), stopped at the end."""
    started: Dict[tuple, PluginWorker] = {}
    log_dir = tmp_path_factory.mktemp('plugin-workers')
    # Not 'pika-rpc-test-': every pytest session deletes idle queues of that prefix at start.
    prefix = 'pika-rpc-plugin-' + uuid.uuid4().hex[:8]

    def get(pool: str, backend: str, *extra: str) -> PluginWorker:
        key = (pool, backend, extra)
        if key not in started:
            tag = ('rpc' if backend == 'rpc://' else 'plugin') + ('-x' if extra else '')
            queue = f'{prefix}-{pool}-{tag}'
            log = str(log_dir / f'{pool}-{tag}.log')
            worker = PluginWorker(pool, queue, amqp_url, log, backend, *extra)
            started[key] = worker
            worker.start(timeout=90)
        return started[key]

    yield get
    for worker in started.values():
        worker.stop()
    _delete_queues(amqp_url, [w.queue for w in started.values()])


def _client(amqp_url: str, queue: str, backend: str = BACKEND, **conf: Any) -> Celery:
    app = Celery('plugin-client-' + uuid.uuid4().hex[:6], broker=amqp_url, backend=backend)
    app.conf.update(
        task_default_queue=queue,
        task_serializer='json',
        result_serializer='json',
        accept_content=['json'],
        result_expires=300,
        **conf,
    )
    return app


@pytest.fixture
def clients() -> Iterator[Callable[..., Celery]]:
    made: List[Celery] = []

    def make(amqp_url: str, queue: str, backend: str = BACKEND, **conf: Any) -> Celery:
        made.append(_client(amqp_url, queue, backend, **conf))
        return made[-1]

    yield make
    for app in made:
        backend = app._backend_cache  # only a backend this test made: never create one here
        if isinstance(backend, PikaRPCBackend):
            backend.close(timeout=10)
        app.close()


@pytest.mark.parametrize('pool', ['threads', 'prefork'])
def test_celery_worker_stores_and_client_reads_through_the_plugin(
    pool: str, amqp_url: str, workers: Any, clients: Any
) -> None:
    worker = workers(pool, BACKEND)
    app = clients(amqp_url, worker.queue)
    backend = app.backend
    assert isinstance(backend, PikaRPCBackend)
    assert backend.as_uri() == 'pika-rpc://'
    assert backend.thread_safe

    assert app.send_task(f'{TASKS}.add', (2, 3)).get(timeout=30) == 5

    # on_message sees every state (task_track_started), on the waiting thread.
    seen: List[str] = []
    r = app.send_task(f'{TASKS}.sleep_then', (0.2, 'slow'))
    assert r.get(timeout=30, on_message=lambda m: seen.append(m['status'])) == 'slow'
    assert seen == ['STARTED', 'SUCCESS']

    # A failure is raised as Celery rebuilds it; its meta is Celery's.
    failed = app.send_task(f'{TASKS}.fail', ('declined',))
    with pytest.raises(Exception) as info:
        failed.get(timeout=30)
    assert type(info.value).__name__ == 'Declined' and 'declined' in str(info.value)
    assert failed.state == 'FAILURE'
    assert backend.get_task_meta(failed.id)['status'] == 'FAILURE'

    # Another AsyncResult object (e.g. made from the id in another request) sees it too.
    assert app.AsyncResult(r.id).state == 'SUCCESS'
    assert app.AsyncResult(r.id).get(timeout=5) == 'slow'
    assert backend.get_task_meta(str(uuid.uuid4())) == {'status': 'PENDING', 'result': None}

    # The worker ran the task in a pool process/thread and published to our thread's queue.
    who = app.send_task(f'{TASKS}.whoami').get(timeout=30)
    assert who['reply_to'] == app.thread_oid
    if pool == 'prefork':
        assert who['pid'] != worker.proc.pid
    errors = [x for x in worker.log().splitlines() if '/ERROR' in x.replace(': ERROR', '/ERROR')]
    assert all('Declined' in x for x in errors), errors


def test_64_threads_share_one_backend_and_wait_on_each_others_tasks(
    amqp_url: str, workers: Any, clients: Any
) -> None:
    worker = workers('threads', BACKEND)
    app = clients(amqp_url, worker.queue)
    per_thread = 10
    backends: set = set()
    sent: List[Any] = []
    errors: List[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(64, timeout=60)

    def send(n: int) -> None:
        try:
            ready.wait()
            backends.add(id(app.backend))
            mine = [app.send_task(f'{TASKS}.add', (n, i)) for i in range(per_thread)]
            with lock:
                sent.extend((n, i, r.id) for i, r in enumerate(mine))
            # Half of them waited on by this thread right away.
            for i, r in enumerate(mine[: per_thread // 2]):
                assert r.get(timeout=60) == n + i
        except Exception as exc:  # reported below, with the thread's number
            errors.append(f'{n}: {exc!r}')

    threads = [threading.Thread(target=send, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), 'a sender hung'
    assert not errors, errors[:5]
    assert len(backends) == 1  # thread_safe: Celery kept one backend for every thread
    backend = app.backend
    assert len(set(backend.result_consumer.queues)) >= 64  # one per sending thread
    # ... all consumed on one link: one connection and one I/O thread for the process.
    links = {replies._spec_link for replies in backend.result_consumer._by_oid.values()}
    assert len(links) == 1 and None not in links

    # Every task, read from a thread that did not send it.
    random.shuffle(sent)
    chunks = [sent[k::16] for k in range(16)]
    wrong: List[str] = []

    def read(chunk: List[tuple]) -> None:
        for n, i, task_id in chunk:
            try:
                value = app.AsyncResult(task_id).get(timeout=60)
            except Exception as exc:
                wrong.append(f'{task_id}: {exc!r}')
            else:
                if value != n + i:
                    wrong.append(f'{task_id}: {value!r} != {n + i}')

    readers = [threading.Thread(target=read, args=(c,)) for c in chunks]
    for t in readers:
        t.start()
    for t in readers:
        t.join(120)
    assert not any(t.is_alive() for t in readers), 'a reader hung'
    assert not wrong, wrong[:5]
    stats = backend.stats()
    assert stats['bad_messages'] == 0 and stats['link_state'] == 'OPEN'


def test_join_native_iter_native_then_and_timeout(
    amqp_url: str, workers: Any, clients: Any
) -> None:
    worker = workers('threads', BACKEND)
    app = clients(amqp_url, worker.queue)
    add = app.signature(f'{TASKS}.add')
    res = group(add.clone((i, i)) for i in range(20)).apply_async()
    assert res.join_native(timeout=30) == [2 * i for i in range(20)]
    res2 = group(add.clone((i, 1)) for i in range(5)).apply_async()
    assert sorted(v['result'] for _, v in res2.iter_native(timeout=30)) == [1, 2, 3, 4, 5]

    fired = threading.Event()
    got: List[Any] = []
    r = app.send_task(f'{TASKS}.add', (20, 22))
    r.then(lambda result: (got.append(result.result), fired.set()))
    assert fired.wait(30), 'then() callback never ran'
    assert got == [42]

    slow = app.send_task(f'{TASKS}.sleep_then', (3, 'late'))
    with pytest.raises(CeleryTimeoutError):
        slow.get(timeout=0.3)
    assert slow.get(timeout=30) == 'late'


def test_chain_get_follows_its_parents(amqp_url: str, workers: Any, clients: Any) -> None:
    # get() of a chain's last task checks its parents every interval (Celery's on_interval).
    worker = workers('threads', BACKEND)
    app = clients(amqp_url, worker.queue)
    add = app.signature(f'{TASKS}.add')
    # add -> 0.5, then sleep_then(0.5, 'slow'): its STARTED comes many slices before SUCCESS.
    r = chain(add.clone((0.25, 0.25)), app.signature(f'{TASKS}.sleep_then', ('slow',)))()
    seen: List[str] = []
    got = r.get(timeout=30, interval=0.05, on_message=lambda m: seen.append(m['status']))
    assert got == 'slow'
    assert seen == ['STARTED', 'SUCCESS']  # each state once across the waiting slices
    assert r.parent.get(timeout=5) == 0.5
    failing = chain(app.signature(f'{TASKS}.fail', ('early',)), add.clone((2,)))()
    with pytest.raises(Exception) as info:
        failing.get(timeout=30)
    assert type(info.value).__name__ == 'Declined' and 'early' in str(info.value)


def test_worker_reports_a_result_nobody_can_receive(
    amqp_url: str, workers: Any, clients: Any
) -> None:
    # Results are published mandatory with confirms: a reply queue that does not exist is a
    # WARNING naming the task in the worker's log, not a silent drop.
    worker = workers('threads', BACKEND)
    app = clients(amqp_url, worker.queue)
    missing = f'pika-rpc-plugin-no-such-queue-{uuid.uuid4().hex[:8]}'
    r = app.send_task(f'{TASKS}.add', (1, 2), reply_to=missing)
    worker.wait_for_log(rf'result of task {r.id} unroutable: no queue .{missing}', timeout=30)


def test_revoke_is_stored_through_the_plugin(amqp_url: str, workers: Any, clients: Any) -> None:
    worker = workers('prefork', BACKEND)
    app = clients(amqp_url, worker.queue)
    r = app.send_task(f'{TASKS}.add', (1, 1), countdown=2)
    r.revoke()
    with pytest.raises(TaskRevokedError):
        r.get(timeout=30)
    assert r.state == 'REVOKED'


def test_prefork_children_forked_from_a_parent_with_a_live_link(
    amqp_url: str, workers: Any, clients: Any
) -> None:
    # A revoked task's REVOKED state is stored by the worker's main process, which then has a
    # link and an I/O thread; children replaced after 2 tasks each are forked from it later.
    worker = workers('prefork', BACKEND, '--max-tasks-per-child=2')
    app = clients(amqp_url, worker.queue)
    revoked = app.send_task(f'{TASKS}.add', (0, 0), countdown=1)
    revoked.revoke()
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=30)
    results = [app.send_task(f'{TASKS}.whoami') for _ in range(16)]
    pids = {r.get(timeout=60)['pid'] for r in results}
    assert len(pids) >= 3, pids  # children were replaced, and each stored its results
    assert worker.proc.pid not in pids


def test_wire_compat_celery_rpc_worker_to_plugin_client(
    amqp_url: str, workers: Any, clients: Any
) -> None:
    worker = workers('threads', 'rpc://')
    app = clients(amqp_url, worker.queue)
    seen: List[str] = []
    r = app.send_task(f'{TASKS}.sleep_then', (0.1, {'k': [1, 2]}))
    assert r.get(timeout=30, on_message=lambda m: seen.append(m['status'])) == {'k': [1, 2]}
    assert seen == ['STARTED', 'SUCCESS']
    with pytest.raises(Exception) as info:
        app.send_task(f'{TASKS}.fail', ('no',)).get(timeout=30)
    assert type(info.value).__name__ == 'Declined'


def test_wire_compat_plugin_worker_to_celery_rpc_client(
    amqp_url: str, workers: Any, clients: Any
) -> None:
    worker = workers('threads', BACKEND)
    app = clients(amqp_url, worker.queue, backend='rpc://')
    assert type(app.backend).__name__ == 'RPCBackend'
    seen: List[str] = []
    r = app.send_task(f'{TASKS}.sleep_then', (0.1, 'x'))
    assert r.get(timeout=30, on_message=lambda m: seen.append(m['status'])) == 'x'
    assert seen == ['STARTED', 'SUCCESS']
    with pytest.raises(Exception) as info:
        app.send_task(f'{TASKS}.fail', ('no',)).get(timeout=30)
    assert type(info.value).__name__ == 'Declined'


FORK_SCRIPT = r"""
import json, os, sys
from celery import Celery
app = Celery('fork-client', broker=os.environ['AMQP_URL'], backend=sys.argv[1])
app.conf.update(task_default_queue=os.environ['PIKA_RPC_PLUGIN_QUEUE'], result_expires=300)
name = 'tests.integration.plugin_tasks.whoami'
before = app.send_task(name).get(timeout=30)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    try:
        out = {'who': app.send_task(name).get(timeout=30), 'oid': app.thread_oid,
               'queues': app.backend.result_consumer.queues}
    except BaseException as exc:
        out = {'error': repr(exc)}
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
parent_after = app.send_task(name).get(timeout=30)
child = json.loads(os.read(r, 65536).decode())
os.waitpid(pid, 0)
print(json.dumps({'before': before, 'parent_after': parent_after, 'child': child,
                  'parent_oid': app.thread_oid,
                  'parent_queues': app.backend.result_consumer.queues}))
"""


def test_forked_client_gets_its_own_reply_queue(amqp_url: str, workers: Any) -> None:
    worker = workers('threads', BACKEND)
    env = child_env(amqp_url, worker.queue)
    env['PIKA_RPC_PLUGIN_QUEUE'] = worker.queue
    proc = subprocess.run(
        [sys.executable, '-c', FORK_SCRIPT, BACKEND],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    child, parent_oid = out['child'], out['parent_oid']
    assert 'error' not in child, child
    assert child['oid'] != parent_oid  # a queue name of the child's own
    assert child['who']['reply_to'] == child['oid']
    assert out['parent_after']['reply_to'] == parent_oid
    assert child['queues'] == [child['oid']]  # the parent's queue is not consumed there
    assert out['parent_queues'] == [parent_oid]


def _messages_in(amqp_url: str, queue: str) -> int:
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count


def test_result_stored_while_the_client_is_cut_off_arrives_after_reconnect(
    amqp_url: str, workers: Any, fault_proxy: Any, clients: Any
) -> None:
    worker = workers('threads', BACKEND)
    app = clients(
        fault_proxy.url(amqp_url),
        worker.queue,
        result_backend_transport_options={'publish_timeout': 20.0},
    )
    assert app.send_task(f'{TASKS}.add', (1, 2)).get(timeout=30) == 3
    reply_queue = app.thread_oid
    r = app.send_task(f'{TASKS}.sleep_then', (1.0, 'stored while away'))
    seen = threading.Event()
    r.then(lambda _: seen.set())
    fault_proxy.refuse(True)
    assert fault_proxy.cut() >= 1
    # The worker stores the result while nobody consumes the reply queue: it must wait there.
    deadline = time.monotonic() + 30
    while _messages_in(amqp_url, reply_queue) < 1:
        assert time.monotonic() < deadline, 'the result never reached the reply queue'
        assert not seen.is_set() and worker.proc.poll() is None
        threading.Event().wait(0.05)  # poll interval of a bounded check, not a synchronisation
    fault_proxy.refuse(False)
    assert r.get(timeout=60) == 'stored while away'
    assert seen.wait(30)
    assert app.send_task(f'{TASKS}.add', (2, 2)).get(timeout=30) == 4
    assert app.backend.stats()['reconnects'] >= 1


def test_entry_point_scheme_and_as_uri(amqp_url: str) -> None:
    if not _entry_point_installed():
        pytest.skip('pika_rpc is not installed as a distribution: pip install -e .')
    from celery.app.backends import by_url

    cls, url = by_url('pika-rpc://')
    assert cls is PikaRPCBackend and url == 'pika-rpc://'
    app = _client(amqp_url, 'unused')
    try:
        assert app.backend.as_uri() == 'pika-rpc://'
    finally:
        app.close()


def test_not_installed_says_no_module_named_pika_rpc(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.app import backends

    monkeypatch.setattr(backends, 'load_extension_class_names', lambda namespace: iter(()))
    app = Celery('no-plugin', broker='amqp://', backend='pika-rpc://')
    try:
        with pytest.raises(ModuleNotFoundError, match="No module named 'pika-rpc'"):
            app.backend
    finally:
        app.close()


def test_pika_rpc_app_accepts_the_plugin_scheme() -> None:
    from pika_rpc import App

    app = App(broker='amqp://guest:guest@127.0.0.1:5672//', result_backend='pika-rpc://')
    assert app.conf.result_backend == 'pika-rpc://'


def test_importing_pika_rpc_does_not_import_celery() -> None:
    code = 'import sys, pika_rpc; print("celery" in sys.modules)'
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.stdout.strip() == 'False', out.stderr
