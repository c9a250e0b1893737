"""``ConnectionPool`` and ``ChannelPool``: kombu's pools (``kombu.connection``'s), on the
process's shared link.

A pool lends at most ``limit`` resources (None or 0: no limit) with ``acquire(block=False,
timeout=None)``; each goes back with its ``release()`` (also on leaving a ``with`` block).
What differs from kombu follows from the link: a pooled connection is a handle on the
process's one connection for its broker, so every handle of a pool shares it, and a pool
bounds how many *users* borrow at once, not how many sockets are open.

* ``ConnectionPool(connection, limit)`` lends :class:`PooledConnection` handles made with
  ``connection``'s settings. A handle given back stays connected (its share of the link is
  kept) for the next borrower. One given back after an exception in its ``with`` block is
  first closed (as kombu's, so a borrower never inherits a broken connection): it lets go
  of its share of the link, and the next borrower's first use connects again.
* ``ChannelPool(connection, limit)`` lends ``connection.channel()`` handles.
* Past ``limit``, ``acquire()`` raises ``LimitExceeded`` at once, or with ``block`` waits for
  a release up to ``timeout`` (None: no limit) and then raises it. A closed pool
  (``force_close_all()``) raises ``RuntimeError`` (kombu's).

Threads: any thread; thread-safe (one lock and condition, as ``queue.Queue``'s).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, List, Optional, Set, Tuple

from ._timeouts import deadline, remaining
from .connection import Channel, Connection, register_factory
from .errors import LimitExceeded

__all__ = ['ConnectionPool', 'ChannelPool', 'PooledConnection', 'PooledChannel', 'LimitExceeded']


class _Pool:
    """What both pools share: the lending, bounded by ``limit``."""

    LimitExceeded = LimitExceeded

    def __init__(self, connection: Connection, limit: Optional[int] = None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f'limit must be an int or None, got {limit!r}')
        if limit is not None and limit < 0:
            raise ValueError(f'limit must be >= 0, got {limit!r}')
        self.connection = connection
        self.limit = limit or None
        self._cond = threading.Condition(threading.Lock())
        self._free: List[Any] = []  # given back, newest last (lent first: LIFO, as kombu)
        self._lent: Set[Any] = set()
        self._closed = False

    def new(self) -> Any:
        raise NotImplementedError

    def close_resource(self, resource: Any) -> None:
        raise NotImplementedError

    def acquire(self, block: bool = False, timeout: Optional[float] = None) -> Any:
        """Lend a resource; give it back with its ``release()``. Blocks only with ``block``,
        up to ``timeout``.

        Raises:
            LimitExceeded: ``limit`` resources are lent (and, with ``block``, none came back
                within ``timeout``). RuntimeError: the pool was closed.
        """
        dl = deadline(timeout) if block else None
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError('Acquire on closed pool')
                if self._free:
                    resource = self._free.pop()
                    break
                if self.limit is None or len(self._lent) < self.limit:
                    resource = None
                    break
                left = remaining(dl)
                if not block or (left is not None and left <= 0):
                    raise LimitExceeded(f'{type(self).__name__}: all {self.limit} lent')
                self._cond.wait(left)
            if resource is None:
                resource = self.new()
            self._lent.add(resource)
        return resource

    def release(self, resource: Any) -> None:
        """Take ``resource`` back (a resource's own ``release()`` calls this). Idempotent."""
        with self._cond:
            if resource not in self._lent:
                return
            self._lent.discard(resource)
            closed = self._closed
            if not closed:
                self._free.append(resource)
            self._cond.notify()
        if closed:
            self.close_resource(resource)

    def replace(self, resource: Any) -> None:
        """Close ``resource`` (defective); it goes back to the pool closed when released."""
        self.close_resource(resource)

    def force_close_all(self) -> None:
        """Close every resource, lent or not, and the pool (``acquire`` raises after)."""
        with self._cond:
            self._closed = True
            every, self._free = list(self._free) + list(self._lent), []
            self._lent.clear()
            self._cond.notify_all()
        for resource in every:
            self.close_resource(resource)


class PooledConnection(Connection):
    """A connection lent by a :class:`ConnectionPool`: ``release()``/``close()`` give it back."""

    def __init__(self, pool: 'ConnectionPool') -> None:
        self._pool = pool
        self._setup(pool.connection.settings.copy(), None)

    def release(self, timeout: Optional[float] = 5.0) -> None:
        """Give the connection back to its pool (it stays connected)."""
        self._pool.release(self)

    close = release

    def _close(self) -> None:
        Connection.release(self)

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is not None:
            self._pool.replace(self)
        self.release()


class ConnectionPool(_Pool):
    """kombu's ``ConnectionPool`` (see the module docstring)."""

    def new(self) -> PooledConnection:
        return PooledConnection(self)

    def close_resource(self, resource: Any) -> None:
        resource._close()

    @contextlib.contextmanager
    def acquire_channel(self, block: bool = False) -> Iterator[Tuple[Connection, Channel]]:
        """``(connection, connection.default_channel)`` for a ``with`` block."""
        with self.acquire(block=block) as connection:
            yield connection, connection.default_channel


class PooledChannel(Channel):
    """A channel lent by a :class:`ChannelPool`: ``release()``/``close()`` give it back."""

    def __init__(self, pool: 'ChannelPool') -> None:
        super().__init__(pool.connection)
        self._pool = pool

    def release(self) -> None:
        self._pool.release(self)

    close = release


class ChannelPool(_Pool):
    """kombu's ``ChannelPool``: lends channels of ``connection`` (connecting first, eager)."""

    def new(self) -> PooledChannel:
        self.connection.channel()  # eager, as kombu's: raises when the broker is unreachable
        return PooledChannel(self)

    def close_resource(self, resource: Any) -> None:
        resource.is_open = False


register_factory('Pool', ConnectionPool)
register_factory('ChannelPool', ChannelPool)
