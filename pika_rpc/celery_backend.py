"""``PikaRPCBackend``: pika_rpc as a result backend plug-in of an existing Celery 5.5-5.7 app.

An app switches with one setting::

    app.conf.result_backend = 'pika-rpc://'

``pika-rpc`` is an entry point of Celery's ``celery.result_backends`` group (declared in
``setup.cfg``), so the scheme works once the pika_rpc distribution is installed; the dotted
path ``'pika_rpc.celery_backend:PikaRPCBackend'`` works too (``Celery(backend=...)``). A URL
with a host (``'pika-rpc://user:password@host:5672/vhost'``) names the broker the results
travel through; ``'pika-rpc://'`` uses the app's ``broker_url``. ``as_uri()`` is always
``'pika-rpc://'``.

When pika_rpc is not installed (or installed without its metadata, e.g. only copied onto
``sys.path``), Celery finds no entry point for the scheme and tries to import a module named
like it: the first ``app.backend`` access raises
``ModuleNotFoundError: No module named 'pika-rpc'``. Install the distribution
(``pip install pika_rpc``), or name the class by its dotted path.

What the app gets, under Celery's own ``AsyncResult``, ``get()``, ``get_task_meta()``,
``get(on_message=...)``, ``join_native``/``iter_native``, ``then()`` and ``revoke()``:

* **One connection and one I/O thread per process** (pika_rpc's link, ``_registry``), shared
  by every thread and by any pika_rpc ``App`` of the process. ``thread_safe`` is set, so
  Celery keeps one backend per process (``app._backend_cache``) instead of one per thread;
  and since Celery's ``app.backend`` is not locked (threads that touch it first at the same
  time each make one), constructing the class again for the same app and URL returns the
  app's existing instance (``__new__``), so every thread holds the same object.
* **Any thread may wait on any task.** Results are pushed by the I/O thread into one pending
  table (``_pending``); each waiter wakes for its own task. Celery's own client chooses
  ``reply_to`` itself before the backend is called (``app.thread_oid``: one queue name per
  sending thread), so :meth:`PikaRPCBackend.on_task_call` consumes the sending thread's queue
  on the process's one connection (one channel per queue, subscribed once per connection).
* **Results survive a reconnect**: those queues are declared ``durable=True,
  auto_delete=False`` with ``x-expires`` (``result_expires``), re-subscribed by the I/O thread
  after a reconnect, and acked in batches, so a result in flight is redelivered. Celery's own
  ``rpc://`` declares them ``auto_delete``; the two declarations never meet, because only the
  process that sends a task declares its reply queue.
* **Confirmed publishes**: a worker's ``store_result`` publishes Celery's result body (built
  by Celery's own ``_get_result_meta``, serialized by kombu) ``mandatory`` with publisher
  confirms and blocks until the broker confirmed it (``publish_timeout``, 10 s). A result
  for a reply queue that is gone is a WARNING naming the task; a nack or a timeout raises
  ``PublishError``. The body is the one Celery's ``rpc://`` sends, so a fleet can switch
  process by process (a Celery ``rpc://`` worker answers a ``pika-rpc://`` client and the
  other way round).
* **Fork-safe**: a forked child (Celery's prefork pool, gunicorn) gets a new link, an empty
  table and new reply queue names. The one Celery private touched is ``app._local.oid``,
  where ``app.thread_oid`` caches the thread's queue name: the child deletes the forking
  thread's copy, so its next task names a queue of its own (``oid_from`` includes the pid).
  ``tests/unit/test_celery_backend_contract.py`` checks that private on each Celery release.
* **Celery's pending-result bookkeeping is guarded**: Celery's ``AsyncBackendMixin`` keeps the
  results waiting on ``then()`` callbacks in plain dicts with no lock; here they are kept in
  the backend's own map under one re-entrant lock (``AsyncResult.__del__`` may run it from
  the garbage collector on any thread), and callbacks run on the callback thread, never on
  the I/O thread.

pika_rpc settings without a Celery name (``publish_timeout``, ``result_cache_max_bytes``,
``pending_max``, ``result_queue_type``, ...) are read from Celery's
``result_backend_transport_options``. Chords and group storage are refused as by Celery's
``rpc://``.

This module imports Celery; nothing else in pika_rpc imports it, so ``import pika_rpc`` never
imports Celery.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple

from celery.backends import base  # type: ignore[import-untyped]
from celery.backends.asynchronous import AsyncBackendMixin  # type: ignore[import-untyped]
from celery.exceptions import TimeoutError as CeleryTimeoutError  # type: ignore[import-untyped]
from kombu import serialization as kombu_serialization

from . import _registry
from ._celery_replies import Core, Once, ReplyQueues, is_noop, settings_for
from ._publish import publish_and_wait
from ._storing import NoGroupState, result_publication
from ._timeouts import deadline, remaining
from .config import Settings
from .errors import TimeoutError as PikaTimeoutError

LOGGER = logging.getLogger(__name__)

__all__ = ['PikaRPCBackend']

SCHEME = 'pika-rpc'


class PikaRPCBackend(NoGroupState, base.Backend, AsyncBackendMixin):
    """Celery's result backend interface on pika_rpc's link (see the module docstring).

    Thread-safe: one instance per process serves every thread (``thread_safe`` is True).
    Blocking calls take Celery's ``timeout`` and raise ``celery.exceptions.TimeoutError``;
    a result that can no longer arrive raises pika_rpc's ``ReplyQueueLost`` or
    ``ConnectionLost``.
    """

    _kind = 'pika-rpc'  # NoGroupState's messages

    persistent = False
    supports_autoexpire = True
    supports_native_join = True
    retry_policy = {'max_retries': 20, 'interval_start': 0, 'interval_step': 1, 'interval_max': 1}
    _ready: bool = False
    _init_lock: threading.Lock

    def __new__(cls, app: Any = None, url: Optional[str] = None, *args: Any, **kwargs: Any) -> Any:
        # One instance per app and URL in a process, whichever thread asks first: Celery's
        # app.backend is not locked, so threads touching it at the same time each make one.
        # They all get this one (its __init__ runs once, the others wait for it).
        app = _app_or_current(app)
        with _instances_lock:
            instances = app.__dict__.setdefault(_INSTANCES_ATTRIBUTE, {})
            key = (cls, _broker_part(url))
            existing = instances.get(key)
            if existing is not None and not existing._core_closed():
                return existing
            obj = super().__new__(cls)
            obj._init_lock = threading.Lock()
            obj._ready = False
            instances[key] = obj
            return obj

    def __init__(
        self,
        app: Any = None,
        url: Optional[str] = None,
        serializer: Optional[str] = None,
        persistent: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        with self._init_lock:
            if self._ready:
                return  # the app's existing backend (see __new__)
            for ignored in ('connection', 'exchange', 'exchange_type', 'auto_delete'):
                kwargs.pop(ignored, None)  # Celery's rpc:// arguments; nothing to choose here
            super().__init__(_app_or_current(app), serializer=serializer, url=url, **kwargs)
            self.thread_safe = True  # Celery keeps this one backend for every thread
            self.persistent = self.prepare_persistent(persistent)
            self.delivery_mode = 2 if self.persistent else 1
            self._core = Core(self, **settings_for(self.app, url, self.expires))
            self.result_consumer: ReplyQueues = self._core.result_consumer  # type: ignore[assignment]
            _registry.register_live(self)
            self._ready = True

    def _core_closed(self) -> bool:
        core = self.__dict__.get('_core')
        return core is not None and core.closed

    # ------------------------------------------------------------------ identity, fork
    def _forget_parent_state(self) -> None:
        """In a forked child (the registry calls it): no parent waiters, and a reply queue
        name of the child's own for the thread that forked (``app._local.oid``)."""
        local = getattr(self.app, '_local', None)
        if local is not None:
            try:
                del local.oid
            except AttributeError:
                pass

    @property
    def oid(self) -> str:
        """The calling thread's reply queue (Celery's ``app.thread_oid``)."""
        return self.app.thread_oid

    @property
    def link_settings(self) -> Settings:
        """pika_rpc's settings of this backend (read-only use)."""
        return self._core.conf

    def as_uri(self, include_password: bool = False) -> str:
        return f'{SCHEME}://'

    def __repr__(self) -> str:
        return f'<PikaRPCBackend {SCHEME}:// pid={os.getpid()} queues={len(self.result_consumer.queues)}>'

    def __reduce__(self, args: tuple = (), kwargs: Optional[dict] = None) -> tuple:
        kwargs = dict(
            kwargs or {}, url=self.url, serializer=self.serializer, persistent=self.persistent
        )
        return super().__reduce__(args, kwargs)

    # ------------------------------------------------------------------ storing (worker)
    def destination_for(self, task_id: str, request: Any) -> Tuple[Optional[str], str]:
        """``(reply_to, correlation_id)`` of a result, from ``request`` or the current task."""
        if request is None:
            from celery._state import get_current_task  # type: ignore[import-untyped]

            task = get_current_task()
            request = getattr(task, 'request', None)
            if request is None:
                raise RuntimeError(f'pika-rpc backend: no task request for {task_id!r}')
        return request.reply_to, getattr(request, 'correlation_id', None) or task_id

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Optional[str] = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Publish a state of ``task_id`` to the request's ``reply_to``; returns ``result``.

        Blocks until the broker confirmed it (``publish_timeout``). A request without
        ``reply_to`` sends nothing (as Celery).

        Raises:
            pika_rpc.PublishError: nacked, not confirmed in time, or retries exhausted.
        """
        reply_to, correlation_id = self.destination_for(task_id, request)
        if not reply_to:
            return result
        meta = self._get_result_meta(
            result=self.encode_result(result, state),
            state=state,
            traceback=traceback,
            request=request,
        )
        meta['task_id'] = task_id
        content_type, content_encoding, body = kombu_serialization.dumps(meta, self.serializer)
        if isinstance(body, str):
            body = body.encode(content_encoding or 'utf-8')
        core = self._core
        pub = result_publication(
            reply_to,
            body,
            content_type,
            content_encoding,
            correlation_id,
            self.delivery_mode,
            self.retry_policy,
            core.conf.publish_timeout,
        )
        returned = publish_and_wait(core._get_link(), pub, f'result of task {task_id}')
        if returned is not None:
            core._report_unroutable(task_id, reply_to, returned)
        return result

    # ------------------------------------------------------------------ sending (client)
    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Before Celery sends a task: consume the sending thread's reply queue (Celery put
        ``app.thread_oid`` in the message's ``reply_to``) and expect ``task_id`` there.

        Blocks only the first time per thread and connection (the queue's declaration and
        subscription, up to ``publish_timeout``). Raises pika_rpc's ``TimeoutError`` or
        ``ConnectionLost``.
        """
        self.result_consumer.expect_on(self.app.thread_oid, task_id)

    def on_reply_declare(self, task_id: str) -> None:
        return None

    # ------------------------------------------------------------------ Celery's pending results
    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        """Remember ``result`` until its task is ready (``then()`` callbacks fire then)."""
        with self._core.waiting_lock:
            entry = weakref.ref(result) if weak else result
            self._core.waiting.setdefault(result.id, {})[id(result)] = entry
        meta = self._core._pending.cached(result.id, poll=True)
        if meta is not None:
            self._settle(result, meta)
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> List[Any]:
        return [self.add_pending_result(r, weak=weak) for r in results]

    def remove_pending_result(self, result: Any) -> Any:
        if not self._core.waiting:  # AsyncResult.__del__ calls this for every result object
            return result
        with self._core.waiting_lock:
            waiters = self._core.waiting.get(result.id)
            if waiters is not None:
                waiters.pop(id(result), None)
                if not waiters:
                    del self._core.waiting[result.id]
        return result

    def _settle(self, result: Any, meta: dict) -> None:
        """Give ``result`` its final meta once (its ``on_ready`` promise fires here)."""
        with self._core.waiting_lock:
            waiters = self._core.waiting.get(result.id)
            mine = waiters is not None and waiters.pop(id(result), None) is not None
            if waiters is not None and not waiters:
                del self._core.waiting[result.id]
            if not mine and result._cache is not None:
                return
        result._maybe_set_cache(dict(meta))

    def _fulfil(self, task_id: str) -> None:  # callback thread: then() callbacks run here
        with self._core.waiting_lock:
            entries = list((self._core.waiting.get(task_id) or {}).values())
        meta = self._core._pending.cached(task_id, poll=True)
        if meta is None:
            return
        for entry in entries:
            result = entry() if isinstance(entry, weakref.ref) else entry
            if result is not None:
                self._settle(result, meta)

    # ------------------------------------------------------------------ waiting
    def wait_for_pending(
        self,
        result: Any,
        timeout: Optional[float] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        callback: Any = None,
        propagate: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Block until ``result`` is ready, then return its value as ``AsyncResult.get()``.

        ``on_message(meta)`` runs on this thread for every state message of the task;
        ``on_interval()`` every ``interval`` seconds while waiting (Celery's parent checks).

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            ReplyQueueLost, ConnectionLost: the result can no longer arrive.
        """
        self._ensure_not_eager()
        meta = self._wait_meta(result.id, timeout, interval, on_message, on_interval)
        self._settle(result, meta)
        return result.maybe_throw(callback=callback, propagate=propagate)

    def _wait_meta(
        self,
        task_id: str,
        timeout: Optional[float],
        interval: Optional[float],
        on_message: Any,
        on_interval: Any,
    ) -> dict:
        core = self._core
        if is_noop(on_interval):
            try:
                return core.wait_for_pending(task_id, timeout=timeout, on_message=on_message)
            except PikaTimeoutError as exc:
                raise CeleryTimeoutError(str(exc)) from None
        dl = deadline(timeout)
        step = interval if interval and interval > 0 else 0.5
        once = Once(on_message) if on_message is not None else None
        while True:
            left = remaining(dl)
            piece = step if left is None else min(step, left)
            try:
                return core.wait_for_pending(task_id, timeout=piece, on_message=once)
            except PikaTimeoutError as exc:
                if left is not None and piece >= left:
                    raise CeleryTimeoutError(str(exc)) from None
            on_interval()

    def get_task_meta(self, task_id: str, cache: bool = True, backlog_limit: int = 1000) -> dict:
        """The latest known state of ``task_id`` (never waits for one; pushed by the I/O
        thread). ``{'status': 'PENDING', 'result': None}`` when nothing arrived."""
        return dict(self._core.get_task_meta(task_id))

    poll = get_task_meta

    def iter_native(
        self,
        result: Any,
        timeout: Optional[float] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
    ) -> Iterator[Tuple[str, Any]]:
        """Yield ``(task_id, meta)`` of the members of a ``ResultSet`` as they become ready
        (Celery's ``join_native``). Raises ``celery.exceptions.TimeoutError``."""
        self._ensure_not_eager()
        nodes: Dict[str, List[Any]] = {}
        for node in result.results:
            if not hasattr(node, '_cache'):
                yield node.id, node.children
            elif node._cache:
                yield node.id, node._cache
            else:
                nodes.setdefault(node.id, []).append(node)
        if not nodes:
            return
        try:
            for task_id, meta in self._core.get_many(
                list(nodes), timeout=timeout, on_message=on_message
            ):
                for node in nodes.get(task_id, ()):
                    self._settle(node, meta)
                first = nodes[task_id][0]
                yield task_id, first._cache if first._cache is not None else dict(meta)
        except PikaTimeoutError as exc:
            raise CeleryTimeoutError(str(exc)) from None

    def get_many(
        self,
        task_ids: Any,
        timeout: Optional[float] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        max_iterations: Optional[int] = None,
        **kwargs: Any,
    ) -> Iterator[Tuple[str, dict]]:
        """Yield ``(task_id, meta)`` as each task becomes ready; with ``max_iterations`` only
        those ready now (never blocks then)."""
        ids = list(dict.fromkeys(task_ids))
        if max_iterations is not None:
            for task_id in ids:
                meta = self._core._pending.cached(task_id, poll=True)
                if meta is not None:
                    yield task_id, dict(meta)
            return
        try:
            for task_id, meta in self._core.get_many(ids, timeout=timeout, on_message=on_message):
                yield task_id, dict(meta)
        except PikaTimeoutError as exc:
            raise CeleryTimeoutError(str(exc)) from None

    def forget(self, task_id: str) -> None:
        self._cache.pop(task_id, None)
        self._core.forget(task_id)

    def _forget(self, task_id: str) -> None:
        """Nothing is stored on the broker side."""

    def on_result_fulfilled(self, result: Any) -> None:
        """Nothing to cancel: the process's reply queues serve every task."""

    def revive(self, channel: Any) -> None:
        """Kept for Celery's interface: the I/O thread revives the consumers itself."""

    # ------------------------------------------------------------------ life cycle
    def stats(self) -> Dict[str, Any]:
        """pika_rpc's backend statistics plus ``reply_queues`` (queues consumed)."""
        return self._core.stats()

    def close(self, timeout: Optional[float] = 10.0) -> None:
        """Wake every waiter with ``ClosedError``, delete this process's reply queues and
        release its share of the link. Celery makes a new backend on the next use only if
        ``app._backend_cache`` is reset; normally a process closes it at exit (done for it)."""
        self._core.close(timeout)


_instances_lock = threading.Lock()
#: Where an app keeps its ``PikaRPCBackend`` per URL: an attribute of ours on the Celery app,
#: so the backend lives and goes with its app.
_INSTANCES_ATTRIBUTE = '_pika_rpc_backends'


def _app_or_current(app: Any) -> Any:
    if app is not None:
        return app
    from celery import current_app  # type: ignore[import-untyped]

    return current_app._get_current_object()


def _broker_part(url: Optional[str]) -> Optional[str]:
    """What tells two backend URLs apart: the broker named after the scheme, if any
    (``None``, ``'pika-rpc://'`` and the dotted path all mean the app's broker)."""
    if not url or '://' not in url:
        return None
    return url.split('://', 1)[1].strip('/') or None
