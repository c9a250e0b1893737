"""The receiving side of ``Worker`` (a mixin): sorting task messages as they arrive, holding
``eta`` tasks, rate limits, the prefetch window, and revoking.

Deliveries arrive on the link's callback thread, which only sorts them: decode and parse
(a malformed message is rejected without requeue), an unknown task name (FAILURE
``NotRegistered``, rejected), a revoked or expired id (REVOKED), a future ``eta`` (held on the
worker's timer, the prefetch window raised by one while it waits), else queued for the pool.
States are stored on the worker's service thread, never here.

**Rate limits** (the task's ``rate_limit``, else the ``task_default_rate_limit`` setting where
the settings have it; none with ``worker_disable_rate_limits``): as Celery's worker, one token
bucket per task name (``_rate_limit``). A task that is due but finds no token waits in its
bucket, in arrival order, still QUEUED (so a revoke, a stop or a lost connection handles it
as any queued task), and the worker's timer moves it to the pool when a token is there.
:meth:`Receiving.set_rate_limit` changes a task's limit while the worker runs; so does
Celery's ``celery control rate_limit <task> <rate>``, answered with Celery's replies.

The mixin uses the worker's ``_lock`` and the attributes listed on ``Execution``, plus
``app``, ``prefetch_count``, ``_consumer`` and ``_applied_prefetch``; ``_claim`` and
``_abandon`` come from ``Execution``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Union

from . import _task_options, protocol, states
from ._execution import _RUNNING, Execution
from ._jobs import DONE, HELD, QUEUED, RUNNING, Job, expired, short
from ._pidbox import nok, ok
from ._rate_limit import TokenBucket
from .errors import NotRegistered, PikaRPCError, TaskRevokedError

LOGGER = logging.getLogger(__name__)

__all__ = ['Receiving']


class Receiving(Execution):
    """Sorting deliveries, eta, prefetch and revoke for ``Worker`` (see the module docstring)."""

    app: Any
    prefetch_count: int
    _consumer: Optional[Any]
    _applied_prefetch: int
    _buckets: Dict[str, Optional[TokenBucket]]  # by task name, under _lock; None: no limit

    def _on_task_message(self, message: Any) -> None:
        if self._state != _RUNNING:
            return  # stopping: it stays unacked and returns when we cancel
        try:
            body = message.decode()
            info = dict(message.delivery_info, priority=message.properties.get('priority'))
            req = protocol.parse_task_message(
                message.headers, message.properties, body, delivery_info=info
            )
        except Exception as exc:
            self._stats.add('rejected')
            LOGGER.error(
                'worker %s: rejected a malformed task message (tag %s, %s, headers %s): %s',
                self.hostname,
                message.delivery_tag,
                message.content_type,
                short(message.headers),
                exc,
            )
            self._service.submit(self._outcomes.reject, message)
            return
        req.hostname = self.hostname
        self._stats.add('received')
        task = self.app.tasks.get(req.name)
        job = Job(req, message, task)
        LOGGER.info('Task %s[%s] received', req.name, req.id)
        if task is None:
            self._stats.add('failed')
            LOGGER.error(
                'Received unregistered task of type %r (id %s); FAILURE NotRegistered '
                'stored and the message rejected',
                req.name,
                req.id,
            )
            job.state = DONE
            self._service.submit(
                self._outcomes.store_and_ack, job, states.FAILURE, NotRegistered(req.name)
            )
            return
        reason = 'revoked' if req.id in self.revoked else 'expired' if expired(req) else None
        if reason is not None:
            job.state = DONE
            self._service.submit(self._outcomes.revoked, job, reason)
            return
        delay = (req.eta - datetime.now(timezone.utc)).total_seconds() if req.eta else 0
        with self._lock:
            if self._state != _RUNNING:
                return
            self._jobs.setdefault(req.id, []).append(job)
            if delay > 0:
                job.state = HELD
                self._held += 1
                job.timers.append(self._timer.call_later(delay, self._on_eta, job))
            else:
                job.state = QUEUED
        if delay > 0:
            LOGGER.info('Task %s[%s] held until its eta %s', req.name, req.id, req.eta)
            self._service.submit(self._apply_prefetch)
        else:
            self._to_pool(job)

    def _on_eta(self, job: Job) -> None:  # timer thread
        with self._lock:
            if job.state != HELD or self._state != _RUNNING:
                return
            job.state = QUEUED
            self._held -= 1
        self._to_pool(job)
        self._service.submit(self._apply_prefetch)

    # ------------------------------------------------------------------ rate limits
    def _bucket(self, name: str, task: Any) -> Optional[TokenBucket]:
        with self._lock:
            if name in self._buckets:
                return self._buckets[name]
        setting = self._outcomes.setting
        limit = getattr(task, 'rate_limit', None) or setting('task_default_rate_limit', None)
        try:
            per_second = _task_options.rate(limit)
        except ValueError as exc:
            LOGGER.error('worker %s: task %s: %s; not rate limited', self.hostname, name, exc)
            per_second = 0.0
        if setting('worker_disable_rate_limits', False):
            per_second = 0.0
        with self._lock:
            return self._buckets.setdefault(name, TokenBucket(per_second) if per_second else None)

    def _to_pool(self, job: Job) -> None:
        """Hand a due QUEUED job to the pool, or to its task's bucket (callback or timer
        thread)."""
        bucket = self._bucket(job.request.name, job.task)
        if bucket is None:
            self._work.put(job)
            return
        with bucket.lock:
            bucket.waiting.append(job)
        self._drain(bucket)

    def _drain(self, bucket: TokenBucket) -> None:
        """Move the bucket's waiting jobs to the pool while there are tokens; arm the timer
        for the next one."""
        ready = []
        with bucket.lock:
            while bucket.waiting:
                job = bucket.waiting[0]
                if job.state != QUEUED:  # revoked, released or dropped meanwhile
                    bucket.waiting.popleft()
                    continue
                if not bucket.take():
                    if bucket.timer is None:
                        bucket.timer = self._timer.call_later(
                            bucket.wait_time(), self._on_bucket, bucket
                        )
                    break
                ready.append(bucket.waiting.popleft())
        for job in ready:
            self._work.put(job)

    def _on_bucket(self, bucket: TokenBucket) -> None:  # timer thread
        with bucket.lock:
            bucket.timer = None
        self._drain(bucket)

    def set_rate_limit(self, task_name: str, rate_limit: Any) -> None:
        """Limit how often ``task_name`` starts here (``'10/s'``, ``'100/m'``, ``'2/h'``, a
        number per second; None or 0: no limit). Any thread; never blocks on the broker.

        Raises:
            ValueError: not a rate.
        """
        per_second = _task_options.rate(rate_limit)
        with self._lock:
            old = self._buckets.get(task_name)
            self._buckets[task_name] = TokenBucket(per_second) if per_second else None
        if old is None:
            return
        with old.lock:
            waiting = list(old.waiting)
            old.waiting.clear()
            if old.timer is not None:
                self._timer.cancel(old.timer)
                old.timer = None
        for job in waiting:
            if job.state == QUEUED:
                self._to_pool(job)

    def _control_rate_limit(self, task_name: Any, rate_limit: Any) -> Dict[str, Any]:
        """Celery's ``rate_limit`` control command (callback thread: quick), Celery's replies."""
        try:
            per_second = _task_options.rate(rate_limit)
        except ValueError as exc:
            return nok(f'Invalid rate limit string: {exc!r}')
        if task_name not in self.app.tasks:
            LOGGER.error(
                'worker %s: rate_limit for %r refused: no such task', self.hostname, task_name
            )
            return nok('unknown task')
        self.set_rate_limit(task_name, rate_limit)
        if not per_second:
            LOGGER.info('worker %s: task %s is no longer rate limited', self.hostname, task_name)
            return ok('rate limit disabled successfully')
        LOGGER.info(
            'worker %s: task %s now rate limited to %s', self.hostname, task_name, rate_limit
        )
        return ok('new rate limit set successfully')

    def _apply_prefetch(self) -> None:  # service thread
        if not self.prefetch_count or self._consumer is None:
            return  # no limit: held messages cannot starve the pool
        with self._lock:
            if self._state != _RUNNING:
                return
            want = self.prefetch_count + self._held
        if want != self._applied_prefetch:
            try:
                self._consumer.qos(prefetch_count=want)
                self._applied_prefetch = want
            except PikaRPCError as exc:
                LOGGER.warning(
                    'worker %s: could not set prefetch to %d: %s', self.hostname, want, exc
                )

    def revoke(self, task_ids: Union[str, Iterable[str]], terminate: bool = False) -> List[str]:
        """Revoke tasks here (what a ``revoke`` broadcast does); see the module docstring.

        Any thread; never blocks on the broker (states are stored on the service thread).

        Returns:
            The ids of the tasks that were running here: with ``terminate``, those abandoned
            (REVOKED stored; their function runs on), else those left to finish.
        """
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        waiting, running = [], []
        with self._lock:
            for task_id in ids:
                self.revoked.add(task_id)
                for job in list(self._jobs.get(task_id, ())):
                    if self._claim(job, HELD, QUEUED):
                        waiting.append(job)
                    elif job.state == RUNNING:
                        running.append(job)
        LOGGER.info('worker %s: tasks flagged as revoked: %s', self.hostname, ', '.join(ids))
        for job in waiting:
            self._service.submit(self._outcomes.revoked, job, 'revoked')
        if waiting:
            self._service.submit(self._apply_prefetch)
        was_running = []
        for job in running:
            if terminate:
                if self._abandon(job, states.REVOKED, TaskRevokedError('terminated')):
                    self._stats.add('revoked')
                    was_running.append(job.request.id)
                    LOGGER.warning(
                        'Task %s[%s] terminated: REVOKED stored; a thread cannot be '
                        'killed, so the function runs on and its outcome is dropped',
                        job.request.name,
                        job.request.id,
                    )
            else:
                was_running.append(job.request.id)
                LOGGER.info(
                    'Task %s[%s] is running: a revoke without terminate lets it finish',
                    job.request.name,
                    job.request.id,
                )
        return was_running
