"""The result-storing side of ``RPCBackend`` (a mixin): where a state goes, and publishing it.

``store_result`` publishes Celery's 5.7 result body to the request's ``reply_to`` with
publisher confirms and ``mandatory=True``, blocking until the broker confirmed (bounded by
``publish_timeout``), through the one publish-and-wait path (``_publish``). An unroutable
result (no such reply queue) is a WARNING naming the task and queue plus the
``on_unroutable(task_id, queue)`` hook on the callback thread, never a silent drop; a nack or
a timeout raises ``PublishError``; no ``reply_to`` publishes nothing (a WARNING names the
task). ``correlation_id`` is the request's, else the task id, as Celery's worker writes it;
``date_done`` is written in the ``timezone`` setting's zone (UTC by default).

The mixin reads the backend's ``conf``, ``serializer``, ``delivery_mode``, ``retry_policy``
and ``on_unroutable`` at each call (they may be changed after the backend is made), and uses
its ``_check_open()``, ``_get_link()``, ``_link`` and ``_stats``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Tuple

from . import protocol, serialization, states
from ._context import current_request, request_field
from ._handoff import Publication
from ._publish import publish_and_wait
from .config import Settings
from .errors import PikaRPCError, TaskRevokedError, Unroutable

LOGGER = logging.getLogger(__name__)

__all__ = ['ResultStoring']


def result_publication(
    reply_to: str,
    body: bytes,
    content_type: str,
    content_encoding: str,
    correlation_id: str,
    delivery_mode: int,
    policy: Any,
    timeout: Optional[float],
) -> Publication:
    """A result message as Celery's ``rpc://`` sends it: to the default exchange, routed by
    ``reply_to``, ``mandatory`` (a reply queue that is gone is reported, not lost silently)."""
    properties = {
        'content_type': content_type,
        'content_encoding': content_encoding,
        'correlation_id': correlation_id,
        'delivery_mode': delivery_mode,
        'priority': 0,
        'headers': {},
    }
    return Publication(
        '', reply_to, body, properties, mandatory=True, policy=policy, timeout=timeout
    )


class NoGroupState:
    """The group and reload methods an rpc backend refuses, as Celery's ``rpc://`` does:
    results go to one client's queue, nothing is stored to read again."""

    _kind = 'rpc'

    def _refuse(self, what: str) -> NotImplementedError:
        return NotImplementedError(f'{what} is not supported by the {self._kind} backend')

    def ensure_chords_allowed(self) -> None:
        raise NotImplementedError(
            f'the {self._kind} result backend does not support chords (a group chained with a '
            'task is a chord too): use a backend that stores group state (redis, a database)'
        )

    def reload_task_result(self, task_id: str) -> None:
        raise self._refuse('reload_task_result')

    def reload_group_result(self, group_id: str) -> None:
        raise self._refuse('reload_group_result')

    def save_group(self, group_id: str, result: Any) -> None:
        raise self._refuse('save_group')

    def restore_group(self, group_id: str, cache: bool = True) -> None:
        raise self._refuse('restore_group')

    def delete_group(self, group_id: str) -> None:
        raise self._refuse('delete_group')


class ResultStoring:
    """``store_result``, ``destination_for`` and Celery's ``mark_as_*`` (see the module
    docstring). Thread-safe."""

    conf: Settings
    serializer: str
    delivery_mode: int
    retry_policy: dict
    on_unroutable: Any
    _link: Any
    _stats: Any
    _check_open: Callable[[], None]
    _get_link: Callable[[], Any]

    def destination_for(self, task_id: str, request: Any) -> Tuple[Optional[str], str]:
        """``(reply_to, correlation_id)`` for a result, from ``request`` or the current task.

        Raises:
            PikaRPCError: no request given and no task running in this thread.
        """
        request = request if request is not None else current_request()
        if request is None:
            raise PikaRPCError(
                f'RPC backend cannot store the result of task {task_id}: no '
                'request given and no task running in this thread'
            )
        reply_to = request_field(request, 'reply_to')
        correlation_id = request_field(request, 'correlation_id') or task_id
        return reply_to, correlation_id

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Optional[str] = None,
        request: Any = None,
        *,
        timeout: Optional[float] = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Publish a state of ``task_id`` to the request's ``reply_to``; returns ``result``.

        Blocks until the broker confirmed it (up to ``timeout``, default ``publish_timeout``)
        unless ``wait=False``. Follows ``retry_policy`` (a re-publish after reconnect counts).

        Raises:
            PublishError: nacked, unconfirmed in time, or retries exhausted.
            PikaRPCError: no request and no current task.
        """
        self._check_open()
        reply_to, correlation_id = self.destination_for(task_id, request)
        if not reply_to:
            LOGGER.warning(
                'result of task %s (%s) not sent: its request has no reply_to', task_id, state
            )
            return result
        req = request if request is not None else current_request()
        body = protocol.result_body(
            task_id,
            state,
            result,
            traceback,
            children=kwargs.get('children'),
            group_id=request_field(req, 'group'),
            parent_id=request_field(req, 'parent_id'),
            request=req,
            extended=self.conf.result_extended,
            tz=_timezone(self.conf),
        )
        content_type, content_encoding, data = serialization.dumps(body, self.serializer)
        pub = result_publication(
            reply_to,
            data,
            content_type,
            content_encoding,
            correlation_id,
            self.delivery_mode,
            self.retry_policy,
            self.conf.publish_timeout if timeout is None else timeout,
        )
        link = self._get_link()
        self._stats.add('stored')
        if not wait:
            link.publish(pub)
            return result
        returned = publish_and_wait(link, pub, f'result of task {task_id}')
        if returned is not None:
            self._report_unroutable(task_id, reply_to, returned)
        return result

    def _report_unroutable(self, task_id: str, queue: str, returned: Unroutable) -> None:
        self._stats.add('unroutable')
        LOGGER.warning(
            'result of task %s unroutable: no queue %r (%s %s); the client is gone or '
            'its reply queue expired',
            task_id,
            queue,
            returned.reply_code,
            returned.reply_text,
        )
        hook = self.on_unroutable
        if hook is not None and self._link is not None:
            self._link.callbacks.submit(hook, task_id, queue)

    def mark_as_started(self, task_id: str, request: Any = None, **meta: Any) -> Any:
        return self.store_result(task_id, meta, states.STARTED, request=request)

    def mark_as_done(
        self,
        task_id: str,
        result: Any,
        request: Any = None,
        store_result: bool = True,
        state: str = states.SUCCESS,
    ) -> Any:
        if store_result:
            self.store_result(task_id, result, state, request=request)
        return result

    def mark_as_failure(
        self,
        task_id: str,
        exc: BaseException,
        traceback: Optional[str] = None,
        request: Any = None,
        store_result: bool = True,
        call_errbacks: bool = True,
        state: str = states.FAILURE,
    ) -> BaseException:
        if store_result:
            self.store_result(task_id, exc, state, traceback=traceback, request=request)
        return exc

    def mark_as_retry(
        self,
        task_id: str,
        exc: BaseException,
        traceback: Optional[str] = None,
        request: Any = None,
        store_result: bool = True,
        state: str = states.RETRY,
    ) -> BaseException:
        if store_result:
            self.store_result(task_id, exc, state, traceback=traceback, request=request)
        return exc

    def mark_as_revoked(
        self,
        task_id: str,
        reason: str = '',
        request: Any = None,
        store_result: bool = True,
        state: str = states.REVOKED,
    ) -> BaseException:
        exc = TaskRevokedError(reason or 'revoked')
        if store_result:
            self.store_result(task_id, exc, state, request=request)
        return exc


def _timezone(conf: Settings) -> Any:
    name = conf.timezone
    return _zone(name) if name else None


@functools.lru_cache(maxsize=16)
def _zone(name: str) -> Any:
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:
        LOGGER.warning('unknown timezone %r; writing date_done in UTC', name)
        return None
