"""pika_rpc.config: error paths. No message may ever contain a password."""

from __future__ import annotations

import math
import sys
import uuid
from pathlib import Path

import pytest

from pika_rpc.config import Settings, connection_options, mask_url, merge_retry_policy, parse_url

SECRET = 's3cr3t-p4ss'


def _raises(exc_type, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.args)
    return str(info.value)


@pytest.mark.parametrize(
    'url',
    [
        f'redis://u:{SECRET}@h/0',
        f'rpc://u:{SECRET}@h//',
        f'u:{SECRET}@h',
        f'amqp://u:{SECRET}@h:notaport//',
        f'amqp://u:{SECRET}/x@h//',  # an unquoted '/' in the password
        f'amqp://u:{SECRET}#1@h//',  # an unquoted '#' in the password
        f'x:{SECRET}@h://',
    ],
)
def test_bad_urls_raise_value_error_without_the_password(url):
    _raises(ValueError, parse_url, url)


def test_unknown_scheme_is_named_in_the_error():
    assert "'redis'" in _raises(ValueError, parse_url, f'redis://u:{SECRET}@h/0')


def test_rpc_url_as_broker_says_it_is_a_result_backend_url():
    assert 'result backend' in _raises(ValueError, parse_url, 'rpc://')


def test_bare_hostname_is_not_a_broker_url():
    assert 'not a broker URL' in _raises(ValueError, parse_url, 'localhost')


def test_hash_in_password_explains_quoting():
    assert '%23' in _raises(ValueError, parse_url, f'amqp://u:{SECRET}#@h//')


@pytest.mark.parametrize('url', ['', ';', ' ; ', []])
def test_empty_url_or_failover_list_is_refused(url):
    _raises(ValueError, parse_url, url)


def test_non_str_url_entry_is_a_type_error():
    _raises(TypeError, parse_url, ['amqp://h//', 5])


def test_mask_url_never_raises_and_never_leaks():
    for text in (
        f'amqp://u:{SECRET}@h:bad//',
        f'amqp://u:{SECRET}/x@h//',
        f'u:{SECRET}@h',
        f'amqp://a//;redis://u:{SECRET}@h',
    ):
        assert SECRET not in mask_url(text)


def test_settings_with_a_bad_broker_url_fails_at_construction_without_the_password():
    _raises(ValueError, Settings, broker_url=f'amqp://u:{SECRET}@h:x//')


def test_settings_refuses_a_non_rpc_result_backend_without_the_password():
    assert 'rpc://' in _raises(ValueError, Settings, result_backend=f'redis://u:{SECRET}@h/0')


def test_unknown_setting_is_a_type_error_suggesting_close_matches():
    message = _raises(TypeError, Settings, result_expire=1)
    assert "'result_expire'" in message and "'result_expires'" in message


def test_unknown_setting_in_update_and_setattr_is_a_type_error():
    s = Settings()
    _raises(TypeError, s.update, {'borker_url': 'amqp://h//'})
    with pytest.raises(TypeError):
        s.broker_hartbeat = 10


def test_unknown_attribute_read_is_an_attribute_error():
    with pytest.raises(AttributeError, match='result_expires'):
        Settings().result_expire


def test_unknown_item_read_is_a_key_error():
    with pytest.raises(KeyError):
        Settings()['nope']


@pytest.mark.parametrize(
    'conf',
    [
        {'result_expires': -1},
        {'result_expires': math.nan},
        {'result_expires': math.inf},
        {'result_cache_max': 0},
        {'result_cache_max': -1},
        {'pending_history_max': 0},
        {'handoff_max': 0},
        {'broker_heartbeat': -5},
        {'broker_connection_timeout': 0},
        {'broker_connection_max_retries': -1},
        {'publish_timeout': -1},
        {'result_max_size': 0},
    ],
)
def test_out_of_range_values_raise_value_error(conf):
    message = _raises(ValueError, Settings, **conf)
    assert next(iter(conf)) in message


@pytest.mark.parametrize(
    'conf',
    [
        {'result_expires': '60'},
        {'result_expires': True},
        {'broker_heartbeat': 'x'},
        {'result_cache_max': 1.5},
        {'task_track_started': 'yes'},
        {'accept_content': [1]},
        {'accept_content': None},
        {'task_default_queue': ''},
        {'broker_transport_options': [('a', 1)]},
        {'broker_use_ssl': 'yes'},
        {'broker_url': 42},
        {'task_publish_retry_policy': 3},
    ],
)
def test_wrongly_typed_values_raise_type_error(conf):
    message = _raises(TypeError, Settings, **conf)
    assert next(iter(conf)) in message


def test_a_failing_update_changes_nothing():
    s = Settings()
    with pytest.raises(ValueError):
        s.update(result_expires=5, result_cache_max=0)
    assert s.result_expires == 86400


def test_retry_policy_with_an_unknown_key_is_a_type_error():
    assert "'max_retries'" in _raises(TypeError, merge_retry_policy, None, {'max_retry': 1})


@pytest.mark.parametrize(
    'override, exc_type',
    [
        ({'interval_start': -1}, ValueError),
        ({'interval_max': math.inf}, ValueError),
        ({'max_retries': -1}, ValueError),
        ({'max_retries': 1.5}, TypeError),
        ({'interval_step': 'x'}, TypeError),
        ({'errback': 'not callable'}, TypeError),
    ],
)
def test_retry_policy_values_are_validated(override, exc_type):
    _raises(exc_type, merge_retry_policy, None, override)


def test_settings_retry_policy_is_validated():
    _raises(TypeError, Settings, result_backend_retry_policy={'retries': 3})


def test_connection_options_bad_query_number_names_it_without_the_password():
    s = Settings(broker_url=f'amqp://u:{SECRET}@h//?heartbeat=often')
    assert 'heartbeat' in _raises(ValueError, connection_options, s)


def test_connection_options_negative_query_heartbeat_is_refused():
    _raises(ValueError, connection_options, Settings(broker_url='amqp://h//?heartbeat=-1'))


def test_connection_options_unknown_cert_reqs_is_refused():
    s = Settings(broker_url='amqps://h//', broker_use_ssl={'cert_reqs': 'sometimes'})
    assert 'cert_reqs' in _raises(ValueError, connection_options, s)


def test_from_object_missing_module_raises_import_error():
    with pytest.raises(ImportError):
        Settings().from_object(f'no_such_module_{uuid.uuid4().hex}')


def test_from_object_missing_attribute_raises_import_error(tmp_path, monkeypatch):
    name = f'cfg_{uuid.uuid4().hex}'
    Path(tmp_path, f'{name}.py').write_text('x = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ImportError, match='nothere'):
            Settings().from_object(f'{name}:nothere')
    finally:
        sys.modules.pop(name, None)


def test_from_object_does_not_hide_an_import_error_inside_the_module(tmp_path, monkeypatch):
    name = f'cfg_{uuid.uuid4().hex}'
    Path(tmp_path, f'{name}.py').write_text('import no_such_dependency_xyz\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match='no_such_dependency_xyz'):
            Settings().from_object(name)
    finally:
        sys.modules.pop(name, None)


def test_from_object_bad_value_is_validated():
    _raises(ValueError, Settings().from_object, {'CELERY_RESULT_EXPIRES': -1}, namespace='CELERY')
