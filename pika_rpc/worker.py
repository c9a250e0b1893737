"""``Worker``: runs registered tasks from Celery protocol-v2 messages in a pool of threads.

A worker consumes task messages (sent by pika_rpc or by real Celery 5.5-5.7) from its
queues, runs the app's registered tasks on ``concurrency`` threads and stores their states
through ``app.backend`` (Celery's rpc:// shape, to each message's ``reply_to``). It shares
the process's one connection (``_registry``) with the backend; it never imports ``app.py``:
it is given the app and looks tasks up in ``app.tasks``.

Threads: deliveries arrive on the link's callback thread, which only sorts them (decode,
parse, hold or queue); tasks run on the pool threads; a timer thread handles ``eta``
countdowns and time limits; one service thread stores states that are not a task's own
outcome (REVOKED on a revoke, NotRegistered, rejections) and adjusts the prefetch window.

Choices where Celery and the issue leave room (also in the CHANGELOG):

* **Acks late, at-least-once.** A message is acked after its final state was stored (and
  after a retry was re-sent). A worker that dies mid-task leaves the message unacked: the
  broker hands it to another worker, which runs the task again.
* **Queues** named by a string are declared as Celery declares them: a durable direct
  exchange of the same name, a durable queue, bound with the name as routing key, no
  arguments; so neither side gets a 406 from the other's declaration. ``Queue`` objects are
  declared as given.
* **Prefetch**: ``prefetch_count`` defaults to ``concurrency × worker_prefetch_multiplier``
  (4), as Celery; 0 means no limit. A message with a future ``eta`` is held unacked and
  the window is raised by one while it waits (Celery's ``qos.increment_eventually``), so
  held messages never starve the pool; it applies to every consumed queue's channel.
* **Revoke**: the worker listens on Celery's broadcast exchange ``celery.pidbox`` (fanout,
  ``durable=False``, ``auto_delete=False``, kombu's declaration) with an exclusive queue
  ``<hostname>.celery.pidbox`` (``x-expires`` 10 s, ``x-message-ttl`` 300 s, as Celery).
  Revoked ids are kept in a bounded, expiring set (50,000 ids, 3 hours, as Celery). A
  message whose id is revoked gets REVOKED (``'revoked'``) when it arrives; a message
  already held or queued here gets it at once. A **running** task is not touched by a plain
  revoke. With ``terminate=True`` it is *abandoned*: threads cannot be killed, so its
  REVOKED (``'terminated'``) is stored and its message acked at once, a new pool thread
  takes its place, and the function runs on until it returns, its outcome dropped (logged).
  Other control commands (ping, rate limits, ...) are ignored.
* **Time limits** (the ``timelimit`` header ``[hard, soft]``, else the task's
  ``time_limit``/``soft_time_limit`` options): a thread cannot be interrupted. Past the
  *soft* limit a WARNING is logged and the task goes on normally. Past the *hard* limit the
  task is abandoned as above with FAILURE ``TimeLimitExceeded(hard)`` (what a Celery client
  sees when Celery kills a process).
* **Expires**: a message whose ``expires`` time has passed when it arrives, or when it is
  about to run (after an ``eta`` or a wait in the pool queue), gets REVOKED (``'expired'``).
  The broker may also drop it unseen (its ``expiration`` property): then no state is sent,
  as with Celery.
* **ignore_result**: header ``true`` (or ``null`` with the task's/``task_ignore_result``
  setting true) stores no STARTED/RETRY/SUCCESS/FAILURE/REVOKED; ``update_state`` still
  does. An unknown task name always gets FAILURE ``NotRegistered`` and its message is
  rejected (not requeued), as Celery does.
* A return value the result serializer cannot encode gets FAILURE ``EncodeError``, as Celery.
* A task that raises a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
  ``KeyboardInterrupt``) gets FAILURE ``RuntimeError("the task raised SystemExit(3)")`` (its
  traceback kept): the pool thread lives on, and no client re-raises ``SystemExit``.
* **Malformed messages** (undecodable body, disallowed content type, not protocol v2,
  missing ``task``/``id`` headers) are logged and rejected without requeue: they would fail
  the same way everywhere. No state is stored for them.
* **Retry**: ``self.retry()`` stores RETRY (the exception, its traceback, the task's own id
  as a child, as Celery), re-sends the message with the same id, ``retries + 1`` and an
  ``eta`` from ``countdown`` to the same exchange/routing key with the same ``reply_to``
  and ``correlation_id`` (``parent_id`` = the task's own id when it had none, as Celery), then
  acks. If the re-send fails, FAILURE with the publish error is stored instead.
* **stop(timeout)**: no task starts after it is called. Messages held for an ``eta`` or
  waiting in the pool queue go back to their queue at once (the prefetch window is first
  shrunk to 1 so they do not come straight back), running tasks are waited for up to
  ``timeout`` (their results stored and acked), then the consumers are cancelled, which
  returns every unacked message to its queue. Tasks still running after ``timeout`` are
  abandoned *without* storing anything: their messages are back in the queue and will run
  again elsewhere (logged). A lost connection drops held and queued messages here (the
  broker redelivers them); a running task's ack then fails and it runs again later.
* The worker's node name (``hostname``) defaults to ``pika_rpc<pid>@<host>`` (``-<n>`` added
  for a second worker in a process), unique so two workers never share a control queue.
"""
from __future__ import annotations

import fnmatch
import heapq
import itertools
import logging
import os
import queue
import re
import socket
import threading
import time
import traceback
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Union

from . import _registry, protocol, serialization, states
from ._context import task_context
from ._commands import Publication
from ._publish import publish_and_wait
from ._threads import SerialExecutor
from ._timeouts import deadline, remaining
from .entities import Exchange, Queue
from .connection import Connection
from .errors import (EncodeError, NotRegistered, PikaRPCError, Retry,
                     TaskRevokedError, TimeLimitExceeded)
from .messaging import Consumer

LOGGER = logging.getLogger(__name__)

__all__ = ['Worker', 'PIDBOX_EXCHANGE', 'REVOKES_MAX', 'REVOKE_EXPIRES']

PIDBOX_EXCHANGE = 'celery.pidbox'   # Celery's control_exchange 'celery' + '.pidbox'
PIDBOX_QUEUE_EXPIRES = 10.0         # Celery's control_queue_expires
PIDBOX_QUEUE_TTL = 300.0            # Celery's control_queue_ttl
REVOKES_MAX = 50000                 # Celery's worker_state.REVOKES_MAX
REVOKE_EXPIRES = 10800.0            # Celery's worker_state.REVOKE_EXPIRES (s)
_REPR_MAX = 200

# Job states, all changed under Worker._lock. A job leaves HELD/QUEUED/RUNNING exactly once,
# for DONE (its final state is being stored by whoever claimed it) or RELEASED (handed back
# to the broker, or dropped after a lost connection: it is redelivered).
HELD, QUEUED, RUNNING, DONE, RELEASED = 'HELD', 'QUEUED', 'RUNNING', 'DONE', 'RELEASED'
_NEW, _STARTING, _RUNNING, _STOPPING, _STOPPED = 'NEW', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED'

_worker_numbers = itertools.count(1)


class _Job:
    """One received task message and where it stands."""

    __slots__ = ('request', 'message', 'task', 'state', 'timers', 'abandoned', 'thread')

    def __init__(self, request: protocol.TaskRequest, message: Any, task: Any) -> None:
        self.request, self.message, self.task = request, message, task
        self.state = QUEUED
        self.timers: List[list] = []
        self.abandoned = False      # finished for the world while its function still runs
        self.thread: Optional[threading.Thread] = None   # the pool thread running it


class _RevokedIds:
    """A bounded set of revoked ids that forgets them after ``expires`` s. Thread-safe."""

    def __init__(self, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES) -> None:
        self.maxlen, self.expires = maxlen, expires
        self._ids: 'OrderedDict[str, float]' = OrderedDict()
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._ids.pop(task_id, None)
            self._ids[task_id] = now + self.expires
            while len(self._ids) > self.maxlen:          # the oldest go first
                self._ids.popitem(last=False)
            while self._ids and next(iter(self._ids.values())) < now:
                self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            until = self._ids.get(task_id)              # type: ignore[arg-type]
            if until is not None and until < time.monotonic():
                del self._ids[task_id]                  # type: ignore[arg-type]
                return False
            return until is not None

    def __len__(self) -> int:
        return len(self._ids)


class _Timer:
    """Calls ``fn(*args)`` after a delay on one daemon thread; callbacks must be quick."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())  # notified on a new entry or stop
        self._heap: List[list] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    def call_later(self, delay: float, fn: Any, *args: Any) -> list:
        entry = [time.monotonic() + max(0.0, delay), next(self._seq), fn, args]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: list) -> None:
        entry[2] = None             # skipped when it comes up; the sequence number orders ties

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                        continue
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        entry = heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            fn, args = entry[2], entry[3]
            if fn is not None:
                try:
                    fn(*args)
                except Exception:
                    LOGGER.exception('%s: timer callback %r failed', self._name, fn)

    def stop(self, timeout: Optional[float]) -> None:
        with self._cond:
            self._stopped, thread = True, self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def _task_queue(queue_or_name: Union[str, Queue]) -> Queue:
    """A Queue object; a name is declared as Celery declares a task queue."""
    if isinstance(queue_or_name, Queue):
        return queue_or_name
    name = str(queue_or_name)
    return Queue(name, exchange=Exchange(name, type='direct', durable=True), routing_key=name,
                 durable=True)


def _names(queues: Any) -> List[Any]:
    if queues is None:
        return []
    if isinstance(queues, (str, Queue)):
        queues = [queues]
    out: List[Any] = []
    for q in queues:
        if isinstance(q, str):
            out.extend(n.strip() for n in q.split(',') if n.strip())
        else:
            out.append(q)
    return out


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f'<{type(value).__name__}>'
    return text if len(text) <= _REPR_MAX else text[:_REPR_MAX - 3] + '...'


def _format_tb(exc: BaseException) -> str:
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb   # skip our own frame
    return ''.join(traceback.format_exception(type(exc), exc, tb))


def _expired(request: protocol.TaskRequest) -> bool:
    return request.expires is not None and request.expires <= datetime.now(timezone.utc)


class Worker:
    """Run an app's tasks from protocol-v2 task messages; see the module docstring.

    Args:
        app: the ``App`` whose ``tasks``, settings and ``backend`` are used.
        queues: queue names (a comma-separated string works) or ``Queue`` objects; default
            ``app.conf.task_default_queue``.
        concurrency: number of pool threads (tasks running at once).
        prefetch_count: unacked messages per queue; default ``concurrency ×
            worker_prefetch_multiplier``; 0 = no limit.
        hostname: node name used in STARTED, revoke ``destination`` and the control queue.
        stop_timeout: how long ``run()`` waits for running tasks when it is told to stop.

    ``start()``/``stop()``/``run()`` may be called from any thread. Thread-safe.
    """

    def __init__(self, app: Any, queues: Any = None, concurrency: int = 1,
                 prefetch_count: Optional[int] = None, *, hostname: Optional[str] = None,
                 stop_timeout: float = 30.0) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f'concurrency must be an int >= 1, got {concurrency!r}')
        if prefetch_count is None:
            prefetch_count = concurrency * app.conf.worker_prefetch_multiplier
        if isinstance(prefetch_count, bool) or not isinstance(prefetch_count, int) \
                or prefetch_count < 0:
            raise ValueError(f'prefetch_count must be an int >= 0, got {prefetch_count!r}')
        self.app = app
        self.queues = [_task_queue(q) for q in (_names(queues) or [app.conf.task_default_queue])]
        self.concurrency = concurrency
        self.prefetch_count = prefetch_count
        number = next(_worker_numbers)
        self.hostname = hostname or (f'pika_rpc{os.getpid()}{"" if number == 1 else f"-{number}"}'
                                     f'@{socket.gethostname()}')
        self.stop_timeout = stop_timeout
        self.revoked = _RevokedIds()
        self.ready = threading.Event()         # set once consuming; cleared by stop()
        self._stopped = threading.Event()
        self._clean_stop = True                # what the stop() that did the work returned
        self._stop_requested = threading.Event()
        # Guards _state, every job's state, _jobs, _running, _held and _threads.
        self._lock = threading.Lock()
        # Notified whenever a job leaves RUNNING: stop() waits on it for the pool to drain.
        self._idle = threading.Condition(self._lock)
        self._state = _NEW
        self._jobs: Dict[str, List[_Job]] = {}      # HELD/QUEUED/RUNNING jobs by task id
        self._running: set = set()
        self._held = 0
        self._applied_prefetch = prefetch_count
        self._threads: List[threading.Thread] = []
        self._work: 'queue.SimpleQueue[Optional[_Job]]' = queue.SimpleQueue()
        self._timer = _Timer(f'pika-rpc-worker-timer-{number}')
        self._service = SerialExecutor(f'pika-rpc-worker-service-{number}')
        self._connection: Optional[Connection] = None
        self._consumer: Optional[Consumer] = None
        self._control: Optional[Consumer] = None
        self._link: Any = None
        self._stats = {'received': 0, 'succeeded': 0, 'failed': 0, 'retried': 0,
                       'revoked': 0, 'rejected': 0, 'abandoned': 0}
        self._stats_lock = threading.Lock()
        self._start_lock = threading.Lock()     # stop() waits for a start() in progress
        self._thread_numbers = itertools.count(1)
        _registry.register_live(self)

    def __repr__(self) -> str:
        return (f'<Worker {self.hostname} {self._state} queues={[q.name for q in self.queues]} '
                f'concurrency={self.concurrency}>')

    def _forget_parent_state(self) -> None:
        # A forked child has none of the parent's threads or channels: this worker is dead here.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stats_lock, self._start_lock = threading.Lock(), threading.Lock()
        self.revoked._lock = threading.Lock()
        self._timer = _Timer(self._timer._name)
        self.ready, self._stop_requested = threading.Event(), threading.Event()
        self._stopped = threading.Event()
        self._state = _STOPPED
        self._stopped.set()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    def _close_at_exit(self) -> None:
        # Called by the registry at interpreter exit, before the links close.
        if self._state in (_STARTING, _RUNNING):
            self.stop(2.0)

    def stats(self) -> Dict[str, Any]:
        """Counters (received, succeeded, failed, retried, revoked, rejected, abandoned) and
        what is held, queued and running now."""
        with self._stats_lock:
            counts = dict(self._stats)
        with self._lock:
            jobs = [j for js in self._jobs.values() for j in js]
            out = dict(counts, held=self._held, running=len(self._running),
                       queued=sum(1 for j in jobs if j.state == QUEUED),
                       revoked_ids=len(self.revoked), state=self._state)
        return out

    # ------------------------------------------------------------------ life cycle
    def start(self) -> 'Worker':
        """Declare the queues, start the pool and start consuming. Blocks until consuming.

        Raises:
            RuntimeError: already started.
            PreconditionFailed, PikaRPCError, ConnectionLost, TimeoutError: from the broker;
                nothing is left running then.
        """
        with self._start_lock:
            return self._start()

    def _start(self) -> 'Worker':
        with self._lock:
            if self._state != _NEW:
                raise RuntimeError(f'{self!r} was already started; create a new Worker')
            self._state = _STARTING
            for _ in range(self.concurrency):
                self._start_thread()
        try:
            conn = self._connection = Connection.from_settings(self.app.conf)
            self._link = conn.link
            self._link.add_listener(self._on_link_event)
            control_queue = Queue(
                f'{self.hostname}.celery.pidbox',
                exchange=Exchange(PIDBOX_EXCHANGE, type=protocol.PIDBOX_EXCHANGE_TYPE,
                                  durable=False, auto_delete=False),
                durable=False, exclusive=True, auto_delete=True,
                expires=PIDBOX_QUEUE_EXPIRES, message_ttl=PIDBOX_QUEUE_TTL)
            self._control = Consumer(conn, [control_queue], no_ack=True,
                                     on_message=self._on_control_message)
            self._control.consume()
            self._consumer = Consumer(conn, list(self.queues), on_message=self._on_task_message,
                                      prefetch_count=self.prefetch_count or None)
            with self._lock:
                self._state = _RUNNING
            self._consumer.consume()
        except BaseException:
            with self._lock:
                self._state = _STOPPING
            self._shutdown(deadline(5.0))
            raise
        self.ready.set()
        LOGGER.info('worker %s ready: queues %s, concurrency %d, prefetch %s', self.hostname,
                    ', '.join(q.name for q in self.queues), self.concurrency,
                    self.prefetch_count or 'unlimited')
        return self

    def run(self) -> None:
        """Start and block until ``stop()`` is called (from another thread or a signal
        handler that calls ``request_stop()``) or KeyboardInterrupt; then stop gracefully."""
        self.start()
        try:
            self._stop_requested.wait()
        except KeyboardInterrupt:
            LOGGER.info('worker %s: interrupted; stopping', self.hostname)
        self.stop(self.stop_timeout)

    def request_stop(self) -> None:
        """Ask ``run()`` to stop; returns at once. Safe from another thread."""
        self._stop_requested.set()

    def __enter__(self) -> 'Worker':
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(self.stop_timeout)

    def stop(self, timeout: Optional[float] = 30.0) -> bool:
        """Stop consuming, hand back waiting messages, wait for running tasks, shut down.

        Blocks up to about ``timeout`` seconds (None: until running tasks end). Idempotent:
        a second call waits for the first one. Never call it from a task.

        Returns:
            True when every running task finished in time (False: some were abandoned, their
            messages returned to the queue, as logged).
        """
        dl = deadline(timeout)
        with self._start_lock:          # a start() in progress finishes first
            pass
        with self._lock:
            state = self._state
            if state in (_NEW, _STOPPED) and not self._threads:
                self._state = _STOPPED
                self._stopped.set()
                return True
            first = state in (_STARTING, _RUNNING)
            if first:
                self._state = _STOPPING
        self._stop_requested.set()
        if not first:
            return self._stopped.wait(remaining(dl)) and self._clean_stop
        self.ready.clear()
        LOGGER.info('worker %s: stopping (waiting up to %s s for running tasks)',
                    self.hostname, timeout)
        return self._shutdown(dl)

    def _shutdown(self, dl: Optional[float]) -> bool:
        self._cancel(self._control, 'control')
        self._service.stop(remaining(dl))        # pending REVOKED stores and qos changes first
        with self._lock:
            released = self._release_waiting()
            busy = bool(self._running)
        if busy and self._consumer is not None:
            try:   # the running tasks' unacked messages fill a window of 1: nothing new comes
                self._consumer.qos(prefetch_count=1)
            except PikaRPCError as exc:
                LOGGER.warning('worker %s: could not shrink the prefetch window: %s',
                               self.hostname, exc)
            for job in released:
                self._settle(job, requeue=True)
        with self._lock:
            self._idle.wait_for(lambda: not self._running, remaining(dl))
            left = list(self._running)
            for job in left:      # their messages go back with the channel: no state, no ack
                job.state = RELEASED
                self._orphan(job)
                self._forget(job)
            self._running.clear()
        if left:
            LOGGER.warning('worker %s: %d task(s) still running at the stop deadline were '
                           'abandoned; their messages return to the queue and will run again: %s',
                           self.hostname, len(left),
                           ', '.join(f'{j.request.name}[{j.request.id}]' for j in left))
        self._cancel(self._consumer, 'task')
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(remaining(dl) if dl is not None else 5.0)
        self._timer.stop(1.0)
        if self._link is not None:
            self._link.remove_listener(self._on_link_event)
        if self._connection is not None:
            self._connection.release()
        with self._lock:
            self._state = _STOPPED
            self._clean_stop = not left
        self._stopped.set()
        LOGGER.info('worker %s: stopped', self.hostname)
        return not left

    def _cancel(self, consumer: Optional[Consumer], what: str) -> None:
        if consumer is None:
            return
        try:
            consumer.cancel()
        except PikaRPCError as exc:
            LOGGER.warning('worker %s: cancel of the %s consumer failed: %s (its channel '
                           'goes with the connection)', self.hostname, what, exc)

    def _release_waiting(self) -> List[_Job]:
        """Mark every HELD and QUEUED job RELEASED; return them. Under _lock."""
        out = []
        for jobs in list(self._jobs.values()):
            for job in list(jobs):
                if job.state in (HELD, QUEUED):
                    if job.state == HELD:
                        self._held -= 1
                    job.state = RELEASED
                    self._forget(job)
                    out.append(job)
        return out

    def _on_link_event(self, event: str, info: Any) -> None:     # I/O thread: quick only
        if event == 'connected' and info:     # a reconnect: the window is the consumer's last
            self._service.submit(self._apply_prefetch)
        if event != 'lost':
            return
        with self._lock:
            dropped = self._release_waiting()
        if dropped:
            LOGGER.warning('worker %s: connection lost; %d waiting message(s) dropped here, the '
                           'broker delivers them again', self.hostname, len(dropped))

    # ------------------------------------------------------------------ pool
    def _start_thread(self) -> None:                  # under _lock
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
                except Exception:   # a bug of ours: the message stays unacked, the pool lives
                    LOGGER.critical('worker %s: error handling task %s[%s]', self.hostname,
                                    job.request.name, job.request.id, exc_info=True)
                if job.abandoned:
                    return                      # a new thread took this one's place
        finally:
            with self._lock:
                if me in self._threads:
                    self._threads.remove(me)

    def _forget(self, job: _Job) -> None:             # under _lock
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

    def _claim(self, job: _Job, *states_from: str) -> bool:
        """Move ``job`` to DONE if it is in one of ``states_from``. Under _lock."""
        if job.state not in states_from:
            return False
        if job.state == HELD:
            self._held -= 1
        job.state = DONE
        self._forget(job)
        return True

    def _execute(self, job: _Job) -> None:            # pool thread
        req = job.request
        with self._lock:
            if job.state != QUEUED:
                return                           # revoked, released or dropped meanwhile
            if self._state != _RUNNING:
                job.state = RELEASED
                self._forget(job)
                return                           # stop() is handing messages back
            revoked, expired = req.id in self.revoked, _expired(req)
            if revoked or expired:
                self._claim(job, QUEUED)
            else:
                job.state, job.thread = RUNNING, threading.current_thread()
                self._running.add(job)
        if revoked or expired:
            return self._finish_revoked(job, 'revoked' if revoked else 'expired')
        self._arm_time_limits(job)
        began = time.monotonic()
        outcome: tuple
        with task_context(req):
            if self._track_started(job) and not self._ignored(job):
                self._store(job, states.STARTED, {'pid': os.getpid(), 'hostname': self.hostname})
            try:
                value = job.task(*req.args, **req.kwargs)
            except Retry as exc:
                outcome = (states.RETRY, exc, _format_tb(exc))
            except Exception as exc:
                outcome = (states.FAILURE, exc, _format_tb(exc))
            except BaseException as exc:  # sys.exit() in a task never ends its thread, and
                # a client must not re-raise SystemExit/KeyboardInterrupt (Celery's would).
                outcome = (states.FAILURE, RuntimeError(f'the task raised {exc!r}'),
                           _format_tb(exc))
            else:
                outcome = (states.SUCCESS, value, None)
        runtime = time.monotonic() - began
        with self._lock:
            claimed = self._claim(job, RUNNING)
        if not claimed:
            LOGGER.info('Task %s[%s] returned after %.3fs, but was already finished for its '
                        'client (revoked/terminated or hard time limit): outcome %s dropped',
                        req.name, req.id, runtime, outcome[0])
            return
        state, value, tb = outcome
        if state == states.RETRY:
            self._retry(job, value, tb)
            return
        if state == states.SUCCESS:
            self._count('succeeded')
            LOGGER.info('Task %s[%s] succeeded in %.3fs: %s', req.name, req.id, runtime,
                        _short(value))
        else:
            self._count('failed')
            LOGGER.error('Task %s[%s] raised unexpected: %r\n%s', req.name, req.id, value, tb)
        if not self._ignored(job):
            error = self._store(job, state, value, tb)
            if isinstance(error, EncodeError) and state == states.SUCCESS:
                self._store(job, states.FAILURE, error, _format_tb(error))   # as Celery
        self._settle(job)

    def _abandon(self, job: _Job, state: str, exc: BaseException) -> bool:
        """Finish a RUNNING job for its client now; its thread runs on. Any thread.

        Returns False when the job was no longer running (nothing done)."""
        with self._lock:
            if not self._claim(job, RUNNING):
                return False
            self._orphan(job)
            running = self._state == _RUNNING
            if running:
                self._start_thread()            # keep `concurrency` threads taking work
        if running:
            self._service.submit(self._store_and_ack, job, state, exc)
        else:                                   # stop() has shut the service thread down
            self._store_and_ack(job, state, exc)
        return True

    def _orphan(self, job: _Job) -> None:             # under _lock
        job.abandoned = True
        self._count('abandoned')
        if job.thread in self._threads:
            self._threads.remove(job.thread)    # never joined: it may run for a long time

    def _store_and_ack(self, job: _Job, state: str, exc: BaseException) -> None:
        if not self._ignored(job) or state == states.FAILURE and isinstance(exc, NotRegistered):
            self._store(job, state, exc)
        if isinstance(exc, NotRegistered):
            self._settle(job, reject=True)
        else:
            self._settle(job)

    # ------------------------------------------------------------------ outcomes
    def _ignored(self, job: _Job) -> bool:
        flag = job.request.ignore_result
        if flag is None:
            flag = getattr(job.task, 'ignore_result', None)
        if flag is None:
            flag = self.app.conf.task_ignore_result
        return bool(flag)

    def _track_started(self, job: _Job) -> bool:
        flag = getattr(job.task, 'track_started', None)
        return bool(self.app.conf.task_track_started if flag is None else flag)

    def _store(self, job: _Job, state: str, value: Any, tb: Optional[str] = None,
               children: Optional[list] = None) -> Optional[Exception]:
        """Store a state; log and return the error if that failed (never raises)."""
        try:
            self.app.backend.store_result(job.request.id, value, state, traceback=tb,
                                          request=job.request, children=children)
        except Exception as exc:
            LOGGER.error('worker %s: could not store %s of task %s[%s]: %s', self.hostname,
                         state, job.request.name, job.request.id, exc)
            return exc
        return None

    def _settle(self, job: _Job, requeue: bool = False, reject: bool = False) -> None:
        try:
            if requeue:
                job.message.requeue()
            elif reject:
                job.message.reject(requeue=False)
            else:
                job.message.ack()
        except Exception as exc:
            LOGGER.warning('worker %s: could not %s the message of task %s[%s]: %s; the broker '
                           'may deliver it again', self.hostname,
                           'requeue' if requeue else 'reject' if reject else 'ack',
                           job.request.name, job.request.id, exc)

    def _finish_revoked(self, job: _Job, reason: str) -> None:
        self._count('revoked')
        LOGGER.info('Task %s[%s] %s: not run', job.request.name, job.request.id,
                    'expired' if reason == 'expired' else 'revoked')
        self._store_and_ack(job, states.REVOKED, TaskRevokedError(reason))

    def _retry(self, job: _Job, err: Retry, tb: str) -> None:
        req = job.request
        self._count('retried')
        LOGGER.info('Task %s[%s] retry: %s', req.name, req.id, err)
        if not self._ignored(job):
            self._store(job, states.RETRY, err.exc, tb, children=[[[req.id, None], None]])
        try:
            self._republish(req, err)
        except Exception as exc:
            LOGGER.error('Task %s[%s]: could not re-send it for its retry: %s', req.name,
                         req.id, exc)
            if not self._ignored(job):
                self._store(job, states.FAILURE, exc, _format_tb(exc))
        self._settle(job)

    def _republish(self, req: protocol.TaskRequest, err: Retry) -> None:
        """Send the task again (same id, retries + 1) where it came from. Blocks on confirm."""
        args = getattr(err, 'retry_args', None)
        kwargs = getattr(err, 'retry_kwargs', None)
        eta = getattr(err, 'retry_eta', None)
        options = getattr(err, 'retry_options', None) or {}
        headers, props, body = protocol.task_message(
            req.name, req.args if args is None else args, req.kwargs if kwargs is None else kwargs,
            task_id=req.id, reply_to=req.reply_to, correlation_id=req.correlation_id,
            countdown=None if eta is not None else err.when, eta=eta, expires=req.expires,
            priority=options.get('priority', req.priority), time_limit=req.time_limit,
            soft_time_limit=req.soft_time_limit, group_id=req.group, group_index=req.group_index,
            retries=req.retries + 1, root_id=req.root_id, parent_id=req.parent_id or req.id,
            shadow=req.shadow, origin=req.origin, ignore_result=req.ignore_result,
            replaced_task_nesting=req.replaced_task_nesting, stamped_headers=req.stamped_headers,
            stamps=req.stamps, callbacks=req.callbacks, errbacks=req.errbacks, chain=req.chain,
            chord=req.chord)
        for key, value in req.headers.items():     # the sender's own extra headers travel on
            if not key.startswith('x-'):           # not the broker's (x-death, x-delivery-count)
                headers.setdefault(key, value)
        conf = self.app.conf
        content_type, content_encoding, data = serialization.dumps(body, conf.task_serializer)
        props.update(content_type=content_type, content_encoding=content_encoding, headers=headers)
        info = req.delivery_info
        exchange = info.get('exchange') or ''
        routing_key = info.get('routing_key') or (self.queues[0].name if not exchange else '')
        policy = conf.task_publish_retry_policy
        pub = Publication(exchange, routing_key, data, props, mandatory=True, policy=policy,
                          timeout=conf.publish_timeout)
        returned = publish_and_wait(self._connection.link, pub, f'retry of task {req.id}')
        if returned is not None:
            raise returned

    def _arm_time_limits(self, job: _Job) -> None:
        req = job.request
        options = getattr(job.task, 'options', None) or {}
        hard = req.time_limit if req.time_limit is not None else options.get('time_limit')
        soft = req.soft_time_limit if req.soft_time_limit is not None else \
            options.get('soft_time_limit')
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

    def _on_soft_limit(self, job: _Job, limit: float) -> None:     # timer thread
        if job.state == RUNNING:
            LOGGER.warning('Task %s[%s] passed its soft time limit (%ss); a thread cannot be '
                           'interrupted, so it goes on', job.request.name, job.request.id, limit)

    def _on_hard_limit(self, job: _Job, limit: float) -> None:     # timer thread
        if self._abandon(job, states.FAILURE, TimeLimitExceeded(limit)):
            self._count('failed')
            LOGGER.error('Task %s[%s] passed its hard time limit (%ss): FAILURE TimeLimitExceeded '
                         'stored; the thread cannot be killed and runs on, its outcome dropped',
                         job.request.name, job.request.id, limit)

    # ------------------------------------------------------------------ receiving (callback thread)
    def _on_task_message(self, message: Any) -> None:
        if self._state != _RUNNING:
            return              # stopping: it stays unacked and returns when we cancel
        try:
            body = message.decode()
            info = dict(message.delivery_info, priority=message.properties.get('priority'))
            req = protocol.parse_task_message(message.headers, message.properties, body,
                                              delivery_info=info)
        except Exception as exc:
            self._count('rejected')
            LOGGER.error('worker %s: rejected a malformed task message (tag %s, %s, headers %s): '
                         '%s', self.hostname, message.delivery_tag, message.content_type,
                         _short(message.headers), exc)
            self._service.submit(self._reject, message)
            return
        req.hostname = self.hostname
        self._count('received')
        task = self.app.tasks.get(req.name)
        job = _Job(req, message, task)
        LOGGER.info('Task %s[%s] received', req.name, req.id)
        if task is None:
            self._count('failed')
            LOGGER.error('Received unregistered task of type %r (id %s); FAILURE NotRegistered '
                         'stored and the message rejected', req.name, req.id)
            job.state = DONE
            self._service.submit(self._store_and_ack, job, states.FAILURE, NotRegistered(req.name))
            return
        reason = 'revoked' if req.id in self.revoked else 'expired' if _expired(req) else None
        if reason is not None:
            job.state = DONE
            self._service.submit(self._finish_revoked, job, reason)
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
            LOGGER.info('Task %s[%s] held until its eta %s', req.name, req.id, req.eta.isoformat())
            self._service.submit(self._apply_prefetch)
        else:
            self._work.put(job)

    def _reject(self, message: Any) -> None:
        try:
            message.reject(requeue=False)
        except Exception as exc:
            LOGGER.warning('worker %s: could not reject message %s: %s', self.hostname,
                           message.delivery_tag, exc)

    def _on_eta(self, job: _Job) -> None:                     # timer thread
        with self._lock:
            if job.state != HELD or self._state != _RUNNING:
                return
            job.state = QUEUED
            self._held -= 1
        self._work.put(job)
        self._service.submit(self._apply_prefetch)

    def _apply_prefetch(self) -> None:                        # service thread
        if not self.prefetch_count or self._consumer is None:
            return              # no limit: held messages cannot starve the pool
        with self._lock:
            if self._state != _RUNNING:
                return
            want = self.prefetch_count + self._held
        if want != self._applied_prefetch:
            try:
                self._consumer.qos(prefetch_count=want)
                self._applied_prefetch = want
            except PikaRPCError as exc:
                LOGGER.warning('worker %s: could not set prefetch to %d: %s', self.hostname,
                               want, exc)

    def _on_control_message(self, message: Any) -> None:
        try:
            body = message.decode()
        except Exception as exc:
            LOGGER.warning('worker %s: dropped an undecodable control message: %s',
                           self.hostname, exc)
            return
        if not isinstance(body, dict) or not self._for_me(body):
            return
        method, arguments = body.get('method'), body.get('arguments') or {}
        if method != 'revoke':
            LOGGER.debug('worker %s: control command %r not supported; ignored',
                         self.hostname, method)
            return
        ids = arguments.get('task_id')
        ids = [ids] if isinstance(ids, str) else [i for i in ids or () if isinstance(i, str)]
        self.revoke(ids, terminate=bool(arguments.get('terminate')))

    def _for_me(self, body: Dict[str, Any]) -> bool:
        destination, pattern = body.get('destination'), body.get('pattern')
        if destination:
            return self.hostname in destination
        if pattern and body.get('matcher'):
            if body['matcher'] == 'pcre':
                return re.search(pattern, self.hostname) is not None
            return fnmatch.fnmatch(self.hostname, pattern)
        return True

    def revoke(self, task_ids: Union[str, Iterable[str]], terminate: bool = False) -> None:
        """Revoke tasks here (what a ``revoke`` broadcast does); see the module docstring.

        Any thread; never blocks on the broker (states are stored on the service thread).
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
            self._service.submit(self._finish_revoked, job, 'revoked')
        if waiting:
            self._service.submit(self._apply_prefetch)
        for job in running:
            if terminate:
                if self._abandon(job, states.REVOKED, TaskRevokedError('terminated')):
                    self._count('revoked')
                    LOGGER.warning('Task %s[%s] terminated: REVOKED stored; a thread cannot be '
                                   'killed, so the function runs on and its outcome is dropped',
                                   job.request.name, job.request.id)
            else:
                LOGGER.info('Task %s[%s] is running: a revoke without terminate lets it finish',
                            job.request.name, job.request.id)
