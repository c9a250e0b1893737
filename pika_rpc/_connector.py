"""Connecting: the broker addresses, the order they are tried in, and the retry policy.

A ``Connector`` belongs to one link and runs on its I/O thread. ``cycle(attempt)`` calls
``attempt()`` (which opens a connection with ``open_connection()`` and sets it up) until it
succeeds, the link stops, or the policy gives up:

* every failed attempt is logged as one WARNING in the user's terms (``_advice``): the
  masked URLs tried, what went wrong, and when the next try comes (or that this was the
  last); the advice (what to do) is added to the first WARNING of a cycle and whenever the
  reason changes. ``down`` then says the same for callers (``Link.unreachable``);
* the waits between attempts are the retry policy's (``_retry.intervals``: kombu's knobs,
  each wait capped at ``interval_max``); ``max_retries`` attempts after the first, or None
  for no limit;
* wrong credentials, vhost or certificate are not retried: retrying cannot help;
* giving up yields a ``ConnectionLost`` naming the addresses, the attempts, the time spent,
  the last error and what to do about it.

pika's ``BlockingConnection`` is given the whole address list and tries it in order within
one attempt. The order is the failover strategy's (``broker_failover_strategy``):
``'round-robin'`` starts with the first address and, after a connection was made, starts the
next attempt at the address after the one connected (kombu's rotation on failover);
``'shuffle'`` does the same over a list shuffled once, when the connector is made (one per
link, so per process: a fleet of processes spreads its first connections over the nodes,
where kombu would connect each to the first address).

pika's own log records of a failed attempt (about 7 ERROR lines and a traceback from
``pika.adapters.*``), and of a lost connection (3 ERROR lines and a traceback), say what our
WARNING says, in pika's terms. They are kept out of the user's logs by ``QuietConnects``, a
``logging.Filter`` added to pika's loggers that emit them: our I/O threads (for their whole
life, ``Link._run``) and any thread of ours inside ``open_connection`` are registered by
ident (``quiet_begin``/``quiet_end``), and a WARNING-or-higher record made on a registered
thread is demoted to DEBUG (kept, with its traceback, for whoever logs pika at DEBUG;
dropped otherwise). pika's levels are not changed, and the records of the application's own
pika connections (its threads) pass untouched.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

import pika

from . import _advice, _pika
from ._retry import intervals
from .errors import ConnectionLost

LOGGER = logging.getLogger(__name__)

__all__ = [
    'Connector',
    'STOPPED',
    'FAILOVER_STRATEGIES',
    'QuietConnects',
    'quiet_begin',
    'quiet_end',
]

#: Idents of our threads whose pika records are demoted (``QuietConnects``), with a count.
_quiet_threads: Dict[int, int] = {}
#: pika's loggers that log a failed connect attempt or a lost connection at ERROR (1.3, 1.4).
PIKA_LOGGERS = (
    'pika.adapters.utils.io_services_utils',
    'pika.adapters.utils.connection_workflow',
    'pika.adapters.blocking_connection',
    'pika.adapters.base_connection',
    'pika.adapters.select_connection',
    'pika.connection',
)


def quiet_begin() -> None:
    """Demote pika's WARNING+ records made on this thread (until ``quiet_end``; nests)."""
    me = threading.get_ident()
    _quiet_threads[me] = _quiet_threads.get(me, 0) + 1


def quiet_end() -> None:
    me = threading.get_ident()
    left = _quiet_threads.get(me, 1) - 1
    if left > 0:
        _quiet_threads[me] = left
    else:
        _quiet_threads.pop(me, None)


class QuietConnects(logging.Filter):
    """Demotes to DEBUG pika's WARNING+ records made on a registered thread of ours (see
    the module docstring); a record of any other thread passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.thread not in _quiet_threads:
            return True
        record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET = QuietConnects()
for _name in PIKA_LOGGERS:
    logging.getLogger(_name).addFilter(_QUIET)

#: The values of ``broker_failover_strategy``.
FAILOVER_STRATEGIES = ('round-robin', 'shuffle')

#: What ``Connector.cycle`` returns when the link was told to stop meanwhile.
STOPPED = 'stopped'


class Connector:
    """How one link connects (see the module docstring). I/O thread only, except the
    read-only ``last_error``/``last_advice``."""

    def __init__(
        self,
        options: List[dict],
        name: str,
        *,
        max_retries: Optional[int],
        interval: tuple,
        failover_strategy: str = 'round-robin',
        rng: Optional[random.Random] = None,
    ) -> None:
        if not options:
            raise ValueError('no broker address given')
        if failover_strategy not in FAILOVER_STRATEGIES:
            raise ValueError(
                f'failover_strategy must be one of {FAILOVER_STRATEGIES}, got {failover_strategy!r}'
            )
        self.options = list(options)
        self.name = name
        self.params = [_pika.connection_parameters(o, name) for o in self.options]
        # Indexes of params in failover order; the next connection tries _ring[_next] first.
        self._ring = list(range(len(self.params)))
        if failover_strategy == 'shuffle':
            (rng or random).shuffle(self._ring)
        self._next = 0
        self.max_retries = max_retries
        start, step, top = interval
        self._policy = {'interval_start': start, 'interval_step': step, 'interval_max': top}
        self.last_error: Optional[str] = None  # _advice.describe: technical, for matching
        self.last_reason = ''  # the same in the user's terms (_advice.reason)
        self.last_advice = ''  # what to do about last_error (pika_rpc._advice)
        self.where = _advice.where(self.options)  # masked URLs, in failover-list order
        self.down: Optional[str] = None  # why callers cannot be served now (summary())

    def addresses(self) -> str:
        return ', '.join(f'{p.host}:{p.port} (vhost {p.virtual_host!r})' for p in self.params)

    def order(self) -> List[int]:
        """Indexes of the addresses (into ``params``) in the order the next attempt tries."""
        return self._ring[self._next :] + self._ring[: self._next]

    def connected_to(self, host: str, port: int) -> None:
        """A connection to ``host:port`` was made: the next one starts at the address after it
        (the first of the current order with that host and port: pika tried them in order)."""
        count = len(self._ring)
        for step in range(count):
            position = (self._next + step) % count
            p = self.params[self._ring[position]]
            if (p.host, p.port) == (host, port):
                self._next = (position + 1) % count
                return

    def open_connection(self) -> Any:
        """A new ``BlockingConnection`` to the first address that answers, in failover order.
        Blocks (bounded by each address's connection timeout); raises one of
        ``_pika.CONNECT_ERRORS``."""
        quiet_begin()
        try:
            conn = pika.BlockingConnection([self.params[i] for i in self.order()])
        finally:
            quiet_end()
        self.connected_to(*_pika.connected_address(conn))
        return conn

    def cycle(
        self, attempt: Callable[[], None], on_failed: Callable[[], None], stop: threading.Event
    ) -> Union[None, str, ConnectionLost]:
        """Call ``attempt()`` until it returns. After each failure ``on_failed()`` drops
        what the attempt left, then the next wait passes (cut short by ``stop``).

        Returns None when an attempt succeeded, ``STOPPED`` when ``stop`` was set, or the
        ``ConnectionLost`` to fail everything with when the policy gave up.
        """
        waits = intervals(self._policy)
        began = time.monotonic()
        said = ''  # the reason the advice was last given for, in this cycle
        for number in itertools.count(1):
            if stop.is_set():
                return STOPPED
            try:
                attempt()
                self.down = None
                return None
            except _pika.CONNECT_ERRORS as exc:
                self.last_error = _advice.describe(exc)
                self.last_reason = _advice.reason(exc, self.params[0].socket_timeout)
                self.last_advice = _advice.connect_advice(exc, self.options)
                LOGGER.debug('%s: connect attempt %d failed: %s', self.name, number, exc)
                last = isinstance(exc, _pika.FATAL_CONNECT_ERRORS) or (
                    self.max_retries is not None and number > self.max_retries
                )
                elapsed = time.monotonic() - began
                interval = 0.0 if last else next(waits)
                self.down = self.summary(number, elapsed, None if last else interval)
                on_failed()
                advice = f'. {self.last_advice}' if self.last_reason != said else ''
                said = self.last_reason
                LOGGER.warning(
                    'Cannot connect to %s: %s; %s%s',
                    self.where,
                    self.last_reason,
                    f'giving up after {_attempts(number)} in {elapsed:.1f} s'
                    if last
                    else f'retrying in {interval:.1f} s ({_attempt_of(number, self.max_retries)})',
                    advice,
                )
                if last:
                    return ConnectionLost(self.down)
                if stop.wait(interval):
                    return STOPPED
        raise AssertionError('unreachable')  # pragma: no cover

    def summary(self, attempts: int, elapsed: float, retry_in: Optional[float]) -> str:
        """The state of a failing cycle for callers and ``ConnectionLost``: the URLs, the
        reason, the attempts and time, whether it goes on, and the advice."""
        going = 'gave up' if retry_in is None else f'next attempt in {retry_in:.1f} s'
        advice = f'. {self.last_advice}' if self.last_advice else ''
        return (
            f'cannot connect to {self.where}: {self.last_reason} ({_attempts(attempts)} in '
            f'{elapsed:.1f} s; {going}){advice}'
        )


def _attempts(n: int) -> str:
    return f'{n} attempt{"s" if n != 1 else ""}'


def _attempt_of(n: int, max_retries: Optional[int]) -> str:
    return f'attempt {n}' + ('' if max_retries is None else f' of {max_retries + 1}')
