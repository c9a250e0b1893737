"""Broker refusals as typed errors: a 404 whose text says the queue's home node is down is a
``QueueNodeDown`` naming the queue and the node (RabbitMQ's texts, as a 3-node cluster sends
them), and both it and ``ReplyQueueLost`` cross process boundaries unchanged (pickle)."""

from __future__ import annotations

import pickle

import pika.exceptions
import pytest

from pika_rpc import _pika
from pika_rpc.errors import NotFound, QueueNodeDown, ReplyQueueLost, queue_node_down, refusal

NODE_DOWN = (
    "NOT_FOUND - home node 'n1@localhost' of durable queue 'q-1' in vhost '/' is down or "
    'inaccessible'
)
STOPPED = "NOT_FOUND - queue 'q-1' in vhost '/' process is stopped by supervisor"


@pytest.mark.parametrize(
    'text, expected',
    [
        (NODE_DOWN, ('q-1', 'n1@localhost')),
        (STOPPED, ('q-1', None)),
        (NODE_DOWN.replace("'/'", "'prod'").replace('q-1', "it's.q"), ("it's.q", 'n1@localhost')),
        ("NOT_FOUND - no queue 'q-1' in vhost '/'", None),
        ('', None),
    ],
)
def test_queue_node_down_reads_the_queue_and_node_from_rabbitmqs_text(text, expected):
    assert queue_node_down(text) == expected


def test_a_404_saying_the_home_node_is_down_translates_to_queue_node_down_naming_both():
    exc = pika.exceptions.ChannelClosedByBroker(404, NODE_DOWN)
    error = _pika.translate_channel_error(exc, "consume from 'q-1'")
    assert type(error) is QueueNodeDown and isinstance(error, NotFound)
    assert (error.queue, error.node, error.reply_code) == ('q-1', 'n1@localhost', 404)
    assert str(error) == f"consume from 'q-1': 404 {NODE_DOWN}"


def test_a_404_while_the_node_stops_is_queue_node_down_without_a_node():
    error = refusal(404, 'declare q-1', STOPPED)
    assert type(error) is QueueNodeDown and (error.queue, error.node) == ('q-1', None)


def test_another_404_stays_a_plain_not_found():
    error = refusal(404, 'declare q-1', "NOT_FOUND - no queue 'q-1' in vhost '/'")
    assert type(error) is NotFound


def test_queue_node_down_pickles_with_its_queue_and_node():
    error = refusal(404, 'consume', NODE_DOWN)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is QueueNodeDown and copy.args == error.args
    assert (copy.queue, copy.node, copy.reply_text, str(copy)) == (
        'q-1',
        'n1@localhost',
        NODE_DOWN,
        str(error),
    )


def test_reply_queue_lost_says_why_and_pickles_with_its_reason():
    error = ReplyQueueLost('q-1', ['t1', 't2'], 'is lost: its home node n1@localhost is down')
    assert str(error) == (
        "reply queue 'q-1' is lost: its home node n1@localhost is down; lost results of: t1, t2"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.queue, copy.task_ids, copy.reason, str(copy)) == (
        'q-1',
        ('t1', 't2'),
        error.reason,
        str(error),
    )
    assert 'was deleted or expired' in str(ReplyQueueLost('q-1', ['t1']))
