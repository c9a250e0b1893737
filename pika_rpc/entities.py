"""``Exchange``, ``Queue`` and ``binding``: kombu-shaped AMQP entity descriptions.

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
* ``Queue.get`` (``basic.get`` polling) is not offered: consume with a ``Consumer``.
"""
from __future__ import annotations

import copy
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .errors import ContentDisallowed, MessageStateError, NotBoundError, NotSupportedByRabbitMQ
# Message and its helpers live in .message; re-exported for code that imported them from here.
from .message import (PERSISTENT_DELIVERY_MODE, TRANSIENT_DELIVERY_MODE, Message,
                      check_properties, compress, decompress, maybe_delivery_mode)

__all__ = ['Exchange', 'Queue', 'binding', 'Message', 'NotBoundError', 'MessageStateError',
           'maybe_declare', 'maybe_delivery_mode', 'compress', 'decompress',
           'check_properties', 'TRANSIENT_DELIVERY_MODE', 'PERSISTENT_DELIVERY_MODE']

GENERATED_PREFIX = 'pika-rpc-gen-'


def _name_of(exchange: Any) -> str:
    return exchange.name if isinstance(exchange, Exchange) else (exchange or '')


def _ops(channel: Any, entity: Any) -> Any:
    """The object that runs broker commands for ``channel`` (see the module docstring)."""
    if channel is None:
        raise NotBoundError(f'{entity!r} is not bound to a connection: pass channel=..., or '
                            f'bind it first (entity.bind(connection) or entity(connection))')
    if hasattr(channel, 'control'):
        return channel
    link = getattr(channel, 'link', None)
    if link is not None and hasattr(link, 'control'):
        return link
    raise TypeError(f'{channel!r} is not a pika_rpc Connection or link')


# ------------------------------------------------------------------ entity base

class _Entity:
    """Attribute handling and channel binding shared by Exchange and Queue (kombu-like)."""

    attrs: Tuple[Tuple[str, Any], ...] = ()
    _channel: Any = None
    _is_bound = False

    def _set_attrs(self, kwargs: Dict[str, Any]) -> None:
        known = {name for name, _ in self.attrs}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f'{type(self).__name__}() got unknown argument(s) {unknown}; '
                            f'known: {sorted(known)}')
        for name, convert in self.attrs:
            value = kwargs.get(name)
            if value is not None:
                setattr(self, name, convert(value) if convert else value)
            elif not hasattr(self, name):
                setattr(self, name, None)

    def __call__(self, channel: Any) -> Any:
        """A copy bound to ``channel``."""
        return self.bind(channel)

    def bind(self, channel: Any) -> Any:
        """Return a copy of this entity bound to ``channel``."""
        return copy.copy(self).maybe_bind(channel)

    def maybe_bind(self, channel: Any) -> Any:
        """Bind in place to ``channel`` unless already bound; returns self."""
        if not self._is_bound and channel is not None:
            self._channel = channel
            self.when_bound()
            self._is_bound = True
        return self

    def revive(self, channel: Any) -> None:
        """Rebind to ``channel`` (after a connection change); only if bound before."""
        if self._is_bound:
            self._channel = channel
            self.when_bound()

    def when_bound(self) -> None:
        """Called when bound to a channel."""

    @property
    def is_bound(self) -> bool:
        return self._is_bound and self._channel is not None

    @property
    def channel(self) -> Any:
        """The bound channel. Raises NotBoundError when unbound."""
        if self._channel is None:
            raise NotBoundError(f"{self!r} isn't bound to a channel")
        return self._channel

    def as_dict(self, recurse: bool = False) -> Dict[str, Any]:
        """The entity's attributes; with ``recurse``, nested entities as dicts too."""
        out = {}
        for name, _ in self.attrs:
            value = getattr(self, name)
            if recurse and isinstance(value, (_Entity, binding)):
                value = value.as_dict(recurse=True)
            out[name] = value
        return out

    def __copy__(self) -> Any:
        return type(self)(**self.as_dict())

    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self.as_dict()))


def _rebuild(cls: type, attrs: Dict[str, Any]) -> Any:
    return cls(**attrs)


def _control(ops: Any, kind: str, cache_key: Any = None, **kwargs: Any) -> Any:
    return ops.control(kind, cache_key=cache_key, **kwargs)


# ------------------------------------------------------------------ Exchange

class Exchange(_Entity):
    """An exchange declaration (kombu's ``Exchange``); see the module docstring."""

    TRANSIENT_DELIVERY_MODE = TRANSIENT_DELIVERY_MODE
    PERSISTENT_DELIVERY_MODE = PERSISTENT_DELIVERY_MODE

    name = ''
    type = 'direct'
    durable = True
    auto_delete = False
    passive = False
    delivery_mode: Optional[int] = None
    no_declare = False
    arguments: Optional[Dict[str, Any]] = None

    attrs = (('name', None), ('type', None), ('arguments', None), ('durable', bool),
             ('passive', bool), ('auto_delete', bool),
             ('delivery_mode', lambda m: maybe_delivery_mode(m)), ('no_declare', bool))

    def __init__(self, name: str = '', type: str = '', channel: Any = None, **kwargs: Any) -> None:
        self._set_attrs(kwargs)
        self.name = name or self.name
        self.type = type or self.type
        if not isinstance(self.name, str) or not isinstance(self.type, str):
            raise TypeError(f'exchange name and type must be str, got {self.name!r}, {self.type!r}')
        self.maybe_bind(channel)

    def __hash__(self) -> int:
        return hash(('E', self.name))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Exchange):
            return NotImplemented
        keys = ('name', 'type', 'arguments', 'durable', 'auto_delete', 'delivery_mode')
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def __repr__(self) -> str:
        return f'<{"" if self.is_bound else "unbound "}Exchange {self}>'

    def __str__(self) -> str:
        return f'{self.name or repr("")}({self.type})'

    @property
    def can_cache_declaration(self) -> bool:
        """True unless the exchange is auto-deleted (it may vanish between uses)."""
        return not self.auto_delete

    def _can_declare(self) -> bool:
        return bool(self.name) and not self.no_declare

    def declare(self, nowait: bool = False, passive: Optional[bool] = None,
                channel: Any = None) -> None:
        """Declare the exchange (or, ``passive``, check that it exists). Blocks.

        Does nothing for the default exchange ``''`` or with ``no_declare``.

        Raises:
            PreconditionFailed: it exists with other arguments (406).
            PikaRPCError: other refusals; ``reply_code`` 404 for a missing passive one.
        """
        if not self._can_declare():
            return
        passive = self.passive if passive is None else passive
        key = ('exchange', self.name) if self.can_cache_declaration else None
        _control(_ops(channel or self._channel, self), 'declare_exchange', cache_key=key,
                 exchange=self.name, exchange_type=self.type, passive=bool(passive),
                 durable=self.durable, auto_delete=self.auto_delete, arguments=self.arguments)

    def delete(self, if_unused: bool = False, nowait: bool = False) -> None:
        """Delete the exchange on the broker. Blocks."""
        ops = _ops(self._channel, self)
        _control(ops, 'delete_exchange', exchange=self.name, if_unused=if_unused)
        ops.forget_declared(('exchange', self.name))

    def bind_to(self, exchange: Any = '', routing_key: str = '', arguments: Optional[dict] = None,
                nowait: bool = False, channel: Any = None, **kwargs: Any) -> None:
        """Bind this exchange (destination) to ``exchange`` (source). Blocks."""
        _control(_ops(channel or self._channel, self), 'bind_exchange', destination=self.name,
                 source=_name_of(exchange), routing_key=routing_key, arguments=arguments)

    def unbind_from(self, source: Any = '', routing_key: str = '', nowait: bool = False,
                    arguments: Optional[dict] = None, channel: Any = None) -> None:
        """Remove a binding made by ``bind_to``. Blocks."""
        _control(_ops(channel or self._channel, self), 'unbind_exchange', destination=self.name,
                 source=_name_of(source), routing_key=routing_key, arguments=arguments)

    def binding(self, routing_key: str = '', arguments: Optional[dict] = None,
                unbind_arguments: Optional[dict] = None) -> 'binding':
        return binding(self, routing_key, arguments, unbind_arguments)

    def Message(self, body: Any, delivery_mode: Any = None, properties: Optional[dict] = None,
                **kwargs: Any) -> 'Message':
        """A message to ``publish``, with this exchange's delivery mode by default."""
        return Message(body, delivery_mode=delivery_mode or self.delivery_mode,
                       properties=properties, channel=self._channel, **kwargs)

    def publish(self, message: Any, routing_key: Optional[str] = None, mandatory: bool = False,
                immediate: bool = False, exchange: Any = None) -> None:
        """Publish ``message`` (a Message, str or bytes) with confirms. Blocks until confirmed.

        Raises:
            NotSupportedByRabbitMQ: ``immediate=True``.
            PublishError: nacked, not confirmed in time, or the exchange does not exist.
        """
        if immediate:
            raise NotSupportedByRabbitMQ(IMMEDIATE_REFUSED)
        if isinstance(message, (str, bytes, bytearray)):
            message = self.Message(message)
        channel = self.channel
        if not hasattr(channel, 'basic_publish'):
            raise TypeError('Exchange.publish needs a pika_rpc Connection as its channel')
        channel.basic_publish(message, exchange=_name_of(exchange) or self.name,
                              routing_key=routing_key or '', mandatory=mandatory)


IMMEDIATE_REFUSED = ('immediate=True is not supported by RabbitMQ: it answers 540 NOT_IMPLEMENTED '
                     'and closes the connection (cutting every waiter); use mandatory=True with '
                     'a per-message expiration instead')


# ------------------------------------------------------------------ binding

class binding:
    """A queue's (or exchange's) binding to ``exchange`` with a routing key (kombu's)."""

    attrs = (('exchange', None), ('routing_key', None), ('arguments', None),
             ('unbind_arguments', None))

    def __init__(self, exchange: Optional[Exchange] = None, routing_key: str = '',
                 arguments: Optional[dict] = None, unbind_arguments: Optional[dict] = None) -> None:
        self.exchange, self.routing_key = exchange, routing_key
        self.arguments, self.unbind_arguments = arguments, unbind_arguments

    def declare(self, channel: Any, nowait: bool = False) -> None:
        """Declare the binding's exchange (unless it is the default one). Blocks."""
        if self.exchange is not None and self.exchange.name:
            self.exchange.declare(nowait=nowait, channel=channel)

    def bind(self, entity: Any, nowait: bool = False, channel: Any = None) -> None:
        """Bind ``entity`` (a Queue or Exchange) to this binding's exchange. Blocks."""
        entity.bind_to(exchange=self.exchange, routing_key=self.routing_key,
                       arguments=self.arguments, nowait=nowait, channel=channel)

    def unbind(self, entity: Any, nowait: bool = False, channel: Any = None) -> None:
        entity.unbind_from(self.exchange, routing_key=self.routing_key,
                           arguments=self.unbind_arguments, nowait=nowait, channel=channel)

    def as_dict(self, recurse: bool = False) -> Dict[str, Any]:
        out = {name: getattr(self, name) for name, _ in self.attrs}
        if recurse and isinstance(self.exchange, Exchange):
            out['exchange'] = self.exchange.as_dict(recurse=True)
        return out

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, binding):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((_name_of(self.exchange), self.routing_key))

    def __repr__(self) -> str:
        return f'<binding: {self}>'

    def __str__(self) -> str:
        return f'{_name_of(self.exchange)!r}->{self.routing_key!r}'


# ------------------------------------------------------------------ Queue

def _ms(seconds: Any) -> int:
    return int(float(seconds) * 1000)


# Queue attribute -> (RabbitMQ argument, converter)
_X_ARGUMENTS = (('message_ttl', 'x-message-ttl', _ms), ('expires', 'x-expires', _ms),
                ('max_length', 'x-max-length', int),
                ('max_length_bytes', 'x-max-length-bytes', int),
                ('max_priority', 'x-max-priority', int))


class Queue(_Entity):
    """A queue, its exchange and binding(s) (kombu's ``Queue``); see the module docstring."""

    ContentDisallowed = ContentDisallowed

    name = ''
    exchange: Optional[Exchange] = Exchange('')
    routing_key = ''
    durable = True
    exclusive = False
    auto_delete = False
    no_ack = False
    no_declare = False

    attrs = (('name', None), ('exchange', None), ('routing_key', None),
             ('queue_arguments', None), ('binding_arguments', None),
             ('consumer_arguments', None), ('durable', bool), ('exclusive', bool),
             ('auto_delete', bool), ('no_ack', None), ('alias', None), ('bindings', list),
             ('no_declare', bool), ('expires', float), ('message_ttl', float),
             ('max_length', int), ('max_length_bytes', int), ('max_priority', int))

    def __init__(self, name: str = '', exchange: Any = None, routing_key: str = '',
                 channel: Any = None, bindings: Optional[Iterable[binding]] = None,
                 on_declared: Optional[Callable[..., Any]] = None, **kwargs: Any) -> None:
        self._set_attrs(kwargs)
        self.name = name or self.name
        self.routing_key = routing_key or self.routing_key
        self.bindings = set(bindings or [])
        self.on_declared = on_declared
        if isinstance(exchange, str):
            self.exchange = Exchange(exchange)
        elif isinstance(exchange, (list, tuple, set)):   # Queue('name', [binding(...), ...])
            self.bindings |= set(exchange)
        elif exchange is not None:
            self.exchange = exchange
        else:
            self.exchange = Exchange('')
        if self.bindings:
            self.exchange = None
        if self.exclusive:               # exclusive implies auto_delete (AMQP, kombu)
            self.auto_delete = True
        self.maybe_bind(channel)

    def bind(self, channel: Any) -> 'Queue':
        on_declared = self.on_declared
        bound = super().bind(channel)
        bound.on_declared = on_declared
        return bound

    def when_bound(self) -> None:
        if self.exchange is not None:
            self.exchange = self.exchange(self._channel)

    def __hash__(self) -> int:
        return hash(('Q', self.name))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Queue):
            return NotImplemented
        keys = ('name', 'exchange', 'routing_key', 'queue_arguments', 'binding_arguments',
                'consumer_arguments', 'durable', 'exclusive', 'auto_delete', 'no_ack', 'alias')
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def __repr__(self) -> str:
        where = sorted(map(str, self.bindings)) if self.bindings else \
            f'{self.exchange}->{self.routing_key!r}'
        return f'<{"" if self.is_bound else "unbound "}Queue {self.name or repr("")} -> {where}>'

    @property
    def can_cache_declaration(self) -> bool:
        """True unless the queue may vanish by itself (auto-delete, exclusive, expiring)."""
        expiring = 'x-expires' in (self.queue_arguments or {}) or bool(self.expires)
        return not (expiring or self.auto_delete)

    def declare_arguments(self) -> Dict[str, Any]:
        """``queue_arguments`` plus the x-arguments of ``expires``/``message_ttl`` (ms) and
        ``max_length``/``max_length_bytes``/``max_priority`` (those win over the dict)."""
        args = dict(self.queue_arguments or {})
        for attr, key, convert in _X_ARGUMENTS:
            value = getattr(self, attr)
            if value is not None:
                args[key] = convert(value)
        return args

    def _check_durability(self) -> None:
        if not self.durable and not self.exclusive:
            raise ValueError(
                f'queue {self.name!r} is neither durable nor exclusive: RabbitMQ 4.3 refuses '
                f'transient non-exclusive queues. Use durable=True (with expires=... so an '
                f'unused queue goes away), or exclusive=True for a queue of this connection only')

    def _ensure_name(self) -> None:
        if not self.name:
            self.name = GENERATED_PREFIX + uuid.uuid4().hex

    def declarations(self) -> List[Tuple[str, Dict[str, Any]]]:
        """The ``(kind, kwargs)`` link commands that declare this queue, its exchange and
        bindings, in order (what a consumer replays after a reconnect)."""
        if self.no_declare:
            return []
        self._check_durability()
        self._ensure_name()
        steps: List[Tuple[str, Dict[str, Any]]] = []
        for exchange in ([self.exchange] if self.exchange is not None else []) + \
                [b.exchange for b in self.bindings if b.exchange is not None]:
            if exchange._can_declare():
                steps.append(('declare_exchange', dict(
                    exchange=exchange.name, exchange_type=exchange.type, passive=exchange.passive,
                    durable=exchange.durable, auto_delete=exchange.auto_delete,
                    arguments=exchange.arguments)))
        steps.append(('declare_queue', self._queue_kwargs(passive=False)))
        pairs = [(self.exchange, self.routing_key, self.binding_arguments)] \
            if self.exchange is not None and self.exchange.name else []
        pairs += [(b.exchange, b.routing_key, b.arguments) for b in self.bindings]
        for exchange, routing_key, arguments in pairs:
            steps.append(('bind_queue', dict(queue=self.name, exchange=_name_of(exchange),
                                             routing_key=routing_key, arguments=arguments)))
        return steps

    def _queue_kwargs(self, passive: bool) -> Dict[str, Any]:
        if passive:
            return dict(queue=self.name, passive=True)
        return dict(queue=self.name, passive=False, durable=self.durable, exclusive=self.exclusive,
                    auto_delete=self.auto_delete, arguments=self.declare_arguments())

    def declare(self, nowait: bool = False, channel: Any = None) -> str:
        """Declare the exchange (if named), the queue and its binding(s); return the name.

        Blocks for each command. Nothing is sent with ``no_declare``.

        Raises:
            ValueError: neither durable nor exclusive (nothing sent).
            PreconditionFailed: the queue or exchange exists with other arguments (406).
        """
        if self.no_declare:
            return self.name
        ops = _ops(channel or self._channel, self)
        steps = self.declarations()
        key = ('queue', self.name) if self.can_cache_declaration else None
        for i, (kind, kwargs) in enumerate(steps):
            exchange_key = ('exchange', kwargs['exchange']) if kind == 'declare_exchange' \
                and not kwargs['auto_delete'] else None
            result = _control(ops, kind, cache_key=key if i == len(steps) - 1 else exchange_key,
                              **kwargs)
            if kind == 'declare_queue':
                self._declared(result)
        return self.name

    def _declared(self, result: Any) -> Tuple[str, Optional[int], Optional[int]]:
        if isinstance(result, tuple):
            ret = (result + (None, None, None))[:3]
        else:
            ret = (self.name, result, None)
        if self.on_declared is not None:
            self.on_declared(*ret)
        return ret

    def queue_declare(self, nowait: bool = False, passive: bool = False,
                      channel: Any = None) -> Tuple[str, Optional[int], Optional[int]]:
        """Declare only the queue; ``passive`` only checks it exists. Blocks.

        Returns ``(name, message_count, consumer_count)`` (None: not reported).

        Raises:
            ValueError: neither durable nor exclusive (and not passive).
            PikaRPCError: ``reply_code`` 404 for a missing queue when passive;
                PreconditionFailed for a 406.
        """
        if not passive:
            self._check_durability()
            self._ensure_name()
        key = ('queue', self.name) if self.can_cache_declaration and not passive else None
        result = _control(_ops(channel or self._channel, self), 'declare_queue', cache_key=key,
                          **self._queue_kwargs(passive))
        return self._declared(result)

    def queue_bind(self, nowait: bool = False, channel: Any = None) -> None:
        """Bind the queue to its exchange with its routing key. Blocks."""
        self.bind_to(self.exchange, self.routing_key, self.binding_arguments,
                     channel=channel, nowait=nowait)

    def bind_to(self, exchange: Any = '', routing_key: str = '', arguments: Optional[dict] = None,
                nowait: bool = False, channel: Any = None) -> None:
        """Bind the queue to ``exchange``. Blocks."""
        _control(_ops(channel or self._channel, self), 'bind_queue', queue=self.name,
                 exchange=_name_of(exchange), routing_key=routing_key, arguments=arguments)

    def queue_unbind(self, arguments: Optional[dict] = None, nowait: bool = False,
                     channel: Any = None) -> None:
        self.unbind_from(self.exchange, self.routing_key, arguments, nowait, channel)

    def unbind_from(self, exchange: Any = '', routing_key: str = '',
                    arguments: Optional[dict] = None, nowait: bool = False,
                    channel: Any = None) -> None:
        """Remove the queue's binding to ``exchange``. Blocks."""
        _control(_ops(channel or self._channel, self), 'unbind_queue', queue=self.name,
                 exchange=_name_of(exchange), routing_key=routing_key, arguments=arguments)

    def purge(self, nowait: bool = False) -> int:
        """Delete the queue's ready messages; return how many. Blocks."""
        return _control(_ops(self._channel, self), 'purge_queue', queue=self.name) or 0

    def delete(self, if_unused: bool = False, if_empty: bool = False, nowait: bool = False) -> None:
        """Delete the queue on the broker (and forget its cached declaration). Blocks."""
        ops = _ops(self._channel, self)
        _control(ops, 'delete_queue', queue=self.name, if_unused=if_unused, if_empty=if_empty)
        ops.forget_declared(('queue', self.name))

    def get(self, no_ack: Optional[bool] = None, accept: Any = None) -> Any:
        """Not offered: pika_rpc never polls with basic.get; use a ``Consumer``."""
        raise NotImplementedError('Queue.get (basic.get polling) is not supported by pika_rpc: '
                                  'consume from the queue with a Consumer instead')

    def as_dict(self, recurse: bool = False) -> Dict[str, Any]:
        out = super().as_dict(recurse)
        out['bindings'] = [b.as_dict(recurse=True) if recurse else b for b in self.bindings]
        return out

    @classmethod
    def from_dict(cls, queue: str, **options: Any) -> 'Queue':
        """Build a queue from Celery's queue configuration keys (as kombu does):
        ``exchange``, ``exchange_type``, ``binding_key``/``routing_key``, ``durable``,
        ``auto_delete`` (``queue_``/``exchange_`` prefixed forms win), ``exclusive``,
        ``no_ack``, ``delivery_mode``, ``queue_arguments``, ``exchange_arguments``,
        ``binding_arguments``, ``consumer_arguments``, ``bindings``."""
        def pick(*keys: str) -> Any:
            return next((options[k] for k in keys if options.get(k) is not None), None)
        exchange = Exchange(options.get('exchange') or '', type=options.get('exchange_type') or '',
                            delivery_mode=options.get('delivery_mode'),
                            durable=pick('exchange_durable', 'durable'),
                            auto_delete=pick('exchange_auto_delete', 'auto_delete'),
                            arguments=options.get('exchange_arguments'))
        return cls(queue, exchange=exchange, routing_key=pick('binding_key', 'routing_key') or '',
                   durable=pick('queue_durable', 'durable'), exclusive=options.get('exclusive'),
                   auto_delete=pick('queue_auto_delete', 'auto_delete'),
                   no_ack=options.get('no_ack'), queue_arguments=options.get('queue_arguments'),
                   binding_arguments=options.get('binding_arguments'),
                   consumer_arguments=options.get('consumer_arguments'),
                   bindings=options.get('bindings'))


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
