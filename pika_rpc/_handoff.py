"""The hand-off from caller threads to the I/O thread: its records and its bounded queue.

``Command`` (a call to run on the I/O thread, with its result box), ``Latch`` (a one-shot
event, one per publication), ``Publication`` (one message to publish with confirms, settled
once) and ``HandOff`` (the bounded queue they travel in). No pika here.

Callers put items with a deadline (a full queue blocks them until it, then they give up);
the I/O thread takes the whole queue at once per loop turn. ``add_callback_threadsafe`` is
only the wake-up, sent once per batch behind the "wake pending" flag, so many threads
publishing at once cost few wake-ups. While publications wait in the queue, callers do not
write their own directly (``queued_pubs``): one thread's publications keep their order.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Deque, Iterable, Iterator, List, Mapping, Optional

from ._timeouts import deadline, remaining
from .errors import ClosedError

__all__ = ['Command', 'Latch', 'Publication', 'HandOff']


class Command:
    """A call to run on the I/O thread, with its result box. Skipped if ``cancelled`` (its
    caller gave up) before the I/O thread reached it."""

    __slots__ = ('fn', 'args', 'what', 'done', 'result', 'error', 'cancelled')

    def __init__(self, fn: Callable[..., Any], args: tuple, what: str) -> None:
        self.fn, self.args, self.what = fn, args, what
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.cancelled = False

    def finish(self, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Latch:
    """A one-shot event: ``set()`` once, ``wait()`` by any number of threads. Lighter than
    ``threading.Event`` (one lock, no condition): one is made per publication.

    The lock is held until the latch is set; each waiter takes it and passes it on. Two
    threads setting it at once may both release it (a lock may be released by any thread),
    which only ever leaves it released: a waiter whose pass-on release then finds it already
    released has nothing left to do."""

    __slots__ = ('_lock', '_set')

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            try:
                self._lock.release()
            except RuntimeError:  # set by two threads at once: released already
                pass

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            try:
                self._lock.release()  # pass it on to the next waiter
            except RuntimeError:  # a second setter released it under us: still open
                pass
        return self._set


_NO_RETRY: Mapping[str, Any] = {'max_retries': 0}


class Publication:
    """One message to publish with confirms. Settled once: ``done`` is set then.

    Attributes after settling: ``error`` (None when confirmed), ``returned``
    (``(reply_code, reply_text)`` when the broker returned it as unroutable), ``attempts``.
    """

    __slots__ = (
        'exchange',
        'routing_key',
        'body',
        'properties',
        'mandatory',
        'correlation_id',
        'max_retries',
        'deadline',
        'errback',
        'done',
        'error',
        'returned',
        'attempts',
        'cancelled',
        'policy',
        'waits',
        'gen',
        'timeout',
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict,
        mandatory: bool = True,
        policy: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> None:
        """``policy``: a retry policy (``max_retries``, ``interval_start``/``_step``/``_max``,
        ``errback``) for re-publishing after a nack or a lost connection; None: never
        re-published (one attempt). ``timeout``: seconds until it must be settled."""
        policy = policy or _NO_RETRY
        self.exchange, self.routing_key, self.body = exchange, routing_key, body
        self.properties, self.mandatory = properties, mandatory
        self.correlation_id = properties.get('correlation_id')
        self.max_retries, self.deadline = policy.get('max_retries', 0), deadline(timeout)
        self.timeout = timeout
        self.errback = policy.get('errback')
        self.policy = policy
        #: The waits before each re-publish (``_retry.intervals`` of ``policy``), made at the
        #: first one: most publications are never re-published.
        self.waits: Optional[Iterator[float]] = None
        self.done = Latch()
        self.error: Optional[BaseException] = None
        self.returned: Optional[tuple] = None
        self.attempts = 0
        self.cancelled = False
        self.gen = -1

    def wait(self, timeout: Optional[float]) -> bool:
        return self.done.wait(timeout)

    def _finish(self, error: Optional[BaseException] = None) -> None:
        self.error = error
        self.done.set()


class HandOff:
    """The bounded queue of commands and publications for the I/O thread. Thread-safe.

    ``mutex`` guards the queue, ``queued_pubs`` and ``wake_pending``; the link guards its
    state with it too, so both change together. ``work`` is notified when an item is queued
    (the I/O thread waits on it while it has no connection); ``not_full`` when the queue
    shrinks or the link stops.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.mutex = threading.Lock()
        self.work = threading.Condition(self.mutex)
        self.not_full = threading.Condition(self.mutex)
        self._items: Deque[Any] = collections.deque()
        #: Publications queued and not yet handed to pika (callers do not write around them).
        self.queued_pubs = 0
        self.wake_pending = False

    def __len__(self) -> int:
        return len(self._items)

    def put(
        self, item: Any, dl: Optional[float], stopped: Callable[[], bool], locked: Callable[[], Any]
    ) -> Any:
        """Queue ``item``, blocking while the queue is full until ``dl``.

        ``locked()`` runs under ``mutex`` once the item is queued (the link starts its thread
        and reads its state there). Returns ``(queued, wake, locked())``: ``queued`` False
        when ``dl`` passed first; ``wake`` True when the caller must send the wake-up (none
        pending yet).

        Raises:
            ClosedError: ``stopped()`` (checked before and after every wait).
        """
        with self.mutex:
            if stopped():
                raise ClosedError('the link is closed')
            while len(self._items) >= self.maxsize:
                if not self.not_full.wait(remaining(dl)) and len(self._items) >= self.maxsize:
                    return False, False, None
                if stopped():
                    raise ClosedError('the link is closed')
            self._items.append(item)
            if isinstance(item, Publication):
                self.queued_pubs += 1
            wake = not self.wake_pending
            self.wake_pending = True
            self.work.notify()
            return True, wake, locked()

    def take_all(self) -> List[Any]:
        """I/O thread: every queued item, oldest first; the queue is empty after. The
        publications among them stay counted in ``queued_pubs`` until ``handed()``."""
        with self.mutex:
            self.wake_pending = False
            if not self._items:
                return []
            batch = list(self._items)
            self._items.clear()
            self.not_full.notify_all()
            return batch

    def put_back(self, items: List[Any]) -> None:
        """I/O thread: return items taken off the queue, unrun, to its front (still counted)."""
        if items:
            with self.mutex:
                self._items.extendleft(reversed(items))

    def handed(self, count: int) -> None:
        """I/O thread: ``count`` publications taken off the queue are pika's (or settled)."""
        if count:
            with self.mutex:
                self.queued_pubs = max(0, self.queued_pubs - count)

    def requeue(self, pubs: Iterable[Publication], front: bool = False) -> None:
        """I/O thread: queue publications to re-publish (no wake-up needed: the loop takes the
        queue every turn), at the back or, for those lost with a connection, the front."""
        pubs = list(pubs)
        if pubs:
            with self.mutex:
                if front:
                    self._items.extendleft(reversed(pubs))
                else:
                    self._items.extend(pubs)
                self.queued_pubs += len(pubs)

    def clear(self) -> List[Any]:
        """Remove and return everything queued (to fail it); wakes blocked callers."""
        with self.mutex:
            batch = list(self._items)
            self._items.clear()
            self.queued_pubs = 0
            self.wake_pending = False
            self.not_full.notify_all()
            return batch
