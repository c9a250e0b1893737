"""Celery message shapes (``docs/wire-format.rst``: Result messages, Task messages) and the
revoke broadcast, built and parsed."""

from __future__ import annotations

import datetime
import json
import os
import socket
import types

import pytest

from pika_rpc import errors, protocol, serialization, states
from pika_rpc.errors import DecodeError, SecurityError

UTC = datetime.timezone.utc
DONE = datetime.datetime(2026, 11, 24, 12, 39, 32, 380869, tzinfo=UTC)


def _wire(body):
    return serialization.dumps(body)[2].decode('ascii')


def _raw(text):
    return serialization.loads(text.encode('utf-8'), 'application/json', 'utf-8')


# --------------------------------------------------------------------------- result bodies


def test_success_body_is_byte_identical_to_celery_5_7():
    body = protocol.result_body(
        '8f416e17-0001', states.SUCCESS, {'answer': 42, 'list': [1, 2]}, date_done=DONE
    )
    assert _wire(body) == (
        '{"status": "SUCCESS", "result": {"answer": 42, "list": [1, 2]}, "traceback": null, '
        '"children": [], "date_done": "2026-11-24T12:39:32.380869+00:00", '
        '"task_id": "8f416e17-0001"}'
    )


def test_failure_body_is_byte_identical_to_celery_5_7():
    tb = (
        'Traceback (most recent call last):\n  File "/srv/wftasks.py", line 15, in boom\n'
        '    raise ValueError(msg)\nValueError: bad\n'
    )
    done = datetime.datetime(2026, 11, 26, 5, 44, 8, 168463, tzinfo=UTC)
    body = protocol.result_body(
        '33c2e1fe-0001', states.FAILURE, ValueError('bad'), tb, date_done=done
    )
    assert _wire(body) == (
        '{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad"], '
        '"exc_module": "builtins"}, "traceback": "Traceback (most recent call last):\\n  File '
        '\\"/srv/wftasks.py\\", line 15, in boom\\n    raise ValueError(msg)\\n'
        'ValueError: bad\\n", '
        '"children": [], "date_done": "2026-11-26T05:44:08.168463+00:00", '
        '"task_id": "33c2e1fe-0001"}'
    )


def test_started_body_is_byte_identical_to_celery_5_7():
    body = protocol.result_body(
        '23c11372-0001', states.STARTED, {'pid': 8372, 'hostname': 'wfdoc@vm'}, date_done=DONE
    )
    assert _wire(body) == (
        '{"status": "STARTED", "result": {"pid": 8372, "hostname": "wfdoc@vm"}, '
        '"traceback": null, "children": [], "date_done": null, "task_id": "23c11372-0001"}'
    )


def test_custom_state_body_is_byte_identical_to_celery_5_7():
    body = protocol.result_body('23c11372-0001', 'PROGRESS', {'done': 1, 'total': 1})
    assert _wire(body) == (
        '{"status": "PROGRESS", "result": {"done": 1, "total": 1}, "traceback": null, '
        '"children": [], "date_done": null, "task_id": "23c11372-0001"}'
    )


def test_retry_body_is_byte_identical_to_celery_5_7():
    tb = "Traceback ...\ncelery.exceptions.Retry: Retry in 0.5s: KeyError('missing')\n"
    body = protocol.result_body(
        'd176fb09-0001',
        states.RETRY,
        KeyError('missing'),
        tb,
        children=[[['d176fb09-0001', None], None]],
    )
    assert _wire(body) == (
        '{"status": "RETRY", "result": {"exc_type": "KeyError", "exc_message": ["missing"], '
        '"exc_module": "builtins"}, "traceback": "Traceback ...\\ncelery.exceptions.Retry: '
        'Retry in 0.5s: KeyError(\'missing\')\\n", "children": [[["d176fb09-0001", null], null]], '
        '"date_done": null, "task_id": "d176fb09-0001"}'
    )


def test_revoked_body_is_byte_identical_to_celery_5_7():
    done = datetime.datetime(2026, 11, 26, 5, 44, 9, 676099, tzinfo=UTC)
    body = protocol.result_body(
        '27faf7ec-0001', states.REVOKED, errors.TaskRevokedError('revoked'), date_done=done
    )
    assert _wire(body) == (
        '{"status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": '
        '["revoked"], "exc_module": "celery.exceptions"}, "traceback": null, "children": [], '
        '"date_done": "2026-11-26T05:44:09.676099+00:00", "task_id": "27faf7ec-0001"}'
    )


def test_group_and_parent_ids_come_before_the_task_id_as_in_celery_5_7():
    done = datetime.datetime(2026, 11, 26, 5, 44, 8, 377656, tzinfo=UTC)
    body = protocol.result_body(
        '2c95ab58-0001',
        states.SUCCESS,
        2,
        date_done=done,
        request={'group': 'g-123', 'parent_id': 'p-456'},
    )
    assert _wire(body) == (
        '{"status": "SUCCESS", "result": 2, "traceback": null, "children": [], '
        '"date_done": "2026-11-26T05:44:08.377656+00:00", "group_id": "g-123", '
        '"parent_id": "p-456", "task_id": "2c95ab58-0001"}'
    )


def test_date_done_defaults_to_now_in_utc_for_ready_states():
    before = datetime.datetime.now(UTC)
    done = protocol.result_body('t', states.SUCCESS, 1)['date_done']
    parsed = datetime.datetime.fromisoformat(done)
    assert done.endswith('+00:00') and parsed >= before


def test_date_done_is_written_in_the_given_timezone():
    paris_winter = datetime.timezone(datetime.timedelta(hours=1))
    done = protocol.result_body('t', states.SUCCESS, 1, tz=paris_winter)['date_done']
    assert done.endswith('+01:00')


def test_date_done_is_null_for_states_that_are_not_ready():
    assert protocol.result_body('t', states.STARTED, None, date_done=DONE)['date_done'] is None


def test_an_exception_in_a_success_result_is_left_for_the_serializer():
    body = protocol.result_body('t', states.SUCCESS, ValueError('x'), date_done=DONE)
    assert isinstance(body['result'], ValueError)


def test_extended_results_add_request_details_before_the_task_id():
    request = protocol.TaskRequest(
        id='t',
        name='wftasks.add',
        args=[2, 3],
        kwargs={},
        retries=1,
        hostname='w1@vm',
        delivery_info={'routing_key': 'celery'},
    )
    body = protocol.result_body(
        't', states.SUCCESS, 5, date_done=DONE, request=request, extended=True
    )
    assert list(body)[-7:] == ['name', 'args', 'kwargs', 'worker', 'retries', 'queue', 'task_id']
    assert (body['name'], body['worker'], body['queue']) == ('wftasks.add', 'w1@vm', 'celery')


def test_extended_keys_are_left_out_without_the_setting():
    body = protocol.result_body('t', states.SUCCESS, 5, request={'task': 'x', 'args': []})
    assert 'name' not in body and 'args' not in body


# --------------------------------------------------------------------------- reading results


def test_a_celery_5_5_body_with_the_task_id_first_and_no_date_done_is_read():
    meta = protocol.meta_from_raw(
        _raw(
            '{"task_id": "8f416e17-0001", "status": "SUCCESS", "result": 5, "traceback": null, '
            '"children": []}'
        )
    )
    assert meta == {
        'status': 'SUCCESS',
        'result': 5,
        'traceback': None,
        'children': [],
        'task_id': '8f416e17-0001',
    }


def test_reordered_keys_without_date_done_are_read():
    meta = protocol.meta_from_raw(
        _raw('{"result": {"done": 1}, "children": null, "status": "PROGRESS", "task_id": "t1"}')
    )
    assert (meta['status'], meta['result'], meta['task_id']) == ('PROGRESS', {'done': 1}, 't1')


def test_a_body_with_only_a_status_is_read_with_defaults():
    assert protocol.meta_from_raw({'status': 'SUCCESS'}) == {
        'status': 'SUCCESS',
        'result': None,
        'traceback': None,
        'children': None,
    }


def test_date_done_is_kept_as_a_string():
    meta = protocol.meta_from_raw({'status': 'SUCCESS', 'date_done': '2026-11-24T12:39:32+00:00'})
    assert meta['date_done'] == '2026-11-24T12:39:32+00:00'


def test_group_and_parent_ids_are_kept_when_present():
    meta = protocol.meta_from_raw({'status': 'SUCCESS', 'group_id': 'g', 'parent_id': 'p'})
    assert (meta['group_id'], meta['parent_id']) == ('g', 'p')


def test_unknown_keys_are_ignored():
    meta = protocol.meta_from_raw({'status': 'SUCCESS', 'result': 1, 'from_the_future': True})
    assert 'from_the_future' not in meta


def test_a_failure_result_is_rebuilt_into_the_exception():
    meta = protocol.meta_from_raw(
        {
            'status': 'FAILURE',
            'result': {'exc_type': 'ValueError', 'exc_message': ['bad'], 'exc_module': 'builtins'},
        }
    )
    assert type(meta['result']) is ValueError and meta['result'].args == ('bad',)


def test_a_revoked_result_from_celery_becomes_task_revoked_error():
    meta = protocol.meta_from_raw(
        {
            'status': 'REVOKED',
            'result': {
                'exc_type': 'TaskRevokedError',
                'exc_message': ['expired'],
                'exc_module': 'celery.exceptions',
            },
        }
    )
    assert type(meta['result']) is errors.TaskRevokedError


def test_a_retry_without_an_exception_has_a_null_result():
    assert protocol.meta_from_raw({'status': 'RETRY', 'result': None})['result'] is None


def test_an_exception_shaped_success_result_is_not_rebuilt():
    value = {'exc_type': 'ValueError', 'exc_message': ['x'], 'exc_module': 'builtins'}
    assert protocol.meta_from_raw({'status': 'SUCCESS', 'result': value})['result'] == value


def test_a_body_that_is_not_an_object_is_a_decode_error():
    with pytest.raises(DecodeError):
        protocol.meta_from_raw(['SUCCESS', 1])


def test_a_body_without_a_status_is_a_decode_error():
    with pytest.raises(DecodeError, match='status'):
        protocol.meta_from_raw({'result': 1, 'task_id': 't'})


def test_a_security_error_in_the_result_propagates():
    with pytest.raises(SecurityError):
        protocol.meta_from_raw(
            {
                'status': 'FAILURE',
                'result': {'exc_type': 'system', 'exc_module': 'os', 'exc_message': ['x']},
            }
        )


def test_the_body_task_id_wins_over_the_correlation_id():
    assert protocol.task_id_of({'task_id': 'real'}, 'c1') == 'real'


def test_the_correlation_id_is_used_when_the_body_has_no_task_id():
    assert protocol.task_id_of({'status': 'SUCCESS'}, 'c1') == 'c1'


# --------------------------------------------------------------------------- task messages

CAPTURED = json.loads("""{
 "properties": {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2,
   "priority": 5, "correlation_id": "d9f0af88-0001",
   "reply_to": "1f8ae643-f2f2-33eb-a531-d91e8500aba7",
   "expiration": "600000"},
 "headers": {"lang": "py", "task": "wftasks.add", "id": "d9f0af88-0001", "shadow": null,
   "eta": "2026-11-26T05:44:57.999944+00:00", "expires": "2026-11-26T05:54:27.999944+00:00",
   "group": null, "group_index": null, "retries": 0, "timelimit": [60, 50],
   "root_id": "d9f0af88-0001",
   "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen8494@vm",
   "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}},
 "body": [[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]}""")
NOW = datetime.datetime(2026, 11, 26, 5, 44, 27, 999944, tzinfo=UTC)


def _captured_message():
    return protocol.task_message(
        'wftasks.add',
        (2, 3),
        task_id='d9f0af88-0001',
        reply_to='1f8ae643-f2f2-33eb-a531-d91e8500aba7',
        countdown=30,
        expires=600,
        time_limit=60,
        soft_time_limit=50,
        priority=5,
        origin='gen8494@vm',
        now=NOW,
    )


def test_task_message_headers_match_the_captured_celery_message():
    headers, _, _ = _captured_message()
    assert headers == CAPTURED['headers']


def test_task_message_headers_are_in_celery_order():
    headers, _, _ = _captured_message()
    assert list(headers) == list(CAPTURED['headers'])


def test_task_message_properties_match_the_captured_celery_message():
    _, properties, _ = _captured_message()
    expected = dict(CAPTURED['properties'])
    del expected['content_type'], expected['content_encoding']
    assert properties == expected


def test_task_message_body_matches_the_captured_celery_message():
    _, _, body = _captured_message()
    assert _wire(body) == _wire(CAPTURED['body'])


def test_priority_defaults_to_zero_and_no_expiration_is_set():
    _, properties, _ = protocol.task_message('t', task_id='i', reply_to='r')
    assert properties['priority'] == 0 and 'expiration' not in properties


def test_countdown_wins_over_an_explicit_eta():
    eta = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    headers, _, _ = protocol.task_message(
        't', task_id='i', reply_to='r', countdown=10, eta=eta, now=NOW
    )
    assert headers['eta'] == '2026-11-26T05:44:37.999944+00:00'


def test_an_expires_datetime_sets_the_header_and_the_expiration_in_ms():
    headers, properties, _ = protocol.task_message(
        't', task_id='i', reply_to='r', expires=NOW + datetime.timedelta(seconds=90), now=NOW
    )
    assert headers['expires'] == '2026-11-26T05:45:57.999944+00:00'
    assert properties['expiration'] == '90000'


def test_an_expires_in_the_past_gives_a_zero_expiration():
    _, properties, _ = protocol.task_message(
        't', task_id='i', reply_to='r', expires=NOW - datetime.timedelta(seconds=5), now=NOW
    )
    assert properties['expiration'] == '0'


def test_a_naive_eta_is_written_as_utc():
    headers, _, _ = protocol.task_message(
        't', task_id='i', reply_to='r', eta=datetime.datetime(2030, 1, 1)
    )
    assert headers['eta'] == '2030-01-01T00:00:00+00:00'


def test_root_id_defaults_to_the_task_id():
    headers, _, _ = protocol.task_message('t', task_id='own', reply_to='r')
    assert headers['root_id'] == 'own'


def test_an_explicit_correlation_id_is_kept_in_the_properties():
    headers, properties, _ = protocol.task_message(
        't', task_id='i', reply_to='r', correlation_id='c1'
    )
    assert (properties['correlation_id'], headers['id']) == ('c1', 'i')


def test_ignore_result_true_is_written_as_given():
    headers, _, _ = protocol.task_message('t', task_id='i', reply_to='r', ignore_result=True)
    assert headers['ignore_result'] is True


def test_argsrepr_is_capped_at_1024_characters():
    headers, _, _ = protocol.task_message('t', ('x' * 5000,), task_id='i', reply_to='r')
    assert len(headers['argsrepr']) == protocol.REPR_MAXSIZE
    assert headers['argsrepr'].endswith('...')


def test_the_default_origin_names_this_process_and_host():
    headers, _, _ = protocol.task_message('t', task_id='i', reply_to='r')
    assert headers['origin'] == f'gen{os.getpid()}@{socket.gethostname()}'


def test_extra_headers_are_merged_into_the_message():
    headers, _, _ = protocol.task_message(
        't', task_id='i', reply_to='r', headers={'x-tenant': 'acme'}
    )
    assert headers['x-tenant'] == 'acme'


def test_task_args_that_are_not_a_list_are_a_type_error():
    with pytest.raises(TypeError):
        protocol.task_message('t', 'not-a-tuple', task_id='i', reply_to='r')


def test_a_countdown_that_is_not_a_number_is_a_value_error():
    with pytest.raises(ValueError):
        protocol.task_message('t', task_id='i', reply_to='r', countdown='soon')


# --------------------------------------------------------------------------- parsing tasks


def test_a_built_message_parses_back_to_the_same_request():
    headers, properties, body = _captured_message()
    request = protocol.parse_task_message(
        headers, properties, _raw(_wire(body)), delivery_info={'routing_key': 'celery'}
    )
    assert (request.id, request.name, request.args, request.kwargs) == (
        'd9f0af88-0001',
        'wftasks.add',
        [2, 3],
        {},
    )
    assert request.eta == NOW + datetime.timedelta(seconds=30)
    assert request.expires == NOW + datetime.timedelta(seconds=600)
    assert (request.time_limit, request.soft_time_limit, request.priority) == (60, 50, 5)
    assert (request.reply_to, request.correlation_id, request.root_id) == (
        '1f8ae643-f2f2-33eb-a531-d91e8500aba7',
        'd9f0af88-0001',
        'd9f0af88-0001',
    )
    assert request.delivery_info == {'routing_key': 'celery'}


def test_a_retry_message_is_the_same_task_again_with_one_more_retry():
    headers, properties, body = _captured_message()
    headers = dict(headers, custom='kept', **{'x-death': [{'count': 1}]})
    request = protocol.parse_task_message(headers, properties, _raw(_wire(body)))
    again, props, again_body = protocol.retry_message(request, countdown=5, options={'priority': 9})
    assert (again['id'], again['task'], again['retries']) == (
        request.id,
        request.name,
        request.retries + 1,
    )
    assert again['parent_id'] == request.id and again['root_id'] == request.root_id
    assert again['custom'] == 'kept' and 'x-death' not in again
    assert (props['reply_to'], props['correlation_id'], props['priority']) == (
        request.reply_to,
        request.correlation_id,
        9,
    )
    assert again_body[:2] == [request.args, request.kwargs]
    assert protocol.parse_task_message(again, props, again_body).eta is not None


def test_a_retry_message_takes_new_arguments_and_keeps_the_priority_without_options():
    request = protocol.parse_task_message(
        {'task': 'x.y', 'id': 'i', 'parent_id': 'p'}, {'priority': 3}, [[1], {'a': 1}, None]
    )
    headers, props, body = protocol.retry_message(request, [2], {'b': 2})
    assert body[:2] == [[2], {'b': 2}] and props['priority'] == 3
    assert headers['parent_id'] == 'p' and headers['eta'] is None


def test_a_message_with_only_task_and_id_headers_is_accepted():
    request = protocol.parse_task_message({'task': 'x.y', 'id': 'i'}, {}, [[], {}, None])
    assert (request.retries, request.timelimit, request.eta, request.stamps) == (
        0,
        (None, None),
        None,
        {},
    )


def test_pika_style_properties_objects_are_read_by_attribute():
    props = types.SimpleNamespace(reply_to='q', correlation_id='c', priority=None)
    request = protocol.parse_task_message({'task': 'x', 'id': 'i'}, props, [[], {}, {}])
    assert (request.reply_to, request.correlation_id) == ('q', 'c')


def test_a_naive_eta_header_is_read_as_utc():
    request = protocol.parse_task_message(
        {'task': 'x', 'id': 'i', 'eta': '2030-01-01T00:00:00'}, {}, [[], {}, {}]
    )
    assert request.eta == datetime.datetime(2030, 1, 1, tzinfo=UTC)


def test_the_request_exposes_the_name_as_task_like_celerys_context():
    request = protocol.parse_task_message({'task': 'x.y', 'id': 'i'}, {}, [[], {}, {}])
    assert request.task == 'x.y'


def test_a_protocol_v1_body_is_a_decode_error_saying_so():
    with pytest.raises(DecodeError, match='protocol v1'):
        protocol.parse_task_message({}, {}, {'task': 'x', 'id': 'i', 'args': [], 'kwargs': {}})


def test_a_body_that_is_not_three_items_is_a_decode_error():
    with pytest.raises(DecodeError, match='args, kwargs, embed'):
        protocol.parse_task_message({'task': 'x', 'id': 'i'}, {}, [[], {}])


def test_args_that_are_not_a_list_are_a_decode_error():
    with pytest.raises(DecodeError, match='args'):
        protocol.parse_task_message({'task': 'x', 'id': 'i'}, {}, ['a', {}, {}])


def test_kwargs_that_are_not_an_object_are_a_decode_error():
    with pytest.raises(DecodeError, match='kwargs'):
        protocol.parse_task_message({'task': 'x', 'id': 'i'}, {}, [[], [], {}])


def test_a_missing_task_header_is_a_decode_error():
    with pytest.raises(DecodeError, match='task'):
        protocol.parse_task_message({'id': 'i'}, {}, [[], {}, {}])


def test_a_missing_id_header_is_a_decode_error():
    with pytest.raises(DecodeError, match='id'):
        protocol.parse_task_message({'task': 'x'}, {}, [[], {}, {}])


def test_an_eta_that_is_not_iso_8601_is_a_decode_error():
    with pytest.raises(DecodeError, match='eta'):
        protocol.parse_task_message({'task': 'x', 'id': 'i', 'eta': 'tomorrow'}, {}, [[], {}, {}])


def test_a_malformed_timelimit_is_a_decode_error():
    with pytest.raises(DecodeError, match='timelimit'):
        protocol.parse_task_message({'task': 'x', 'id': 'i', 'timelimit': [1]}, {}, [[], {}, {}])


def test_a_boolean_retries_header_is_a_decode_error():
    with pytest.raises(DecodeError, match='retries'):
        protocol.parse_task_message({'task': 'x', 'id': 'i', 'retries': True}, {}, [[], {}, {}])


# --------------------------------------------------------------------------- revoke


def test_revoke_broadcast_goes_to_the_celery_pidbox_exchange():
    exchange, _, _ = protocol.control_revoke('t1')
    assert exchange == 'celery.pidbox'


def test_revoke_broadcast_body_matches_celerys_mailbox_message():
    _, body, _ = protocol.control_revoke('t1')
    assert _wire(body) == (
        '{"method": "revoke", "arguments": {"task_id": "t1", "terminate": false, '
        '"signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}'
    )


def test_revoke_broadcast_accepts_many_ids_and_destinations():
    _, body, _ = protocol.control_revoke(
        iter(['a', 'b']), True, 'SIGKILL', destination=['celery@w1']
    )
    assert body['arguments'] == {'task_id': ['a', 'b'], 'terminate': True, 'signal': 'SIGKILL'}
    assert body['destination'] == ['celery@w1']


def test_revoke_broadcast_carries_kombus_clock_and_expires_headers():
    _, _, properties = protocol.control_revoke('t1', clock=7)
    assert properties == {'delivery_mode': 2, 'priority': 0, 'headers': {'clock': 7, 'expires': 0}}


def test_revoke_destination_that_is_not_a_list_is_a_value_error():
    with pytest.raises(ValueError):
        protocol.control_revoke('t1', destination='celery@w1')


def test_fractional_time_limits_are_rounded_up_to_whole_seconds_for_amqp_headers():
    headers, _props, _body = protocol.task_message(
        't.x', (), {}, task_id='t', reply_to='r', time_limit=2.5, soft_time_limit=1.0
    )
    assert headers['timelimit'] == [3, 1]
    assert all(isinstance(v, int) for v in headers['timelimit'])
