"""The settings table: each setting's Celery name, default, validator and one-line description.

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

__all__ = ['DEFAULT_RESULT_EXPIRES', 'RETRY_POLICY_KEYS', 'merge_retry_policy', 'Spec']

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


class Spec(tuple):
    """One setting: ``(default, validator)`` (unpacks as a pair) with a one-line ``doc``."""

    doc: str

    def __new__(cls, default: Any, validator: Callable[[str, Any], Any], doc: str) -> 'Spec':
        spec = super().__new__(cls, (default, validator))
        spec.doc = doc
        return spec

    @property
    def default(self) -> Any:
        return self[0]

    @property
    def validator(self) -> Callable[[str, Any], Any]:
        return self[1]


def _routes(key: str, value: Any) -> Any:
    """Celery's ``task_routes``: a mapping, a router (callable or import path), or a list."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, (Mapping, str, list, tuple)) and not callable(item):
            raise TypeError(
                f'{key} must be a mapping of task name (or glob) to route, a router '
                f'(callable or import path), or a list of these; got {item!r}'
            )
    return list(value) if isinstance(value, tuple) else value


def _modules(key: str, value: Any) -> tuple:
    """Celery's ``imports``/``include``: module names (a str is one name)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise TypeError(f'{key} must be a list of module names, got {value!r}')
    return tuple(value)


def _opt_text(key: str, value: Any) -> Optional[str]:
    return _text(key, value, none=True)


_S = Spec
# name -> Spec(default, validator(key, value) -> normalized value, one-line description)
_SPECS: Dict[str, Spec] = {
    'broker_url': _S(None, _broker_url, 'Broker URL(s); None: $AMQP_URL, else localhost.'),
    'result_backend': _S('rpc://', _result_backend, 'rpc:// (the only backend pika_rpc has).'),
    'result_expires': _S(DEFAULT_RESULT_EXPIRES, _expires, 'Result lifetime: x-expires.'),
    'result_queue_type': _S(
        'classic', _choice('classic', 'quorum'), "The reply queue's type (pika_rpc's)."
    ),
    'result_serializer': _S('json', _text, 'Serializer of stored results.'),
    'task_serializer': _S('json', _text, 'Serializer of sent task messages.'),
    'accept_content': _S(['json'], _content_list, 'Content types a worker accepts.'),
    'result_accept_content': _S(
        None, _content_list, 'Content types of results accepted; None: accept_content.'
    ),
    'result_persistent': _S(False, _bool_or_none, 'Results as persistent messages.'),
    'broker_heartbeat': _S(120, _number, 'AMQP heartbeat in seconds (0: off).'),
    'broker_connection_timeout': _S(4.0, _maybe_positive, 'Seconds to connect (TCP+AMQP).'),
    'broker_connection_max_retries': _S(
        100, _count(0, none=True), 'Connect attempts before giving up (0/None: no limit).'
    ),
    'broker_connection_retry': _S(True, _flag, 'Retry connecting at all.'),
    'broker_connection_retry_on_startup': _S(
        True, _flag, 'A worker that cannot connect at start keeps retrying.'
    ),
    'result_backend_transport_options': _S({}, _dict, 'Accepted for Celery; unused.'),
    'broker_transport_options': _S({}, _dict, "kombu's transport options RabbitMQ uses."),
    'broker_use_ssl': _S(False, _ssl, 'TLS: True or a dict of ssl options.'),
    'broker_failover_strategy': _S(
        'round-robin', _choice('round-robin', 'shuffle'), 'Order of failover addresses.'
    ),
    'task_default_queue': _S('celery', _text, 'Queue of tasks with no route.'),
    'task_default_exchange': _S(
        None, _opt_text, "The default queue's exchange (None: the queue's name)."
    ),
    'task_default_exchange_type': _S('direct', _text, "The default exchange's type."),
    'task_default_routing_key': _S(
        None, _opt_text, "The default queue's binding key (None: the queue's name)."
    ),
    'task_routes': _S(None, _routes, "Routers choosing a task's queue (Celery's forms)."),
    'task_create_missing_queues': _S(
        True, _flag, 'Create a queue not in task_queues (else QueueNotFound).'
    ),
    'imports': _S((), _modules, 'Modules of tasks imported when the registry is first used.'),
    'include': _S((), _modules, 'More such modules (App(include=...)).'),
    'task_track_started': _S(False, _flag, 'Workers store STARTED.'),
    'result_cache_max': _S(10000, _count(1), 'Final results kept in the process.'),
    'result_cache_max_bytes': _S(64 * 1024 * 1024, _count(1), 'Bytes of results kept.'),
    'result_extended': _S(False, _flag, 'Results carry name, args, kwargs, worker, queue.'),
    'timezone': _S(None, _opt_text, 'Time zone of dates (Celery).'),
    'enable_utc': _S(True, _flag, 'Dates in UTC (Celery).'),
    'task_publish_retry': _S(True, _flag, 'Retry sending a task message.'),
    'task_publish_retry_policy': _S(
        _PUBLISH_RETRY_POLICY, _policy(_PUBLISH_RETRY_POLICY), 'How task sends retry.'
    ),
    'result_backend_retry_policy': _S(
        _RESULT_RETRY_POLICY, _policy(_RESULT_RETRY_POLICY), 'How result stores retry.'
    ),
    'publish_timeout': _S(10.0, _maybe_positive, 'Seconds a publish waits for its confirm.'),
    'result_max_size': _S(
        None, lambda k, v: _number(k, v, integer=True, minimum=1), 'Largest result body.'
    ),
    'blocked_connection_timeout': _S(30.0, _maybe_positive, 'Seconds blocked before a drop.'),
    'large_body_threshold': _S(65536, _count(0), 'Bodies decoded off the I/O thread.'),
    'pending_history_max': _S(100, _count(1), 'States kept per pending task.'),
    'pending_max': _S(100000, _count(1), 'Pending tasks and unread results.'),
    'out_of_band_max': _S(1000, _count(0), 'Results for unknown tasks kept.'),
    'handoff_max': _S(10000, _count(1), 'Commands queued for the I/O thread.'),
    'direct_writes': _S(True, _flag, 'Callers may write publications to the socket.'),
    'task_ignore_result': _S(False, _flag, 'Tasks store no result by default.'),
    'worker_prefetch_multiplier': _S(4, _count(0), 'Prefetch per pool thread.'),
    'task_queues': _S(None, task_queues, 'Our task queues (Queue objects or a mapping).'),
    'task_default_queue_type': _S('classic', queue_type, "The default queue's type."),
    'task_create_missing_queue_type': _S('classic', queue_type, 'Type of created queues.'),
    'worker_detect_quorum_queues': _S(True, _flag, 'No global QoS on quorum queues.'),
    'broker_native_delayed_delivery_queue_type': _S(
        'quorum', queue_type, "Delayed delivery queues' type."
    ),
    'broker_consumer_retry_interval': _S(
        1.0, finite_positive, 'Seconds between refused re-subscriptions.'
    ),
    'broker_consumer_max_retries': _S(
        None, _count(0, none=True), 'Refused re-subscriptions before giving up.'
    ),
}
