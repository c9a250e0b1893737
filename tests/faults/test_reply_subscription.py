"""Subscribing the reply queue holds no lock across the broker round trip (fault proxy).

The proxy is paused while one thread subscribes the reply queue, so that thread's round trip
stalls; meanwhile other threads that need the subscription wait for it, each within its own
deadline, and never subscribe a second time. ``link.consume`` is wrapped (not replaced) to
see when the round trip starts and how often it is asked for.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional

import pytest

from pika_rpc import App
from pika_rpc.errors import TimeoutError
from tests.faultproxy import FaultProxy

WAIT = 30.0


class _Call(threading.Thread):
    """Runs ``fn()`` on its own thread and keeps what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.error = fn, None  # type: Callable[[], Any], Optional[BaseException]
        self.start()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # recorded: the test asserts on it
            self.error = exc


@pytest.fixture
def stalled_subscribe(
    make_client: Callable[..., App], fault_proxy: FaultProxy, monkeypatch: Any
) -> Any:
    """``(client, consumes, subscriber)``: a thread in the reply queue's subscribe round trip,
    stalled by the paused proxy until the test resumes it."""
    client = make_client(publish_timeout=60)
    link = client.backend._get_link()
    link.call(lambda: None, timeout=WAIT)  # connected before the pause
    consumes: List[Any] = []
    in_consume = threading.Event()
    consume = link.consume

    def counting_consume(spec: Any, timeout: Optional[float] = None) -> str:
        consumes.append(spec)
        in_consume.set()
        return consume(spec, timeout=timeout)

    monkeypatch.setattr(link, 'consume', counting_consume)
    fault_proxy.pause()
    subscriber = _Call(client.backend.result_consumer.start)
    assert in_consume.wait(WAIT)
    return client, consumes, subscriber


def test_a_get_times_out_at_its_own_deadline_while_another_thread_subscribes(
    stalled_subscribe: Any, fault_proxy: FaultProxy
) -> None:
    client, consumes, subscriber = stalled_subscribe
    waiter = _Call(lambda: client.AsyncResult('waited').get(timeout=1.0))
    waiter.join(WAIT / 2)
    assert not waiter.is_alive(), "get() waited for the other thread's round trip"
    assert isinstance(waiter.error, TimeoutError) and 'waited' in str(waiter.error)
    assert subscriber.is_alive()  # its round trip is still stalled
    fault_proxy.resume()
    subscriber.join(WAIT)
    assert not subscriber.is_alive() and subscriber.error is None
    assert len(consumes) == 1


def test_threads_that_need_the_reply_queue_wait_for_one_subscription_and_share_it(
    stalled_subscribe: Any, fault_proxy: FaultProxy
) -> None:
    client, consumes, subscriber = stalled_subscribe
    others = [_Call(client.backend.result_consumer.start) for _ in range(3)]
    fault_proxy.resume()
    for thread in [subscriber] + others:
        thread.join(WAIT)
        assert not thread.is_alive() and thread.error is None
    assert len(consumes) == 1
