"""``ResultConsumer`` moving to a new reply queue when the broker says its home node is down
(``ConsumerSpec.on_refused``): pure logic, no broker (the same move on a real 3-node cluster
is in ``tests/cluster/test_client_failover.py``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pika_rpc._pending import PendingTable
from pika_rpc._replies import ResultConsumer
from pika_rpc.config import Settings
from pika_rpc.errors import NotFound, QueueNodeDown, ReplyQueueLost, refusal


class _Backend:
    conf = Settings()


def consumer(table: PendingTable) -> ResultConsumer:
    c = ResultConsumer(_Backend())
    c._attach('q1', table, get_link=lambda: None)
    return c


def node_down(queue: str) -> Any:
    text = f"NOT_FOUND - home node 'n1@localhost' of durable queue '{queue}' in vhost '/' is down or inaccessible"
    error = refusal(404, f'consume from {queue!r}', text)
    assert isinstance(error, QueueNodeDown)
    return error


def test_a_node_down_refusal_moves_to_a_new_queue_and_fails_the_old_queues_tasks(caplog):
    caplog.set_level(logging.WARNING, logger='pika_rpc._replies')
    table = PendingTable()
    c = consumer(table)
    table.register('sent-to-q1', queue='q1')
    assert c._on_refused('q1', node_down('q1')) is True
    new = c.reply_queue
    assert new != 'q1' and c.stats()['reply_queue_moves'] == 1
    with pytest.raises(ReplyQueueLost) as raised:
        table.peek('sent-to-q1')
    assert raised.value.queue == 'q1' and raised.value.task_ids == ('sent-to-q1',)
    assert 'n1@localhost' in str(raised.value)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 'n1@localhost' in record.getMessage() and new in record.getMessage()


def test_a_second_refusal_of_the_old_queue_stops_its_spec_without_moving_again():
    table = PendingTable()
    c = consumer(table)
    c._on_refused('q1', node_down('q1'))
    new = c.reply_queue
    table.register('sent-to-new', queue=new)
    assert c._on_refused('q1', node_down('q1')) is True
    assert c.reply_queue == new and c.stats()['reply_queue_moves'] == 1
    assert table.peek('sent-to-new') is None  # untouched


def test_other_refusals_are_left_to_the_link():
    c = consumer(PendingTable())
    error = refusal(404, 'consume', "NOT_FOUND - no queue 'q1' in vhost '/'")
    assert isinstance(error, NotFound)
    assert c._on_refused('q1', error) is False
    assert c.reply_queue == 'q1'
