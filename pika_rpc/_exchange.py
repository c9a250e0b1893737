"""The base of kombu-shaped entities (attributes, binding to a channel, pickling),
``Exchange`` and ``binding``; public through :mod:`pika_rpc.entities`, whose docstring says
how entities act on the broker."""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

from .errors import NotBoundError, NotSupportedByRabbitMQ
from .message import PERSISTENT_DELIVERY_MODE, TRANSIENT_DELIVERY_MODE, Message, maybe_delivery_mode

__all__ = ['Exchange', 'binding']


def _name_of(exchange: Any) -> str:
    return exchange.name if isinstance(exchange, Exchange) else (exchange or '')


def _ops(channel: Any, entity: Any) -> Any:
    """The object that runs broker commands for ``channel`` (see the module docstring)."""
    if channel is None:
        raise NotBoundError(
            f'{entity!r} is not bound to a connection: pass channel=..., or '
            f'bind it first (entity.bind(connection) or entity(connection))'
        )
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
            raise TypeError(
                f'{type(self).__name__}() got unknown argument(s) {unknown}; known: {sorted(known)}'
            )
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

    attrs = (
        ('name', None),
        ('type', None),
        ('arguments', None),
        ('durable', bool),
        ('passive', bool),
        ('auto_delete', bool),
        ('delivery_mode', lambda m: maybe_delivery_mode(m)),
        ('no_declare', bool),
    )

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

    def declare(
        self, nowait: bool = False, passive: Optional[bool] = None, channel: Any = None
    ) -> None:
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
        _control(
            _ops(channel or self._channel, self),
            'declare_exchange',
            cache_key=key,
            exchange=self.name,
            exchange_type=self.type,
            passive=bool(passive),
            durable=self.durable,
            auto_delete=self.auto_delete,
            arguments=self.arguments,
        )

    def delete(self, if_unused: bool = False, nowait: bool = False) -> None:
        """Delete the exchange on the broker. Blocks."""
        ops = _ops(self._channel, self)
        _control(ops, 'delete_exchange', exchange=self.name, if_unused=if_unused)
        ops.forget_declared(('exchange', self.name))

    def bind_to(
        self,
        exchange: Any = '',
        routing_key: str = '',
        arguments: Optional[dict] = None,
        nowait: bool = False,
        channel: Any = None,
        **kwargs: Any,
    ) -> None:
        """Bind this exchange (destination) to ``exchange`` (source). Blocks."""
        self._binding('bind_exchange', exchange, routing_key, arguments, channel)

    def unbind_from(
        self,
        source: Any = '',
        routing_key: str = '',
        nowait: bool = False,
        arguments: Optional[dict] = None,
        channel: Any = None,
    ) -> None:
        """Remove a binding made by ``bind_to``. Blocks."""
        self._binding('unbind_exchange', source, routing_key, arguments, channel)

    def _binding(
        self, command: str, source: Any, routing_key: str, arguments: Any, channel: Any
    ) -> None:
        _control(
            _ops(channel or self._channel, self),
            command,
            destination=self.name,
            source=_name_of(source),
            routing_key=routing_key,
            arguments=arguments,
        )

    def binding(
        self,
        routing_key: str = '',
        arguments: Optional[dict] = None,
        unbind_arguments: Optional[dict] = None,
    ) -> 'binding':
        return binding(self, routing_key, arguments, unbind_arguments)

    def Message(
        self, body: Any, delivery_mode: Any = None, properties: Optional[dict] = None, **kwargs: Any
    ) -> 'Message':
        """A message to ``publish``, with this exchange's delivery mode by default."""
        return Message(
            body,
            delivery_mode=delivery_mode or self.delivery_mode,
            properties=properties,
            channel=self._channel,
            **kwargs,
        )

    def publish(
        self,
        message: Any,
        routing_key: Optional[str] = None,
        mandatory: bool = False,
        immediate: bool = False,
        exchange: Any = None,
    ) -> None:
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
        channel.basic_publish(
            message,
            exchange=_name_of(exchange) or self.name,
            routing_key=routing_key or '',
            mandatory=mandatory,
        )


IMMEDIATE_REFUSED = (
    'immediate=True is not supported by RabbitMQ: it answers 540 NOT_IMPLEMENTED '
    'and closes the connection (cutting every waiter); use mandatory=True with '
    'a per-message expiration instead'
)


# ------------------------------------------------------------------ binding


class binding:
    """A queue's (or exchange's) binding to ``exchange`` with a routing key (kombu's)."""

    attrs = (
        ('exchange', None),
        ('routing_key', None),
        ('arguments', None),
        ('unbind_arguments', None),
    )

    def __init__(
        self,
        exchange: Optional[Exchange] = None,
        routing_key: str = '',
        arguments: Optional[dict] = None,
        unbind_arguments: Optional[dict] = None,
    ) -> None:
        self.exchange, self.routing_key = exchange, routing_key
        self.arguments, self.unbind_arguments = arguments, unbind_arguments

    def declare(self, channel: Any, nowait: bool = False) -> None:
        """Declare the binding's exchange (unless it is the default one). Blocks."""
        if self.exchange is not None and self.exchange.name:
            self.exchange.declare(nowait=nowait, channel=channel)

    def bind(self, entity: Any, nowait: bool = False, channel: Any = None) -> None:
        """Bind ``entity`` (a Queue or Exchange) to this binding's exchange. Blocks."""
        entity.bind_to(
            exchange=self.exchange,
            routing_key=self.routing_key,
            arguments=self.arguments,
            nowait=nowait,
            channel=channel,
        )

    def unbind(self, entity: Any, nowait: bool = False, channel: Any = None) -> None:
        entity.unbind_from(
            self.exchange,
            routing_key=self.routing_key,
            arguments=self.unbind_arguments,
            nowait=nowait,
            channel=channel,
        )

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
