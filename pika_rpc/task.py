"""``Task``: a registered function with Celery's calling conventions.

``@app.task`` wraps a function in a ``Task``. Calling the task runs the function here;
``delay``/``apply_async`` send it to a worker through ``app.send_task``. With
``bind=True`` the function gets the task as ``self`` (``self.request``,
``self.update_state``, ``self.retry``). The task knows its app; it never imports it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Generic, Optional, TypeVar, cast

from . import states
from ._context import current_request, request_field
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


class Task(Generic[P, R]):
    """A task registered with an app. Thread-safe: it holds configuration only.

    Generic in the function's parameters and return type (for type checkers): ``@app.task``
    on ``def add(x: int, y: int) -> int`` gives a ``Task[[int, int], int]``, called and
    ``delay()``-ed with ``add``'s parameters."""

    app: App  # the app it is registered with

    def __init__(
        self,
        app: Any,
        fun: Callable[..., Any],
        name: str,
        bind: bool = False,
        ignore_result: Optional[bool] = None,
        track_started: Optional[bool] = None,
        max_retries: Optional[int] = 3,
        default_retry_delay: float = 180,
        acks_late: bool = True,
        **options: Any,
    ) -> None:
        self.app, self.run, self.name, self.bind = app, fun, name, bind
        self.ignore_result = ignore_result
        self.track_started = track_started
        self.max_retries = max_retries
        self.default_retry_delay = default_retry_delay
        self.acks_late = acks_late
        self.options = options
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
        """
        opts = dict(self.options)
        opts.update(options)
        ignore = self.ignore_result
        if ignore is None and self.app.conf.task_ignore_result:
            ignore = True
        if ignore is not None:
            opts.setdefault('ignore_result', ignore)
        return self.app.send_task(self.name, args or (), kwargs or {}, task_id=task_id, **opts)

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
