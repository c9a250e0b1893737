"""A caller thread that writes a publication itself and finds the socket full (the broker
stopped reading) finishes the frame when the broker reads again, or, past its bound, drops
the connection: a half-written frame never corrupts the stream, no caller hangs."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Dict, List

from pika_rpc import App
from pika_rpc.errors import PublishError
from tests.faultproxy import FaultProxy
from tests.helpers import LinkEvents, eventually

WAIT = 30.0
WRITERS = 7  # below DIRECT_MAX_IN_FLIGHT: every one writes for itself
BODY = 'x' * 60_000  # under DIRECT_MAX_BODY once encoded


def _stalled_writers(client: App, fault_proxy: FaultProxy, queue: str, timeout: float) -> tuple:
    """Pause the proxy, shrink the socket's send buffer, start WRITERS threads storing big
    results; return once one of them holds the write lock in the middle of a frame."""
    link = client.backend._get_link()
    link.call(lambda: None, timeout=WAIT)
    pipeline = link._outbox.pipeline
    pipeline._socket.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fault_proxy.pause()
    outcome: Dict[str, Any] = {}

    def store(i: int) -> None:
        task_id = f'stalled-{i}'
        try:
            client.backend.store_result(
                task_id,
                BODY,
                'SUCCESS',
                timeout=timeout,
                request={'reply_to': queue, 'id': task_id},
            )
            outcome[task_id] = 'stored'
        except Exception as exc:  # recorded: the test asserts on it
            outcome[task_id] = exc

    threads = [threading.Thread(target=store, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    # Nothing can be confirmed while the proxy holds everything back; a writer that found
    # the socket full keeps the write lock until the rest of its frame is out (the others
    # wait for the lock, or queue for the I/O thread).
    assert eventually(
        lambda: pipeline._wlock.locked() and pipeline.direct_writes >= 1, timeout=WAIT
    )
    assert outcome == {}
    return link, threads, outcome


def _bodies(raw_channel: Any, queue: str) -> List[Any]:
    out = []
    while True:
        method, _props, body = raw_channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(json.loads(body)['result'])


def test_a_frame_cut_short_by_a_stalled_broker_is_finished_when_it_reads_again(
    client: App, fault_proxy: FaultProxy, result_queue: str, raw_channel: Any
) -> None:
    link, threads, outcome = _stalled_writers(client, fault_proxy, result_queue, WAIT)
    big = 'y' * 100_000  # too big for a caller's own write: the I/O thread's to send
    stored_big = threading.Event()

    def store_big() -> None:
        client.backend.store_result(
            'big', big, 'SUCCESS', timeout=WAIT, request={'reply_to': result_queue, 'id': 'big'}
        )
        stored_big.set()

    threading.Thread(target=store_big, daemon=True).start()
    # The I/O thread does not wait for the stalled writer's lock: it puts the publish back
    # and tries again a moment later (and goes on reading meanwhile).
    assert eventually(lambda: link.stats()['write_busy'] >= 2, timeout=WAIT)
    assert outcome == {} and not stored_big.is_set()
    fault_proxy.resume()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert stored_big.wait(WAIT)
    assert set(outcome.values()) == {'stored'}, outcome
    assert link.stats()['reconnects'] == 0  # the same connection carried on
    assert sorted(_bodies(raw_channel, result_queue)) == [BODY] * WRITERS + [big]


def test_a_frame_the_broker_never_takes_drops_the_connection_and_fails_at_the_deadline(
    client: App, fault_proxy: FaultProxy, result_queue: str, raw_channel: Any
) -> None:
    events = LinkEvents(client.backend._get_link())
    started = time.monotonic()
    link, threads, outcome = _stalled_writers(client, fault_proxy, result_queue, 1.5)
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    # Each store gave up at its deadline (the blocked writer holds the lock no longer than
    # its own deadline, or 1 s, whichever is later), not when the broker came back.
    assert time.monotonic() - started < WAIT
    assert len(outcome) == WRITERS
    assert all(isinstance(e, PublishError) for e in outcome.values()), outcome
    assert events.wait('lost')  # the half-written stream was dropped
    fault_proxy.resume()
    assert events.wait('connected')
    client.backend.store_result(
        'after', 'ok', 'SUCCESS', request={'reply_to': result_queue, 'id': 'after'}
    )
    # Whatever reached the broker is whole: every message in the queue decodes.
    bodies = _bodies(raw_channel, result_queue)
    assert bodies[-1] == 'ok' and all(b == BODY for b in bodies[:-1])
