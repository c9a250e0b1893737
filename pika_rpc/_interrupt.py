"""Raising an exception in another thread (CPython's ``PyThreadState_SetAsyncExc``).

The worker runs tasks on threads, and a thread cannot be killed. What CPython can do is
make a thread raise an exception at its next Python instruction. That is how a task's
*soft* time limit raises ``SoftTimeLimitExceeded`` inside the task, as with Celery's prefork
pool (which sends a signal). Its limit: a thread blocked in one long C call (``time.sleep``,
a socket read, a lock wait without timeout) gets the exception only when that call returns.
And CPython 3.12+ may let an exception raised this way pass the ``except`` clauses of the
innermost frame when it lands in a tight loop: the task's own handler may miss it, the
worker's frame around the task always gets it (the run ends as SoftTimeLimitExceeded).

:class:`Interruptible` makes it safe for the worker's own code: the exception can only be
raised while the task's function runs (:meth:`Interruptible.running`); one set just as the
function ends is cleared before the worker's code goes on.

On interpreters without that function (not CPython), :data:`AVAILABLE` is False and
nothing is raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Iterator, Optional, Type

__all__ = ['AVAILABLE', 'Interruptible']

_set_async_exc = getattr(getattr(ctypes, 'pythonapi', None), 'PyThreadState_SetAsyncExc', None)
AVAILABLE = _set_async_exc is not None
if _set_async_exc is not None:
    _set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
    _set_async_exc.restype = ctypes.c_int


def _raise_in(ident: int, exc_type: Optional[Type[BaseException]]) -> bool:
    if _set_async_exc is None:
        return False
    return bool(_set_async_exc(ident, exc_type))


class Interruptible:
    """One run of a function on one thread that another thread may interrupt. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ident: Optional[int] = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run the body as the interruptible part of the current thread (once)."""
        try:
            with self._lock:
                self._ident = threading.get_ident()
            yield
        finally:
            self._close()

    def _close(self) -> None:
        while True:  # an exception raised in this window ends the run anyway: drop it
            try:
                with self._lock:
                    ident, self._ident = self._ident, None
                    if ident is not None:
                        _raise_in(ident, None)  # clears one set but not yet raised
                return
            except BaseException:
                continue

    def interrupt(self, exc_type: Type[BaseException]) -> bool:
        """Make the running body raise ``exc_type`` at its next Python instruction.

        Returns:
            False when the body is not running (any more) or the interpreter cannot do it.
        """
        with self._lock:
            if self._ident is None:
                return False
            return _raise_in(self._ident, exc_type)
