"""Celery's native delayed delivery on RabbitMQ, as data: the topology and a queue's bindings.

Celery 5.5+ sends an ``eta``/``countdown`` task whose queue is a quorum queue bound to a
non-direct exchange through a chain of delay queues instead of to its queue, so no worker
holds it unacked (a quorum queue has no global prefetch window to raise for held
messages). The facts, from kombu 5.5-5.6 ``kombu/transport/native_delayed_delivery.py`` and
Celery's ``worker/consumer/delayed_delivery.py`` and ``app/base.py`` (``send_task``):

* **Topology** (declared by every worker that consumes a quorum queue, before it consumes):
  levels 27..0, each a topic exchange ``celery_delayed_<level>`` and a queue of the same
  name, of ``broker_native_delayed_delivery_queue_type`` (quorum by default), with
  ``x-message-ttl`` 2^level s, ``x-overflow: reject-publish`` and dead-lettering to the
  next level's exchange (level 0 to ``celery_delayed_delivery``), plus
  ``x-dead-letter-strategy: at-least-once`` for quorum queues. Level L's queue is bound to
  its exchange with ``1.#`` shifted by ``*.`` per level; each level's exchange is bound to
  the next level's with ``0.#`` shifted likewise; the topic exchange
  ``celery_delayed_delivery`` is bound to level 0 with the last key. Entities are kombu's
  defaults: durable, not auto-delete.
* **A consumed queue's bindings**: for each exchange the queue is bound to that is not
  direct, that exchange is bound to ``celery_delayed_delivery`` with routing key
  ``#.<binding key>`` (the key as is when it starts with ``#``), and the queue to that
  exchange with the same key. Direct exchanges are skipped (Celery warns: its workers hold
  such tasks until their eta, as pika_rpc's do).
* **Sending** (what a Celery client does; pika_rpc's ``send_task`` does not, since its task
  queues are bound to direct exchanges as Celery's default queue is): the task goes to
  ``celery_delayed_27`` with routing key ``<countdown as 28 bits, '.'-separated>.<key>``;
  every level either keeps it for 2^level s or passes it on, and level 0 hands it to
  ``celery_delayed_delivery``, which routes it by ``#.<key>`` to the queue's exchange and
  queue. It arrives when due.

Level 2: pure data, no I/O. ``worker`` runs these as link commands.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

__all__ = ['DELIVERY_EXCHANGE', 'LEVELS', 'level_name', 'topology', 'queue_bindings']

#: Where a due task leaves the delay chain (kombu's ``CELERY_DELAYED_DELIVERY_EXCHANGE``).
DELIVERY_EXCHANGE = 'celery_delayed_delivery'
#: Bits of the countdown (kombu's ``MAX_NUMBER_OF_BITS_TO_USE``): levels 27..0.
LEVELS = 28

Step = Tuple[str, Dict[str, Any]]


def level_name(level: int) -> str:
    return f'celery_delayed_{level}'


def topology(queue_type: str) -> List[Step]:
    """The ``(kind, kwargs)`` link commands that declare the delay chain, in kombu's order."""
    if queue_type not in ('classic', 'quorum'):
        raise ValueError(f"queue_type must be 'classic' or 'quorum', got {queue_type!r}")
    steps: List[Step] = []
    routing_key = '1.#'
    for level in range(LEVELS - 1, -1, -1):
        name = level_name(level)
        arguments: Dict[str, Any] = {
            'x-queue-type': queue_type,
            'x-overflow': 'reject-publish',
            'x-message-ttl': pow(2, level) * 1000,
            'x-dead-letter-exchange': level_name(level - 1) if level > 0 else DELIVERY_EXCHANGE,
        }
        if queue_type == 'quorum':
            arguments['x-dead-letter-strategy'] = 'at-least-once'
        steps.append(('declare_exchange', _exchange(name, 'topic')))
        steps.append(
            (
                'declare_queue',
                dict(
                    queue=name,
                    durable=True,
                    exclusive=False,
                    auto_delete=False,
                    arguments=arguments,
                ),
            )
        )
        steps.append(('bind_queue', dict(queue=name, exchange=name, routing_key=routing_key)))
        routing_key = '*.' + routing_key
    routing_key = '0.#'
    for level in range(LEVELS - 1, 0, -1):
        steps.append(
            (
                'bind_exchange',
                dict(
                    destination=level_name(level - 1),
                    source=level_name(level),
                    routing_key=routing_key,
                ),
            )
        )
        routing_key = '*.' + routing_key
    steps.append(('declare_exchange', _exchange(DELIVERY_EXCHANGE, 'topic')))
    steps.append(
        (
            'bind_exchange',
            dict(destination=DELIVERY_EXCHANGE, source=level_name(0), routing_key=routing_key),
        )
    )
    return steps


def _exchange(name: str, kind: str) -> Dict[str, Any]:
    return dict(exchange=name, exchange_type=kind, durable=True, auto_delete=False)


def queue_bindings(queue: Any) -> Tuple[List[Step], List[str]]:
    """The bindings that let delayed tasks reach ``queue`` (a ``Queue``), and the names of
    the direct exchanges it is bound to, which native delayed delivery cannot serve."""
    pairs: List[Tuple[Any, str, Optional[dict]]] = []
    if queue.exchange is not None:
        pairs.append((queue.exchange, queue.routing_key, queue.binding_arguments))
    pairs += [(b.exchange, b.routing_key, b.arguments) for b in queue.bindings]
    steps: List[Step] = []
    direct: List[str] = []
    for exchange, key, _arguments in pairs:
        name = getattr(exchange, 'name', exchange) or ''
        if not name:
            continue  # the default exchange takes no bindings
        if getattr(exchange, 'type', 'direct') == 'direct':
            direct.append(name)
            continue
        key = key or ''
        key = key if key.startswith('#') else f'#.{key}'
        steps.append(
            ('bind_exchange', dict(destination=name, source=DELIVERY_EXCHANGE, routing_key=key))
        )
        steps.append(('bind_queue', dict(queue=queue.name, exchange=name, routing_key=key)))
    return steps, direct
