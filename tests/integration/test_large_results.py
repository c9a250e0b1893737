"""Large results against the real broker: read as they arrive, the connection kept alive.

A result of many megabytes spans thousands of socket reads (pika reads 4 KB at a time). The
delivery reader must take each read once — never buffer the partial delivery and parse it
again — and count the bytes as received as they come, or pika's heartbeat checker (with
``broker_heartbeat=1`` it looks every 6 s) drops a connection that is busy receiving.
The results are published by a raw pika connection, as a Celery worker would.
"""

from __future__ import annotations

import socket
import threading
import uuid
from typing import Any, Iterator, List, Optional

import pika
import pytest

from pika_rpc import App, _deliveries, _pika
from pika_rpc.errors import ClosedError
from tests.helpers import LinkEvents, pika_parameters

WAIT = 60.0


def result_message(task_id: str, size: int) -> bytes:
    """A Celery SUCCESS body whose result is a string of ``size`` characters."""
    return (
        b'{"status": "SUCCESS", "result": "' + b'x' * size + b'", "traceback": null, '
        b'"children": [], "date_done": null, "task_id": "' + task_id.encode() + b'"}'
    )


def publish_result(amqp_url: str, queue: str, task_id: str, size: int) -> None:
    """Publish the result with a confirm (it is in the queue on return)."""
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            '',
            queue,
            result_message(task_id, size),
            pika.BasicProperties(
                content_type='application/json', content_encoding='utf-8', correlation_id=task_id
            ),
            mandatory=True,
        )


def started_app(url: str, **conf: Any) -> App:
    app = App(broker=url, result_expires=120, **conf)
    app.backend.on_task_call(None, str(uuid.uuid4()))  # the reply consumer runs
    return app


class ReadWatch:
    """Wraps the reader installed on the link's connection: after each socket read, how
    many bytes it kept to parse again later (``kept``)."""

    def __init__(self, app: App) -> None:
        link = app.backend._get_link()
        impl = link.wire.impl
        self.reader = link.reader
        self.kept: List[int] = []
        self.reads = 0
        on_data = impl._on_data_available

        def watched(data: bytes) -> None:
            on_data(data)
            self.reads += 1
            self.kept.append(len(self.reader._buf))

        impl._on_data_available = watched


def test_a_16_mb_result_is_taken_read_by_read_and_parsed_once(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: List[int] = []
    real_parse = _deliveries._parse_delivery
    monkeypatch.setattr(
        _deliveries, '_parse_delivery', lambda *args: parses.append(1) or real_parse(*args)
    )
    app = started_app(amqp_url)
    try:
        watch = ReadWatch(app)
        task_id = str(uuid.uuid4())
        app.backend.on_task_call(None, task_id)
        parses.clear()
        publish_result(amqp_url, app.backend.oid, task_id, 16 << 20)
        assert len(app.AsyncResult(task_id).get(timeout=WAIT)) == 16 << 20
        assert watch.reads > 100  # it did span hundreds of reads
        transport = app.backend._get_link().wire.impl._transport
        assert transport._MAX_RECV_BYTES == _pika.READ_SIZE  # 64 KB per read, not pika's 4 KB
        assert transport._MAX_CONSUME_BYTES == 1  # one read per readiness event
        assert max(watch.kept) < 1024  # never the partial delivery (16 MB)
        assert len(parses) == 1  # once, not once per read
    finally:
        app.close()


def test_a_32_mb_result_with_a_one_second_heartbeat_arrives_on_the_same_connection(
    fault_proxy: Any, amqp_url: str
) -> None:
    app = started_app(fault_proxy.url(amqp_url), broker_heartbeat=1)
    try:
        link = app.backend._get_link()
        events = LinkEvents(link)
        task_id = str(uuid.uuid4())
        app.backend.on_task_call(None, task_id)
        publish_result(amqp_url, app.backend.oid, task_id, 32 << 20)
        assert len(app.AsyncResult(task_id).get(timeout=WAIT)) == 32 << 20
        assert link.stats()['reconnects'] == 0 and events.count('lost') == 0, events.events
        assert fault_proxy.connection_attempts == 1
    finally:
        app.close()


class SlowRelay:
    """A TCP relay to the broker that passes the broker's bytes on at ``rate`` bytes/s (the
    client's bytes go at once): a slow link for one connection."""

    def __init__(self, host: str, port: int, rate: int) -> None:
        self._target = (host, port)
        self._rate = rate
        self._stop = threading.Event()
        self._listener = socket.create_server(('127.0.0.1', 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: List[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return  # closed before anyone came
        server = socket.create_connection(self._target)
        self._sockets += [client, server]
        for args in ((client, server, 0), (server, client, self._rate)):
            thread = threading.Thread(target=self._pump, args=args, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, rate: int) -> None:
        chunk = max(1, rate // 20) if rate else 65536
        try:
            while not self._stop.is_set():
                data = source.recv(chunk)
                if not data:
                    break
                sink.sendall(data)
                if rate:
                    self._stop.wait(len(data) / rate)  # pacing, not a synchronisation
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def slow_relay(broker: Any) -> Iterator[SlowRelay]:
    relay = SlowRelay(broker.host, broker.port, rate=160_000)
    yield relay
    relay.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_result_arriving_for_longer_than_two_heartbeat_checks_keeps_the_connection(
    slow_relay: SlowRelay, amqp_url: str
) -> None:
    # 2 MB at 160 kB/s: 13 s, more than two of pika's 6 s checks (broker_heartbeat=1) with
    # nothing but the result arriving. Bytes must count as received as they are read.
    from tests.faultproxy import _retarget

    app = started_app(_retarget(amqp_url, '127.0.0.1', slow_relay.port), broker_heartbeat=1)
    try:
        link = app.backend._get_link()
        events = LinkEvents(link)
        task_id = str(uuid.uuid4())
        app.backend.on_task_call(None, task_id)
        publish_result(amqp_url, app.backend.oid, task_id, 2 << 20)
        assert len(app.AsyncResult(task_id).get(timeout=WAIT)) == 2 << 20
        assert link.stats()['reconnects'] == 0 and events.count('lost') == 0, events.events
    finally:
        app.close()


def test_a_pika_whose_frame_reader_differs_fails_loudly_at_connect(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frame reader that does not count what it reads in bytes_received: pika's heartbeat
    # checker would see a busy connection as idle. The link must refuse it, not run on.
    real = pika.connection.Connection._on_data_available

    def uncounted(self: Any, data_in: bytes) -> None:
        before = self.bytes_received
        real(self, data_in)
        self.bytes_received = before

    monkeypatch.setattr(pika.connection.Connection, '_on_data_available', uncounted)
    # Connection options no other test uses: a link of its own (links are shared per
    # process by options, and one made earlier was checked when it connected).
    app = App(broker=amqp_url, result_expires=120, broker_heartbeat=113)
    try:
        with pytest.raises(ClosedError, match='PikaContractError: .*bytes_received'):
            app.backend.on_task_call(None, str(uuid.uuid4()), timeout=WAIT)
    finally:
        app.close()
