"""kombu's connection semantics against the real broker: eager connect errors,
``ensure_connection``, ``connected`` across a real cut, channels, ``transport_options``,
``Queue.get`` and the pools. Unreachable brokers are a bound-but-not-listening port or the
fault proxy refusing every connection; no timing is asserted, only that a call raised (and
before a generous join timeout) and how many attempts reached the proxy."""

from __future__ import annotations

import json
import queue
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple
from urllib.parse import quote

import pytest

from pika_rpc import Consumer, Exchange, Producer, Queue
from pika_rpc._urls import parse_url
from pika_rpc.connection import Channel, Connection
from pika_rpc.errors import ConnectionLost, LimitExceeded, NotFound, OperationalError
from pika_rpc.pools import ChannelPool, ConnectionPool
from tests.helpers import FAST_RECONNECT, eventually, rabbitmqctl

JOIN = 60.0  # generous: the calls are bounded by connect_timeout (a few seconds)


@pytest.fixture
def closed_port_url() -> Iterator[str]:
    """A URL whose port is bound and not listening: every connect is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        yield f'amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}//'


def _raised_in_thread(call: Callable[[], Any]) -> BaseException:
    """Run ``call`` on a thread; return what it raised (it must end within JOIN)."""
    box: List[Any] = []

    def run() -> None:
        try:
            box.append(('returned', call()))
        except BaseException as exc:  # noqa: B036 - reported to the test
            box.append(('raised', exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN)
    assert not thread.is_alive(), f'still blocked after {JOIN} s'
    kind, value = box[0]
    assert kind == 'raised', f'returned {value!r} instead of raising'
    return value


EAGER: Dict[str, Tuple[Callable[[Connection], Any], type]] = {
    'connect()': (lambda c: c.connect(), ConnectionLost),
    '.connection': (lambda c: c.connection, ConnectionLost),
    'channel()': (lambda c: c.channel(), OperationalError),
    '.default_channel': (lambda c: c.default_channel, OperationalError),
}


@pytest.mark.parametrize('what', list(EAGER))
def test_eager_access_to_a_refusing_port_raises_connection_lost_with_advice(
    closed_port_url: str, what: str
) -> None:
    call, kind = EAGER[what]
    # The link's own policy would retry 100 times; connect_timeout bounds the wait.
    conn = Connection(closed_port_url, connect_timeout=1)
    try:
        exc = _raised_in_thread(lambda: call(conn))
        assert isinstance(exc, kind) and isinstance(exc, ConnectionError)
        port = closed_port_url.rsplit(':', 1)[1].strip('/')
        assert f'127.0.0.1:{port}' in str(exc)
        assert 'Nothing accepts connections' in str(exc)  # the advice
        assert not conn.connected
    finally:
        conn.release()


def test_eager_connect_without_retry_raises_after_the_first_attempt(
    fault_proxy: Any, amqp_url: str
) -> None:
    fault_proxy.refuse(True)
    conn = Connection(fault_proxy.url(amqp_url), broker_connection_retry=False)
    try:
        exc = _raised_in_thread(conn.connect)
        assert isinstance(exc, ConnectionLost)
        assert fault_proxy.connection_attempts == 1
    finally:
        conn.release()


def test_wrong_credentials_are_not_retried_by_an_eager_connect(
    fault_proxy: Any, amqp_url: str, unique_name: str
) -> None:
    addr = parse_url(amqp_url)[0]
    vhost = quote(addr.virtual_host, safe='')
    bad = f'amqp://{addr.userid}:{unique_name}@{addr.host}:{addr.port}/{vhost}'
    conn = Connection(fault_proxy.url(bad), connect_timeout=30)  # the policy would retry
    try:
        exc = _raised_in_thread(lambda: conn.default_channel)
        assert isinstance(exc, OperationalError)
        assert 'ACCESS_REFUSED' in str(exc) and unique_name not in str(exc)
        assert fault_proxy.connection_attempts == 1
    finally:
        conn.release()


def test_transport_options_max_retries_bounds_the_attempts_of_an_eager_connect(
    fault_proxy: Any, amqp_url: str
) -> None:
    fault_proxy.refuse(True)
    options = {'max_retries': 1, 'interval_start': 0, 'interval_step': 0, 'interval_max': 0}
    conn = Connection(fault_proxy.url(amqp_url), transport_options=options)
    try:
        exc = _raised_in_thread(lambda: conn.default_channel)
        assert isinstance(exc, OperationalError)
        assert '2 attempt(s)' in str(exc)
        assert fault_proxy.connection_attempts == 2  # the first and one retry; the link gave up
    finally:
        conn.release()


def test_ensure_connection_with_max_retries_2_calls_errback_twice_then_raises(
    fault_proxy: Any, amqp_url: str
) -> None:
    fault_proxy.refuse(True)
    # max_retries=0: every attempt of the link is one cycle, started by ensure_connection.
    conn = Connection(fault_proxy.url(amqp_url), transport_options={'max_retries': 0})
    seen: List[Tuple[BaseException, float]] = []
    try:
        exc = _raised_in_thread(
            lambda: conn.ensure_connection(
                errback=lambda e, interval: seen.append((e, interval)),
                max_retries=2,
                interval_start=0,
                interval_step=0,
                interval_max=0,
            )
        )
        assert isinstance(exc, OperationalError)
        assert '3 attempt(s)' in str(exc)
        assert fault_proxy.connection_attempts == 3
        assert [interval for _, interval in seen] == [0.0, 0.0]
        assert all(isinstance(e, ConnectionLost) for e, _ in seen)
    finally:
        conn.release()


def test_ensure_connection_without_library_errors_raises_plain_connection_lost(
    closed_port_url: str,
) -> None:
    conn = Connection(closed_port_url, transport_options={'max_retries': 0})
    try:
        exc = _raised_in_thread(
            lambda: conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        )
        assert type(exc) is ConnectionLost
    finally:
        conn.release()


def test_ensure_connection_returns_the_connection_once_open(amqp_url: str) -> None:
    conn = Connection(amqp_url)
    try:
        assert conn.ensure_connection(max_retries=3, timeout=JOIN) is conn
        assert conn.connected
    finally:
        conn.release()


def test_connected_is_false_while_the_link_is_cut_and_true_once_it_is_back(
    fault_proxy: Any, amqp_url: str
) -> None:
    options = dict(FAST_RECONNECT, max_retries=None)
    conn = Connection(fault_proxy.url(amqp_url), transport_options=options)
    try:
        assert not conn.connected  # lazy: nothing done yet
        assert conn.connect() is conn
        assert conn.connected
        fault_proxy.refuse(True)
        assert fault_proxy.cut() == 1
        eventually(lambda: not conn.connected)
        fault_proxy.refuse(False)
        eventually(lambda: conn.connected, timeout=30)
    finally:
        conn.release()
    assert not conn.connected


def test_after_release_connection_is_none_until_connect(amqp_url: str) -> None:
    conn = Connection(amqp_url)
    assert conn.connection is conn
    conn.release()
    assert conn.connection is None
    assert not conn.connected
    assert conn.connect().connection is conn
    conn.release()


def test_leaving_a_channel_block_keeps_the_connection_and_its_consumer(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue_ = Queue(names('q'), durable=False, exclusive=True)
    got: 'queue.Queue[Any]' = queue.Queue()
    with Connection(amqp_url) as conn:
        consumer = Consumer(conn, [queue_], callbacks=[lambda body, m: (got.put(body), m.ack())])
        consumer.consume()
        with conn.channel() as channel:
            assert isinstance(channel, Channel) and channel.connection is conn
            Producer(channel).publish(['one'], routing_key=queue_.name)
        assert not channel.is_open
        assert conn.connected
        Producer(conn).publish(['two'], routing_key=queue_.name)
        assert [got.get(timeout=JOIN), got.get(timeout=JOIN)] == [['one'], ['two']]
        assert conn.default_channel is conn.default_channel


def test_ensure_reconnects_and_revives_after_a_connection_error(amqp_url: str) -> None:
    calls: List[str] = []
    revived: List[Any] = []

    class Thing:
        def revive(self, channel: Any) -> None:
            revived.append(channel)

    def flaky(value: str) -> str:
        calls.append(value)
        if len(calls) == 1:
            raise ConnectionLost('simulated loss')
        return value * 2

    seen: List[Any] = []
    with Connection(amqp_url) as conn:
        ensured = conn.ensure(Thing(), flaky, errback=lambda e, i: seen.append(e), max_retries=2)
        assert ensured('x') == 'xx'
        assert calls == ['x', 'x']
        assert revived == [conn.default_channel]
        assert len(seen) == 1 and str(seen[0]) == 'simulated loss'


def test_autoretry_passes_and_returns_the_default_channel(amqp_url: str) -> None:
    with Connection(amqp_url) as conn:
        result, channel = conn.autoretry(lambda v, channel: (v, channel), max_retries=0)('r')
        assert result == ('r', channel)
        assert channel is conn.default_channel
        assert conn.connected


def _client_properties(connection_name: str) -> Dict[str, Any]:
    rows = json.loads(
        rabbitmqctl('list_connections', 'client_properties', 'timeout', '--formatter', 'json')
    )
    for row in rows:
        props = {p[0]: p[-1] for p in row['client_properties']}
        if props.get('connection_name') == connection_name:
            return dict(props, timeout=row['timeout'])
    raise AssertionError(f'no connection named {connection_name!r}')


def test_transport_options_client_properties_and_heartbeat_reach_the_broker(
    amqp_url: str, unique_name: str
) -> None:
    options = {'client_properties': {'x-test': unique_name}, 'heartbeat': 17}
    with Connection(amqp_url, transport_options=options) as conn:
        conn.connect()
        props = eventually(lambda: _client_properties(conn.link.name))
        assert props['x-test'] == unique_name
        assert props['product'] == 'pika_rpc'
        assert props['timeout'] == 17


def test_queue_get_takes_one_message_and_none_when_empty(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    with Connection(amqp_url) as conn:
        queue_ = Queue(names('q'), channel=conn)
        queue_.declare()
        assert queue_.get() is None
        Producer(conn).publish({'n': 1}, routing_key=queue_.name)
        message = queue_.get()
        assert message.payload == {'n': 1}
        message.requeue()
        again = queue_.get()
        assert again.payload == {'n': 1} and again.delivery_info['redelivered']
        again.ack()
        assert queue_.get() is None
        with pytest.raises(NotFound):
            Queue(names('missing'), channel=conn.channel()).get()


def test_connection_pool_lends_at_most_limit_and_closes_a_connection_after_an_error(
    amqp_url: str,
) -> None:
    pool = ConnectionPool(Connection(amqp_url), limit=2)
    first, second = pool.acquire(), pool.acquire()
    second.connect()
    with pytest.raises(LimitExceeded):
        pool.acquire()
    with pytest.raises(LimitExceeded):
        pool.acquire(block=True, timeout=0.05)
    first.connect()
    first.release()
    again = pool.acquire()
    assert again is first and again.connected  # given back connected, lent again (LIFO)
    with pytest.raises(RuntimeError):
        with again:
            raise RuntimeError('in use')
    assert not again.connected  # closed before it went back
    assert pool.acquire() is again
    pool.force_close_all()
    assert not second.connected
    with pytest.raises(RuntimeError):
        pool.acquire()


def test_channel_pool_lends_channels_of_its_connection(amqp_url: str) -> None:
    with Connection(amqp_url) as conn:
        pool = ChannelPool(conn, limit=1)
        channel = pool.acquire()
        assert channel.connection is conn and conn.connected
        with pytest.raises(LimitExceeded):
            pool.acquire()
        channel.release()
        assert pool.acquire() is channel


def test_exchange_publish_through_a_channel_handle(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        exchange = Exchange(names('x'), type='direct', channel=channel)
        exchange.declare()
        queue_ = Queue(names('q'), exchange, 'rk', channel=channel)
        queue_.declare()
        Producer(channel, exchange).publish(b'hi', routing_key='rk')
        message = eventually(queue_.get)
        assert message.body == b'hi'
        message.ack()
