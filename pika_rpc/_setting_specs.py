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
    if not isinstance(value, str) or value.split('://', 1)[0].lower() not in ('rpc', 'pika-rpc'):
        raise ValueError(
            f'{key} must be rpc:// or pika-rpc:// (pika_rpc implements only the rpc:// result '
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
    'broker_url': _S(
        None,
        _broker_url,
        (
            'kombu-style URL (``amqp://user:password@host:port/vhost``; ``amqps://`` for '
            'TLS). A ``;``-separated string or a list gives failover addresses. None: '
            '``$AMQP_URL``, else ``amqp://guest:guest@localhost:5672//``.'
        ),
    ),
    'result_backend': _S(
        'rpc://',
        _result_backend,
        (
            "The result backend: ``'rpc://'`` (the default) or ``'pika-rpc://'``, the same "
            'backend under the name of its Celery plug-in.'
        ),
    ),
    'result_expires': _S(
        DEFAULT_RESULT_EXPIRES,
        _expires,
        (
            'Seconds (or a ``timedelta``) an unused reply queue lives (its ``x-expires``); '
            'None or 0 still give one day.'
        ),
    ),
    'result_queue_type': _S(
        'classic',
        _choice('classic', 'quorum'),
        (
            "The reply queue's type: ``'classic'`` or ``'quorum'`` (replicated: a node's loss"
            ' loses no result).'
        ),
    ),
    'result_serializer': _S(
        'json', _text, 'Serializer of stored results: ``json``, ``msgpack``, ``yaml``, ``pickle``.'
    ),
    'task_serializer': _S(
        'json', _text, 'Serializer of task messages sent by ``send_task`` and ``Producer``.'
    ),
    'accept_content': _S(
        ['json'],
        _content_list,
        (
            'Content types or serializer names accepted when reading messages (``json`` only '
            'by default).'
        ),
    ),
    'result_accept_content': _S(
        None,
        _content_list,
        (
            'Content types or serializer names accepted when reading results; None: '
            '``accept_content``.'
        ),
    ),
    'result_persistent': _S(
        False, _bool_or_none, 'True: results are published persistent (delivery mode 2).'
    ),
    'broker_heartbeat': _S(
        120,
        _number,
        "AMQP heartbeat in seconds (rounded up); 0 turns it off, None takes the broker's.",
    ),
    'broker_connection_timeout': _S(
        4.0, _maybe_positive, 'Seconds one connection attempt may take (TCP, TLS, AMQP).'
    ),
    'broker_connection_max_retries': _S(
        100,
        _count(0, none=True),
        (
            'Connection attempts before giving up with ``ConnectionLost``; 0 or None: until '
            "the call's deadline."
        ),
    ),
    'broker_connection_retry': _S(
        True, _flag, 'False: a single connection attempt; a failure is reported at once.'
    ),
    'broker_connection_retry_on_startup': _S(
        True,
        _flag,
        (
            'True: a worker that cannot connect at start keeps retrying (a line per attempt) '
            'instead of exiting; it exits with status 4 when the retries run out.'
        ),
    ),
    'result_backend_transport_options': _S(
        {}, _dict, "Accepted for Celery's configurations; pika_rpc does not use it."
    ),
    'broker_transport_options': _S(
        {},
        _dict,
        (
            "kombu's transport options that apply to RabbitMQ (``connect_timeout``, "
            '``heartbeat``, ``client_properties``, the connect retry intervals...).'
        ),
    ),
    'broker_use_ssl': _S(
        False,
        _ssl,
        (
            'True, or a dict of ``ssl`` options (``ca_certs``, ``certfile``, ``keyfile``, '
            '``cert_reqs``...), to connect with TLS.'
        ),
    ),
    'broker_failover_strategy': _S(
        'round-robin',
        _choice('round-robin', 'shuffle'),
        (
            "``'round-robin'`` (kombu's order) or ``'shuffle'`` (the address list shuffled "
            'once per process, first connection included, then rotated).'
        ),
    ),
    'task_default_queue': _S(
        'celery', _text, 'Queue of ``send_task`` and of the worker when none is named.'
    ),
    'task_default_exchange': _S(
        None,
        _opt_text,
        'Exchange of ``send_task``; None: the default exchange (routing by queue name).',
    ),
    'task_default_exchange_type': _S('direct', _text, "The default exchange's type."),
    'task_default_routing_key': _S(
        None, _opt_text, "Routing key of ``send_task``; None: the queue's name."
    ),
    'task_routes': _S(None, _routes, "Routers choosing a task's queue (Celery's forms)."),
    'task_create_missing_queues': _S(
        True, _flag, 'Create a queue not in task_queues (else QueueNotFound).'
    ),
    'imports': _S((), _modules, 'Modules of tasks imported when the registry is first used.'),
    'include': _S((), _modules, 'More such modules (App(include=...)).'),
    'task_track_started': _S(False, _flag, 'True: a worker stores STARTED when it starts a task.'),
    'task_acks_late': _S(
        True,
        _flag,
        (
            "A task's message is acked after its result is stored (at-least-once: a worker "
            'that dies mid-task leaves it to another). Unlike Celery, True by default; a '
            "task's ``acks_late`` wins."
        ),
    ),
    'result_cache_max': _S(
        10000, _count(1), 'Final results kept per process for later reads (an LRU of task ids).'
    ),
    'result_cache_max_bytes': _S(
        64 * 1024 * 1024,
        _count(1),
        'The same cache bounded by the body bytes of the results it keeps.',
    ),
    'result_extended': _S(
        False,
        _flag,
        (
            "True: stored results also carry the task's name, args, kwargs, worker, retries "
            'and queue.'
        ),
    ),
    'timezone': _S(
        None, _opt_text, 'Time zone of ``date_done`` in stored results (an IANA name); None: UTC.'
    ),
    'enable_utc': _S(
        True,
        _flag,
        ("Accepted for Celery's configurations; not used (``date_done`` follows ``timezone``)."),
    ),
    'task_publish_retry': _S(True, _flag, 'False: ``send_task`` does not retry a failed publish.'),
    'task_publish_retry_policy': _S(
        _PUBLISH_RETRY_POLICY,
        _policy(_PUBLISH_RETRY_POLICY),
        (
            'How ``send_task`` retries a failed publish; a partial dict is merged over '
            "Celery's default."
        ),
    ),
    'result_backend_retry_policy': _S(
        _RESULT_RETRY_POLICY,
        _policy(_RESULT_RETRY_POLICY),
        (
            'How storing a result retries a failed publish (``max_retries``, '
            '``interval_start``, ``interval_step``, ``interval_max``).'
        ),
    ),
    'publish_timeout': _S(
        10.0, _maybe_positive, "Seconds a publish waits for the broker's confirm."
    ),
    'result_max_size': _S(
        None,
        lambda k, v: _number(k, v, integer=True, minimum=1),
        (
            "Largest result body read, in bytes; a larger one fails its task's waiters. None:"
            ' no limit.'
        ),
    ),
    'blocked_connection_timeout': _S(
        30.0,
        _maybe_positive,
        (
            'Seconds the broker may block publishing (a memory or disk alarm) before the '
            'connection is dropped and re-made; None: no limit.'
        ),
    ),
    'large_body_threshold': _S(
        65536,
        _count(0),
        (
            'Result bodies larger than this (bytes) are decoded on a decoder thread, not on '
            'the I/O thread.'
        ),
    ),
    'pending_history_max': _S(
        100,
        _count(1),
        'Messages kept per pending task and replayed to a late ``on_message`` callback.',
    ),
    'pending_max': _S(
        100000,
        _count(1),
        'Tasks the process may wait on at once (their slots in the pending table).',
    ),
    'out_of_band_max': _S(
        1000,
        _count(0),
        'Results kept for task ids this process did not send (out-of-band results).',
    ),
    'handoff_max': _S(
        10000,
        _count(1),
        (
            'Commands and publications queued for the I/O thread at most; a full queue blocks'
            ' callers up to their deadline.'
        ),
    ),
    'direct_writes': _S(
        True,
        _flag,
        (
            'True: a caller writes its publication to a plaintext socket itself; False: every'
            ' publication goes through the I/O thread.'
        ),
    ),
    'task_ignore_result': _S(
        False, _flag, 'True: tasks store no result unless a task or call says otherwise.'
    ),
    'worker_prefetch_multiplier': _S(
        4,
        _count(0),
        (
            'Messages a worker reserves per pool thread (prefetch = multiplier x '
            'concurrency); 0: no limit.'
        ),
    ),
    'task_queues': _S(
        None,
        task_queues,
        (
            "Celery's ``task_queues``: the task queues declared as configured (``Queue`` "
            'objects, or a mapping of name to options).'
        ),
    ),
    'task_default_queue_type': _S(
        'classic',
        queue_type,
        "Type of the default task queue when declared: ``'classic'`` or ``'quorum'``.",
    ),
    'task_create_missing_queue_type': _S(
        'classic',
        queue_type,
        ("Type of a task queue created because it did not exist: ``'classic'`` or ``'quorum'``."),
    ),
    'worker_detect_quorum_queues': _S(
        True,
        _flag,
        (
            'True: a worker on quorum queues asks for per-consumer QoS, never global QoS '
            '(which quorum queues refuse).'
        ),
    ),
    'broker_native_delayed_delivery_queue_type': _S(
        'quorum',
        queue_type,
        (
            'Type of the ``celery_delayed_*`` queues that hold ``eta``/``countdown`` tasks of'
            " quorum queues (Celery 5.5's native delayed delivery)."
        ),
    ),
    'broker_consumer_retry_interval': _S(
        1.0,
        finite_positive,
        (
            'Seconds between attempts to re-subscribe a consumer the broker refused (its '
            "queue's node is down)."
        ),
    ),
    'broker_consumer_max_retries': _S(
        None,
        _count(0, none=True),
        (
            'Refused re-subscriptions in a row before a consumer gives up (a ``Worker`` then '
            'fails); 0 or None: no limit.'
        ),
    ),
}
