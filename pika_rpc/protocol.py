"""Celery's messages as data: result bodies, protocol-v2 task messages (and their retry), and
Celery's names for the queues and exchanges they travel through. The remote control (the
pidbox names, the revoke broadcast, a node's replies) is in ``_pidbox``, re-exported here.

Pure build/parse: no I/O, no pika, no serialization of whole messages (callers pass the
dicts/lists returned here to :func:`pika_rpc.serialization.dumps` and publish them).

Choices where Celery leaves room (``docs/wire-format.rst`` describes the messages):

* Times. A naive ``datetime`` given to :func:`task_message` or :func:`result_body` is taken
  to be in ``tz`` (UTC when ``tz`` is None) and is written with an offset; Celery would write
  it naive and each reader would guess. :func:`parse_task_message` reads a naive ``eta`` or
  ``expires`` as UTC, so its datetimes are always aware.
* :func:`meta_from_raw` keeps ``task_id``, ``date_done``, ``group_id``, ``parent_id`` and the
  ``result_extended`` keys only when the body has them; callers fill a missing ``task_id``
  with :func:`task_id_of`.
* :func:`task_message` returns properties without ``content_type``/``content_encoding``:
  those come from the serializer used to encode the body.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import socket
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import states

# The remote control's names and the revoke broadcast live in ._pidbox (with the replies);
# re-exported: they are in this module's __all__.
from ._pidbox import (
    PIDBOX_EXCHANGE,
    PIDBOX_EXCHANGE_TYPE,
    PIDBOX_QUEUE_EXPIRES,
    PIDBOX_QUEUE_TTL,
    REVOKE_EXPIRES,
    REVOKES_MAX,
    control_revoke,
    pidbox_queue_name,
)
from .errors import DecodeError
from .serialization import exception_from_dict, exception_to_dict, json_object, required_text

if TYPE_CHECKING:
    from ._request import TaskRequest

LOGGER = logging.getLogger(__name__)

__all__ = [
    'result_body',
    'meta_from_raw',
    'task_id_of',
    'task_message',
    'parse_task_message',
    'TaskRequest',
    'control_revoke',
    'default_origin',
    'REPR_MAXSIZE',
    'PIDBOX_EXCHANGE',
    'PIDBOX_EXCHANGE_TYPE',
    'PIDBOX_QUEUE_EXPIRES',
    'PIDBOX_QUEUE_TTL',
    'pidbox_queue_name',
    'REVOKES_MAX',
    'REVOKE_EXPIRES',
    'TASK_EXCHANGE_TYPE',
    'retry_message',
]

REPR_MAXSIZE = 1024  # Celery's argsrepr_maxsize / kwargsrepr_maxsize

# How Celery declares a task queue named N: a durable direct exchange N, a durable queue N,
# bound with routing key N (so neither side gets a 406 from the other's declaration);
# ``_taskqueues`` builds it.
TASK_EXCHANGE_TYPE = 'direct'


_EXTENDED_KEYS = ('name', 'args', 'kwargs', 'worker', 'retries', 'queue')
# What meta_from_raw copies from a result body besides status, result, traceback, children.
_COPIED_KEYS = frozenset(('task_id', 'date_done', 'group_id', 'parent_id') + _EXTENDED_KEYS)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a mapping or an attribute-bearing object (Context, pika properties)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _aware(dt: datetime, tz: Optional[tzinfo]) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=tz or timezone.utc)


# --------------------------------------------------------------------------- results


def result_body(
    task_id: str,
    state: str,
    result: Any,
    traceback: Optional[str] = None,
    children: Optional[list] = None,
    *,
    date_done: Union[None, str, datetime] = 'auto',
    group_id: Optional[str] = None,
    parent_id: Optional[str] = None,
    request: Any = None,
    extended: bool = False,
    tz: Optional[tzinfo] = None,
) -> Dict[str, Any]:
    """Build the body a Celery 5.7 worker sends for a state change (``docs/wire-format.rst``,
    "Result messages").

    Keys, in this order: ``status``, ``result``, ``traceback``, ``children``, ``date_done``,
    ``group_id`` and ``parent_id`` (only when set), the extended keys (only with
    ``extended`` and a ``request``), ``task_id`` last.

    Args:
        result: in ``FAILURE``/``RETRY``/``REVOKED`` an exception instance is written as
            :func:`~pika_rpc.serialization.exception_to_dict`; anything else as it is.
        children: result tuples; ``None`` writes ``[]``.
        date_done: ``'auto'`` = now in ``tz`` for ready states; a ``datetime`` (naive = in
            ``tz``) or a string is written for ready states; ``None`` writes null. Non-ready
            states always get null.
        group_id, parent_id: default to the request's ``group`` / ``parent_id``.
        request: a Celery-``Context``-like object, a :class:`TaskRequest` or a dict.
        extended: ``result_extended``: add ``name, args, kwargs, worker, retries, queue``.
        tz: the app's timezone (a ``tzinfo``); UTC when None.
    """
    if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
        result = exception_to_dict(result)
    done = None
    if state in states.READY_STATES and date_done is not None:
        if date_done == 'auto':
            done = datetime.now(tz or timezone.utc).isoformat()
        elif isinstance(date_done, datetime):
            done = _aware(date_done, tz).isoformat()
        else:
            done = str(date_done)
    body: Dict[str, Any] = {
        'status': state,
        'result': result,
        'traceback': traceback,
        'children': [] if children is None else children,
        'date_done': done,
    }
    group_id = group_id or _field(request, 'group')
    parent_id = parent_id or _field(request, 'parent_id')
    if group_id:
        body['group_id'] = group_id
    if parent_id:
        body['parent_id'] = parent_id
    if extended and request is not None:
        body.update(_extended_meta(request))
    body['task_id'] = task_id
    return body


def _extended_meta(request: Any) -> Dict[str, Any]:
    delivery_info = _field(request, 'delivery_info')
    meta = {
        'name': _field(request, 'task') or _field(request, 'name'),
        'args': _field(request, 'args'),
        'kwargs': _field(request, 'kwargs'),
        'worker': _field(request, 'hostname'),
        'retries': _field(request, 'retries'),
        'queue': _field(delivery_info, 'routing_key') if delivery_info else None,
    }
    stamps = _field(request, 'stamps')
    if stamps:
        stamped = _field(request, 'stamped_headers') or ()
        meta['stamped_headers'] = _field(request, 'stamped_headers')
        meta.update({k: v for k, v in stamps.items() if k in stamped})
    return meta


def meta_from_raw(raw: Any) -> Dict[str, Any]:
    """Turn a decoded result body into Celery's decoded meta.

    ``result`` is rebuilt into an exception only for ``FAILURE``/``RETRY``/``REVOKED``; other
    states keep it as sent. Key order never matters; ``date_done`` (kept as a string),
    ``task_id``, ``group_id``, ``parent_id`` and extended keys are copied when present;
    unknown keys are dropped. ``traceback`` and ``children`` default to None.

    Raises:
        DecodeError: ``raw`` is not a dict, has no string ``status``, or holds a malformed
            exception.
        SecurityError: the exception names something that is not an exception class.
    """
    status = raw.get('status') if type(raw) is dict else None  # the common case, cheaply
    if type(status) is not str or not status:
        status = required_text(
            json_object(raw, 'a result body'), 'status', 'a result body needs a status string'
        )
    result = raw.get('result')
    if status in states.EXCEPTION_STATES:
        result = exception_from_dict(result)
    meta = {
        'status': status,
        'result': result,
        'traceback': raw.get('traceback'),
        'children': raw.get('children'),
    }
    for key, value in raw.items():  # a handful of keys: cheaper than a lookup per name
        if key in _COPIED_KEYS:
            meta[key] = value
    return meta


def task_id_of(raw: Any, correlation_id: Optional[str]) -> Optional[str]:
    """The task a result belongs to: the body's ``task_id``, else ``correlation_id`` (Celery's
    consumer keys on the body; a sender may override ``correlation_id``)."""
    task_id = raw.get('task_id') if isinstance(raw, dict) else None
    if isinstance(task_id, str) and task_id:
        return task_id
    return correlation_id or None


# --------------------------------------------------------------------------- task messages


def _capped_repr(value: Any, maxsize: int = REPR_MAXSIZE) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f'<unrepresentable {type(value).__qualname__}: {exc!r}>'
    return text if len(text) <= maxsize else text[: maxsize - 3] + '...'


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f'{what} must be a number of seconds, got {value!r}')
    return float(value)


def _parse_iso(text: str) -> datetime:
    if text.endswith(('Z', 'z')):
        text = text[:-1] + '+00:00'
    return datetime.fromisoformat(text)


def _expires_header(expires: Any, now: datetime, tz: Optional[tzinfo]) -> Tuple[str, str]:
    """Return (ISO header, expiration property in ms) for a number, datetime or ISO string."""
    if isinstance(expires, datetime):
        when = _aware(expires, tz)
        header, seconds = when.isoformat(), (when - now).total_seconds()
    elif isinstance(expires, str):
        when = _aware(_parse_iso(expires), tz)
        header, seconds = expires, (when - now).total_seconds()
    else:
        seconds = _seconds(expires, 'expires')
        header = (now + timedelta(seconds=seconds)).isoformat()
    if seconds < 0:
        LOGGER.warning('task expires %s s in the past; the broker drops it on arrival', -seconds)
        seconds = 0
    return header, str(int(seconds * 1000))


def default_origin() -> str:
    """Celery's node name for a process that is not a worker: ``gen<pid>@<hostname>``."""
    return f'gen{os.getpid()}@{socket.gethostname()}'


def task_message(
    name: str,
    args: Sequence[Any] = (),
    kwargs: Optional[Mapping[str, Any]] = None,
    *,
    task_id: str,
    reply_to: Optional[str],
    correlation_id: Optional[str] = None,
    countdown: Optional[float] = None,
    eta: Union[None, str, datetime] = None,
    expires: Union[None, float, str, datetime] = None,
    priority: Optional[int] = 0,
    time_limit: Optional[float] = None,
    soft_time_limit: Optional[float] = None,
    group_id: Optional[str] = None,
    group_index: Optional[int] = None,
    retries: int = 0,
    root_id: Optional[str] = None,
    parent_id: Optional[str] = None,
    shadow: Optional[str] = None,
    origin: Optional[str] = None,
    ignore_result: Optional[bool] = None,
    argsrepr: Optional[str] = None,
    kwargsrepr: Optional[str] = None,
    replaced_task_nesting: int = 0,
    stamped_headers: Optional[List[str]] = None,
    stamps: Optional[Mapping[str, Any]] = None,
    callbacks: Optional[list] = None,
    errbacks: Optional[list] = None,
    chain: Optional[list] = None,
    chord: Optional[dict] = None,
    headers: Optional[Mapping[str, Any]] = None,
    now: Optional[datetime] = None,
    tz: Optional[tzinfo] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any], list]:
    """Build a Celery protocol-v2 task message (``docs/wire-format.rst``, "Task messages").

    ``countdown`` (seconds) becomes ``eta`` = ``now + countdown`` and wins over ``eta``, as in
    Celery. ``expires`` (seconds, ``datetime`` or ISO string) sets the ISO ``expires`` header
    and the ``expiration`` property (milliseconds as a string; 0 when already past).
    ``root_id`` defaults to ``task_id``, ``correlation_id`` to ``task_id``, ``origin`` to
    :func:`default_origin`; ``priority=None`` leaves the property out. Extra ``headers`` are
    merged last (they may override), as Celery's ``send_task(headers=...)``. ``now`` (the
    clock used for ``countdown``/``expires``) defaults to the current time in ``tz`` (UTC).

    Returns:
        ``(headers, properties, body)``; ``body`` is ``[args, kwargs, embed]``.

    Raises:
        TypeError: ``args`` is not a list/tuple or ``kwargs`` not a mapping.
        ValueError: ``countdown``/``expires`` is not a number of seconds (or a bad ISO string).
    """
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, (list, tuple)):
        raise TypeError('task args must be a list or tuple')
    if not isinstance(kwargs, Mapping):
        raise TypeError('task keyword arguments must be a mapping')
    now = _aware(now, tz) if now is not None else datetime.now(tz or timezone.utc)
    if countdown:
        eta = now + timedelta(seconds=_seconds(countdown, 'countdown'))
    if isinstance(eta, datetime):
        eta = _aware(eta, tz).isoformat()
    properties: Dict[str, Any] = {
        'correlation_id': correlation_id or task_id,
        'reply_to': reply_to or '',
        'delivery_mode': 2,
    }
    if priority is not None:
        properties['priority'] = priority
    expires_header = None
    if expires is not None:
        expires_header, properties['expiration'] = _expires_header(expires, now, tz)
    message_headers = {
        'lang': 'py',
        'task': name,
        'id': task_id,
        'shadow': shadow,
        'eta': eta,
        'expires': expires_header,
        'group': group_id,
        'group_index': group_index,
        'retries': retries,
        'timelimit': [_header_seconds(time_limit), _header_seconds(soft_time_limit)],
        'root_id': root_id or task_id,
        'parent_id': parent_id,
        'argsrepr': _capped_repr(args) if argsrepr is None else argsrepr,
        'kwargsrepr': _capped_repr(kwargs) if kwargsrepr is None else kwargsrepr,
        'origin': origin or default_origin(),
        'ignore_result': ignore_result,
        'replaced_task_nesting': replaced_task_nesting,
        'stamped_headers': stamped_headers,
        'stamps': dict(stamps or {}),
    }
    if headers:
        message_headers.update(headers)
    body = [
        list(args),
        dict(kwargs),
        {'callbacks': callbacks, 'errbacks': errbacks, 'chain': chain, 'chord': chord},
    ]
    return message_headers, properties, body


def _check(
    value: Any, types: Union[type, Tuple[type, ...]], what: str, optional: bool = True
) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode('utf-8')
        except UnicodeDecodeError:
            pass
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DecodeError(f'task message: {what} has the wrong type: {value!r}')
    if not isinstance(value, types):
        raise DecodeError(f'task message: {what} has the wrong type: {value!r}')
    return value


def _header_time(value: Any, what: str) -> Optional[datetime]:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware(value, None)
    text = _check(value, str, what)
    try:
        return _aware(_parse_iso(text), None)
    except ValueError as exc:
        raise DecodeError(f'task message: {what} is not an ISO-8601 time: {text!r}') from exc


def _header_seconds(value: Optional[float]) -> Optional[int]:
    """Seconds as an AMQP-table integer: pika cannot encode floats in headers, so a
    fractional limit is rounded *up* to whole seconds (a limit never gets shorter)."""
    if value is None:
        return None
    return int(math.ceil(value))


def _timelimit(value: Any) -> Tuple[Optional[float], Optional[float]]:
    if value is None:
        return (None, None)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DecodeError(f'task message: timelimit must be [hard, soft], got {value!r}')
    hard, soft = (_check(v, (int, float), 'timelimit') for v in value)
    return (hard, soft)


def parse_task_message(
    headers: Optional[Mapping[str, Any]],
    properties: Any,
    body: Any,
    *,
    delivery_info: Optional[Mapping[str, Any]] = None,
) -> TaskRequest:
    """Parse a decoded protocol-v2 task message; optional headers may be missing.

    Args:
        headers: the AMQP headers table. properties: a dict or pika ``BasicProperties``.
        body: the decoded body, ``[args, kwargs, embed]``.

    Raises:
        DecodeError: a protocol-v1 body (a dict), a body that is not a 3-item list, args
            not a list, kwargs not a dict, no ``task`` or ``id`` header, or a header of the
            wrong type; the message says which.
    """
    headers = dict(headers or {})
    if isinstance(body, dict):
        raise DecodeError(
            'task message uses Celery protocol v1 (a dict body); only protocol v2 is supported'
        )
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        raise DecodeError(f'task message body must be [args, kwargs, embed], got {body!r:.200}')
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        raise DecodeError(f'task message args must be a list, got {type(args).__qualname__}')
    if not isinstance(kwargs, dict):
        raise DecodeError(f'task message kwargs must be an object, got {type(kwargs).__qualname__}')
    if embed is not None and not isinstance(embed, dict):
        raise DecodeError(f'task message embed must be an object, got {type(embed).__qualname__}')
    embed = embed or {}
    name = _check(headers.get('task'), str, 'the "task" header', optional=False)
    task_id = _check(headers.get('id'), str, 'the "id" header', optional=False)
    if not name or not task_id:
        raise DecodeError('task message needs non-empty "task" and "id" headers')
    from ._request import TaskRequest

    return TaskRequest(
        id=task_id,
        name=name,
        args=list(args),
        kwargs=kwargs,
        eta=_header_time(headers.get('eta'), 'eta'),
        expires=_header_time(headers.get('expires'), 'expires'),
        retries=_check(headers.get('retries'), int, 'retries') or 0,
        timelimit=_timelimit(headers.get('timelimit')),
        reply_to=_check(_field(properties, 'reply_to'), str, 'reply_to'),
        correlation_id=_check(_field(properties, 'correlation_id'), str, 'correlation_id'),
        root_id=_check(headers.get('root_id'), str, 'root_id'),
        parent_id=_check(headers.get('parent_id'), str, 'parent_id'),
        group=_check(headers.get('group'), str, 'group'),
        group_index=_check(headers.get('group_index'), int, 'group_index'),
        ignore_result=_check(headers.get('ignore_result'), bool, 'ignore_result'),
        origin=_check(headers.get('origin'), str, 'origin'),
        shadow=_check(headers.get('shadow'), str, 'shadow'),
        argsrepr=_check(headers.get('argsrepr'), str, 'argsrepr'),
        kwargsrepr=_check(headers.get('kwargsrepr'), str, 'kwargsrepr'),
        replaced_task_nesting=_check(
            headers.get('replaced_task_nesting'), int, 'replaced_task_nesting'
        )
        or 0,
        stamped_headers=_check(headers.get('stamped_headers'), (list, tuple), 'stamped_headers'),
        stamps=_check(headers.get('stamps'), dict, 'stamps') or {},
        callbacks=embed.get('callbacks'),
        errbacks=embed.get('errbacks'),
        chain=embed.get('chain'),
        chord=embed.get('chord'),
        priority=_check(_field(properties, 'priority'), int, 'priority'),
        delivery_info=dict(delivery_info or {}),
        headers=headers,
    )


def retry_message(
    request: TaskRequest,
    args: Optional[Sequence[Any]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    *,
    countdown: Optional[float] = None,
    eta: Union[None, str, datetime] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any], list]:
    """The message Celery's ``Task.retry`` sends for ``request``: the same task and id again.

    ``retries + 1``; ``args``/``kwargs`` None keep the request's; ``countdown`` (seconds) or
    ``eta``; ``options['priority']`` overrides the request's priority. The request's
    ``reply_to``, ``correlation_id``, expiry, time limits, group, stamps and embedded
    callbacks travel on; ``parent_id`` is the request's own id when it had none, as Celery.
    The sender's own extra headers travel on too, the broker's (``x-death``,
    ``x-delivery-count``, any ``x-``) do not.

    Returns:
        ``(headers, properties, body)`` as :func:`task_message`.
    """
    req = request
    headers, props, body = task_message(
        req.name,
        req.args if args is None else args,
        req.kwargs if kwargs is None else kwargs,
        task_id=req.id,
        reply_to=req.reply_to,
        correlation_id=req.correlation_id,
        countdown=countdown,
        eta=eta,
        expires=req.expires,
        priority=(options or {}).get('priority', req.priority),
        time_limit=req.time_limit,
        soft_time_limit=req.soft_time_limit,
        group_id=req.group,
        group_index=req.group_index,
        retries=req.retries + 1,
        root_id=req.root_id,
        parent_id=req.parent_id or req.id,
        shadow=req.shadow,
        origin=req.origin,
        ignore_result=req.ignore_result,
        replaced_task_nesting=req.replaced_task_nesting,
        stamped_headers=req.stamped_headers,
        stamps=req.stamps,
        callbacks=req.callbacks,
        errbacks=req.errbacks,
        chain=req.chain,
        chord=req.chord,
    )
    for key, value in req.headers.items():
        if not key.startswith('x-'):
            headers.setdefault(key, value)
    return headers, props, body


def __getattr__(name: str) -> Any:
    # TaskRequest lives in ._request: a dataclass of 31 fields costs a client that never
    # parses a task message a millisecond at import.
    if name == 'TaskRequest':
        from ._request import TaskRequest

        return TaskRequest
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
