"""kombu's connection retries on the process's shared link: ``ensure_connection``, the eager
connect of ``Connection.connect()``/``.connection``/``.channel()``/``.default_channel``,
``ensure`` and ``autoretry`` (``connection.Connection`` calls these; the connection is passed
in, duck-typed).

The link connects for every user of the process, under its own retry policy (``_connector``;
the ``broker_connection_*`` settings and ``broker_transport_options``); a ``Connection`` is a
handle on it. So an *attempt* here is the link's: waiting for one means waiting until the
link is open, or until one more of its connect attempts failed (``Link.failed_attempts``),
or until its own policy gave up. An idle link (never started, or given up) starts a new
cycle at once (``Link.revive``). Between attempts the caller waits its own interval (kombu's
sequence, ``_retry.intervals``) while the link may be in its own wait: the next attempt
comes at the later of the two, so the waits are *at least* the caller's. With
``transport_options={'max_retries': 0}`` (as kombu's own tests do) every attempt of the link
is one cycle, started by the caller: the caller's waits are then exact.

Decisions where kombu leaves room:

* An attempt that fails with wrong credentials, vhost or certificate (``_pika``'s
  ``FATAL_CONNECT_ERRORS``) is not retried: retrying cannot help (kombu raises those at once
  too, as irrecoverable).
* Errors raised when a policy gave up are ``OperationalError`` (a ``ConnectionLost``) when
  ``reraise_as_library_errors`` (kombu's ``OperationalError``), else ``ConnectionLost``. The
  text names the addresses, the attempts, the time spent, the last error and the advice
  (``_advice``). ``ensure`` retries ``ConnectionLost`` and ``TimeoutError`` (kombu's
  recoverable connection errors: socket errors, ``socket.timeout`` included) but never
  ``OperationalError`` or ``ClosedError``.
* A retry whose wait would end past ``timeout`` is not made (``_retry.retry_over_time``); an
  errback that raises is logged and the retries go on.

Threads: every function blocks its caller (never the I/O thread) and runs user callbacks
(``errback``, ``callback``, ``on_revive``) on the caller's thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple, Type

from . import _kombu_opts
from ._link import CLOSED, IDLE, OPEN, Link
from ._retry import retry_over_time
from ._timeouts import deadline, remaining
from ._urls import parse_url
from .errors import ClosedError, ConnectionLost, OperationalError, TimeoutError

__all__ = ['ensure_connection', 'eager_options', 'ensure', 'autoretry', 'RECOVERABLE']

LOGGER = logging.getLogger(__name__)

#: kombu's ``ensure_connection`` intervals (seconds).
ENSURE_INTERVALS = {'interval_start': 2, 'interval_step': 2, 'interval_max': 30}
#: ``ensure`` retries these (kombu's recoverable connection errors), except the two below.
RECOVERABLE: Tuple[Type[BaseException], ...] = (ConnectionLost, TimeoutError)
_FINAL = (ClosedError, OperationalError)
#: ``_pika.FATAL_CONNECT_ERRORS`` by name, as ``Link.last_error`` starts (``_advice.describe``).
FATAL_NAMES = frozenset(
    {'ProbableAuthenticationError', 'ProbableAccessDeniedError', 'SSLCertVerificationError'}
)
#: How often ``callback`` is called while an attempt is waited for (kombu: each second).
CALLBACK_EVERY = 1.0


def _quiet(exc: BaseException, interval: float) -> None:
    # The default errback: the link's connector already logs each failed attempt (WARNING).
    LOGGER.debug('still not connected (%s); next attempt in %s s', exc, interval)


def addresses(broker_url: Any) -> str:
    return ', '.join(f'{a.host}:{a.port} (vhost {a.virtual_host!r})' for a in parse_url(broker_url))


def _fatal(link: Link) -> bool:
    return (link.last_error or '').split(':', 1)[0] in FATAL_NAMES


def _attempt(link: Link, where: str, dl: Optional[float], callback: Optional[Callable]) -> None:
    """Wait for the link's next outcome: return when it is open; raise ``ConnectionLost`` when
    one more connect attempt failed, its cycle gave up, or ``dl`` passed."""
    if link.state == OPEN:
        return
    start, began = link.failed_attempts, time.monotonic()
    # An idle link (never started, or its cycle gave up) is started again. A cycle that is
    # giving up right now is not idle yet: it is started again once it is.
    revived = [link.revive()]

    def ended() -> bool:
        if link.state in (OPEN, CLOSED) or link.closed or link.failed_attempts > start:
            return True
        return link.state == IDLE and not revived[0]

    while True:
        left = remaining(dl)
        wait = (
            left
            if callback is None or (left is not None and left < CALLBACK_EVERY)
            else CALLBACK_EVERY
        )
        if link.wait_until_state(ended, wait):
            if link.state == IDLE and link.failed_attempts == start and not link.closed:
                revived[0] = link.revive()
                continue
            break
        if left is not None and wait is not None and left <= wait:  # wait: set when left is
            break
        callback()  # type: ignore[misc]
    if link.state == OPEN:
        return
    if link.state == CLOSED or link.closed:
        raise ClosedError(f'{link.name} is closed')
    if link.failed_attempts > start:
        advice = f'. {link.last_advice}' if link.last_advice else ''
        raise ConnectionLost(f'cannot connect to {where}: {link.last_error}{advice}')
    raise ConnectionLost(
        f'cannot connect to {where}: no connect attempt ended within '
        f'{time.monotonic() - began:.1f} s (each may take broker_connection_timeout)'
    )


def ensure_connection(
    conn: Any,
    errback: Optional[Callable[[BaseException, float], Any]] = None,
    max_retries: Optional[int] = None,
    interval_start: float = 2,
    interval_step: float = 2,
    interval_max: float = 30,
    callback: Optional[Callable[[], Any]] = None,
    reraise_as_library_errors: bool = True,
    timeout: Optional[float] = None,
) -> None:
    """Wait until ``conn``'s link is open (kombu's ``Connection.ensure_connection``).

    Up to ``max_retries`` retries after the first failed attempt (None: no limit) and
    ``timeout`` seconds in all (None: no limit); ``errback(exc, interval)`` after each failed
    attempt that is retried, ``callback()`` about every second while an attempt is waited
    for. Blocks the caller.

    Raises:
        OperationalError: (``reraise_as_library_errors``) the retries or the time ran out, or
            retrying cannot help; else ``ConnectionLost`` with the same text.
        ClosedError: the link was closed meanwhile.
    """
    link = conn.link
    if link.state == OPEN:
        return
    where = addresses(conn.settings.broker_url)
    dl, began, tries = deadline(timeout), time.monotonic(), itertools.count(1)

    def attempt() -> None:
        next(tries)
        _attempt(link, where, dl, callback)

    try:
        retry_over_time(
            attempt,
            ConnectionLost,
            None,
            dl,
            max_retries=max_retries,
            interval_start=interval_start,
            interval_step=interval_step,
            interval_max=interval_max,
            errback=errback or _quiet,
            is_fatal=lambda exc: isinstance(exc, ClosedError) or _fatal(link),
        )
    except ClosedError:
        raise
    except ConnectionLost as exc:
        cls = OperationalError if reraise_as_library_errors else ConnectionLost
        made, elapsed = next(tries) - 1, time.monotonic() - began
        why = f'last error: {link.last_error}' if link.last_error else 'no attempt ended'
        advice = f'. {link.last_advice}' if link.last_error and link.last_advice else ''
        raise cls(
            f'cannot connect to {where} ({made} attempt(s) in {elapsed:.1f} s); {why}{advice}'
        ) from exc


def eager_options(conn: Any) -> Dict[str, Any]:
    """kombu's ``_extract_failover_opts``: how ``.default_channel`` (and here ``connect()``,
    ``.connection``, ``.channel()``) wait. ``timeout``: ``connect_retries_timeout`` of the
    transport options, else ``connect_timeout`` (``broker_connection_timeout``);
    ``max_retries``: the transport options' (0 when ``broker_connection_retry`` is False,
    else None: bounded by the timeout); intervals, ``errback``, ``callback``: the transport
    options', else ``ensure_connection``'s."""
    settings = conn.settings
    opts = settings.broker_transport_options
    out: Dict[str, Any] = dict(ENSURE_INTERVALS)
    out['timeout'] = _kombu_opts.value(opts, 'connect_retries_timeout', conn.connect_timeout)
    out['max_retries'] = _kombu_opts.value(opts, 'max_retries', None)
    for key in ('interval_start', 'interval_step', 'interval_max', 'errback', 'callback'):
        if key in opts:
            out[key] = opts[key]
    if not settings.broker_connection_retry:
        out['max_retries'] = 0
    return out


def ensure(
    conn: Any,
    obj: Any,
    fun: Callable[..., Any],
    errback: Optional[Callable[[BaseException, float], Any]] = None,
    max_retries: Optional[int] = None,
    interval_start: float = 1,
    interval_step: float = 1,
    interval_max: float = 1,
    on_revive: Optional[Callable[[Any], Any]] = None,
    retry_errors: Optional[Tuple[Type[BaseException], ...]] = None,
) -> Callable[..., Any]:
    """kombu's ``Connection.ensure``: ``fun`` wrapped to retry on connection errors.

    The wrapper calls ``fun(*args, **kwargs)``; on a recoverable error (:data:`RECOVERABLE`)
    it calls ``errback(exc, 0)``, waits for the connection (``ensure_connection`` with the
    retries left and these intervals), calls ``obj.revive(default_channel)`` and
    ``on_revive(default_channel)``, and calls ``fun`` again; errors of ``retry_errors`` are
    retried without that. After ``max_retries`` retries the error is raised.
    """
    retry_errors = tuple(retry_errors or ())

    def _ensured(*args: Any, **kwargs: Any) -> Any:
        for retries in itertools.count():
            try:
                return fun(*args, **kwargs)
            except retry_errors:
                if max_retries is not None and retries >= max_retries:
                    raise
            except RECOVERABLE as exc:
                if isinstance(exc, _FINAL) or (max_retries is not None and retries >= max_retries):
                    raise
                if errback is not None:
                    errback(exc, 0)
                left = None if max_retries is None else max(max_retries - retries, 1)
                ensure_connection(
                    conn,
                    errback,
                    left,
                    interval_start,
                    interval_step,
                    interval_max,
                    reraise_as_library_errors=False,
                )
                channel = conn.default_channel
                obj.revive(channel)
                if on_revive is not None:
                    on_revive(channel)
        raise AssertionError('unreachable')  # pragma: no cover

    name = getattr(fun, '__name__', type(fun).__name__)
    _ensured.__name__ = f'{name}(ensured)'
    _ensured.__doc__ = getattr(fun, '__doc__', None)
    return _ensured


def autoretry(
    conn: Any, fun: Callable[..., Any], channel: Any = None, **ensure_options: Any
) -> Callable[..., Any]:
    """kombu's ``Connection.autoretry``: ``fun(*args, channel=..., **kwargs)`` retried as by
    :func:`ensure`; the wrapper returns ``(result, channel)``. Without ``channel`` the
    connection's default channel is used, waited for with the eager options updated by
    ``ensure_options`` (so its retries and errback apply to the first connect too)."""
    channels = [channel]

    class Revival:
        __name__ = getattr(fun, '__name__', 'autoretry')
        __doc__ = getattr(fun, '__doc__', None)

        def revive(self, new: Any) -> None:
            channels[0] = new

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if channels[0] is None:
                opts = eager_options(conn)
                keys = ('errback', 'max_retries', 'interval_start', 'interval_step', 'interval_max')
                opts.update({k: ensure_options[k] for k in keys if k in ensure_options})
                ensure_connection(conn, **opts)
                self.revive(conn.default_channel)
            return fun(*args, channel=channels[0], **kwargs), channels[0]

    revival = Revival()
    return ensure(conn, revival, revival, **ensure_options)
