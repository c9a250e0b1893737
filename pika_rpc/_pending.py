"""The pending table: per-task slots, kept results and the out-of-band buffer.

Written by whichever thread decoded a reply (the I/O thread, or the decoder thread for a big
body), read by any number of waiting threads. One ``mutex`` guards everything; each slot
has a condition on it (``settled``), notified on any change of that slot, so many threads
may wait on one task and every waiter re-checks its own predicate.

Structures and their bounds (past a bound the oldest entry goes, logged once per table):

* ``_slots``: tasks without a final state yet, either *expected* (``register``: sent from
  here) or created by a wait (``wait``/``watch`` on an id nothing arrived for). Each keeps its
  latest meta and the last ``history_max`` raw messages, replayed to ``on_message``.
  Bounded by ``pending_max``; a slot somebody waits on is never evicted (the table may then
  exceed the bound by the slots being waited on). A slot created by a wait is dropped when
  its last waiter leaves if nothing arrived for it: a timed-out wait leaves nothing behind.
* ``_final``: LRU of final results somebody has read, bounded by ``cache_max`` entries and
  by ``cache_max_bytes`` (the received body length of each result, counted together with
  the unread results below). A hit needs no I/O; a redelivered final state of a task
  already here is a duplicate and is dropped. A result larger than
  ``cache_max_bytes`` on its own is handed to its readers and not kept here.
* ``_unread``: final results of expected tasks nobody has read yet. They are never evicted
  by the result cache (a result must not vanish before its reader comes); bounded by
  ``pending_max`` like the slots they replace. Their bytes count toward ``cache_max_bytes``:
  while unread results fill it, read results are dropped first (all but the most recently
  read one). The first read moves one into ``_final``; a *poll* (``peek``, ``cached(poll=
  True)``) of a result too large to be kept leaves it unread, so ``state`` then ``get()``
  both see it.
* ``_oob``: raw messages for ids never sent from here (``oob_max`` ids); a later waiter on
  that id adopts them. Its bytes are reported, not bounded (the ids are).

Each kept result is ``(meta, raw, size)``: the decoded meta answers ``get``/``get_task_meta``
and the raw body dict is what ``on_message`` replays. Both are kept because neither can be
rebuilt from the other exactly (the meta drops unknown keys; an exception is rebuilt from the
raw dict once, not at every read), and it costs two small dicts: their large values are the
same objects (the result of a non-exception state, the traceback, the children).

Several backends may share one table (``App`` objects with the same settings, ``_hub``):
each passes its ``Owner`` to ``wait``/``watch``, and ``fail_owner`` wakes only that owner's
waits and watchers (its backend was closed); the slots and everyone else's waits stay.

``get_many`` uses *watchers*: a queue per call that receives ``(task_id, meta, error)`` for
every id of interest reaching a final state (or an error), so waiting on thousands of ids is
linear, not quadratic. A watched id is a waited-on slot: a result adopted from the
out-of-band buffer when the watcher is registered is reported to it like any other.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from . import states
from ._timeouts import remaining

LOGGER = logging.getLogger(__name__)

Meta = Dict[str, Any]
#: A kept final result: (decoded meta, raw body dict, received body length in bytes).
Entry = Tuple[Meta, Meta, int]
#: What a watcher queue receives: (task_id, final meta or None, error or None).
Outcome = Tuple[str, Optional[Meta], Optional[BaseException]]

DEFAULT_CACHE_MAX_BYTES = 64 * 1024 * 1024


def is_ready(meta: Optional[Meta]) -> bool:
    return meta is not None and meta.get('status') in states.READY_STATES


class _TaskSlot:
    """A task with no final state yet. Guarded by the table's mutex."""

    __slots__ = ('meta', 'history', 'count', 'error', 'waiters', 'settled', 'expected', 'queue')

    def __init__(self, mutex: threading.Lock, history_max: int) -> None:
        self.meta: Optional[Meta] = None  # latest decoded meta
        self.history: Deque[Meta] = collections.deque(maxlen=history_max)  # raw dicts
        self.count = 0  # messages ever appended to history
        self.error: Optional[BaseException] = None  # set once: the result can't arrive
        self.waiters = 0  # threads in wait() plus registered watchers
        self.expected = False  # registered (sent from here): kept until final
        self.queue: Optional[str] = None  # the reply queue it was registered for
        # Notified by deliver(), fail_one(), fail_pending() and forget(): any change.
        self.settled = threading.Condition(mutex)


class Owner:
    """The waits made through one backend on a table several backends share (Apps with the
    same result settings): ``PendingTable.fail_owner`` wakes only these. Guarded by the
    table's mutex."""

    __slots__ = ('error', 'waits', 'watchers')

    def __init__(self) -> None:
        self.error: Optional[BaseException] = None  # set once: every wait of it raises this
        self.waits: 'collections.Counter[Tuple[str, _TaskSlot]]' = collections.Counter()
        self.watchers: Dict[queue.SimpleQueue, List[str]] = {}


class PendingTable:
    """Thread-safe store of task states. Every method may be called from any thread."""

    def __init__(
        self,
        *,
        cache_max: int = 10000,
        history_max: int = 100,
        oob_max: int = 1000,
        pending_max: int = 100000,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        self.mutex = threading.Lock()
        self._slots: Dict[str, _TaskSlot] = {}
        self._final: 'collections.OrderedDict[str, Entry]' = collections.OrderedDict()
        self._unread: 'collections.OrderedDict[str, Entry]' = collections.OrderedDict()
        self._oob: 'collections.OrderedDict[str, List[Tuple[Meta, Meta, int]]]' = (
            collections.OrderedDict()
        )
        # task id -> [(watcher queue, the slot it counts as a waiter of)]
        self._watchers: Dict[str, List[Tuple[queue.SimpleQueue, _TaskSlot]]] = {}
        # Final tasks whose earlier states no waiter has seen yet (bounded like _oob).
        self._replay: 'collections.OrderedDict[str, List[Meta]]' = collections.OrderedDict()
        self._final_bytes = self._unread_bytes = self._oob_bytes = 0
        # The link gave up: slots created by a wait from now on start with this error.
        self._down: Optional[BaseException] = None
        self.cache_max, self.history_max = cache_max, history_max
        self.oob_max, self.pending_max = oob_max, pending_max
        self.cache_max_bytes = cache_max_bytes
        self.duplicates = 0
        self._warned: set = set()

    # ------------------------------------------------------------------ writers
    def register(self, task_id: str, queue: Optional[str] = None) -> None:
        """Expect results for ``task_id`` (called before its task message is sent), through
        the reply queue ``queue`` (``fail_pending(queue=...)`` fails it with that queue)."""
        with self.mutex:
            if self._is_final(task_id):
                return
            slot = self._slots.get(task_id)
            if slot is None:
                slot = self._new_slot(task_id)
                self._adopt(task_id, slot)
            slot.expected = True
            if queue is not None:
                slot.queue = queue

    def deliver(self, task_id: str, raw: Meta, meta: Meta, size: int = 0) -> str:
        """Store a decoded state message whose body was ``size`` bytes.

        Returns 'pending', 'final', 'duplicate' or 'oob'.
        """
        with self.mutex:
            if self._is_final(task_id):
                self.duplicates += 1
                return 'duplicate'
            slot = self._slots.get(task_id)
            if slot is None:
                self._buffer_oob(task_id, raw, meta, size)
                return 'oob'
            return self._apply(task_id, slot, raw, meta, size)

    def _buffer_oob(self, task_id: str, raw: Meta, meta: Meta, size: int) -> None:
        messages = self._oob.get(task_id)
        if messages is None:
            messages = self._oob[task_id] = []
            while len(self._oob) > self.oob_max:
                t, dropped = self._oob.popitem(last=False)
                self._oob_bytes -= sum(m[2] for m in dropped)
                self._warn_once(
                    'out-of-band buffer',
                    'out-of-band buffer full (%d entries); '
                    'dropping the oldest (%s) and others after it (logged once)',
                    self.oob_max,
                    t,
                )
            if task_id not in self._oob:  # oob_max == 0: nothing is buffered
                return
        if len(messages) >= self.history_max:
            self._oob_bytes -= messages.pop(0)[2]
        messages.append((raw, meta, size))
        self._oob_bytes += size

    def _apply(self, task_id: str, slot: _TaskSlot, raw: Meta, meta: Meta, size: int) -> str:
        slot.history.append(raw)
        slot.count += 1
        slot.meta = meta
        final = is_ready(meta)
        if final:
            del self._slots[task_id]
            entry = (meta, raw, size)
            if slot.waiters:  # read at once by its waiters
                self._keep_read(task_id, entry)
            else:
                self._keep_unread(task_id, entry)
                if len(slot.history) > 1:
                    # Nobody saw the states before the final one: keep them for on_message.
                    self._replay[task_id] = list(slot.history)
                    self._bound(self._replay, self.oob_max, 'state replay buffer')
            self._tell_watchers(task_id, meta, None)
        if slot.waiters:
            slot.settled.notify_all()
        return 'final' if final else 'pending'

    def fail_one(self, task_id: Optional[str], error: BaseException) -> bool:
        """Fail the waiters of one pending task; False when no such task is pending."""
        with self.mutex:
            slot = self._slots.get(task_id) if task_id is not None else None
            if slot is None or task_id is None:
                return False
            slot.error = error
            slot.settled.notify_all()
            self._tell_watchers(task_id, None, error)
            return True

    def fail_pending(
        self,
        make_error: Callable[[List[str]], BaseException],
        only_waited: bool = False,
        sticky: bool = False,
        queue: Optional[str] = None,
    ) -> List[str]:
        """Wake every waiter of an unready task with ``make_error(task_ids)``.

        The error stays on the slots, so a thread that starts waiting later gets it at once.
        With ``only_waited`` only tasks someone waits on now are failed. With ``sticky``
        (the link gave up) a wait on an id that has no slot yet gets ``make_error([])`` too,
        until ``clear_errors`` of its type. With ``queue`` (a reply queue was lost) only the
        tasks registered for that queue, and those registered for none, are failed.
        """
        with self.mutex:
            ids = [
                t
                for t, s in self._slots.items()
                if s.error is None
                and (s.waiters or not only_waited)
                and (queue is None or s.queue in (None, queue))
            ]
            if sticky:
                self._down = make_error([])
            if not ids:
                return []
            error = make_error(ids)
            for t in ids:
                slot = self._slots[t]
                slot.error = error
                slot.settled.notify_all()
                self._tell_watchers(t, None, error)
            return ids

    def clear_errors(self, kind: type) -> None:
        """Forget errors of type ``kind`` (a lost connection that came back, or a new
        connection cycle starting) on slots nobody waits on, and the sticky one: a waiter
        already woken with the error still raises it, a later one waits."""
        with self.mutex:
            if isinstance(self._down, kind):
                self._down = None
            for slot in self._slots.values():
                if slot.waiters == 0 and isinstance(slot.error, kind):
                    slot.error = None

    def fail_owner(self, owner: Owner, make_error: Callable[[List[str]], BaseException]) -> None:
        """Wake the waits and watchers of ``owner`` (only them) with ``make_error(task_ids)``;
        its later waits raise it at once. The slots and other waiters are untouched."""
        with self.mutex:
            ids = sorted({t for t, _ in owner.waits}.union(*owner.watchers.values()))
            owner.error = error = make_error(ids)
            for _, slot in owner.waits:
                slot.settled.notify_all()
            for q, watched in owner.watchers.items():
                for t in watched:
                    q.put((t, None, error))

    @property
    def down(self) -> Optional[BaseException]:
        """The sticky error of ``fail_pending(sticky=True)`` (None: not known down)."""
        return self._down

    def forget(self, task_id: str) -> None:
        with self.mutex:
            entry = self._final.pop(task_id, None)
            if entry is not None:
                self._final_bytes -= entry[2]
            entry = self._unread.pop(task_id, None)
            if entry is not None:
                self._unread_bytes -= entry[2]
            messages = self._oob.pop(task_id, None)
            if messages:
                self._oob_bytes -= sum(m[2] for m in messages)
            self._replay.pop(task_id, None)
            slot = self._slots.get(task_id)
            if slot is not None and slot.waiters == 0:
                del self._slots[task_id]

    def discard(self, task_id: str) -> None:
        """Stop expecting ``task_id`` unless someone waits on it (``cancel_for``)."""
        with self.mutex:
            slot = self._slots.get(task_id)
            if slot is not None and slot.waiters == 0:
                del self._slots[task_id]

    # ------------------------------------------------------------------ readers
    def peek(self, task_id: str) -> Optional[Meta]:
        """The latest known meta of ``task_id`` (None when nothing arrived). Never blocks.

        A poll: a final result too large for the cache stays unread (see ``cached``).
        """
        with self.mutex:
            hit = self._read(task_id, poll=True)
            if hit is not None:
                return hit[0]
            slot = self._slots.get(task_id)
            if slot is not None:
                if slot.error is not None:
                    raise slot.error
                return slot.meta
            messages = self._oob.get(task_id)
            return messages[-1][1] if messages else None

    def cached(self, task_id: str, poll: bool = False) -> Optional[Meta]:
        """A final meta from the cache, or None. Never blocks.

        It is then read (kept in the LRU, or not kept when larger than ``cache_max_bytes``);
        with ``poll`` a result too large to be kept stays unread, for a later ``wait``.
        """
        with self.mutex:
            hit = self._read(task_id, poll)
            return hit[0] if hit is not None else None

    def wait(
        self,
        task_id: str,
        dl: Optional[float],
        on_message: Optional[Callable[[Meta], Any]] = None,
        owner: Optional[Owner] = None,
    ) -> Optional[Meta]:
        """Block until ``task_id`` is ready or ``dl`` passes; return its meta (None: timed out).

        ``on_message(raw)`` runs on this thread, outside the lock, for every state message
        of the task not yet shown to this waiter (kept history first).

        Raises:
            the slot's error (ReplyQueueLost, ConnectionLost, a decode error...), or
            ``owner``'s (``fail_owner``: the backend it waits through was closed).
        """
        seen = 0
        with self.mutex:
            if owner is not None and owner.error is not None:
                raise owner.error
            hit = self._read(task_id)
            if hit is not None:
                replay = self._replay.pop(task_id, None) or [hit[1]]
            else:
                slot = self._waited_slot(task_id)
                if owner is not None:
                    owner.waits[(task_id, slot)] += 1
        if hit is not None:
            if on_message is not None:
                for raw in replay:
                    on_message(raw)
            return hit[0]
        try:
            while True:
                with self.mutex:
                    new: List[Meta] = []
                    if on_message is not None and slot.count > seen:
                        fresh = min(slot.count - seen, len(slot.history))
                        new = list(slot.history)[-fresh:] if fresh else []
                        seen = slot.count
                    if not new:
                        if is_ready(slot.meta):
                            return slot.meta  # read: kept by _apply (waiters > 0)
                        if owner is not None and owner.error is not None:
                            raise owner.error
                        if slot.error is not None:
                            raise slot.error
                        left = remaining(dl)
                        if left is not None and left <= 0:
                            return None
                        slot.settled.wait(left)
                        continue
                for raw in new:
                    on_message(raw)  # type: ignore[misc]
        finally:
            with self.mutex:
                self._leave(task_id, slot)
                if owner is not None:
                    owner.waits[(task_id, slot)] -= 1
                    if owner.waits[(task_id, slot)] <= 0:
                        del owner.waits[(task_id, slot)]

    def watch(
        self, task_ids: Iterable[str], owner: Optional[Owner] = None
    ) -> Tuple[queue.SimpleQueue, List[Outcome]]:
        """Register a watcher for ``task_ids``; returns (queue, outcomes known already).

        The queue receives ``(task_id, meta, error)`` for each id that becomes final or
        failed from now on (including a result adopted from the out-of-band buffer while
        registering), and ``owner``'s error for each id if ``fail_owner`` ends it. Call
        ``unwatch`` with the same ids (and owner) when done.
        """
        q: queue.SimpleQueue = queue.SimpleQueue()
        done: List[Outcome] = []
        task_ids = list(task_ids)
        with self.mutex:
            if owner is not None:
                if owner.error is not None:
                    raise owner.error
                owner.watchers[q] = task_ids
            for t in task_ids:
                hit = self._read(t)
                if hit is not None:
                    done.append((t, hit[0], None))
                    continue
                slot = self._waited_slot(t, q)
                if slot.error is not None and not is_ready(slot.meta):
                    done.append((t, None, slot.error))
        return q, done

    def unwatch(
        self, task_ids: Iterable[str], q: queue.SimpleQueue, owner: Optional[Owner] = None
    ) -> None:
        with self.mutex:
            if owner is not None:
                owner.watchers.pop(q, None)
            for t in task_ids:
                entries = self._watchers.get(t)
                if not entries:
                    continue
                for i, (watcher, slot) in enumerate(entries):
                    if watcher is q:
                        del entries[i]
                        self._leave(t, slot)
                        break
                if not entries:
                    del self._watchers[t]

    def sizes(self) -> Dict[str, int]:
        """Entries (and bytes of received bodies) per structure; O(pending slots)."""
        with self.mutex:
            return {
                'pending': len(self._slots),
                'cached': len(self._final),
                'unread': len(self._unread),
                'out_of_band': len(self._oob),
                'watched': len(self._watchers),
                'replay': len(self._replay),
                'waited': sum(1 for s in self._slots.values() if s.waiters),
                'cached_bytes': self._final_bytes,
                'unread_bytes': self._unread_bytes,
                'out_of_band_bytes': self._oob_bytes,
                'history_max_len': max((len(s.history) for s in self._slots.values()), default=0),
                'duplicates': self.duplicates,
            }

    # ------------------------------------------------------------------ internals (locked)
    def _is_final(self, task_id: str) -> bool:
        return task_id in self._final or task_id in self._unread

    def _read(self, task_id: str, poll: bool = False) -> Optional[Entry]:
        """A final (meta, raw, size), marked as read: most recent in the LRU, or not kept
        at all when larger than ``cache_max_bytes``. A ``poll`` leaves such a one unread."""
        hit = self._final.get(task_id)
        if hit is not None:
            self._final.move_to_end(task_id)
            return hit
        hit = self._unread.get(task_id)
        if hit is None or (poll and hit[2] > self.cache_max_bytes):
            return hit
        del self._unread[task_id]
        self._unread_bytes -= hit[2]
        self._keep_read(task_id, hit)
        return hit

    def _keep_read(self, task_id: str, entry: Entry) -> None:
        size = entry[2]
        if size > self.cache_max_bytes:
            self._warn_once(
                'too large',
                'result of task %s is %d bytes, more than '
                'result_cache_max_bytes=%d: handed to its waiters and not kept '
                '(logged once)',
                task_id,
                size,
                self.cache_max_bytes,
            )
            return
        self._final[task_id] = entry
        self._final_bytes += size
        self._trim_read()

    def _keep_unread(self, task_id: str, entry: Entry) -> None:
        self._unread[task_id] = entry
        self._unread_bytes += entry[2]
        while len(self._unread) > self.pending_max:
            t, dropped = self._unread.popitem(last=False)
            self._unread_bytes -= dropped[2]
            self._warn_once(
                'unread results',
                'unread results full (%d entries); dropping the '
                'oldest (%s) and others after it (logged once)',
                self.pending_max,
                t,
            )
        self._trim_read()

    def _trim_read(self) -> None:
        """Drop the least recently read results past ``cache_max`` entries, or while kept
        results (read and unread) exceed ``cache_max_bytes``; the last one read stays."""
        final = self._final
        while len(final) > self.cache_max or (
            len(final) > 1 and self._final_bytes + self._unread_bytes > self.cache_max_bytes
        ):
            t, dropped = final.popitem(last=False)
            self._final_bytes -= dropped[2]
            self._warn_once(
                'result cache',
                'result cache full (result_cache_max=%d entries, '
                'result_cache_max_bytes=%d with the unread results); dropping the '
                'least recently read (%s) and others after it (logged once)',
                self.cache_max,
                self.cache_max_bytes,
                t,
            )

    def _new_slot(self, task_id: str) -> _TaskSlot:
        if len(self._slots) >= self.pending_max:
            self._evict_idle_slot()  # before adding: never the new slot itself
        slot = self._slots[task_id] = _TaskSlot(self.mutex, self.history_max)
        return slot

    def _waited_slot(self, task_id: str, watcher: Optional[queue.SimpleQueue] = None) -> _TaskSlot:
        """The slot of ``task_id`` with one more waiter (``watcher``: a watcher queue).

        A new slot takes the sticky error (the link gave up) and then adopts what the
        out-of-band buffer holds for the id: the waiter (and watcher) is already counted,
        so a final state found there is read at once and reported to the watcher."""
        slot = self._slots.get(task_id)
        new = slot is None
        if slot is None:
            slot = self._new_slot(task_id)
            slot.error = self._down
        slot.waiters += 1
        if watcher is not None:
            self._watchers.setdefault(task_id, []).append((watcher, slot))
        if new:
            self._adopt(task_id, slot)
        return slot

    def _leave(self, task_id: str, slot: _TaskSlot) -> None:
        """One waiter of ``slot`` is gone. Drop the slot when nobody waits on it, nobody
        expects it and nothing arrived for it (a timed-out wait leaves nothing behind)."""
        slot.waiters -= 1
        if (
            slot.waiters == 0
            and not slot.expected
            and slot.count == 0
            and self._slots.get(task_id) is slot
        ):
            del self._slots[task_id]

    def _adopt(self, task_id: str, slot: _TaskSlot) -> None:
        adopted = self._oob.pop(task_id, None)
        for raw, meta, size in adopted or ():
            self._oob_bytes -= size
            if self._slots.get(task_id) is slot:
                self._apply(task_id, slot, raw, meta, size)

    def _evict_idle_slot(self) -> None:
        for t, s in self._slots.items():
            if s.waiters == 0:
                del self._slots[t]
                self._warn_once(
                    'pending',
                    'pending-task table full (%d); forgetting the oldest '
                    'unwaited task %s (a late result goes to the out-of-band buffer)',
                    self.pending_max,
                    t,
                )
                return

    def _bound(self, od: 'collections.OrderedDict', limit: int, what: str) -> None:
        while len(od) > limit:
            t, _ = od.popitem(last=False)
            self._warn_once(
                what,
                '%s full (%d entries); dropping the oldest (%s) and others after it (logged once)',
                what,
                limit,
                t,
            )

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOGGER.warning(msg, *args)

    def _tell_watchers(
        self, task_id: str, meta: Optional[Meta], error: Optional[BaseException]
    ) -> None:
        for q, _slot in self._watchers.get(task_id, ()):
            q.put((task_id, meta, error))
