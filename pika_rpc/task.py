"""``Task``: a registered function with Celery's calling conventions and task options.

``@app.task`` wraps a function in a ``Task``. Calling the task runs the function here;
``delay``/``apply_async`` send it to a worker through ``app.send_task``. With
``bind=True`` the function gets the task as ``self`` (``self.request``,
``self.update_state``, ``self.retry``). The task knows its app; it never imports it.

Every option of ``@app.task`` is checked when the function is decorated
(``_task_options.check``): the ones pika_rpc honours become attributes, Celery's others and
unknown names raise ``TypeError`` there. The send options (``queue``, ``routing_key``,
``exchange``, ``priority``, ``expires``, ``time_limit``, ``soft_time_limit``, ``serializer``)
are defaults of ``apply_async``; the worker reads the rest (see ``pika_rpc.worker``).
``typing`` (default True, as Celery's ``strict_typing``) checks the arguments against the
function's signature in ``apply_async``, so a wrong call raises ``TypeError`` in the caller
rather than in the worker. ``autoretry_for`` retries the task with Celery's policy when the
worker runs it (:meth:`Task.run_for_worker`); a direct call of the task raises as the
function does.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Generic, Optional, Tuple, TypeVar, cast

from . import _task_options, serialization, states
from ._context import current_request, request_field
from ._eager import EagerResult, run_eagerly
from .errors import MaxRetriesExceededError, Retry

if TYPE_CHECKING:  # typing only: no runtime import of result, nor of typing_extensions
    from typing_extensions import ParamSpec

    from .app import App
    from .result import AsyncResult as _AsyncResult  # the class, not Task.AsyncResult
else:
    try:
        from typing import ParamSpec
    except ImportError:  # Python 3.9 (see Task.__class_getitem__)
        ParamSpec = TypeVar

#: The task function's parameters and return type: ``Task[[int, int], int]``.
P = ParamSpec('P')
R = TypeVar('R')

__all__ = ['Task']

_UNSET: Any = object()


class Task(Generic[P, R]):
    """A task registered with an app. Thread-safe: it holds configuration only.

    Generic in the function's parameters and return type (for type checkers): ``@app.task``
    on ``def add(x: int, y: int) -> int`` gives a ``Task[[int, int], int]``, called and
    ``delay()``-ed with ``add``'s parameters.

    Raises (at decoration):
        TypeError: an option pika_rpc does not support or does not know (named, with why).
        ValueError: an option value out of range (a malformed ``rate_limit``, say).
    """

    app: App  # the app it is registered with

    def __init__(
        self, app: Any, fun: Callable[..., Any], name: str, bind: bool = False, **options: Any
    ) -> None:
        opts = _task_options.check(name, options)
        serializer = opts.get('serializer')
        if serializer is not None:
            try:
                serialization.dumps(None, serializer)
            except ValueError as exc:
                raise ValueError(f'task {name!r}: {exc}') from None
        self.app, self.run, self.name, self.bind = app, fun, name, bind
        get = opts.get
        self.typing: bool = get('typing', True) is not False
        self.max_retries: Optional[int] = get('max_retries', 3)
        self.default_retry_delay: float = get('default_retry_delay', 180)
        self.rate_limit: Any = get('rate_limit')
        self.ignore_result: Optional[bool] = get('ignore_result')
        self.store_errors_even_if_ignored: Optional[bool] = get('store_errors_even_if_ignored')
        self.track_started: Optional[bool] = get('track_started')
        self.acks_late: Optional[bool] = get('acks_late')
        self.acks_on_failure_or_timeout: Optional[bool] = get('acks_on_failure_or_timeout')
        self.acks_on_failure: Optional[bool] = get('acks_on_failure')
        self.acks_on_timeout: Optional[bool] = get('acks_on_timeout')
        self.reject_on_worker_lost: Optional[bool] = get('reject_on_worker_lost')
        self.throws: Tuple[type, ...] = get('throws', ())
        self.autoretry_for: Tuple[type, ...] = get('autoretry_for', ())
        self.dont_autoretry_for: Tuple[type, ...] = get('dont_autoretry_for', ())
        self.retry_kwargs: Dict[str, Any] = get('retry_kwargs', {})
        self.retry_backoff: Any = get('retry_backoff', False)
        self.retry_backoff_max: int = get('retry_backoff_max', 600)
        self.retry_jitter: bool = get('retry_jitter', True) is not False
        self.serializer: Optional[str] = serializer
        self.time_limit: Optional[float] = get('time_limit')
        self.soft_time_limit: Optional[float] = get('soft_time_limit')
        #: The defaults of ``apply_async`` (Celery's execution options) given to the decorator.
        self.options = {k: v for k, v in opts.items() if k in _task_options.SEND_OPTIONS}
        self._signature: Any = _UNSET
        self.__doc__ = fun.__doc__
        self.__name__ = getattr(fun, '__name__', name)
        self.__wrapped__ = fun

    if sys.version_info < (3, 10):  # no ParamSpec: Task[[int], int] or Task[..., Any] is Task

        def __class_getitem__(cls, params: Any) -> Any:
            return cls

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.bind:
            return cast(R, self.run(self, *args, **kwargs))
        return cast(R, self.run(*args, **kwargs))

    def __repr__(self) -> str:
        return f'<@task: {self.name}>'

    @property
    def request(self) -> Any:
        """The request of the run of this task in the current thread (None outside one)."""
        return current_request()

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> _AsyncResult:
        """Send the task with these arguments; returns an ``AsyncResult``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Any = None,
        kwargs: Optional[Dict[str, Any]] = None,
        task_id: Optional[str] = None,
        **options: Any,
    ) -> _AsyncResult:
        """Send the task (``app.send_task`` options); returns an ``AsyncResult``.

        ``ignore_result`` defaults to the task's option, else to True when the app's
        ``task_ignore_result`` setting is (as Celery): the result is then ``ignored``.

        Raises:
            TypeError: with ``typing``, arguments the function cannot be called with.
            ValueError: a ``soft_time_limit`` above the ``time_limit`` (as Celery).
        """
        if self.typing:
            self.check_arguments(args or (), kwargs or {})
        opts = dict(self.options)
        opts.update(options)
        hard, soft = opts.get('time_limit'), opts.get('soft_time_limit')
        if hard is not None and soft is not None and soft > hard:
            raise ValueError('soft_time_limit must be less than or equal to time_limit')
        ignore = self.ignore_result
        if ignore is None and self.app.conf.task_ignore_result:
            ignore = True
        if ignore is not None:
            opts.setdefault('ignore_result', ignore)
        return self.app.send_task(self.name, args or (), kwargs or {}, task_id=task_id, **opts)

    def apply(
        self,
        args: Any = None,
        kwargs: Optional[Dict[str, Any]] = None,
        task_id: Optional[str] = None,
        retries: int = 0,
        throw: Optional[bool] = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task here, now, in this thread (Celery's ``apply``); nothing is sent.

        Blocks for the run. Returns an ``EagerResult`` (always ready). ``self.request`` of a
        bound task has this run's id; its ``parent_id``/``root_id`` follow the task that
        called ``apply()``.

        Raises:
            TypeError: with ``typing``, arguments the function cannot be called with.
            Exception: the task's own, with ``throw=True``; otherwise it is in the result.
        """
        if self.typing:
            self.check_arguments(args or (), kwargs or {})
        opts = dict(self.options)
        opts.update(options)
        return run_eagerly(self, args, kwargs, task_id, retries, bool(throw), opts)

    def check_arguments(self, args: Any, kwargs: Dict[str, Any]) -> None:
        """Raise ``TypeError`` if the function cannot be called with ``args``/``kwargs``
        (``self`` left out for a bound task). A function without a signature passes."""
        sig = self._signature
        if sig is _UNSET:
            try:
                sig = inspect.signature(self.run)
            except (TypeError, ValueError):
                sig = None
            if sig is not None and self.bind:
                params = list(sig.parameters.values())[1:]
                sig = sig.replace(parameters=params)
            self._signature = sig
        if sig is None:
            return
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f'{self.name}{sig}: {exc}') from None

    def run_for_worker(self, args: Any, kwargs: Dict[str, Any]) -> Any:
        """Run the function for a worker, with ``autoretry_for`` (Celery's policy).

        An exception of ``autoretry_for`` (not of ``dont_autoretry_for``) becomes
        ``self.retry(exc=exc, **retry_kwargs)``, its countdown from ``retry_backoff``,
        ``retry_backoff_max`` and ``retry_jitter`` when ``retry_backoff`` is set.
        """
        try:
            return self(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            if (
                not self.autoretry_for
                or not isinstance(exc, self.autoretry_for)
                or isinstance(exc, self.dont_autoretry_for)
            ):
                raise
            retry_kwargs = dict(self.retry_kwargs)
            if self.retry_backoff:
                request = current_request()
                retry_kwargs['countdown'] = _task_options.backoff(
                    int(max(1.0, float(self.retry_backoff))),
                    (request_field(request, 'retries') or 0) if request is not None else 0,
                    self.retry_backoff_max,
                    self.retry_jitter,
                )
            raise self.retry(exc=exc, **retry_kwargs) from None

    def AsyncResult(self, task_id: str) -> _AsyncResult:
        return self.app.AsyncResult(task_id, task_name=self.name)

    def update_state(
        self,
        task_id: Optional[str] = None,
        state: Optional[str] = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Store a custom state (e.g. ``PROGRESS``) for this run (or ``task_id``)."""
        request = current_request()
        if task_id is None:
            if request is None:
                raise RuntimeError('update_state() outside a task needs a task_id')
            task_id = request_field(request, 'id')
        self.app.backend.store_result(
            task_id, meta, state or states.PENDING, request=request, **kwargs
        )

    def retry(
        self,
        args: Any = None,
        kwargs: Optional[Dict[str, Any]] = None,
        exc: Optional[BaseException] = None,
        throw: bool = True,
        eta: Any = None,
        countdown: Optional[float] = None,
        max_retries: Optional[int] = None,
        **options: Any,
    ) -> Retry:
        """Ask the worker to run this task again later; raises ``Retry`` (ends this run).

        Raises the original ``exc`` (or ``MaxRetriesExceededError`` without one) when
        ``max_retries`` is exhausted: the run then ends as a FAILURE. The worker does the
        re-sending (same id, ``retries + 1``, ``eta`` from ``countdown``).
        """
        request = current_request()
        if request is None:
            raise RuntimeError('retry() can only be called inside a running task')
        limit = self.max_retries if max_retries is None else max_retries
        retries = request_field(request, 'retries') or 0
        if limit is not None and retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request_field(request, 'id')}]: max retries "
                f'({limit}) exceeded'
            )
        when = (
            countdown
            if countdown is not None
            else (None if eta is not None else self.default_retry_delay)
        )
        err = Retry(None, exc, when)
        err.retry_args = args  # type: ignore[attr-defined]
        err.retry_kwargs = kwargs  # type: ignore[attr-defined]
        err.retry_eta = eta  # type: ignore[attr-defined]
        err.retry_options = options  # type: ignore[attr-defined]
        if throw:
            raise err
        return err
