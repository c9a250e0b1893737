"""Running a task in the calling thread: ``Task.apply()`` and its ``EagerResult`` (Celery's).

Nothing goes through the broker: the function runs at once, in this thread, inside a request
context of its own (``self.request`` of a bound task), whose ``parent_id``/``root_id`` follow
the task that called ``apply()`` when there is one, as Celery's. ``self.retry()`` inside an
eager run ends it as RETRY (nothing is sent again). Thread-safe: each run has its own request.
"""

from __future__ import annotations

import traceback as _traceback
import uuid
from typing import Any, Dict, Optional

from . import states
from ._context import current_request, request_field, task_context
from .errors import Retry

__all__ = ['EagerResult', 'run_eagerly']


class EagerRequest:
    """``self.request`` of an eager run: Celery's request fields, None for any not set."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__'):
            raise AttributeError(name)
        return None


class EagerResult:
    """The outcome of a task run in this thread (Celery's ``EagerResult``): always ready."""

    def __init__(
        self, task_id: str, value: Any, state: str, traceback: Optional[str], name: str
    ) -> None:
        self.id = self.task_id = task_id
        self._value, self._state, self.traceback, self.name = value, state, traceback, name

    def __repr__(self) -> str:
        return f'<EagerResult: {self.id}>'

    def get(self, timeout: Optional[float] = None, propagate: bool = True, **kwargs: Any) -> Any:
        """The return value; the task's exception is raised (``propagate``) or returned."""
        if self._state in states.PROPAGATE_STATES and propagate:
            raise self._value
        return self._value

    wait = get

    @property
    def result(self) -> Any:
        return self._value

    @property
    def state(self) -> str:
        return self._state

    status = state

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return self._state == states.SUCCESS

    def failed(self) -> bool:
        return self._state == states.FAILURE

    def forget(self) -> None:
        """Nothing is kept anywhere: a no-op."""

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        """It already ran: a no-op."""


def run_eagerly(
    task: Any,
    args: Any,
    kwargs: Optional[Dict[str, Any]],
    task_id: Optional[str],
    retries: int,
    throw: bool,
    options: Dict[str, Any],
) -> EagerResult:
    """Run ``task`` here with ``args``/``kwargs`` as a worker would, minus the broker.

    Raises the task's exception when ``throw`` (Celery's ``task_eager_propagates``);
    otherwise it is in the result (``FAILURE``)."""
    task_id = task_id or str(uuid.uuid4())
    parent = current_request()
    parent_id = request_field(parent, 'id')
    request = EagerRequest(
        id=task_id,
        task=task.name,
        is_eager=True,
        delivery_info={'is_eager': True},
        name=task.name,
        args=list(args or ()),
        kwargs=dict(kwargs or {}),
        retries=retries,
        timelimit=(options.get('time_limit'), options.get('soft_time_limit')),
        time_limit=options.get('time_limit'),
        soft_time_limit=options.get('soft_time_limit'),
        root_id=(request_field(parent, 'root_id') or parent_id) if parent else task_id,
        parent_id=parent_id,
        ignore_result=options.get('ignore_result'),
    )
    tb = None
    with task_context(request):
        try:
            value, state = task(*request.args, **request.kwargs), states.SUCCESS
        except Retry as exc:
            value, state = exc.exc if exc.exc is not None else exc, states.RETRY
        except Exception as exc:
            if throw:
                raise
            value, state, tb = exc, states.FAILURE, _traceback.format_exc()
    return EagerResult(task_id, value, state, tb, task.name)
