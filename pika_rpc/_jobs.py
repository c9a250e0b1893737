"""A worker's jobs: the record of one received task message, and what is told about its end.

A :class:`Job` is a received task message, its parsed request and registered task, and where
it stands (``HELD`` for an eta, ``QUEUED`` for the pool, ``RUNNING``, then ``DONE`` or
``RELEASED``); the ``Worker`` moves it between states under its own lock. :class:`Outcomes`
does what follows a job's end, for whichever thread finished it: store its state through the
app's backend (Celery's rpc:// shape, to the message's ``reply_to``), settle its message
(ack, reject or requeue), re-send it for a retry. It never raises: what fails is logged.

Choices where Celery leaves room:

* **Acks late** (the task's ``acks_late``, else the ``task_acks_late`` setting where the
  settings have it, else True: pika_rpc's default, where Celery's is False): a message is
  settled after its final state was stored (and after a retry was re-sent), so a worker
  that dies first leaves it unacked for another worker. Then a FAILURE is acked unless
  ``acks_on_failure`` (else ``acks_on_failure_or_timeout``) is False (rejected, not
  requeued), and a hard time limit is acked unless ``acks_on_timeout`` (else
  ``acks_on_failure_or_timeout``) is False (requeued), as Celery 5.7. ``acks_late=False``
  acks the message when the task starts (at most once, Celery's default), and waits one
  broker round trip first, so a process killed as the task starts cannot have it
  redelivered (pika_rpc's acks are otherwise sent without waiting).
* **reject_on_worker_lost**: accepted; a thread pool has no child process to lose, and when
  the worker's process dies its unacked messages (acks late) return to the queue whatever
  the option says, as when Celery's main process dies.
* **ignore_result**: header ``true`` (or ``null`` with the task's/``task_ignore_result``
  setting true) stores no STARTED/RETRY/SUCCESS/FAILURE/REVOKED; ``update_state`` still
  does. With ``store_errors_even_if_ignored`` (the task's, else the
  ``task_store_errors_even_if_ignored`` setting where the settings have it) FAILURE, RETRY
  and REVOKED are still stored, as Celery.
* **throws**: a FAILURE whose exception is one of the task's ``throws`` is logged at INFO
  without its traceback ("raised expected"), as Celery; it is stored as any FAILURE. An unknown task name always gets FAILURE ``NotRegistered`` and its message is
  rejected (not requeued), as Celery does.
* A return value the result serializer cannot encode gets FAILURE ``EncodeError``, as Celery.
* **Retry**: ``self.retry()`` stores RETRY (the exception, its traceback, the task's own id
  as a child, as Celery), re-sends the message (``protocol.retry_message``: same id,
  ``retries + 1``, an ``eta`` from ``countdown``) to the same exchange/routing key,
  ``mandatory`` and confirmed, then acks. The message keeps the sender's own headers
  (tracing or correlation ids, not the broker's ``x-`` ones) and uses the task's
  ``serializer``. If the re-send fails, FAILURE with the publish error is stored instead.
"""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, List, Optional

from . import protocol, serialization, states
from ._handoff import Publication
from ._interrupt import Interruptible
from ._link import Link
from ._publish import publish_and_wait
from .errors import EncodeError, NotRegistered, Retry, TaskRevokedError, TimeLimitExceeded

LOGGER = logging.getLogger(__name__)

__all__ = ['Job', 'Outcomes', 'HELD', 'QUEUED', 'RUNNING', 'DONE', 'RELEASED']

# Job states, all changed under Worker._lock. A job leaves HELD/QUEUED/RUNNING exactly once,
# for DONE (its final state is being stored by whoever claimed it) or RELEASED (handed back
# to the broker, or dropped after a lost connection: it is redelivered).
HELD, QUEUED, RUNNING, DONE, RELEASED = 'HELD', 'QUEUED', 'RUNNING', 'DONE', 'RELEASED'
_REPR_MAX = 200


class Job:
    """One received task message and where it stands."""

    __slots__ = (
        'request',
        'message',
        'task',
        'state',
        'timers',
        'abandoned',
        'thread',
        'time_start',
        'acked',
        'interruptible',
    )

    def __init__(self, request: protocol.TaskRequest, message: Any, task: Any) -> None:
        self.request, self.message, self.task = request, message, task
        self.state = QUEUED
        self.timers: List[list] = []
        self.abandoned = False  # finished for the world while its function still runs
        self.thread: Optional[threading.Thread] = None  # the pool thread running it
        self.time_start: Optional[float] = None  # time.time() when it began to run
        self.acked = False  # acked when it started (acks_late False): settled already
        self.interruptible = Interruptible()  # its run, for the soft/hard time limits


def expired(request: protocol.TaskRequest) -> bool:
    """True when ``request``'s ``expires`` time has passed."""
    return request.expires is not None and request.expires <= datetime.now(timezone.utc)


def short(value: Any) -> str:
    """``repr(value)`` cut to a log line's worth; never raises."""
    try:
        text = repr(value)
    except Exception:
        text = f'<{type(value).__name__}>'
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + '...'


def format_tb(exc: BaseException) -> str:
    """``exc``'s traceback as text, without the frame that caught it."""
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb  # skip our own frame
    return ''.join(traceback.format_exception(type(exc), exc, tb))


class Outcomes:
    """Stores a worker's job states and settles their messages; see the module docstring.

    Args:
        app: the app whose ``backend`` stores states and whose settings apply.
        hostname: the worker's node name, for logs.
        count: ``count(name)`` adds one to the worker's counter ``name`` (thread-safe).
        link: returns the link a retry is re-sent on.
        default_queue: the routing key of a retry whose message came with none.

    Every method blocks on the broker (a store, an ack, a re-send): call them on a pool or
    service thread, never on the callback or I/O thread. None raises.
    """

    def __init__(
        self,
        app: Any,
        hostname: str,
        count: Callable[[str], None],
        link: Callable[[], Link],
        default_queue: str,
    ) -> None:
        self.app, self.hostname = app, hostname
        self._count, self._link, self._default_queue = count, link, default_queue

    def setting(self, name: str, default: Any) -> Any:
        """The app's setting ``name``, or ``default`` when the settings do not have it."""
        try:
            return getattr(self.app.conf, name)
        except AttributeError:
            return default

    def _option(self, job: Job, *names: str, default: bool) -> bool:
        """The first of the task's options ``names`` that is set, else the first setting
        ``task_<name>`` that is, else ``default``."""
        for name in names:
            value = getattr(job.task, name, None)
            if value is not None:
                return bool(value)
        for name in names:
            value = self.setting(f'task_{name}', None)
            if value is not None:
                return bool(value)
        return default

    def acks_late(self, job: Job) -> bool:
        """True when ``job``'s message is settled after its outcome (see the docstring)."""
        return self._option(job, 'acks_late', default=True)

    def keeps(self, job: Job, state: str) -> bool:
        """True when ``state`` of ``job`` is stored (ignore_result and
        store_errors_even_if_ignored)."""
        if not self.ignored(job):
            return True
        if state not in (states.FAILURE, states.RETRY, states.REVOKED):
            return False
        return self._option(job, 'store_errors_even_if_ignored', default=False)

    def ack_early(self, job: Job) -> None:
        """Ack ``job``'s message as it starts, unless it acks late. Pool thread; blocks for
        one round trip: a passive declare of ``amq.direct`` after the ack, so the broker has
        the ack before the task runs (a process killed meanwhile cannot get it redelivered)."""
        if self.acks_late(job):
            return
        self.settle(job)
        job.acked = True
        try:
            self._link().control(
                'declare_exchange', exchange='amq.direct', passive=True, timeout=10.0
            )
        except Exception as exc:
            LOGGER.warning(
                'worker %s: task %s[%s]: the broker did not confirm it has the ack: %s',
                self.hostname,
                job.request.name,
                job.request.id,
                exc,
            )

    def ignored(self, job: Job) -> bool:
        """True when ``job``'s states are not stored (ignore_result)."""
        flag = job.request.ignore_result
        if flag is None:
            flag = getattr(job.task, 'ignore_result', None)
        if flag is None:
            flag = self.app.conf.task_ignore_result
        return bool(flag)

    def track_started(self, job: Job) -> bool:
        """True when ``job`` stores STARTED before it runs."""
        flag = getattr(job.task, 'track_started', None)
        return bool(self.app.conf.task_track_started if flag is None else flag)

    def store(
        self,
        job: Job,
        state: str,
        value: Any,
        tb: Optional[str] = None,
        children: Optional[list] = None,
    ) -> Optional[Exception]:
        """Store a state; log and return the error if that failed (never raises)."""
        try:
            self.app.backend.store_result(
                job.request.id, value, state, traceback=tb, request=job.request, children=children
            )
        except Exception as exc:
            LOGGER.error(
                'worker %s: could not store %s of task %s[%s]: %s',
                self.hostname,
                state,
                job.request.name,
                job.request.id,
                exc,
            )
            return exc
        return None

    def settle(self, job: Job, requeue: bool = False, reject: bool = False) -> None:
        """Ack ``job``'s message, or reject it, or requeue it (nothing when it was acked as it
        started); a failure is logged."""
        if job.acked:
            return
        try:
            if requeue:
                job.message.requeue()
            elif reject:
                job.message.reject(requeue=False)
            else:
                job.message.ack()
        except Exception as exc:
            LOGGER.warning(
                'worker %s: could not %s the message of task %s[%s]: %s; the broker '
                'may deliver it again',
                self.hostname,
                'requeue' if requeue else 'reject' if reject else 'ack',
                job.request.name,
                job.request.id,
                exc,
            )

    def reject(self, message: Any) -> None:
        """Reject (no requeue) a message that never became a job; a failure is logged."""
        try:
            message.reject(requeue=False)
        except Exception as exc:
            LOGGER.warning(
                'worker %s: could not reject message %s: %s',
                self.hostname,
                message.delivery_tag,
                exc,
            )

    def store_and_ack(self, job: Job, state: str, exc: BaseException) -> None:
        """Store ``state`` with ``exc`` (unless ignored) and settle: a job ended by us."""
        if self.keeps(job, state) or state == states.FAILURE and isinstance(exc, NotRegistered):
            self.store(job, state, exc)
        if isinstance(exc, NotRegistered):
            self.settle(job, reject=True)
        elif isinstance(exc, TimeLimitExceeded) and self.acks_late(job):
            timeout_ack = self._option(
                job, 'acks_on_timeout', 'acks_on_failure_or_timeout', default=True
            )
            self.settle(job, requeue=not timeout_ack)
        else:
            self.settle(job)

    def revoked(self, job: Job, reason: str) -> None:
        """REVOKED (``reason``: ``'revoked'`` or ``'expired'``) for a job that never ran."""
        self._count('revoked')
        LOGGER.info(
            'Task %s[%s] %s: not run',
            job.request.name,
            job.request.id,
            'expired' if reason == 'expired' else 'revoked',
        )
        self.store_and_ack(job, states.REVOKED, TaskRevokedError(reason))

    def finished(self, job: Job, state: str, value: Any, tb: Optional[str], runtime: float) -> None:
        """What the task returned (SUCCESS), raised (FAILURE) or asked for (RETRY)."""
        req = job.request
        if state == states.RETRY:
            self._retry(job, value, tb)
            return
        if state == states.SUCCESS:
            self._count('succeeded')
            LOGGER.info(
                'Task %s[%s] succeeded in %.3fs: %s', req.name, req.id, runtime, short(value)
            )
        else:
            self._count('failed')
            throws = getattr(job.task, 'throws', None) or ()
            if throws and isinstance(value, throws):
                LOGGER.info('Task %s[%s] raised expected: %r', req.name, req.id, value)
            else:
                LOGGER.error('Task %s[%s] raised unexpected: %r\n%s', req.name, req.id, value, tb)
        if self.keeps(job, state):
            error = self.store(job, state, value, tb)
            if isinstance(error, EncodeError) and state == states.SUCCESS:
                self.store(job, states.FAILURE, error, format_tb(error))  # as Celery
        if (
            state == states.FAILURE
            and self.acks_late(job)
            and not self._option(job, 'acks_on_failure', 'acks_on_failure_or_timeout', default=True)
        ):
            self.settle(job, reject=True)
        else:
            self.settle(job)

    def _retry(self, job: Job, err: Retry, tb: Optional[str]) -> None:
        req = job.request
        self._count('retried')
        LOGGER.info('Task %s[%s] retry: %s', req.name, req.id, err)
        if self.keeps(job, states.RETRY):
            self.store(job, states.RETRY, err.exc, tb, children=[[[req.id, None], None]])
        try:
            self._republish(job, err)
        except Exception as exc:
            LOGGER.error(
                'Task %s[%s]: could not re-send it for its retry: %s', req.name, req.id, exc
            )
            if self.keeps(job, states.FAILURE):
                self.store(job, states.FAILURE, exc, format_tb(exc))
        self.settle(job)

    def _republish(self, job: Job, err: Retry) -> None:
        """Send the task again (same id, retries + 1) where it came from. Blocks on confirm."""
        req = job.request
        eta = getattr(err, 'retry_eta', None)
        headers, props, body = protocol.retry_message(
            req,
            getattr(err, 'retry_args', None),
            getattr(err, 'retry_kwargs', None),
            countdown=None if eta is not None else err.when,
            eta=eta,
            options=getattr(err, 'retry_options', None),
        )
        conf = self.app.conf
        serializer = getattr(job.task, 'serializer', None) or conf.task_serializer
        content_type, content_encoding, data = serialization.dumps(body, serializer)
        props.update(content_type=content_type, content_encoding=content_encoding, headers=headers)
        info = req.delivery_info
        exchange = info.get('exchange') or ''
        routing_key = info.get('routing_key') or (self._default_queue if not exchange else '')
        pub = Publication(
            exchange,
            routing_key,
            data,
            props,
            mandatory=True,
            policy=conf.task_publish_retry_policy,
            timeout=conf.publish_timeout,
        )
        returned = publish_and_wait(self._link(), pub, f'retry of task {req.id}')
        if returned is not None:
            raise returned
