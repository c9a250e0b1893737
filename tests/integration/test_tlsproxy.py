"""tests.tlsproxy.TLSProxy: pika over TLS, trusting the throwaway CA, to the real broker."""

from __future__ import annotations

import ssl

import pika
import pytest

from tests.helpers import eventually, pika_parameters


def _tls_parameters(tls_proxy, amqp_url, context: ssl.SSLContext):
    params = pika_parameters(tls_proxy.url(amqp_url), connection_attempts=1)
    params.ssl_options = pika.SSLOptions(context)  # server_hostname: the URL's host, 127.0.0.1
    return params


def test_pika_does_a_round_trip_over_tls_trusting_the_generated_ca(
    tls_proxy, amqp_url, unique_name
):
    url = tls_proxy.url(amqp_url)
    assert url.startswith('amqps://') and f'127.0.0.1:{tls_proxy.port}' in url
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)  # hostname checks on

    connection = pika.BlockingConnection(_tls_parameters(tls_proxy, amqp_url, context))
    try:
        channel = connection.channel()
        channel.queue_declare(unique_name, exclusive=True)
        channel.basic_publish('', unique_name, b'over TLS')
        body = eventually(lambda: channel.basic_get(unique_name, auto_ack=True)[2])
    finally:
        connection.close()

    assert body == b'over TLS'
    assert tls_proxy.publish_count == 1  # the proxy parsed the decrypted stream


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_proxy, amqp_url):
    context = ssl.create_default_context()  # system CAs only: the throwaway CA is unknown

    with pytest.raises(ssl.SSLCertVerificationError):  # pika 1.4 lets it through unwrapped
        pika.BlockingConnection(_tls_parameters(tls_proxy, amqp_url, context))
    assert tls_proxy.wait_for(lambda: tls_proxy.active_connections == 0, timeout=10)
    assert tls_proxy.connection_attempts == 1
