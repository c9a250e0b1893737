"""Task queues: which are ours, how each is declared, and what a consumer may assume of it.

Celery declares every task queue it sends to or consumes from, creating a missing one
(``task_create_missing_queues``) of ``task_create_missing_queue_type``. Declaring an existing
queue with other arguments is a 406 (a quorum queue declared as classic, or the reverse), so
pika_rpc declares a queue only when it knows its arguments:

* a queue is **ours** when it is the default queue (``task_default_queue``, of
  ``task_default_queue_type``: Celery's declaration, a durable direct exchange and a durable
  queue of that name bound by its name, with ``x-queue-type: quorum`` for a quorum queue) or
  listed in ``task_queues`` (``Queue`` objects, or Celery's mapping of name to options):
  ours are declared as configured, so a clash is reported with its cause;
* **any other** queue (``send_task(queue='x')``, ``Worker(queues=['x'])``, ``-Q x``) is
  checked with a passive declare, and created, shaped as Celery creates a missing queue,
  only when there is none (the ``ensure_queue`` link command): a queue someone else
  declared is used as it is, never declared again. With ``task_create_missing_queues``
  False such a queue is refused with ``QueueNotFound``, as Celery refuses it.

As in Celery, a queue of ``task_queues`` with no exchange is bound to the default exchange
(``task_default_exchange``, else the default queue's name, of
``task_default_exchange_type``) and one with no routing key by ``task_default_routing_key``
(else the default queue's name); the default queue is declared on that exchange with that
key. A worker given no queues consumes the queues of ``task_queues``, or the default queue
when there are none (``consume_from``), as Celery's.

A consumer asks for a global (per channel) prefetch window only on a queue it knows to be
classic: one declared here as classic (``global_qos``). A quorum queue, or a queue declared
elsewhere whose type is unknown, gets a per-consumer window, since RabbitMQ answers a global
one on a quorum queue by closing the connection. With ``worker_detect_quorum_queues=False``
every window is global, as in Celery; the link then falls back once (``_consumers``).

Level 6: builds ``entities.Queue`` objects from settings; no I/O.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .entities import Exchange, Queue
from .errors import QueueNotFound
from .protocol import TASK_EXCHANGE_TYPE

__all__ = [
    'EnsuredQueue',
    'configured',
    'consume_from',
    'task_queue',
    'is_ours',
    'global_qos',
    'is_quorum',
]


class EnsuredQueue(Queue):
    """A queue that may exist with arguments unknown here: declared only if missing."""

    def declarations(self) -> List[Tuple[str, Dict[str, Any]]]:
        steps = super().declarations()
        if not steps:
            return steps
        return [('ensure_queue', dict(queue=self.name, steps=steps))]


def _typed(name: str, queue_type: str) -> Queue:
    """Celery's declaration of a task queue ``name`` of ``queue_type``."""
    return Queue(
        name,
        Exchange(name, type=TASK_EXCHANGE_TYPE, durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={'x-queue-type': 'quorum'} if queue_type == 'quorum' else None,
    )


def _default_exchange(conf: Any) -> Exchange:
    name = conf.task_default_exchange or conf.task_default_queue
    return Exchange(name, type=conf.task_default_exchange_type, durable=True)


def _with_defaults(conf: Any, queue: Queue) -> Queue:
    """Celery's defaults for a ``task_queues`` entry (see the module docstring); the
    user's ``Queue`` is copied, never changed."""
    no_exchange = not queue.bindings and (queue.exchange is None or not queue.exchange.name)
    if not no_exchange and queue.routing_key:
        return queue
    options = queue.as_dict()
    if no_exchange:
        options['exchange'] = _default_exchange(conf)
    if not queue.routing_key:
        options['routing_key'] = conf.task_default_routing_key or conf.task_default_queue
    return type(queue)(**options)


def configured(conf: Any) -> Dict[str, Queue]:
    """Our queues by name: ``task_queues`` first, then the default queue if not among them."""
    given = conf.task_queues
    if isinstance(given, dict):
        queues = {
            name: Queue.from_dict(name, **dict({'routing_key': name}, **options))
            for name, options in given.items()
        }
    else:
        queues = {queue.name: queue for queue in given or ()}
    queues = {name: _with_defaults(conf, queue) for name, queue in queues.items()}
    default = conf.task_default_queue
    if default not in queues:
        queue = _typed(default, conf.task_default_queue_type)
        if conf.task_default_exchange or conf.task_default_routing_key:
            options = queue.as_dict()
            options['exchange'] = _default_exchange(conf)
            options['routing_key'] = conf.task_default_routing_key or default
            queue = Queue(**options)
        queues[default] = queue
    return queues


def consume_from(conf: Any) -> List[Queue]:
    """What a worker given no queues consumes: ``task_queues``, else the default queue."""
    ours = configured(conf)
    given = conf.task_queues
    names = list(given) if isinstance(given, dict) else [q.name for q in given or ()]
    return [ours[name] for name in names] or [ours[conf.task_default_queue]]


def task_queue(conf: Any, name: str, ours: Optional[Dict[str, Queue]] = None) -> Queue:
    """The queue to declare for ``name``: ours as configured, else an ``EnsuredQueue``
    shaped as Celery creates a missing queue (``task_create_missing_queue_type``)."""
    ours = configured(conf) if ours is None else ours
    if name in ours:
        return ours[name]
    if not conf.task_create_missing_queues:
        raise QueueNotFound(f'Queue {name!r} missing from task_queues')
    typed = _typed(name, conf.task_create_missing_queue_type)
    return EnsuredQueue(**typed.as_dict())


def is_ours(queue: Queue) -> bool:
    return not isinstance(queue, EnsuredQueue)


def is_quorum(queue: Queue) -> bool:
    return queue.queue_type == 'quorum'


def global_qos(queue: Queue, detect: bool) -> bool:
    """Whether a consumer of ``queue`` asks for a global window (see the module docstring)."""
    if not detect:
        return True
    return is_ours(queue) and not queue.no_declare and queue.queue_type == 'classic'
