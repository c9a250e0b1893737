"""Publications racing the loss of their channel or connection, against the real broker.

Every publication handed to the link ends confirmed, re-published under its retry budget, or
failed with a typed error, whatever fails when: the broker closing the publish channel and the
connection dropping while it is reopened; a caller writing a publication itself when the
socket is closed under it. None is lost, none is sent twice. Connections are cut by the fault
proxy; what reached the broker is read straight from it (``raw_channel``).
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest

from pika_rpc._handoff import Publication
from pika_rpc._link import OPEN, Link
from pika_rpc.config import Settings, connection_options
from pika_rpc.errors import ClosedError, PublishError
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents, eventually

WAIT = 30.0
CHANNEL_OPEN = (20, 10)
CONFIRM_SELECT = (85, 10)
BIG = 60_000  # a caller writes it itself (under DIRECT_MAX_BODY)


def _noop() -> None:
    pass


def _proxied_link(fault_proxy: FaultProxy, amqp_url: str, **kwargs: Any) -> Link:
    link = Link(
        connection_options(Settings(broker_url=fault_proxy.url(amqp_url))),
        connect_interval=(0.0, 0.01, 0.05),
        max_connect_retries=1000,
        **kwargs,
    )
    link.call(_noop, timeout=WAIT)
    return link


class _IOThreadHeld:
    """Holds the I/O thread inside one command until the block ends (bounded by WAIT), so
    what is published meanwhile goes out in one batch (or is written by the callers)."""

    def __init__(self, link: Link) -> None:
        self._started, self._release = threading.Event(), threading.Event()
        self.errors: List[BaseException] = []

        def hold() -> None:
            self._started.set()
            self._release.wait(WAIT)

        def run() -> None:
            try:
                link.call(hold, timeout=WAIT * 2)
            except BaseException as exc:  # asserted empty on exit
                self.errors.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> '_IOThreadHeld':
        self._thread.start()
        assert self._started.wait(WAIT), 'the I/O thread never ran the holding command'
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive() and self.errors == []


def _drain(raw_channel: Any, queue: str) -> List[bytes]:
    bodies = []
    while True:
        method, _props, body = raw_channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def _unsettled(pubs: List[Publication], timeout: float) -> List[Publication]:
    """The publications still unsettled after waiting up to ``timeout`` for all of them."""
    dl = time.monotonic() + timeout
    return [p for p in pubs if not p.wait(max(0.0, dl - time.monotonic()))]


# ------------------------------------------------------------------ item: channel reopen


@pytest.mark.parametrize('direct_writes', [False, True], ids=['queued', 'direct'])
@pytest.mark.parametrize(
    'cut_at', [CHANNEL_OPEN, CONFIRM_SELECT], ids=['at-channel-open', 'at-confirm-select']
)
def test_publications_discarded_with_the_publish_channel_settle_when_the_connection_drops_during_its_reopen(
    fault_proxy: FaultProxy,
    amqp_url: str,
    result_queue: str,
    raw_channel: Any,
    unique_name: str,
    cut_at: tuple,
    direct_writes: bool,
) -> None:
    link = _proxied_link(fault_proxy, amqp_url, direct_writes=direct_writes)
    try:
        events = LinkEvents(link)
        # No timeout: a publication nobody settles would keep its caller waiting forever.
        good = [
            Publication(
                '',
                result_queue,
                b'%d' % i,
                {'correlation_id': str(i)},
                policy={'max_retries': 3},
                timeout=None,
            )
            for i in range(30)
        ]
        bad = Publication(
            f'{unique_name}-missing', 'x', b'bad', {}, policy={'max_retries': 3}, timeout=None
        )
        batch = good[:5] + [bad] + good[5:]
        # The only Channel.Open/Confirm.Select from now on is the publish channel's reopen
        # after the broker closed it for the publish to the missing exchange.
        fault_proxy.cut_at_next_method(*cut_at)
        with _IOThreadHeld(link):  # all in flight before the broker's close is read
            for pub in batch:
                link.publish(pub)
        assert fault_proxy.wait_for(lambda: fault_proxy.cut_count == 1, timeout=WAIT)
        assert events.wait('lost') and events.wait('connected')

        assert _unsettled(batch, WAIT) == []
        assert isinstance(bad.error, PublishError) and '404' in str(bad.error)
        assert bad.attempts == 1  # an argument error is never retried
        assert [p.error for p in good] == [None] * len(good)
        assert all(p.returned is None for p in good)
        assert link.state == OPEN
        assert link.stats()['in_flight'] == 0 and link.stats()['queued_commands'] == 0
    finally:
        link.close(5.0)
    # At least once: one routed before the close but confirmed only after it may come twice.
    bodies = _drain(raw_channel, result_queue)
    assert set(bodies) == {p.body for p in good}


def test_a_bug_in_the_middle_of_a_batch_fails_every_publication_of_it_with_a_typed_error(
    amqp_url: str, result_queue: str
) -> None:
    link = Link(connection_options(Settings(broker_url=amqp_url)), direct_writes=False)
    try:
        link.call(_noop, timeout=WAIT)
        pubs = [Publication('', result_queue, b'%d' % i, {}, timeout=None) for i in range(10)]
        do_publish = link._outbox.send

        def bug_at_the_sixth(pub: Publication) -> None:
            if pub is pubs[5]:
                raise RuntimeError('injected bug')  # the I/O thread dies of it
            do_publish(pub)

        link._outbox.send = bug_at_the_sixth  # type: ignore[method-assign]
        with _IOThreadHeld(link):  # all ten in one batch
            for pub in pubs:
                link.publish(pub)
        assert _unsettled(pubs, WAIT) == []
        assert all(
            isinstance(p.error, ClosedError) and 'injected bug' in str(p.error) for p in pubs
        ), [p.error for p in pubs]
        assert link.closed
    finally:
        link.close(5.0)


# ------------------------------------------------------------------ item: direct write twice


def _stall_direct_writes(link: Link, fault_proxy: FaultProxy) -> Any:
    """Pause the proxy and shrink the send buffer: a caller writing a big publication
    itself is soon left with part of a frame the socket does not take."""
    pipeline = link._outbox.pipeline
    pipeline._socket.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fault_proxy.pause()
    return pipeline


def _publish_in_thread(
    link: Link, pubs: List[Publication]
) -> Tuple[threading.Thread, List[BaseException]]:
    """Publish ``pubs`` one after the other on a new thread; returns it and its errors."""
    errors: List[BaseException] = []

    def publish() -> None:
        try:
            for pub in pubs:
                link.publish(pub)
        except BaseException as exc:  # asserted empty by the test
            errors.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread, errors


def _big_publications(queue: str, n: int) -> List[Publication]:
    return [
        Publication(
            '',
            queue,
            b'%d' % i + b'.' * BIG,
            {'correlation_id': f'big-{i}'},
            policy={'max_retries': 3},
            timeout=WAIT,
        )
        for i in range(n)
    ]


def test_a_direct_write_whose_socket_pika_closes_under_it_is_published_exactly_once(
    fault_proxy: FaultProxy, amqp_url: str, result_queue: str, raw_channel: Any
) -> None:
    link = _proxied_link(fault_proxy, amqp_url)
    try:
        events = LinkEvents(link)
        pipeline = _stall_direct_writes(link, fault_proxy)
        stalled = threading.Event()
        wait_writable = pipeline._wait_writable

        def socket_closed_under_the_writer(timeout: float) -> None:
            # The test seam: the writer is in the middle of a frame; it waits for the
            # socket only once the I/O thread has lost the connection and pika has closed
            # that socket (the window the issue hit by chance).
            stalled.set()
            assert events.wait('lost', timeout=WAIT)
            wait_writable(timeout)

        pipeline._wait_writable = socket_closed_under_the_writer
        pubs = _big_publications(result_queue, 7)
        writer, errors = _publish_in_thread(link, pubs)
        assert stalled.wait(WAIT)
        published_before = fault_proxy.publish_count
        fault_proxy.cut()  # pika reads the reset and closes the socket
        fault_proxy.resume()
        writer.join(WAIT)
        assert not writer.is_alive() and errors == []
        assert _unsettled(pubs, WAIT) == []
        assert [p.error for p in pubs] == [None] * len(pubs)
        # Nothing passed the paused proxy: each one was sent once, after the reconnect.
        assert fault_proxy.publish_count - published_before == len(pubs)
    finally:
        link.close(5.0)
    assert sorted(_drain(raw_channel, result_queue)) == sorted(p.body for p in pubs)


@pytest.fixture
def descriptors_past_select_limit() -> Iterator[None]:
    """Open descriptors until the next socket's number is above 1024, where ``select()``
    refuses it (a process serving many connections); closed afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f'RLIMIT_NOFILE hard limit {hard} < {want}')
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: List[socket.socket] = []
    try:
        while True:
            sock = socket.socket()
            held.append(sock)
            if sock.fileno() > 1030:
                break
        yield
    finally:
        for sock in held:
            sock.close()
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_stalled_direct_write_on_a_descriptor_past_select_limit_finishes_when_the_broker_reads(
    descriptors_past_select_limit: None,
    fault_proxy: FaultProxy,
    amqp_url: str,
    result_queue: str,
    raw_channel: Any,
) -> None:
    link = _proxied_link(fault_proxy, amqp_url)
    try:
        pipeline = _stall_direct_writes(link, fault_proxy)
        assert pipeline._socket.sock.fileno() > 1024
        pubs = _big_publications(result_queue, 7)
        writer, errors = _publish_in_thread(link, pubs)
        # The writer holds the write lock in the middle of a frame the socket did not take
        # (before the fix: select() raised ValueError there, and the writer went on).
        assert eventually(
            lambda: (
                (pipeline._wlock.locked() and pipeline.direct_writes >= 1) or not writer.is_alive()
            ),
            timeout=WAIT,
        )
        fault_proxy.resume()
        writer.join(WAIT)
        assert not writer.is_alive() and errors == []
        assert _unsettled(pubs, WAIT) == []
        assert [p.error for p in pubs] == [None] * len(pubs)
        assert link.stats()['reconnects'] == 0  # the stream stayed whole
    finally:
        link.close(5.0)
    assert sorted(_drain(raw_channel, result_queue)) == sorted(p.body for p in pubs)
