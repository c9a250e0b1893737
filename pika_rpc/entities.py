"""``Exchange``, ``Queue`` and ``binding``: kombu-shaped AMQP entity descriptions.

(``Exchange`` and ``binding`` are written in ``_exchange``, ``Queue`` in ``_queue``; this is
their public module, with :func:`maybe_declare`.)

An entity is plain data (names, flags, arguments) plus methods that act on the broker
through the *channel* it is bound to. Binding works as in kombu: ``entity(channel)`` or
``entity.bind(channel)`` returns a bound copy, ``maybe_bind`` binds in place, and each
method also takes an explicit ``channel=``. This module never imports the link: a channel
is duck-typed, any object with ``control(kind, timeout=None, cache_key=None, **kwargs)``,
``is_declared(key)`` and ``forget_declared(key)`` (``connection.Connection`` or the I/O
thread's ``Link``), or an object whose ``.link`` is one. ``Exchange.publish`` also needs
``basic_publish(message, exchange, routing_key, mandatory)``, which only
``connection.Connection`` has.

Every method that talks to the broker blocks the calling thread until the I/O thread has
the broker's answer (at most the connection's command timeout; then ``TimeoutError``). None
of them may be called on the I/O thread. ``Message`` and its helpers (``check_properties``,
``compress``, delivery modes) live in ``message`` and are re-exported here. Choices where
kombu leaves room:

* An unbound entity raises :class:`NotBoundError` when it needs the broker (as kombu).
  ``Producer``/``Consumer`` bind what they are given, so ``channel=None`` there still means
  "the process's connection".
* ``nowait`` is accepted everywhere and ignored: every command waits for the broker's reply,
  so a refused declaration is reported to the caller instead of closing a channel later.
* Every queue pika_rpc declares is durable or exclusive (RabbitMQ 4.3 refuses transient
  non-exclusive queues): declaring any other raises ``ValueError`` before anything is sent.
* ``Queue('')`` gets a client-made name (``pika-rpc-gen-<uuid4 hex>``) when first declared,
  so the same name is re-declared and re-subscribed after a reconnect (a server-made name
  would change). ``on_declared(name, message_count, consumer_count)`` gets ``None`` for a
  count the link does not report.
* Successful declarations are remembered per connection under ``('exchange', name)`` and
  ``('queue', name)`` when ``can_cache_declaration`` (not auto-deleted, not expiring);
  :func:`maybe_declare` skips what is remembered, ``declare()`` always sends.
* ``Queue.get`` is one ``basic.get`` (kombu's; ``_basic_get``): it needs an entity bound to a
  ``Connection`` or ``Channel``. Nothing polls: to receive messages as they come, consume
  with a ``Consumer`` (or ``SimpleQueue.get``).
"""

from __future__ import annotations

from typing import Any

from ._exchange import Exchange, _ops, binding
from ._queue import GENERATED_PREFIX, Queue
from .errors import MessageStateError, NotBoundError

# Message and its helpers live in .message; re-exported for code that imported them from here.
from .message import (
    PERSISTENT_DELIVERY_MODE,
    TRANSIENT_DELIVERY_MODE,
    Message,
    check_properties,
    compress,
    decompress,
    maybe_delivery_mode,
)

__all__ = [
    'Exchange',
    'Queue',
    'binding',
    'Message',
    'NotBoundError',
    'MessageStateError',
    'maybe_declare',
    'maybe_delivery_mode',
    'compress',
    'decompress',
    'check_properties',
    'TRANSIENT_DELIVERY_MODE',
    'PERSISTENT_DELIVERY_MODE',
    'GENERATED_PREFIX',
]


def maybe_declare(entity: Any, channel: Any = None) -> bool:
    """Declare ``entity`` unless this connection remembers it; True if commands were sent.

    Blocks like ``declare()``. An entity that cannot be cached is declared every time.
    """
    ops = _ops(channel or entity._channel, entity)
    if isinstance(entity, Exchange):
        if not entity._can_declare():
            return False
        key = ('exchange', entity.name)
    else:
        if entity.no_declare:
            return False
        key = ('queue', entity.name)
    if entity.can_cache_declaration and entity.name and ops.is_declared(key):
        return False
    entity.declare(channel=channel or entity._channel)
    return True
