"""Declarations on the link's control channel, and their per-connection cache.

The control channel runs declarations, deletes, binds and purges for every user of the
link. A refusal (404, 406, 403...) closes that channel on the broker's side: the command
fails with a typed error (the link translates it) and the next command opens a new
channel, without touching the connection or the other channels.

``ensure_queue`` is the declaration of a queue that may exist with arguments we do not know
(a task queue named by a client, not configured here): a passive declare, and only when that
finds no queue (404), the declarations it carries (``steps``). An existing queue is never
declared again with other arguments (which would be a 406, or re-type it).

What was declared is remembered per connection under a key its caller chooses (``('queue',
name)``, ``('task_queue', name)``...): ``is_declared`` answers any thread, so a caller skips
a declaration already made on this connection. A new connection, or a queue deleted under
a consumer (the broker's Basic.Cancel), forgets them all.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

__all__ = ['Declarations', 'KINDS']

_COMMANDS: Dict[str, Callable[..., Any]] = {
    'declare_queue': lambda ch, **kw: ch.queue_declare(**kw),
    'declare_exchange': lambda ch, **kw: ch.exchange_declare(**kw),
    'bind_queue': lambda ch, **kw: ch.queue_bind(**kw),
    'unbind_queue': lambda ch, **kw: ch.queue_unbind(**kw),
    'bind_exchange': lambda ch, **kw: ch.exchange_bind(**kw),
    'unbind_exchange': lambda ch, **kw: ch.exchange_unbind(**kw),
    'delete_queue': lambda ch, **kw: ch.queue_delete(**kw),
    'delete_exchange': lambda ch, **kw: ch.exchange_delete(**kw),
    'purge_queue': lambda ch, **kw: ch.queue_purge(**kw),
}
#: The command kinds that are one ``BlockingChannel`` method each; ``Link.control`` also
#: takes ``'ensure_queue'`` (see the module docstring).
KINDS = frozenset(_COMMANDS)


class Declarations:
    """The control channel (I/O thread only) and the declaration cache (any thread)."""

    def __init__(self) -> None:
        self._channel: Any = None
        self._lock = threading.Lock()  # guards _done
        self._done: set = set()

    # ------------------------------------------------------------------ any thread
    def is_declared(self, key: Any) -> bool:
        with self._lock:
            return key in self._done

    def forget(self, key: Any) -> None:
        with self._lock:
            self._done.discard(key)

    def forget_all(self) -> None:
        with self._lock:
            self._done.clear()

    # ------------------------------------------------------------------ I/O thread
    def open(self, connection: Any) -> None:
        """A new connection: forget every declaration and open its control channel."""
        self.forget_all()
        self._channel = connection.channel()

    def drop(self) -> None:
        """The connection is gone, and its control channel with it."""
        self._channel = None

    def run(self, connection: Any, kind: str, kwargs: dict) -> Any:
        """Run one command (a ``BlockingChannel`` method), reopening the control channel if a
        refusal closed it. Raises pika's ``ChannelClosed`` when the broker refuses."""
        if kind == 'ensure_queue':
            return self._ensure_queue(connection, kwargs['queue'], kwargs['steps'])
        if self._channel is None or not self._channel.is_open:
            self._channel = connection.channel()
        return _COMMANDS[kind](self._channel, **kwargs)

    def _ensure_queue(self, connection: Any, queue: str, steps: Any) -> Any:
        """A passive declare of ``queue``; when there is none (404), run ``steps``."""
        try:
            return self.run(connection, 'declare_queue', dict(queue=queue, passive=True))
        except Exception as exc:  # pika's ChannelClosedByBroker (not imported at this level)
            if getattr(exc, 'reply_code', None) != 404:
                raise
        result = None
        for kind, kwargs in steps:
            step = self.run(connection, kind, kwargs)
            result = step if kind == 'declare_queue' else result
        return result

    def command(self, connection: Any, kind: str, kwargs: dict, cache_key: Optional[Any]) -> Any:
        """``run`` for a caller: remember ``cache_key`` on success; return the message count
        of a queue declare (None when unknown) or a purge, else None."""
        result = self.run(connection, kind, kwargs)
        if cache_key is not None:
            with self._lock:
                self._done.add(cache_key)
        if kind in ('declare_queue', 'ensure_queue'):
            return result.method.message_count if result is not None else None
        if kind == 'purge_queue':
            return result.method.message_count if result is not None else 0
        return None
