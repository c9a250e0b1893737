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
  declared is used as it is, never declared again.

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
from .protocol import TASK_EXCHANGE_TYPE

__all__ = ['EnsuredQueue', 'configured', 'task_queue', 'is_ours', 'global_qos', 'is_quorum']


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


def configured(conf: Any) -> Dict[str, Queue]:
    """Our queues by name: ``task_queues`` first, then the default queue if not among them."""
    given = conf.task_queues
    if isinstance(given, dict):
        queues = {name: Queue.from_dict(name, **options) for name, options in given.items()}
    else:
        queues = {queue.name: queue for queue in given or ()}
    default = conf.task_default_queue
    if default not in queues:
        queues[default] = _typed(default, conf.task_default_queue_type)
    return queues


def task_queue(conf: Any, name: str, ours: Optional[Dict[str, Queue]] = None) -> Queue:
    """The queue to declare for ``name``: ours as configured, else an ``EnsuredQueue``
    shaped as Celery creates a missing queue (``task_create_missing_queue_type``)."""
    ours = configured(conf) if ours is None else ours
    if name in ours:
        return ours[name]
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
