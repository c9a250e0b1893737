"""Exchange, Queue, binding, Message and the kombu surface of Producer/Consumer: no broker.

Signatures and class defaults of the kombu API pika_rpc offers are compared with kombu's own
classes (kombu is installed with the ``test`` extra), so a drift on either side fails here.
Broker commands are observed through a recording channel (the duck-typed
``control``/``is_declared``/``forget_declared`` interface entities use), never a fake pika.
"""

from __future__ import annotations

import inspect
import pickle
import re
import zlib
from decimal import Decimal
from typing import Any, Dict, List

import pytest

from pika_rpc.entities import (
    Exchange,
    Message,
    MessageStateError,
    NotBoundError,
    Queue,
    binding,
    check_properties,
    compress,
    decompress,
    maybe_declare,
    maybe_delivery_mode,
)
from pika_rpc.errors import ContentDisallowed, DecodeError, NotSupportedByRabbitMQ
from pika_rpc.messaging import Consumer, Producer

kombu = pytest.importorskip('kombu')

# ------------------------------------------------------------------ kombu's API

#: The methods and class attributes of kombu's classes that pika_rpc's classes offer
#: (Celery's rpc backend documents them), compared one by one with kombu's.
DOCUMENTED: Dict[type, Dict[str, List[str]]] = {
    Exchange: {
        'methods': [
            '__init__',
            'declare',
            'delete',
            'bind_to',
            'unbind_from',
            'binding',
            'publish',
            'Message',
        ],
        'attributes': [
            'TRANSIENT_DELIVERY_MODE',
            'PERSISTENT_DELIVERY_MODE',
            'name',
            'type',
            'durable',
            'auto_delete',
            'passive',
            'no_declare',
            'delivery_mode',
        ],
        'properties': ['can_cache_declaration'],
    },
    Producer: {
        'methods': [
            '__init__',
            'declare',
            'maybe_declare',
            'publish',
            'revive',
            'release',
            'close',
        ],
        'attributes': [
            'exchange',
            'routing_key',
            'serializer',
            'compression',
            'auto_declare',
            'on_return',
        ],
        'properties': ['channel', 'connection'],
    },
    Consumer: {
        'methods': [
            '__init__',
            'consume',
            'cancel',
            'cancel_by_queue',
            'add_queue',
            'consuming_from',
            'declare',
            'qos',
            'flow',
            'purge',
            'recover',
            'receive',
            'register_callback',
            'revive',
            'close',
        ],
        'attributes': [
            'channel',
            'no_ack',
            'auto_declare',
            'callbacks',
            'on_message',
            'on_decode_error',
            'accept',
            'prefetch_count',
        ],
        'properties': ['connection', 'queues'],
    },
    Queue: {
        'methods': [
            '__init__',
            'declare',
            'queue_declare',
            'queue_bind',
            'bind_to',
            'unbind_from',
            'purge',
            'delete',
        ],
        'attributes': [],
        'properties': [],
    },
}


def _kombu_class(cls: type) -> type:
    return getattr(kombu, cls.__name__)


def _positional(func: Any) -> List[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(func).parameters.values()
        if p.name != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.VAR_KEYWORD)
    ]


@pytest.mark.parametrize('cls', list(DOCUMENTED), ids=lambda c: c.__name__)
def test_every_documented_method_has_kombus_signature(cls: type) -> None:
    theirs = _kombu_class(cls)
    for name in DOCUMENTED[cls]['methods']:
        ours_params = [(p.name, p.default, p.kind) for p in _positional(getattr(cls, name))]
        kombu_params = [(p.name, p.default, p.kind) for p in _positional(getattr(theirs, name))]
        assert ours_params == kombu_params, f'{cls.__name__}.{name} differs from kombu'


@pytest.mark.parametrize('cls', list(DOCUMENTED), ids=lambda c: c.__name__)
def test_every_documented_attribute_has_kombus_default(cls: type) -> None:
    theirs = _kombu_class(cls)
    for name in DOCUMENTED[cls]['attributes']:
        assert getattr(cls, name) == getattr(theirs, name), f'{cls.__name__}.{name}'
    for name in DOCUMENTED[cls]['properties']:
        assert isinstance(inspect.getattr_static(cls, name), property), f'{cls.__name__}.{name}'
    if cls is Exchange:
        assert [n for n, _ in cls.attrs] == [n for n, _ in theirs.attrs]


def test_message_takes_kombus_publishing_arguments() -> None:
    # Exchange.Message(body, delivery_mode, properties, **kwargs) builds it, as in kombu.
    params = [p.name for p in _positional(Message.__init__)]
    assert params[:3] == ['body', 'delivery_mode', 'properties']
    assert [p.name for p in _positional(Exchange.Message)] == [
        p.name for p in _positional(kombu.Exchange.Message)
    ]


def test_content_disallowed_is_reachable_as_in_kombu() -> None:
    assert Consumer.ContentDisallowed is ContentDisallowed
    assert Queue.ContentDisallowed is ContentDisallowed


# ------------------------------------------------------------------ Queue


def test_queue_defaults_are_kombus() -> None:
    q = Queue('q')
    assert (q.durable, q.exclusive, q.auto_delete, q.no_ack, q.routing_key) == (
        True,
        False,
        False,
        False,
        '',
    )
    assert q.exchange == Exchange('') and q.exchange.type == 'direct'
    assert q.bindings == set() and q.queue_arguments is None and q.alias is None


def test_exclusive_queue_is_auto_delete() -> None:
    assert Queue('q', exclusive=True).auto_delete is True


def test_queue_options_map_to_rabbitmq_x_arguments_in_milliseconds() -> None:
    q = Queue(
        'q',
        queue_arguments={'x-queue-mode': 'lazy', 'x-expires': 1},
        expires=1.5,
        message_ttl=2,
        max_length=10,
        max_length_bytes=1000,
        max_priority=9,
    )
    assert q.declare_arguments() == {
        'x-queue-mode': 'lazy',
        'x-expires': 1500,
        'x-message-ttl': 2000,
        'x-max-length': 10,
        'x-max-length-bytes': 1000,
        'x-max-priority': 9,
    }
    assert q.queue_arguments == {'x-queue-mode': 'lazy', 'x-expires': 1}  # not changed


def test_queue_without_options_declares_only_its_own_arguments() -> None:
    assert Queue('q').declare_arguments() == {}


def test_unknown_keyword_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(TypeError, match='durabel'):
        Queue('q', durabel=True)
    with pytest.raises(TypeError, match='kind'):
        Exchange('e', kind='fanout')


def test_non_durable_non_exclusive_queue_is_refused_before_anything_is_sent() -> None:
    channel = RecordingChannel()
    with pytest.raises(ValueError, match='RabbitMQ 4.3'):
        Queue('q', durable=False).declare(channel=channel)
    with pytest.raises(ValueError, match='durable=True'):
        Queue('q', durable=False).queue_declare(channel=channel)
    assert channel.commands == []


def test_transient_exclusive_queue_is_allowed() -> None:
    channel = RecordingChannel()
    Queue('q', durable=False, exclusive=True).declare(channel=channel)
    assert channel.kinds() == ['declare_queue']


def test_declare_sends_exchange_queue_then_binding_with_cache_keys() -> None:
    channel = RecordingChannel()
    q = Queue(
        'q',
        Exchange('ex', 'topic', durable=False),
        routing_key='a.*',
        expires=10,
        binding_arguments={'x': 1},
    )
    assert q.declare(channel=channel) == 'q'
    assert channel.commands == [
        (
            'declare_exchange',
            ('exchange', 'ex'),
            dict(
                exchange='ex',
                exchange_type='topic',
                passive=False,
                durable=False,
                auto_delete=False,
                arguments=None,
            ),
        ),
        (
            'declare_queue',
            None,
            dict(
                queue='q',
                passive=False,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments={'x-expires': 10000},
            ),
        ),
        (
            'bind_queue',
            None,
            dict(queue='q', exchange='ex', routing_key='a.*', arguments={'x': 1}),
        ),  # expiring queue: never cached
    ]


def test_default_exchange_is_neither_declared_nor_bound() -> None:
    channel = RecordingChannel()
    Queue('q').declare(channel=channel)
    assert channel.commands == [
        (
            'declare_queue',
            ('queue', 'q'),
            dict(
                queue='q',
                passive=False,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments={},
            ),
        )
    ]


def test_queue_with_bindings_declares_each_exchange_and_binding() -> None:
    a, b = Exchange('a', 'fanout'), Exchange('b')
    q = Queue('q', [binding(a), binding(b, 'k', arguments={'z': 1})])
    assert q.exchange is None
    steps = q.declarations()
    assert [k for k, _ in steps].count('declare_exchange') == 2
    binds = sorted(
        (kw['exchange'], kw['routing_key'], kw['arguments']) for k, kw in steps if k == 'bind_queue'
    )
    assert binds == [('a', '', None), ('b', 'k', {'z': 1})]


def test_no_declare_sends_nothing() -> None:
    channel = RecordingChannel()
    assert Queue('q', no_declare=True).declare(channel=channel) == 'q'
    Exchange('e', no_declare=True).declare(channel=channel)
    Exchange('').declare(channel=channel)
    assert channel.commands == []


def test_unnamed_queue_gets_a_client_made_name_kept_for_redeclares() -> None:
    channel = RecordingChannel()
    q = Queue('', exclusive=True)
    name = q.declare(channel=channel)
    assert name.startswith('pika-rpc-gen-') and q.name == name
    assert q.declare(channel=channel) == name


def test_on_declared_gets_name_and_counts() -> None:
    seen = []
    channel = RecordingChannel(result=7)
    Queue('q', on_declared=lambda *a: seen.append(a)).declare(channel=channel)
    assert seen == [('q', 7, None)]


def test_passive_queue_declare_sends_only_the_name() -> None:
    channel = RecordingChannel(result=3)
    assert Queue('q', durable=False).queue_declare(passive=True, channel=channel) == ('q', 3, None)
    assert channel.commands == [('declare_queue', None, dict(queue='q', passive=True))]


@pytest.mark.parametrize(
    'kwargs, cacheable',
    [
        ({}, True),
        ({'auto_delete': True}, False),
        ({'exclusive': True}, False),
        ({'expires': 60}, False),
        ({'queue_arguments': {'x-expires': 1}}, False),
        ({'message_ttl': 60}, True),
    ],
)
def test_queue_can_cache_declaration_unless_it_may_vanish(kwargs: dict, cacheable: bool) -> None:
    assert Queue('q', **kwargs).can_cache_declaration is cacheable


def test_maybe_declare_skips_what_the_connection_remembers() -> None:
    channel = RecordingChannel()
    q = Queue('q', Exchange('ex'), routing_key='q')
    assert maybe_declare(q, channel) is True
    assert maybe_declare(q, channel) is False
    assert maybe_declare(Exchange('ex'), channel) is False
    assert channel.kinds() == ['declare_exchange', 'declare_queue', 'bind_queue']
    q.bind(channel).delete()
    assert ('queue', 'q') not in channel.declared
    assert maybe_declare(q, channel) is True


def test_maybe_declare_always_sends_for_an_entity_that_cannot_be_cached() -> None:
    channel = RecordingChannel()
    q = Queue('q', expires=5)
    assert maybe_declare(q, channel) and maybe_declare(q, channel)
    assert channel.kinds() == ['declare_queue', 'declare_queue']


def test_unbound_entity_raises_not_bound_naming_the_fix() -> None:
    with pytest.raises(NotBoundError, match='bind'):
        Queue('q').declare()
    with pytest.raises(NotBoundError):
        Exchange('e').channel


def test_bind_returns_a_bound_copy_and_binds_the_queues_exchange() -> None:
    channel = RecordingChannel()
    q = Queue('q', Exchange('ex'))
    bound = q(channel)
    assert bound is not q and bound.is_bound and not q.is_bound
    assert bound.exchange.is_bound and bound.exchange.channel is channel
    assert bound == q
    bound.purge()
    assert channel.commands[-1] == ('purge_queue', None, {'queue': 'q'})


def test_queue_from_dict_reads_celery_queue_settings() -> None:
    q = Queue.from_dict(
        'tasks',
        exchange='tx',
        exchange_type='topic',
        binding_key='t.#',
        queue_durable=False,
        exclusive=True,
        exchange_durable=False,
        queue_arguments={'x-max-priority': 5},
        delivery_mode='transient',
    )
    assert (q.name, q.routing_key, q.durable, q.exclusive) == ('tasks', 't.#', False, True)
    assert (q.exchange.name, q.exchange.type, q.exchange.durable) == ('tx', 'topic', False)
    assert q.exchange.delivery_mode == 1 and q.queue_arguments == {'x-max-priority': 5}


def test_entities_survive_pickle_and_copy_unbound() -> None:
    q = Queue('q', Exchange('ex', 'fanout', arguments={'a': 1}), 'rk', max_priority=3)
    again = pickle.loads(pickle.dumps(q.bind(RecordingChannel())))
    assert again == q and not again.is_bound and again.max_priority == 3
    assert {Queue('q'), Queue('q')} == {Queue('q')}


def test_as_dict_recurse_turns_nested_entities_into_dicts() -> None:
    d = Queue('q', Exchange('ex'), 'rk').as_dict(recurse=True)
    assert d['exchange']['name'] == 'ex' and d['name'] == 'q' and d['bindings'] == []


# ------------------------------------------------------------------ Exchange


def test_exchange_declare_uses_its_attributes() -> None:
    channel = RecordingChannel()
    Exchange(
        'e', 'headers', arguments={'alternate-exchange': 'ae'}, auto_delete=True, durable=False
    ).declare(channel=channel, passive=True)
    assert channel.commands == [
        (
            'declare_exchange',
            None,
            dict(
                exchange='e',
                exchange_type='headers',
                passive=True,
                durable=False,
                auto_delete=True,
                arguments={'alternate-exchange': 'ae'},
            ),
        )
    ]


def test_exchange_bind_to_and_binding() -> None:
    channel = RecordingChannel()
    dest = Exchange('dest', channel=channel)
    dest.bind_to(Exchange('src'), routing_key='k')
    dest.unbind_from('src', routing_key='k')
    assert channel.commands == [
        (
            'bind_exchange',
            None,
            dict(destination='dest', source='src', routing_key='k', arguments=None),
        ),
        (
            'unbind_exchange',
            None,
            dict(destination='dest', source='src', routing_key='k', arguments=None),
        ),
    ]
    b = Exchange('src').binding('k', {'a': 1})
    assert (b.exchange.name, b.routing_key, b.arguments) == ('src', 'k', {'a': 1})


def test_exchange_publish_refuses_immediate_locally() -> None:
    with pytest.raises(NotSupportedByRabbitMQ, match='540'):
        Exchange('e', channel=RecordingChannel()).publish(b'x', immediate=True)


@pytest.mark.parametrize(
    'given, mode', [(None, 2), ('transient', 1), ('persistent', 2), (1, 1), (2, 2)]
)
def test_delivery_mode_aliases(given: Any, mode: int) -> None:
    assert maybe_delivery_mode(given) == mode
    assert Exchange('e', delivery_mode=given).delivery_mode == (mode if given else None)


def test_bad_delivery_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        maybe_delivery_mode('forever')


# ------------------------------------------------------------------ Message and properties


def test_exchange_message_carries_the_exchange_delivery_mode() -> None:
    msg = Exchange('e', delivery_mode='transient').Message(
        'héllo', content_type='text/plain', correlation_id='c', headers={'h': (1, 2)}
    )
    body, props = msg.publish_args()
    assert body == 'héllo'.encode('utf-8')
    assert props == {
        'delivery_mode': 1,
        'content_type': 'text/plain',
        'content_encoding': 'utf-8',
        'headers': {'h': [1, 2]},
        'correlation_id': 'c',
    }


def test_message_body_must_be_serialized_first() -> None:
    with pytest.raises(TypeError, match='Producer.publish'):
        Message({'a': 1}).publish_args()


@pytest.mark.parametrize(
    'props, error',
    [
        ({'colour': 'red'}, TypeError),
        ({'correlation_id': 5}, TypeError),
        ({'priority': 300}, ValueError),
        ({'priority': True}, ValueError),
        ({'headers': {'f': 1.5}}, TypeError),
        ({'headers': {'n': {'o': object()}}}, TypeError),
        ({'headers': {1: 'x'}}, TypeError),
        ({'headers': {'big': 1 << 70}}, ValueError),
        ({'expiration': '1.5'}, ValueError),
        ({'reply_to': 'x' * 300}, ValueError),
        ({'timestamp': 'now'}, TypeError),
        ({'headers': 'h'}, TypeError),
    ],
)
def test_properties_pika_cannot_send_are_refused_on_the_callers_thread(
    props: dict, error: type
) -> None:
    with pytest.raises(error):
        check_properties(props)


def test_good_properties_pass_and_are_normalized() -> None:
    import datetime

    stamp = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    out = check_properties(
        {
            'headers': {'a': (1, 'b', None, Decimal('1.5'), b'x', {'n': [True]})},
            'timestamp': stamp,
            'delivery_mode': 'transient',
            'priority': 9,
            'message_id': None,
        }
    )
    assert out == {
        'headers': {'a': [1, 'b', None, Decimal('1.5'), b'x', {'n': [True]}]},
        'timestamp': int(stamp.timestamp()),
        'delivery_mode': 1,
        'priority': 9,
    }


def _received(body: bytes, acker: Any = None, no_ack: bool = False, **props: Any) -> Message:
    calls: List[tuple] = []

    def record(*args: Any) -> bool:
        calls.append(args)
        return True

    msg = Message._received(
        body,
        props,
        {'delivery_tag': 5, 'routing_key': 'rk'},
        channel=None,
        acker=acker or record,
        no_ack=no_ack,
        accept=None,
    )
    msg.calls = calls  # type: ignore[attr-defined]
    return msg


def test_received_message_decodes_json_and_caches_it() -> None:
    msg = _received(b'{"a": [1, 2]}', content_type='application/json', content_encoding='utf-8')
    assert msg.decode() == {'a': [1, 2]} and msg.payload is msg.decode()
    assert (msg.delivery_tag, msg.delivery_info['routing_key']) == (5, 'rk')


def test_received_message_refuses_a_content_type_not_accepted() -> None:
    msg = _received(
        b'\x80\x04N.', content_type='application/x-python-serialize', content_encoding='binary'
    )
    with pytest.raises(ContentDisallowed):
        msg.decode()


def test_compressed_body_is_decompressed_on_receipt() -> None:
    body, header = compress(b'{"z": 1}', 'zlib')
    assert header == 'application/x-gzip' and body == zlib.compress(b'{"z": 1}')
    msg = _received(
        body,
        content_type='application/json',
        content_encoding='utf-8',
        headers={'compression': header},
    )
    assert msg.decode() == {'z': 1}


@pytest.mark.parametrize('method', ['zlib', 'gzip', 'bzip2', 'bz2', 'lzma', 'xz'])
def test_compression_round_trips(method: str) -> None:
    data, header = compress(b'abc' * 100, method)
    assert decompress(data, header) == b'abc' * 100


def test_unknown_compression_is_refused_and_a_bad_body_is_a_decode_error() -> None:
    with pytest.raises(ValueError, match='zlib'):
        compress(b'x', 'snappy')
    msg = _received(
        b'not zlib', content_type='application/json', headers={'compression': 'application/x-gzip'}
    )
    assert msg.errors
    with pytest.raises(DecodeError):
        msg.decode()


def test_ack_goes_through_the_consumer_once() -> None:
    msg = _received(b'{}')
    msg.ack()
    assert msg.acknowledged and msg.calls == [(5, False, False, False)]
    with pytest.raises(MessageStateError, match='ACK'):
        msg.ack()
    with pytest.raises(MessageStateError):
        msg.reject()


@pytest.mark.parametrize(
    'action, call, state',
    [
        (lambda m: m.reject(), (5, False, True, False), 'REJECTED'),
        (lambda m: m.reject(requeue=True), (5, False, True, True), 'REQUEUED'),
        (lambda m: m.requeue(), (5, False, True, True), 'REQUEUED'),
        (lambda m: m.ack(multiple=True), (5, True, False, False), 'ACK'),
    ],
)
def test_reject_and_requeue_states(action: Any, call: tuple, state: str) -> None:
    msg = _received(b'{}')
    action(msg)
    assert msg.calls == [call] and msg._state == state


def test_ack_of_a_no_ack_delivery_does_nothing() -> None:
    msg = _received(b'{}', no_ack=True)
    msg.ack()
    assert msg.calls == []


def test_a_message_that_was_not_received_cannot_be_acked() -> None:
    with pytest.raises(MessageStateError, match='receiving channel'):
        Message(b'x').ack()


def test_a_failed_ack_leaves_the_message_unacknowledged() -> None:
    def broken(*_: Any) -> bool:
        raise TimeoutError('ack not done')

    msg = _received(b'{}', acker=broken)
    with pytest.raises(TimeoutError):
        msg.ack()
    assert not msg.acknowledged


# ------------------------------------------------------------------ helpers


class RecordingChannel:
    """The duck-typed channel entities use, recording commands instead of sending them."""

    def __init__(self, result: Any = 0) -> None:
        self.commands: List[tuple] = []
        self.declared: set = set()
        self.result = result

    def control(self, kind: str, timeout: Any = None, cache_key: Any = None, **kwargs: Any) -> Any:
        self.commands.append((kind, cache_key, kwargs))
        if cache_key is not None:
            self.declared.add(cache_key)
        return self.result

    def is_declared(self, key: Any) -> bool:
        return key in self.declared

    def forget_declared(self, key: Any) -> None:
        self.declared.discard(key)

    def kinds(self) -> List[str]:
        return [c[0] for c in self.commands]
