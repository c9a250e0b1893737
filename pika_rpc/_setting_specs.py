"""The settings table: each setting's Celery name, default and validator.

Pure data and validators, no I/O: ``config.Settings`` validates every write through
``_SPECS`` (re-exported as ``config._SPECS``). A validator is ``validator(key, value)`` and
returns the normalized value or raises ``TypeError``/``ValueError`` naming the key. The
choices these validators make where Celery is silent are listed in ``config``'s docstring.
"""

from __future__ import annotations

import datetime
import difflib
import math
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Union

from ._queue_settings import finite_positive, queue_type, task_queues
from ._urls import mask_url, parse_url, split_urls

__all__ = ['DEFAULT_RESULT_EXPIRES', 'RETRY_POLICY_KEYS', 'merge_retry_policy']

#: Celery's default result lifetime, also the reply queue's x-expires when none is set.
DEFAULT_RESULT_EXPIRES = 86400.0

RETRY_POLICY_KEYS = frozenset(
    {'max_retries', 'interval_start', 'interval_step', 'interval_max', 'errback'}
)
# kombu Connection.ensure's defaults: what a partial retry_policy falls back to.
_ENSURE_DEFAULTS = {'max_retries': None, 'interval_start': 1, 'interval_step': 1, 'interval_max': 1}
# Celery's task_publish_retry_policy default.
_PUBLISH_RETRY_POLICY = {
    'max_retries': 3,
    'interval_start': 0,
    'interval_step': 0.2,
    'interval_max': 1,
}
# celery.backends.rpc.RPCBackend.retry_policy.
_RESULT_RETRY_POLICY = {
    'max_retries': 20,
    'interval_start': 0,
    'interval_step': 1,
    'interval_max': 1,
}


# ----------------------------------------------------------------- validators


def _number(
    key: str,
    value: Any,
    *,
    none: bool = True,
    positive: bool = False,
    integer: bool = False,
    minimum: float = 0,
) -> Any:
    if value is None and none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = 'an int' if integer else 'a number'
        raise TypeError(f'{key} must be {kind}{" or None" if none else ""}, got {value!r}')
    if not (value > minimum if positive else value >= minimum):  # `not` also rejects NaN
        sign = '>' if positive else '>='
        raise ValueError(f'{key} must be {sign} {minimum}, got {value!r}')
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{key} must be True or False, got {value!r}')
    return value


def _text(key: str, value: Any, *, none: bool = False) -> Optional[str]:
    if value is None and none:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f'{key} must be a non-empty str{" or None" if none else ""}, got {value!r}')
    return value


def _dict(key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f'{key} must be a mapping, got {type(value).__name__}')
    return dict(value)


def _content_list(key: str, value: Any) -> Optional[List[str]]:
    if value is None and key == 'result_accept_content':
        return None
    if isinstance(value, str):  # 'json,msgpack', as Celery reads env text
        value = [v.strip() for v in value.split(',') if v.strip()]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise TypeError(f'{key} must be a list of serializer names or content types, got {value!r}')
    return list(value)


def _expires(key: str, value: Any) -> Optional[float]:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    value = _number(key, value)
    if value == math.inf:
        raise ValueError(f'{key} must be finite (None or 0 mean "never", as in Celery)')
    return None if value is None else float(value)


def _broker_url(key: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f'{key} must be a str or a list of str, got {type(value).__name__}')
        value = ';'.join(split_urls(value))
    parse_url(value)  # fail now, not on first connect
    return value


def _result_backend(key: str, value: Any) -> str:
    if value is None:
        return 'rpc://'
    if not isinstance(value, str) or value.split('://', 1)[0].lower() != 'rpc':
        raise ValueError(
            f'{key} must be rpc:// (pika_rpc implements only the rpc:// result '
            f'backend), got {mask_url(value) if isinstance(value, str) else value!r}'
        )
    return value


def _ssl(key: str, value: Any) -> Union[bool, dict]:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f'{key} must be True, False or a dict of ssl options, got {value!r}')


def _policy(default: Mapping) -> Callable[[str, Any], dict]:
    def check(key: str, value: Any) -> dict:
        if value is None:
            return dict(default)
        if not isinstance(value, Mapping):
            raise TypeError(f'{key} must be a mapping, got {type(value).__name__}')
        return merge_retry_policy(default, value)

    return check


def _maybe_positive(key: str, value: Any) -> Optional[float]:
    return _number(key, value, positive=True)


def _count(minimum: int, none: bool = False) -> Callable[[str, Any], Optional[int]]:
    return lambda key, value: _number(key, value, integer=True, minimum=minimum, none=none)


def _bool_or_none(key: str, value: Any) -> bool:
    return False if value is None else _flag(key, value)


def _choice(*names: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f'{key} must be one of {", ".join(names)}, got {value!r}')
        if value not in names:
            raise ValueError(f'{key} must be one of {", ".join(names)}, got {value!r}')
        return value

    return check


def merge_retry_policy(
    base: Optional[Mapping[str, Any]], override: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """``base`` updated by ``override``, validated, with kombu ``ensure``'s defaults filled in.

    Keys: ``max_retries`` (None = until the call's deadline, else int >= 0),
    ``interval_start``, ``interval_step``, ``interval_max`` (seconds >= 0) and ``errback``
    (``errback(exc, interval)`` or None). Missing keys default to max_retries=None and
    1 s intervals, as ``kombu.Connection.ensure``.

    Raises:
        TypeError: an unknown key or a wrongly typed value. ValueError: a negative value.
    """
    policy = dict(_ENSURE_DEFAULTS)
    for part in (base, override):
        for key, value in (part or {}).items():
            if key not in RETRY_POLICY_KEYS:
                close = difflib.get_close_matches(key, sorted(RETRY_POLICY_KEYS), n=1)
                hint = f' (did you mean {close[0]!r}?)' if close else ''
                raise TypeError(f'unknown retry policy key {key!r}{hint}')
            policy[key] = value
    _number('max_retries', policy['max_retries'], integer=True)
    for key in ('interval_start', 'interval_step', 'interval_max'):
        if _number(key, policy[key], none=False) == math.inf:
            raise ValueError(f'{key} must be finite')
    if policy.get('errback') is not None and not callable(policy['errback']):
        raise TypeError(f'errback must be callable, got {policy["errback"]!r}')
    return policy


# name -> (default, validator(key, value) -> normalized value)
_SPECS: Dict[str, tuple] = {
    'broker_url': (None, _broker_url),
    'result_backend': ('rpc://', _result_backend),
    'result_expires': (DEFAULT_RESULT_EXPIRES, _expires),
    'result_queue_type': ('classic', _choice('classic', 'quorum')),
    'result_serializer': ('json', _text),
    'task_serializer': ('json', _text),
    'accept_content': (['json'], _content_list),
    'result_accept_content': (None, _content_list),
    'result_persistent': (False, _bool_or_none),
    'broker_heartbeat': (120, _number),
    'broker_connection_timeout': (4.0, _maybe_positive),
    'broker_connection_max_retries': (100, _count(0, none=True)),
    'broker_connection_retry': (True, _flag),
    'result_backend_transport_options': ({}, _dict),
    'broker_transport_options': ({}, _dict),
    'broker_use_ssl': (False, _ssl),
    'broker_failover_strategy': ('round-robin', _choice('round-robin', 'shuffle')),
    'task_default_queue': ('celery', _text),
    'task_default_exchange': (None, lambda k, v: _text(k, v, none=True)),
    'task_default_routing_key': (None, lambda k, v: _text(k, v, none=True)),
    'task_track_started': (False, _flag),
    'result_cache_max': (10000, _count(1)),
    'result_cache_max_bytes': (64 * 1024 * 1024, _count(1)),
    'result_extended': (False, _flag),
    'timezone': (None, lambda k, v: _text(k, v, none=True)),
    'enable_utc': (True, _flag),
    'task_publish_retry': (True, _flag),
    'task_publish_retry_policy': (_PUBLISH_RETRY_POLICY, _policy(_PUBLISH_RETRY_POLICY)),
    'result_backend_retry_policy': (_RESULT_RETRY_POLICY, _policy(_RESULT_RETRY_POLICY)),
    'publish_timeout': (10.0, _maybe_positive),
    'result_max_size': (None, lambda k, v: _number(k, v, integer=True, minimum=1)),
    'blocked_connection_timeout': (30.0, _maybe_positive),
    'large_body_threshold': (65536, _count(0)),
    'pending_history_max': (100, _count(1)),
    'pending_max': (100000, _count(1)),
    'out_of_band_max': (1000, _count(0)),
    'handoff_max': (10000, _count(1)),
    'direct_writes': (True, _flag),
    'task_ignore_result': (False, _flag),
    'worker_prefetch_multiplier': (4, _count(0)),
    'task_queues': (None, task_queues),
    'task_default_queue_type': ('classic', queue_type),
    'task_create_missing_queue_type': ('classic', queue_type),
    'worker_detect_quorum_queues': (True, _flag),
    'broker_native_delayed_delivery_queue_type': ('quorum', queue_type),
    'broker_consumer_retry_interval': (1.0, finite_positive),
    'broker_consumer_max_retries': (None, _count(0, none=True)),
}
