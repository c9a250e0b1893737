"""``RPCBackend``: Celery's rpc:// result backend on the process's link.

Client side: a reply queue (``oid``), consumed by ``result_consumer``
(``_replies.ResultConsumer``, re-exported here), which fills a pending table;
``get``/``get_many``/``get_task_meta`` read and wait on that table. The queue, its consumer,
the table and the link belong to a ``_hub.Hub``: the backends of ``App`` objects with the same
settings (``shared=True``) share one, reference-counted, so a process holds one reply queue
however many Apps it made; a backend made directly has its own. Each backend keeps its own
waits (``_pending.Owner``): ``close()`` wakes only those, and the last backend of a hub
deletes the queue.

Result-storing side: ``store_result`` and Celery's ``mark_as_*`` (written in ``_storing``)
publish each state to the request's ``reply_to`` with confirms, ``mandatory=True``.

Choices where Celery leaves room:

* The reply queue survives a reconnect (see ``_replies``); the last ``close()`` of the
  backends that share it deletes it, and so does the garbage collection of the last one
  left unclosed (an ``App``'s; a backend made directly is kept by its link until closed). The
  seed's ``auto_delete`` and ``no_ack`` arguments are accepted and ignored.
* ``get_task_meta`` never waits on the network and never raises ``BacklogLimitExceeded``:
  it reads what the I/O thread already pushed (subscribing in the background on first
  use); a result that can no longer arrive raises its error (``ReplyQueueLost``,
  ``ConnectionLost``), and so does a poll while the broker cannot be reached.
* After the link gave up, a wait (``get``, ``get_many``) starts a new connection cycle and
  waits for its outcome within its own timeout (``ConnectionLost`` when that cycle gives up
  too); ``get_task_meta`` raises ``ConnectionLost`` at once and starts the cycle in the
  background, so a later poll sees the result once the link is back.
* Final results are kept for later reads within ``result_cache_max`` entries and
  ``result_cache_max_bytes`` bytes of received bodies (``_pending`` says how); one larger
  than ``result_cache_max_bytes`` is handed to its waiters and not kept.
* A process that only polls (``get_task_meta`` without having sent) starts the consumer on
  first use, in the background, as Celery declares the queue on each poll.
* After a fork the child gets a new oid and an empty table (the open backends of one hub in
  the parent share one hub in the child; closed ones stay closed); the parent's queue is
  untouched.
* No lock is held across a broker round trip: ``_lock`` guards only the closed flag (the
  hub's own lock, the link reference).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from . import _hub, _registry, serialization, states
from ._link import Link
from ._pending import Owner
from ._replies import ResultConsumer
from ._storing import NoGroupState, ResultStoring
from ._threads import Counters
from ._timeouts import deadline, remaining
from .config import Settings, reply_queue_arguments
from .entities import Exchange, Queue
from .errors import BacklogLimitExceeded, ClosedError, ConnectionLost, TimeoutError
from .messaging import Consumer, Producer

LOGGER = logging.getLogger(__name__)

__all__ = ['RPCBackend', 'ResultConsumer', 'BacklogLimitExceeded']

_PENDING_META = {'status': states.PENDING, 'result': None}
#: The class, for RPCBackend's annotations (where ``Queue`` is its attribute of that name).
_Queue = Queue


class RPCBackend(NoGroupState, ResultStoring):
    """Celery's rpc:// result backend. Thread-safe; ``app.backend`` is the usual way to get one.

    Every method may be called from any thread. Blocking methods take a timeout.
    ``shared=True`` (what ``App`` does) shares the reply queue, pending table and link with
    every other shared backend of the same class and settings in this process; False (the
    default for a backend made directly) gives it a reply queue of its own.
    """

    Exchange = Exchange
    Queue = Queue
    Producer = Producer
    Consumer = Consumer
    ResultConsumer = ResultConsumer
    BacklogLimitExceeded = BacklogLimitExceeded

    persistent = False
    supports_autoexpire = True
    supports_native_join = True
    retry_policy = {'max_retries': 20, 'interval_start': 0, 'interval_step': 1, 'interval_max': 1}

    def __init__(
        self,
        app: Any = None,
        connection: Any = None,
        exchange: Any = None,
        exchange_type: Optional[str] = None,
        persistent: Optional[bool] = None,
        serializer: Optional[str] = None,
        auto_delete: bool = True,
        *,
        url: Optional[str] = None,
        shared: bool = False,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self._shared = shared
        if app is not None:
            settings = app.conf.copy()
            if kwargs:
                settings.update(kwargs)
        else:
            settings = Settings(**kwargs)
        if url is not None:
            settings.broker_url = url
        self.conf = settings
        self.url = settings.broker_url
        self._init_args = dict(
            exchange=exchange,
            exchange_type=exchange_type,
            persistent=persistent,
            serializer=serializer,
            auto_delete=auto_delete,
        )
        self.persistent = settings.result_persistent if persistent is None else persistent
        self.serializer = serializer or settings.result_serializer
        self.accept = serialization.prepare_accept_content(
            settings.result_accept_content or settings.accept_content
        )
        self.expires = settings.result_expires
        self.delivery_mode = 2 if self.persistent else 1
        self.retry_policy = dict(
            settings.get('result_backend_retry_policy') or type(self).retry_policy
        )
        self.exchange = self.Exchange('', type='direct', durable=False, auto_delete=True)
        self.on_unroutable: Optional[Callable[[str, str], Any]] = None
        self.result_consumer = self.ResultConsumer(self)
        self._reset()
        _registry.register_live(self)

    def _reset(self) -> None:
        """Fresh per-process state: a hub (shared, or new: a new oid and an empty table),
        new locks, no waits. A forked child's inherited hub is dropped, never released."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards _closed; never held across I/O
        self._closed = False
        self._stats = Counters('unroutable', 'stored')  # any thread stores
        self._waits = Owner()  # the waits made through this backend (close() wakes them)
        old = getattr(self, '_finalizer', None)
        if old is not None:
            old.detach()
        own = self.result_consumer
        hub = self._hub = _hub.acquire(
            self,
            (lambda h: self.ResultConsumer(h)) if self._shared else (lambda h: own),
            self._shared,
        )
        self._pending = hub.pending
        self.result_consumer = hub.consumer
        # Garbage-collected without close(): let go of the hub without blocking.
        self._finalizer = weakref.finalize(self, hub.release_soon)
        self._finalizer.atexit = False  # at exit _registry closes the live backends

    def _forget_parent_state(self) -> None:
        # In a forked child: never touch the parent's link or hub. A closed backend stays
        # closed (not a user of the child's reply queue); any other starts over.
        if self._closed:
            self._pid, self._lock = os.getpid(), threading.Lock()
        else:
            self._reset()

    # ------------------------------------------------------------------ identity
    @property
    def oid(self) -> str:
        """This process's reply queue name (a new one after fork, and after its home node
        was lost: ``ResultConsumer`` moves to a new queue then)."""
        self._check_pid()
        return self._oid

    @property
    def _oid(self) -> str:
        return self.result_consumer.reply_queue

    @property
    def binding(self) -> _Queue:
        args = reply_queue_arguments(self.conf)
        return self.Queue(
            self.oid,
            exchange=self.exchange,
            routing_key=self.oid,
            durable=True,
            auto_delete=False,
            queue_arguments=args,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def as_uri(self, include_password: bool = False) -> str:
        return 'rpc://'

    def __repr__(self) -> str:
        return f'<RPCBackend rpc:// oid={self._oid} pid={self._pid}{" closed" if self._closed else ""}>'

    def __reduce__(self) -> Tuple[Any, ...]:
        # A pickled backend rebuilds from its configuration (new process: new oid).
        return (_rebuild_backend, (self.conf.as_dict(), self._init_args))

    def __enter__(self) -> 'RPCBackend':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ link & consumer
    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            _registry.current()  # runs the after-fork reset if the hook did not
            if self._pid != os.getpid():
                self._forget_parent_state()

    def _check_open(self) -> None:
        self._check_pid()
        if self._closed:
            raise ClosedError(f'{self!r} is closed; use app.backend for a new one')

    @property
    def _link(self) -> Optional[Link]:
        """The link the reply queue is consumed on (None before first use)."""
        return self._hub.link

    def _get_link(self) -> Link:
        self._check_open()
        return self._hub.get_link()

    def _revive_link(self, for_wait: bool) -> bool:
        return self._hub.revive_link(for_wait)

    def _raise_if_unreachable(self, what: str) -> None:
        """At a wait's deadline: ``ConnectionLost`` (why, what to do) if the broker cannot be
        reached, rather than a ``TimeoutError``."""
        link = self._link
        down = link.unreachable() if link is not None else None
        if down is not None:
            raise ConnectionLost(f'{what} not ready: {down}')

    def on_out_of_band_result(self, task_id: str, message: Any) -> None:
        """Hook: a state arrived for an id this process never sent (kept, bounded)."""
        LOGGER.debug('out-of-band result for task %s on %s', task_id, self._oid)

    # ------------------------------------------------------------------ client side
    def on_task_call(self, producer: Any, task_id: str, timeout: Optional[float] = None) -> str:
        """Before a task is sent: make sure the reply queue exists and is consumed
        (once per connection) and expect results for ``task_id``. Returns the reply queue
        the task message must name (its ``reply_to``).

        Blocks only the first time on a connection (up to ``timeout``, default
        ``publish_timeout``). Raises ``TimeoutError`` or ``ConnectionLost``.
        """
        return self.result_consumer.expect(task_id, timeout=timeout)

    def on_reply_declare(self, task_id: str) -> List[_Queue]:
        return [self.binding]

    def consume_from(self, task_id: str) -> None:
        self.result_consumer.consume_from(task_id)

    def cancel_for(self, task_id: str) -> None:
        self.result_consumer.cancel_for(task_id)

    def get_task_meta(self, task_id: str, backlog_limit: int = 1000) -> Dict[str, Any]:
        """Latest known state of ``task_id``, from what has arrived; never waits on the network.

        The first poll of a process that sent nothing starts the reply consumer in the
        background (``ResultConsumer.consume_soon``) and answers at once.

        Returns Celery's decoded meta, or exactly ``{'status': 'PENDING', 'result': None}``.
        A result larger than ``result_cache_max_bytes`` is not consumed by a poll: the next
        ``get()`` still returns it (and, not being kept, it is PENDING after that).

        Raises:
            ReplyQueueLost, ConnectionLost: that result can no longer arrive. While the
                link's connect attempts fail (``Link.unreachable``) or after it gave up,
                ``ConnectionLost`` at once, saying why and what to do, and a connection cycle
                runs in the background (a given-up link starts a new one): a later poll sees
                the result once the link is back.
        """
        self._check_open()
        cached = self._pending.cached(task_id, poll=True)
        if cached is not None:
            return cached
        down: Optional[BaseException] = self._pending.down
        if down is None:
            link = self._get_link()
            down = link.unreachable()
            if down is not None:
                link.revive()  # a no-op while its connection cycle runs
        else:
            self._revive_link(for_wait=False)  # in the background: a later poll sees it
        # Subscribes in the background, as soon as the link is (back) up.
        self.result_consumer.consume_soon()
        meta = self._pending.peek(task_id)  # the task's own error raises here
        if meta is None or meta.get('status') not in states.READY_STATES:
            if down is not None:
                raise ConnectionLost(f'{down} (reconnecting in the background; poll again)')
            # Not ready: give the GIL away once, so a caller polling in a tight loop does not
            # starve the I/O thread that would deliver the result (5 ms switch interval).
            time.sleep(0)
        return dict(_PENDING_META) if meta is None else meta

    poll = get_task_meta

    def wait_for_pending(
        self,
        result: Any,
        timeout: Optional[float] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
        callback: Optional[Callable[[str, Any], Any]] = None,
        propagate: bool = True,
    ) -> Dict[str, Any]:
        """Block until ``result`` is ready; return its meta. ``interval`` is unused (push).

        After the link gave up, starts a new connection cycle and waits for it (within
        ``timeout``).

        Raises:
            pika_rpc.TimeoutError: not ready within ``timeout`` seconds (names the task).
            ReplyQueueLost, ConnectionLost: the result can no longer arrive (for a given-up
                link: the new connection cycle gave up too), or at the deadline the broker
                could not be reached (the text says why and what to do).
        """
        task_id = getattr(result, 'id', result)
        dl = deadline(timeout)
        if on_message is None:  # else wait() replays the kept messages too
            cached = self._pending.cached(task_id)
            if cached is not None:
                return cached
        self._revive_link(for_wait=True)
        self._pending.peek(task_id)  # a result that can no longer arrive raises at once
        try:
            self.result_consumer.ensure_consuming(timeout=remaining(dl))
        except TimeoutError:
            raise TimeoutError(
                f'task {task_id} still PENDING after {timeout} s '
                '(the reply consumer was not running yet)'
            ) from None
        meta = self._pending.wait(task_id, dl, on_message, owner=self._waits)
        if meta is None:
            self._raise_if_unreachable(f'task {task_id}')
            latest = self._pending.peek(task_id)
            state = latest['status'] if latest else states.PENDING
            raise TimeoutError(f'task {task_id} still {state} after {timeout} s')
        return meta

    def get_many(
        self,
        task_ids: Iterable[str],
        timeout: Optional[float] = None,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Optional[Callable[[], Any]] = None,
        max_iterations: Optional[int] = None,
        **kwargs: Any,
    ) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """Yield ``(task_id, meta)`` for each task as it becomes ready (completion order).

        Blocks between items. ``on_message(raw)`` is called for the final state of each task
        (non-final states of many tasks are not replayed here).

        Raises:
            pika_rpc.TimeoutError: ``timeout`` passed for the whole call; names how many of how
                many tasks are still not ready.
            ReplyQueueLost, ConnectionLost: those results can no longer arrive.
        """
        ids = list(dict.fromkeys(getattr(t, 'id', t) for t in task_ids))
        dl = deadline(timeout)
        self._revive_link(for_wait=True)
        self.result_consumer.ensure_consuming(timeout=remaining(dl))
        watcher, ready = self._pending.watch(ids, owner=self._waits)
        left = set(ids)
        try:
            while left:
                if ready:
                    task_id, meta, error = ready.pop()
                else:
                    try:
                        task_id, meta, error = watcher.get(timeout=remaining(dl))
                    except queue.Empty:
                        self._raise_if_unreachable(f'{len(left)} of {len(ids)} task(s)')
                        raise TimeoutError(
                            f'{len(left)} of {len(ids)} task(s) not ready after {timeout} s'
                        ) from None
                if task_id not in left:
                    continue
                if error is not None:
                    raise error
                assert meta is not None  # an outcome has its meta or its error
                left.discard(task_id)
                if on_message is not None:
                    on_message(meta)
                yield task_id, meta
        finally:
            self._pending.unwatch(ids, watcher, owner=self._waits)

    def iter_native(
        self,
        result: Any,
        timeout: Optional[float] = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Optional[Callable[[Dict[str, Any]], Any]] = None,
        on_interval: Optional[Callable[[], Any]] = None,
    ) -> Iterator[Tuple[str, Dict[str, Any]]]:
        ids = [r.id for r in getattr(result, 'results', result)]
        return self.get_many(ids, timeout=timeout, on_message=on_message)

    def forget(self, task_id: str) -> None:
        self._pending.forget(task_id)

    def on_result_fulfilled(self, result: Any) -> None:
        self._pending.discard(getattr(result, 'id', result))

    def revive(self, channel: Any) -> None:
        """Kept for API compatibility: the I/O thread revives the consumer by itself."""

    # ------------------------------------------------------------------ life cycle
    def stats(self) -> Dict[str, Any]:
        """Pending and buffered tasks, bad messages, reconnects and the last link error."""
        out = dict(self.result_consumer.stats(), **self._stats.snapshot())
        out.update(self._pending.sizes())
        out['oid'] = self._oid
        link = self._link
        if link is not None:
            s = link.stats()
            out.update(
                reconnects=s.get('reconnects', 0), link_state=s['state'], last_error=s['last_error']
            )
        return out

    def close(self, timeout: Optional[float] = 10.0) -> None:
        """Wake the threads waiting through this backend with ``ClosedError`` (a
        ``ConnectionLost``) and release its share of the reply queue: the last backend that
        shares it (``App`` objects with the same settings) deletes the queue and releases the
        link. Waits through other backends go on. Blocks up to ``timeout``; a second call is a
        no-op."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        held = self._finalizer.detach() is not None  # else its reference is released already
        self._pending.fail_owner(
            self._waits,
            lambda ids: ClosedError(f'backend closed while waiting for {", ".join(ids[:10])}'),
        )
        if held:
            self._hub.release(timeout, self)

    def _close_at_exit(self) -> None:
        self.close(timeout=2.0)


def _rebuild_backend(conf: Dict[str, Any], init_args: Dict[str, Any]) -> RPCBackend:
    return RPCBackend(**init_args, **conf)
