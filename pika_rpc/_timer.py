"""``Timer``: calls functions after a delay on one daemon thread (the worker's eta and time limits).

One thread serves every entry, started on the first ``call_later``; entries sit in a heap
ordered by due time (ties by arrival). ``cancel`` only marks an entry, which is skipped when
it comes up: O(1), no heap surgery. Callbacks run on the timer thread and must be quick (hand
real work to another thread); one that raises is logged and the timer goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, List, Optional

LOGGER = logging.getLogger(__name__)

__all__ = ['Timer']


class Timer:
    """Calls ``fn(*args)`` after a delay on one daemon thread named ``name``. Thread-safe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition(threading.Lock())  # notified on a new entry or stop
        self._heap: List[list] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    def call_later(self, delay: float, fn: Any, *args: Any) -> list:
        """Schedule ``fn(*args)`` in ``delay`` s (now if <= 0); returns the entry to cancel."""
        entry = [time.monotonic() + max(0.0, delay), next(self._seq), fn, args]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: list) -> None:
        """Never call ``entry``'s function (a no-op once it ran). Any thread."""
        entry[2] = None  # skipped when it comes up; the sequence number orders ties

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
                    LOGGER.exception('%s: timer callback %r failed', self.name, fn)

    def stop(self, timeout: Optional[float]) -> None:
        """Drop every entry and end the thread, waiting up to ``timeout`` s for it."""
        with self._cond:
            self._stopped, thread = True, self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
