"""Every internal structure of the backend stays within its bound under 100,000 tasks.

Bounds are checked as structure sizes (``backend.stats()``), never as RSS: the RSS figure
is measured by ``python scripts/bench.py --scenarios memory_detail``.
"""

from __future__ import annotations

import json

import pytest

from pika_rpc import App
from pika_rpc._handoff import Publication
from tests.helpers import eventually

TASKS = 100_000


@pytest.mark.slow
def test_100000_tasks_leave_every_structure_within_its_bound(amqp_url):
    app = App(
        broker=amqp_url,
        result_cache_max=500,
        out_of_band_max=200,
        pending_history_max=5,
        pending_max=1000,
        result_expires=120,
    )
    backend = app.backend
    try:
        sent = [f'task-{i}' for i in range(TASKS)]
        for task_id in sent:  # what send_task does before publishing
            backend.on_task_call(None, task_id)
        link = backend._get_link()
        props = {'content_type': 'application/json', 'content_encoding': 'utf-8'}

        def publish(task_id, status, result):
            body = json.dumps({'task_id': task_id, 'status': status, 'result': result}).encode()
            return link.publish(Publication('', backend.oid, body, props, timeout=120))

        for i, task_id in enumerate(sent):
            if i % 100 == 0:  # some tasks report progress first
                for n in range(8):
                    publish(task_id, 'PROGRESS', n)
            publish(task_id, 'SUCCESS', i)
            if i % 50 == 0:  # results for ids this process never sent
                publish(f'foreign-{i}', 'SUCCESS', i)
        last = publish('last', 'SUCCESS', 'done')
        assert last.wait(120) and last.error is None
        assert app.AsyncResult('last').get(timeout=120) == 'done'
        stats = backend.stats()
        assert stats['cached'] <= 500
        assert stats['unread'] <= 1000
        assert stats['out_of_band'] <= 200
        assert stats['replay'] <= 200
        assert stats['pending'] == 0
        assert stats['history_max_len'] <= 5
        assert app.AsyncResult(sent[-1]).get(timeout=0) == TASKS - 1  # newest still cached
        assert app.AsyncResult(sent[0]).state == 'PENDING'  # oldest unread evicted
    finally:
        app.close()


def test_results_nobody_has_read_yet_are_not_evicted_by_the_result_cache(amqp_url):
    app = App(broker=amqp_url, result_cache_max=10, result_expires=60)
    backend = app.backend
    try:
        ids = [f'unread-{i}' for i in range(20)]
        for task_id in ids:
            backend.on_task_call(None, task_id)
        for i, task_id in enumerate(ids):
            backend.mark_as_done(
                task_id, i, request={'reply_to': backend.oid, 'correlation_id': task_id}
            )
        assert [app.AsyncResult(t).get(timeout=20) for t in ids] == list(range(20))
        stats = backend.stats()
        assert stats['cached'] == 10 and stats['unread'] == 0  # read ones obey the cache
    finally:
        app.close()


def test_pending_table_evicts_unwaited_slots_past_its_bound(amqp_url):
    app = App(broker=amqp_url, result_expires=60)
    try:
        app.backend._pending.pending_max = 100
        for i in range(1000):
            app.backend.on_task_call(None, f'never-{i}')
        assert app.backend.stats()['pending'] == 100
        assert eventually(lambda: app.backend.stats()['link_state'] == 'OPEN')
    finally:
        app.close()
