"""kombu's ``transport_options`` for RabbitMQ, as pika_rpc reads them.

kombu hands ``Connection(transport_options=...)`` (Celery: ``broker_transport_options``) to its
transport; for RabbitMQ (py-amqp, ``kombu.transport.pyamqp``) the options reach
``amqp.Connection(**options)``, and ``Connection.default_channel`` takes its retry options
from them. pika_rpc keeps them in the ``broker_transport_options`` setting and reads the keys
of :data:`READ`. Like kombu it ignores every other key, and says so once per key and process:
a WARNING for a py-amqp option that applies to RabbitMQ but that pika_rpc does not implement
(:data:`NOT_IMPLEMENTED`), a DEBUG line for any other key (another transport's, such as
Redis's ``visibility_timeout``, which py-amqp ignores too).

Level 0: pure, no I/O; :func:`check` only logs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Mapping, Optional, Set

__all__ = ['READ', 'NOT_IMPLEMENTED', 'check', 'value', 'confirms']

LOGGER = logging.getLogger(__name__)

#: The keys pika_rpc reads, and what each does.
READ: Dict[str, str] = {
    'confirm_publish': (
        'False: the connection publishes without confirms (no Confirm.Select; a publish '
        'returns once written, unroutable and lost messages are not reported); absent, None '
        'or True: with confirms (every publish waits for the broker), the default'
    ),
    'max_retries': (
        "reconnect attempts of the process's link (config.connection_retry_policy), and "
        'attempts an eager connect (Connection.connect, .connection, .default_channel) '
        'makes before it raises'
    ),
    'interval_start': 'first wait between connect attempts (link and eager connect)',
    'interval_step': 'added to the wait after each failed connect attempt',
    'interval_max': 'longest wait between connect attempts',
    'connect_retries_timeout': (
        'how long an eager connect waits in all (default: connect_timeout); None: no bound'
    ),
    'errback': 'errback(exc, interval), called by an eager connect after each failed attempt',
    'callback': 'callback(), called by an eager connect about every second while it waits',
    'connect_timeout': (
        "seconds for each connect attempt (overrides broker_connection_timeout, as py-amqp's)"
    ),
    'heartbeat': 'heartbeat in seconds (overrides broker_heartbeat, as py-amqp does)',
    'client_properties': (
        "merged into the client properties the connection announces (pika_rpc's "
        'connection_name and product unless given)'
    ),
}

#: Options of py-amqp's ``Connection`` that apply to RabbitMQ and that pika_rpc does not
#: implement: a WARNING names the first use of each.
NOT_IMPLEMENTED = frozenset(
    {
        'read_timeout',
        'write_timeout',
        'socket_settings',
        'channel_max',
        'frame_max',
        'locale',
        'login_method',
        'login_response',
        'authentication',
        'on_open',
        'on_blocked',
        'on_unblocked',
        'on_tune_ok',
        'frame_handler',
        'frame_writer',
    }
)

_told: Set[str] = set()
_told_lock = threading.Lock()


def _first_time(key: str) -> bool:
    with _told_lock:
        if key in _told:
            return False
        _told.add(key)
        return True


def check(options: Optional[Mapping[str, Any]]) -> None:
    """Log, once per key and process, the keys of ``options`` pika_rpc does not honour.

    Raises:
        TypeError: ``options`` is not a mapping, or a key is not a str.
    """
    if not options:
        return
    if not isinstance(options, Mapping):
        raise TypeError(f'transport_options must be a mapping, got {type(options).__name__}')
    for key in options:
        if not isinstance(key, str):
            raise TypeError(f'transport_options keys must be str, got {key!r}')
        if key in READ:
            continue
        elif key in NOT_IMPLEMENTED:
            if _first_time(key):
                LOGGER.warning(
                    'transport_options %r is ignored: pika_rpc does not implement this '
                    'py-amqp option (the options it reads: %s)',
                    key,
                    ', '.join(sorted(READ)),
                )
        elif _first_time(key):
            LOGGER.debug(
                'transport_options %r is ignored: not an option of the py-amqp transport '
                '(RabbitMQ), as kombu ignores it',
                key,
            )


def value(options: Optional[Mapping[str, Any]], key: str, default: Any) -> Any:
    """``options[key]``, or ``default`` when absent; a number key is checked.

    Raises:
        TypeError, ValueError: ``connect_timeout``, ``heartbeat``, ``connect_retries_timeout``
            or ``max_retries`` that is not a number >= 0 (or None), ``client_properties``
            that is not a mapping.
    """
    if not options or key not in options:
        return default
    val = options[key]
    if key == 'client_properties':
        if not isinstance(val, Mapping):
            raise TypeError(f'transport_options client_properties must be a mapping, got {val!r}')
        return dict(val)
    if key in ('connect_timeout', 'heartbeat', 'connect_retries_timeout', 'max_retries'):
        if val is None:
            return None
        kinds = (int,) if key == 'max_retries' else (int, float)
        if isinstance(val, bool) or not isinstance(val, kinds):
            kind = 'an int' if key == 'max_retries' else 'a number'
            raise TypeError(f'transport_options {key} must be {kind} or None, got {val!r}')
        if not val >= 0:
            raise ValueError(f'transport_options {key} must be >= 0, got {val!r}')
    return val


def confirms(options: Optional[Mapping[str, Any]]) -> bool:
    """Whether a connection with these transport options publishes with confirms: True
    unless ``confirm_publish`` is given and false (None counts as not given). pika_rpc
    confirms by default, where py-amqp does not: a publish that returns has reached the
    broker."""
    if not options:
        return True
    val = options.get('confirm_publish')
    return True if val is None else bool(val)
