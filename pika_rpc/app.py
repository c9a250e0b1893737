"""``App``: configuration, task registry, ``send_task`` and the per-process backend.

``App(broker_url=None, **conf)`` takes Celery's setting names. ``app.backend`` is this
App's ``RPCBackend``, shared by every thread; after ``close()`` it is renewed, and in a
forked child it resets itself (a new oid). ``send_task`` publishes a
Celery protocol-v2 task message with publisher confirms, declaring the reply queue once per
connection through ``backend.on_task_call`` and the task queue once per connection.

Apps are cheap. Every App of a process whose settings are the same (all but ``task_*`` and
``worker_*``) uses one reply queue, one pending table and one connection: the backends of
such Apps share them, reference-counted (``_hub``). So an App per request, per thread or per
test is fine: 30 Apps hold one reply queue, not 30. ``app.close()`` wakes only the threads
waiting through that App (with ``ClosedError``) and lets go of its reference; the last App
to let go deletes the queue. An App dropped without ``close()`` lets go when it is garbage
collected (and at exit). Apps with other settings (another broker, another
``result_expires``...) get a queue of their own. One App per process (a module-level
``app``) is still the simplest.

The task queue is declared by Celery's rule made safe (``_taskqueues``): the default queue
(of ``task_default_queue_type``) and the queues of ``task_queues`` are declared as
configured; any other is checked passively and created (of
``task_create_missing_queue_type``) only when missing, so an existing queue (a quorum queue
declared by a Celery worker, say) is never declared again with other arguments.

Choices where Celery leaves room: a task message the broker returns as unroutable (an
``exchange``/``routing_key`` that routes nowhere) raises ``Unroutable`` (a ``PublishError``
naming exchange, routing key and reply code; not retried: it would route nowhere again),
where Celery drops it silently; ``send_task`` options that Celery does not know raise
``TypeError``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, TypeVar, Union, overload

from . import _registry, _taskqueues, protocol, serialization
from ._context import current_request, request_field
from ._handoff import Publication
from ._publish import publish_and_wait
from ._timeouts import deadline, remaining
from .backend import RPCBackend
from .config import Settings, merge_retry_policy
from .connection import Connection
from .errors import ConnectionLost, NotFound, NotRegistered, PublishError, TimeoutError
from .message import check_properties
from .result import AsyncResult, GroupResult, ResultSet
from .task import Task

if TYPE_CHECKING:  # typing only (no runtime import of typing_extensions)
    from typing_extensions import Concatenate, Literal, ParamSpec

    _P = ParamSpec('_P')
    _R = TypeVar('_R')

#: The class, for App's annotations (where ``AsyncResult`` is App's method of that name).
_AsyncResult = AsyncResult

LOGGER = logging.getLogger(__name__)

__all__ = ['App']

#: The Lamport clock Celery's control messages carry; workers only adjust their own from it.
_clock = itertools.count(1)


class App:
    """Configuration, tasks and a result backend. Thread-safe; cheap to make (Apps with the
    same settings share one reply queue and connection: see the module docstring)."""

    def __init__(
        self,
        broker_url: Optional[str] = None,
        *,
        main: Optional[str] = None,
        broker: Optional[str] = None,
        **conf: Any,
    ) -> None:
        url = broker_url or broker
        if url is not None:
            conf['broker_url'] = url
        self.main = main
        self.conf = Settings(**conf)
        self.tasks: Dict[str, Task[..., Any]] = {}
        self._backend: Optional[RPCBackend] = None
        self._connection: Optional[Connection] = None  # for sending; shares the process link
        self._lock = threading.Lock()
        _registry.register_live(self)

    def _forget_parent_state(self) -> None:
        self._lock = threading.Lock()  # the parent's may be held by a thread gone here

    def __repr__(self) -> str:
        return f'<App {self.main or "pika_rpc"} broker={self.conf.as_dict(censored=True).get("broker_url")}>'

    def config_from_object(self, obj: Any, namespace: Optional[str] = None, **kwargs: Any) -> None:
        """Read settings from an object, mapping or ``'module:attr'`` string.

        With ``namespace='CELERY'``, Django-style ``CELERY_RESULT_EXPIRES`` names are read.
        Only settings read before the backend was first used take effect on it.
        """
        self.conf.from_object(obj, namespace=namespace, **kwargs)

    # ------------------------------------------------------------------ backend
    @property
    def backend(self) -> RPCBackend:
        """This App's backend (built lazily; renewed after ``close()``). Its reply queue,
        pending table and link are shared with every App of the same settings."""
        backend = self._backend
        if backend is None or backend.closed:
            with self._lock:
                backend = self._backend
                if backend is None or backend.closed:
                    backend = self._backend = RPCBackend(app=self, shared=True)
        return backend

    def AsyncResult(self, task_id: str, **kwargs: Any) -> _AsyncResult:
        return AsyncResult(task_id, app=self, **kwargs)

    def ResultSet(self, results: Sequence[_AsyncResult], **kwargs: Any) -> ResultSet:
        return ResultSet(results, app=self, **kwargs)

    def GroupResult(
        self, group_id: Optional[str] = None, results: Sequence[_AsyncResult] = (), **kwargs: Any
    ) -> GroupResult:
        return GroupResult(group_id, results, app=self, **kwargs)

    def connection_for_write(self) -> Connection:
        """The connection tasks and control messages are sent on (Celery's name): a handle on
        the process's shared link, made on first use and released by ``close()``."""
        conn = self._connection
        if conn is None:
            with self._lock:
                conn = self._connection
                if conn is None:
                    conn = self._connection = Connection.from_settings(self.conf)
        return conn

    def close(self, timeout: Optional[float] = 10.0) -> None:
        """Close this app's backend (the threads waiting through this App wake with
        ``ClosedError``; other Apps' waits go on) and release its connection. The reply
        queue is deleted when no other App of the same settings uses it, and the process's
        link closes when nothing else uses it. Blocks up to ``timeout``. The app stays
        usable: a later call starts again."""
        dl = deadline(timeout)
        backend, self._backend = self._backend, None
        conn, self._connection = self._connection, None
        if backend is not None:
            backend.close(timeout=remaining(dl))
        if conn is not None:
            conn.release(timeout=remaining(dl))

    def __enter__(self) -> 'App':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ tasks
    @overload
    def task(self, fun: Callable[_P, _R], /) -> Task[_P, _R]: ...
    @overload
    def task(
        self, *, bind: Literal[True], **opts: Any
    ) -> Callable[[Callable[Concatenate[Any, _P], _R]], Task[_P, _R]]: ...
    @overload
    def task(
        self, *, bind: Literal[False] = ..., **opts: Any
    ) -> Callable[[Callable[_P, _R]], Task[_P, _R]]: ...
    def task(self, *args: Any, **opts: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True)``.

        The task keeps the function's signature for type checkers (``Task[[int, int], int]``
        for ``def add(x: int, y: int) -> int``; with ``bind=True``, without its ``self``)."""

        def register(fun: Callable[..., Any]) -> Task[..., Any]:
            name = opts.pop('name', None) or f'{fun.__module__}.{fun.__name__}'
            task: Task[..., Any] = Task(self, fun, name, **opts)
            self.tasks[name] = task
            return task

        if len(args) == 1 and callable(args[0]) and not opts:
            return register(args[0])
        if args:
            raise TypeError('use @app.task or @app.task(name=..., bind=...)')
        return register

    def get_task(self, name: str) -> Task[..., Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(name) from None

    # ------------------------------------------------------------------ sending
    def send_task(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Optional[Dict[str, Any]] = None,
        *,
        queue: Optional[str] = None,
        routing_key: Optional[str] = None,
        exchange: Optional[str] = None,
        task_id: Optional[str] = None,
        countdown: Optional[float] = None,
        eta: Optional[datetime] = None,
        expires: Union[None, float, datetime] = None,
        priority: Optional[int] = None,
        time_limit: Optional[float] = None,
        soft_time_limit: Optional[float] = None,
        headers: Optional[Dict[str, Any]] = None,
        ignore_result: Optional[bool] = None,
        reply_to: Optional[str] = None,
        correlation_id: Optional[str] = None,
        shadow: Optional[str] = None,
        root_id: Optional[str] = None,
        parent_id: Optional[str] = None,
        group_id: Optional[str] = None,
        group_index: Optional[int] = None,
        retries: int = 0,
        serializer: Optional[str] = None,
        retry: Optional[bool] = None,
        retry_policy: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> _AsyncResult:
        """Send a task message to a worker (pika_rpc's or Celery's); return its AsyncResult.

        Blocks until the broker confirmed the message (up to ``timeout``, default
        ``publish_timeout``), retrying per ``retry_policy`` (``task_publish_retry_policy``).
        With ``ignore_result=True`` no reply queue is set up and the result is
        ``ignored``: its ``get()`` returns None at once, as Celery's.

        Raises:
            Unroutable: the broker returned the message (no queue bound for its exchange
                and routing key); not retried.
            PublishError: nacked, unconfirmed in time, or retries exhausted.
            PreconditionFailed: the task queue exists with other arguments than configured.
            ConnectionLost: the broker could not be reached.
            TypeError: an unknown option.
        """
        conf = self.conf
        dl = deadline(conf.publish_timeout if timeout is None else timeout)
        task_id = task_id or str(uuid.uuid4())
        backend = self.backend
        parent = current_request()
        if parent is not None:
            parent_id = parent_id or request_field(parent, 'id')
            root_id = root_id or request_field(parent, 'root_id') or parent_id
        ignored = bool(ignore_result)
        reply_queue = None
        if not ignored:
            try:
                reply_queue = backend.on_task_call(None, task_id, timeout=remaining(dl))
            except ConnectionLost as exc:  # says why and what to do (_advice)
                raise type(exc)(f'task {name}[{task_id}] not sent: {exc}') from None
            except TimeoutError as exc:
                raise PublishError(
                    f'task {name}[{task_id}] not sent: the reply queue could not '
                    f'be set up within the publish timeout: {exc}'
                ) from None
        queue = queue or conf.task_default_queue
        conn = self.connection_for_write()
        if exchange is None:
            self._declare_task_queue(conn, queue, remaining(dl))
            exchange, routing_key = '', routing_key or queue
        else:
            routing_key = routing_key if routing_key is not None else queue
        msg_headers, props, body = protocol.task_message(
            name,
            args,
            kwargs,
            task_id=task_id,
            reply_to=reply_to or reply_queue or backend.oid,
            correlation_id=correlation_id,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=0 if priority is None else priority,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            ignore_result=ignore_result,
            shadow=shadow,
            root_id=root_id,
            parent_id=parent_id,
            group_id=group_id,
            group_index=group_index,
            retries=retries,
        )
        if headers:
            msg_headers.update(headers)
        content_type, content_encoding, data = serialization.dumps(
            body, serializer or conf.task_serializer
        )
        props.update(
            content_type=content_type, content_encoding=content_encoding, headers=msg_headers
        )
        props = check_properties(props)  # a bad header fails here, named, not later
        use_retry = conf.task_publish_retry if retry is None else retry
        policy = (
            merge_retry_policy(conf.task_publish_retry_policy, retry_policy) if use_retry else None
        )
        pub = Publication(
            exchange, routing_key, data, props, mandatory=True, policy=policy, timeout=remaining(dl)
        )
        returned = publish_and_wait(conn.link, pub, f'task {name}[{task_id}]')
        if returned is not None:
            raise returned
        result = AsyncResult(task_id, app=self, task_name=name)
        result.ignored = ignored
        return result

    def _declare_task_queue(self, conn: Connection, queue: str, timeout: Optional[float]) -> None:
        """Declare a task queue by Celery's rule made safe (see the module docstring), once
        per connection."""
        key = ('task_queue', queue)
        if conn.is_declared(key):
            return
        dl = deadline(timeout)
        steps = _taskqueues.task_queue(self.conf, queue).declarations()
        for i, (kind, kwargs) in enumerate(steps):
            conn.control(
                kind,
                timeout=remaining(dl),
                cache_key=key if i == len(steps) - 1 else None,
                **kwargs,
            )

    def control_revoke(
        self,
        task_ids: Union[str, Sequence[str]],
        terminate: bool = False,
        signal: Optional[str] = 'SIGTERM',
        timeout: Optional[float] = None,
    ) -> None:
        """Broadcast Celery's ``revoke`` control message to every worker (ours and Celery's).

        A broker with no ``celery.pidbox`` exchange has no worker listening: then nothing
        is sent and an INFO line says so.
        """
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        dl = deadline(self.conf.publish_timeout if timeout is None else timeout)
        conn = self.connection_for_write()
        exchange, body, props = protocol.control_revoke(
            task_ids if isinstance(task_ids, str) else ids,
            terminate=terminate,
            signal=signal,
            clock=next(_clock),
        )
        key = ('exchange', exchange)
        if not conn.is_declared(key):
            try:
                conn.control(
                    'declare_exchange',
                    exchange=exchange,
                    passive=True,
                    timeout=remaining(dl),
                    cache_key=key,
                )
            except NotFound:
                LOGGER.info(
                    'revoke of %s not sent: no worker listens (no %r exchange)',
                    ', '.join(ids),
                    exchange,
                )
                return
        content_type, content_encoding, data = serialization.dumps(body, 'json')
        props = dict(props, content_type=content_type, content_encoding=content_encoding)
        publish_and_wait(
            conn.link,
            Publication(exchange, '', data, props, mandatory=False, timeout=remaining(dl)),
            f'revoke of {", ".join(ids)}',
        )
