"""Broker URLs: parse them as kombu reads them, and mask their passwords for any text we show.

Pure: no I/O, no pika. ``config`` (settings, connection options) and ``findbroker`` (the
AMQP_URL probe) both read URLs through this module, so a URL means the same broker, and
shows the same mask, everywhere.

Choices:

* Each entry of a ``;``-separated failover list (or of a list of URLs) is a full URL parsed
  on its own: a missing user or password is ``guest``, a missing port the scheme's default,
  a missing vhost ``/``. (kombu would carry the previous entry's vhost into an entry that
  names none; we don't.) A bare hostname is refused, as is ``rpc://`` (a result backend).
* The mask is kombu's ``**``. :func:`mask_url` first removes the password by text, up to the
  *last* ``@`` of an entry (a password may hold an unescaped ``@`` or ``/``: the mask covers
  more, never less), and only then parses what is left to show it kombu style
  (``amqp://user:**@host:5672//``); text that does not parse is shown as redacted.
  :func:`redact` does the text part alone, for free text such as an exception message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple, Union
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    'BrokerAddress',
    'parse_url',
    'mask_url',
    'redact',
    'host_port',
    'split_urls',
    'DEFAULT_PORTS',
    'MASK',
]

#: The scheme's port when a URL names none.
DEFAULT_PORTS = {'amqp': 5672, 'amqps': 5671}
# kombu's transport names that mean AMQP 0-9-1 on the wire.
_SCHEMES = {'amqp': 'amqp', 'pyamqp': 'amqp', 'librabbitmq': 'amqp', 'amqps': 'amqps'}
#: What a password is replaced by (kombu's mask).
MASK = '**'


@dataclass(frozen=True, repr=False)
class BrokerAddress:
    """One broker of a (failover) broker URL. ``str``/``repr`` never show the password."""

    scheme: str  # 'amqp' or 'amqps'
    host: str = 'localhost'
    port: int = 5672
    virtual_host: str = '/'
    userid: str = 'guest'
    password: str = 'guest'
    options: Dict[str, str] = field(default_factory=dict, hash=False)  # URL query, as text
    port_explicit: bool = field(default=True, compare=False)  # False: the scheme's default

    @property
    def ssl(self) -> bool:
        """True for ``amqps://`` (``broker_use_ssl`` can also turn TLS on)."""
        return self.scheme == 'amqps'

    def as_uri(self, include_password: bool = False) -> str:
        """The URL, kombu style (vhost ``/`` written as ``//``); password ``**`` unless asked."""
        password = quote(self.password, safe='') if include_password else MASK
        host = f'[{self.host}]' if ':' in self.host else self.host
        vhost = '/' if self.virtual_host == '/' else quote(self.virtual_host, safe='')
        query = '&'.join(
            f'{quote(k, safe="")}={quote(v, safe="")}' for k, v in self.options.items()
        )
        return (
            f'{self.scheme}://{quote(self.userid, safe="")}:{password}@{host}:{self.port}'
            f'/{vhost}' + (f'?{query}' if query else '')
        )

    def __str__(self) -> str:
        return self.as_uri()

    def __repr__(self) -> str:
        return (
            f'BrokerAddress(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r}, '
            f'virtual_host={self.virtual_host!r}, userid={self.userid!r}, '
            f'password={MASK!r}, options={self.options!r})'
        )


# user:password@, greedy up to the last '@' of the entry. With a scheme, the user info follows
# '://'; without one, 'amqp:' followed by '//' is a scheme, not a user named 'amqp'.
_USERINFO = re.compile(
    r'(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/;\s]*:|[^:@/;\s]*:(?!//))'
    r'[^;\s]*@'
)


def redact(text: str) -> str:
    """``text`` with anything that could be a password (``user:…@``) replaced by ``**``.

    For any text, even one that is no URL at all (an exception message); never raises.
    """
    return _USERINFO.sub(lambda m: f'{m.group("head")}{MASK}@', text)


def split_urls(url: Union[str, Sequence[str]]) -> List[str]:
    """The entries of a ``;``-separated failover list (or of a list of such), stripped.

    Raises:
        TypeError: an entry that is not a str.
    """
    items = [url] if isinstance(url, str) else list(url)
    parts: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f'a broker URL must be a str, got {type(item).__name__}')
        parts.extend(p.strip() for p in item.split(';'))
    return [p for p in parts if p]


def parse_url(url: Union[str, Sequence[str]]) -> List[BrokerAddress]:
    """Parse a kombu-style broker URL, or a ``;``-separated failover list, into addresses.

    ``amqp://user:pass@host:port/vhost``: the path after the first ``/`` is the vhost,
    URL-unquoted, and an empty one is ``/`` (``amqp://h``, ``amqp://h/``, ``amqp://h//`` and
    ``amqp://h/%2F`` all mean ``/``). ``pyamqp://`` is ``amqp://``; ``amqps://`` is TLS on
    port 5671 by default. Query parameters stay in ``options`` as text.

    Raises:
        ValueError: an empty list, a non-AMQP scheme (``rpc://`` is a result backend URL), a
            bad port. Messages never contain the password.
        TypeError: an entry that is not a str.
    """
    urls = split_urls(url)
    if not urls:
        raise ValueError('no broker URL given')
    return [_parse_one(u) for u in urls]


def _parse_one(url: str) -> BrokerAddress:
    given = url.split('://', 1)[0].lower() if '://' in url else ''
    if not re.fullmatch(r'[a-z][a-z0-9+.-]*', given):
        raise ValueError(f'not a broker URL (expected amqp://...): {redact(url)!r}')
    if given == 'rpc':
        raise ValueError(
            "'rpc://' names the result backend (result_backend='rpc://'), not a "
            'broker; give the broker as amqp://user:password@host:port/vhost'
        )
    scheme = _SCHEMES.get(given)
    if scheme is None:
        raise ValueError(  # kombu's words first: code matching kombu's error still does
            f'Invalid transport scheme: {given!r}: pika_rpc speaks AMQP 0-9-1 '
            f'only (amqp://, amqps://, pyamqp://)'
        )
    # Parse the rest with generic URL rules, as kombu does.
    parts = urlsplit('http://' + url.split('://', 1)[1])
    if parts.fragment or url.endswith('#'):
        raise ValueError(
            f"'#' in broker URL {redact(url)!r}: quote special characters in "
            f"the user or password ('#' is %23, '/' is %2F, '@' is %40)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f'bad port in broker URL {redact(url)!r} (quote special characters '
            f'in the user or password: %2F for /, %23 for #)'
        ) from None
    path = parts.path[1:] if parts.path.startswith('/') else parts.path
    return BrokerAddress(
        scheme=scheme,
        host=unquote(parts.hostname or '') or 'localhost',
        port=port or DEFAULT_PORTS[scheme],
        virtual_host=unquote(path) or '/',
        userid=unquote(parts.username or '') or 'guest',
        password=unquote(parts.password or '') or 'guest',
        options=dict(parse_qsl(parts.query)),
        port_explicit=port is not None,
    )


def mask_url(url: Union[str, Sequence[str], None]) -> str:
    """``url`` with every password replaced by ``**`` (each entry of a failover list).

    A URL that parses is shown kombu style (``amqp://user:**@host:5672//``); other text is
    masked by pattern (:func:`redact`). Never raises for a str or a list of them; None
    gives ``''``.
    """
    if url is None:
        return ''
    text = redact(url if isinstance(url, str) else ';'.join(map(str, url)))
    try:
        return ';'.join(a.as_uri() for a in parse_url(text))
    except (ValueError, TypeError):
        return text


def host_port(url: Union[str, Sequence[str]]) -> Tuple[str, int]:
    """``(host, port)`` of the first broker of ``url`` (a failover list's first entry).

    Raises:
        ValueError, TypeError: as :func:`parse_url`.
    """
    first = parse_url(url)[0]
    return first.host, first.port
