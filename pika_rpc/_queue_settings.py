"""Checks of the settings that say which queues exist and how they are declared and consumed.

Level 0, pure: ``_setting_specs._SPECS`` uses these as validators, ``validator(key, value)`` returning
the normalized value or raising ``TypeError``/``ValueError`` naming the setting.

* ``queue_type``: Celery's queue types, ``'classic'`` or ``'quorum'``
  (``task_default_queue_type``, ``task_create_missing_queue_type``,
  ``broker_native_delayed_delivery_queue_type``). Celery checks the first two only when it
  declares a queue; here a typo fails when it is set.
* ``task_queues``: Celery's, a list of ``Queue`` objects or a mapping of queue name to
  ``Queue.from_dict`` options. ``Queue`` lives above this level, so a queue is recognised by
  its ``name`` and ``queue_arguments`` attributes; ``_taskqueues`` builds the mapping form.
* ``finite_positive``: a number of seconds > 0 (``broker_consumer_retry_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ['QUEUE_TYPES', 'queue_type', 'task_queues', 'finite_positive']

#: The queue types pika_rpc declares (Celery's choices).
QUEUE_TYPES = ('classic', 'quorum')


def queue_type(key: str, value: Any) -> str:
    if value not in QUEUE_TYPES:
        raise ValueError(f"{key} must be 'classic' or 'quorum', got {value!r}")
    return value


def task_queues(key: str, value: Any) -> Any:
    """None, a list of ``Queue`` objects (each with a non-empty ``name``), or a mapping of
    queue name to ``Queue.from_dict`` options (Celery's older form)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        for name, options in value.items():
            if not (isinstance(name, str) and name) or not isinstance(options, Mapping):
                raise TypeError(
                    f'{key} as a mapping must map queue names to option dicts, got '
                    f'{name!r}: {options!r}'
                )
        return {name: dict(options) for name, options in value.items()}
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f'{key} must be a list of Queue objects, got {type(value).__name__}')
    names = set()
    for queue in value:
        name = getattr(queue, 'name', None)
        if not isinstance(name, str) or not name or not hasattr(queue, 'queue_arguments'):
            raise TypeError(f'{key} must hold Queue objects with a name, got {queue!r}')
        if name in names:
            raise ValueError(f'{key} names queue {name!r} twice')
        names.add(name)
    return list(value)


def finite_positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{key} must be a number of seconds, got {value!r}')
    if not 0 < value < math.inf:  # `not` also rejects NaN
        raise ValueError(f'{key} must be > 0 and finite, got {value!r}')
    return float(value)
