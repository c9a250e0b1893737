"""An I/O thread that dies from a bug wakes every waiter with that error, never silence.

The bug is injected by making one loop step raise inside the real I/O thread.
"""

from __future__ import annotations

import threading

import pika_rpc
import pika_rpc._handoff
from tests.helpers import eventually


def test_waiters_wake_with_the_error_when_the_io_thread_dies_and_the_next_call_works(app):
    backend = app.backend
    results = [app.send_task('tasks.never', ()) for _ in range(5)]
    errors, ready = [], threading.Barrier(6)

    def waiter(result):
        ready.wait(10)
        try:
            result.get(timeout=60)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(r,)) for r in results]
    for t in threads:
        t.start()
    ready.wait(10)
    # Every waiter is inside get() before the bug strikes (a get() that starts after the
    # thread died runs on the next link and waits again: a different, tested case below).
    assert eventually(lambda: all(backend._pending._slots[r.id].waiters for r in results))
    link = backend._get_link()

    def boom():
        raise RuntimeError('injected bug')

    link._consumers.flush_acks = boom  # the next loop turn raises inside the I/O thread
    link.enqueue(pika_rpc._handoff.Command(lambda: None, (), 'nudge'), None)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert len(errors) == 5
    assert all(isinstance(e, pika_rpc.ConnectionLost) and 'injected bug' in str(e) for e in errors)
    assert link.closed
    r = app.send_task('tasks.after', ())  # a new I/O thread takes over
    backend.mark_as_done(r.id, 'alive', request={'reply_to': backend.oid, 'correlation_id': r.id})
    assert r.get(timeout=20) == 'alive'
    assert backend._get_link() is not link
    # The reply queue outlived the dead thread: a result stored now still reaches a new waiter.
    late = results[0]
    backend.mark_as_done(
        late.id, 'late', request={'reply_to': backend.oid, 'correlation_id': late.id}
    )
    assert late.get(timeout=20) == 'late'
