"""``Worker``: runs registered tasks from Celery protocol-v2 messages in a pool of threads.

A worker consumes task messages (sent by pika_rpc or by real Celery 5.5-5.7) from its
queues, runs the app's registered tasks on ``concurrency`` threads and stores their states
through ``app.backend`` (Celery's rpc:// shape, to each message's ``reply_to``). It shares
the process's one connection (``_registry``) with the backend; it never imports ``app.py``:
it is given the app and looks tasks up in ``app.tasks``.

Threads: deliveries arrive on the link's callback thread, which only sorts them (decode,
parse, hold or queue); tasks run on the pool threads; a timer thread (``_timer``) handles
``eta`` countdowns and time limits; one service thread stores states that are not a task's
own outcome (REVOKED on a revoke, NotRegistered, rejections) and adjusts the prefetch window.

Where the rest lives: a job's record and what is stored and acked when it ends (acks late,
so at-least-once; ``ignore_result``; ``EncodeError``; the retry re-send) in ``_jobs``; the
remote control (the pidbox queue, Celery's ``inspect``/``control`` commands and their
replies, the revoked-id set) in ``_control``, which the worker gives callbacks that read its
jobs and counters, revoke, and stop it (``shutdown``); sorting deliveries, ``eta``, the
prefetch window and revoking in ``_receiving``; the pool threads and time limits in
``_execution``; Celery's names and declarations in ``protocol`` and ``_pidbox``.

Choices where Celery leaves room:

* **Queues** named by a string are the app's when configured (the default queue, of
  ``task_default_queue_type``, or one of ``task_queues``) and declared as configured, the
  way Celery declares them, so neither side gets a 406 from the other's declaration; any
  other name is checked passively and created (``task_create_missing_queue_type``) only when
  missing (``_taskqueues``). ``Queue`` objects are declared as given.
* **Quorum queues**: never asked for a global prefetch window (RabbitMQ would close the
  connection); their window is per consumer and changed by replacing the consumer on the
  same channel (``_consumers``). Before consuming a quorum queue bound to a non-direct
  exchange, the worker declares Celery's native delayed delivery topology and binds the
  queue to it (``_delayed``), so a Celery client's ``countdown``/``eta`` tasks reach it when
  due; a quorum queue on a direct exchange gets its eta tasks as a classic one does (held).
* **A queue whose node is lost** is subscribed again every
  ``broker_consumer_retry_interval`` seconds (WARNING per refusal) until it consumes;
  ``stats()['queues']`` says which queues consume. After ``broker_consumer_max_retries``
  refusals in a row the worker fails loudly: a CRITICAL line, ``failure`` set
  (``ConsumerGaveUp``, also in ``stats()``), ``ready`` cleared, and ``run()`` stops
  gracefully and raises it (a worker driven by ``start()``/``stop()`` leaves that to its
  owner; the CLI exits non-zero).
* **Prefetch**: ``prefetch_count`` defaults to ``concurrency × worker_prefetch_multiplier``
  (4), as Celery; 0 means no limit. A message with a future ``eta`` is held unacked and
  the window is raised by one while it waits (Celery's ``qos.increment_eventually``), so
  held messages never starve the pool; it applies to every consumed queue's channel.
* **Revoke** (a ``revoke`` broadcast, see ``_control``, or ``Worker.revoke()``): a
  message whose id is revoked gets REVOKED (``'revoked'``) when it arrives; a message
  already held or queued here gets it at once. A **running** task is not touched by a plain
  revoke. With ``terminate=True`` it is *abandoned*: threads cannot be killed, so its
  REVOKED (``'terminated'``) is stored and its message acked at once, a new pool thread
  takes its place, and the function runs on until it returns, its outcome dropped (logged).
* **Time limits** (the ``timelimit`` header ``[hard, soft]``, else the task's
  ``time_limit``/``soft_time_limit`` options): a thread cannot be killed, but CPython can
  make it raise. Past the *soft* limit ``SoftTimeLimitExceeded`` is raised inside the task
  (at its next Python instruction), as Celery's prefork pool does. Past the *hard* limit the
  task is abandoned as above with FAILURE ``TimeLimitExceeded(hard)`` (what a Celery client
  sees when Celery kills a process) and ``TimeLimitExceeded`` is raised in its thread. A
  thread blocked in one long C call gets either only when that call returns
  (``_execution``). Celery's ``threads`` pool ignores time limits.
* **Task options** (``@app.task(...)``, checked at decoration by ``_task_options``):
  ``rate_limit`` (``_receiving``), ``acks_late`` and the ``acks_on_*`` options,
  ``reject_on_worker_lost``, ``ignore_result``, ``store_errors_even_if_ignored``,
  ``throws``, ``track_started``, ``serializer`` and the retry (``_jobs``), ``autoretry_for``
  and its backoff (``Task.run_for_worker``), time limits (``_execution``).
* **Expires**: a message whose ``expires`` time has passed when it arrives, or when it is
  about to run (after an ``eta`` or a wait in the pool queue), gets REVOKED (``'expired'``).
  The broker may also drop it unseen (its ``expiration`` property): then no state is sent,
  as with Celery.
* An unknown task name gets FAILURE ``NotRegistered`` (even with ``ignore_result``) and its
  message is rejected (not requeued), as Celery does.
* A task that raises a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
  ``KeyboardInterrupt``) gets FAILURE ``RuntimeError("the task raised SystemExit(3)")`` (its
  traceback kept): the pool thread lives on, and no client re-raises ``SystemExit``.
* **Malformed messages** (undecodable body, disallowed content type, not protocol v2,
  missing ``task``/``id`` headers) are logged and rejected without requeue: they would fail
  the same way everywhere. No state is stored for them.
* **stop(timeout)**: no task starts after it is called. Messages held for an ``eta`` or
  waiting in the pool queue go back to their queue at once (deliveries are first stopped,
  the channels kept, so they do not come straight back), running tasks are waited for up to
  ``timeout`` (their results stored and acked), then the consumers are cancelled, which
  returns every unacked message to its queue. Tasks still running after ``timeout`` are
  abandoned *without* storing anything: their messages are back in the queue and will run
  again elsewhere (logged). A lost connection drops held and queued messages here (the
  broker redelivers them); a running task's ack then fails and it runs again later.
* The worker's node name (``hostname``) defaults to ``pika_rpc<pid>@<host>`` (``-<n>`` added
  for a second worker in a process), unique so two workers never share a control queue.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from . import _delayed, _registry, _taskqueues
from ._control import ControlHandler, RevokedIds, cancel_quietly
from ._execution import _NEW, _RUNNING, _STARTING, _STOPPED, _STOPPING
from ._jobs import HELD, QUEUED, RELEASED, Job, Outcomes
from ._receiving import Receiving
from ._threads import Counters, SerialExecutor
from ._timeouts import deadline, remaining
from ._timer import Timer
from .connection import Connection
from .entities import Queue
from .errors import BrokerRefused, ConsumerGaveUp, PikaRPCError
from .messaging import Consumer

# Celery's facts, owned by protocol; re-exported: they are in this module's __all__.
from .protocol import PIDBOX_EXCHANGE, REVOKE_EXPIRES, REVOKES_MAX

LOGGER = logging.getLogger(__name__)

__all__ = ['Worker', 'PIDBOX_EXCHANGE', 'REVOKES_MAX', 'REVOKE_EXPIRES']


_worker_numbers = itertools.count(1)


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


class Worker(Receiving):
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

    def __init__(
        self,
        app: Any,
        queues: Any = None,
        concurrency: int = 1,
        prefetch_count: Optional[int] = None,
        *,
        hostname: Optional[str] = None,
        stop_timeout: float = 30.0,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f'concurrency must be an int >= 1, got {concurrency!r}')
        if prefetch_count is None:
            prefetch_count = concurrency * app.conf.worker_prefetch_multiplier
        if (
            isinstance(prefetch_count, bool)
            or not isinstance(prefetch_count, int)
            or prefetch_count < 0
        ):
            raise ValueError(f'prefetch_count must be an int >= 0, got {prefetch_count!r}')
        self.app = app
        ours = _taskqueues.configured(app.conf)
        self.queues = [
            q if isinstance(q, Queue) else _taskqueues.task_queue(app.conf, str(q), ours)
            for q in _names(queues)
        ] or _taskqueues.consume_from(app.conf)  # routing hook: Celery's default queues
        app.finalize()  # import the task modules (autodiscovery) before consuming
        self.concurrency = concurrency
        self.prefetch_count = prefetch_count
        number = next(_worker_numbers)
        self.hostname = hostname or (
            f'pika_rpc{os.getpid()}{"" if number == 1 else f"-{number}"}@{socket.gethostname()}'
        )
        self.stop_timeout = stop_timeout
        self.revoked = RevokedIds()
        self.ready = threading.Event()  # set once consuming; cleared by stop()
        #: Why the worker failed (``ConsumerGaveUp``), or None; ``run()`` raises it.
        self.failure: Optional[ConsumerGaveUp] = None
        self._stopped = threading.Event()
        self._clean_stop = True  # what the stop() that did the work returned
        self._stop_requested = threading.Event()
        # Guards _state, every job's state, _jobs, _running, _held and _threads.
        self._lock = threading.Lock()
        # Notified whenever a job leaves RUNNING: stop() waits on it for the pool to drain.
        self._idle = threading.Condition(self._lock)
        self._state = _NEW
        self._jobs: Dict[str, List[Job]] = {}  # HELD/QUEUED/RUNNING jobs by task id
        self._running: set = set()
        self._totals: Dict[str, int] = {}
        self._started_at: Optional[float] = None  # time.monotonic() once consuming
        self._held = 0
        self._buckets = {}
        self._applied_prefetch = prefetch_count
        self._threads: List[threading.Thread] = []
        self._work: 'queue.SimpleQueue[Optional[Job]]' = queue.SimpleQueue()
        self._timer = Timer(f'pika-rpc-worker-timer-{number}')
        self._service = SerialExecutor(f'pika-rpc-worker-service-{number}')
        self._connection: Any = None  # the Connection while running
        self._consumer: Optional[Consumer] = None
        self._link: Any = None
        self._stats = Counters(
            'received', 'succeeded', 'failed', 'retried', 'revoked', 'rejected', 'abandoned'
        )
        self._control = ControlHandler(
            self.hostname,
            on_revoke=self.revoke,
            jobs=self._jobs_now,
            stats=self.stats,
            tasks=lambda: self.app.tasks,
            revoked=self.revoked,
            on_shutdown=self._remote_shutdown,
            on_rate_limit=self._control_rate_limit,
        )
        self._outcomes = Outcomes(
            app, self.hostname, self._stats.add, lambda: self._connection.link, self.queues[0].name
        )
        self._start_lock = threading.Lock()  # stop() waits for a start() in progress
        self._thread_numbers = itertools.count(1)
        _registry.register_live(self)

    def __repr__(self) -> str:
        return (
            f'<Worker {self.hostname} {self._state} queues={[q.name for q in self.queues]} '
            f'concurrency={self.concurrency}>'
        )

    def _forget_parent_state(self) -> None:
        # A forked child has none of the parent's threads or channels: this worker is dead here.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._start_lock = threading.Lock()
        self.revoked._forget_parent_state()
        self._timer = Timer(self._timer.name)
        self.ready, self._stop_requested = threading.Event(), threading.Event()
        self._stopped = threading.Event()
        self._state = _STOPPED
        self._stopped.set()

    def _close_at_exit(self) -> None:
        # Called by the registry at interpreter exit, before the links close.
        if self._state in (_STARTING, _RUNNING):
            self.stop(2.0)

    def stats(self) -> Dict[str, Any]:
        """Counters (received, succeeded, failed, retried, revoked, rejected, abandoned), what
        is held, queued and running now, ``total`` (tasks begun, by name), ``concurrency``,
        ``threads`` (pool threads alive), ``prefetch_count`` (applied), ``uptime`` (s), and per
        queue whether it consumes (``queues``: ``consuming``, ``failures``, ``last_error``; see
        ``Consumer.subscriptions``), ``consuming`` (every queue does) and ``failure``."""
        counts = self._stats.snapshot()
        consumer = self._consumer
        subs = consumer.subscriptions() if consumer is not None else {}
        queues = {
            q.name: subs.get(q.name, {'consuming': False, 'failures': 0, 'last_error': None})
            for q in self.queues
        }
        with self._lock:
            jobs = [j for js in self._jobs.values() for j in js]
            began = self._started_at
            out = dict(
                counts,
                held=self._held,
                running=len(self._running),
                queued=sum(1 for j in jobs if j.state == QUEUED),
                revoked_ids=len(self.revoked),
                state=self._state,
                total=dict(self._totals),
                concurrency=self.concurrency,
                threads=len(self._threads),
                prefetch_count=self._applied_prefetch,
                uptime=0.0 if began is None else time.monotonic() - began,
            )
        out.update(
            queues=queues,
            consuming=all(q['consuming'] for q in queues.values()),
            failure=None if self.failure is None else str(self.failure),
        )
        return out

    def _jobs_now(self) -> List[Tuple[str, Job]]:
        """Every HELD, QUEUED and RUNNING job with its state, read at one moment (for the
        remote control's ``active``, ``reserved`` and ``scheduled``). Any thread."""
        with self._lock:
            return [(job.state, job) for jobs in self._jobs.values() for job in jobs]

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
            self._control.start(conn)
            self._consumer = Consumer(
                conn,
                list(self.queues),
                on_message=self._on_task_message,
                prefetch_count=self.prefetch_count or None,
                on_given_up=self._on_given_up,
            )
            self._bind_delayed_delivery(conn)
            with self._lock:
                self._state = _RUNNING
                self._started_at = time.monotonic()
            self._consumer.consume()
        except BaseException:
            with self._lock:
                self._state = _STOPPING
            self._shutdown(deadline(5.0))
            raise
        self.ready.set()
        LOGGER.info(
            'worker %s ready: queues %s, concurrency %d, prefetch %s',
            self.hostname,
            ', '.join(q.name for q in self.queues),
            self.concurrency,
            self.prefetch_count or 'unlimited',
        )
        return self

    def _bind_delayed_delivery(self, conn: Connection) -> None:
        """Celery's native delayed delivery for the quorum queues (see the module docstring):
        the topology once, then each queue's bindings. Blocks (about 110 commands)."""
        steps: List[Any] = []
        for task_queue in self.queues:
            if not _taskqueues.is_quorum(task_queue):
                continue
            bindings, direct = _delayed.queue_bindings(task_queue)
            steps += bindings
            if direct:
                LOGGER.info(
                    'worker %s: quorum queue %r is bound to the direct exchange(s) %s: Celery '
                    'clients send its eta/countdown tasks to it directly and this worker '
                    'holds them until due (native delayed delivery needs a topic or fanout '
                    'exchange)',
                    self.hostname,
                    task_queue.name,
                    ', '.join(direct),
                )
        if not steps:
            return
        dl = deadline(conn.command_timeout)
        queue_type = self.app.conf.broker_native_delayed_delivery_queue_type
        for kind, kwargs in _delayed.topology(queue_type) + steps:
            conn.control(kind, timeout=remaining(dl), **kwargs)

    def _on_given_up(self, queue: str, error: BrokerRefused) -> None:  # I/O thread: quick
        consumer = self._consumer
        failures = consumer.subscriptions().get(queue, {}).get('failures', 0) if consumer else 0
        self.failure = ConsumerGaveUp(queue, failures, str(error))
        LOGGER.critical('worker %s failed: %s; stopping', self.hostname, self.failure)
        self.ready.clear()
        self._stop_requested.set()

    def run(self) -> None:
        """Start and block until ``stop()`` is called (from another thread or a signal
        handler that calls ``request_stop()``), KeyboardInterrupt, or a failure; then stop
        gracefully.

        Raises:
            ConsumerGaveUp: a queue could not be consumed again (``failure``), after the stop.
        """
        self.start()
        try:
            self._stop_requested.wait()
        except KeyboardInterrupt:
            LOGGER.info('worker %s: interrupted; stopping', self.hostname)
        self.stop(self.stop_timeout)
        if self.failure is not None:
            raise self.failure

    def request_stop(self) -> None:
        """Ask ``run()`` to stop; returns at once. Safe from another thread."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        """True once ``request_stop()``, ``stop()`` or a remote ``shutdown`` asked this worker
        to stop (the command line polls it)."""
        return self._stop_requested.is_set()

    def _remote_shutdown(self) -> None:  # control thread, after the reply was sent
        LOGGER.warning('worker %s: shutdown by remote control: stopping gracefully', self.hostname)
        self.request_stop()
        self.stop(self.stop_timeout)

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
        with self._start_lock:  # a start() in progress finishes first
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
        LOGGER.info(
            'worker %s: stopping (waiting up to %s s for running tasks)', self.hostname, timeout
        )
        return self._shutdown(dl)

    def _shutdown(self, dl: Optional[float]) -> bool:
        self._control.stop()
        self._service.stop(remaining(dl))  # pending REVOKED stores and qos changes first
        with self._lock:
            released = self._release_waiting()
            busy = bool(self._running)
        if busy and self._consumer is not None:
            try:  # nothing new comes; the running tasks' messages stay ackable
                self._consumer.pause()
            except PikaRPCError as exc:
                LOGGER.warning('worker %s: could not stop deliveries: %s', self.hostname, exc)
            for job in released:
                self._outcomes.settle(job, requeue=True)
        with self._lock:
            self._idle.wait_for(lambda: not self._running, remaining(dl))
            left = list(self._running)
            for job in left:  # their messages go back with the channel: no state, no ack
                job.state = RELEASED
                self._orphan(job)
                self._forget(job)
            self._running.clear()
        if left:
            LOGGER.warning(
                'worker %s: %d task(s) still running at the stop deadline were '
                'abandoned; their messages return to the queue and will run again: %s',
                self.hostname,
                len(left),
                ', '.join(f'{j.request.name}[{j.request.id}]' for j in left),
            )
        cancel_quietly(self._consumer, self.hostname, 'task')
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

    def _release_waiting(self) -> List[Job]:
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

    def _on_link_event(self, event: str, info: Any) -> None:  # I/O thread: quick only
        if event == 'connected' and info:  # a reconnect: the window is the consumer's last
            self._service.submit(self._apply_prefetch)
        if event != 'lost':
            return
        with self._lock:
            dropped = self._release_waiting()
        if dropped:
            LOGGER.warning(
                'worker %s: connection lost; %d waiting message(s) dropped here, the '
                'broker delivers them again',
                self.hostname,
                len(dropped),
            )
