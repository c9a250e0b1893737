"""``App``: configuration, task registry, ``send_task`` and the per-process backend.

``App(main=None, broker=None, backend=None, include=None, **conf)`` takes Celery's argument
order (the first positional argument is the app's name) and Celery's setting names. A broker
URL given first (pika_rpc 1.x's ``App(url)``) still works, with a ``DeprecationWarning``.

Tasks: ``@app.task``, and ``@shared_task`` (``_shared``) for every app. The registry
(``app.tasks``) is *finalized* on first use: the modules of the ``imports``/``include``
settings are imported and the packages given to ``autodiscover_tasks`` searched for their
``tasks`` module (Django's installed apps by default), once; ``autodiscover_tasks(...,
force=True)`` or a call after finalizing imports at once. A module that fails to import
raises from that first use, and is tried again on the next.

Routing (``_routing``): ``send_task`` and ``.delay()`` go where Celery's client sends them
(``task_routes``, ``task_queues``, ``task_default_queue``/``_exchange``/``_routing_key``,
``task_create_missing_queues``). A route's keys other than queue, exchange, routing key,
exchange type, priority and serializer are ignored with one WARNING per key.

``app.backend`` is this App's ``RPCBackend``, shared by every thread; after ``close()`` it
is renewed, and in a forked child it resets itself (a new oid). ``send_task`` publishes a
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

import importlib
import itertools
import logging
import threading
import uuid
import warnings
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from . import _registry, _routing, _shared, protocol, serialization
from ._context import current_request, request_field
from ._handoff import Publication
from ._publish import publish_and_wait
from ._timeouts import deadline, remaining
from .backend import RPCBackend
from .config import Settings, merge_retry_policy
from .connection import Connection
from .entities import Exchange, Queue
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

#: AMQP properties a caller may give ``send_task`` (the others are the task message's own).
_CALLER_PROPERTIES = frozenset({'app_id', 'user_id', 'type', 'timestamp', 'cluster_id'})

#: The Lamport clock Celery's control messages carry; workers only adjust their own from it.
_clock = itertools.count(1)


class App:
    """Configuration, tasks and a result backend. Thread-safe; cheap to make (Apps with the
    same settings share one reply queue and connection: see the module docstring)."""

    def __init__(
        self,
        main: Optional[str] = None,
        *,
        broker: Union[None, str, Sequence[str]] = None,
        backend: Optional[str] = None,
        include: Optional[Sequence[str]] = None,
        set_as_current: bool = True,
        **conf: Any,
    ) -> None:
        """``main``: the app's name (Celery's); ``broker``: the broker URL(s)
        (``broker_url``); ``backend``: ``result_backend``; ``include``: modules of tasks
        imported when the registry is first used; ``set_as_current``: shared tasks
        (``@shared_task``) resolve to this app; ``conf``: settings by Celery's names.

        Raises:
            TypeError: a broker given twice, or a setting on no list (see ``Settings``).
        """
        if _looks_like_url(main):
            warnings.warn(
                "App(url) is deprecated: the first argument is the app's name, as in Celery; "
                'use App(broker=url) (or App("proj", broker=url))',
                DeprecationWarning,
                stacklevel=2,
            )
            if broker is not None:
                raise TypeError('App() got a broker URL both first and as broker=')
            main, broker = None, main
        if broker is not None:
            if 'broker_url' in conf:
                raise TypeError('App() got both broker= and broker_url=')
            conf['broker_url'] = broker
        if backend is not None:
            conf['result_backend'] = backend
        if include is not None:
            conf['include'] = include
        self.main = main
        self.conf = Settings(**conf)
        self._tasks: Dict[str, Task[..., Any]] = {}
        self._finalized = False
        self._discoveries: List[Tuple[Any, Optional[str]]] = []
        self._backend: Optional[RPCBackend] = None
        self._connection: Optional[Connection] = None  # for sending; shares the process link
        self._lock = threading.Lock()
        self._finalize_lock = threading.RLock()
        self._route_warned: Set[str] = set()
        self._router: Tuple[Any, Any] = (None, None)  # (router_key, Router): see _route
        _registry.register_live(self)
        _shared.register_app(self, set_as_current)

    def _forget_parent_state(self) -> None:
        self._lock = threading.Lock()  # the parent's may be held by a thread gone here
        self._finalize_lock = threading.RLock()

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
    @property
    def tasks(self) -> Dict[str, Task[..., Any]]:
        """The registry, name to ``Task``; finalized on first use (see the module docstring)."""
        self.finalize()
        return self._tasks

    def finalize(self) -> None:
        """Import the ``imports``/``include`` modules and run the pending autodiscovery, once.
        Thread-safe; a task module that uses ``app.tasks`` while imported sees the registry
        as it is so far. Raises the first import error (the rest is tried on the next call)."""
        if self._finalized:
            return
        with self._finalize_lock:
            if self._finalized:
                return
            self._finalized = True  # a module imported below may use app.tasks
            try:
                for module in self._unimported_modules():
                    importlib.import_module(module)
                while self._discoveries:
                    packages, related_name = self._discoveries[0]
                    _shared.discover(packages, related_name)
                    self._discoveries.pop(0)
            except BaseException:
                self._finalized = False
                raise

    def _unimported_modules(self) -> List[str]:
        return [*self.conf.imports, *self.conf.include]

    def autodiscover_tasks(
        self, packages: Any = None, related_name: Optional[str] = 'tasks', force: bool = False
    ) -> None:
        """Import ``<package>.<related_name>`` for each package (Celery's): ``packages`` is a
        list of names, or a callable returning one (``lambda: settings.INSTALLED_APPS``), or
        None for Django's installed apps. A package without that module is skipped; an
        error inside one is raised. Lazy: done when the registry is first used, unless
        ``force`` or already finalized."""
        with self._finalize_lock:
            if not (force or self._finalized):
                self._discoveries.append((packages, related_name))
                return
        _shared.discover(packages, related_name)

    def _register_shared(self, fun: Callable[..., Any], name: str, opts: Dict[str, Any]) -> None:
        if name not in self._tasks:
            self._tasks[name] = Task(self, fun, name, **opts)

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
            self._tasks[name] = task
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
        queue: Union[None, str, Queue] = None,
        routing_key: Optional[str] = None,
        exchange: Union[None, str, Exchange] = None,
        exchange_type: Optional[str] = None,
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
        **properties: Any,
    ) -> _AsyncResult:
        """Send a task message to a worker (pika_rpc's or Celery's); return its AsyncResult.

        Blocks until the broker confirmed the message (up to ``timeout``, default
        ``publish_timeout``), retrying per ``retry_policy`` (``task_publish_retry_policy``).
        Other keyword arguments are AMQP message properties the caller may set (``app_id``,
        ``user_id``, ``type``, ``timestamp``, ``cluster_id``), as Celery passes them on.
        With ``ignore_result=True`` no reply queue is set up and the result is
        ``ignored``: its ``get()`` returns None at once, as Celery's. Where the message goes
        is Celery's routing (see the module docstring); the queue is declared once per
        connection by ``_taskqueues``'s rule.

        Raises:
            Unroutable: the broker returned the message (no queue bound for its exchange
                and routing key); not retried.
            PublishError: nacked, unconfirmed in time, or retries exhausted.
            PreconditionFailed: the task queue exists with other arguments than configured.
            ConnectionLost: the broker could not be reached.
            QueueNotFound: routed to a queue not in ``task_queues`` while
                ``task_create_missing_queues`` is False (nothing is sent).
            TypeError: an unknown option.
        """
        extra = set(properties) - _CALLER_PROPERTIES
        if extra:
            raise TypeError(f'send_task() got an unexpected keyword argument {sorted(extra)[0]!r}')
        conf = self.conf
        dl = deadline(conf.publish_timeout if timeout is None else timeout)
        route = self._route(
            name,
            args,
            kwargs,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            exchange_type=exchange_type,
            priority=priority,
            serializer=serializer,
        )
        exchange, routing_key, task_queue = _routing.destination(conf, route)
        priority, serializer = route.get('priority'), route.get('serializer')
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
        conn = self.connection_for_write()
        if task_queue is not None:
            self._declare_task_queue(conn, task_queue, remaining(dl))
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
        props.update(properties)
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

    def _route(self, name: str, args: Any, kwargs: Any, **options: Any) -> Dict[str, Any]:
        """The call's options completed by ``task_routes`` and the defaults (``_routing``)."""
        given = {k: v for k, v in options.items() if v is not None}
        key, router = self._router
        if key is None or key != _routing.router_key(self.conf):  # built once per settings
            key = _routing.router_key(self.conf)
            router = _routing.Router(self.conf)
            self._router = (key, router)
        route = router.route(given, name, args, kwargs, self._tasks.get(name))
        for key in set(route) - set(_routing.ROUTE_KEYS) - self._route_warned:
            self._route_warned.add(key)
            LOGGER.warning(
                'route option %r (task %s) is not supported by pika_rpc: ignored', key, name
            )
        return route

    def _declare_task_queue(self, conn: Connection, queue: Queue, timeout: Optional[float]) -> None:
        """Declare a task queue by Celery's rule made safe (see the module docstring), once
        per connection."""
        key = ('task_queue', queue.name)
        if conn.is_declared(key):
            return
        dl = deadline(timeout)
        steps = queue.declarations()
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


def _looks_like_url(value: Any) -> bool:
    """A broker URL (or a list of them) given where Celery takes the app's name."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(isinstance(v, str) and '://' in v for v in value)
    return isinstance(value, str) and '://' in value
