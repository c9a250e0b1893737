"""Every typed error pika_rpc raises.

All derive from :class:`PikaRPCError`; where a builtin fits, the error is also that
builtin (``TimeoutError``, ``ConnectionError``, ``KeyError``), so code written against the
standard library keeps working. Errors keep ``args`` equal to their constructor arguments,
so they pickle and cross process boundaries (worker pools) unchanged. No message ever holds
a password: URLs are masked before they reach an error.
"""

from __future__ import annotations

import builtins
import re
from typing import Iterable, Optional, Tuple

__all__ = [
    'PikaRPCError',
    'TimeoutError',
    'ConnectionLost',
    'PublishError',
    'ContentDisallowed',
    'DecodeError',
    'EncodeError',
    'SecurityError',
    'BacklogLimitExceeded',
    'ReplyQueueLost',
    'NotRegistered',
    'TaskRevokedError',
    'TimeLimitExceeded',
    'SoftTimeLimitExceeded',
    'Retry',
    'MaxRetriesExceededError',
    'WorkerLostError',
    'NotSupportedByRabbitMQ',
    'BrokerRefused',
    'NotFound',
    'QueueNodeDown',
    'AccessRefused',
    'PreconditionFailed',
    'Unroutable',
    'QueueNotFound',
    'ConsumerGaveUp',
    'ClosedError',
    'OperationalError',
    'LimitExceeded',
    'NotBoundError',
    'MessageStateError',
    'refusal',
    'queue_node_down',
]


class PikaRPCError(Exception):
    """Base of every error pika_rpc raises that is not a builtin."""


class TimeoutError(PikaRPCError, builtins.TimeoutError):
    """A blocking call ran past its timeout (also the builtin ``TimeoutError``)."""

    def __init__(self, message: str = 'The operation timed out') -> None:
        # One argument only: OSError would read two as (errno, strerror).
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else 'The operation timed out'


class ConnectionLost(PikaRPCError, builtins.ConnectionError):
    """The broker could not be reached, or the link was closed; what was tried is in the text."""

    def __init__(self, message: str = 'connection to the broker lost') -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else 'connection to the broker lost'


class ClosedError(ConnectionLost):
    """The object (backend, link, producer) was closed; later use raises this."""


class OperationalError(ConnectionLost):
    """A connect retry policy gave up (kombu's ``OperationalError``, raised where kombu
    raises it: ``Connection.ensure_connection``, ``connect``, ``.connection``,
    ``.default_channel``). A ``ConnectionLost`` whose text names the addresses, the failed
    attempts, the last error and what to do; ``Connection.ensure`` does not retry it again."""


class LimitExceeded(PikaRPCError):
    """A pool lends no more than its ``limit`` (kombu's ``LimitExceeded``): ``acquire()``
    without ``block``, or past its ``timeout``."""


class PublishError(PikaRPCError):
    """A publish was nacked by the broker, stayed unconfirmed, or ran out of retries."""


class Unroutable(PublishError):
    """The broker returned a mandatory message: no queue is bound for its exchange and
    routing key (``reply_code`` 312 NO_ROUTE). Never retried: it would route nowhere again."""

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        reply_code: int = 312,
        reply_text: str = 'NO_ROUTE',
        what: str = 'message',
    ) -> None:
        super().__init__(exchange, routing_key, reply_code, reply_text, what)
        self.exchange, self.routing_key = exchange, routing_key
        self.reply_code, self.reply_text, self.what = reply_code, reply_text, what

    def __str__(self) -> str:
        return (
            f'{self.what} unroutable: {self.reply_code} {self.reply_text}: no queue is bound '
            f'to exchange {self.exchange!r} with routing key {self.routing_key!r}'
        )


class ConsumerGaveUp(PikaRPCError):
    """A consumer stopped for good: the broker refused to let it consume from ``queue`` again
    ``failures`` times in a row (``broker_consumer_max_retries``; its node stayed down, say).
    ``error`` is the last refusal. ``Worker.run()`` raises it; the CLI exits non-zero."""

    def __init__(self, queue: str, failures: int, error: str) -> None:
        super().__init__(queue, failures, error)
        self.queue, self.failures, self.error = queue, failures, error

    def __str__(self) -> str:
        return (
            f'gave up consuming from queue {self.queue!r} after {self.failures} refused '
            f're-subscriptions in a row; last: {self.error}'
        )


class ContentDisallowed(PikaRPCError):
    """A message's content type is not in the accepted list."""


class DecodeError(PikaRPCError):
    """A message body could not be decoded (bad bytes, bad JSON, unknown envelope)."""


class EncodeError(PikaRPCError, builtins.TypeError):
    """A value cannot be serialized with the chosen serializer."""


class SecurityError(PikaRPCError):
    """A result names something that is not an exception class; nothing was built."""


class BacklogLimitExceeded(PikaRPCError):
    """Too much state history to fast-forward (as ``celery.backends.rpc``)."""


class ReplyQueueLost(PikaRPCError):
    """The reply queue vanished while tasks were pending; their results cannot arrive.

    ``reason`` says how (default: deleted or expired; or its home node is down)."""

    def __init__(self, queue: str, task_ids: Iterable[str] = (), reason: str = '') -> None:
        task_ids = tuple(task_ids)
        super().__init__(queue, task_ids, reason)
        self.queue = queue
        self.task_ids = task_ids
        self.reason = reason

    def __str__(self) -> str:
        ids = ', '.join(self.task_ids) or 'no pending task'
        how = self.reason or 'was deleted or expired'
        return f'reply queue {self.queue!r} {how}; lost results of: {ids}'


class QueueNotFound(PikaRPCError, builtins.KeyError):
    """A task is routed to a queue not in ``task_queues`` while ``task_create_missing_queues``
    is False (Celery's ``QueueNotFound``, also a ``KeyError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else 'queue not found'


class NotRegistered(PikaRPCError, builtins.KeyError):
    """A task name is not registered with the app."""

    def __str__(self) -> str:
        return f'task {self.args[0]!r} is not registered' if self.args else 'task not registered'


class TaskRevokedError(PikaRPCError):
    """The task was revoked (or expired, or terminated)."""


class TimeLimitExceeded(PikaRPCError):
    """The task ran past its hard time limit."""


class SoftTimeLimitExceeded(PikaRPCError):
    """The task ran past its soft time limit."""


class Retry(PikaRPCError):
    """Raised by ``Task.retry()``: the task is re-sent and this run ends."""

    def __init__(
        self,
        message: Optional[str] = None,
        exc: Optional[BaseException] = None,
        when: Optional[float] = None,
    ) -> None:
        super().__init__(message, exc, when)
        self.message, self.exc, self.when = message, exc, when

    def __str__(self) -> str:
        if self.message:
            return self.message
        return (
            f'Retry in {self.when}s: {self.exc!r}'
            if self.when is not None
            else f'Retry: {self.exc!r}'
        )


class MaxRetriesExceededError(PikaRPCError):
    """``Task.retry()`` was called once more than the task's ``max_retries`` allows."""


class WorkerLostError(PikaRPCError):
    """The worker running the task went away."""


class NotSupportedByRabbitMQ(PikaRPCError, builtins.NotImplementedError):
    """An AMQP feature RabbitMQ answers with 540 NOT_IMPLEMENTED (closing the connection).

    Refused locally instead, because a closed connection would cut every waiter.
    """


class NotBoundError(PikaRPCError):
    """An entity needed the broker but is bound to no connection and none was passed."""


class MessageStateError(PikaRPCError):
    """A message was acked/rejected twice, or has no consumer to ack it through."""


class BrokerRefused(PikaRPCError):
    """The broker refused a command and closed the channel it ran on (a channel error).

    ``reply_code``/``reply_text`` are the broker's (e.g. 404, ``NOT_FOUND - no queue 'x'``);
    the message says which command it was. Subclasses name the codes callers act on.
    """

    default_code: Optional[int] = None

    def __init__(
        self, message: str, reply_code: Optional[int] = None, reply_text: str = ''
    ) -> None:
        if reply_code is None:
            reply_code = self.default_code
        super().__init__(message, reply_code, reply_text)
        self.reply_code, self.reply_text = reply_code, reply_text

    def __str__(self) -> str:
        return str(self.args[0])


class NotFound(BrokerRefused):
    """404 NOT_FOUND: the queue or exchange does not exist (or its home node is down)."""

    default_code = 404


class QueueNodeDown(NotFound):
    """404 NOT_FOUND because the queue's home node is down or cannot be reached (a RabbitMQ
    cluster): the queue exists but nothing can use it until that node is back.

    ``queue`` and ``node`` come from the broker's text; ``node`` is None when the text does
    not name it ("process is stopped by supervisor", while that node shuts down).
    """

    def __init__(
        self,
        message: str,
        reply_code: Optional[int] = 404,
        reply_text: str = '',
        queue: Optional[str] = None,
        node: Optional[str] = None,
    ) -> None:
        super().__init__(message, reply_code, reply_text)
        self.args = (message, reply_code, reply_text, queue, node)
        self.queue, self.node = queue, node


class AccessRefused(BrokerRefused):
    """403 ACCESS_REFUSED: the user may not do this (permissions, exclusive queue of another
    connection, a reserved ``amq.`` name)."""

    default_code = 403


class PreconditionFailed(BrokerRefused):
    """406 PRECONDITION_FAILED: a declaration clashes with an existing entity's arguments."""

    default_code = 406


# RabbitMQ's texts (rabbit_amqqueue:absent/2) for a durable classic queue whose node is gone:
# "home node 'n1@h' of durable queue 'q' in vhost '/' is down or inaccessible", and, while that
# node stops, "queue 'q' in vhost '/' process is stopped by supervisor".
# As text: ``re`` compiles (and caches) them at the first refusal, not at import.
_NODE_DOWN = r"home node '(?P<node>[^']*)' of durable queue '(?P<queue>.*)' in vhost "
_STOPPED = r"queue '(?P<queue>.*)' in vhost '.*' process is stopped by supervisor"


def queue_node_down(reply_text: str) -> Optional[Tuple[Optional[str], Optional[str]]]:
    """``(queue, node)`` when a 404's text says the queue's node is down, else None."""
    for pattern in (_NODE_DOWN, _STOPPED):
        match = re.search(pattern, reply_text or '')
        if match is not None:
            return match.group('queue'), match.groupdict().get('node')
    return None


def refusal(reply_code: Optional[int], message: str, reply_text: str = '') -> BrokerRefused:
    """The typed error for a broker's channel refusal with ``reply_code`` (a 404 whose text
    says the queue's node is down is a ``QueueNodeDown``)."""
    if reply_code == 404:
        down = queue_node_down(reply_text)
        if down is not None:
            return QueueNodeDown(message, reply_code, reply_text, *down)
    cls = {404: NotFound, 403: AccessRefused, 406: PreconditionFailed}.get(
        reply_code if isinstance(reply_code, int) else -1, BrokerRefused
    )
    return cls(message, reply_code, reply_text)


# Celery's exception names as they appear in results (exc_module 'celery.exceptions'),
# mapped to these local classes so Celery's failures rebuild without importing Celery.
CELERY_EXCEPTIONS = {
    'TaskRevokedError': TaskRevokedError,
    'TimeLimitExceeded': TimeLimitExceeded,
    'SoftTimeLimitExceeded': SoftTimeLimitExceeded,
    'Retry': Retry,
    'MaxRetriesExceededError': MaxRetriesExceededError,
    'WorkerLostError': WorkerLostError,
    'NotRegistered': NotRegistered,
    'BacklogLimitExceeded': BacklogLimitExceeded,
    'TimeoutError': TimeoutError,
}
