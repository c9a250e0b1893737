"""Outages with many waiters, losing the current host of a failover list, close() with
waiters, and poison messages in the reply queue (issue 8).

The client ``App`` talks to the broker through :class:`~tests.faultproxy.FaultProxy`; the
worker's side (``store_result``) is a second ``App`` connected straight to the broker, so it
keeps storing while the client's connection is cut or refused. Poison is published with raw
pika straight into the client's reply queue. Every phase is sequenced with events, the
proxy's counters and ``eventually`` on broker-side facts; nothing sleeps.

Where timing is easy to observe (waking waiters after an outage or at ``close()``) the test
prints it; run with ``-s`` to see it. It is never asserted: timings are measured in scripts/, never asserted in tests.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pathlib
import pickle
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Type

import pika
import pytest

from pika_rpc import App
from pika_rpc._link import Link
from pika_rpc.errors import (
    ClosedError,
    ConnectionLost,
    ContentDisallowed,
    DecodeError,
    PikaRPCError,
)
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents, eventually, list_queues

WAIT = 30.0
WAITERS = 50


def reply(app: App, task_id: str) -> Dict[str, str]:
    """The request a worker would store ``task_id``'s result with."""
    return {'id': task_id, 'reply_to': app.backend.oid, 'correlation_id': task_id}


def value_for(task_id: str) -> Dict[str, str]:
    """A result that says which task it belongs to: cross-talk cannot go unnoticed."""
    return {'for': task_id}


def store(worker: App, client: App, results: List[Any]) -> None:
    for result in results:
        worker.backend.mark_as_done(
            result.id, value_for(result.id), request=reply(client, result.id)
        )


def queue_messages(name: str) -> int:
    return list_queues()[name].messages


def all_waiting(app: App, results: List[Any]) -> bool:
    """Every task has a thread inside get() (the table counts its waiters)."""
    slots = app.backend._pending._slots
    return all(r.id in slots and slots[r.id].waiters for r in results)


class Waiters:
    """One thread per result, each in ``result.get(timeout=WAIT, on_message=...)``.

    Records per task: what get() returned (``values``) or raised (``errors``), every state
    message its on_message saw (``seen``), and when it woke (``woke_at``, monotonic).
    """

    def __init__(self, results: List[Any], timeout: float = WAIT) -> None:
        self.timeout = timeout
        self.values: Dict[str, Any] = {}
        self.errors: Dict[str, BaseException] = {}
        self.seen: Dict[str, List[dict]] = {r.id: [] for r in results}
        self.returns: List[str] = []  # one entry per get() that came back
        self.woke_at: Dict[str, float] = {}
        self._done = threading.Condition()
        self._barrier = threading.Barrier(len(results) + 1)
        self._threads = [
            threading.Thread(target=self._wait, args=(r,), name=f'waiter-{i}')
            for i, r in enumerate(results)
        ]
        for t in self._threads:
            t.start()
        self._barrier.wait(WAIT)  # every waiter is about to call get()

    def _wait(self, result: Any) -> None:
        self._barrier.wait(WAIT)
        value: Any = None
        error: Optional[BaseException] = None
        try:
            value = result.get(timeout=self.timeout, on_message=self.seen[result.id].append)
        except BaseException as exc:  # recorded: the test asserts on it
            error = exc
        with self._done:
            self.woke_at[result.id] = time.monotonic()
            self.returns.append(result.id)
            if error is None:
                self.values[result.id] = value
            else:
                self.errors[result.id] = error
            self._done.notify_all()

    @property
    def done(self) -> int:
        with self._done:
            return len(self.returns)

    def wait_done(self, n: int, timeout: float = WAIT) -> bool:
        with self._done:
            return self._done.wait_for(lambda: len(self.returns) >= n, timeout)

    def join(self, timeout: float = WAIT * 2) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), 'a waiter hangs'


# ------------------------------------------------------------------ outages with 50 waiters


def test_fifty_waiters_get_each_result_once_when_results_are_stored_before_during_and_after_an_outage(
    client: App, worker: App, fault_proxy: FaultProxy
) -> None:
    results = [client.send_task('tasks.add', (i, i)) for i in range(WAITERS)]
    before, unnoticed = results[:5], results[5:15]  # before any fault; before the cut is seen
    during, after = results[15:40], results[40:]  # while refused; after the reconnect
    oid, link = client.backend.oid, client.backend._get_link()
    events = LinkEvents(link)
    waiters = Waiters(results)
    assert eventually(lambda: all_waiting(client, results), timeout=WAIT)

    store(worker, client, before)
    assert waiters.wait_done(len(before))
    eventually(lambda: queue_messages(oid) == 0, timeout=WAIT)  # delivered and acked

    # Stored while the client's connection still looks fine to it: the broker hands them to
    # a connection that is about to die, and must give them back when it does.
    fault_proxy.pause()
    store(worker, client, unnoticed)
    fault_proxy.refuse(True)
    attempts = fault_proxy.connection_attempts
    assert fault_proxy.cut() == 1
    fault_proxy.resume()
    assert events.wait('lost')
    assert fault_proxy.wait_for(lambda: fault_proxy.connection_attempts >= attempts + 2)

    store(worker, client, during)
    store(worker, client, before)  # a worker re-publishing final states: duplicates
    eventually(
        lambda: queue_messages(oid) == len(unnoticed) + len(during) + len(before), timeout=WAIT
    )  # nothing lost: all kept by the durable queue
    assert events.count('connected') == 0 and link.state != 'OPEN'
    assert waiters.done == len(before)  # nobody was woken by the outage

    outage_ended = time.monotonic()
    fault_proxy.refuse(False)
    assert events.wait('connected')
    assert waiters.wait_done(len(before) + len(unnoticed) + len(during))
    caught_up = max(waiters.woke_at.values()) - outage_ended
    store(worker, client, after)
    waiters.join()

    assert waiters.errors == {}
    assert waiters.values == {r.id: value_for(r.id) for r in results}  # 50 of 50, right task
    assert sorted(waiters.returns) == sorted(r.id for r in results)  # each get() once
    for r in results:  # each waiter saw one final state: its own
        finals = [raw for raw in waiters.seen[r.id] if raw.get('status') == 'SUCCESS']
        assert [raw.get('task_id') for raw in finals] == [r.id], (r.id, waiters.seen[r.id])
    stats = client.backend.stats()
    assert stats['duplicates'] == len(before) and stats['out_of_band'] == 0
    assert stats['bad_messages'] == 0 and stats['reconnects'] == 1
    eventually(lambda: queue_messages(oid) == 0, timeout=WAIT)  # every delivery acked
    print(
        f'\n{WAITERS} waiters: results lost 0, duplicates dropped {stats["duplicates"]}; '
        f'{len(unnoticed) + len(during)} held-back results reached their waiters '
        f'{caught_up * 1000:.0f} ms after the proxy accepted connections again'
    )


def test_losing_the_current_host_of_a_failover_list_reconnects_to_the_next_and_waiters_get_results(
    make_client: Callable[..., App],
    worker: App,
    fault_proxy: FaultProxy,
    broker: Any,
    amqp_url: str,
) -> None:
    with FaultProxy(broker.host, broker.port) as second:
        client = make_client(f'{fault_proxy.url(amqp_url)};{second.url(amqp_url)}')
        results = [client.send_task('tasks.add', (i, i)) for i in range(10)]
        link = client.backend._get_link()
        assert link.address == f'127.0.0.1:{fault_proxy.port}'
        assert second.connection_attempts == 0
        events = LinkEvents(link)
        waiters = Waiters(results)
        assert eventually(lambda: all_waiting(client, results), timeout=WAIT)
        store(worker, client, results[:3])
        assert waiters.wait_done(3)

        fault_proxy.refuse(True)
        assert fault_proxy.cut() == 1
        assert events.wait('connected')
        assert link.address == f'127.0.0.1:{second.port}'
        assert second.wait_for(lambda: second.active_connections == 1)
        assert second.connection_attempts == 1 and fault_proxy.active_connections == 0
        assert waiters.done == 3
        store(worker, client, results[3:])
        waiters.join()

        assert waiters.errors == {}
        assert waiters.values == {r.id: value_for(r.id) for r in results}
        assert link.stats()['reconnects'] == 1
        client.close()  # while the second proxy still forwards


# ------------------------------------------------------------------ close() with waiters


def test_close_wakes_fifty_waiters_with_a_clear_error_deletes_the_reply_queue_and_twice_is_a_no_op(
    client: App,
) -> None:
    results = [client.send_task('tasks.never', ()) for _ in range(WAITERS)]
    backend = client.backend
    oid = backend.oid
    assert oid in list_queues()
    waiters = Waiters(results)
    assert eventually(lambda: all_waiting(client, results), timeout=WAIT)

    closing = time.monotonic()
    backend.close()
    waiters.join()
    woke = max(waiters.woke_at.values()) - closing

    assert waiters.values == {} and set(waiters.errors) == {r.id for r in results}
    for error in waiters.errors.values():
        assert isinstance(error, ClosedError) and isinstance(error, ConnectionLost)
        assert 'closed' in str(error)
    backend.close()  # a second close is a no-op
    with pytest.raises(ClosedError):
        backend.get_task_meta(results[0].id)
    eventually(lambda: oid not in list_queues(), timeout=WAIT)
    print(f'\nclose() woke {WAITERS} waiters within {woke * 1000:.0f} ms')


def test_close_during_an_outage_wakes_every_waiter_and_returns_within_its_timeout(
    client: App, fault_proxy: FaultProxy, raw_channel: Any
) -> None:
    results = [client.send_task('tasks.never', ()) for _ in range(WAITERS)]
    backend, link = client.backend, client.backend._get_link()
    oid = backend.oid
    events = LinkEvents(link)
    waiters = Waiters(results)
    assert eventually(lambda: all_waiting(client, results), timeout=WAIT)
    fault_proxy.refuse(True)
    fault_proxy.cut()
    assert events.wait('lost')

    closer = threading.Thread(target=client.close, kwargs={'timeout': 1.0})
    closer.start()
    waiters.join()
    closer.join(WAIT)
    assert not closer.is_alive(), 'close() hangs while the broker is unreachable'
    assert waiters.values == {} and set(waiters.errors) == {r.id for r in results}
    assert all(isinstance(e, ClosedError) for e in waiters.errors.values()), waiters.errors
    assert link.wait_for_state('CLOSED', timeout=WAIT)  # the I/O thread stopped retrying
    backend.close()
    # The queue could not be deleted: it is left to its x-expires (result_expires).
    assert list_queues()[oid].arguments.get('x-expires') == 120000
    raw_channel.queue_delete(oid)


# ------------------------------------------------------------------ poison in the reply queue


def touch_on_unpickle(path: pathlib.Path) -> bytes:
    """A pickle that creates ``path`` when loaded: proof that nobody unpickled it."""

    class Touch:
        def __reduce__(self) -> tuple:
            return (pathlib.Path.touch, (path,))

    return pickle.dumps(Touch())


class Poison(NamedTuple):
    body: bytes
    content_type: str
    error: Type[PikaRPCError]  # what a waiter of the task it names gets


def poisons(marker: pathlib.Path) -> Dict[str, Poison]:
    return {
        'garbage bytes': Poison(b'\x00\x81garbage{', 'application/json', DecodeError),
        'a pickle': Poison(
            touch_on_unpickle(marker), 'application/x-python-serialize', ContentDisallowed
        ),
        'a JSON array': Poison(b'[1, 2]', 'application/json', DecodeError),
        'a 10 MB undecodable body': Poison(b'\xff' * (10 << 20), 'application/json', DecodeError),
    }


POISONS = ['garbage bytes', 'a pickle', 'a JSON array', 'a 10 MB undecodable body']


def publish_raw(
    channel: Any, queue: str, body: bytes, content_type: str, correlation_id: Optional[str] = None
) -> None:
    channel.basic_publish(
        '',
        queue,
        body,
        pika.BasicProperties(
            content_type=content_type, content_encoding='utf-8', correlation_id=correlation_id
        ),
    )


@pytest.fixture
def pending(client: App) -> Iterator[Any]:
    """A task sent by ``client`` whose result is not stored yet (the reply consumer runs)."""
    yield client.send_task('tasks.add', (1, 1))


def assert_link_unharmed(client: App, link: Link) -> None:
    assert client.backend._get_link() is link and link.state == 'OPEN'
    assert link._thread is not None and link._thread.is_alive()
    assert link.stats()['reconnects'] == 0


@pytest.mark.parametrize('kind', POISONS)
def test_poison_naming_a_pending_task_fails_its_waiter_with_a_typed_error_and_later_results_arrive(
    kind: str, client: App, worker: App, pending: Any, raw_channel: Any, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / 'unpickled'
    poison = poisons(marker)[kind]
    link, oid = client.backend._get_link(), client.backend.oid
    waiters = Waiters([pending])
    assert eventually(lambda: all_waiting(client, [pending]), timeout=WAIT)
    publish_raw(raw_channel, oid, poison.body, poison.content_type, correlation_id=pending.id)
    waiters.join()
    error = waiters.errors.get(pending.id)
    assert type(error) is poison.error, waiters.errors or waiters.values
    later = client.send_task('tasks.add', (2, 2))
    store(worker, client, [later])
    assert later.get(timeout=WAIT) == value_for(later.id)
    assert client.backend.stats()['bad_messages'] == 1
    assert_link_unharmed(client, link)
    assert not marker.exists()
    eventually(lambda: queue_messages(oid) == 0, timeout=WAIT)  # acked, not redelivered


@pytest.mark.parametrize('kind', POISONS + ['a JSON object with no task id'])
def test_poison_naming_no_task_is_logged_and_dropped_and_the_pending_waiter_gets_its_real_result(
    kind: str,
    client: App,
    worker: App,
    pending: Any,
    raw_channel: Any,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger='pika_rpc.backend')
    marker = tmp_path / 'unpickled'
    if kind == 'a JSON object with no task id':
        poison = Poison(
            json.dumps({'status': 'SUCCESS', 'result': 'whose?'}).encode(),
            'application/json',
            PikaRPCError,
        )
    else:
        poison = poisons(marker)[kind]
    link, oid = client.backend._get_link(), client.backend.oid
    waiters = Waiters([pending])
    assert eventually(lambda: all_waiting(client, [pending]), timeout=WAIT)
    publish_raw(raw_channel, oid, poison.body, poison.content_type)  # no correlation_id
    # The reply queue is read in order: had the poison reached the waiter, it would have
    # woken with it (or with 'whose?') before this real result.
    store(worker, client, [pending])
    waiters.join()
    assert waiters.errors == {} and waiters.values == {pending.id: value_for(pending.id)}
    assert client.backend.stats()['bad_messages'] == 1
    assert eventually(lambda: oid in caplog.text and 'dropped' in caplog.text)
    assert_link_unharmed(client, link)
    assert not marker.exists()
    eventually(lambda: queue_messages(oid) == 0, timeout=WAIT)


def test_a_failure_naming_an_unloaded_module_imports_nothing_and_later_results_arrive(
    client: App,
    worker: App,
    pending: Any,
    raw_channel: Any,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f'pika_rpc_poison_{uuid.uuid4().hex}'
    marker = tmp_path / 'imported'
    (tmp_path / f'{module}.py').write_text(
        f'open({str(marker)!r}, "w").close()\nclass Boom(Exception):\n    pass\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.util.find_spec(module) is not None  # importable, were anyone to try
    link, oid = client.backend._get_link(), client.backend.oid
    unrelated = f'unrelated-{uuid.uuid4().hex}'
    waiters = Waiters([pending])
    body = {
        'status': 'FAILURE',
        'task_id': unrelated,
        'traceback': None,
        'children': [],
        'result': {'exc_type': 'Boom', 'exc_module': module, 'exc_message': ['boom']},
    }
    publish_raw(raw_channel, oid, json.dumps(body).encode(), 'application/json')
    store(worker, client, [pending])
    waiters.join()
    assert waiters.errors == {} and waiters.values == {pending.id: value_for(pending.id)}
    assert client.backend.stats()['out_of_band'] == 1  # kept for its id, not a crash
    # Reading it rebuilds the exception without importing the module either.
    exc = client.AsyncResult(unrelated).get(timeout=WAIT, propagate=False)
    assert isinstance(exc, Exception) and type(exc).__name__ == 'Boom'
    assert exc.args == ('boom',)
    assert module not in sys.modules and not marker.exists()
    assert_link_unharmed(client, link)
    eventually(lambda: queue_messages(oid) == 0, timeout=WAIT)


# ------------------------------------------------------------------ an outage reads like advice


class FirstWarning(logging.Handler):
    """Sets ``seen`` at the first WARNING of ``pika_rpc._connector``; records every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = threading.Event()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.name == 'pika_rpc._connector' and record.levelno == logging.WARNING:
            self.seen.set()


@pytest.fixture
def first_warning() -> Iterator[FirstWarning]:
    handler = FirstWarning()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # an application's usual level; pika's own is left alone
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def warnings_from(records: List[logging.LogRecord], prefix: str) -> List[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.WARNING and r.name.startswith(prefix)]


def test_a_refusing_broker_logs_one_warning_per_attempt_with_the_url_and_advice_and_no_pika_errors(
    make_client: Callable[..., App], fault_proxy: FaultProxy, first_warning: FirstWarning
) -> None:
    fault_proxy.refuse(True)
    client = make_client(broker_connection_max_retries=3)
    with pytest.raises(ConnectionLost) as info:
        client.send_task('tasks.add', (1, 1), timeout=WAIT)  # gives up before its deadline
    attempts = fault_proxy.connection_attempts
    ours = warnings_from(first_warning.records, 'pika_rpc._connector')
    url = f'amqp://guest:**@127.0.0.1:{fault_proxy.port}//'
    assert attempts == 4 and len(ours) == attempts, [r.getMessage() for r in ours]
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in ours)
    assert all(r.getMessage().startswith(f'Cannot connect to {url}: ') for r in ours)
    assert 'retrying in' in ours[0].getMessage() and 'giving up after 4' in ours[-1].getMessage()
    assert 'check the broker' in ours[0].getMessage()  # what to do, on the first one
    # pika's own ERRORs and tracebacks of those attempts are not in the user's log.
    assert warnings_from(first_warning.records, 'pika') == ours
    text = str(info.value)
    assert 'not sent: cannot connect to ' + url in text and 'gave up' in text
    assert 'check the broker' in text and 'link' not in text and 'consume from' not in text


def test_the_first_warning_comes_within_broker_connection_timeout_and_the_call_raises_at_its_deadline(
    make_client: Callable[..., App], first_warning: FirstWarning
) -> None:
    silent = socket.socket()  # accepts connections and never answers: a broker that hangs
    silent.bind(('127.0.0.1', 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        client = make_client(
            f'amqp://guest:guest@127.0.0.1:{port}//', broker_connection_timeout=0.5
        )
        errors: List[BaseException] = []
        began = time.monotonic()
        sender = threading.Thread(
            target=lambda: _collect(errors, client.send_task, 'tasks.add', (1, 1), timeout=WAIT)
        )
        sender.start()
        # Before the call's own deadline (WAIT): within the connection timeout, with slack.
        assert first_warning.seen.wait(WAIT / 3), 'no WARNING while the broker hangs'
        first = time.monotonic() - began
        assert sender.is_alive()  # the call still waits for its deadline
        message = warnings_from(first_warning.records, 'pika_rpc._connector')[0].getMessage()
        assert f'127.0.0.1:{port}' in message and 'broker_connection_timeout' in message
        assert warnings_from(first_warning.records, 'pika.') == []
        client.close(timeout=5)  # wakes the sender
        sender.join(WAIT)
        assert not sender.is_alive() and len(errors) == 1
        assert isinstance(errors[0], ConnectionLost)
        print(f'\nfirst WARNING {first:.2f} s after the call (broker_connection_timeout 0.5 s)')
    finally:
        silent.close()


def _collect(errors: List[BaseException], fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except BaseException as exc:  # asserted by the test
        errors.append(exc)


def test_get_task_meta_never_waits_while_the_broker_is_unreachable_and_reconnects_behind(
    make_client: Callable[..., App], worker: App, fault_proxy: FaultProxy
) -> None:
    fault_proxy.refuse(True)
    client = make_client(broker_connection_max_retries=2, publish_timeout=WAIT)
    backend = client.backend
    began = time.monotonic()
    # Nothing arrived, nothing known yet: PENDING at once (it used to wait publish_timeout).
    first = backend.get_task_meta('t-1')
    assert first == {'status': 'PENDING', 'result': None}
    assert time.monotonic() - began < WAIT / 3
    link = backend._get_link()
    assert link.wait_until_state(lambda: link.failed_attempts >= 1, WAIT)
    with pytest.raises(ConnectionLost) as info:  # known down: at once, saying what to do
        backend.get_task_meta('t-1')
    assert 'cannot connect to amqp://guest:**@' in str(info.value)
    assert 'check the broker' in str(info.value)
    assert link.wait_for_state('IDLE', timeout=WAIT)  # gave up
    attempts = fault_proxy.connection_attempts
    with pytest.raises(ConnectionLost):
        backend.get_task_meta('t-1')  # and starts a new connection cycle in the background
    assert fault_proxy.wait_for(lambda: fault_proxy.connection_attempts > attempts, WAIT)
    assert link.wait_for_state('IDLE', timeout=WAIT)
    fault_proxy.refuse(False)
    with pytest.raises(ConnectionLost):
        backend.get_task_meta('t-1')  # the cycle this starts connects
    assert link.wait_for_state('OPEN', timeout=WAIT)
    oid = backend.oid
    assert eventually(lambda: oid in list_queues(), timeout=WAIT)  # subscribed behind the poll
    worker.backend.mark_as_done('t-1', 5, request={'id': 't-1', 'reply_to': oid})
    assert eventually(lambda: backend.get_task_meta('t-1')['status'] == 'SUCCESS', timeout=WAIT)
