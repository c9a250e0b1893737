"""Settings, connection options and retry policies: pure data, no I/O, no pika.

Setting names and defaults are Celery's (``result_expires``, ``broker_heartbeat``, ...);
broker URLs are read by ``_urls`` (as kombu reads them; ``parse_url``, ``mask_url`` and
``BrokerAddress`` are re-exported here for code that imported them from this module).
Choices made where Celery is silent:

* ``Settings(**conf)`` and ``update()`` raise ``TypeError`` for an unknown key, suggesting
  close matches: a typo in code should fail loudly. ``from_object()`` reads only the keys it
  knows from a module, object or mapping (a Celery config or Django settings holds many
  others) and logs a WARNING for a name that looks like a typo of a known key.
* ``broker_url`` may be a ``;``-separated failover list or a list of URLs, each entry a
  full URL (see ``_urls``); it is parsed when set, so a bad URL fails at once, not on the
  first connect.
* ``task_publish_retry_policy`` and ``result_backend_retry_policy`` given partially are merged
  over their defaults, so ``{'max_retries': 5}`` keeps the default intervals.
* ``result_expires`` ``None`` or ``0`` (Celery: "never expire") still gives the reply queue a
  one-day ``x-expires``, so a killed process leaks nothing for long.
* ``broker_connection_max_retries`` ``0`` or ``None`` means "until the call's deadline", as
  in Celery; ``broker_connection_retry=False`` means a single attempt.
* ``result_cache_max`` must be >= 1: Celery's ``-1`` (no cache) is refused because a
  result message is consumed once and cannot be read from the broker again, so final states
  must be kept here, in a bounded cache.
* ``result_cache_max_bytes`` (default 64 MiB, >= 1) bounds the same cache by the received
  body length of the results it keeps. Results nobody has read yet count toward it but are
  never dropped for it (they are bounded by ``pending_max``): while they fill it, results
  already read are dropped first. A single result larger than it is handed to the waiters
  of its task and not kept: a later ``get()`` or ``state`` of that id does not find it
  (``get_task_meta`` polls leave it in place until a ``get()`` reads it).
* Serializer names are not checked here; ``serialization.py`` does that when used.
* ``result_queue_type`` (``'classic'`` or ``'quorum'``; not a Celery setting): the reply
  queue's type. A classic one lives on one node; when that node is lost its results are
  lost (their waiters get ``ReplyQueueLost``) and the client moves to a new queue. A quorum
  one (RabbitMQ 3.9 or later) loses nothing while a majority of its nodes is up, for a Raft
  group per process; its ``x-delivery-limit`` is set (``QUORUM_DELIVERY_LIMIT``, see
  ``docs/wire-format.rst``).
* ``broker_failover_strategy``: ``'round-robin'`` (kombu's: the first connection tries the
  addresses in order, a reconnect starts after the address last connected) or
  ``'shuffle'``: unlike kombu's, the list is shuffled once per process, first connection
  included (a fleet does not all land on the first node), then rotated as round-robin.
  Callables (kombu accepts them) are refused.
* Queue types (``task_default_queue_type``, ``task_create_missing_queue_type``,
  ``broker_native_delayed_delivery_queue_type``) are ``'classic'`` or ``'quorum'``, as
  Celery checks them (Celery only when it uses them). ``task_queues`` is Celery's: a list
  of ``Queue`` objects, or a mapping of queue name to ``Queue.from_dict`` options.
* ``broker_consumer_retry_interval`` (1 s) and ``broker_consumer_max_retries`` (no limit;
  0 too, as for ``broker_connection_max_retries``) are pika_rpc's: how often a consumer
  whose re-subscription the broker refuses (its queue's node is down) is tried again, and
  how many refusals in a row end it (a ``Worker`` then fails).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from ._celery_settings import CELERY_DEFAULTS, CELERY_SETTINGS, OLD_NAMES
from ._kombu_opts import check as _check_kombu_opts
from ._kombu_opts import value as _kombu_opt
from ._queue_settings import QUEUE_TYPES
from ._setting_specs import (
    _SPECS,
    DEFAULT_RESULT_EXPIRES,
    RETRY_POLICY_KEYS,
    _number,
    merge_retry_policy,
)
from ._urls import DEFAULT_PORTS, MASK, BrokerAddress, mask_url, parse_url

__all__ = [
    'BrokerAddress',
    'parse_url',
    'mask_url',
    'Settings',
    'merge_retry_policy',
    'connection_options',
    'connection_retry_policy',
    'reply_queue_arguments',
    'QUEUE_TYPES',
    'DEFAULT_BROKER_URL',
    'DEFAULT_RESULT_EXPIRES',
    'RETRY_POLICY_KEYS',
    'QUORUM_DELIVERY_LIMIT',
]

LOGGER = logging.getLogger(__name__)

DEFAULT_BROKER_URL = 'amqp://guest:guest@localhost:5672//'
#: A quorum reply queue's x-delivery-limit: more returns than connection losses ever give.
QUORUM_DELIVERY_LIMIT = 1_000_000

# kombu Connection.ensure_connection's intervals (Celery reconnects with these).
_CONNECTION_INTERVALS = {'interval_start': 2, 'interval_step': 2, 'interval_max': 30}


_MISSING = object()
_SECRET = re.compile(r'pass|secret|token|key_password', re.I)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(_SPECS), n=3, cutoff=0.6)
    return f' (did you mean {" or ".join(map(repr, close))}?)' if close else ''


def _copy(value: Any) -> Any:
    return (
        dict(value)
        if isinstance(value, dict)
        else list(value)
        if isinstance(value, list)
        else value
    )


# ------------------------------------------------------------------- Settings


class Settings(Mapping):
    """pika_rpc's configuration: Celery setting names, validated on every write.

    A read-only ``Mapping`` of every known setting (``settings['result_expires']``,
    ``settings.get(...)``, ``dict(settings)``) with attribute access
    (``settings.result_expires``). Writes go through ``update()``, item or attribute
    assignment, and are validated as a whole: a failing update changes nothing.
    Reads resolve two defaults: ``broker_url`` None gives ``$AMQP_URL``, else
    ``amqp://guest:guest@localhost:5672//``; ``result_accept_content`` None gives
    ``accept_content``. Not thread-safe for writes; configure before sharing.

    Raises:
        TypeError: an unknown key (close matches are suggested) or a value of the wrong type.
        ValueError: a value out of range, or a broker URL that does not parse.
    """

    def __init__(self, **conf: Any) -> None:
        object.__setattr__(self, '_values', {k: _copy(d) for k, (d, _) in _SPECS.items()})
        #: Celery settings given that pika_rpc does not implement (each warned about once).
        object.__setattr__(self, '_unimplemented', {})
        self.update(conf)

    def update(self, mapping: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        """Validate every given key first, then apply them all.

        A Celery setting pika_rpc does not implement is kept aside, unused, with one WARNING
        naming it (the first time it is given); Celery's old upper-case names
        (``CELERY_ROUTES``) stand for their new ones."""
        items = dict(mapping or {}, **kwargs)
        checked, unimplemented = {}, {}
        for key, value in items.items():
            name = key if key in _SPECS else OLD_NAMES.get(key, key)
            if name in _SPECS:
                checked[name] = _SPECS[name][1](name, value)
            elif name in CELERY_SETTINGS:
                unimplemented[key] = value
            else:
                raise TypeError(f'unknown setting {key!r}{_suggest(key)}')
        self._values.update(checked)
        for key, value in unimplemented.items():
            if key not in self._unimplemented:
                name = OLD_NAMES.get(key, key)
                alias = '' if name == key else f" (Celery's {name!r})"
                LOGGER.warning(
                    'setting %r%s is a Celery setting pika_rpc does not implement: ignored',
                    key,
                    alias,
                )
            self._unimplemented[key] = value

    @property
    def unimplemented(self) -> Dict[str, Any]:
        """The Celery settings given that pika_rpc does not implement (and ignores)."""
        return dict(self._unimplemented)

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]  # KeyError for an unknown key
        if key == 'broker_url' and value is None:
            return os.environ.get('AMQP_URL') or DEFAULT_BROKER_URL
        if key == 'result_accept_content' and value is None:
            return list(self._values['accept_content'])
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(_SPECS)

    def __len__(self) -> int:
        return len(_SPECS)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            if name in self._unimplemented:
                return self._unimplemented[name]
            if name in CELERY_SETTINGS:  # not given: Celery's default, as app.conf reads
                return _copy(CELERY_DEFAULTS[name])
            raise AttributeError(f'unknown setting {name!r}{_suggest(name)}') from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith('_'):
            object.__setattr__(self, name, value)
        else:
            self.update({name: value})

    def copy(self) -> 'Settings':
        """An independent copy (nested dicts and lists copied one level)."""
        new = Settings()
        new._values.update({k: _copy(v) for k, v in self._values.items()})
        new._unimplemented.update(self._unimplemented)
        return new

    def as_dict(self, censored: bool = False) -> Dict[str, Any]:
        """Every setting, resolved; ``censored`` masks URLs and secret-looking options."""
        out = {k: _copy(self[k]) for k in _SPECS}
        if censored:
            out['broker_url'] = mask_url(out['broker_url'])
            for key, value in out.items():
                if isinstance(value, dict):
                    out[key] = {k: MASK if _SECRET.search(str(k)) else v for k, v in value.items()}
        return out

    def __repr__(self) -> str:
        changed = {
            k: v for k, v in self.as_dict(censored=True).items() if self._values[k] != _SPECS[k][0]
        }
        return f'Settings({", ".join(f"{k}={v!r}" for k, v in changed.items())})'

    def from_object(
        self, obj: Any, namespace: Optional[str] = None, *, silent: bool = False
    ) -> 'Settings':
        """Read the known settings from ``obj``; returns ``self``.

        ``obj`` is a mapping, any object with attributes (a module, Django's
        ``settings``), or an import path: ``'module'``, ``'module:attr'`` or
        ``'module.attr'``. Without ``namespace`` the names are the settings' own
        (``result_expires``); with ``namespace='CELERY'`` they are ``CELERY_`` plus the
        upper-cased name (``CELERY_RESULT_EXPIRES``, ``CELERY_TASK_ROUTES``), or the own
        name. Celery's old names (``CELERY_ROUTES``, ``BROKER_URL``) are read too, as
        Celery reads them; a new name wins over an old one. A Celery setting pika_rpc does
        not implement gets one WARNING naming it (``update``). Other names are ignored; one
        that looks like a typo of a known setting is logged as a WARNING.

        Raises:
            ImportError: ``obj`` names nothing importable (unless ``silent``).
            TypeError, ValueError: as ``update()``.
        """
        if isinstance(obj, str):
            try:
                obj = _import_object(obj)
            except ImportError:
                if silent:
                    return self
                raise
        prefix = '' if not namespace else namespace.upper().rstrip('_') + '_'

        if isinstance(obj, Mapping):
            mapping = obj

            def lookup(name: str) -> Any:
                return mapping[name] if name in mapping else _MISSING

            names = list(obj)
        else:

            def lookup(name: str) -> Any:
                return getattr(obj, name, _MISSING)

            try:
                names = dir(obj)
            except Exception:  # a lazy settings object may refuse
                names = []
        found = {}
        for key in {**_SPECS, **CELERY_SETTINGS}:
            forms = (prefix + key.upper(), key) if prefix else (key,)
            for name in (*forms, CELERY_SETTINGS.get(key)):
                value = lookup(name) if name else _MISSING
                if value is not _MISSING:
                    found[key] = value
                    break
        _warn_near_misses(names, prefix)
        self.update(found)
        return self


def _warn_near_misses(names: Sequence[Any], prefix: str) -> None:
    for name in names:
        if not isinstance(name, str) or name.startswith('_'):
            continue
        if prefix:
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
        elif name.islower():
            key = name
        else:
            continue
        if key in _SPECS or key in CELERY_SETTINGS or name in OLD_NAMES:
            continue
        close = difflib.get_close_matches(key, list(_SPECS), n=1, cutoff=0.9)
        if close:
            LOGGER.warning(
                'ignored setting %r: not a pika_rpc setting; did you mean %r?',
                name,
                prefix + close[0].upper() if prefix else close[0],
            )


def _import_object(path: str) -> Any:
    """``'pkg.mod'`` (a module), ``'pkg.mod:attr.sub'`` or ``'pkg.mod.attr'``."""
    if ':' in path:
        module, _, attr = path.partition(':')
    else:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path or '.' not in path:  # a missing import *inside* it
                raise
            module, _, attr = path.rpartition('.')
    obj = importlib.import_module(module)
    for part in attr.split('.') if attr else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f'{module!r} has no attribute {attr!r}') from None
    return obj


def connection_retry_policy(settings: Settings) -> Dict[str, Any]:
    """How the I/O thread retries connecting: Celery's settings over kombu's intervals.

    ``max_retries`` is 0 when ``broker_connection_retry`` is False, None ("until the
    call's deadline") when ``broker_connection_max_retries`` is 0 or None. Intervals are
    kombu ``ensure_connection``'s (2 s, +2 s, at most 30 s) unless
    ``broker_transport_options`` gives ``interval_start``/``_step``/``_max``/``max_retries``.
    """
    policy = dict(_CONNECTION_INTERVALS, max_retries=settings.broker_connection_max_retries or None)
    policy.update(
        {k: v for k, v in settings.broker_transport_options.items() if k in RETRY_POLICY_KEYS}
    )
    if not settings.broker_connection_retry:
        policy['max_retries'] = 0
    return merge_retry_policy(policy)


_TRUE, _FALSE = {'1', 'true', 'yes', 'on'}, {'0', 'false', 'no', 'off'}
_CERT_REQS = {
    'cert_none': 'CERT_NONE',
    'none': 'CERT_NONE',
    'cert_optional': 'CERT_OPTIONAL',
    'optional': 'CERT_OPTIONAL',
    'cert_required': 'CERT_REQUIRED',
    'required': 'CERT_REQUIRED',
}


def _query_number(addr: BrokerAddress, names: Sequence[str], default: Any) -> Any:
    for name in names:
        if name in addr.options:
            text = addr.options[name]
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f'{name}={text!r} in broker URL {addr.as_uri()!r} is not a number'
                ) from None
            return _number(name, value)
    return default


def _ssl_options(addr: BrokerAddress, use_ssl: Union[bool, dict]) -> Optional[dict]:
    flag = addr.options.get('ssl', '').lower()
    wanted = addr.ssl or (flag in _TRUE if flag in _TRUE | _FALSE else bool(use_ssl))
    if not wanted:
        return None
    opts = dict(use_ssl) if isinstance(use_ssl, dict) else {}
    opts.update({k[4:]: v for k, v in addr.options.items() if k.startswith('ssl_')})
    if isinstance(opts.get('cert_reqs'), str):
        import ssl  # stdlib; imported only when TLS is used

        name = _CERT_REQS.get(opts['cert_reqs'].lower())
        if name is None:
            raise ValueError(
                f'unknown cert_reqs {opts["cert_reqs"]!r} (use CERT_NONE, '
                f'CERT_OPTIONAL or CERT_REQUIRED)'
            )
        opts['cert_reqs'] = getattr(ssl, name)
    if isinstance(opts.get('check_hostname'), str):
        opts['check_hostname'] = opts['check_hostname'].lower() not in _FALSE
    opts.setdefault('server_hostname', addr.host)
    return opts


def connection_options(settings: Settings) -> List[Dict[str, Any]]:
    """What the I/O thread needs to build ``pika.ConnectionParameters``, one dict per broker.

    Keys: ``host``, ``port``, ``virtual_host``, ``userid``, ``password``, ``heartbeat``
    (int seconds, rounded up; 0 = off), ``connection_timeout`` and
    ``blocked_connection_timeout`` (seconds or None), ``ssl`` (None, or a dict of ssl
    options with ``server_hostname`` defaulting to the host) and ``uri`` (masked, for
    logs), ``client_properties`` (a dict). URL query parameters (``heartbeat``,
    ``connect_timeout`` or ``connection_timeout``, ``blocked_connection_timeout``, ``ssl``,
    ``ssl_*``) override the settings for their broker, and ``broker_transport_options``
    (``connect_timeout``, ``heartbeat``, ``client_properties``: ``_kombu_opts``)
    override both, as py-amqp's do in kombu. TLS without an explicit port uses 5671.

    Raises:
        ValueError: a query parameter that is not a number, an unknown ``cert_reqs``.
    """
    out = []
    transport = settings.broker_transport_options
    _check_kombu_opts(transport)
    for addr in parse_url(settings.broker_url):
        heartbeat = _query_number(addr, ('heartbeat',), settings.broker_heartbeat)
        heartbeat = _kombu_opt(transport, 'heartbeat', heartbeat)
        ssl_opts = _ssl_options(addr, settings.broker_use_ssl)
        port = addr.port if addr.port_explicit else DEFAULT_PORTS['amqps' if ssl_opts else 'amqp']
        out.append(
            {
                'host': addr.host,
                'port': port,
                'virtual_host': addr.virtual_host,
                'userid': addr.userid,
                'password': addr.password,
                'heartbeat': None if heartbeat is None else int(math.ceil(heartbeat)),
                'connection_timeout': _kombu_opt(
                    transport,
                    'connect_timeout',
                    _query_number(
                        addr,
                        ('connect_timeout', 'connection_timeout'),
                        settings.broker_connection_timeout,
                    ),
                ),
                'blocked_connection_timeout': _query_number(
                    addr, ('blocked_connection_timeout',), settings.blocked_connection_timeout
                ),
                'ssl': ssl_opts,
                'uri': addr.as_uri(),
                'client_properties': _kombu_opt(transport, 'client_properties', {}),
            }
        )
    return out


def reply_queue_arguments(settings: Settings) -> Dict[str, Any]:
    """The reply queue's arguments: always ``x-expires`` in ms (one day if none is set); a
    quorum queue (``result_queue_type``) adds its type and ``QUORUM_DELIVERY_LIMIT``."""
    seconds = settings.result_expires or DEFAULT_RESULT_EXPIRES
    args: Dict[str, Any] = {'x-expires': max(1, int(seconds * 1000))}
    if settings.result_queue_type == 'quorum':
        args.update({'x-queue-type': 'quorum', 'x-delivery-limit': QUORUM_DELIVERY_LIMIT})
    return args
