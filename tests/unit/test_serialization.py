"""Serializer registry and kombu-compatible JSON envelopes (``docs/wire-format.rst``, JSON
envelopes): happy paths."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest

from pika_rpc import serialization

UTC = datetime.timezone.utc


def _json(value):
    return serialization.dumps(value)[2].decode('ascii')


def _load(text, accept=None):
    return serialization.loads(text.encode('utf-8'), 'application/json', 'utf-8', accept)


def test_dumps_returns_json_content_type_encoding_and_bytes():
    assert serialization.dumps({'a': 1}) == ('application/json', 'utf-8', b'{"a": 1}')


def test_json_uses_kombu_separators_and_escapes_non_ascii():
    assert _json({'a': [1, 2], 'b': 'é…'}) == '{"a": [1, 2], "b": "\\u00e9\\u2026"}'


def test_aware_datetime_is_written_as_the_kombu_envelope():
    value = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _json(value) == '{"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"}'


def test_aware_datetime_round_trips():
    value = datetime.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert _load(_json(value)) == value


def test_naive_datetime_stays_naive():
    value = datetime.datetime(2026, 1, 2, 3, 4, 5)
    decoded = _load(_json(value))
    assert decoded == value and decoded.tzinfo is None


def test_date_is_written_with_the_date_marker_and_round_trips():
    value = datetime.date(2026, 1, 2)
    assert _json(value) == '{"__type__": "date", "__value__": "2026-01-02"}'
    assert _load(_json(value)) == value


def test_time_is_written_with_the_time_marker_and_round_trips():
    value = datetime.time(3, 4, 5)
    assert _json(value) == '{"__type__": "time", "__value__": "03:04:05"}'
    assert _load(_json(value)) == value


def test_decimal_keeps_its_precision_on_the_wire():
    assert _json(decimal.Decimal('1.10')) == '{"__type__": "decimal", "__value__": "1.10"}'


def test_decimal_round_trips_with_its_precision():
    assert str(_load(_json(decimal.Decimal('1.10')))) == '1.10'


def test_uuid_value_is_an_object_with_hex_not_a_string():
    assert _json(uuid.UUID(int=1)) == (
        '{"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}}'
    )


def test_uuid_round_trips():
    value = uuid.uuid4()
    assert _load(_json(value)) == value


def test_utf8_bytes_use_the_bytes_marker_with_the_text():
    assert _json(b'caf\xc3\xa9') == '{"__type__": "bytes", "__value__": "caf\\u00e9"}'
    assert _load(_json(b'caf\xc3\xa9')) == b'caf\xc3\xa9'


def test_non_utf8_bytes_use_standard_base64():
    assert _json(b'\xff\x00') == '{"__type__": "base64", "__value__": "/wA="}'
    assert _load(_json(b'\xff\x00')) == b'\xff\x00'


def test_envelopes_are_decoded_at_any_depth():
    value = {'outer': [{'when': datetime.date(2026, 1, 2)}, [decimal.Decimal('2.5')]]}
    assert _load(_json(value)) == value


def test_the_captured_wire_example_decodes_to_python_values():
    text = (
        '{"dt": {"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"}, '
        '"u": {"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}}}'
    )
    assert _load(text) == {
        'dt': datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        'u': uuid.UUID(int=1),
    }


def test_an_object_with_extra_keys_beside_the_envelope_keys_stays_a_dict():
    text = '{"__type__": "datetime", "__value__": "2026-01-02", "x": 1}'
    assert _load(text) == {'__type__': 'datetime', '__value__': '2026-01-02', 'x': 1}


def test_an_object_with_only_one_envelope_key_stays_a_dict():
    assert _load('{"__type__": "nope"}') == {'__type__': 'nope'}


def test_tuples_are_written_as_lists():
    assert _json((1, (2, 3))) == '[1, [2, 3]]'


def test_an_object_with_dunder_json_is_written_as_its_return_value():
    class Money:
        def __json__(self):
            return {'amount': 5, 'currency': 'EUR'}

    assert _json({'price': Money()}) == '{"price": {"amount": 5, "currency": "EUR"}}'


def test_prepare_accept_content_maps_names_to_content_types():
    assert serialization.prepare_accept_content(['json', 'pickle']) == frozenset(
        {'application/json', 'application/x-python-serialize'}
    )


def test_prepare_accept_content_keeps_content_types_as_given():
    assert serialization.prepare_accept_content(['application/json']) == frozenset(
        {'application/json'}
    )


def test_prepare_accept_content_of_none_is_json_only():
    assert serialization.prepare_accept_content(None) == frozenset({'application/json'})


def test_loads_accepts_a_content_type_listed_by_name():
    assert serialization.loads(b'[1]', 'application/json', 'utf-8', accept=['json']) == [1]


def test_pickle_round_trips_when_the_accept_list_names_it():
    content_type, encoding, body = serialization.dumps({'a': {1, 2}}, 'pickle')
    assert (content_type, encoding) == ('application/x-python-serialize', 'binary')
    assert serialization.loads(body, content_type, encoding, accept=['pickle']) == {'a': {1, 2}}


def test_msgpack_round_trips_envelope_types():
    pytest.importorskip('msgpack')
    value = {
        'dt': datetime.datetime(2026, 1, 2, tzinfo=UTC),
        'd': decimal.Decimal('1.10'),
        'u': uuid.UUID(int=7),
        'b': b'\xff',
        't': (1, 2),
    }
    content_type, encoding, body = serialization.dumps(value, 'msgpack')
    assert (content_type, encoding) == ('application/x-msgpack', 'binary')
    decoded = serialization.loads(body, content_type, encoding, accept=['msgpack'])
    assert decoded == dict(value, t=[1, 2])


def test_msgpack_keeps_bytes_native_as_kombu_does():
    msgpack = pytest.importorskip('msgpack')
    body = serialization.dumps(b'\xff', 'msgpack')[2]
    assert msgpack.unpackb(body, raw=False) == b'\xff'


def test_yaml_round_trips_and_writes_tuples_as_lists():
    pytest.importorskip('yaml')
    content_type, encoding, body = serialization.dumps({'args': (1, 2)}, 'yaml')
    assert (content_type, encoding) == ('application/x-yaml', 'utf-8')
    assert serialization.loads(body, content_type, encoding, accept=['yaml']) == {'args': [1, 2]}


def test_a_registered_serializer_is_used_by_dumps_and_loads():
    serialization.register(
        'upper-test',
        'text/x-upper-test',
        'utf-8',
        lambda obj: str(obj).upper(),
        lambda text: text.lower(),
    )
    content_type, encoding, body = serialization.dumps('hello', 'upper-test')
    assert body == b'HELLO'
    assert serialization.loads(body, content_type, encoding, accept=['upper-test']) == 'hello'


def test_a_binary_serializer_gets_bytes_whatever_encoding_the_message_names():
    pytest.importorskip('msgpack')
    body = serialization.dumps([b'\xff'], 'msgpack')[2]
    decoded = serialization.loads(body, 'application/x-msgpack', 'utf-8', accept=['msgpack'])
    assert decoded == [b'\xff']
