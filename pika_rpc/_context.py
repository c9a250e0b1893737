"""The current task's request, set by the worker around each task run.

Read by ``store_result`` without a ``request`` and by ``AsyncResult.get()``, which refuses
inside a task unless ``disable_sync_subtasks=False``. A ContextVar, so each worker thread
(and asyncio task) sees its own.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Optional

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
