"""Helper threads that keep user code and slow work off the I/O thread.

``SerialExecutor`` runs submitted calls one at a time, in order, on one lazily started
daemon thread. pika_rpc uses one per process for user hooks (errbacks, ``on_unroutable``,
``on_return``, Consumer callbacks; DESIGN §6.8) and one for decoding large bodies.
A raising call is logged and the thread goes on. After a fork the child's executor starts
empty with fresh locks (the parent's thread does not exist in the child).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable, Optional

LOGGER = logging.getLogger(__name__)

_STOP = object()


class SerialExecutor:
    """Run calls in submission order on one daemon thread. ``submit`` is thread-safe."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; never blocks, never raises for a faulty ``fn``."""
        if self._pid != os.getpid():  # forked: the parent's thread is not here
            self._reset()
        self._queue.put((fn, args))
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(
                        target=self._run, name=f'{self._name}-{os.getpid()}', daemon=True)
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
            except Exception:
                LOGGER.exception('error in %s running %r', self._name, fn)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Run what is queued, then stop the thread (bounded by ``timeout``)."""
        with self._lock:
            self._stopped, thread = True, self._thread
        if thread is not None:
            self._queue.put(_STOP)
            if thread is not threading.current_thread():
                thread.join(timeout)
