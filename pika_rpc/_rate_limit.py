"""Rate limits of the worker: one token bucket per task name, as Celery's worker keeps.

A bucket holds at most one token and gains ``rate`` tokens a second; a task may start when
it can take a token, else it waits, in arrival order, until :meth:`TokenBucket.wait_time`
has passed. Waiting tasks keep their place in the prefetch window, as with Celery (a
rate-limited task type that is very slow can therefore fill the window; give it its own
queue and worker).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Optional

__all__ = ['TokenBucket']


class TokenBucket:
    """A token bucket of capacity 1 filling at ``rate`` tokens a second, with the FIFO of
    what waits for it. Thread-safe.

    ``timer`` holds the timer entry that will next move waiting work on (None when none is
    armed); it is read and set by the worker under the bucket's lock.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.waiting: Deque[Any] = collections.deque()
        self.timer: Optional[list] = None
        self._tokens = 1.0
        self._stamp = time.monotonic()

    def _fill(self) -> float:
        now = time.monotonic()
        if self._tokens < 1.0:
            self._tokens = min(1.0, self._tokens + self.rate * (now - self._stamp))
        self._stamp = now
        return self._tokens

    def take(self) -> bool:
        """Take a token if one is there now; True when taken. Under ``lock``."""
        if self._fill() >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is there. Under ``lock``."""
        return max(0.0, (1.0 - self._fill()) / self.rate)
