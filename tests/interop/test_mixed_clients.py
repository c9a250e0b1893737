"""A Celery client and a pika_rpc client on one broker, at once, against one worker queue.

Neither client sees the other's results, and no declaration (task queue, exchange, reply
queues, the ``celery.pidbox`` exchange) ever fails with 406 PRECONDITION_FAILED: checked in
the Celery worker's log, the Celery client's output and pika_rpc's log records.
"""

from __future__ import annotations

import logging
import threading
import uuid

import pika
import pytest

from pika_rpc import App, PreconditionFailed
from tests.helpers import eventually, list_queues, pika_parameters
from tests.interop.conftest import delete_queues
from tests.interop.harness import PRECONDITION, run_celery_client

pytestmark = [pytest.mark.interop]

T = 'tests.interop.celery_tasks.'
COUNT = 25


def no_precondition_failures(caplog, *texts):
    lines = [r.getMessage() for r in caplog.records] + [
        line for t in texts for line in t.splitlines()
    ]
    assert [line for line in lines if PRECONDITION.search(line)] == []


def run_both(amqp_url, queue, task, caplog):
    """Celery client (subprocess) and pika_rpc client (this process) send COUNT tasks each."""
    caplog.set_level(logging.WARNING)
    celery_out, failures = {}, []

    def celery_side():
        try:
            celery_out.update(
                run_celery_client(
                    amqp_url,
                    queue,
                    {'scenario': 'many', 'task': task, 'count': COUNT, 'offset': 1000},
                )
            )
        except BaseException as exc:  # pytest.fail raises BaseException; reported below
            failures.append(exc)

    thread = threading.Thread(target=celery_side)
    thread.start()
    app = App(broker=amqp_url, task_default_queue=queue, result_expires=600)
    try:
        results = [app.send_task(task, (i, 2000)) for i in range(COUNT)]
        ours = [r.get(timeout=60) for r in results]
    finally:
        app.close()
        thread.join(90)
    assert not thread.is_alive()
    assert failures == []
    assert ours == [i + 2000 for i in range(COUNT)]
    assert celery_out['values'] == celery_out['expected'] == [i + 1000 for i in range(COUNT)]
    no_precondition_failures(caplog, celery_out['stderr'])


def test_celery_and_pika_rpc_clients_share_a_celery_worker_queue(amqp_url, celery_workers, caplog):
    worker = celery_workers('threads')
    run_both(amqp_url, worker.queue, T + 'add', caplog)
    assert worker.precondition_lines() == []


def test_celery_and_pika_rpc_clients_share_our_worker_queue(amqp_url, pika_worker, caplog):
    run_both(amqp_url, pika_worker.queue, 'interop.add', caplog)


def test_task_queue_declared_by_either_client_first_is_accepted_by_the_other(
    amqp_url, unique_name, caplog
):
    caplog.set_level(logging.WARNING)
    try:
        with App(broker=amqp_url, task_default_queue=unique_name, result_expires=60) as app:
            app.send_task(T + 'add', (1, 1))  # pika_rpc declares first
        out = run_celery_client(
            amqp_url,
            unique_name,  # then Celery declares the same
            {'scenario': 'send', 'task': T + 'add', 'args': [2, 2]},
        )
        with App(broker=amqp_url, task_default_queue=unique_name, result_expires=60) as app:
            app.send_task(T + 'add', (3, 3))  # and pika_rpc again, afresh

        def three_waiting():
            info = list_queues()[unique_name]
            assert info.messages == 3
            return info

        info = eventually(three_waiting)
        assert info.durable and not info.auto_delete and not info.exclusive
        assert info.arguments == {}
        no_precondition_failures(caplog, out['stderr'])
    finally:
        delete_queues(amqp_url, unique_name)


def test_our_revoke_broadcast_reaches_a_celery_worker_next_to_our_worker(
    amqp_url, celery_workers, pika_worker, caplog
):
    caplog.set_level(logging.WARNING)
    worker = celery_workers('solo')
    task_id = str(uuid.uuid4())
    with App(broker=amqp_url, result_expires=60) as app:
        app.control_revoke(task_id)
    worker.wait_for_log(rf'Tasks flagged as revoked: {task_id}', timeout=10)
    assert worker.precondition_lines() == []
    no_precondition_failures(caplog)


def test_the_406_check_recognises_a_real_clash_in_both_clients(amqp_url, unique_name):
    """Negative control: a task queue declared with other arguments beforehand."""
    with pika.BlockingConnection(pika_parameters(amqp_url)) as conn:
        conn.channel().queue_declare(unique_name, durable=False, auto_delete=True)
    try:
        out = run_celery_client(
            amqp_url,
            unique_name,
            {'scenario': 'send', 'task': T + 'add', 'args': [1, 1]},
            allow_crash=True,
        )
        assert PRECONDITION.search(out.get('crashed', '')), out
        with App(broker=amqp_url, task_default_queue=unique_name, result_expires=60) as app:
            with pytest.raises(PreconditionFailed) as info:
                app.send_task(T + 'add', (1, 1))
        assert PRECONDITION.search(str(info.value))
    finally:
        delete_queues(amqp_url, unique_name)
