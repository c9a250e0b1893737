"""The local cluster launcher itself: one cluster of three nodes, reachable through its URL
list, whose nodes can be stopped, killed and brought back, beside a system node it never
touches. The tests of pika_rpc on a cluster build on these facts."""

from __future__ import annotations

import os
from typing import Optional

import pika
import pytest

from tests.cluster.system_node import SystemNode, system_node
from tests.helpers import eventually, pika_parameters
from tests.localcluster import ClusterBusy, LocalCluster


def connect(url_or_urls, **attributes) -> pika.BlockingConnection:
    """A pika connection to one URL or, given a list, to the first of them that answers."""
    urls = [url_or_urls] if isinstance(url_or_urls, str) else url_or_urls
    attributes.setdefault('connection_attempts', 1)
    attributes.setdefault('socket_timeout', 5)
    return pika.BlockingConnection([pika_parameters(url, **attributes) for url in urls])


def node_of_new_queue(cluster: LocalCluster, connection: pika.BlockingConnection) -> str:
    """Declare a classic queue on ``connection``: it lives on the node the connection reached."""
    name = connection.channel().queue_declare('', exclusive=True).method.queue
    return cluster.queue_node(name)


def refuses(url: str) -> bool:
    try:
        connect(url).close()
    except pika.exceptions.AMQPConnectionError:
        return True
    return False


def alive(pid: int) -> bool:
    return os.path.exists(f'/proc/{pid}')


def test_three_nodes_run_as_one_cluster(rabbit_cluster: LocalCluster, unique_name: str) -> None:
    names = sorted(rabbit_cluster.node_names)
    assert names == ['n1@localhost', 'n2@localhost', 'n3@localhost']
    for node in names:
        assert rabbit_cluster.running_nodes(node) == names
    with connect(rabbit_cluster.urls[0]) as conn:  # one cluster: one set of queues
        conn.channel().queue_declare(unique_name, durable=True)
        try:
            assert unique_name in rabbit_cluster.ctl(3, 'list_queues', 'name').split()
        finally:
            conn.channel().queue_delete(unique_name)


def test_each_url_of_the_list_reaches_its_own_node(rabbit_cluster: LocalCluster) -> None:
    assert rabbit_cluster.url == ';'.join(rabbit_cluster.urls)
    assert len(rabbit_cluster.urls) == 3
    for url, node in zip(rabbit_cluster.urls, rabbit_cluster.node_names):
        with connect(url) as conn:
            assert node_of_new_queue(rabbit_cluster, conn) == node


def test_stop_app_takes_a_node_out_and_start_app_brings_it_back(
    rabbit_cluster: LocalCluster,
) -> None:
    rabbit_cluster.stop_app(1)
    assert refuses(rabbit_cluster.urls[0])
    assert rabbit_cluster.running_nodes(2) == ['n2@localhost', 'n3@localhost']
    with connect(rabbit_cluster.urls) as conn:  # pika skips n1 and lands on n2
        assert node_of_new_queue(rabbit_cluster, conn) == 'n2@localhost'

    rabbit_cluster.start_app(1)
    assert rabbit_cluster.running_nodes(1) == sorted(rabbit_cluster.node_names)
    with connect(rabbit_cluster.urls) as conn:
        assert node_of_new_queue(rabbit_cluster, conn) == 'n1@localhost'
    assert rabbit_cluster.restore() == []  # nothing left to bring back


def test_kill_crashes_a_node_and_restore_restarts_it_on_its_data(
    rabbit_cluster: LocalCluster, unique_name: str
) -> None:
    with connect(rabbit_cluster.urls[2]) as conn:  # a durable queue at home on n3
        channel = conn.channel()
        channel.queue_declare(unique_name, durable=True)
        channel.basic_publish('', unique_name, b'kept', pika.BasicProperties(delivery_mode=2))
    assert rabbit_cluster.queue_node(unique_name) == 'n3@localhost'

    pid = rabbit_cluster.kill('n3@localhost')
    assert not alive(pid)
    assert refuses(rabbit_cluster.urls[2])
    eventually(lambda: rabbit_cluster.running_nodes(1) == ['n1@localhost', 'n2@localhost'])

    assert rabbit_cluster.restore() == ['n3@localhost']
    assert rabbit_cluster.running_nodes(1) == sorted(rabbit_cluster.node_names)
    assert rabbit_cluster.node(3).state == 'running'
    with connect(rabbit_cluster.urls[2]) as conn:  # same node, same data, back in
        channel = conn.channel()
        assert channel.queue_declare(unique_name, passive=True).method.message_count == 1
        channel.queue_delete(unique_name)


def test_queue_node_follows_the_leader_of_a_quorum_queue(
    rabbit_cluster: LocalCluster, unique_name: str
) -> None:
    with connect(rabbit_cluster.urls[0]) as conn:
        conn.channel().queue_declare(
            unique_name, durable=True, arguments={'x-queue-type': 'quorum'}
        )
    leader = rabbit_cluster.queue_node(unique_name)
    assert leader in rabbit_cluster.node_names

    rabbit_cluster.stop_app(leader)
    new_leader = eventually(
        lambda: (
            rabbit_cluster.queue_node(unique_name) != leader
            and rabbit_cluster.queue_node(unique_name)
        ),
        timeout=30,
        retry_on=(KeyError,),  # during the election list_queues may not show it
    )
    assert new_leader in set(rabbit_cluster.node_names) - {leader}
    rabbit_cluster.restore()
    with connect(rabbit_cluster.urls[0]) as conn:
        conn.channel().queue_delete(unique_name)


def test_a_second_launcher_waits_for_the_running_cluster_then_names_its_holder(
    rabbit_cluster: LocalCluster,
) -> None:
    with pytest.raises(ClusterBusy, match=f'pid {os.getpid()} holds'):
        LocalCluster().start(lock_timeout=0.3)
    assert rabbit_cluster.running_nodes() == sorted(rabbit_cluster.node_names)


def test_the_system_node_is_untouched_by_the_cluster(
    rabbit_cluster: LocalCluster,
    system_node_before_cluster: Optional[SystemNode],
    raw_channel,
    unique_name: str,
) -> None:
    assert system_node_before_cluster is not None, 'rabbitmqctl could not reach the system node'
    assert 'rabbit@localhost' not in rabbit_cluster.node_names
    sentinel = f'{unique_name}-system'
    raw_channel.queue_declare(sentinel, durable=True, arguments={'x-expires': 120000})
    raw_channel.basic_publish('', sentinel, b'stays', pika.BasicProperties(delivery_mode=2))
    with connect(rabbit_cluster.urls[1]) as conn:  # a queue of the cluster ...
        conn.channel().queue_declare(unique_name, durable=True)

    rabbit_cluster.stop_app(1)
    rabbit_cluster.kill(2)
    assert sorted(rabbit_cluster.restore()) == ['n1@localhost', 'n2@localhost']

    assert system_node() == system_node_before_cluster  # same VM, members, cookie, config
    assert raw_channel.queue_declare(sentinel, passive=True).method.message_count == 1
    raw_channel.queue_delete(sentinel)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # ... is not on the system node
        raw_channel.queue_declare(unique_name, passive=True)
    with connect(rabbit_cluster.urls[1]) as conn:
        conn.channel().queue_delete(unique_name)
