"""A real Celery client, run as a subprocess by the interop tests; prints one JSON object.

Usage: ``python -m tests.interop.celery_client '<json spec>'`` with ``AMQP_URL`` and
``PIKA_RPC_INTEROP_QUEUE`` in the environment (the Celery app of
:mod:`tests.interop.celery_tasks` is used, so the settings are the same).

Spec keys: ``scenario`` (``call``, ``poll``, ``many`` or ``send``), ``task``, ``args``, ``kwargs``,
``options`` (``send_task`` options), ``timeout``, ``typed_args`` (send the values of
:func:`typed_values` as the only argument), ``revoke`` (true: right after sending,
``AsyncResult.revoke()``), ``count``/``offset`` (``many``).

Values (results, state metadata) are printed in kombu's JSON, envelopes included, next to
their type names; exceptions as class name, class module, ``args`` and ``str``. The process
deletes its own reply queue before it exits.
"""

from __future__ import annotations

import datetime
import decimal
import json
import sys
import time
import traceback
import uuid

from celery import states
from celery.exceptions import TaskRevokedError
from kombu.utils.json import dumps as kombu_dumps

from tests.interop.celery_tasks import app


def typed_values():
    return {
        'datetime': datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc),
        'date': datetime.date(2026, 1, 2),
        'time': datetime.time(3, 4, 5),
        'decimal': decimal.Decimal('1.10'),
        'uuid': uuid.UUID(int=7),
        'bytes': b'caf\xc3\xa9',
        'text': 'caf\u00e9 \u2603',
    }


def _types(value):
    if isinstance(value, dict):
        return {str(k): type(v).__name__ for k, v in value.items()}
    return type(value).__name__


def _value(value):
    """A value as kombu's JSON text, envelopes included, plus its type names."""
    try:
        text = kombu_dumps(value)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        text = json.dumps(repr(value)) if not isinstance(value, BaseException) else 'null'
        return {'json': text, 'types': _types(value), 'encode_error': repr(exc)}
    return {'json': text, 'types': _types(value)}


def _error(exc):
    cls = type(exc)
    return {
        'class': cls.__name__,
        'module': cls.__module__,
        'args': [repr(a) for a in exc.args],
        'str': str(exc),
        'celery_task_revoked_error': isinstance(exc, TaskRevokedError),
    }


def _meta(meta):
    result = meta.get('result')
    out = {'status': meta.get('status'), 'keys': sorted(meta)}
    if isinstance(result, BaseException):
        out['error'] = _error(result)
    else:
        out['result'] = _value(result)
    return out


def _send(spec):
    args = spec.get('args') or []
    if spec.get('typed_args'):
        args = [typed_values()]
    return app.send_task(
        spec['task'], args, spec.get('kwargs') or {}, **(spec.get('options') or {})
    )


def scenario_call(spec):
    result = _send(spec)
    out = {'task_id': result.id, 'reply_to': app.backend.oid}
    if spec.get('revoke'):
        result.revoke()  # while the task waits for its countdown at the worker
    messages = []
    try:
        value = result.get(timeout=spec.get('timeout', 20), on_message=messages.append)
        out.update(ok=True, value=_value(value))
    except Exception as exc:  # noqa: BLE001 - what the test checks
        out.update(ok=False, error=_error(exc))
    out['messages'] = [_meta(m) for m in messages]
    out['state'] = result.state
    out['traceback'] = result.traceback
    return out


def scenario_poll(spec):
    """``backend.get_task_meta`` polls (basic_get) until a ready state; no consumer."""
    result = _send(spec)
    deadline = time.monotonic() + spec.get('timeout', 20)
    seen = []
    meta = {'status': states.PENDING}
    while time.monotonic() < deadline:
        meta = app.backend.get_task_meta(result.id)
        if not seen or seen[-1] != meta['status']:
            seen.append(meta['status'])
        if meta['status'] in states.READY_STATES:
            break
        time.sleep(0.05)
    return {'task_id': result.id, 'statuses': seen, 'meta': _meta(meta)}


def scenario_many(spec):
    count, offset = spec.get('count', 20), spec.get('offset', 0)
    results = [app.send_task(spec['task'], [i, offset]) for i in range(count)]
    values = [r.get(timeout=spec.get('timeout', 30)) for r in results]
    return {'values': values, 'expected': [i + offset for i in range(count)]}


def scenario_send(spec):
    """Only send (declaring the task queue as Celery does); wait for nothing."""
    return {'task_id': _send(spec).id}


SCENARIOS = {
    'call': scenario_call,
    'poll': scenario_poll,
    'many': scenario_many,
    'send': scenario_send,
}


def _delete_reply_queue():
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(app.backend.oid)
    except Exception:  # noqa: BLE001 - cleanup only; the queue expires anyway
        pass


def main(argv):
    spec = json.loads(argv[1])
    try:
        out = SCENARIOS[spec['scenario']](spec)
    except Exception:  # noqa: BLE001 - reported to the test as data
        out = {'crashed': traceback.format_exc()}
    out['celery_version'] = __import__('celery').__version__
    _delete_reply_queue()
    sys.stdout.write('\n' + json.dumps(out) + '\n')
    sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
