"""pika_rpc: Celery's ``rpc://`` result backend as a thread-safe, fork-safe library on pika.

One I/O thread per process owns the only connection; any thread may send tasks, store
results and wait on them. Wire-compatible with Celery 5.5-5.7. See README.rst.
"""

from typing import TYPE_CHECKING, Any, List

from ._version import __version__

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load lazily
    from . import states
    from ._shared import shared_task
    from .app import App
    from .backend import BacklogLimitExceeded, ResultConsumer, RPCBackend
    from .connection import Connection
    from .entities import Exchange, Queue
    from .errors import (
        AccessRefused,
        BrokerRefused,
        ClosedError,
        ConnectionLost,
        ConsumerGaveUp,
        ContentDisallowed,
        DecodeError,
        EncodeError,
        LimitExceeded,
        MaxRetriesExceededError,
        MessageStateError,
        NotBoundError,
        NotFound,
        NotRegistered,
        NotSupportedByRabbitMQ,
        OperationalError,
        PikaRPCError,
        PreconditionFailed,
        PublishError,
        QueueNodeDown,
        QueueNotFound,
        ReplyQueueLost,
        Retry,
        SecurityError,
        SoftTimeLimitExceeded,
        TaskRevokedError,
        TimeLimitExceeded,
        TimeoutError,
        Unroutable,
        WorkerLostError,
    )
    from .message import Message
    from .messaging import Consumer, Producer
    from .pools import ChannelPool, ConnectionPool
    from .result import AsyncResult, GroupResult, ResultSet
    from .simple import SimpleBuffer, SimpleQueue
    from .task import Task
    from .worker import Worker

# Public name -> the submodule that defines it. ``import pika_rpc`` imports none of them (nor
# pika, yaml or msgpack): a name's module is imported the first time the name is used
# (PEP 562), so a script or forked child pays only for what it uses.
_LAZY = {
    'states': 'states',
    'App': 'app',
    'BacklogLimitExceeded': 'backend',
    'ResultConsumer': 'backend',
    'RPCBackend': 'backend',
    'Connection': 'connection',
    'Exchange': 'entities',
    'Queue': 'entities',
    'AccessRefused': 'errors',
    'BrokerRefused': 'errors',
    'ClosedError': 'errors',
    'ConnectionLost': 'errors',
    'ConsumerGaveUp': 'errors',
    'ContentDisallowed': 'errors',
    'DecodeError': 'errors',
    'EncodeError': 'errors',
    'LimitExceeded': 'errors',
    'MaxRetriesExceededError': 'errors',
    'MessageStateError': 'errors',
    'NotBoundError': 'errors',
    'NotFound': 'errors',
    'NotRegistered': 'errors',
    'NotSupportedByRabbitMQ': 'errors',
    'OperationalError': 'errors',
    'PikaRPCError': 'errors',
    'PreconditionFailed': 'errors',
    'PublishError': 'errors',
    'QueueNodeDown': 'errors',
    'QueueNotFound': 'errors',
    'ReplyQueueLost': 'errors',
    'Retry': 'errors',
    'SecurityError': 'errors',
    'SoftTimeLimitExceeded': 'errors',
    'TaskRevokedError': 'errors',
    'TimeLimitExceeded': 'errors',
    'TimeoutError': 'errors',
    'Unroutable': 'errors',
    'WorkerLostError': 'errors',
    'Message': 'message',
    'Consumer': 'messaging',
    'Producer': 'messaging',
    'ChannelPool': 'pools',
    'ConnectionPool': 'pools',
    'AsyncResult': 'result',
    'GroupResult': 'result',
    'ResultSet': 'result',
    'SimpleBuffer': 'simple',
    'SimpleQueue': 'simple',
    'Task': 'task',
    'Worker': 'worker',
    'shared_task': '_shared',
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib

    value = importlib.import_module(f'{__name__}.{module}')
    if name != module:
        value = getattr(value, name)
    globals()[name] = value  # once: the next use is a plain global lookup
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    'AccessRefused',
    'BrokerRefused',
    'NotFound',
    'QueueNodeDown',
    'Unroutable',
    'QueueNotFound',
    'shared_task',
    'App',
    'AsyncResult',
    'ClosedError',
    'MessageStateError',
    'NotBoundError',
    'BacklogLimitExceeded',
    'ChannelPool',
    'Connection',
    'ConnectionLost',
    'ConnectionPool',
    'Consumer',
    'ConsumerGaveUp',
    'ContentDisallowed',
    'DecodeError',
    'EncodeError',
    'Exchange',
    'GroupResult',
    'LimitExceeded',
    'MaxRetriesExceededError',
    'Message',
    'NotRegistered',
    'NotSupportedByRabbitMQ',
    'OperationalError',
    'PikaRPCError',
    'PreconditionFailed',
    'Producer',
    'PublishError',
    'Queue',
    'RPCBackend',
    'ReplyQueueLost',
    'ResultConsumer',
    'ResultSet',
    'Retry',
    'SecurityError',
    'SimpleBuffer',
    'SimpleQueue',
    'SoftTimeLimitExceeded',
    'Task',
    'TaskRevokedError',
    'TimeLimitExceeded',
    'TimeoutError',
    'Worker',
    'WorkerLostError',
    'states',
    '__version__',
]
