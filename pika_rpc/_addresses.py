"""kombu's address attributes of a ``Connection``: which address of the failover list is in
use, and ``switch()`` (a mixin of ``connection.Connection``).

``alt`` is the failover list (the ``broker_url`` setting, in the order it is tried);
``hostname``, ``port``, ``host``, ``userid``, ``virtual_host`` and ``transport_cls`` (the
URL's scheme as written: ``amqp``, ``pyamqp``, ``amqps``) describe the address the link is
open to, else the first of the list, as kombu's describe the URL it would connect to next.
``switch(url)`` puts ``url`` first in the list, keeping the others after it (kombu keeps its
alternates too), and releases the connection without reconnecting (as kombu); a URL that is
not AMQP's is refused before anything changes.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

from ._link import OPEN
from ._urls import BrokerAddress, parse_url, split_urls

__all__ = ['Addresses']


class Addresses:
    """The mixin; needs ``settings`` (``broker_url``), ``_link`` and ``release()``. Any
    thread; never blocks (``switch`` blocks as ``release`` does)."""

    settings: Any
    _link: Any
    release: Callable[[], None]

    @property
    def alt(self) -> List[str]:
        """The broker URLs of the failover list, in the order they are tried."""
        return split_urls(self.settings.broker_url)

    def _current(self) -> Tuple[str, BrokerAddress]:
        # The URL of the open address (the link knows host:port), else the first one.
        urls = self.alt
        addrs = parse_url(urls)
        link = self._link
        where = link.address if link is not None and link.state == OPEN else None
        for url, addr in zip(urls, addrs):
            if where == f'{addr.host}:{addr.port}':
                return url, addr
        return urls[0], addrs[0]

    @property
    def hostname(self) -> str:
        return self._current()[1].host

    @property
    def port(self) -> int:
        return self._current()[1].port

    @property
    def host(self) -> str:
        """``hostname:port`` (kombu's ``host``)."""
        addr = self._current()[1]
        return f'{addr.host}:{addr.port}'

    @property
    def userid(self) -> str:
        return self._current()[1].userid

    @property
    def virtual_host(self) -> str:
        return self._current()[1].virtual_host

    @property
    def transport_cls(self) -> str:
        """The scheme of the URL in use, as written (``amqp``, ``pyamqp``, ``amqps``)."""
        return self._current()[0].split('://', 1)[0].lower()

    def switch(self, conn_str: str) -> None:
        """Try ``conn_str`` first from now on (kombu's ``switch``): the failover list keeps
        the others after it. Releases the connection; does not reconnect.

        Raises:
            ValueError: ``conn_str`` is not an AMQP URL (nothing changes then).
        """
        parse_url(conn_str)
        urls = [conn_str] + [u for u in self.alt if u != conn_str]
        self.release()
        self.settings.broker_url = urls
