"""A fork while another thread of the parent holds a lock must not wedge the child.

A forked child has only the forking thread: a lock some other parent thread held at the
fork stays held for ever in the child, unless the child makes it anew. Each test holds the
locks of one family in a parent thread (deterministically: an Event handshake), forks with
a real ``os.fork()``, lets the child take the code path that needs them, against the real
broker, and reads the child's report through a pipe. A child that deadlocks sends nothing:
the parent kills it when ``REPORT_WAIT`` passes and the test fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from typing import Any, Callable, ContextManager, List

import pytest

from pika_rpc import App, serialization
from pika_rpc._threads import Counters, SerialExecutor
from pika_rpc.entities import Message, Queue
from pika_rpc.messaging import Connection, Consumer, Producer

WAIT = 30.0
CHILD_WAIT = 20.0  # the child's own bounded waits: it reports a timeout rather than hang
REPORT_WAIT = 60.0  # the parent's bound on the child's report


class ForkProbeError(Exception):
    pass


# Results name it by a module no process has: decoding it synthesizes a class (both locks).
ForkProbeError.__module__ = 'pika_rpc_fork_probe_not_a_module'


def fork_while_held(locks: List[ContextManager[Any]], child: Callable[[], str]) -> str:
    """Fork while a parent thread holds ``locks``; return what ``child()`` reported.

    The child runs ``child()`` and writes its return value (or the exception it raised) to a
    pipe, then ``os._exit``s. Returns ``'no report'`` if none came within ``REPORT_WAIT``
    (the child is then killed).
    """
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            held.set()
            release.wait(WAIT)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(WAIT)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            try:
                report = child()
            except BaseException as exc:
                report = f'raised {type(exc).__name__}: {exc}'
            os.write(write_fd, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    release.set()
    thread.join(WAIT)
    try:
        readable, _, _ = select.select([read_fd], [], [], REPORT_WAIT)
        if not readable:
            os.kill(pid, signal.SIGKILL)
            return 'no report'
        chunks = []
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                return b''.join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)


def request_for(backend: Any, task_id: str) -> dict:
    return {'id': task_id, 'reply_to': backend.oid, 'correlation_id': task_id}


# ------------------------------------------------------------------ serialization


@pytest.mark.parametrize('lock_name', ['_lock', '_synth_lock'])
def test_a_child_decodes_a_failure_while_a_parent_thread_held_a_serialization_lock(
    app: App, lock_name: str
) -> None:
    warm = app.send_task('tasks.warm', ())  # the parent's link and reply queue are up
    app.backend.mark_as_done(warm.id, 1, request=request_for(app.backend, warm.id))
    assert warm.get(timeout=WAIT) == 1

    def child() -> str:
        result = app.send_task('tasks.fork_probe', ())
        app.backend.mark_as_failure(
            result.id, ForkProbeError('boom', 7), request=request_for(app.backend, result.id)
        )
        try:
            result.get(timeout=CHILD_WAIT)
        except Exception as exc:
            return f'{type(exc).__name__} {exc.args}'
        return 'no exception'

    report = fork_while_held([getattr(serialization, lock_name)], child)
    assert report == "ForkProbeError ('boom', 7)"


# ------------------------------------------------------------------ Connection and Consumer


def test_a_child_consumes_with_the_parents_consumer_while_a_parent_thread_held_its_locks(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    conn = Connection(amqp_url)
    name = f'{unique_name}-fork'
    got: List[Any] = []

    def callback(body: Any, message: Message) -> None:
        message.ack()
        got.append(body)

    consumer = Consumer(conn, [Queue(name, expires=60)], callbacks=[callback])
    try:

        def child() -> str:
            consumer.consume()
            Producer(conn, routing_key=name, serializer='json').publish('from the child')
            conn.drain_events(timeout=CHILD_WAIT)
            consumer.cancel()
            return repr(got)

        report = fork_while_held([conn._lock, conn._handled, consumer._lock], child)
        assert report == "['from the child']"
        assert raw_channel.queue_declare(name, passive=True).method.message_count == 0
    finally:
        conn.release()
        raw_channel.queue_delete(name)


# ------------------------------------------------------------------ Message


def test_acking_the_parents_message_in_a_child_is_refused_even_with_its_link_locked(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    conn = Connection(amqp_url)
    name = f'{unique_name}-fork'
    received: List[Message] = []
    arrived = threading.Event()

    def callback(body: Any, message: Message) -> None:  # keeps it unacked
        received.append(message)
        arrived.set()

    consumer = Consumer(conn, [Queue(name, expires=60)], callbacks=[callback])
    try:
        consumer.consume()
        Producer(conn, routing_key=name, serializer='json').publish('parent')
        assert arrived.wait(WAIT)

        def child() -> str:
            try:
                received[0].ack()
            except Message.MessageStateError as exc:
                return f'refused: {exc}'
            return 'acked'

        report = fork_while_held([conn.link.handoff.mutex], child)
        assert report.startswith('refused: This message was received by the parent process')
        received[0].ack()  # the parent still can
        consumer.cancel()
        assert raw_channel.queue_declare(name, passive=True).method.message_count == 0
    finally:
        conn.release()
        raw_channel.queue_delete(name)


# ------------------------------------------------------------------ helper threads


def test_a_child_stops_an_inherited_executor_whose_lock_a_parent_thread_held() -> None:
    executor = SerialExecutor('fork-probe')
    ran = threading.Event()
    executor.submit(ran.set)  # its thread runs in the parent
    assert ran.wait(WAIT)

    def child() -> str:
        executor.stop(CHILD_WAIT)  # e.g. a worker or backend closing in the child
        return 'stopped'

    try:
        assert fork_while_held([executor._lock], child) == 'stopped'
    finally:
        executor.stop(WAIT)


def test_a_child_counts_on_inherited_counters_whose_lock_a_parent_thread_held() -> None:
    counters = Counters('stored')
    counters.add('stored')

    def child() -> str:
        counters.add('stored')  # e.g. a backend storing a result in the child
        return str(counters.snapshot())

    assert fork_while_held([counters._lock], child) == "{'stored': 2}"


# ------------------------------------------------------------------ worker, link, broker finder


def test_a_child_stops_an_inherited_worker_whose_locks_a_parent_thread_held(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    from pika_rpc import Worker

    app = App(broker=amqp_url, task_default_queue=f'{unique_name}-tasks')
    worker = Worker(app, concurrency=1).start()
    try:

        def child() -> str:
            worker.revoke('fork-probe-task')  # the revoked set's lock
            stopped = worker.stop(CHILD_WAIT)
            return f'{worker.stats()["state"]} {stopped} {"fork-probe-task" in worker.revoked}'

        report = fork_while_held([worker.revoked._lock], child)
        assert report == 'STOPPED True True'
    finally:
        worker.stop(WAIT)
        app.close()
        raw_channel.queue_delete(f'{unique_name}-tasks')


def test_a_child_using_an_abandoned_parent_link_is_refused_even_with_its_mutex_held(
    amqp_url: str,
) -> None:
    from pika_rpc.errors import ClosedError

    conn = Connection(amqp_url)
    link = conn.link
    link.control('declare_exchange', exchange='amq.direct', passive=True, timeout=WAIT)

    def child() -> str:
        try:
            link.control(
                'declare_exchange', exchange='amq.direct', passive=True, timeout=CHILD_WAIT
            )
        except ClosedError as exc:
            return f'refused: {exc}'
        return 'ran on the parent link'

    try:
        assert fork_while_held([link.handoff.mutex], child).startswith('refused: ')
    finally:
        conn.release()


def test_a_child_never_removes_the_broker_container_its_parent_started() -> None:
    from pika_rpc.findbroker import Broker

    class Container:  # stands in for a docker container object
        name = 'pika-rpc-fork-probe'
        removed: List[int] = []

        def stop(self, timeout: Any = None) -> None:
            self.removed.append(os.getpid())

        remove = kill = stop

    container = Container()
    broker = Broker('amqp://guest:guest@127.0.0.1:5672//', 'docker', container=container)
    try:

        def child() -> str:
            broker.close()
            return f'closed, container removed by {Container.removed}'

        assert fork_while_held([broker._close_lock], child) == 'closed, container removed by []'
    finally:
        import atexit

        atexit.unregister(broker.close)
