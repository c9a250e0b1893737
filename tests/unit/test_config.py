"""pika_rpc.config: URLs, settings, derived connection options (happy paths)."""

from __future__ import annotations

import ast
import dataclasses
import datetime
import logging
import pickle
import ssl
import sys
import types
import uuid
from pathlib import Path

import pytest

from pika_rpc import config
from pika_rpc.config import (
    QUORUM_DELIVERY_LIMIT,
    BrokerAddress,
    Settings,
    connection_options,
    connection_retry_policy,
    mask_url,
    merge_retry_policy,
    parse_url,
    reply_queue_arguments,
)

SECRET = 's3cr3t-p4ss'


# ----------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    'url, vhost',
    [
        ('amqp://h//', '/'),
        ('amqp://h/', '/'),
        ('amqp://h', '/'),
        ('amqp://h/%2F', '/'),
        ('amqp://h/foo', 'foo'),
        ('amqp://h/a%2Fb', 'a/b'),
        ('amqp://h//foo', '/foo'),
        ('amqp://h:5673/foo/bar', 'foo/bar'),
    ],
)
def test_vhost_is_the_unquoted_path_after_the_first_slash(url, vhost):
    assert parse_url(url)[0].virtual_host == vhost


@pytest.mark.parametrize(
    'url, port, explicit',
    [
        ('amqp://h//', 5672, False),
        ('amqps://h//', 5671, False),
        ('amqp://h:1234//', 1234, True),
        ('amqps://h:5999//', 5999, True),
    ],
)
def test_port_defaults_to_the_schemes_port(url, port, explicit):
    addr = parse_url(url)[0]
    assert (addr.port, addr.port_explicit) == (port, explicit)


def test_amqps_means_tls_and_amqp_does_not():
    assert parse_url('amqps://h//')[0].ssl
    assert not parse_url('amqp://h//')[0].ssl


@pytest.mark.parametrize('scheme', ['amqp', 'pyamqp', 'AMQP', 'librabbitmq'])
def test_pyamqp_and_amqp_schemes_are_alike(scheme):
    assert parse_url(f'{scheme}://h//')[0].scheme == 'amqp'


def test_missing_user_password_and_host_default_as_kombu():
    addr = parse_url('amqp://')[0]
    assert (addr.host, addr.userid, addr.password) == ('localhost', 'guest', 'guest')
    assert parse_url('amqp://bob@h//')[0].password == 'guest'


def test_user_and_password_are_unquoted():
    addr = parse_url('amqp://us%40er:p%2Fw%3Ad@h//')[0]
    assert (addr.userid, addr.password) == ('us@er', 'p/w:d')


def test_an_unquoted_at_sign_in_the_password_splits_at_the_last_at():
    assert parse_url('amqp://u:p@ss@h//')[0].password == 'p@ss'


def test_ipv6_host_parses_and_prints_in_brackets():
    addr = parse_url('amqp://[::1]:5673//')[0]
    assert (addr.host, addr.port) == ('::1', 5673)
    assert addr.as_uri().startswith('amqp://guest:**@[::1]:5673/')


def test_failover_list_of_three_urls_parses_each_on_its_own():
    addrs = parse_url('amqp://u1:p1@a:1111/v1; amqp://b//;amqps://u3:p3@c/v3')
    assert [(a.host, a.port, a.virtual_host, a.userid, a.scheme) for a in addrs] == [
        ('a', 1111, 'v1', 'u1', 'amqp'),
        ('b', 5672, '/', 'guest', 'amqp'),  # nothing inherited from the first entry
        ('c', 5671, 'v3', 'u3', 'amqps'),
    ]


def test_a_list_of_urls_is_a_failover_list_too():
    assert [a.host for a in parse_url(['amqp://a//', 'amqp://b//;amqp://c//'])] == ['a', 'b', 'c']


def test_empty_entries_in_a_failover_list_are_skipped():
    assert [a.host for a in parse_url('amqp://a//;;amqp://b//;')] == ['a', 'b']


def test_query_parameters_are_kept_as_text_options():
    addr = parse_url('amqp://h//?heartbeat=30&connection_timeout=2.5')[0]
    assert addr.options == {'heartbeat': '30', 'connection_timeout': '2.5'}


def test_as_uri_with_password_round_trips():
    addr = parse_url(f'amqp://u%40x:{SECRET}%2F@h:99/a%2Fb?heartbeat=3')[0]
    assert parse_url(addr.as_uri(include_password=True))[0] == addr


def test_as_uri_writes_the_root_vhost_kombu_style():
    assert parse_url('amqp://h')[0].as_uri() == 'amqp://guest:**@h:5672//'


def test_password_is_masked_in_repr_str_and_as_uri():
    addr = parse_url(f'amqp://user:{SECRET}@h//')[0]
    for text in (
        repr(addr),
        str(addr),
        addr.as_uri(),
        addr.as_uri(include_password=False),
        repr([addr]),
    ):
        assert SECRET not in text
        assert '**' in text
    assert SECRET in addr.as_uri(include_password=True)
    assert addr.password == SECRET


def test_mask_url_masks_every_entry_of_a_failover_list():
    masked = mask_url(f'amqp://a:{SECRET}@h1//;amqp://b:{SECRET}@h2//')
    assert SECRET not in masked
    assert masked == 'amqp://a:**@h1:5672//;amqp://b:**@h2:5672//'


def test_mask_url_masks_text_that_does_not_parse():
    masked = mask_url(f'redis://u:{SECRET}@h/0')
    assert SECRET not in masked and masked == 'redis://u:**@h/0'


def test_mask_url_hides_every_piece_of_a_password_with_an_unescaped_at_and_slash():
    # A generic URL parse ends the user info at the first '/', so it would read 'ss' as the
    # host and 'wd@h//' as the vhost: the mask removes up to the last '@' before parsing.
    masked = mask_url('amqp://u:p@ss/wd@h//')
    assert 'ss' not in masked and 'wd' not in masked
    assert masked == 'amqp://u:**@h:5672//'


def test_mask_url_leaves_a_url_without_a_password_readable():
    assert mask_url('amqp://user@h//') == 'amqp://user:**@h:5672//'
    assert mask_url('not a url: amqp://host') == 'not a url: amqp://host'


def test_config_and_findbroker_mask_urls_with_one_implementation():
    from pika_rpc import _urls, findbroker

    assert config.mask_url is findbroker.mask_url is _urls.mask_url
    assert config.parse_url is _urls.parse_url and config.BrokerAddress is _urls.BrokerAddress


@pytest.mark.parametrize(
    'url, expected',
    [
        ('amqp://u:p@h1:5673/v;amqp://h2//', ('h1', 5673)),
        ('amqps://h', ('h', 5671)),
        ('pyamqp://h', ('h', 5672)),
        ('amqp://[::1]:99//', ('::1', 99)),
    ],
)
def test_host_port_is_the_first_broker_as_the_client_reads_it(url, expected):
    from pika_rpc._urls import host_port

    assert host_port(url) == expected


def test_broker_address_is_frozen_and_hashable():
    addr = parse_url('amqp://h//?x=1')[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        addr.host = 'other'
    assert hash(addr) == hash(parse_url('amqp://h//?x=1')[0])


def test_broker_address_pickles():
    addr = parse_url(f'amqps://u:{SECRET}@h:1/v?heartbeat=1')[0]
    assert pickle.loads(pickle.dumps(addr)) == addr


# ------------------------------------------------------------------ Settings


def test_defaults_are_celerys_and_the_designs():
    s = Settings()
    assert s.result_expires == 86400
    assert (s.result_serializer, s.task_serializer, s.accept_content) == ('json', 'json', ['json'])
    assert s.result_persistent is False
    assert (s.broker_heartbeat, s.broker_connection_timeout) == (120, 4)
    assert (s.broker_connection_max_retries, s.broker_connection_retry) == (100, True)
    assert s.task_default_queue == 'celery'
    assert s.task_publish_retry_policy == {
        'max_retries': 3,
        'interval_start': 0,
        'interval_step': 0.2,
        'interval_max': 1,
    }
    assert s.result_backend_retry_policy == {
        'max_retries': 20,
        'interval_start': 0,
        'interval_step': 1,
        'interval_max': 1,
    }
    assert (s.result_cache_max, s.publish_timeout, s.blocked_connection_timeout) == (
        10000,
        10.0,
        30.0,
    )
    assert (s.large_body_threshold, s.pending_history_max, s.out_of_band_max, s.handoff_max) == (
        65536,
        100,
        1000,
        10000,
    )
    assert s.result_max_size is None and s.broker_use_ssl is False


def test_broker_url_defaults_to_amqp_url_env(monkeypatch):
    monkeypatch.setenv('AMQP_URL', 'amqp://envhost//')
    assert Settings().broker_url == 'amqp://envhost//'


def test_broker_url_defaults_to_local_guest_without_env(monkeypatch):
    monkeypatch.delenv('AMQP_URL', raising=False)
    assert Settings().broker_url == 'amqp://guest:guest@localhost:5672//'


def test_explicit_broker_url_wins_over_env(monkeypatch):
    monkeypatch.setenv('AMQP_URL', 'amqp://envhost//')
    assert Settings(broker_url='amqp://mine//').broker_url == 'amqp://mine//'


def test_broker_url_list_becomes_a_failover_string():
    assert Settings(broker_url=['amqp://a//', 'amqp://b//']).broker_url == 'amqp://a//;amqp://b//'


def test_result_accept_content_none_follows_accept_content():
    s = Settings(accept_content=['json', 'msgpack'])
    assert s.result_accept_content == ['json', 'msgpack']
    s.result_accept_content = ['json']
    assert s.result_accept_content == ['json']


def test_accept_content_text_is_split_on_commas():
    assert Settings(accept_content='json, msgpack').accept_content == ['json', 'msgpack']


def test_result_expires_accepts_a_timedelta():
    assert Settings(result_expires=datetime.timedelta(hours=1)).result_expires == 3600.0


def test_attribute_item_and_get_access_agree():
    s = Settings(result_expires=60)
    assert s.result_expires == s['result_expires'] == s.get('result_expires') == 60
    assert s.get('no_such_setting', 'dflt') == 'dflt'
    assert 'result_expires' in s and 'no_such_setting' not in s


def test_update_setitem_and_setattr_write_validated_values():
    s = Settings()
    s.update({'result_expires': 10}, task_track_started=True)
    s['result_cache_max'] = 5
    s.publish_timeout = 2.5
    assert (s.result_expires, s.task_track_started, s.result_cache_max, s.publish_timeout) == (
        10.0,
        True,
        5,
        2.5,
    )


def test_copy_is_independent_of_the_original():
    s = Settings(broker_transport_options={'a': 1})
    c = s.copy()
    c.broker_transport_options['a'] = 2
    c.result_expires = 1
    assert s.broker_transport_options == {'a': 1} and s.result_expires == 86400
    assert c == c.copy()


def test_settings_is_a_mapping_of_every_setting():
    s = Settings()
    assert set(s) == set(s.as_dict()) and len(s) == len(dict(s))
    assert dict(s)['task_default_queue'] == 'celery'


def test_partial_retry_policy_merges_over_the_default():
    s = Settings(task_publish_retry_policy={'max_retries': 7})
    assert s.task_publish_retry_policy == {
        'max_retries': 7,
        'interval_start': 0,
        'interval_step': 0.2,
        'interval_max': 1,
    }


def test_settings_rebuild_from_as_dict():
    s = Settings(
        broker_url=f'amqp://u:{SECRET}@h//', result_expires=5, accept_content=['json', 'msgpack']
    )
    assert Settings(**s.as_dict()) == s


def test_settings_pickle_round_trip():
    s = Settings(broker_url=f'amqp://u:{SECRET}@h//', result_expires=5)
    assert pickle.loads(pickle.dumps(s)) == s


def test_settings_repr_masks_the_password_and_shows_changes():
    s = Settings(
        broker_url=f'amqp://u:{SECRET}@h//',
        result_expires=5,
        broker_use_ssl={'certfile': 'c.pem', 'key_password': SECRET},
    )
    text = repr(s)
    assert SECRET not in text
    assert 'result_expires=5.0' in text and 'amqp://u:**@h:5672//' in text


def test_as_dict_censored_masks_url_and_secret_options():
    s = Settings(
        broker_url=f'amqp://u:{SECRET}@h//', broker_transport_options={'password': SECRET, 'x': 1}
    )
    d = s.as_dict(censored=True)
    assert SECRET not in repr(d)
    assert d['broker_transport_options'] == {'password': '**', 'x': 1}
    assert SECRET in s.as_dict()['broker_url']


def test_result_persistent_none_means_false_as_celery():
    assert Settings(result_persistent=None).result_persistent is False


def test_result_backend_rpc_is_accepted():
    assert Settings(result_backend='rpc://').result_backend == 'rpc://'


# --------------------------------------------------------------- from_object


def test_from_object_reads_a_dict():
    s = Settings().from_object({'result_expires': 5, 'unrelated': 1})
    assert s.result_expires == 5


def test_from_object_reads_an_object_and_ignores_other_attributes():
    obj = types.SimpleNamespace(
        result_expires=7, task_track_started=True, DEBUG=True, helper=lambda: None
    )
    s = Settings().from_object(obj)
    assert (s.result_expires, s.task_track_started) == (7, True)


def test_from_object_with_celery_namespace_reads_prefixed_upper_case_names():
    conf = {
        'CELERY_RESULT_EXPIRES': 9,
        'CELERY_BROKER_URL': 'amqp://ns//',
        'result_expires': 1,
        'BROKER_URL': 'amqp://no//',
    }
    s = Settings().from_object(conf, namespace='CELERY')
    assert (s.result_expires, s.broker_url) == (9, 'amqp://ns//')


def test_from_object_namespace_works_on_a_lazy_settings_like_object():
    class Lazy:
        """Like Django's LazySettings: attributes come from __getattr__."""

        def __getattr__(self, name):
            if name == 'CELERY_TASK_DEFAULT_QUEUE':
                return 'jobs'
            raise AttributeError(name)

    assert Settings().from_object(Lazy(), namespace='CELERY_').task_default_queue == 'jobs'


@pytest.fixture
def conf_module(tmp_path, monkeypatch):
    name = f'cfg_{uuid.uuid4().hex}'
    Path(tmp_path, f'{name}.py').write_text(
        'import os\n'
        'result_expires = 11\n'
        'broker_url = "amqp://modhost//"\n'
        'class settings:\n'
        '    CELERY_RESULT_EXPIRES = 22\n'
        '    CELERY_TASK_TRACK_STARTED = True\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_from_object_imports_a_module_by_name(conf_module):
    s = Settings().from_object(conf_module)
    assert (s.result_expires, s.broker_url) == (11, 'amqp://modhost//')


def test_from_object_imports_module_colon_attr(conf_module):
    s = Settings().from_object(f'{conf_module}:settings', namespace='CELERY')
    assert (s.result_expires, s.task_track_started) == (22, True)


def test_from_object_imports_module_dot_attr(conf_module):
    s = Settings().from_object(f'{conf_module}.settings', namespace='CELERY')
    assert s.result_expires == 22


def test_from_object_silent_ignores_a_missing_module():
    s = Settings().from_object(f'no_such_module_{uuid.uuid4().hex}', silent=True)
    assert s == Settings()


def test_from_object_warns_about_a_likely_typo(caplog):
    with caplog.at_level(logging.WARNING, logger='pika_rpc.config'):
        Settings().from_object({'CELERY_RESULT_EXPIRE': 1}, namespace='CELERY')
    assert 'CELERY_RESULT_EXPIRES' in caplog.text


def test_from_object_warns_once_about_each_celery_setting_it_does_not_implement(caplog):
    conf = {
        'task_default_queue_type': 'quorum',
        'worker_send_task_events': True,
        'broker_heartbeat_checkrate': 2,
        'broker_read_url': 'x',
        'worker_concurrency': 4,
    }
    settings = Settings()
    with caplog.at_level(logging.WARNING, logger='pika_rpc.config'):
        settings.from_object(conf)
        settings.from_object(conf)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 4
    for name in list(conf)[1:]:
        assert sum(repr(name) in m for m in warned) == 1
    assert settings.task_default_queue_type == 'quorum'
    assert settings.unimplemented['worker_concurrency'] == 4


# ------------------------------------------------------------ derived options


def test_reply_queue_arguments_default_to_one_day():
    assert reply_queue_arguments(Settings()) == {'x-expires': 86400000}


@pytest.mark.parametrize(
    'expires, ms',
    [
        (60, 60000),
        (1.5, 1500),
        (datetime.timedelta(minutes=2), 120000),
        (None, 86400000),
        (0, 86400000),
        (0.0001, 1),
    ],
)
def test_reply_queue_arguments_follow_result_expires(expires, ms):
    assert reply_queue_arguments(Settings(result_expires=expires)) == {'x-expires': ms}


def test_result_queue_type_is_classic_by_default_and_quorum_on_demand():
    assert Settings().result_queue_type == 'classic'
    assert reply_queue_arguments(Settings(result_queue_type='quorum', result_expires=60)) == {
        'x-expires': 60000,
        'x-queue-type': 'quorum',
        'x-delivery-limit': QUORUM_DELIVERY_LIMIT,
    }


@pytest.mark.parametrize(
    'key, bad, error',
    [
        ('result_queue_type', 'stream', ValueError),
        ('result_queue_type', None, TypeError),
        ('broker_failover_strategy', 'random', ValueError),
        ('broker_failover_strategy', lambda it: iter(it), TypeError),
    ],
)
def test_queue_type_and_failover_strategy_refuse_anything_but_their_names(key, bad, error):
    with pytest.raises(error, match=key):
        Settings(**{key: bad})


def test_broker_failover_strategy_is_round_robin_by_default_and_may_be_shuffle():
    assert Settings().broker_failover_strategy == 'round-robin'
    assert Settings(broker_failover_strategy='shuffle').broker_failover_strategy == 'shuffle'


def test_connection_options_take_everything_from_url_and_settings():
    s = Settings(
        broker_url=f'amqp://u:{SECRET}@h:1234/v',
        broker_heartbeat=60,
        broker_connection_timeout=3,
        blocked_connection_timeout=9,
    )
    (opts,) = connection_options(s)
    assert opts == {
        'host': 'h',
        'port': 1234,
        'virtual_host': 'v',
        'userid': 'u',
        'password': SECRET,
        'heartbeat': 60,
        'connection_timeout': 3,
        'blocked_connection_timeout': 9,
        'ssl': None,
        'uri': 'amqp://u:**@h:1234/v',
        'client_properties': {},
    }


def test_connection_options_url_query_overrides_heartbeat_and_timeouts():
    s = Settings(
        broker_url='amqp://h//?heartbeat=15&connect_timeout=2&blocked_connection_timeout=5'
    )
    (opts,) = connection_options(s)
    assert (opts['heartbeat'], opts['connection_timeout'], opts['blocked_connection_timeout']) == (
        15,
        2.0,
        5.0,
    )


def test_connection_options_accepts_connection_timeout_in_the_query():
    (opts,) = connection_options(Settings(broker_url='amqp://h//?connection_timeout=1.5'))
    assert opts['connection_timeout'] == 1.5


def test_connection_options_round_a_fractional_heartbeat_up():
    (opts,) = connection_options(Settings(broker_url='amqp://h//?heartbeat=0.5'))
    assert opts['heartbeat'] == 1


def test_connection_options_one_dict_per_failover_broker():
    s = Settings(broker_url='amqp://a//;amqp://b//?heartbeat=5;amqps://c//')
    opts = connection_options(s)
    assert [(o['host'], o['port'], o['heartbeat']) for o in opts] == [
        ('a', 5672, 120),
        ('b', 5672, 5),
        ('c', 5671, 120),
    ]


def test_connection_options_amqps_gets_ssl_with_server_hostname():
    (opts,) = connection_options(Settings(broker_url='amqps://broker.example//'))
    assert opts['ssl'] == {'server_hostname': 'broker.example'}
    assert opts['port'] == 5671


def test_connection_options_broker_use_ssl_dict_on_amqp_url_uses_port_5671():
    s = Settings(
        broker_url='amqp://h//',
        broker_use_ssl={
            'ca_certs': 'ca.pem',
            'cert_reqs': ssl.CERT_REQUIRED,
            'server_hostname': 'sni',
        },
    )
    (opts,) = connection_options(s)
    assert opts['port'] == 5671
    assert opts['ssl'] == {
        'ca_certs': 'ca.pem',
        'cert_reqs': ssl.CERT_REQUIRED,
        'server_hostname': 'sni',
    }


def test_connection_options_explicit_port_is_kept_with_tls():
    (opts,) = connection_options(Settings(broker_url='amqp://h:5672//', broker_use_ssl=True))
    assert opts['port'] == 5672 and opts['ssl'] == {'server_hostname': 'h'}


def test_connection_options_ssl_query_options_override_settings():
    s = Settings(
        broker_url='amqp://h//?ssl=true&ssl_cert_reqs=required&ssl_certfile=c.pem',
        broker_use_ssl={'certfile': 'other.pem'},
    )
    (opts,) = connection_options(s)
    assert opts['ssl']['certfile'] == 'c.pem'
    assert opts['ssl']['cert_reqs'] == ssl.CERT_REQUIRED


def test_connection_options_ssl_false_in_query_turns_settings_tls_off():
    (opts,) = connection_options(Settings(broker_url='amqp://h//?ssl=false', broker_use_ssl=True))
    assert opts['ssl'] is None and opts['port'] == 5672


def test_connection_retry_policy_follows_celery_settings_and_kombu_intervals():
    assert connection_retry_policy(Settings()) == {
        'max_retries': 100,
        'interval_start': 2,
        'interval_step': 2,
        'interval_max': 30,
    }


@pytest.mark.parametrize(
    'conf, max_retries',
    [
        ({'broker_connection_max_retries': 0}, None),
        ({'broker_connection_max_retries': None}, None),
        ({'broker_connection_retry': False}, 0),
        ({'broker_connection_max_retries': 5}, 5),
    ],
)
def test_connection_retry_policy_max_retries(conf, max_retries):
    assert connection_retry_policy(Settings(**conf))['max_retries'] == max_retries


def test_connection_retry_policy_takes_transport_option_intervals():
    s = Settings(
        broker_transport_options={'interval_start': 0, 'interval_max': 3, 'visibility_timeout': 1}
    )
    policy = connection_retry_policy(s)
    assert (policy['interval_start'], policy['interval_step'], policy['interval_max']) == (0, 2, 3)


def test_merge_retry_policy_fills_kombu_ensure_defaults():
    assert merge_retry_policy(None, {'max_retries': 2}) == {
        'max_retries': 2,
        'interval_start': 1,
        'interval_step': 1,
        'interval_max': 1,
    }


def test_merge_retry_policy_override_wins_and_keeps_errback():
    def errback(exc, interval):
        pass

    merged = merge_retry_policy(
        {'max_retries': 3, 'interval_max': 5}, {'interval_max': 2, 'errback': errback}
    )
    assert merged['max_retries'] == 3 and merged['interval_max'] == 2
    assert merged['errback'] is errback


# ------------------------------------------------------------------- layering


def _imports(module):
    tree = ast.parse(Path(module.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add('.' * node.level + (node.module or ''))
    return names


def test_config_imports_no_pika_and_only_pure_pika_rpc_modules():
    names = _imports(config)
    assert not any(n == 'pika' or n.startswith('pika.') for n in names)
    local = {n for n in names if n.startswith('.') or n.startswith('pika_rpc')}
    assert local <= {
        '.errors',
        '.states',
        '._timeouts',
        '._urls',
        '._queue_settings',
        '._kombu_opts',
        '._setting_specs',
        '._celery_settings',
    }


# ------------------------------------------------------------------- queue types, retries


def test_queue_settings_default_to_celerys_and_the_consumer_retry_to_one_second_forever():
    s = Settings()
    assert (s.task_default_queue_type, s.task_create_missing_queue_type) == ('classic', 'classic')
    assert s.broker_native_delayed_delivery_queue_type == 'quorum'
    assert s.worker_detect_quorum_queues is True and s.task_queues is None
    assert s.broker_consumer_retry_interval == 1.0 and s.broker_consumer_max_retries is None


@pytest.mark.parametrize(
    'key',
    [
        'task_default_queue_type',
        'task_create_missing_queue_type',
        'broker_native_delayed_delivery_queue_type',
    ],
)
def test_a_queue_type_is_classic_or_quorum_and_anything_else_is_refused_naming_it(key):
    assert Settings(**{key: 'quorum'})[key] == 'quorum'
    assert Settings(**{key: 'classic'})[key] == 'classic'
    for bad in ('stream', 'Quorum', '', None, 1):
        with pytest.raises(ValueError, match=f"{key} must be 'classic' or 'quorum'"):
            Settings(**{key: bad})


def test_task_queues_takes_queue_objects_or_a_mapping_of_options():
    from pika_rpc.entities import Queue

    queues = [Queue('a'), Queue('b', queue_arguments={'x-queue-type': 'quorum'})]
    assert Settings(task_queues=queues).task_queues == queues
    assert Settings(task_queues={'a': {'exchange': 'a'}}).task_queues == {'a': {'exchange': 'a'}}
    for bad in ('a,b', ['a'], [Queue('')], {'a': 'x'}):
        with pytest.raises(TypeError, match='task_queues'):
            Settings(task_queues=bad)
    with pytest.raises(ValueError, match="names queue 'a' twice"):
        Settings(task_queues=[Queue('a'), Queue('a')])


def test_the_consumer_retry_interval_is_a_positive_finite_number_of_seconds():
    assert Settings(broker_consumer_retry_interval=0.25).broker_consumer_retry_interval == 0.25
    for bad in (0, -1, float('inf'), float('nan')):
        with pytest.raises(ValueError, match='broker_consumer_retry_interval'):
            Settings(broker_consumer_retry_interval=bad)
    for bad in (None, '1', True):
        with pytest.raises(TypeError, match='broker_consumer_retry_interval'):
            Settings(broker_consumer_retry_interval=bad)


def test_the_consumer_retry_limit_is_none_or_a_count():
    assert Settings(broker_consumer_max_retries=3).broker_consumer_max_retries == 3
    assert Settings(broker_consumer_max_retries=0).broker_consumer_max_retries == 0
    with pytest.raises(ValueError, match='broker_consumer_max_retries'):
        Settings(broker_consumer_max_retries=-1)
    with pytest.raises(TypeError, match='broker_consumer_max_retries'):
        Settings(broker_consumer_max_retries=1.5)
