"""``_delayed``: Celery's native delayed delivery topology and a queue's bindings, compared
with what kombu itself declares (kombu's functions run against a channel that records the
calls; no broker). The real thing, a Celery client's countdown task reaching pika_rpc's
worker through it, is tested on the cluster (tests/cluster/test_quorum.py)."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

from pika_rpc import _delayed
from pika_rpc.entities import Exchange, Queue, binding

native = pytest.importorskip('kombu.transport.native_delayed_delivery')
kombu = pytest.importorskip('kombu')

# kombu's channel method -> (our link command, the keyword names it takes)
COMMANDS = {
    'exchange_declare': ('declare_exchange', {'exchange', 'type', 'durable', 'auto_delete'}),
    'queue_declare': (
        'declare_queue',
        {'queue', 'durable', 'exclusive', 'auto_delete', 'arguments'},
    ),
    'queue_bind': ('bind_queue', {'queue', 'exchange', 'routing_key'}),
    'exchange_bind': ('bind_exchange', {'destination', 'source', 'routing_key'}),
}


class RecordingChannel:
    """What kombu's entities call on a channel, as our ``(kind, kwargs)`` steps."""

    def __init__(self) -> None:
        self.steps: List[Tuple[str, Dict[str, Any]]] = []

    def channel(self) -> 'RecordingChannel':  # kombu asks the "connection" for a channel
        return self

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        # As kombu's RabbitMQ (py-amqp) transport prepares them.
        from kombu.transport.base import to_rabbitmq_queue_arguments

        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name not in COMMANDS:
            raise AttributeError(name)
        kind, keys = COMMANDS[name]

        def record(*args: Any, **kwargs: Any) -> None:
            assert not args, (name, args)
            picked = {k: v for k, v in kwargs.items() if k in keys}
            if 'type' in picked:
                picked['exchange_type'] = picked.pop('type')
            self.steps.append((kind, picked))

        return record


def ours(steps: List[Tuple[str, Dict[str, Any]]]) -> List[Tuple[str, Dict[str, Any]]]:
    """Our steps with what kombu does not pass explicitly left out (None arguments)."""
    out = []
    for kind, kwargs in steps:
        out.append((kind, {k: v for k, v in kwargs.items() if v is not None}))
    return out


@pytest.mark.parametrize('queue_type', ['quorum', 'classic'])
def test_the_topology_is_exactly_what_kombu_declares(queue_type: str) -> None:
    channel = RecordingChannel()
    native.declare_native_delayed_delivery_exchanges_and_queues(channel, queue_type)
    theirs = [(k, {n: v for n, v in kw.items() if v is not None}) for k, kw in channel.steps]
    assert ours(_delayed.topology(queue_type)) == theirs
    assert sum(1 for kind, _ in theirs if kind == 'declare_queue') == _delayed.LEVELS


def test_a_queue_on_a_topic_exchange_is_bound_as_kombu_binds_it() -> None:
    channel = RecordingChannel()
    theirs_queue = kombu.Queue(
        'q',
        kombu.Exchange('q-topic', type='topic'),
        routing_key='q.key',
        queue_arguments={'x-queue-type': 'quorum'},
    )
    native.bind_queue_to_native_delayed_delivery_exchange(channel, theirs_queue)
    queue = Queue(
        'q',
        Exchange('q-topic', type='topic'),
        routing_key='q.key',
        queue_arguments={'x-queue-type': 'quorum'},
    )
    steps, direct = _delayed.queue_bindings(queue)
    assert (ours(steps), direct) == (channel.steps, [])
    assert steps[0] == (
        'bind_exchange',
        {'destination': 'q-topic', 'source': 'celery_delayed_delivery', 'routing_key': '#.q.key'},
    )


def test_direct_exchanges_are_named_and_not_bound_and_every_binding_counts() -> None:
    queue = Queue(
        'q',
        [
            binding(Exchange('d', type='direct'), routing_key='q'),
            binding(Exchange('f', type='fanout'), routing_key='#.all'),
        ],
    )
    steps, direct = _delayed.queue_bindings(queue)
    assert direct == ['d']
    assert steps == [
        (
            'bind_exchange',
            {'destination': 'f', 'source': 'celery_delayed_delivery', 'routing_key': '#.all'},
        ),
        ('bind_queue', {'queue': 'q', 'exchange': 'f', 'routing_key': '#.all'}),
    ]


def test_only_the_two_queue_types_are_taken() -> None:
    with pytest.raises(ValueError, match="'classic' or 'quorum'"):
        _delayed.topology('stream')
