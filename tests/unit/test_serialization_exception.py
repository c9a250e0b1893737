"""Serializer error paths: every bad input gives a typed pika_rpc error, never a bare one."""

from __future__ import annotations

import pickle

import pytest

from pika_rpc import serialization
from pika_rpc.errors import ContentDisallowed, DecodeError, EncodeError, PikaRPCError


def _load(body, content_type='application/json', encoding='utf-8', accept=None):
    return serialization.loads(body, content_type, encoding, accept)


def test_an_unknown_envelope_marker_is_a_decode_error():
    with pytest.raises(DecodeError, match="'frobnicate'"):
        _load(b'{"__type__": "frobnicate", "__value__": 1}')


def test_a_uuid_envelope_with_a_string_value_is_a_decode_error():
    with pytest.raises(DecodeError, match='uuid'):
        _load(b'{"__type__": "uuid", "__value__": "00000000000000000000000000000001"}')


def test_a_datetime_envelope_with_a_bad_value_is_a_decode_error():
    with pytest.raises(DecodeError):
        _load(b'{"__type__": "datetime", "__value__": "yesterday"}')


def test_a_base64_envelope_with_bad_text_is_a_decode_error():
    with pytest.raises(DecodeError):
        _load(b'{"__type__": "base64", "__value__": "%%%"}')


def test_malformed_json_is_a_decode_error():
    with pytest.raises(DecodeError, match='application/json'):
        _load(b'{"status": ')


def test_invalid_utf8_is_a_decode_error():
    with pytest.raises(DecodeError):
        _load(b'"\xff"')


def test_an_unknown_content_encoding_is_a_decode_error():
    with pytest.raises(DecodeError):
        _load(b'[1]', encoding='no-such-codec')


def test_deeply_nested_json_is_a_decode_error_not_a_recursion_error():
    with pytest.raises(DecodeError):
        _load(b'[' * 100000 + b']' * 100000)


def test_a_body_that_is_not_bytes_is_a_decode_error():
    with pytest.raises(DecodeError):
        _load(12345)


def test_pickle_is_refused_by_default():
    body = pickle.dumps({'a': 1})
    with pytest.raises(ContentDisallowed):
        _load(body, 'application/x-python-serialize', 'binary')


def test_pickle_is_refused_when_the_accept_list_does_not_name_it():
    body = pickle.dumps({'a': 1})
    with pytest.raises(ContentDisallowed):
        _load(body, 'application/x-python-serialize', 'binary', accept=['json', 'yaml'])


def test_content_disallowed_names_the_content_type_and_the_accepted_list():
    with pytest.raises(ContentDisallowed) as info:
        _load(b'x', 'application/x-python-serialize', 'binary', accept=['json'])
    assert 'application/x-python-serialize' in str(info.value)
    assert 'application/json' in str(info.value)


def test_a_missing_content_type_is_a_decode_error():
    with pytest.raises(DecodeError, match='no content type'):
        _load(b'{}', content_type=None)


def test_an_accepted_content_type_without_a_decoder_is_a_decode_error():
    with pytest.raises(DecodeError, match='application/x-nothing'):
        _load(b'{}', 'application/x-nothing', 'utf-8', accept=['application/x-nothing'])


def test_a_decoder_raising_anything_becomes_a_decode_error():
    def broken(_text):
        raise KeyError('boom')

    serialization.register('broken-test', 'text/x-broken-test', 'utf-8', str, broken)
    with pytest.raises(DecodeError, match='KeyError'):
        _load(b'x', 'text/x-broken-test', accept=['broken-test'])


def test_malformed_msgpack_is_a_decode_error():
    pytest.importorskip('msgpack')
    with pytest.raises(DecodeError):
        _load(b'\xc1', 'application/x-msgpack', 'binary', accept=['msgpack'])


def test_yaml_python_tags_are_refused_by_the_safe_loader():
    pytest.importorskip('yaml')
    body = b'!!python/object/apply:os.system ["true"]'
    with pytest.raises(DecodeError):
        _load(body, 'application/x-yaml', 'utf-8', accept=['yaml'])


def test_prepare_accept_content_rejects_an_unknown_name():
    with pytest.raises(ValueError, match='nosuchformat'):
        serialization.prepare_accept_content(['nosuchformat'])


def test_dumps_rejects_an_unknown_serializer_name():
    with pytest.raises(ValueError, match='nosuchformat'):
        serialization.dumps(1, 'nosuchformat')


def test_a_set_is_an_encode_error_naming_the_type():
    with pytest.raises(EncodeError, match='set'):
        serialization.dumps({'a': {1, 2}})


def test_an_arbitrary_object_is_an_encode_error_naming_its_class():
    class Widget:
        pass

    with pytest.raises(EncodeError, match='Widget'):
        serialization.dumps([Widget()])


def test_an_encode_error_is_also_a_type_error():
    with pytest.raises(TypeError):
        serialization.dumps(object())


def test_a_tuple_dict_key_is_an_encode_error():
    with pytest.raises(EncodeError):
        serialization.dumps({(1, 2): 'x'})


def test_a_circular_structure_is_an_encode_error():
    loop = []
    loop.append(loop)
    with pytest.raises(EncodeError):
        serialization.dumps(loop)


def test_msgpack_refuses_a_set_with_an_encode_error():
    pytest.importorskip('msgpack')
    with pytest.raises(EncodeError):
        serialization.dumps({1, 2}, 'msgpack')


def test_yaml_refuses_a_decimal_with_an_encode_error():
    pytest.importorskip('yaml')
    import decimal

    with pytest.raises(EncodeError):
        serialization.dumps(decimal.Decimal('1'), 'yaml')


@pytest.mark.parametrize('body', [b'', b'\x00', b'{"a": NaN', b'"\\ud800', b'[1, 2,]', b'{1: 2}'])
def test_loads_raises_only_pika_rpc_errors_for_garbage(body):
    with pytest.raises(PikaRPCError):
        _load(body)
