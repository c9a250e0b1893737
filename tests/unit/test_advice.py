"""``pika_rpc._advice``: each error a newcomer meets gets a sentence naming it and the fix.

The exceptions are built as pika 1.3/1.4 builds them (class and text), so no broker is needed;
``tests/integration/test_newcomer_errors.py`` checks the same through the public API.
"""

from __future__ import annotations

import socket
import ssl

import pika.exceptions
import pytest
from pika.adapters.utils.connection_workflow import (
    AMQPConnectorSocketConnectError,
    AMQPConnectorStackTimeout,
)

from pika_rpc._advice import connect_advice, describe, precondition_advice, reason, where

PARAMS = [
    {
        'host': 'rabbit.example',
        'port': 5672,
        'virtual_host': '/',
        'userid': 'app',
        'password': 's3cret-pw',
    }
]
REFUSED = pika.exceptions.AMQPConnectionError(
    AMQPConnectorSocketConnectError(ConnectionRefusedError(111, 'Connection refused'))
)
BAD_LOGIN = pika.exceptions.ProbableAuthenticationError(
    "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication "
    "mechanism PLAIN. For details see the broker logfile.'"
)
NO_VHOST = pika.exceptions.ProbableAccessDeniedError(
    "ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost Shop not found'"
)
NO_PERMISSION = pika.exceptions.ProbableAccessDeniedError(
    "ConnectionClosedByBroker: (530) \"NOT_ALLOWED - access to vhost 'shop' refused for user "
    "'app'\""
)


def test_describe_shows_what_an_empty_amqp_connection_error_holds():
    assert str(REFUSED) == ''
    assert describe(REFUSED) == (
        'AMQPConnectionError: AMQPConnectorSocketConnectError: '
        "ConnectionRefusedError(111, 'Connection refused')"
    )
    assert describe(ValueError('x')) == 'ValueError: x' and describe(KeyError()) == 'KeyError'


@pytest.mark.parametrize(
    'exc,needles',
    [
        (
            REFUSED,
            ['Nothing accepts connections at rabbit.example:5672', 'start RabbitMQ', 'broker_url'],
        ),
        (BAD_LOGIN, ['ACCESS_REFUSED', "user 'app'", 'check the user and password in broker_url']),
        (
            NO_VHOST,
            [
                "vhost 'Shop' does not exist",
                'rabbitmqctl add_vhost Shop',
                'set_permissions -p Shop app',
                'or fix the vhost in broker_url',
            ],
        ),
        (
            NO_PERMISSION,
            [
                "User 'app' has no permissions on vhost 'shop'",
                "rabbitmqctl set_permissions -p shop app '.*' '.*' '.*'",
            ],
        ),
        (
            socket.gaierror(-2, 'Name or service not known'),
            ['does not resolve (rabbit.example:5672)', 'fix the host'],
        ),
        (
            pika.exceptions.AMQPConnectionError(
                AMQPConnectorStackTimeout('Timeout during AMQP handshake')
            ),
            ['No answer from rabbit.example:5672 within broker_connection_timeout'],
        ),
        (
            pika.exceptions.IncompatibleProtocolError('StreamLostError'),
            ['not an AMQP 0-9-1 broker', '15672'],
        ),
        (
            ssl.SSLCertVerificationError(
                1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'
            ),
            ['TLS handshake failed', 'broker_use_ssl'],
        ),
    ],
)
def test_each_connect_error_gets_advice_naming_the_problem_and_the_fix(exc, needles):
    advice = connect_advice(exc, PARAMS)
    for needle in needles:
        assert needle in advice, advice
    assert 's3cret-pw' not in advice


def test_the_guest_user_is_told_it_works_only_from_localhost():
    advice = connect_advice(BAD_LOGIN, [dict(PARAMS[0], userid='guest')])
    assert "'guest' log in only from localhost" in advice
    assert 'localhost' not in connect_advice(BAD_LOGIN, PARAMS)


def test_pika_connection_parameters_are_read_too_and_unknown_errors_get_no_advice():
    params = pika.ConnectionParameters(
        'mq.internal', 5673, 'v1', pika.PlainCredentials('bob', 'pw')
    )
    assert "user 'bob'" in connect_advice(BAD_LOGIN, [params])
    assert 'mq.internal:5673' in connect_advice(REFUSED, [params])
    assert connect_advice(RuntimeError('something else'), [params]) == ''
    assert 'Nothing accepts connections at the broker' in connect_advice(REFUSED)


def test_a_cause_chain_is_looked_at():
    try:
        try:
            raise ConnectionRefusedError(111, 'Connection refused')
        except OSError as inner:
            raise RuntimeError('connect failed') from inner
    except RuntimeError as exc:
        assert 'start RabbitMQ' in connect_advice(exc, PARAMS)


@pytest.mark.parametrize(
    'text,needles',
    [
        (
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'tasks' in vhost '/': "
            "received 'true' but current is 'false'",
            [
                "Queue 'tasks' already exists with durable=false",
                'asks durable=true',
                'rabbitmqctl -p / delete_queue tasks',
            ],
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue 'r1' in vhost 'v': received "
            "the value '300000' of type 'signedint' but current is none",
            ['x-expires=(none)', 'asks x-expires=300000', 'rabbitmqctl -p v delete_queue r1'],
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex' in vhost '/': received "
            "'direct' but current is 'fanout'",
            ["Exchange 'ex' already exists with type=fanout", 'rabbitmqadmin -V / delete exchange'],
        ),
    ],
)
def test_a_406_says_which_argument_clashed_and_how_to_fix_it(text, needles):
    advice = precondition_advice(text)
    for needle in needles:
        assert needle in advice, advice


def test_a_406_without_an_argument_named_gets_no_advice():
    assert precondition_advice('PRECONDITION_FAILED - unknown delivery tag 7') == ''


# RabbitMQ 3.10's texts for what a quorum queue refuses (reproduced against the broker:
# tests/integration/test_quorum_queues.py declares each).
QUORUM_REFUSALS = [
    (
        "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 'q1' in vhost '/'",
        ['refuses exclusive=True', "queue 'q1'", 'no connection owns it'],
    ),
    (
        "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 'q1' in vhost '/'",
        ['refuses auto_delete=True', 'x-expires'],
    ),
    (
        "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q1' in vhost '/'",
        ['refuses durable=False', 'durable by design'],
    ),
    (
        "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q1' in vhost '/' of "
        'queue type rabbit_quorum_queue',
        ['A quorum queue does not take the argument x-max-priority', "queue 'q1'"],
    ),
]


@pytest.mark.parametrize('text,needles', QUORUM_REFUSALS)
def test_a_406_for_an_option_a_quorum_queue_refuses_says_so_and_never_already_exists(text, needles):
    advice = precondition_advice(text)
    for needle in needles:
        assert needle in advice, advice
    assert 'already exists' not in advice


def test_a_queue_type_clash_says_how_to_declare_the_type_the_queue_has():
    advice = precondition_advice(
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'tasks' in vhost '/': "
        "received none but current is the value 'quorum' of type 'longstr'"
    )
    assert "Queue 'tasks' already exists with x-queue-type=quorum" in advice
    assert "task_default_queue_type / task_create_missing_queue_type='quorum'" in advice
    assert '--queue-type quorum' in advice


# ------------------------------------------------------------------ reasons and URLs


@pytest.mark.parametrize(
    'exc, said',
    [
        (REFUSED, 'Connection refused'),
        (
            pika.exceptions.AMQPConnectionError(
                AMQPConnectorSocketConnectError(ConnectionResetError(104, 'Connection reset'))
            ),
            'The connection was reset during the handshake',
        ),
        (AMQPConnectorStackTimeout('Timeout during AMQP handshake'), 'No answer within'),
        (BAD_LOGIN, 'Login refused (ACCESS_REFUSED)'),
        (NO_VHOST, 'The vhost does not exist'),
        (socket.gaierror(-2, 'Name or service not known'), 'The host name does not resolve'),
        (
            ssl.SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify'),
            'The TLS handshake failed ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify',
        ),
    ],
    ids=['refused', 'reset', 'timeout', 'login', 'vhost', 'dns', 'tls'],
)
def test_reason_says_what_went_wrong_without_pika_class_names(exc, said):
    text = reason(exc)
    assert text.startswith(said), text
    assert 'AMQPConnect' not in text and 'Error(' not in text


def test_reason_of_an_unknown_error_names_it_fully():
    assert reason(ValueError('odd')) == 'ValueError: odd'


def test_where_masks_the_password_and_writes_urls_kombu_style():
    params = PARAMS + [dict(PARAMS[0], host='::1', virtual_host='shop', ssl=True, port=5671)]
    assert where(params) == 'amqp://app:**@rabbit.example:5672//;amqps://app:**@[::1]:5671/shop'
    assert 's3cret' not in where(params)


def test_a_reset_connection_gets_advice_to_check_the_broker():
    exc = pika.exceptions.AMQPConnectionError(ValueError('getpeername() failed'))
    assert 'check the broker' in connect_advice(exc, PARAMS)
