"""The link (one I/O thread, one connection) against the real broker.

Heartbeats on an idle link, TLS, secrets kept out of logs and reprs, few wake-ups under
load, skipped and bounded commands, a bounded close, a forked child's own connection, and
a bad message that must not stop the I/O thread. Waits are on Events and conditions with
generous timeouts; broker-side facts go through ``eventually``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import traceback
import uuid
from typing import Any, Dict, Iterator, List
from urllib.parse import quote

import pika
import pytest

from pika_rpc import App, RPCBackend
from pika_rpc._confirms import DIRECT_MAX_BODY
from pika_rpc._handoff import Publication
from pika_rpc._link import Link
from pika_rpc.config import Settings, connection_options, mask_url, parse_url
from pika_rpc.entities import Queue
from pika_rpc.errors import ConnectionLost, PublishError, TimeoutError
from pika_rpc.messaging import Connection, Consumer, Producer
from tests.helpers import eventually, list_queues, pika_parameters, poll_when_settled, rabbitmqctl

WAIT = 30.0
SECRET = 's3cr3t-p4ss'


def _noop() -> None:
    pass


def broker_connections() -> Dict[str, Dict[str, Any]]:
    """``{connection_name: {'name': peer addresses, 'timeout': heartbeat}}`` from rabbitmqctl."""
    out = rabbitmqctl(
        'list_connections', 'name', 'timeout', 'client_properties', '--formatter', 'json'
    )
    found = {}
    for row in json.loads(out) if out.strip() else []:
        props = {item[0]: item[-1] for item in row.get('client_properties') or ()}
        if 'connection_name' in props:
            found[props['connection_name']] = {'name': row['name'], 'timeout': row['timeout']}
    return found


def delete_entities(amqp_url: str, *names: str) -> None:
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)
            channel.exchange_delete(name)


@pytest.fixture
def app(amqp_url: str, unique_name: str) -> Iterator[App]:
    application = App(broker=amqp_url, task_default_queue=unique_name, result_expires=120)
    yield application
    application.close()
    delete_entities(amqp_url, unique_name)


@pytest.fixture
def private_link(amqp_url: str) -> Iterator[Link]:
    """A link of this test alone (not the registry's), connected."""
    link = Link(connection_options(Settings(broker_url=amqp_url)))
    link.call(_noop, timeout=WAIT)
    yield link
    link.close(5.0)


def ready_count(raw_channel: Any, queue: str) -> int:
    return raw_channel.queue_declare(queue, passive=True).method.message_count


class IOBlocker:
    """Holds the I/O thread inside one command until ``release()`` (bounded by WAIT)."""

    def __init__(self, link: Link) -> None:
        self.started, self._release = threading.Event(), threading.Event()
        self.errors: List[BaseException] = []

        def hold() -> None:
            self.started.set()
            self._release.wait(WAIT)

        def run() -> None:
            try:
                link.call(hold, timeout=WAIT * 2)
            except BaseException as exc:  # collected: asserted empty by the test
                self.errors.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> 'IOBlocker':
        self._thread.start()
        assert self.started.wait(WAIT), 'the I/O thread never ran the blocking command'
        return self

    def release(self) -> None:
        self._release.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive() and self.errors == []

    def __exit__(self, *exc: Any) -> None:
        self._release.set()
        self._thread.join(WAIT)


# ------------------------------------------------------------------ heartbeats


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_idle_link_with_a_one_second_heartbeat_keeps_its_connection_for_fifteen_heartbeats(
    amqp_url: str, unique_name: str
) -> None:
    app = App(
        broker=amqp_url, broker_heartbeat=1, task_default_queue=unique_name, result_expires=120
    )
    try:
        result = app.send_task('tasks.idle')  # the reply consumer is running from here
        link = app.backend._get_link()
        connection = link.connection
        before = eventually(lambda: broker_connections().get(link.name), timeout=WAIT)
        assert before['timeout'] == 1  # the broker agreed to a 1 s heartbeat

        threading.Event().wait(15)  # the idle period under test, not a sync

        after = broker_connections().get(link.name)
        assert after is not None and after['name'] == before['name']  # same TCP connection
        assert link.connection is connection and link.state == 'OPEN'
        assert link.stats()['reconnects'] == 0
        app.backend.mark_as_done(
            result.id, 'still here', request={'reply_to': app.backend.oid, 'id': result.id}
        )
        assert result.get(timeout=WAIT) == 'still here'
        assert link.stats()['reconnects'] == 0
    finally:
        app.close()
        delete_entities(amqp_url, unique_name)


# ------------------------------------------------------------------ TLS


def test_amqps_round_trip_through_the_tls_proxy(
    tls_proxy: Any, amqp_url: str, unique_name: str
) -> None:
    url = tls_proxy.url(amqp_url)
    assert url.startswith('amqps://')
    app = App(
        broker=url,
        broker_use_ssl={'ca_certs': tls_proxy.ca_file},
        task_default_queue=unique_name,
        result_expires=120,
    )
    try:
        result = app.send_task('tasks.add', (2, 3))
        app.backend.store_result(
            result.id, 5, 'SUCCESS', request={'reply_to': app.backend.oid, 'id': result.id}
        )
        assert result.get(timeout=WAIT) == 5
        link = app.backend._get_link()
        assert link.address == f'127.0.0.1:{tls_proxy.port}'
        assert tls_proxy.publish_count >= 2  # the task and its result went over TLS
        # An SSL socket is never written by a caller thread while the I/O thread reads it.
        assert link.stats()['direct_publishes'] == 0 and link.stats()['publishes'] >= 2
        # Nor is it read once per readiness event: decrypted data may wait in the SSLSocket.
        assert link.wire.impl._transport._MAX_CONSUME_BYTES > 1
    finally:
        app.close()
        delete_entities(amqp_url, unique_name)


@pytest.mark.parametrize('check_hostname', [True, False])
def test_check_hostname_of_broker_use_ssl_decides_whether_a_certificate_for_another_name_is_taken(
    check_hostname: bool, tls_proxy: Any, amqp_url: str
) -> None:
    # The proxy's certificate names 127.0.0.1 and localhost, not the name we expect here.
    ssl_conf = {
        'ca_certs': tls_proxy.ca_file,
        'server_hostname': 'broker.example',
        'check_hostname': check_hostname,
    }
    backend = RPCBackend(url=tls_proxy.url(amqp_url), broker_use_ssl=ssl_conf, **FAST_GIVE_UP)
    try:
        if check_hostname:
            with pytest.raises(ConnectionLost, match='CERTIFICATE_VERIFY_FAILED'):
                poll_when_settled(backend, str(uuid.uuid4()))
        else:
            assert poll_when_settled(backend, str(uuid.uuid4()))['status'] == 'PENDING'
            assert backend._get_link().state == 'OPEN'
    finally:
        backend.close()


def test_amqps_to_a_proxy_whose_ca_is_not_trusted_gives_connection_lost_naming_the_certificate(
    tls_proxy: Any, amqp_url: str
) -> None:
    backend = RPCBackend(url=tls_proxy.url(amqp_url), **FAST_GIVE_UP)  # system CAs only
    try:
        with pytest.raises(ConnectionLost, match='CERTIFICATE_VERIFY_FAILED'):
            poll_when_settled(backend, str(uuid.uuid4()))
        assert tls_proxy.publish_count == 0
    finally:
        backend.close(timeout=5)


# ------------------------------------------------------------------ secrets


class LogCapture(logging.Handler):
    """Every record of every logger, formatted with its traceback and stack."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: List[str] = []
        self.names: set = set()
        self._formatter = logging.Formatter('%(name)s %(levelname)s %(message)s')

    def emit(self, record: logging.LogRecord) -> None:
        self.names.add(record.name)
        self.texts.append(self._formatter.format(record))
        self.texts.append(repr(record.args))


@pytest.fixture
def all_logs() -> Iterator[LogCapture]:
    """Capture all logging at DEBUG, pika's own loggers included."""
    capture = LogCapture()
    root = logging.getLogger()
    touched = [logging.getLogger(n) for n in ('pika', 'pika_rpc')]
    saved = (root.level, [(lg.level, lg.propagate, lg.disabled) for lg in touched])
    root.setLevel(logging.DEBUG)
    for logger in touched:
        logger.setLevel(logging.NOTSET)
        logger.propagate, logger.disabled = True, False
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved[0])
        for logger, (level, propagate, disabled) in zip(touched, saved[1]):
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def error_texts(exc: BaseException) -> List[str]:
    """str, repr, args and the formatted traceback of ``exc`` and everything it chains to."""
    texts = [''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc), repr(exc.args)]
        exc = exc.__cause__ or exc.__context__
    return texts


def object_texts(app: App) -> List[str]:
    backend = app.backend
    texts = [
        repr(app),
        str(app),
        repr(backend),
        str(backend),
        backend.as_uri(),
        repr(app.conf),
        str(app.conf),
        repr(backend.conf),
        repr(app.conf.as_dict(censored=True)),
        repr(backend.stats()),
        mask_url(app.conf.broker_url),
    ]
    texts += [repr(a) + str(a) + a.as_uri() for a in parse_url(app.conf.broker_url)]
    link = backend._link
    if link is not None:
        texts += [repr(link), str(link), repr(link.stats()), repr(link._connector.params)]
    return texts


def assert_nowhere(secret: str, texts: List[str]) -> None:
    leaks = [t for t in texts if secret in t]
    assert not leaks, f'{len(leaks)} text(s) show the password, e.g. {leaks[0][:300]!r}'


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


FAST_GIVE_UP = dict(
    broker_connection_max_retries=1,
    broker_transport_options={'interval_start': 0, 'interval_step': 0.01, 'interval_max': 0.01},
)


@pytest.mark.parametrize('where', ['nothing_listens', 'broker_refuses_the_password'])
def test_a_failed_connect_shows_the_password_in_no_log_repr_or_error(
    where: str, amqp_url: str, unique_name: str, all_logs: LogCapture
) -> None:
    address = parse_url(amqp_url)[0]
    port = unused_port() if where == 'nothing_listens' else address.port
    url = f'amqp://{address.userid}:{SECRET}@{address.host}:{port}//'
    texts: List[str] = []
    app = App(broker=url, task_default_queue=unique_name, **FAST_GIVE_UP)
    try:
        with pytest.raises(ConnectionLost) as send_error:
            app.send_task('tasks.add', (1, 2), timeout=WAIT)
        texts += error_texts(send_error.value)
        backend = RPCBackend(url=url, **FAST_GIVE_UP)
        with pytest.raises(ConnectionLost) as poll_error:
            poll_when_settled(backend, str(uuid.uuid4()))
        texts += error_texts(poll_error.value) + [repr(backend), str(backend), backend.as_uri()]
        texts += object_texts(app)
        backend.close(timeout=5)
    finally:
        app.close()
    assert all_logs.texts, 'nothing was logged: the capture is broken'
    assert any(name.startswith('pika.') for name in all_logs.names)  # pika's own DEBUG lines too
    assert_nowhere(SECRET, texts + all_logs.texts)


@pytest.fixture(params=['guest', 'dedicated_user'])
def working_url(request: Any, amqp_url: str) -> Iterator[tuple]:
    """``(url, secrets)``: the run's URL (``guest:guest``), or a broker user made for this test
    with a distinctive password, so a leak of the bare password is seen too."""
    address = parse_url(amqp_url)[0]
    if request.param == 'guest':
        assert f'{address.userid}:{address.password}' in amqp_url
        yield (
            amqp_url,
            [f'{address.userid}:{address.password}', f'\x00{address.userid}\x00{address.password}'],
        )
        return
    user, password = f'pika-rpc-test-{uuid.uuid4().hex[:12]}', f'{SECRET}-{uuid.uuid4().hex[:8]}'
    rabbitmqctl('add_user', user, password)
    try:
        rabbitmqctl('set_permissions', '-p', address.virtual_host, user, '.*', '.*', '.*')
        vhost = '/' if address.virtual_host == '/' else quote(address.virtual_host, safe='')
        yield f'amqp://{user}:{password}@{address.host}:{address.port}/{vhost}', [password]
    finally:
        rabbitmqctl('delete_user', user)


def test_a_working_connection_shows_the_password_in_no_log_or_repr(
    working_url: tuple, amqp_url: str, unique_name: str, all_logs: LogCapture
) -> None:
    url, secrets = working_url
    app = App(broker=url, task_default_queue=unique_name, result_expires=120)
    try:
        result = app.send_task('tasks.add', (1, 2))
        app.backend.mark_as_done(
            result.id, 3, request={'reply_to': app.backend.oid, 'id': result.id}
        )
        assert result.get(timeout=WAIT) == 3
        texts = object_texts(app)
    finally:
        app.close()
        delete_entities(amqp_url, unique_name)
    assert any(name.startswith('pika.') for name in all_logs.names)
    for secret in secrets:
        assert_nowhere(secret, texts + all_logs.texts)


# ------------------------------------------------------------------ hand-off and wake-ups


def test_64_threads_storing_100_results_each_write_directly_or_share_few_wake_ups(
    app: App, result_queue: str, raw_channel: Any
) -> None:
    threads_n, per_thread = 64, 100
    backend = app.backend
    link = backend._get_link()
    link.call(_noop, timeout=WAIT)  # connected before counting
    before = link.stats()
    barrier = threading.Barrier(threads_n)
    failures: List[BaseException] = []

    def store(i: int) -> None:
        try:
            barrier.wait(WAIT)
            for j in range(per_thread):
                task_id = f'{i}-{j}'
                backend.store_result(
                    task_id, j, 'SUCCESS', request={'reply_to': result_queue, 'id': task_id}
                )
        except BaseException as exc:  # collected: asserted empty below
            failures.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert not any(t.is_alive() for t in threads) and failures == []
    after = link.stats()
    delta = {
        k: after[k] - before[k]
        for k in ('publishes', 'direct_publishes', 'commands', 'wake_ups', 'confirms')
    }
    total = threads_n * per_thread
    assert delta['publishes'] == total and delta['confirms'] == total, delta
    # Each result was written by its own thread, or queued for the I/O thread (while the
    # socket was busy); queued ones share wake-ups.
    assert delta['direct_publishes'] + delta['commands'] == total, delta
    assert delta['direct_publishes'] > 0, delta
    assert delta['wake_ups'] * 4 < max(4, delta['commands']) or delta['wake_ups'] <= 1, delta
    assert after['peak_in_flight'] > 1  # many results awaited their confirm together
    assert eventually(lambda: ready_count(raw_channel, result_queue) == total, timeout=WAIT)


def test_a_command_whose_caller_gave_up_is_skipped(private_link: Link) -> None:
    ran = threading.Event()
    with IOBlocker(private_link) as blocker:
        with pytest.raises(TimeoutError):
            private_link.call(ran.set, timeout=0.1)
        blocker.release()
    private_link.call(_noop, timeout=WAIT)  # the I/O thread has gone past the given-up one
    assert not ran.is_set()


def test_a_result_whose_store_timed_out_before_the_io_thread_reached_it_is_never_published(
    app: App, result_queue: str, raw_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = app.backend
    link = backend._get_link()
    link.call(_noop, timeout=WAIT)
    # The hand-off path (a direct write needs no I/O thread), on this test's watch only: the
    # link is the process's, shared with later tests.
    monkeypatch.setattr(link, 'direct_writes', False)
    before = link.stats()['publishes']
    with IOBlocker(link) as blocker:
        with pytest.raises(PublishError):
            backend.store_result(
                'given-up',
                1,
                'SUCCESS',
                request={'reply_to': result_queue, 'id': 'given-up'},
                timeout=0.1,
            )
        blocker.release()
    backend.store_result('kept', 2, 'SUCCESS', request={'reply_to': result_queue, 'id': 'kept'})
    assert link.stats()['publishes'] - before == 1
    assert ready_count(raw_channel, result_queue) == 1
    _method, props, body = raw_channel.basic_get(result_queue, auto_ack=True)
    assert props.correlation_id == 'kept' and json.loads(body)['task_id'] == 'kept'


def test_a_full_hand_off_queue_blocks_callers_until_their_deadline_then_lets_them_through(
    amqp_url: str, unique_name: str
) -> None:
    link = Link(
        connection_options(Settings(broker_url=amqp_url)), handoff_max=1, direct_writes=False
    )
    try:
        link.call(_noop, timeout=WAIT)
        with IOBlocker(link) as blocker:
            first = link.publish(Publication('', unique_name, b'first', {}, timeout=WAIT))
            assert link.stats()['queued_commands'] == 1  # the queue is full now
            with pytest.raises(TimeoutError, match='hand-off'):
                link.call(_noop, timeout=0.1)
            with pytest.raises(PublishError, match='hand-off'):
                link.publish(Publication('', unique_name, b'second', {}, timeout=0.1))
            ran, errors = threading.Event(), []

            def waiting_caller() -> None:
                try:
                    link.call(ran.set, timeout=WAIT)
                except BaseException as exc:  # collected: asserted empty below
                    errors.append(exc)

            caller = threading.Thread(target=waiting_caller)
            caller.start()
            blocker.release()
            caller.join(WAIT)
        assert not caller.is_alive() and errors == [] and ran.is_set()
        assert first.wait(WAIT) and first.error is None
        assert first.returned is not None  # no queue of that name: returned, not lost
    finally:
        link.close(5.0)


# ------------------------------------------------------------------ direct writes


def test_results_stored_by_one_thread_are_written_by_it_without_waking_the_io_thread(
    app: App, result_queue: str, raw_channel: Any
) -> None:
    backend = app.backend
    link = backend._get_link()
    link.call(_noop, timeout=WAIT)
    before = link.stats()
    pipeline = link._outbox.pipeline
    # Why the direct path was refused, should it be (seen once under a loaded machine).
    state = (
        f'direct_writes={link.direct_writes} open={pipeline and pipeline._direct_open} '
        f'unconfirmed={pipeline and len(pipeline._unconfirmed)} '
        f'draining={len(link._outbox._draining)} queued={link.handoff.queued_pubs}'
    )
    for i in range(20):
        backend.store_result(
            f'direct-{i}', i, 'SUCCESS', request={'reply_to': result_queue, 'id': f'direct-{i}'}
        )
    after = link.stats()
    delta = {
        k: after[k] - before[k] for k in ('direct_publishes', 'commands', 'wake_ups', 'confirms')
    }
    want = {'direct_publishes': 20, 'commands': 0, 'wake_ups': 0, 'confirms': 20}
    assert delta == want, state
    assert eventually(lambda: ready_count(raw_channel, result_queue) == 20, timeout=WAIT)


def test_direct_writes_false_sends_every_result_through_the_io_thread(
    amqp_url: str, unique_name: str, result_queue: str, raw_channel: Any
) -> None:
    # Apps with the same broker options share a link, but never one that publishes another
    # way: direct_writes=False is a link of its own, and an App made after it keeps its own.
    app = App(broker=amqp_url, direct_writes=False, task_default_queue=unique_name)
    other = App(broker=amqp_url, task_default_queue=unique_name)
    try:
        link = app.backend._get_link()
        assert link.direct_writes is False
        assert other.backend._get_link() is not link
        assert other.backend._get_link().direct_writes is True
        before = link.stats()
        for i in range(5):
            app.backend.store_result(
                f'via-io-{i}', i, 'SUCCESS', request={'reply_to': result_queue, 'id': f'via-io-{i}'}
            )
        stats = link.stats()
        assert stats['direct_publishes'] == before['direct_publishes'] == 0
        assert stats['publishes'] - before['publishes'] == 5
        assert eventually(lambda: ready_count(raw_channel, result_queue) == 5, timeout=WAIT)
    finally:
        other.close()
        app.close()


def test_publications_of_one_thread_keep_their_order_behind_one_waiting_for_the_io_thread(
    private_link: Link, result_queue: str, raw_channel: Any
) -> None:
    private_link.call(_noop, timeout=WAIT)
    before = private_link.stats()['direct_publishes']
    with IOBlocker(private_link) as blocker:
        # Too big to be written by the caller: queued for the (blocked) I/O thread...
        pubs = [
            private_link.publish(
                Publication(
                    '',
                    result_queue,
                    b'x' * (DIRECT_MAX_BODY + 1),
                    {'correlation_id': 'big'},
                    timeout=WAIT,
                )
            )
        ]
        # ...so these small ones must queue behind it, not overtake it on the socket.
        pubs += [
            private_link.publish(
                Publication(
                    '', result_queue, b'small', {'correlation_id': f'small-{i}'}, timeout=WAIT
                )
            )
            for i in range(3)
        ]
        assert private_link.stats()['direct_publishes'] == before
        assert private_link.stats()['queued_commands'] == 4
        blocker.release()
    assert all(p.wait(WAIT) and p.error is None and p.returned is None for p in pubs)
    order = [raw_channel.basic_get(result_queue, auto_ack=True)[1].correlation_id for _ in range(4)]
    assert order == ['big', 'small-0', 'small-1', 'small-2']
    # Once the queue is empty again, the next one is written directly.
    after = private_link.publish(Publication('', result_queue, b'next', {}, timeout=WAIT))
    assert after.wait(WAIT) and after.error is None
    assert private_link.stats()['direct_publishes'] == before + 1


# ------------------------------------------------------------------ channel errors


def test_a_task_sent_to_a_missing_exchange_fails_with_404_and_the_connection_stays(
    app: App, unique_name: str
) -> None:
    pending = app.send_task('tasks.add', (1, 1))
    link = app.backend._get_link()
    connection = link.connection
    missing = f'{unique_name}-missing'
    with pytest.raises(PublishError, match=f"404 NOT_FOUND - no exchange '{missing}'"):
        app.send_task('tasks.add', (2, 2), exchange=missing, routing_key='x')
    assert link.connection is connection and link.stats()['reconnects'] == 0
    assert link.stats()['republishes'] == 0  # an argument error is never retried
    app.backend.mark_as_done(pending.id, 2, request={'reply_to': app.backend.oid, 'id': pending.id})
    assert pending.get(timeout=WAIT) == 2  # the reply consumer never noticed
    again = app.send_task('tasks.add', (3, 3))  # the publish channel works again
    app.backend.mark_as_done(again.id, 6, request={'reply_to': app.backend.oid, 'id': again.id})
    assert again.get(timeout=WAIT) == 6


def test_publishes_pipelined_behind_one_to_a_missing_exchange_are_re_sent_and_confirmed(
    private_link: Link, result_queue: str, raw_channel: Any, unique_name: str
) -> None:
    def pub(exchange: str, routing_key: str, body: bytes) -> Publication:
        return Publication(exchange, routing_key, body, {}, policy={'max_retries': 3}, timeout=WAIT)

    missing = f'{unique_name}-missing'
    with IOBlocker(private_link) as blocker:  # all five go out in one batch
        good = [pub('', result_queue, b'before')]
        bad = pub(missing, 'x', b'bad')
        batch = good + [bad] + [pub('', result_queue, b'after-%d' % i) for i in range(3)]
        for item in batch:
            private_link.publish(item)
        good = [p for p in batch if p is not bad]
        blocker.release()
    for item in batch:
        assert item.wait(WAIT)
    assert isinstance(bad.error, PublishError) and '404' in str(bad.error) and bad.attempts == 1
    assert [p.error for p in good] == [None] * 4 and all(p.returned is None for p in good)
    assert private_link.stats()['reconnects'] == 0
    bodies = []
    while True:
        method, _props, body = raw_channel.basic_get(result_queue, auto_ack=True)
        if method is None:
            break
        bodies.append(body)
    # At least once: one routed before the close but not yet confirmed may come twice.
    assert set(bodies) == {b'before', b'after-0', b'after-1', b'after-2'} and len(bodies) <= 5


# ------------------------------------------------------------------ close


def test_close_returns_within_its_timeout_when_the_broker_stopped_answering_and_twice_is_a_no_op(
    fault_proxy: Any, amqp_url: str
) -> None:
    link = Link(connection_options(Settings(broker_url=fault_proxy.url(amqp_url))))
    link.call(_noop, timeout=WAIT)
    io_thread = link._thread
    fault_proxy.pause()  # the broker no longer answers (no Close-Ok)
    returned: List[Any] = []
    closer = threading.Thread(target=lambda: returned.append(link.close(timeout=2)))
    closer.start()
    closer.join(10)
    assert not closer.is_alive() and returned in ([True], [False])
    assert link.closed and link.close(timeout=2) is True  # a second close does nothing
    with pytest.raises(Exception, match='closed'):
        link.call(_noop, timeout=1)
    fault_proxy.cut()  # the dead connection fails: the thread ends
    io_thread.join(WAIT)
    assert not io_thread.is_alive()
    assert link.state == 'CLOSED'


def test_backend_close_returns_within_its_timeout_when_the_broker_stopped_answering(
    fault_proxy: Any, amqp_url: str, unique_name: str
) -> None:
    app = App(broker=fault_proxy.url(amqp_url), task_default_queue=unique_name, result_expires=120)
    try:
        pending = app.send_task('tasks.add', (1, 1))  # consumer running, task pending
        backend = app.backend
        io_thread = backend._get_link()._thread
        waiter_error: List[BaseException] = []

        def wait() -> None:
            try:
                pending.get(timeout=WAIT)
            except BaseException as exc:  # recorded: asserted below
                waiter_error.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        fault_proxy.pause()
        closer = threading.Thread(target=backend.close, kwargs={'timeout': 2})
        closer.start()
        closer.join(10)
        assert not closer.is_alive() and backend.closed
        waiter.join(WAIT)
        assert not waiter.is_alive() and isinstance(waiter_error[0], ConnectionLost)
        backend.close(timeout=2)  # a second close is a no-op
        assert app.backend is not backend  # renewed with a new oid
        app.close(timeout=2)  # the app's connection was the link's last user
        fault_proxy.cut()
        io_thread.join(WAIT)
        assert not io_thread.is_alive()
    finally:
        fault_proxy.resume()
        app.close()
        delete_entities(amqp_url, unique_name)


# ------------------------------------------------------------------ fork


def _read_line(fd: int, timeout: float) -> bytes:
    data = b''
    while not data.endswith(b'\n'):
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f'no answer from the child within {timeout} s (got {data!r})')
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _wait_child(pid: int, timeout: float) -> int:
    def ended() -> Any:
        done, status = os.waitpid(pid, os.WNOHANG)
        return (done, status) if done else None

    _, status = eventually(ended, timeout=timeout)
    return status


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_untouched(app: App) -> None:
    result = app.send_task('tasks.add', (1, 1))
    link = app.backend._get_link()
    connection = link.connection
    eventually(lambda: link.name in broker_connections(), timeout=WAIT)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, then _exit
        code = 1
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            meta = poll_when_settled(app.backend, str(uuid.uuid4()))  # starts the child's link
            child_link = app.backend._get_link()
            report = {
                'pid': os.getpid(),
                'link_pid': child_link.pid,
                'name': child_link.name,
                'same_link': child_link is link,
                'state': child_link.state,
                'meta': meta,
                'parent_link_closed_here': link.closed,
            }
            os.write(from_child_w, json.dumps(report).encode() + b'\n')
            os.read(to_child_r, 1)  # until the parent looked at the broker
            app.backend.close(timeout=5)
            code = 0
        except BaseException:
            os.write(from_child_w, json.dumps({'error': traceback.format_exc()}).encode() + b'\n')
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    try:
        report = json.loads(_read_line(from_child_r, WAIT))
        assert 'error' not in report, report.get('error')
        assert report['link_pid'] == report['pid'] == pid != os.getpid()
        assert not report['same_link'] and report['name'] != link.name
        assert report['state'] == 'OPEN' and report['meta'] == {'status': 'PENDING', 'result': None}
        assert report['parent_link_closed_here']  # abandoned in the child, never used
        both = eventually(
            lambda: {link.name, report['name']} <= set(broker_connections()), timeout=WAIT
        )
        assert both
    finally:
        os.write(to_child_w, b'x')
        os.close(to_child_w)
        status = _wait_child(pid, WAIT)
        os.close(from_child_r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    eventually(lambda: report['name'] not in broker_connections(), timeout=WAIT)
    assert app.backend._get_link() is link and link.connection is connection and not link.closed
    assert link.stats()['reconnects'] == 0 and link.pid == os.getpid()
    app.backend.mark_as_done(result.id, 2, request={'reply_to': app.backend.oid, 'id': result.id})
    assert result.get(timeout=WAIT) == 2


# ------------------------------------------------------------------ bad messages


def test_an_undecodable_body_on_a_user_consumer_is_rejected_and_the_io_thread_keeps_delivering(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    queue = Queue(unique_name, expires=60)
    got, changed = [], threading.Condition()

    def collect(body: Any, message: Any) -> None:
        message.ack()
        with changed:
            got.append(body)
            changed.notify_all()

    conn = Connection(amqp_url)
    try:
        with Consumer(conn, [queue], callbacks=[collect]):
            link = conn.link
            raw_channel.basic_publish(
                '',
                unique_name,
                b'{not json',
                pika.BasicProperties(content_type='application/json', content_encoding='utf-8'),
            )
            raw_channel.basic_publish(
                '',
                unique_name,
                b'\xff\xfe\x00',
                pika.BasicProperties(content_type='application/json', content_encoding='utf-8'),
            )
            Producer(conn, routing_key=unique_name).publish({'ok': True})
            with changed:
                assert changed.wait_for(lambda: got, WAIT)
            assert got == [{'ok': True}]
            assert link.state == 'OPEN' and link._thread.is_alive()
            assert link.stats()['reconnects'] == 0

            def rejected() -> bool:  # nothing left, unacked or ready: rejected, not requeued
                return list_queues()[unique_name].messages == 0

            eventually(rejected, timeout=WAIT)
        assert got == [{'ok': True}]
    finally:
        conn.release()
        raw_channel.queue_delete(unique_name)
