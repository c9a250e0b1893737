"""kombu's ``transport_options`` as pika_rpc reads them, kombu's constructor arguments and
address attributes of a ``Connection``, and the eager-connect options: pure logic (no
broker; a ``Connection`` does no I/O until used)."""

from __future__ import annotations

import logging

import pytest

from pika_rpc import _ensure, _kombu_opts, _pika
from pika_rpc.config import Settings, connection_options, connection_retry_policy
from pika_rpc.connection import Connection


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no key logged yet (the module logs each key once a process)."""
    monkeypatch.setattr(_kombu_opts, '_told', set())


def test_a_key_pika_rpc_does_not_implement_is_warned_once(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger='pika_rpc._kombu_opts'):
        _kombu_opts.check({'read_timeout': 5, 'confirm_publish': True})
        _kombu_opts.check({'read_timeout': 6})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'read_timeout' is ignored" in warnings[0].getMessage()


def test_another_transports_key_is_ignored_with_one_debug_line(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger='pika_rpc._kombu_opts'):
        Connection('amqp://h//', transport_options={'visibility_timeout': 3600})
        Connection('amqp://h//', transport_options={'visibility_timeout': 3600})
    lines = [r for r in caplog.records if 'visibility_timeout' in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.DEBUG]


def test_confirm_publish_is_read_silently_either_way(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger='pika_rpc._kombu_opts'):
        _kombu_opts.check({'confirm_publish': True})
        _kombu_opts.check({'confirm_publish': False})
    assert not caplog.records


@pytest.mark.parametrize(
    'options, confirms',
    [
        (None, True),
        ({}, True),
        ({'confirm_publish': None}, True),
        ({'confirm_publish': True}, True),
        ({'confirm_publish': False}, False),
        ({'confirm_publish': 0}, False),
        ({'heartbeat': 5}, True),
    ],
)
def test_publishing_confirms_unless_confirm_publish_is_false(options, confirms) -> None:
    assert _kombu_opts.confirms(options) is confirms


def test_a_link_without_confirms_is_not_the_link_with_them(monkeypatch) -> None:
    """The process's link for the same broker is another one (its own connection) when
    it publishes without confirms; the same options give the same link."""
    from pika_rpc import _registry

    url = 'amqp://guest:guest@127.0.0.1:1//'  # never connected: links start lazily
    plain = Settings(broker_url=url)
    unconfirmed = Settings(broker_url=url, broker_transport_options={'confirm_publish': False})
    links = [_registry.acquire_link_for(s) for s in (plain, unconfirmed, unconfirmed)]
    try:
        assert [link.confirms for link in links] == [True, False, False]
        assert links[0] is not links[1] and links[1] is links[2]
    finally:
        for link in links:
            _registry.release_link(link, timeout=1.0)


def test_connect_timeout_heartbeat_and_client_properties_override_the_settings() -> None:
    settings = Settings(
        broker_url='amqp://h//?connect_timeout=9',
        broker_heartbeat=60,
        broker_transport_options={
            'connect_timeout': 1.5,
            'heartbeat': 7,
            'client_properties': {'app': 'mine'},
        },
    )
    (opts,) = connection_options(settings)
    assert opts['connection_timeout'] == 1.5
    assert opts['heartbeat'] == 7
    assert opts['client_properties'] == {'app': 'mine'}
    params = _pika.connection_parameters(opts, 'link-name')
    assert params.client_properties == {
        'connection_name': 'link-name',
        'product': 'pika_rpc',
        'app': 'mine',
    }


@pytest.mark.parametrize(
    'options, error',
    [
        ({'connect_timeout': 'soon'}, TypeError),
        ({'heartbeat': -1}, ValueError),
        ({'client_properties': ['x']}, TypeError),
    ],
)
def test_a_bad_value_of_a_key_read_is_a_clear_error(options: dict, error: type) -> None:
    settings = Settings(broker_url='amqp://h//', broker_transport_options=options)
    with pytest.raises(error, match='transport_options'):
        connection_options(settings)


@pytest.mark.parametrize('options', [{'max_retries': 1.5}, {'connect_retries_timeout': 'x'}])
def test_a_bad_retry_value_fails_the_eager_connect_clearly(options: dict) -> None:
    conn = Connection('amqp://h//', transport_options=options)
    with pytest.raises(TypeError, match='transport_options'):
        _ensure.eager_options(conn)


def test_retry_keys_set_the_links_reconnect_policy() -> None:
    settings = Settings(broker_transport_options={'max_retries': 0, 'interval_start': 0.5})
    policy = connection_retry_policy(settings)
    assert (policy['max_retries'], policy['interval_start']) == (0, 0.5)


def test_kombus_constructor_arguments_are_its_settings() -> None:
    conn = Connection(
        'amqp://a:1//',
        alternates=['amqp://b:2//'],
        connect_timeout=3,
        heartbeat=11,
        transport_options={'max_retries': 2},
    )
    assert conn.alt == ['amqp://a:1//', 'amqp://b:2//']
    assert conn.connect_timeout == 3 == conn.settings.broker_connection_timeout
    assert conn.settings.broker_heartbeat == 11
    assert conn.transport_options == {'max_retries': 2}
    conn.transport_options = {'max_retries': 5}
    assert conn.settings.broker_transport_options == {'max_retries': 5}


def test_eager_options_follow_connect_timeout_and_the_transport_options() -> None:
    conn = Connection('amqp://h//', connect_timeout=2)
    opts = _ensure.eager_options(conn)
    assert (opts['timeout'], opts['max_retries']) == (2, None)
    assert (opts['interval_start'], opts['interval_step'], opts['interval_max']) == (2, 2, 30)
    conn.transport_options = {'connect_retries_timeout': None, 'max_retries': 3, 'interval_max': 1}
    opts = _ensure.eager_options(conn)
    assert (opts['timeout'], opts['max_retries'], opts['interval_max']) == (None, 3, 1)
    no_retry = Connection('amqp://h//', broker_connection_retry=False)
    assert _ensure.eager_options(no_retry)['max_retries'] == 0


def test_the_fatal_names_are_the_pika_boundarys_fatal_connect_errors() -> None:
    assert _ensure.FATAL_NAMES == {c.__name__ for c in _pika.FATAL_CONNECT_ERRORS}


def test_address_attributes_describe_the_first_url_until_connected() -> None:
    conn = Connection('pyamqp://u:p@first:1234/v;amqp://second:5672//')
    assert (conn.hostname, conn.port, conn.host) == ('first', 1234, 'first:1234')
    assert (conn.userid, conn.virtual_host, conn.transport_cls) == ('u', 'v', 'pyamqp')
    assert not conn.connected
    assert conn._link is None  # none of the above did any I/O


def test_switch_puts_the_url_first_and_refuses_a_non_amqp_scheme() -> None:
    conn = Connection('amqp://a:1//;amqp://b:2//')
    conn.switch('amqp://b:2//')
    assert conn.alt == ['amqp://b:2//', 'amqp://a:1//']
    assert conn.port == 2
    with pytest.raises(ValueError, match='Invalid transport scheme'):
        conn.switch('tbait.evil://localhost')
    assert conn.alt == ['amqp://b:2//', 'amqp://a:1//']


def test_a_dotted_or_unknown_scheme_is_refused_as_kombu_words_it() -> None:
    for url in ('amqp://a//;x.y://b', 'x.y+amqp://b', 'redis://b'):
        with pytest.raises(ValueError, match='Invalid transport scheme'):
            Connection(url)
    with pytest.raises(ValueError, match='Invalid transport scheme'):
        Connection('amqp://a//', alternates=['x.y://b'])
