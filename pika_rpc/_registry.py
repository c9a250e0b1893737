"""The process's links: one per broker address list, shared, started lazily, fork-safe.

Every ``RPCBackend``, ``Producer``/``Consumer`` with ``channel=None`` and ``Worker`` of a
process that talks to the same broker(s) shares one ``Link`` (one connection, one I/O
thread: a process holds one connection per broker however many objects use it).
``acquire_link`` makes the caller one of its users, ``release_link`` lets go, and the last
user out closes it (bounded).

Fork: ``os.register_at_fork(after_in_child=...)`` and a pid check at every
``current()`` call replace the registry in the child with an empty one, with new locks.
The inherited links are kept in a list and never used again: no AMQP close, no socket
shutdown, no write to their wake-up pipe, so the parent's connection is untouched.
Objects that cache a link or hold long-lived locks (apps, backends, workers,
``Connection``s and ``Consumer``s) register in ``live`` and are told to forget their parent's
state through ``_forget_parent_state()``: new locks (a parent thread may have held one at the
fork, and it would stay held in the child), no parent link. Module-level locks of modules
below this one are made anew by their own ``os.register_at_fork`` hook (``serialization``,
``_threads``), which cannot import this module.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

from . import _kombu_opts
from ._link import Link
from ._threads import SerialExecutor
from .config import Settings, connection_options, connection_retry_policy

LOGGER = logging.getLogger(__name__)

#: Links of an ancestor process, kept referenced so no finalizer ever touches their socket.
_inherited: List[Any] = []


class _Process:
    __slots__ = ('pid', 'lock', 'links', 'users', 'live', 'callbacks', 'hubs')

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.links: Dict[Tuple, Link] = {}
        self.users: Dict[Tuple, int] = {}
        self.live: 'weakref.WeakSet[Any]' = weakref.WeakSet()
        self.callbacks = SerialExecutor('pika-rpc-callbacks')
        self.hubs: Dict[Any, Any] = {}  # shared reply queues (_hub), by settings


_proc = _Process()


def _after_fork_in_child() -> None:
    global _proc
    old, _proc = _proc, _Process()
    _inherited.append(old)
    for link in old.links.values():
        link.abandon()
    for obj in list(old.live):
        try:
            obj._forget_parent_state()
        except Exception:
            LOGGER.exception('after fork: %r could not reset', obj)
        _proc.live.add(obj)


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> _Process:
    """This process's registry (after a fork, a fresh one). Any thread."""
    if _proc.pid != os.getpid():
        _after_fork_in_child()
    return _proc


def register_live(obj: Any) -> None:
    """Have ``obj._forget_parent_state()`` called in a forked child."""
    current().live.add(obj)


def link_key(options: List[dict]) -> Tuple:
    return tuple(tuple(sorted((k, repr(v)) for k, v in o.items())) for o in options)


def acquire_link(options: List[dict], **link_kwargs: Any) -> Link:
    """The process's link for these broker options; the caller becomes one of its users.
    A link without publisher confirms (``confirms=False``), or whose callers never write
    to the socket themselves (``direct_writes=False``), is another link (connection): a
    setting that changes how the link publishes is never inherited from another user."""
    proc = current()
    key = link_key(options)
    for name in ('confirms', 'direct_writes'):
        if link_kwargs.get(name, True) is False:
            key += ((name, False),)
    with proc.lock:
        link = proc.links.get(key)
        if link is None or link.closed:
            link = Link(options, callbacks=proc.callbacks, **link_kwargs)
            proc.links[key] = link
            proc.users[key] = 0
        proc.users[key] += 1
        return link


def acquire_link_for(settings: Settings) -> Link:
    """``acquire_link`` with the broker options, retry policy, failover strategy and bounds
    of ``settings`` (the first user's, when the link exists already), and publisher confirms
    unless ``broker_transport_options`` say ``confirm_publish=False`` (kombu's name)."""
    policy = connection_retry_policy(settings)
    return acquire_link(
        connection_options(settings),
        confirms=_kombu_opts.confirms(settings.broker_transport_options),
        handoff_max=settings.handoff_max,
        direct_writes=settings.direct_writes,
        failover_strategy=settings.broker_failover_strategy,
        max_connect_retries=policy['max_retries'],
        connect_interval=(
            policy['interval_start'],
            policy['interval_step'],
            policy['interval_max'],
        ),
    )


def release_link(link: Link, timeout: Optional[float] = 5.0) -> None:
    """Let go of ``link``; the last user out closes it. A link of another process is dropped."""
    proc = current()
    if link.pid != proc.pid:
        return
    with proc.lock:
        for key, candidate in list(proc.links.items()):
            if candidate is link:
                proc.users[key] -= 1
                if proc.users[key] > 0:
                    return
                del proc.links[key], proc.users[key]
                break
    link.close(timeout)


@atexit.register
def _close_at_exit() -> None:
    proc = _proc
    if proc.pid != os.getpid():
        return
    for obj in list(proc.live):
        closer = getattr(obj, '_close_at_exit', None)
        if closer is not None:
            try:
                closer()
            except Exception:
                LOGGER.debug('error closing %r at exit', obj, exc_info=True)
    with proc.lock:
        all_links, proc.links, proc.users = list(proc.links.values()), {}, {}
    for link in all_links:
        link.close(2.0)
