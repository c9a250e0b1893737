"""Tasks for pika_rpc's own Worker in the interop tests, named ``interop.<name>``.

:func:`register` adds them to a given :class:`pika_rpc.App`; the tests then send them from a
real Celery client (:mod:`tests.interop.celery_client`) by name.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from typing import Any, Dict

from pika_rpc.errors import SoftTimeLimitExceeded


class PaymentDeclined(Exception):
    """An application error that the Celery client does not know (it synthesizes it)."""


def register(app: Any) -> Dict[str, Any]:
    """Register the ``interop.*`` tasks on ``app``; return them by short name."""
    pause = threading.Event()  # never set: a bounded wait inside a task

    @app.task(name='interop.add')
    def add(x, y):
        return x + y

    @app.task(name='interop.echo')
    def echo(value):
        return value

    @app.task(name='interop.describe')
    def describe(value):
        if isinstance(value, dict):
            return {key: type(item).__name__ for key, item in value.items()}
        return type(value).__name__

    @app.task(name='interop.typed_values')
    def typed_values():
        return {
            'datetime': datetime.datetime(
                2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc
            ),
            'naive': datetime.datetime(2026, 1, 2, 3, 4, 5),
            'decimal': decimal.Decimal('1.10'),
            'uuid': uuid.UUID(int=1),
            'bytes': b'caf\xc3\xa9',
            'binary': b'\xff\x00',
            'tuple': (1, 2),
            'text': 'caf\u00e9 \u2603',
        }

    @app.task(name='interop.boom')
    def boom(message):
        raise ValueError(message)

    @app.task(name='interop.decline')
    def decline(reason, amount):
        raise PaymentDeclined(reason, amount)

    @app.task(name='interop.progress', bind=True)
    def progress(self, steps, wait=0.1):
        for done in range(1, steps + 1):
            self.update_state(state='PROGRESS', meta={'done': done, 'total': steps})
            pause.wait(wait)
        return steps

    @app.task(name='interop.flaky', bind=True, max_retries=3)
    def flaky(self, fail_times=1):
        if (self.request.retries or 0) < fail_times:
            raise self.retry(exc=KeyError('missing'), countdown=0.3)
        return {'retries': self.request.retries}

    @app.task(name='interop.sleep_then')
    def sleep_then(seconds, value=None):
        pause.wait(seconds)
        return value

    traces: Dict[str, list] = {}

    @app.task(name='interop.traced', bind=True, max_retries=2)
    def traced(self):
        seen = traces.setdefault(self.request.id, [])
        seen.append(self.request.headers.get('trace_id'))
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return traces.pop(self.request.id)

    @app.task(
        name='interop.auto_flaky',
        bind=True,
        autoretry_for=(KeyError,),
        max_retries=2,
        retry_kwargs={'countdown': 0.1},
    )
    def auto_flaky(self):
        if self.request.retries < 2:
            raise KeyError('not yet')
        return self.request.retries

    @app.task(name='interop.soft_limited')
    def soft_limited():
        try:
            while not pause.wait(0.01):
                pass
        except SoftTimeLimitExceeded:
            return 'cleaned up'

    return {
        t.name.split('.', 1)[1]: t
        for t in (
            add,
            echo,
            describe,
            typed_values,
            boom,
            decline,
            progress,
            flaky,
            sleep_then,
            traced,
            auto_flaky,
            soft_limited,
        )
    }
