"""Publications racing the loss of their channel or connection, against the real broker.

Every publication handed to the link ends confirmed, re-published under its retry budget, or
failed with a typed error, whatever fails when: the broker closing the publish channel and the
connection dropping while it is reopened; a caller writing a publication itself when the
socket is closed under it. None is lost, none is sent twice. Connections are cut by the fault
proxy; what reached the broker is read straight from it (``raw_channel``).
"""
from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from pika_rpc._iothread import OPEN, Link, Publication
from pika_rpc.config import Settings, connection_options
from pika_rpc.errors import PublishError
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents

WAIT = 30.0
CHANNEL_OPEN = (20, 10)
CONFIRM_SELECT = (85, 10)


def _noop() -> None:
    pass


def _proxied_link(fault_proxy: FaultProxy, amqp_url: str, **kwargs: Any) -> Link:
    link = Link(connection_options(Settings(broker_url=fault_proxy.url(amqp_url))),
                connect_interval=(0.0, 0.01, 0.05), max_connect_retries=1000, **kwargs)
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
            except BaseException as exc:   # asserted empty on exit
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
@pytest.mark.parametrize('cut_at', [CHANNEL_OPEN, CONFIRM_SELECT],
                         ids=['at-channel-open', 'at-confirm-select'])
def test_publications_discarded_with_the_publish_channel_settle_when_the_connection_drops_during_its_reopen(
        fault_proxy: FaultProxy, amqp_url: str, result_queue: str, raw_channel: Any,
        unique_name: str, cut_at: tuple, direct_writes: bool) -> None:
    link = _proxied_link(fault_proxy, amqp_url, direct_writes=direct_writes)
    try:
        events = LinkEvents(link)
        # No timeout: a publication nobody settles would keep its caller waiting forever.
        good = [Publication('', result_queue, b'%d' % i, {'correlation_id': str(i)},
                            max_retries=3, timeout=None) for i in range(30)]
        bad = Publication(f'{unique_name}-missing', 'x', b'bad', {}, max_retries=3, timeout=None)
        batch = good[:5] + [bad] + good[5:]
        # The only Channel.Open/Confirm.Select from now on is the publish channel's reopen
        # after the broker closed it for the publish to the missing exchange.
        fault_proxy.cut_at_next_method(*cut_at)
        with _IOThreadHeld(link):         # all in flight before the broker's close is read
            for pub in batch:
                link.publish(pub)
        assert fault_proxy.wait_for(lambda: fault_proxy.cut_count == 1, timeout=WAIT)
        assert events.wait('lost') and events.wait('connected')

        assert _unsettled(batch, WAIT) == []
        assert isinstance(bad.error, PublishError) and '404' in str(bad.error)
        assert bad.attempts == 1                     # an argument error is never retried
        assert [p.error for p in good] == [None] * len(good)
        assert all(p.returned is None for p in good)
        assert link.state == OPEN
        assert link.stats()['in_flight'] == 0 and link.stats()['queued_commands'] == 0
    finally:
        link.close(5.0)
    # At least once: one routed before the close but confirmed only after it may come twice.
    bodies = _drain(raw_channel, result_queue)
    assert set(bodies) == {p.body for p in good}
