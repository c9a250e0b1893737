"""``Queue``: a kombu-shaped queue description, its exchange and binding(s); public through
:mod:`pika_rpc.entities`, whose docstring says how entities act on the broker and the choices
made for queues (durable or exclusive, client-made names, cached declarations)."""

from __future__ import annotations

import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ._exchange import Exchange, _control, _Entity, _name_of, _ops, binding
from .errors import ContentDisallowed

__all__ = ['Queue', 'GENERATED_PREFIX']

GENERATED_PREFIX = 'pika-rpc-gen-'


def _ms(seconds: Any) -> int:
    return int(float(seconds) * 1000)


# Queue attribute -> (RabbitMQ argument, converter)
_X_ARGUMENTS = (
    ('message_ttl', 'x-message-ttl', _ms),
    ('expires', 'x-expires', _ms),
    ('max_length', 'x-max-length', int),
    ('max_length_bytes', 'x-max-length-bytes', int),
    ('max_priority', 'x-max-priority', int),
)


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
    # Set from ``attrs`` by _set_attrs() (None when not given).
    alias: Optional[str]
    queue_arguments: Optional[Dict[str, Any]]
    binding_arguments: Optional[Dict[str, Any]]
    consumer_arguments: Optional[Dict[str, Any]]
    expires: Optional[float]
    message_ttl: Optional[float]
    max_length: Optional[int]
    max_length_bytes: Optional[int]
    max_priority: Optional[int]

    attrs = (
        ('name', None),
        ('exchange', None),
        ('routing_key', None),
        ('queue_arguments', None),
        ('binding_arguments', None),
        ('consumer_arguments', None),
        ('durable', bool),
        ('exclusive', bool),
        ('auto_delete', bool),
        ('no_ack', None),
        ('alias', None),
        ('bindings', list),
        ('no_declare', bool),
        ('expires', float),
        ('message_ttl', float),
        ('max_length', int),
        ('max_length_bytes', int),
        ('max_priority', int),
    )

    def __init__(
        self,
        name: str = '',
        exchange: Any = None,
        routing_key: str = '',
        channel: Any = None,
        bindings: Optional[Iterable[binding]] = None,
        on_declared: Optional[Callable[..., Any]] = None,
        **kwargs: Any,
    ) -> None:
        self._set_attrs(kwargs)
        self.name = name or self.name
        self.routing_key = routing_key or self.routing_key
        self.bindings = set(bindings or [])
        self.on_declared = on_declared
        if isinstance(exchange, str):
            self.exchange = Exchange(exchange)
        elif isinstance(exchange, (list, tuple, set)):  # Queue('name', [binding(...), ...])
            self.bindings |= set(exchange)
        elif exchange is not None:
            self.exchange = exchange
        else:
            self.exchange = Exchange('')
        if self.bindings:
            self.exchange = None
        if self.exclusive:  # exclusive implies auto_delete (AMQP, kombu)
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
        keys = (
            'name',
            'exchange',
            'routing_key',
            'queue_arguments',
            'binding_arguments',
            'consumer_arguments',
            'durable',
            'exclusive',
            'auto_delete',
            'no_ack',
            'alias',
        )
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def __repr__(self) -> str:
        where = (
            sorted(map(str, self.bindings))
            if self.bindings
            else f'{self.exchange}->{self.routing_key!r}'
        )
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

    @property
    def queue_type(self) -> str:
        """``'quorum'``, ``'stream'`` or ``'classic'``: its ``x-queue-type`` argument."""
        return str((self.queue_arguments or {}).get('x-queue-type') or 'classic')

    def _check_quorum(self) -> None:
        """Refuse locally what RabbitMQ refuses a quorum queue with a 406, saying why."""
        if self.queue_type != 'quorum':
            return
        why = [
            f'{option} ({reason})'
            for option, refused, reason in (
                ('exclusive=True', self.exclusive, 'no connection owns a replicated queue'),
                (
                    'auto_delete=True',
                    self.auto_delete and not self.exclusive,
                    'it is deleted only explicitly; expires=... removes an unused one',
                ),
                ('durable=False', not self.durable, 'a quorum queue is always durable'),
                (
                    'max_priority',
                    self.max_priority is not None
                    or 'x-max-priority' in (self.queue_arguments or {}),
                    'RabbitMQ 3.x quorum queues have no priorities',
                ),
            )
            if refused
        ]
        if why:
            raise ValueError(
                f'queue {self.name!r} is a quorum queue (x-queue-type quorum: replicated on '
                f'several nodes and durable by design), which cannot have {", ".join(why)}; '
                f'RabbitMQ would refuse it (406). Drop those options, or declare a classic queue'
            )

    def _check_durability(self) -> None:
        if not self.durable and not self.exclusive:
            raise ValueError(
                f'queue {self.name!r} is neither durable nor exclusive: RabbitMQ 4.3 refuses '
                f'transient non-exclusive queues. Use durable=True (with expires=... so an '
                f'unused queue goes away), or exclusive=True for a queue of this connection only'
            )

    def _ensure_name(self) -> None:
        if not self.name:
            self.name = GENERATED_PREFIX + uuid.uuid4().hex

    def declarations(self) -> List[Tuple[str, Dict[str, Any]]]:
        """The ``(kind, kwargs)`` link commands that declare this queue, its exchange and
        bindings, in order (what a consumer replays after a reconnect)."""
        if self.no_declare:
            return []
        self._check_quorum()
        self._check_durability()
        self._ensure_name()
        steps: List[Tuple[str, Dict[str, Any]]] = []
        for exchange in ([self.exchange] if self.exchange is not None else []) + [
            b.exchange for b in self.bindings if b.exchange is not None
        ]:
            if exchange._can_declare():
                steps.append(
                    (
                        'declare_exchange',
                        dict(
                            exchange=exchange.name,
                            exchange_type=exchange.type,
                            passive=exchange.passive,
                            durable=exchange.durable,
                            auto_delete=exchange.auto_delete,
                            arguments=exchange.arguments,
                        ),
                    )
                )
        steps.append(('declare_queue', self._queue_kwargs(passive=False)))
        pairs: List[Tuple[Any, str, Any]] = (  # exchange: an Exchange, a name or None
            [(self.exchange, self.routing_key, self.binding_arguments)]
            if self.exchange is not None and self.exchange.name
            else []
        )
        pairs += [(b.exchange, b.routing_key, b.arguments) for b in self.bindings]
        for exchange, routing_key, arguments in pairs:
            steps.append(
                (
                    'bind_queue',
                    dict(
                        queue=self.name,
                        exchange=_name_of(exchange),
                        routing_key=routing_key,
                        arguments=arguments,
                    ),
                )
            )
        return steps

    def _queue_kwargs(self, passive: bool) -> Dict[str, Any]:
        if passive:
            return dict(queue=self.name, passive=True)
        return dict(
            queue=self.name,
            passive=False,
            durable=self.durable,
            exclusive=self.exclusive,
            auto_delete=self.auto_delete,
            arguments=self.declare_arguments(),
        )

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
            exchange_key = (
                ('exchange', kwargs['exchange'])
                if kind == 'declare_exchange' and not kwargs['auto_delete']
                else None
            )
            result = _control(
                ops, kind, cache_key=key if i == len(steps) - 1 else exchange_key, **kwargs
            )
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

    def queue_declare(
        self, nowait: bool = False, passive: bool = False, channel: Any = None
    ) -> Tuple[str, Optional[int], Optional[int]]:
        """Declare only the queue; ``passive`` only checks it exists. Blocks.

        Returns ``(name, message_count, consumer_count)`` (None: not reported).

        Raises:
            ValueError: neither durable nor exclusive (and not passive).
            PikaRPCError: ``reply_code`` 404 for a missing queue when passive;
                PreconditionFailed for a 406.
        """
        if not passive:
            self._check_quorum()
            self._check_durability()
            self._ensure_name()
        key = ('queue', self.name) if self.can_cache_declaration and not passive else None
        result = _control(
            _ops(channel or self._channel, self),
            'declare_queue',
            cache_key=key,
            **self._queue_kwargs(passive),
        )
        return self._declared(result)

    def queue_bind(self, nowait: bool = False, channel: Any = None) -> None:
        """Bind the queue to its exchange with its routing key. Blocks."""
        self.bind_to(
            self.exchange, self.routing_key, self.binding_arguments, channel=channel, nowait=nowait
        )

    def bind_to(
        self,
        exchange: Any = '',
        routing_key: str = '',
        arguments: Optional[dict] = None,
        nowait: bool = False,
        channel: Any = None,
    ) -> None:
        """Bind the queue to ``exchange``. Blocks."""
        self._binding('bind_queue', exchange, routing_key, arguments, channel)

    def queue_unbind(
        self, arguments: Optional[dict] = None, nowait: bool = False, channel: Any = None
    ) -> None:
        self.unbind_from(self.exchange, self.routing_key, arguments, nowait, channel)

    def unbind_from(
        self,
        exchange: Any = '',
        routing_key: str = '',
        arguments: Optional[dict] = None,
        nowait: bool = False,
        channel: Any = None,
    ) -> None:
        """Remove the queue's binding to ``exchange``. Blocks."""
        self._binding('unbind_queue', exchange, routing_key, arguments, channel)

    def _binding(
        self, command: str, exchange: Any, routing_key: str, arguments: Any, channel: Any
    ) -> None:
        _control(
            _ops(channel or self._channel, self),
            command,
            queue=self.name,
            exchange=_name_of(exchange),
            routing_key=routing_key,
            arguments=arguments,
        )

    def purge(self, nowait: bool = False) -> int:
        """Delete the queue's ready messages; return how many. Blocks."""
        return _control(_ops(self._channel, self), 'purge_queue', queue=self.name) or 0

    def delete(self, if_unused: bool = False, if_empty: bool = False, nowait: bool = False) -> None:
        """Delete the queue on the broker (and forget its cached declaration). Blocks."""
        ops = _ops(self._channel, self)
        _control(ops, 'delete_queue', queue=self.name, if_unused=if_unused, if_empty=if_empty)
        ops.forget_declared(('queue', self.name))

    def get(self, no_ack: Optional[bool] = None, accept: Any = None) -> Any:
        """One message of the queue, or None when it has none ready (kombu's ``Queue.get``:
        one ``basic.get``; to receive messages as they come, consume with a ``Consumer``).
        Ack it with ``message.ack()`` unless ``no_ack`` (default: the queue's). Blocks.

        Raises:
            NotFound: the queue does not exist. TypeError: bound to a bare link (a
                ``Connection`` or ``Channel`` is needed). DecodeError: it does not
                decompress.
        """
        ops = _ops(self._channel, self)
        if not hasattr(ops, 'basic_get'):
            raise TypeError(f'Queue.get needs a pika_rpc Connection or Channel, got {ops!r}')
        message = ops.basic_get(
            self.name, no_ack=bool(self.no_ack if no_ack is None else no_ack), accept=accept
        )
        if message is not None and message.errors:
            message._reraise_error()
        return message

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

        exchange = Exchange(
            options.get('exchange') or '',
            type=options.get('exchange_type') or '',
            delivery_mode=options.get('delivery_mode'),
            durable=pick('exchange_durable', 'durable'),
            auto_delete=pick('exchange_auto_delete', 'auto_delete'),
            arguments=options.get('exchange_arguments'),
        )
        return cls(
            queue,
            exchange=exchange,
            routing_key=pick('binding_key', 'routing_key') or '',
            durable=pick('queue_durable', 'durable'),
            exclusive=options.get('exclusive'),
            auto_delete=pick('queue_auto_delete', 'auto_delete'),
            no_ack=options.get('no_ack'),
            queue_arguments=options.get('queue_arguments'),
            binding_arguments=options.get('binding_arguments'),
            consumer_arguments=options.get('consumer_arguments'),
            bindings=options.get('bindings'),
        )
