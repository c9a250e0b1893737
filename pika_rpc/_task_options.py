"""Celery's ``@app.task`` options: which ones pika_rpc honours, which it refuses, and their checks.

Celery turns every keyword given to ``@app.task`` into an attribute of the task class, so a
misspelt or unsupported option is silently kept. pika_rpc checks them when the function is
decorated instead: an option it honours is checked and normalised (:func:`check`); one of
Celery's that it does not implement, and any other name, raises ``TypeError`` naming it and
saying why, so nothing is accepted at decoration and then fails at ``.delay()``.

The retry policy of ``autoretry_for`` is Celery's (``celery.app.autoretry``): on one of those
exceptions the task is retried with ``retry_kwargs``; with ``retry_backoff`` the countdown is
``min(retry_backoff_max, factor * 2 ** retries)`` (``factor`` the integer part of
``retry_backoff``, at least 1), and with ``retry_jitter`` a random whole number of seconds
from 0 to that (:func:`backoff`).
"""

from __future__ import annotations

import math
import random
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ['SEND_OPTIONS', 'HONOURED', 'REFUSED', 'check', 'rate', 'backoff']

#: Options that are defaults for ``apply_async`` (Celery's task execution options).
SEND_OPTIONS = frozenset(
    {
        'queue',
        'routing_key',
        'exchange',
        'priority',
        'expires',
        'time_limit',
        'soft_time_limit',
        'serializer',
    }
)

#: Options the worker or the client honours (besides ``name``, ``bind`` and the send options).
HONOURED = frozenset(
    {
        'typing',
        'max_retries',
        'default_retry_delay',
        'rate_limit',
        'ignore_result',
        'store_errors_even_if_ignored',
        'track_started',
        'acks_late',
        'acks_on_failure_or_timeout',
        'acks_on_failure',
        'acks_on_timeout',
        'reject_on_worker_lost',
        'throws',
        'autoretry_for',
        'dont_autoretry_for',
        'retry_kwargs',
        'retry_backoff',
        'retry_backoff_max',
        'retry_jitter',
    }
)

#: Celery's options that pika_rpc does not implement, and why.
REFUSED: Dict[str, str] = {
    'base': 'task classes and their hooks (on_success, on_failure, ...) are not implemented',
    'shared': 'tasks are registered with one app',
    'lazy': 'tasks are registered when decorated',
    'abstract': 'task classes are not implemented',
    'backend': 'every task uses the app backend',
    'Request': 'custom request classes are not implemented',
    'Strategy': 'custom strategies are not implemented',
    'send_events': 'the worker sends no task events',
    'trail': 'child results are not tracked',
    'store_eager_result': 'tasks are not run eagerly',
    'retry_on_worker_lost': 'a lost worker process leaves its message to the broker',
    'resultrepr_maxsize': 'not implemented',
    'compression': 'message compression is not implemented for task messages',
    'delivery_mode': 'task messages are always persistent',
    'pydantic': 'argument validation with pydantic is not implemented',
    'pydantic_strict': 'argument validation with pydantic is not implemented',
    'pydantic_context': 'argument validation with pydantic is not implemented',
    'pydantic_dump_kwargs': 'argument validation with pydantic is not implemented',
    'on_success': 'task hooks are not implemented',
    'on_failure': 'task hooks are not implemented',
    'on_retry': 'task hooks are not implemented',
    'after_return': 'task hooks are not implemented',
    'before_start': 'task hooks are not implemented',
    'on_bound': 'task hooks are not implemented',
}

#: The keys of ``retry_kwargs`` that ``Task.retry`` takes.
RETRY_KWARGS = frozenset({'countdown', 'eta', 'max_retries', 'priority'})

_RATE_UNITS = {'s': 1.0, 'm': 60.0, 'h': 3600.0}


def rate(value: Any) -> float:
    """Celery's rate limit (``'10/s'``, ``'100/m'``, ``'2/h'``, a number per second) as tasks
    per second; 0 means no limit.

    Raises:
        ValueError: not a rate.
    """
    if value is None or value == '' or value == 0:
        return 0.0
    if isinstance(value, bool):
        raise ValueError(f'rate_limit must be like "10/s", "100/m" or "2/h", got {value!r}')
    if isinstance(value, (int, float)):
        number, unit = float(value), 's'
    elif isinstance(value, str):
        ops, _, unit = value.strip().partition('/')
        unit = unit.strip() or 's'
        try:
            number = float(ops)
        except ValueError:
            number = math.nan
    else:
        number, unit = math.nan, ''
    if unit not in _RATE_UNITS or not math.isfinite(number) or number < 0:
        raise ValueError(f'rate_limit must be like "10/s", "100/m" or "2/h", got {value!r}')
    return number / _RATE_UNITS[unit]


def backoff(factor: int, retries: int, maximum: int, jitter: bool) -> int:
    """Celery's exponential backoff countdown (s) for the retry after ``retries`` retries."""
    countdown = min(maximum, factor * (2**retries))
    if jitter:
        countdown = random.randrange(countdown + 1) if countdown >= 0 else 0
    return max(0, countdown)


def _exceptions(name: str, value: Any) -> Tuple[type, ...]:
    items = value if isinstance(value, (tuple, list, set, frozenset)) else (value,)
    out = tuple(items)
    for item in out:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f'{name} must be exception classes, got {item!r}')
    return out


def _flag(name: str, value: Any, none: bool = True) -> Optional[bool]:
    if value is None and none:
        return None
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be True or False, got {value!r}')
    return value


def _seconds(name: str, value: Any, none: bool = True) -> Optional[float]:
    if value is None and none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f'{name} must be a number of seconds > 0, got {value!r}')
    return value


def _count(name: str, value: Any, none: bool = True) -> Optional[int]:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{name} must be an int >= 0, got {value!r}')
    return value


def _check_one(task: str, key: str, value: Any) -> Any:
    if key in ('autoretry_for', 'dont_autoretry_for', 'throws'):
        return _exceptions(key, value)
    if key in (
        'typing',
        'ignore_result',
        'store_errors_even_if_ignored',
        'track_started',
        'acks_late',
        'acks_on_failure_or_timeout',
        'acks_on_failure',
        'acks_on_timeout',
        'reject_on_worker_lost',
        'retry_jitter',
    ):
        return _flag(key, value)
    if key in ('time_limit', 'soft_time_limit'):
        return _seconds(key, value)
    if key == 'default_retry_delay':
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f'default_retry_delay must be a number of seconds >= 0, got {value!r}')
        return value
    if key in ('max_retries', 'retry_backoff_max'):
        return _count(key, value, none=key == 'max_retries')
    if key == 'retry_backoff':
        if not isinstance(value, (bool, int, float)) or value < 0:
            raise ValueError(f'retry_backoff must be True, False or a factor (s), got {value!r}')
        return value
    if key == 'retry_kwargs':
        if not isinstance(value, Mapping):
            raise TypeError(f'retry_kwargs must be a dict, got {value!r}')
        unknown = sorted(set(value) - RETRY_KWARGS)
        if unknown:
            raise TypeError(
                f'retry_kwargs of task {task!r}: unknown key(s) {", ".join(unknown)} '
                f'(Task.retry takes {", ".join(sorted(RETRY_KWARGS))})'
            )
        return dict(value)
    if key == 'rate_limit':
        rate(value)  # raises for a malformed one
        return value or None
    if key == 'priority':
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255
        ):
            raise ValueError(f'priority must be an int from 0 to 255, got {value!r}')
        return value
    return value


def check(task: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """Check the options given to ``@app.task`` for ``task``; return them normalised.

    Raises:
        TypeError: an option pika_rpc does not implement (the reason given) or does not know,
            or a value of the wrong type.
        ValueError: a value out of range (a malformed ``rate_limit``, a time limit <= 0).
    """
    out: Dict[str, Any] = {}
    for key, value in options.items():
        if key in REFUSED:
            raise TypeError(
                f'task {task!r}: the task option {key!r} is not supported by pika_rpc '
                f'({REFUSED[key]}); remove it'
            )
        if key not in HONOURED and key not in SEND_OPTIONS:
            raise TypeError(
                f'task {task!r}: unknown task option {key!r}; the options are '
                f'{", ".join(sorted(HONOURED | SEND_OPTIONS | {"name", "bind"}))}'
            )
        out[key] = _check_one(task, key, value)
    return out
