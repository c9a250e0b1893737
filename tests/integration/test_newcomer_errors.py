"""The errors a newcomer meets first, through the public API: each message names the problem
and says what to do (``pika_rpc/_advice.py``).

No broker at the address, a wrong password, a vhost that does not exist, a 406 because a
queue of that name exists with other arguments, and a broker that is not there while
``send_task`` has a short timeout. The password never appears in a message.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, List, Optional
from urllib.parse import quote

import pytest

from pika_rpc import App, ConnectionLost, PikaRPCError, PreconditionFailed
from pika_rpc.config import parse_url
from tests.integration.web_support import free_port


def _url(
    amqp_url: str, *, password: Optional[str] = None, vhost: str = '/', port: Optional[int] = None
) -> str:
    """The run's broker URL with one thing changed."""
    a = parse_url(amqp_url)[0]
    path = '/' if vhost == '/' else quote(vhost, safe='')
    return (
        f'amqp://{quote(a.userid, safe="")}:{quote(password or a.password, safe="")}@'
        f'{a.host}:{port or a.port}/{path}'
    )


def _send_error(url: str, **conf: Any) -> PikaRPCError:
    app = App(broker=url, **conf)
    try:
        with pytest.raises(PikaRPCError) as info:
            app.send_task('newcomer.add', (1, 2), timeout=5)
        return info.value
    finally:
        app.close()


def test_no_broker_at_the_address_says_so_and_how_to_start_one(amqp_url: str) -> None:
    port = free_port()
    err = _send_error(_url(amqp_url, port=port), broker_connection_retry=False)
    assert isinstance(err, ConnectionLost)
    assert f':{port}' in str(err) and 'Connection refused' in str(err)
    assert 'start RabbitMQ' in str(err) and 'broker_url' in str(err)


def test_a_wrong_password_says_access_refused_and_to_check_the_url(amqp_url: str) -> None:
    err = _send_error(_url(amqp_url, password='not-the-Pa55word'))
    assert isinstance(err, ConnectionLost)
    assert 'ACCESS_REFUSED' in str(err)
    assert 'check the user and password in broker_url' in str(err)
    assert 'not-the-Pa55word' not in str(err)


def test_a_vhost_that_does_not_exist_says_how_to_create_it(amqp_url: str, unique_name: str) -> None:
    err = _send_error(_url(amqp_url, vhost=unique_name))
    assert isinstance(err, ConnectionLost)
    assert f"vhost '{unique_name}' does not exist" in str(err)
    assert f'rabbitmqctl add_vhost {unique_name}' in str(err) and 'fix the vhost' in str(err)


def test_a_queue_that_exists_with_other_arguments_names_the_clash_and_the_fix(
    amqp_url: str, unique_name: str, raw_channel: Any
) -> None:
    raw_channel.queue_declare(unique_name, durable=False)  # not as Celery declares it
    try:
        err = _send_error(amqp_url, task_default_queue=unique_name)
    finally:
        raw_channel.queue_delete(unique_name)
        raw_channel.exchange_delete(unique_name)
    assert isinstance(err, PreconditionFailed)
    text = str(err)
    assert '406' in text and unique_name in text and "'durable'" in text
    assert 'delete it' in text


def test_a_short_send_timeout_is_kept_and_says_the_broker_cannot_be_reached(amqp_url: str) -> None:
    # Default connection retries, publish_timeout 60 s: send_task(timeout=1) must give up at
    # its own deadline, naming why it could not send.
    app = App(broker=_url(amqp_url, port=free_port()), publish_timeout=60)
    errors: List[BaseException] = []

    def send() -> None:
        try:
            app.send_task('newcomer.add', (1, 2), timeout=1)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        sender.join(30)
        assert not sender.is_alive()
    finally:
        app.close()
    assert len(errors) == 1 and isinstance(errors[0], PikaRPCError), errors
    assert 'Connection refused' in str(errors[0]) and 'start RabbitMQ' in str(errors[0])


@pytest.mark.parametrize('case', ['no broker', 'wrong password', 'no vhost'])
def test_each_failed_attempt_logs_one_warning_with_the_errors_advice_and_pika_logs_no_error(
    amqp_url: str, unique_name: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # an application's usual level; pika's own is left alone
    url = {
        'no broker': _url(amqp_url, port=free_port()),
        'wrong password': _url(amqp_url, password='not-the-Pa55word'),
        'no vhost': _url(amqp_url, vhost=unique_name),
    }[case]
    err = _send_error(url, broker_connection_retry=False)
    ours = [r for r in caplog.records if r.name == 'pika_rpc._connector']
    assert len(ours) == 1 and ours[0].levelno == logging.WARNING  # one attempt, one line
    line = ours[0].getMessage()
    assert line.startswith('Cannot connect to amqp://') and 'giving up after 1 attempt' in line
    advice = str(err).split('. ', 1)[1]  # the error's text after its first sentence
    assert advice in line, (advice, line)
    assert 'not-the-Pa55word' not in line and 'AMQPConnect' not in line
    pikas = [
        r for r in caplog.records if r.name.startswith('pika.') and r.levelno >= logging.WARNING
    ]
    assert pikas == [], [r.getMessage() for r in pikas]
