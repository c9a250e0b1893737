"""The retry policy: kombu's knobs and intervals, one deadline, a stop Event.

Intervals follow kombu 5.7's ``retry_over_time``: the float range from ``interval_start``
by ``interval_step`` while it stays <= ``interval_start + interval_max``, then its last
value forever, each value capped at ``interval_max``. With Celery's publish policy
(start 0, step 0.2, max 1) the waits are 0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0, 1.0, ...
(the float sums are kombu's too); with the RPC backend's (0, 1, 1): 0, 1, 1, ...; with
``ensure_connection``'s (2, 2, 30): 2, 4, ..., 28, 30, 30, ... (kombu < 5.7 did not cap
at ``interval_max`` and would go on to 32 there).

Where this differs from kombu, on purpose:

* The deadline ``dl`` (``_timeouts.deadline()``, monotonic) ends the retries: a retry is
  given up when the time left is not more than the next wait, so no attempt is started
  after the deadline. ``max_retries=None`` means "until the deadline" (forever if ``dl`` is
  None too, until ``stop`` is set).
* Waits are ``stop.wait(interval)``: setting ``stop`` (``close()``) cuts a backoff short and
  the last error is raised at once.
* The errback is ``errback(exc, interval)`` (kombu's documented ``Connection.ensure`` form);
  its return value is ignored and an exception it raises is logged and swallowed.
* Some errors are never retried: see :func:`never_retried`; ``is_fatal`` adds to it.

This runs on whatever thread calls it; callers that must not run user code on their thread
(the I/O thread, where user code never runs) pass an errback that hands off to the
callback thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, Tuple, Type, TypeVar, Union

from ._timeouts import remaining
from .errors import AccessRefused, NotSupportedByRabbitMQ, PreconditionFailed, Unroutable

__all__ = ['retry_over_time', 'intervals', 'never_retried', 'FATAL_REPLY_CODES']

LOGGER = logging.getLogger(__name__)

T = TypeVar('T')
Catch = Union[Type[BaseException], Tuple[Type[BaseException], ...]]

#: AMQP reply codes that retrying cannot fix: 403 ACCESS_REFUSED, 406 PRECONDITION_FAILED,
#: 540 NOT_IMPLEMENTED. (404 is fatal only for a passive declare: the caller says so.)
FATAL_REPLY_CODES = frozenset({403, 406, 540})


def never_retried(exc: BaseException) -> bool:
    """True for an error no retry can fix (argument clash, access refused, unsupported).

    Looks at ``exc`` and its ``__cause__`` (a pika error translated ``from exc``): our
    ``PreconditionFailed``/``AccessRefused``/``NotSupportedByRabbitMQ``/``Unroutable``, or a
    ``reply_code`` (as pika's ``ChannelClosed``/``ConnectionClosed`` carry) in
    :data:`FATAL_REPLY_CODES`.
    """
    for err in (exc, exc.__cause__):
        if err is None:
            continue
        if isinstance(err, (PreconditionFailed, AccessRefused, NotSupportedByRabbitMQ, Unroutable)):
            return True
        if getattr(err, 'reply_code', None) in FATAL_REPLY_CODES:  # pika's own errors
            return True
    return False


def intervals(policy: Optional[Mapping[str, Any]] = None) -> Iterator[float]:
    """The endless sequence of waits for ``policy`` (kombu 5.7's sequence; see module doc).

    Missing keys default to the RPC backend's policy: start 0, step 1, max 1.

    Raises:
        ValueError: a negative interval.
    """
    policy = policy or {}
    start = _seconds('interval_start', policy.get('interval_start', 0))
    step = _seconds('interval_step', policy.get('interval_step', 1))
    cap = _seconds('interval_max', policy.get('interval_max', 1))
    return _interval_iter(start, step, cap)


def _interval_iter(start: float, step: float, cap: float) -> Iterator[float]:
    stop, current = start + cap, float(start)
    while True:
        if current <= stop:
            value, current = current, current + step
        else:  # overshot: repeat the last value forever
            value = current - step
        yield min(value, cap)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f'{name} must be a number of seconds >= 0, got {value!r}')
    return float(value)


def _log_retry(exc: BaseException, interval: float) -> None:
    LOGGER.warning('%s: %s; retry in %s s', type(exc).__name__, exc, interval)


def retry_over_time(
    fn: Callable[[], T],
    catch: Catch,
    stop: Optional[threading.Event],
    dl: Optional[float],
    *,
    max_retries: Optional[int],
    interval_start: float = 0,
    interval_step: float = 1,
    interval_max: float = 1,
    errback: Optional[Callable[[BaseException, float], Any]] = None,
    is_fatal: Optional[Callable[[BaseException], bool]] = None,
) -> T:
    """Call ``fn()`` until it returns, retrying errors of type ``catch``; return its value.

    Blocks, between attempts, in ``stop.wait(interval)`` only; runs on the calling thread.
    An error of type ``catch`` is retried after calling ``errback(exc, interval)`` (default:
    a WARNING "retry in N s") and waiting ``interval``, unless one of these holds, in which
    case it is re-raised unchanged (the caller wraps it):

    * ``never_retried(exc)`` or ``is_fatal(exc)`` is true;
    * ``max_retries`` retries were already made (``max_retries=0``: one call only;
      ``None``: no count limit);
    * ``stop`` is set, before or during the wait;
    * ``dl`` is not None and the time left until it is <= the next interval.

    Errors not of type ``catch`` propagate at once.

    Args:
        fn: the attempt; takes no arguments.
        catch: exception class or tuple of classes worth retrying.
        stop: set it to end retrying (``close()``); None = cannot be cut short.
        dl: a ``_timeouts.deadline()`` value, or None for no deadline.

    Raises:
        ValueError: ``max_retries`` negative or not an int, or a negative interval.
    """
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    ):
        raise ValueError(f'max_retries must be None or an int >= 0, got {max_retries!r}')
    waits = intervals(
        {
            'interval_start': interval_start,
            'interval_step': interval_step,
            'interval_max': interval_max,
        }
    )
    stop = stop if stop is not None else threading.Event()
    report = errback if errback is not None else _log_retry
    for retries in itertools.count():
        try:
            return fn()
        except catch as exc:
            if never_retried(exc) or (is_fatal is not None and is_fatal(exc)):
                raise
            if max_retries is not None and retries >= max_retries:
                raise
            if stop.is_set():
                raise
            interval = next(waits)
            left = remaining(dl)
            if left is not None and left <= interval:
                raise
            try:
                report(exc, interval)
            except Exception:  # a hook must not end the retries
                LOGGER.error('retry errback %r raised; retrying anyway', report, exc_info=True)
            if stop.wait(interval):  # set by close(): give up now
                raise
    raise AssertionError('unreachable')  # pragma: no cover
