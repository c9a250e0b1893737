"""The implementations compared, behind one small interface a scenario drives.

* ``pr``: pika_rpc, one ``App`` per process shared by every thread (one I/O thread, one
  connection, one reply queue): ``backend.store_result(...)`` (waits for the confirm),
  ``app.AsyncResult(id).get()``, ``backend.get_task_meta()``. ``pr_unregistered``: the
  same without ``on_task_call`` before a result comes. ``pr_plain``: publishing without
  confirms (``broker_transport_options={'confirm_publish': False}``, where pika_rpc has
  it: ``features.no_confirms``); ``pr_quorum``: ``result_queue_type='quorum'`` (where it
  exists: ``features.quorum``); ``pr_classic``: ``pr`` under another name (its baseline).
* ``raw`` (``raw_confirm``), ``raw_noconfirm``: pika ``BlockingConnection``; as it is not
  thread-safe, one connection and one reply queue per thread (declared as pika_rpc's), a
  ``basic_consume`` callback doing the JSON decode + correlation lookup, one
  ``multiple=True`` ack per ``process_data_events`` turn (what pika_rpc does); publishing
  with sync confirms (``confirm_delivery()``) or without.
* ``raw_get``: raw pika polling with ``basic_get`` until the queue is empty, then a lookup.
* ``celery``: Celery 5 ``Celery(broker=url, backend='rpc://')``, its own backend per thread
  (``app.backend`` is thread-local: its own reply queue ``app.thread_oid``, its own consumer
  connection; publishing through the shared producer pool, no confirms). The reply queue
  is declared as ``send_task`` does it (``backend.on_task_call(producer, id)``).
  ``celery_shared``: one backend shared by all threads (not Celery's default).

The interface: ``thread_setup()`` (in the thread that will use it; returns its reply
queue), ``register(id)`` (what ``send_task`` does before publishing), ``store(id, value,
queue)``, ``get(id, timeout)``, ``poll(id)`` (the meta when ready, else None), ``close()``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import types
import uuid
from typing import Any, Dict, List, Optional, Tuple

from . import rawpika
from .harness import announce_queue


def pr_app(url: str, **conf: Any) -> Any:
    """A pika_rpc App as every benchmark builds it (reply queues expire after 600 s)."""
    import pika_rpc

    return pika_rpc.App(broker=url, result_expires=600, **conf)


def timeouts_of(impl: str) -> Tuple[type, ...]:
    """Exception types meaning 'not ready in time' (Celery's only imported for Celery: the
    other workers must not pay its import time and memory)."""
    out: List[type] = [TimeoutError, socket.timeout]
    if impl.startswith('celery'):
        from celery.exceptions import TimeoutError as CeleryTimeout

        out.append(CeleryTimeout)
    return tuple(out)


class PR:
    """pika_rpc: one App for the process; every thread uses it. ``registers=False``: ids are
    not registered before their result comes (it waits in the out-of-band buffer until a
    ``get()`` adopts it)."""

    def __init__(self, url: str, registers: bool = True, **conf: Any) -> None:
        self.registers = registers
        self.app = pr_app(url, **conf)
        self.backend = self.app.backend
        self.oid = self.backend.oid
        announce_queue(self.oid, url)
        self.backend.result_consumer.start()  # reply queue declared and consumed

    def thread_setup(self) -> str:
        return self.oid

    def register(self, tid: str) -> None:  # what send_task does before publishing
        if self.registers:
            self.backend.on_task_call(None, tid)

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.backend.store_result(
            tid, value, 'SUCCESS', request={'reply_to': queue, 'correlation_id': tid}
        )

    def get(self, tid: str, timeout: float) -> Any:
        return self.app.AsyncResult(tid).get(timeout=timeout)

    def poll(self, tid: str) -> Optional[Any]:
        meta = self.backend.get_task_meta(tid)
        return meta if meta['status'] == 'SUCCESS' else None

    def close(self) -> None:
        self.app.close()


class RawClient:
    """One BlockingConnection: a reply queue declared as pika_rpc's, a consumer doing the
    JSON decode + correlation lookup (acks batched per turn), a publishing channel."""

    def __init__(self, url: str, confirm: bool = True) -> None:
        self.conn = rawpika.raw_connection(url)
        self.queue = rawpika.unique('rawreply')
        announce_queue(self.queue, url)
        self.consumer = rawpika.RawConsumer(self.conn, self.queue)
        rawpika.declare_reply_queue(self.consumer.ch, self.queue)
        self.pub = self.conn.channel()
        if confirm:
            self.pub.confirm_delivery()
        self.consumer.start()

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.pub.basic_publish(
            '',
            queue,
            rawpika.result_body(tid, value),
            rawpika.result_properties(tid),
            mandatory=True,
        )

    def get(self, tid: str, timeout: float) -> Any:
        dl = time.monotonic() + timeout
        results = self.consumer.results
        while tid not in results:
            left = dl - time.monotonic()
            if left <= 0:
                raise TimeoutError(f'task {tid} not ready after {timeout} s')
            self.consumer.turn(min(1.0, left))
        return results.pop(tid)['result']

    def poll(self, tid: str) -> Optional[Any]:
        self.consumer.turn(0)
        return self.consumer.results.pop(tid, None)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


class Raw:
    """Raw pika: one ``RawClient`` per thread (BlockingConnection is not thread-safe)."""

    def __init__(self, url: str, confirm: bool = True) -> None:
        self.url, self.confirm = url, confirm
        self.local = threading.local()
        self.clients: List[RawClient] = []

    def thread_setup(self) -> str:
        client = RawClient(self.url, self.confirm)
        self.local.client = client
        self.clients.append(client)
        return client.queue

    def register(self, tid: str) -> None:
        pass

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.local.client.store(tid, value, queue)

    def get(self, tid: str, timeout: float) -> Any:
        return self.local.client.get(tid, timeout)

    def poll(self, tid: str) -> Optional[Any]:
        return self.local.client.poll(tid)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class RawGet:
    """Raw pika polling as the issue's baseline for ``poll``: one connection, a reply queue
    declared as pika_rpc's and nobody consuming it; ``poll`` = ``basic_get`` until empty,
    JSON decode + correlation lookup."""

    def __init__(self, url: str) -> None:
        self._loads = json.loads
        self.url = url
        self.results: Dict[str, Any] = {}

    def thread_setup(self) -> str:
        self.conn = rawpika.raw_connection(self.url)
        self.ch = self.conn.channel()
        self.queue = rawpika.unique('rawget')
        announce_queue(self.queue, self.url)
        rawpika.declare_reply_queue(self.ch, self.queue)
        return self.queue

    def register(self, tid: str) -> None:
        pass

    def poll(self, tid: str) -> Optional[Any]:
        while True:
            method, props, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            meta = self._loads(body)
            self.results[meta.get('task_id') or props.correlation_id] = meta
        return self.results.pop(tid, None)

    close = RawClient.close


def celery_app(url: str, backend: str = 'rpc://', **conf: Any) -> Any:
    """``Celery(broker=url, backend='rpc://')``; its connections are named ``bench-celery-PID``
    (``broker_transport_options`` -> py-amqp ``client_properties``) so the broker's
    listing can be matched to this process. ``backend='pika-rpc://'``: pika_rpc's plug-in
    (``features.use_celery_plugin``)."""
    from celery import Celery

    app = Celery('bench', broker=url, backend=backend, set_as_current=False)
    if backend.startswith('pika-rpc'):
        from .features import use_celery_plugin

        use_celery_plugin(app)
    app.conf.update(
        result_expires=600,
        broker_transport_options={
            'client_properties': {'connection_name': f'bench-celery-{os.getpid()}'}
        },
        **conf,
    )
    return app


class CeleryImpl:
    """Celery's rpc:// backend as Celery uses it: ``app.backend`` per thread (thread-local);
    ``shared``: one backend for every thread (not Celery's default)."""

    def __init__(self, url: str, shared: bool = False) -> None:
        self.url = url
        self.app = celery_app(url)
        self.shared = self.app.backend if shared else None

    @property
    def backend(self) -> Any:
        return self.shared if self.shared is not None else self.app.backend

    def thread_setup(self) -> str:
        """Declare this thread's reply queue as ``send_task`` does; return its name."""
        backend = self.backend
        announce_queue(backend.oid, self.url)
        with self.app.producer_or_acquire() as producer:
            backend.on_task_call(producer, str(uuid.uuid4()))
        return backend.oid

    def register(self, tid: str) -> None:
        pass  # Celery's on_task_call only declares the queue (done in thread_setup)

    def store(self, tid: str, value: Any, queue: str) -> None:
        self.backend.store_result(
            tid, value, 'SUCCESS', request=types.SimpleNamespace(reply_to=queue, correlation_id=tid)
        )

    def get(self, tid: str, timeout: float) -> Any:
        from celery.result import AsyncResult

        return AsyncResult(tid, app=self.app, backend=self.shared).get(timeout=timeout)

    def poll(self, tid: str) -> Optional[Any]:
        meta = self.backend.get_task_meta(tid)
        return meta if meta['status'] == 'SUCCESS' else None

    def close(self) -> None:
        pass  # the process ends with os._exit (a hung Celery thread must not block it)


def make_impl(impl: str, url: str, **conf: Any) -> Any:
    """The implementation named ``impl`` (``conf``: pika_rpc settings, for ``pr`` only)."""
    if impl in ('pr', 'pr_unregistered', 'pr_classic'):
        return PR(url, registers=impl != 'pr_unregistered', **conf)
    if impl == 'pr_plain':
        from .features import NO_CONFIRMS

        return PR(url, **dict(conf, **NO_CONFIRMS))
    if impl == 'pr_quorum':
        return PR(url, result_queue_type='quorum', **conf)
    if impl in ('raw', 'raw_confirm', 'raw_noconfirm'):
        return Raw(url, confirm=impl != 'raw_noconfirm')
    if impl == 'raw_get':
        return RawGet(url)
    if impl in ('celery', 'celery_shared'):
        return CeleryImpl(url, shared=impl == 'celery_shared')
    raise ValueError(f'unknown implementation {impl!r}')
