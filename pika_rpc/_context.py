"""The current task's request, set by the worker around each task run; the current app.

Read by ``store_result`` without a ``request`` and by ``AsyncResult.get()``, which refuses
inside a task unless ``disable_sync_subtasks=False``. A ContextVar, so each worker thread
(and asyncio task) sees its own.

The current app (Celery's ``current_app``) is the last ``App`` created with
``set_as_current``, held weakly: shared tasks resolve to it, and results that lost their app
(unpickled) use its backend.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Any, Iterator, Optional

_current_app: Optional['weakref.ref[Any]'] = None


def set_current_app(app: Any) -> None:
    global _current_app
    _current_app = weakref.ref(app)


def current_app() -> Any:
    """The current ``App``, or None when there is none (see the module docstring)."""
    ref = _current_app
    return None if ref is None else ref()


_current_request: contextvars.ContextVar[Optional[Any]] = contextvars.ContextVar(
    'pika_rpc_current_request', default=None
)


def current_request() -> Optional[Any]:
    """The request of the task running in this thread, or None outside a task."""
    return _current_request.get()


@contextlib.contextmanager
def task_context(request: Any) -> Iterator[Any]:
    token = _current_request.set(request)
    try:
        yield request
    finally:
        _current_request.reset(token)


def request_field(request: Any, name: str) -> Any:
    """``name`` of a Celery-``Context``-like request object or a plain dict (None if absent)."""
    if request is None:
        return None
    if isinstance(request, dict):
        return request.get(name)
    return getattr(request, name, None)
