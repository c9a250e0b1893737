"""The pending table: per-task slots, kept results and the out-of-band buffer (DESIGN §6.5).

Written by whichever thread decoded a reply (the I/O thread, or the decoder thread for a big
body), read by any number of waiting threads. One ``mutex`` guards everything; each slot
has a condition on it (``settled``), notified on any change of that slot, so many threads
may wait on one task and every waiter re-checks its own predicate.

Structures and their bounds (past a bound the oldest entry goes, logged once per table):

* ``_slots``: tasks sent from here (or waited on) without a final state yet. Each keeps its
  latest meta and the last ``history_max`` raw messages, replayed to ``on_message``.
  Bounded by ``pending_max``; only slots nobody waits on are evicted.
* ``_final``: LRU of final metas somebody has read (``cache_max``). A hit needs no I/O; a
  redelivered final state of a task already here is a duplicate and is dropped (DESIGN §6.3).
* ``_unread``: final metas of expected tasks nobody has read yet. They are not evicted by the
  result cache (a result must not vanish before its reader comes); bounded by
  ``pending_max`` like the slots they replace. The first read moves one into ``_final``.
* ``_oob``: raw messages for ids never sent from here (``oob_max`` ids); a later waiter on
  that id adopts them.

``get_many`` uses *watchers*: a queue per call that receives every id of interest reaching a
final state (or an error), so waiting on thousands of ids is linear, not quadratic.
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


def is_ready(meta: Optional[Meta]) -> bool:
    return meta is not None and meta.get('status') in states.READY_STATES


class _TaskSlot:
    """A task with no final state yet. Guarded by the table's mutex."""

    __slots__ = ('meta', 'history', 'count', 'error', 'waiters', 'settled')

    def __init__(self, mutex: threading.Lock, history_max: int) -> None:
        self.meta: Optional[Meta] = None      # latest decoded meta
        self.history: Deque[Meta] = collections.deque(maxlen=history_max)  # raw dicts
        self.count = 0                        # messages ever appended to history
        self.error: Optional[BaseException] = None   # set once: the result can't arrive
        self.waiters = 0
        # Notified by deliver(), fail_one(), fail_pending() and forget(): any change.
        self.settled = threading.Condition(mutex)


class PendingTable:
    """Thread-safe store of task states. Every method may be called from any thread."""

    def __init__(self, *, cache_max: int = 10000, history_max: int = 100,
                 oob_max: int = 1000, pending_max: int = 100000) -> None:
        self.mutex = threading.Lock()
        self._slots: Dict[str, _TaskSlot] = {}
        self._final: 'collections.OrderedDict[str, Tuple[Meta, Meta]]' = collections.OrderedDict()
        self._unread: 'collections.OrderedDict[str, Tuple[Meta, Meta]]' = collections.OrderedDict()
        self._oob: 'collections.OrderedDict[str, List[Tuple[Meta, Meta]]]' = collections.OrderedDict()
        self._watchers: Dict[str, List[queue.SimpleQueue]] = {}
        # Final tasks whose earlier states no waiter has seen yet (bounded like _oob).
        self._replay: 'collections.OrderedDict[str, List[Meta]]' = collections.OrderedDict()
        self.cache_max, self.history_max = cache_max, history_max
        self.oob_max, self.pending_max = oob_max, pending_max
        self.duplicates = 0
        self._warned: set = set()

    # ------------------------------------------------------------------ writers
    def register(self, task_id: str) -> None:
        """Expect results for ``task_id`` (called before its task message is sent)."""
        with self.mutex:
            if not self._is_final(task_id):
                self._slot(task_id)

    def deliver(self, task_id: str, raw: Meta, meta: Meta) -> str:
        """Store a decoded state message. Returns 'pending', 'final', 'duplicate' or 'oob'."""
        with self.mutex:
            if self._is_final(task_id):
                self.duplicates += 1
                return 'duplicate'
            slot = self._slots.get(task_id)
            if slot is None:
                messages = self._oob.get(task_id)
                if messages is None:
                    messages = self._oob[task_id] = []
                    self._bound(self._oob, self.oob_max, 'out-of-band buffer')
                if len(messages) >= self.history_max:
                    del messages[0]
                messages.append((raw, meta))
                return 'oob'
            return self._apply(task_id, slot, raw, meta)

    def _apply(self, task_id: str, slot: _TaskSlot, raw: Meta, meta: Meta) -> str:
        slot.history.append(raw)
        slot.count += 1
        slot.meta = meta
        final = is_ready(meta)
        if final:
            del self._slots[task_id]
            if slot.waiters:                   # read at once by its waiters
                self._final[task_id] = (meta, raw)
                self._bound(self._final, self.cache_max, 'result cache')
            else:
                self._unread[task_id] = (meta, raw)
                self._bound(self._unread, self.pending_max, 'unread results')
            if slot.waiters == 0 and len(slot.history) > 1:
                # Nobody saw the states before the final one: keep them for on_message.
                self._replay[task_id] = list(slot.history)
                self._bound(self._replay, self.oob_max, 'state replay buffer')
            self._tell_watchers(task_id)
        if slot.waiters:
            slot.settled.notify_all()
        return 'final' if final else 'pending'

    def fail_one(self, task_id: Optional[str], error: BaseException) -> bool:
        """Fail the waiters of one pending task; False when no such task is pending."""
        with self.mutex:
            slot = self._slots.get(task_id) if task_id is not None else None
            if slot is None:
                return False
            slot.error = error
            slot.settled.notify_all()
            self._tell_watchers(task_id)
            return True

    def fail_pending(self, make_error: Callable[[List[str]], BaseException],
                     only_waited: bool = False) -> List[str]:
        """Wake every waiter of an unready task with ``make_error(task_ids)``.

        The error stays on the slots, so a thread that starts waiting later gets it at once.
        With ``only_waited`` only tasks someone waits on now are failed.
        """
        with self.mutex:
            ids = [t for t, s in self._slots.items()
                   if s.error is None and (s.waiters or not only_waited)]
            if not ids:
                return []
            error = make_error(ids)
            for t in ids:
                slot = self._slots[t]
                slot.error = error
                slot.settled.notify_all()
                self._tell_watchers(t)
            return ids

    def clear_errors(self, kind: type) -> None:
        """Forget errors of type ``kind`` (a lost connection that came back) on slots nobody
        waits on: a waiter already woken with the error still raises it, a later one waits."""
        with self.mutex:
            for slot in self._slots.values():
                if slot.waiters == 0 and isinstance(slot.error, kind):
                    slot.error = None

    def forget(self, task_id: str) -> None:
        with self.mutex:
            self._final.pop(task_id, None)
            self._unread.pop(task_id, None)
            self._oob.pop(task_id, None)
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

    def clear(self) -> None:
        with self.mutex:
            self._slots.clear()
            self._final.clear()
            self._unread.clear()
            self._oob.clear()
            self._replay.clear()
            self._watchers.clear()

    # ------------------------------------------------------------------ readers
    def peek(self, task_id: str) -> Optional[Meta]:
        """The latest known meta of ``task_id`` (None when nothing arrived). Never blocks."""
        with self.mutex:
            hit = self._read(task_id)
            if hit is not None:
                return hit[0]
            slot = self._slots.get(task_id)
            if slot is not None:
                if slot.error is not None:
                    raise slot.error
                return slot.meta
            messages = self._oob.get(task_id)
            return messages[-1][1] if messages else None

    def cached(self, task_id: str) -> Optional[Meta]:
        """A final meta from the cache, or None. Never blocks."""
        with self.mutex:
            hit = self._read(task_id)
            return hit[0] if hit is not None else None

    def wait(self, task_id: str, dl: Optional[float],
             on_message: Optional[Callable[[Meta], Any]] = None) -> Optional[Meta]:
        """Block until ``task_id`` is ready or ``dl`` passes; return its meta (None: timed out).

        ``on_message(raw)`` runs on this thread, outside the lock, for every state message
        of the task not yet shown to this waiter (kept history first).

        Raises:
            the slot's error (ReplyQueueLost, ConnectionLost, a decode error...).
        """
        seen = 0
        with self.mutex:
            hit = self._read(task_id)
            if hit is not None:
                replay = self._replay.pop(task_id, None) or [hit[1]]
            else:
                slot = self._slots.get(task_id) or self._slot(task_id)
                slot.waiters += 1
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
                            self._read(task_id)          # now read: into the LRU
                            return slot.meta
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
                slot.waiters -= 1

    def watch(self, task_ids: Iterable[str]) -> Tuple[queue.SimpleQueue, List[str]]:
        """Register a watcher for ``task_ids``; returns (queue, ids already settled).

        The queue receives each id that becomes final or failed from now on. Call
        ``unwatch`` with the same ids when done.
        """
        q: queue.SimpleQueue = queue.SimpleQueue()
        done = []
        with self.mutex:
            for t in task_ids:
                if self._is_final(t):
                    done.append(t)
                    continue
                slot = self._slots.get(t) or self._slot(t)
                slot.waiters += 1
                if slot.error is not None:
                    done.append(t)
                self._watchers.setdefault(t, []).append(q)
        return q, done

    def unwatch(self, task_ids: Iterable[str], q: queue.SimpleQueue) -> None:
        with self.mutex:
            for t in task_ids:
                lst = self._watchers.get(t)
                if lst is not None:
                    try:
                        lst.remove(q)
                        slot = self._slots.get(t)
                        if slot is not None:
                            slot.waiters -= 1
                    except ValueError:
                        pass
                    if not lst:
                        del self._watchers[t]

    def outcome(self, task_id: str) -> Tuple[Optional[Meta], Optional[BaseException]]:
        """(final meta, None), (None, error) or (None, None) for a watched id."""
        with self.mutex:
            hit = self._read(task_id)
            if hit is not None:
                return hit[0], None
            slot = self._slots.get(task_id)
            return None, (slot.error if slot is not None else None)

    def sizes(self) -> Dict[str, int]:
        with self.mutex:
            return {'pending': len(self._slots), 'cached': len(self._final),
                    'unread': len(self._unread),
                    'out_of_band': len(self._oob), 'watched': len(self._watchers),
                    'replay': len(self._replay),
                    'history_max_len': max((len(s.history) for s in self._slots.values()), default=0),
                    'duplicates': self.duplicates}

    def pending_ids(self) -> List[str]:
        with self.mutex:
            return list(self._slots)

    # ------------------------------------------------------------------ internals (locked)
    def _is_final(self, task_id: str) -> bool:
        return task_id in self._final or task_id in self._unread

    def _read(self, task_id: str) -> Optional[Tuple[Meta, Meta]]:
        """A final (meta, raw), marked as read: most recent in the LRU."""
        hit = self._final.get(task_id)
        if hit is not None:
            self._final.move_to_end(task_id)
            return hit
        hit = self._unread.pop(task_id, None)
        if hit is not None:
            self._final[task_id] = hit
            self._bound(self._final, self.cache_max, 'result cache')
        return hit

    def _slot(self, task_id: str) -> _TaskSlot:
        slot = self._slots.get(task_id)
        if slot is not None:
            return slot
        slot = self._slots[task_id] = _TaskSlot(self.mutex, self.history_max)
        if len(self._slots) > self.pending_max:
            self._evict_idle_slot()
        adopted = self._oob.pop(task_id, None)
        for raw, meta in adopted or ():
            if task_id in self._slots:
                self._apply(task_id, slot, raw, meta)
        return slot

    def _evict_idle_slot(self) -> None:
        for t, s in self._slots.items():
            if s.waiters == 0:
                del self._slots[t]
                self._warn_once('pending', 'pending-task table full (%d); forgetting the oldest '
                                'unwaited task %s (a late result goes to the out-of-band buffer)',
                                self.pending_max, t)
                return

    def _bound(self, od: 'collections.OrderedDict', limit: int, what: str) -> None:
        while len(od) > limit:
            t, _ = od.popitem(last=False)
            self._warn_once(what, '%s full (%d entries); dropping the oldest (%s) and others '
                            'after it (logged once)', what, limit, t)

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOGGER.warning(msg, *args)

    def _tell_watchers(self, task_id: str) -> None:
        for q in self._watchers.get(task_id, ()):
            q.put(task_id)
