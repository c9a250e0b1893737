"""The pool side of ``Worker`` (a mixin): pool threads, running one job, time limits and
abandoning a job whose thread cannot be stopped.

A job runs on one pool thread: it is claimed (QUEUED -> RUNNING) under the worker's lock,
skipped if revoked or expired meanwhile, run inside the task context (``get()`` inside a task
refuses), and its outcome handed to ``_jobs.Outcomes`` once it is claimed again (RUNNING ->
DONE), unless a revoke with ``terminate`` or the hard time limit finished it for its client
first: a thread cannot be killed, so such a job is *abandoned*: its state is stored and its
message acked at once, a new pool thread takes its place, and the function runs on until it
returns, its outcome dropped (logged).

Time limits (the message's ``timelimit`` header, else the task's ``time_limit`` and
``soft_time_limit``, else the ``task_time_limit``/``task_soft_time_limit`` settings where the
settings have them): past the *soft* limit the task's thread raises ``SoftTimeLimitExceeded``
at its next Python instruction (``_interrupt``; a task may catch it to clean up, as under
Celery's prefork pool), and a WARNING is logged. Past the *hard* limit the job is abandoned
as above with FAILURE ``TimeLimitExceeded`` and its thread is made to raise
``TimeLimitExceeded`` too, so it ends soon. A thread blocked in one long C call
(``time.sleep``, a socket read) gets either exception only when that call returns. Celery's
own ``threads`` pool ignores time limits (its pool never calls the timeout handlers).

A task that does not ack late has its message acked as it starts (``Outcomes.ack_early``),
as Celery does when its pool accepts the task.

The mixin uses the worker's ``_lock`` (guarding every job's state and the sets below),
``_jobs``, ``_running``, ``_totals``, ``_held``, ``_threads``, ``_work``, ``_idle``,
``_state``, ``_timer``, ``_service``, ``_outcomes``, ``_stats``, ``revoked`` and
``hostname``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, List

from . import states
from ._context import task_context
from ._jobs import DONE, HELD, QUEUED, RELEASED, RUNNING, Job, expired, format_tb
from .errors import Retry, SoftTimeLimitExceeded, TimeLimitExceeded

LOGGER = logging.getLogger(__name__)

__all__ = ['Execution']

# The worker's own states (under its _lock).
_NEW, _STARTING, _RUNNING, _STOPPING, _STOPPED = 'NEW', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED'


class Execution:
    """Pool threads and running jobs for ``Worker`` (see the module docstring)."""

    hostname: str
    revoked: Any
    _lock: threading.Lock
    _idle: threading.Condition
    _state: str
    _jobs: Dict[str, List[Job]]
    _running: set
    _totals: Dict[str, int]  # tasks begun, by name (registered names only: bounded)
    _held: int
    _threads: List[threading.Thread]
    _thread_numbers: Any
    _work: Any
    _timer: Any
    _service: Any
    _outcomes: Any
    _stats: Any

    def _start_thread(self) -> None:  # under _lock
        name = f'pika-rpc-worker-{self.hostname}-{next(self._thread_numbers)}'
        thread = threading.Thread(target=self._pool_loop, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _pool_loop(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                job = self._work.get()
                if job is None:
                    return
                try:
                    self._execute(job)
                except Exception:  # a bug of ours: the message stays unacked, the pool lives
                    LOGGER.critical(
                        'worker %s: error handling task %s[%s]',
                        self.hostname,
                        job.request.name,
                        job.request.id,
                        exc_info=True,
                    )
                if job.abandoned:
                    return  # a new thread took this one's place
        finally:
            with self._lock:
                if me in self._threads:
                    self._threads.remove(me)

    def _forget(self, job: Job) -> None:  # under _lock
        for entry in job.timers:
            self._timer.cancel(entry)
        jobs = self._jobs.get(job.request.id)
        if jobs is not None and job in jobs:
            jobs.remove(job)
            if not jobs:
                del self._jobs[job.request.id]
        if job in self._running:
            self._running.discard(job)
            self._idle.notify_all()

    def _claim(self, job: Job, *states_from: str) -> bool:
        """Move ``job`` to DONE if it is in one of ``states_from``. Under _lock."""
        if job.state not in states_from:
            return False
        if job.state == HELD:
            self._held -= 1
        job.state = DONE
        self._forget(job)
        return True

    def _execute(self, job: Job) -> None:  # pool thread
        req = job.request
        with self._lock:
            if job.state != QUEUED:
                return  # revoked, released or dropped meanwhile
            if self._state != _RUNNING:
                job.state = RELEASED
                self._forget(job)
                return  # stop() is handing messages back
            revoked, too_late = req.id in self.revoked, expired(req)
            if revoked or too_late:
                self._claim(job, QUEUED)
            else:
                job.state, job.thread = RUNNING, threading.current_thread()
                job.time_start = time.time()
                self._running.add(job)
                self._totals[req.name] = self._totals.get(req.name, 0) + 1
        if revoked or too_late:
            return self._outcomes.revoked(job, 'revoked' if revoked else 'expired')
        self._arm_time_limits(job)
        began = time.monotonic()
        outcome: tuple
        outcomes = self._outcomes
        outcomes.ack_early(job)
        with task_context(req):
            if outcomes.track_started(job) and outcomes.keeps(job, states.STARTED):
                outcomes.store(job, states.STARTED, {'pid': os.getpid(), 'hostname': self.hostname})
            try:
                with job.interruptible.running():
                    value = job.task.run_for_worker(req.args, req.kwargs)
            except Retry as exc:
                outcome = (states.RETRY, exc, format_tb(exc))
            except Exception as exc:
                outcome = (states.FAILURE, exc, format_tb(exc))
            except BaseException as exc:  # sys.exit() in a task never ends its thread, and
                # a client must not re-raise SystemExit/KeyboardInterrupt (Celery's would).
                outcome = (states.FAILURE, RuntimeError(f'the task raised {exc!r}'), format_tb(exc))
            else:
                outcome = (states.SUCCESS, value, None)
        runtime = time.monotonic() - began
        with self._lock:
            claimed = self._claim(job, RUNNING)
        if not claimed:
            LOGGER.info(
                'Task %s[%s] returned after %.3fs, but was already finished for its '
                'client (revoked/terminated or hard time limit): outcome %s dropped',
                req.name,
                req.id,
                runtime,
                outcome[0],
            )
            return
        outcomes.finished(job, *outcome, runtime=runtime)

    def _abandon(self, job: Job, state: str, exc: BaseException) -> bool:
        """Finish a RUNNING job for its client now; its thread runs on. Any thread.

        Returns False when the job was no longer running (nothing done)."""
        with self._lock:
            if not self._claim(job, RUNNING):
                return False
            self._orphan(job)
            running = self._state == _RUNNING
            if running:
                self._start_thread()  # keep `concurrency` threads taking work
        if running:
            self._service.submit(self._outcomes.store_and_ack, job, state, exc)
        else:  # stop() has shut the service thread down
            self._outcomes.store_and_ack(job, state, exc)
        return True

    def _orphan(self, job: Job) -> None:  # under _lock
        job.abandoned = True
        self._stats.add('abandoned')
        if job.thread in self._threads:
            self._threads.remove(job.thread)  # never joined: it may run for a long time

    def _arm_time_limits(self, job: Job) -> None:
        req, task, outcomes = job.request, job.task, self._outcomes
        hard, soft = req.time_limit, req.soft_time_limit
        if hard is None:
            hard = getattr(task, 'time_limit', None) or outcomes.setting('task_time_limit', None)
        if soft is None:
            soft = getattr(task, 'soft_time_limit', None) or outcomes.setting(
                'task_soft_time_limit', None
            )
        timers = []
        if soft:
            timers.append(self._timer.call_later(soft, self._on_soft_limit, job, soft))
        if hard:
            timers.append(self._timer.call_later(hard, self._on_hard_limit, job, hard))
        with self._lock:
            if job.state == RUNNING:
                job.timers.extend(timers)
            else:
                for entry in timers:
                    self._timer.cancel(entry)

    def _on_soft_limit(self, job: Job, limit: float) -> None:  # timer thread
        if job.state != RUNNING:
            return
        raised = job.interruptible.interrupt(SoftTimeLimitExceeded)
        LOGGER.warning(
            'Task %s[%s] passed its soft time limit (%ss): %s',
            job.request.name,
            job.request.id,
            limit,
            'SoftTimeLimitExceeded raised in the task'
            if raised
            else 'it could not be interrupted and goes on',
        )

    def _on_hard_limit(self, job: Job, limit: float) -> None:  # timer thread
        if self._abandon(job, states.FAILURE, TimeLimitExceeded(limit)):
            job.interruptible.interrupt(TimeLimitExceeded)  # its outcome is dropped anyway
            self._stats.add('failed')
            LOGGER.error(
                'Task %s[%s] passed its hard time limit (%ss): FAILURE TimeLimitExceeded '
                'stored; its thread cannot be killed: TimeLimitExceeded is raised in it, '
                'and what it returns is dropped',
                job.request.name,
                job.request.id,
                limit,
            )
