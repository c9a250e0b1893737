"""pika_rpc: Celery's ``rpc://`` result backend as a thread-safe, fork-safe library on pika.

One I/O thread per process owns the only connection; any thread may send tasks, store
results and wait on them. Wire-compatible with Celery 5.5-5.7. See README.rst.
"""

from . import states
from ._shared import shared_task
from ._version import __version__
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
