"""Connecting: the broker addresses, the order they are tried in, and the retry policy.

A ``Connector`` belongs to one link and runs on its I/O thread. ``cycle(attempt)`` calls
``attempt()`` (which opens a connection with ``open_connection()`` and sets it up) until it
succeeds, the link stops, or the policy gives up:

* every failed attempt is described in the user's terms (``_advice``) and logged as one
  WARNING saying what was tried and when the next try comes;
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
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Union

import pika

from . import _advice, _pika
from ._retry import intervals
from .errors import ConnectionLost

if TYPE_CHECKING:
    import random

LOGGER = logging.getLogger(__name__)

__all__ = ['Connector', 'STOPPED', 'FAILOVER_STRATEGIES']

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
            if rng is None:
                import random  # only this strategy needs it: not at import

                rng = random.Random()
            rng.shuffle(self._ring)
        self._next = 0
        self.max_retries = max_retries
        start, step, top = interval
        self._policy = {'interval_start': start, 'interval_step': step, 'interval_max': top}
        self.last_error: Optional[str] = None
        self.last_advice = ''  # what to do about last_error (pika_rpc._advice)

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
        conn = pika.BlockingConnection([self.params[i] for i in self.order()])
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
        for number in itertools.count(1):
            if stop.is_set():
                return STOPPED
            try:
                attempt()
                return None
            except _pika.CONNECT_ERRORS as exc:
                self.last_error = _advice.describe(exc)
                self.last_advice = _advice.connect_advice(exc, self.options)
                on_failed()
                if isinstance(exc, _pika.FATAL_CONNECT_ERRORS) or (
                    self.max_retries is not None and number > self.max_retries
                ):
                    return self._give_up(number, time.monotonic() - began)
                interval = next(waits)
                LOGGER.warning(
                    '%s: cannot connect to %s (%s); retry %d in %.1f s',
                    self.name,
                    self.addresses(),
                    self.last_error,
                    number,
                    interval,
                )
                if stop.wait(interval):
                    return STOPPED
        raise AssertionError('unreachable')  # pragma: no cover

    def _give_up(self, attempts: int, elapsed: float) -> ConnectionLost:
        advice = f'. {self.last_advice}' if self.last_advice else ''
        err = ConnectionLost(
            f'cannot connect to {self.addresses()} after {attempts} attempt(s) '
            f'in {elapsed:.1f} s; last error: {self.last_error}{advice}'
        )
        LOGGER.error('%s', err)
        return err
