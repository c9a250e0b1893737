"""Tasks for a real Celery worker in the interop tests (``celery -A tests.interop.celery_tasks``).

Configured from the environment, so the test process never has to import Celery:

* ``AMQP_URL``: the broker (kombu-style URL), ``amqp://guest:guest@127.0.0.1:5672//`` if unset;
* ``PIKA_RPC_INTEROP_QUEUE``: the worker's queue, unique per test session and pool type.

The settings are the ones a Celery user of the ``rpc://`` backend would have: JSON only for
tasks and results, ``task_track_started`` on; ``result_extended`` on so result bodies carry
the extra keys a pika_rpc reader must ignore or keep.
"""

from __future__ import annotations

import datetime
import decimal
import os
import threading
import time
import uuid

from celery import Celery

QUEUE = os.environ.get('PIKA_RPC_INTEROP_QUEUE', 'pika-rpc-interop')

app = Celery(
    'tests.interop.celery_tasks',
    broker=os.environ.get('AMQP_URL') or 'amqp://guest:guest@127.0.0.1:5672//',
    backend='rpc://',
)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer='json',
    result_serializer='json',
    accept_content=['json'],
    result_accept_content=['json'],
    task_track_started=True,
    result_extended=True,  # 5.7 adds name/args/kwargs/worker/... keys: readers must cope
    result_expires=120,  # also x-expires of Celery's reply queues: leftovers go soon
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    worker_prefetch_multiplier=4,
)


class PaymentDeclined(Exception):
    """An application error that a pika_rpc client does not know (it is synthesized there)."""


@app.task
def add(x, y):
    return x + y


@app.task
def echo(value):
    """Return what was sent: the value went through kombu's JSON envelopes both ways."""
    return value


@app.task
def typed_values():
    """Values plain JSON cannot hold, built here so only kombu's encoder writes them."""
    return {
        'datetime': datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc),
        'naive': datetime.datetime(2026, 1, 2, 3, 4, 5),
        'decimal': decimal.Decimal('1.10'),
        'uuid': uuid.UUID(int=1),
        'bytes': b'caf\xc3\xa9',
        'tuple': (1, 2),
        'text': 'caf\u00e9 \u2603',
    }


@app.task
def describe(value):
    """Type names of what the worker decoded, to check what a client's envelopes became."""
    if isinstance(value, dict):
        return {key: type(item).__name__ for key, item in value.items()}
    return type(value).__name__


@app.task
def boom(message):
    raise ValueError(message)


@app.task
def decline(reason, amount):
    raise PaymentDeclined(reason, amount)


@app.task(bind=True)
def progress(self, steps, pause=0.1):
    for done in range(1, steps + 1):
        self.update_state(state='PROGRESS', meta={'done': done, 'total': steps})
        time.sleep(pause)
    return steps


@app.task(bind=True, max_retries=3)
def flaky(self, fail_times=1):
    """Fail ``fail_times`` runs with a KeyError and retry, then succeed."""
    if self.request.retries < fail_times:
        raise self.retry(exc=KeyError('missing'), countdown=0.3)
    return {'retries': self.request.retries}


_WORK = threading.Event()  # never set: sleep_then's work is a bounded wait on it


@app.task
def sleep_then(seconds, value=None):
    _WORK.wait(seconds)
    return value


@app.task(bind=True)
def whoami(self):
    """The request as the worker saw it (what a pika_rpc client sent)."""
    request = self.request
    return {
        'id': request.id,
        'reply_to': request.reply_to,
        'correlation_id': request.correlation_id,
        'retries': request.retries,
        'root_id': request.root_id,
        'parent_id': request.parent_id,
        'origin': request.origin,
        'ignore_result': request.ignore_result,
        'delivery_info': {
            'exchange': request.delivery_info.get('exchange'),
            'routing_key': request.delivery_info.get('routing_key'),
        },
    }
