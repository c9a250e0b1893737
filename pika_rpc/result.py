"""``AsyncResult``, ``ResultSet`` and ``GroupResult``: handles on task results.

A result object holds only an id and its backend; every read goes to the backend's pending
table, so any thread may read or wait on any result and many threads may wait on one id.
``get()`` pushes nothing and polls nothing: it sleeps on the task's slot until the I/O thread
delivers a final state. ``interval`` and ``no_ack`` are accepted for Celery compatibility
and unused.

As Celery's: ``date_done`` is a ``datetime`` (the result message carries ISO 8601 text);
``name``/``args``/``kwargs``/``worker``/``retries``/``queue`` are read from the result
message, so they are None unless the worker stores extended results (``result_extended``);
``exists()`` says whether any state of the task arrived. Results pickle without their app
(as Celery's): an unpickled one uses the current app's backend. ``ResultSet`` compares by
its results, ``GroupResult`` by id, results and parent (and equals its id as a string).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union, overload

from . import states
from ._context import current_app, current_request
from ._timeouts import deadline

__all__ = ['AsyncResult', 'ResultSet', 'GroupResult', 'result_from_tuple']

_SYNC_SUBTASK_MESSAGE = (
    'AsyncResult.get() was called inside a running task: the task would wait on a worker '
    'slot that may never free up. Pass disable_sync_subtasks=False if you really mean it.'
)


def _assert_will_not_block(disable_sync_subtasks: bool) -> None:
    if disable_sync_subtasks and current_request() is not None:
        raise RuntimeError(_SYNC_SUBTASK_MESSAGE)


class AsyncResult:
    """A task's pending result. Thread-safe: it holds no state of its own but the id."""

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: Optional[str] = None,
        app: Any = None,
        parent: Optional['AsyncResult'] = None,
    ) -> None:
        if id is None:
            raise ValueError(f'AsyncResult requires a task id, got {id!r}')
        self.app = app
        self.id = str(id)
        self._backend = backend
        self.task_name = task_name
        self.parent = parent
        #: True for a task sent with ``ignore_result``: ``get()`` returns None at once (no
        #: result will come); ``state`` stays what arrived (``PENDING``), as in Celery.
        self.ignored = False

    @property
    def backend(self) -> Any:
        # app.backend may be renewed (fork, close); follow it unless a backend was given.
        if self._backend is not None:
            return self._backend
        return _app_of(self.app).backend

    @property
    def task_id(self) -> str:
        return self.id

    # ------------------------------------------------------------------ waiting
    def get(
        self,
        timeout: Optional[float] = None,
        propagate: bool = True,
        interval: float = 0.5,
        no_ack: bool = True,
        follow_parents: bool = True,
        callback: Optional[Callable[[str, Any], Any]] = None,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
        disable_sync_subtasks: bool = True,
        EXCEPTION_STATES: frozenset[str] = states.EXCEPTION_STATES,
        PROPAGATE_STATES: frozenset[str] = states.PROPAGATE_STATES,
    ) -> Any:
        """Wait until the task is ready and return its value.

        Blocks up to ``timeout`` seconds (None: until ready; 0: answer at once). Runs
        ``on_message(raw_meta)`` on this thread for every state message of the task.
        An ``ignored`` result (sent with ``ignore_result``) returns None at once, before
        any check, as Celery's.

        Returns:
            The task's return value (SUCCESS), or its exception with ``propagate=False``;
            None for an ``ignored`` result.
        Raises:
            The task's exception for FAILURE/REVOKED (with ``propagate=True``);
            pika_rpc.TimeoutError: not ready in time (the message names the task);
            ReplyQueueLost, ConnectionLost: the result can no longer arrive;
            RuntimeError: called inside a task with ``disable_sync_subtasks=True``.
        """
        if self.ignored:
            return None
        _assert_will_not_block(disable_sync_subtasks)
        deadline(timeout)  # validates: negative or NaN raise ValueError
        if follow_parents and propagate and self.parent is not None:
            self.parent.maybe_throw(propagate=True)
        meta = self.backend.wait_for_pending(self, timeout=timeout, on_message=on_message)
        return self._value(meta, propagate, callback, PROPAGATE_STATES)

    wait = get

    def _value(
        self,
        meta: Dict[str, Any],
        propagate: bool,
        callback: Optional[Callable[[str, Any], Any]],
        propagate_states: frozenset[str] = states.PROPAGATE_STATES,
    ) -> Any:
        status, value = meta['status'], meta.get('result')
        if callback is not None:
            callback(self.id, value)
        if propagate and status in propagate_states:
            if isinstance(value, BaseException):
                raise value
        return value

    def maybe_throw(
        self, propagate: bool = True, callback: Optional[Callable[[str, Any], Any]] = None
    ) -> Any:
        """Raise the task's exception if it failed (without waiting); else return its value."""
        meta = self._meta()
        return self._value(meta, propagate, callback)

    def forget(self) -> None:
        """Drop the kept result (no I/O: rpc results live only in this process)."""
        self.backend.forget(self.id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: Optional[str] = None,
        wait: bool = False,
        timeout: Optional[float] = None,
    ) -> None:
        """Broadcast Celery's ``revoke`` control message; workers then store REVOKED."""
        app = self.app
        if app is None:
            raise RuntimeError('revoke() needs the result to know its app')
        app.control_revoke(self.id, terminate=terminate, signal=signal, timeout=timeout)

    # ------------------------------------------------------------------ state
    def _meta(self) -> Dict[str, Any]:
        return self.backend.get_task_meta(self.id)

    @property
    def state(self) -> str:
        """The latest known state; never blocks (``PENDING`` when nothing arrived)."""
        return self._meta()['status']

    status = state

    @property
    def result(self) -> Any:
        """The return value, exception or state metadata (None while pending)."""
        return self._meta().get('result')

    info = result

    @property
    def traceback(self) -> Optional[str]:
        return self._meta().get('traceback')

    @property
    def date_done(self) -> Optional[datetime.datetime]:
        """When the task finished (a ``datetime``; None while not ready)."""
        return parse_date(self._meta().get('date_done'))

    @property
    def name(self) -> Optional[str]:
        return self._meta().get('name')

    @property
    def args(self) -> Any:
        return self._meta().get('args')

    @property
    def kwargs(self) -> Any:
        return self._meta().get('kwargs')

    @property
    def worker(self) -> Optional[str]:
        return self._meta().get('worker')

    @property
    def retries(self) -> Optional[int]:
        return self._meta().get('retries')

    @property
    def queue(self) -> Optional[str]:
        return self._meta().get('queue')

    def exists(self) -> bool:
        """Whether a state of this task arrived (a task never sent, or forgotten, has none).
        Never blocks."""
        return self._meta()['status'] != states.PENDING

    @property
    def children(self) -> Optional[List['AsyncResult']]:
        children = self._meta().get('children')
        if not children:
            return children
        return [result_from_tuple(c, self.app, self._backend) for c in children]

    def as_list(self) -> List[str]:
        """This task's id, then its parents' ids."""
        ids = [self.id]
        if self.parent is not None:
            ids.extend(self.parent.as_list())
        return ids

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def as_tuple(self) -> Tuple[Tuple[str, Any], None]:
        parent = self.parent
        return (self.id, parent and parent.as_tuple()), None

    # ------------------------------------------------------------------ identity
    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.id}>'

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.id, None, self.task_name, None, self.parent))


class ResultSet:
    """Many results, waited on together through the backend's native join."""

    def __init__(self, results: Iterable[AsyncResult], app: Any = None, **kwargs: Any) -> None:
        self.results = list(results)
        self.app = app

    @property
    def backend(self) -> Any:
        if self.results:
            return self.results[0].backend
        return _app_of(self.app).backend

    def add(self, result: AsyncResult) -> None:
        """Add ``result`` unless it is a member already."""
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Union[str, AsyncResult]) -> None:
        """Remove a member (a result or its id). Raises ``KeyError`` if it is not one."""
        try:
            self.results.remove(result)  # type: ignore[arg-type]  # AsyncResult == its id
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: Union[str, AsyncResult]) -> None:
        """Remove a member if it is one."""
        try:
            self.remove(result)
        except KeyError:
            pass

    def update(self, results: Iterable[AsyncResult]) -> None:
        """Add the results that are not members yet."""
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        """Remove every member (the list object is kept, as Celery)."""
        self.results[:] = []

    def maybe_throw(self, callback: Optional[Callable] = None, propagate: bool = True) -> None:
        """Raise the first failed member's exception (set order; never waits)."""
        for result in self.results:
            result.maybe_throw(callback=callback, propagate=propagate)

    maybe_reraise = maybe_throw

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]  # mutable, as Celery's

    def __reduce__(self) -> tuple:
        return (type(self), (self.results,))

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return any(not r.ready() for r in self.results)

    def forget(self) -> None:
        for r in self.results:
            r.forget()

    def revoke(self, terminate: bool = False, signal: Optional[str] = None, **kwargs: Any) -> None:
        for r in self.results:
            r.revoke(terminate=terminate, signal=signal)

    def iter_native(
        self,
        timeout: Optional[float] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
    ) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """Yield ``(task_id, meta)`` as each task completes (completion order)."""
        return self.backend.get_many(
            [r.id for r in self.results], timeout=timeout, on_message=on_message
        )

    # Typing: without a callback the values are returned, with one None is.
    @overload
    def join_native(
        self,
        timeout: Optional[float] = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: None = None,
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
        disable_sync_subtasks: bool = True,
    ) -> List[Any]: ...
    @overload
    def join_native(
        self,
        timeout: Optional[float],
        propagate: bool,
        interval: float,
        callback: Callable[[str, Any], Any],
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
        disable_sync_subtasks: bool = True,
    ) -> None: ...
    @overload
    def join_native(
        self,
        timeout: Optional[float] = None,
        propagate: bool = True,
        interval: float = 0.5,
        *,
        callback: Callable[[str, Any], Any],
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
        disable_sync_subtasks: bool = True,
    ) -> None: ...
    def join_native(
        self,
        timeout: Optional[float] = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Optional[Callable[[str, Any], Any]] = None,
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
        disable_sync_subtasks: bool = True,
    ) -> Optional[List[Any]]:
        """Wait for every result; return the values in the set's order.

        Raises the first failure met (completion order) when ``propagate``;
        ``pika_rpc.TimeoutError`` when ``timeout`` passes for the whole join.
        """
        _assert_will_not_block(disable_sync_subtasks)
        order = {r.id: i for i, r in enumerate(self.results)}
        values: List[Any] = [None] * len(self.results)
        for task_id, meta in self.iter_native(timeout=timeout, on_message=on_message):
            value = meta.get('result')
            if (
                propagate
                and meta['status'] in states.PROPAGATE_STATES
                and isinstance(value, BaseException)
            ):
                raise value
            if callback is not None:
                callback(task_id, value)
            else:
                values[order[task_id]] = value
        return values if callback is None else None

    def join(self, timeout: Optional[float] = None, propagate: bool = True, **kwargs: Any) -> Any:
        return self.join_native(timeout=timeout, propagate=propagate, **kwargs)

    get = join_native

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: [{", ".join(r.id for r in self.results)}]>'


class GroupResult(ResultSet):
    """A ``ResultSet`` with a group id. The rpc backend stores no groups (save/restore raise)."""

    def __init__(
        self,
        id: Optional[str] = None,
        results: Iterable[AsyncResult] = (),
        parent: Optional[AsyncResult] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(results, **kwargs)
        self.id = id
        self.parent = parent

    def as_tuple(self) -> Tuple[Any, ...]:
        return (
            (self.id, self.parent and self.parent.as_tuple()),
            [r.as_tuple() for r in self.results],
        )

    def save(self, backend: Any = None) -> None:
        (backend or self.backend).save_group(self.id, self)

    def delete(self, backend: Any = None) -> None:
        (backend or self.backend).delete_group(self.id)

    @property
    def children(self) -> List[AsyncResult]:
        return self.results

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return (
                other.id == self.id
                and other.results == self.results
                and other.parent == self.parent
            )
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self.id)

    def __bool__(self) -> bool:
        return bool(self.id or self.results)

    def __str__(self) -> str:
        return str(self.id)

    def __reduce__(self) -> tuple:
        return (type(self), (self.id, self.results, self.parent))

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.id} [{", ".join(r.id for r in self.results)}]>'


def _app_of(app: Any) -> Any:
    app = app if app is not None else current_app()
    if app is None:
        raise RuntimeError('this result has no app (it was unpickled?) and there is no App')
    return app


def parse_date(value: Any) -> Optional[datetime.datetime]:
    """A result message's ``date_done`` (ISO 8601 text) as a ``datetime``; a ``datetime``
    is returned as it is. Raises ``ValueError`` for text that is not ISO 8601."""
    if value is None or isinstance(value, datetime.datetime):
        return value
    text = str(value)
    if text.endswith('Z'):
        text = text[:-1] + '+00:00'
    return datetime.datetime.fromisoformat(text)


def result_from_tuple(value: Any, app: Any = None, backend: Any = None) -> Any:
    """Rebuild an AsyncResult/GroupResult from Celery's tuple form (``children`` items)."""
    if isinstance(value, (AsyncResult, ResultSet)):
        return value
    if isinstance(value, str):
        return AsyncResult(value, backend=backend, app=app)
    (head, members) = value
    if isinstance(head, (list, tuple)):
        task_id, parent = head
    else:
        task_id, parent = head, None
    parent_result = result_from_tuple(parent, app, backend) if parent else None
    if members is not None:
        return GroupResult(
            task_id,
            [result_from_tuple(m, app, backend) for m in members],
            parent=parent_result,
            app=app,
        )
    return AsyncResult(task_id, backend=backend, app=app, parent=parent_result)
