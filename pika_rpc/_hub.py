"""Reply queues shared by backends: one per process for each set of result settings.

A ``Hub`` owns what one reply queue needs: the result consumer (and so the queue's name, the
oid), the pending table its results go to, the link it is consumed on, and the link
listener that fails waits when the link gives up and clears those errors when it is back.
``RPCBackend`` objects are its *users*. The backends of ``App`` objects share one hub per set
of settings (``acquire(shared=True)``, keyed by the backend's class and every setting but the
``task_*`` and ``worker_*`` ones, which the result side never reads), so a process that
makes an App per request still holds one reply queue and one link. An ``RPCBackend`` made
directly has a hub of its own (its consumer's hooks are its own methods).

Releasing: ``release(timeout)`` (``RPCBackend.close``) lets go of one reference; the last
user fails what is still pending with ``ClosedError``, cancels the consumer, deletes the
queue and releases the link (blocking up to ``timeout``). A backend garbage-collected without
``close()`` lets go through a ``weakref.finalize`` (``release_soon``), which never blocks the
thread the collector ran on (it may be the I/O thread): when it was the last user, the
cleanup runs on a short-lived daemon thread.

Each backend keeps its own waits (``_pending.Owner``), so closing one App wakes only the
threads that wait through that App's backend; the others keep waiting on the same table.

Fork: the hubs live in ``_registry``'s per-process state, so a forked child starts with
none. Each backend's after-fork reset acquires a hub in the child (a new oid, an empty
table); the parent's hub is never touched again (``release_soon`` of a parent's hub in a
child does nothing), so the parent's queue is untouched.

Threads: the registry's lock guards the hubs and their user counts; ``_lock`` guards the link
reference; no lock is held across a broker round trip.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
import weakref
from typing import Any, Callable, List, Optional, Tuple

from . import _registry, serialization
from ._link import Link
from ._pending import PendingTable
from ._timeouts import deadline, remaining
from .config import Settings
from .errors import ClosedError, ConnectionLost, PikaRPCError

LOGGER = logging.getLogger(__name__)

__all__ = ['Hub', 'acquire', 'settings_key']

#: Settings the result side never reads: Apps that differ only in these share a reply queue.
_NOT_RESULT_SETTINGS = ('task_', 'worker_')


def settings_key(conf: Settings) -> Tuple:
    """What makes two backends' result sides the same (in memory only: it holds secrets)."""
    return tuple(
        (k, repr(v))
        for k, v in sorted(conf.as_dict().items())
        if not k.startswith(_NOT_RESULT_SETTINGS)
    )


def acquire(backend: Any, make_consumer: Callable[['Hub'], Any], shared: bool) -> 'Hub':
    """A hub for ``backend`` (its settings are ``backend.conf``), with one more user: the
    process's shared one for those settings when ``shared``, else a new one of its own.
    ``make_consumer(hub)`` makes the result consumer of a new hub. Never blocks on I/O."""
    proc = _registry.current()
    key = (type(backend), settings_key(backend.conf)) if shared else None
    with proc.lock:
        hub = proc.hubs.get(key) if shared else None
        if hub is None or hub.closed:
            hub = Hub(backend.conf, make_consumer, key)
            if shared:
                proc.hubs[key] = hub
        hub.users += 1
        hub.backends.add(backend)
        return hub


class Hub:
    """One reply queue and what it needs (see the module docstring). Thread-safe.

    It is also what its consumer calls its ``backend`` when shared (``conf``, ``accept``,
    ``on_out_of_band_result``): no App's backend is kept alive by it.
    """

    def __init__(
        self, conf: Settings, make_consumer: Callable[['Hub'], Any], key: Any = None
    ) -> None:
        self.key = key
        self.conf = conf
        self.accept = serialization.prepare_accept_content(
            conf.result_accept_content or conf.accept_content
        )
        self.pid = os.getpid()
        self.users = 0  # under the registry's lock
        # The users, for their hooks (under the registry's lock).
        self.backends: 'weakref.WeakSet[Any]' = weakref.WeakSet()
        self.closed = False  # under the registry's lock
        self._lock = threading.Lock()  # guards link; never held across I/O
        self.link: Optional[Link] = None
        self.pending = PendingTable(
            cache_max=conf.result_cache_max,
            cache_max_bytes=conf.result_cache_max_bytes,
            history_max=conf.pending_history_max,
            oob_max=conf.out_of_band_max,
            pending_max=conf.pending_max,
        )
        self.consumer = make_consumer(self)
        self.consumer._attach(str(uuid.uuid4()), self.pending, self.get_link)

    def __repr__(self) -> str:
        return f'<Hub {self.consumer.reply_queue} users={self.users} pid={self.pid}>'

    # ------------------------------------------------------------------ as the consumer's backend
    def on_out_of_band_result(self, task_id: str, message: Any) -> None:
        """Calls the hook of every backend that uses this hub (a hook set on one App's
        backend still runs); the first exception is raised after all ran."""
        error: Optional[BaseException] = None
        with _registry.current().lock:  # the users change under it
            backends = list(self.backends)
        for backend in backends:
            try:
                backend.on_out_of_band_result(task_id, message)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def _forget_parent_state(self) -> None:
        """After a fork each backend acquires a new hub by itself: nothing to do here."""

    # ------------------------------------------------------------------ the link
    def get_link(self) -> Link:
        """The link the queue is consumed on (acquired on first use, again if it stopped).

        Raises:
            ClosedError: the last user released this hub.
        """
        if self.closed:
            raise ClosedError(f'reply queue {self.consumer.reply_queue} was released')
        link = self.link
        if link is None or link.closed:
            with self._lock:
                if self.link is None or self.link.closed:
                    # First use, or the old link stopped (its I/O thread died): a new one,
                    # and the reply consumer subscribes again on it.
                    self.link = _registry.acquire_link_for(self.conf)
                    self.link.add_listener(self._on_link_event)
                link = self.link
        return link

    def _on_link_event(self, event: str, info: Any) -> None:  # I/O thread
        if event == 'gave_up':
            # Sticky: a wait that starts later hears it too, until a new cycle starts.
            self.pending.fail_pending(functools.partial(lost, info), sticky=True)
        elif event == 'connected':
            self.pending.clear_errors(ConnectionLost)
        elif event == 'closed' and not self.closed:
            # The link stopped under us (its I/O thread died, or it was closed): wake every
            # waiter now; the next call starts a new link (get_link).
            self.pending.fail_pending(functools.partial(lost, info))

    def revive_link(self, for_wait: bool) -> bool:
        """If the link gave up, start a new connection cycle (never blocks); True if it had.

        ``for_wait``: the caller then waits for that cycle's outcome, so the errors of the
        last cycle are forgotten first (on slots nobody waits on), and only then the cycle
        started: if it gives up too, its ``gave_up`` fails the wait (on the task's slot, or
        sticky for a slot the wait creates).
        """
        if self.pending.down is None:
            return False
        if for_wait:
            self.pending.clear_errors(ConnectionLost)
        link = self.link
        if link is not None and not link.closed:
            link.revive()
        return True

    # ------------------------------------------------------------------ users
    def release(self, timeout: Optional[float] = 10.0, backend: Any = None) -> None:
        """Let go of one reference (``backend``'s); the last one deletes the queue (blocks up
        to ``timeout``). A hub of another process (a fork's parent) is only dropped."""
        with _registry.current().lock:
            self.backends.discard(backend)
        if self.pid == os.getpid() and self._drop_user():
            self._shutdown(timeout)

    def release_soon(self) -> None:
        """``release`` for a finalizer: never blocks; the last user's cleanup runs on a
        daemon thread."""
        if self.pid == os.getpid() and self._drop_user():
            threading.Thread(
                target=self._shutdown, args=(10.0,), name='pika-rpc-release', daemon=True
            ).start()

    def _drop_user(self) -> bool:
        """One user fewer; True when it was the last (the hub is then closed)."""
        proc = _registry.current()
        with proc.lock:
            self.users -= 1
            if self.users > 0 or self.closed:
                return False
            self.closed = True
            if self.key is not None and proc.hubs.get(self.key) is self:
                del proc.hubs[self.key]
            return True

    def _shutdown(self, timeout: Optional[float]) -> None:
        dl = deadline(timeout)
        self.pending.fail_pending(
            lambda ids: ClosedError(f'backend closed while waiting for {", ".join(ids[:10])}')
        )
        with self._lock:
            link, self.link = self.link, None
        if link is None or link.pid != os.getpid():
            return
        oid = self.consumer.reply_queue
        try:
            if self.consumer._cancel(remaining(dl)):
                link.control('delete_queue', queue=oid, timeout=remaining(dl))
        except PikaRPCError as exc:
            LOGGER.warning(
                'could not delete reply queue %s at close: %s (it expires by itself)', oid, exc
            )
        finally:
            link.remove_listener(self._on_link_event)
            _registry.release_link(link, timeout=remaining(dl))


def lost(info: Any, ids: List[str]) -> ConnectionLost:
    """The error of waits whose results cannot arrive over the lost link."""
    if not ids:
        return ConnectionLost(f'{info}; no result can arrive until the link reconnects')
    return ConnectionLost(
        f'{info}; results of {len(ids)} pending task(s) cannot arrive: '
        f'{", ".join(ids[:10])}{" ..." if len(ids) > 10 else ""}'
    )
