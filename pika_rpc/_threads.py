"""Helper threads that keep user code and slow work off the I/O thread, and counters they share.

``SerialExecutor`` runs submitted calls one at a time, in order, on one lazily started
daemon thread. pika_rpc uses one per process for user hooks (errbacks, ``on_unroutable``,
``on_return``, Consumer callbacks: user code must never run on the I/O thread, where it
could block every other thread's traffic) and one for decoding large bodies.
A raising call is logged and the thread goes on. ``Counters`` are named counters for
``stats()`` that several threads add to (a ``+=`` on a shared dict is not atomic).

After a fork every executor of the child starts empty with a fresh lock, and every counter
keeps its values with a fresh lock (``os.register_at_fork``): the parent's thread does not
exist in the child, and it may have held the lock at the fork.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Union

LOGGER = logging.getLogger(__name__)

_STOP = object()

#: Every executor and counter set of the process, reset in a forked child.
_resettable: 'weakref.WeakSet[Union[SerialExecutor, Counters]]' = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for obj in list(_resettable):
        obj._reset()


class SerialExecutor:
    """Run calls in submission order on one daemon thread. ``submit`` is thread-safe."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        _resettable.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; never blocks, never raises for a faulty ``fn``."""
        self._queue.put((fn, args))
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(
                        target=self._run, name=f'{self._name}-{os.getpid()}', daemon=True
                    )
                    self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # SystemExit from a user hook too: the thread goes on
                LOGGER.exception('error in %s running %r', self._name, fn)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Run what is queued, then stop the thread (bounded by ``timeout``)."""
        with self._lock:
            self._stopped, thread = True, self._thread
        if thread is not None:
            self._queue.put(_STOP)
            if thread is not threading.current_thread():
                thread.join(timeout)


class Counters:
    """Named counters, all 0 at first; any thread may ``add`` to one. Thread-safe."""

    def __init__(self, *names: str) -> None:
        self._values = dict.fromkeys(names, 0)
        self._reset()
        _resettable.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``. Raises KeyError for a name not given at creation."""
        with self._lock:
            self._values[name] += by

    def snapshot(self) -> Dict[str, int]:
        """A copy of every counter, read at one moment."""
        with self._lock:
            return dict(self._values)


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)
