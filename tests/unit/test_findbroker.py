"""pika_rpc.findbroker: the order AMQP_URL -> localhost -> Docker -> BrokerNotFound, and masking.

No broker is needed: where a step must find one, a tiny fake AMQP listener in this file answers
the handshake (it sends a Connection.Start frame), and the Docker step is exercised both against
the real docker SDK (this machine has no engine) and against a fake SDK.
"""

from __future__ import annotations

import ast
import gc
import socket
import struct
import sys
import threading
import types
from typing import Iterator, List, Optional

import pytest

from pika_rpc import findbroker
from pika_rpc.findbroker import Broker, BrokerNotFound, find_broker, mask_url, probe_amqp


def _connection_start_frame() -> bytes:
    """A Connection.Start method frame as RabbitMQ sends it (empty properties)."""

    def longstr(b: bytes) -> bytes:
        return struct.pack('>I', len(b)) + b

    payload = (
        struct.pack('>HHBB', 10, 10, 0, 9)
        + struct.pack('>I', 0)
        + longstr(b'PLAIN')
        + longstr(b'en_US')
    )
    return struct.pack('>BHI', 1, 0, len(payload)) + payload + b'\xce'


class FakeAMQPListener:
    """Loopback listener: drops the first ``drop_first`` connections, then answers the AMQP
    handshake with Connection.Start (or with ``reply`` bytes if given). Counts connections."""

    def __init__(self, drop_first: int = 0, reply: Optional[bytes] = None) -> None:
        self.drop_first = drop_first
        self.reply = _connection_start_frame() if reply is None else reply
        self.connections = 0
        self.headers: List[bytes] = []
        self._sock = socket.create_server(('127.0.0.1', 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> 'FakeAMQPListener':
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._sock.close()
        self._thread.join(5)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                if self.connections <= self.drop_first:
                    continue
                conn.settimeout(5)
                self.headers.append(conn.recv(8))
                conn.sendall(self.reply)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening (so nobody else takes it): connecting is refused."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def no_env_no_localhost(monkeypatch, closed_port):
    """AMQP_URL unset and the finder's localhost step pointed at a refused port."""
    monkeypatch.delenv('AMQP_URL', raising=False)
    monkeypatch.setattr(findbroker, 'LOCAL_PORT', closed_port)
    return closed_port


# ----------------------------------------------------------------- fake docker SDK


class FakeContainer:
    """Stands in for ``docker.models.containers.Container``; reports ``port`` after ``hide_port_for`` reloads."""

    def __init__(self, name: str, port: int, hide_port_for: int = 1) -> None:
        self.name, self.status, self.attrs = name, 'created', {}
        self._port, self._hide_port_for = port, hide_port_for
        self.reloads = 0
        self.removed_with: List[dict] = []

    def reload(self) -> None:
        self.reloads += 1
        self.status = 'running'
        ports = {}
        if self.reloads > self._hide_port_for:
            ports = {'5672/tcp': [{'HostIp': '127.0.0.1', 'HostPort': str(self._port)}]}
        self.attrs = {'NetworkSettings': {'Ports': ports}}

    def remove(self, **kwargs) -> None:
        self.removed_with.append(kwargs)


class FakeDocker:
    """A fake ``docker`` module: ``from_env().containers.run(...)`` returns a FakeContainer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.run_calls: List[tuple] = []
        self.containers_started: List[FakeContainer] = []
        self.from_env_calls = 0
        fake = self

        class Containers:
            def run(self, image, **kwargs):
                fake.run_calls.append((image, kwargs))
                container = FakeContainer(kwargs.get('name', 'fake'), fake.port)
                fake.containers_started.append(container)
                return container

        class Client:
            containers = Containers()
            closed = False

            def close(self):
                self.closed = True

        self._client = Client()

    def as_module(self) -> types.ModuleType:
        module = types.ModuleType('docker')

        def from_env(**kwargs):
            self.from_env_calls += 1
            return self._client

        module.from_env = from_env
        return module


@pytest.fixture
def fast_docker_wait(monkeypatch):
    monkeypatch.setattr(findbroker, 'DOCKER_PROBE_INTERVAL', 0.01)


# ----------------------------------------------------------------- (a) nothing anywhere


@pytest.mark.filterwarnings(
    'ignore::ResourceWarning'
)  # docker 7.x leaks a socket when no engine answers
def test_without_any_broker_raises_broker_not_found_naming_every_step_and_remedy(
    no_env_no_localhost,
):
    """For real: the REAL docker SDK talks to this machine's absent Docker engine (no fake).

    Skipped where a Docker engine answers, since then a container would rightly be started.
    """
    docker = pytest.importorskip('docker')
    assert hasattr(docker, 'DockerClient') and hasattr(
        docker.errors, 'DockerException'
    )  # the real SDK
    try:
        docker.from_env().ping()
    except docker.errors.DockerException:
        pass
    else:
        pytest.skip('a Docker engine answers here; this test is about its absence')

    with pytest.raises(BrokerNotFound) as info:
        find_broker(timeout=1.0)

    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert '1. AMQP_URL: not set' in message
    assert f'127.0.0.1:{no_env_no_localhost}' in message and 'ConnectionRefusedError' in message
    assert '3. Docker: no Docker engine answered (DockerException' in message
    assert "export AMQP_URL='amqp://USER:PASSWORD@HOST:5672//'" in message
    assert 'rabbitmq-server -detached' in message and 'apt-get install rabbitmq-server' in message
    assert 'docker run -d -p 5672:5672 rabbitmq:3' in message
    assert "pip install 'pika_rpc[docker]'" in message
    gc.collect()  # the SDK's leaked sockets go now, under this test's warning filter


def test_without_the_docker_package_the_message_says_it_is_not_installed(
    no_env_no_localhost, monkeypatch
):
    monkeypatch.setitem(sys.modules, 'docker', None)  # makes "import docker" raise ImportError
    with pytest.raises(BrokerNotFound, match=r'3\. Docker: the docker package is not installed'):
        find_broker(timeout=1.0)


def test_use_docker_false_does_not_touch_docker(no_env_no_localhost, monkeypatch):
    """Fake docker SDK (injected in sys.modules) only to prove it is never called."""
    fake = FakeDocker(port=1)
    monkeypatch.setitem(sys.modules, 'docker', fake.as_module())
    with pytest.raises(BrokerNotFound, match=r'Docker: not tried \(use_docker=False\)'):
        find_broker(use_docker=False, timeout=1.0)
    assert fake.from_env_calls == 0


# ----------------------------------------------------------------- localhost


def test_a_broker_on_localhost_is_used_with_guest_credentials(monkeypatch):
    monkeypatch.delenv('AMQP_URL', raising=False)
    with FakeAMQPListener() as listener:
        monkeypatch.setattr(findbroker, 'LOCAL_PORT', listener.port)
        broker = find_broker(use_docker=False)
    assert (broker.source, broker.url) == (
        'localhost',
        f'amqp://guest:guest@127.0.0.1:{listener.port}//',
    )
    assert listener.headers == [b'AMQP\x00\x00\x09\x01']
    broker.close()  # a no-op for a broker we did not start


def test_probe_rejects_a_peer_that_does_not_speak_amqp():
    with FakeAMQPListener(reply=b'HTTP/1.1 400 Bad Request\r\n\r\n') as listener:
        with pytest.raises(ConnectionError, match='did not answer with Connection.Start'):
            probe_amqp('127.0.0.1', listener.port, timeout=2)


# ----------------------------------------------------------------- (b) the container branch, faked


def test_container_branch_publishes_a_port_waits_for_the_handshake_and_close_removes_it(
    no_env_no_localhost, monkeypatch, fast_docker_wait
):
    """FAKE docker SDK (a module object injected into sys.modules['docker'] with monkeypatch):
    its container reports, after one reload, a host port where a fake AMQP listener drops the
    first two connections and then answers, so the finder must keep probing until it does."""
    with FakeAMQPListener(drop_first=2) as listener:
        fake = FakeDocker(port=listener.port)
        monkeypatch.setitem(sys.modules, 'docker', fake.as_module())
        broker = find_broker(timeout=2.0)

        ((image, kwargs),) = fake.run_calls
        (container,) = fake.containers_started
        assert image == findbroker.DOCKER_IMAGE
        assert kwargs['detach'] is True
        assert kwargs['ports'] == {'5672/tcp': ('127.0.0.1', None)}  # random loopback host port
        assert listener.connections == 3 and container.reloads >= 2  # waited for the handshake
        assert (broker.source, broker.url) == (
            'docker',
            f'amqp://guest:guest@127.0.0.1:{listener.port}//',
        )
        assert broker.container_name == kwargs['name']
        assert container.removed_with == []

        with broker:
            pass
        assert container.removed_with == [{'force': True}] and fake._client.closed
        broker.close()  # idempotent
        assert container.removed_with == [{'force': True}]
        assert broker.container_name is None


def test_a_container_that_never_answers_is_removed_and_reported(
    no_env_no_localhost, monkeypatch, fast_docker_wait, closed_port
):
    """FAKE docker SDK (injected into sys.modules): its container's port refuses connections."""
    monkeypatch.setattr(findbroker, 'DOCKER_START_TIMEOUT', 0.2)
    fake = FakeDocker(port=closed_port)
    monkeypatch.setitem(sys.modules, 'docker', fake.as_module())
    with pytest.raises(
        BrokerNotFound, match=r'did not become a broker \(TimeoutError: no AMQP handshake'
    ):
        find_broker(timeout=1.0)
    (container,) = fake.containers_started
    assert container.removed_with == [{'force': True}]


# ----------------------------------------------------------------- (c) AMQP_URL


def test_amqp_url_is_used_as_given_when_it_answers(monkeypatch):
    with FakeAMQPListener() as listener:
        url = f'amqp://alice:s3cret@127.0.0.1:{listener.port}/prod'
        monkeypatch.setenv('AMQP_URL', url)
        broker = find_broker()
    assert (broker.source, broker.url) == ('AMQP_URL', url)


def test_an_unreachable_amqp_url_raises_without_trying_localhost_or_docker(
    monkeypatch, closed_port
):
    """FAKE docker SDK (injected into sys.modules) only to prove it is never called; localhost is
    pointed at a fake listener that would answer, to prove it is never probed."""
    fake = FakeDocker(port=1)
    monkeypatch.setitem(sys.modules, 'docker', fake.as_module())
    monkeypatch.setenv('AMQP_URL', f'amqp://alice:s3cret@127.0.0.1:{closed_port}//')
    with FakeAMQPListener() as local:
        monkeypatch.setattr(findbroker, 'LOCAL_PORT', local.port)
        with pytest.raises(BrokerNotFound) as info:
            find_broker(timeout=1.0)
        assert local.connections == 0
    assert fake.from_env_calls == 0
    message = str(info.value)
    assert f'AMQP_URL=amqp://alice:**@127.0.0.1:{closed_port}//' in message
    assert 'ConnectionRefusedError' in message and 'Nothing else was tried' in message
    assert 's3cret' not in message


# ----------------------------------------------------------------- (d) masking


@pytest.mark.parametrize(
    'url, masked',
    [
        ('amqp://guest:guest@localhost:5672//', 'amqp://guest:**@localhost:5672//'),
        ('amqps://u:p%40ss@h:5671/vh?heartbeat=10', 'amqps://u:**@h:5671/vh?heartbeat=10'),
        ('amqp://u:p@ss/wd@h//', 'amqp://u:**@h:5672//'),  # unescaped @ and / in it
        ('amqp://a:x@h1//;amqp://b:y@h2//', 'amqp://a:**@h1:5672//;amqp://b:**@h2:5672//'),
        ('amqp://user@h//', 'amqp://user:**@h:5672//'),  # no password: the default's
        ('amqp://h:5672//', 'amqp://guest:**@h:5672//'),
    ],
)
def test_mask_url_hides_every_password(url, masked):
    assert mask_url(url) == masked


def test_broker_repr_never_shows_the_password():
    broker = Broker('amqp://alice:s3cret@db:5672//', 'AMQP_URL')
    assert repr(broker) == "Broker(url='amqp://alice:**@db:5672//', source='AMQP_URL')"
    assert 's3cret' not in str(broker)


def test_findbroker_imports_neither_pika_nor_docker_at_module_level():
    """Read with ast: a module-level import would make the finder need pika (or docker) installed."""
    with open(findbroker.__file__, encoding='utf-8') as source:
        tree = ast.parse(source.read())
    top_level = set()
    for node in tree.body:  # module level only: the lazy "import docker" sits inside a function
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split('.')[0])
    assert top_level and not top_level & {'pika', 'docker'}
