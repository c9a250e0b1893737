"""Find a RabbitMQ broker to talk to: for tests, ``scripts/demo.py`` and benchmarks.

Order (the user's word first, then the cheapest guess, then the one that needs Docker):

1. ``$AMQP_URL``, if set and not blank. It is probed; if it does not answer, :class:`BrokerNotFound`
   is raised at once: the user said where the broker is, so nothing else is tried.
2. A broker on ``LOCAL_HOST:LOCAL_PORT`` (127.0.0.1:5672) answering the AMQP handshake, used as
   ``amqp://guest:guest@127.0.0.1:5672//``.
3. A throwaway container (``DOCKER_IMAGE``) started through the ``docker`` SDK (the
   ``pika_rpc[docker]`` extra) with 5672 published on a random loopback port. It is removed by
   :meth:`Broker.close` and, failing that, at interpreter exit.
4. :class:`BrokerNotFound`, whose message lists every step, why it failed, and how to get a broker.

"Answers" means: a TCP connection opens, and after the AMQP 0-9-1 protocol header the peer sends
a method frame (type 1) on channel 0 carrying ``Connection.Start``. Nothing else is sent, so no
credentials are used by the probe. For an ``amqps://`` URL the probe runs over TLS *without*
certificate checks: it only asks whether a broker is there; the real client verifies.

This module never imports pika (the docker SDK is imported only when step 3 runs), and no message,
``repr`` or log line holds a password: URLs go through :func:`mask_url` first, other text
through ``_urls.redact``. URLs are read as the client reads them (``_urls``), so the probe
asks the host and port the client will connect to.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from typing import Any, List, Optional, Tuple

from ._urls import host_port, mask_url, parse_url, redact, split_urls

__all__ = ['Broker', 'BrokerNotFound', 'find_broker', 'mask_url', 'host_port', 'probe_amqp']

LOGGER = logging.getLogger(__name__)

#: Where step 2 looks. Module constants so tests can point them at a closed port.
LOCAL_HOST = '127.0.0.1'
LOCAL_PORT = 5672
#: Image for step 3; ``rabbitmq:3`` is the smallest official image with a ``guest`` user that may
#: log in from outside the container.
DOCKER_IMAGE = 'rabbitmq:3'
#: Seconds a fresh container gets to answer the AMQP handshake (RabbitMQ boots in ~5-15 s).
DOCKER_START_TIMEOUT = 60.0
#: Pause between two handshake probes while a container boots (a bounded wait, not a busy loop).
DOCKER_PROBE_INTERVAL = 0.5
#: Label put on every container we start, so a leftover one can be found and removed by hand.
CONTAINER_LABEL = 'pika_rpc.findbroker'

AMQP_PROTOCOL_HEADER = b'AMQP\x00\x00\x09\x01'
_FRAME_METHOD = 1
_CONNECTION_START = (10, 10)  # class-id Connection, method-id Start

_HOW_TO_GET_ONE = """\
To get a broker, any of:
  - point at one you have:    export AMQP_URL='amqp://USER:PASSWORD@HOST:5672//'
  - run one on this machine:  apt-get install rabbitmq-server && rabbitmq-server -detached
  - run one in Docker:        docker run -d -p 5672:5672 rabbitmq:3
  - let find_broker start one: pip install 'pika_rpc[docker]' (needs a running Docker engine)"""


class BrokerNotFound(RuntimeError):
    """No broker answered. The message lists what was tried, why each step failed, and how to get one."""


def probe_amqp(host: str, port: int, timeout: float = 3.0, *, use_tls: bool = False) -> None:
    """Check that an AMQP 0-9-1 broker answers on ``host:port``. Blocks up to about ``timeout``.

    Sends the protocol header and reads the first frame; returns if it is ``Connection.Start``.
    The socket is then closed (the broker logs an aborted handshake; nothing else happens).

    Raises:
        OSError: no TCP connection (refused, unreachable, timed out) or the TLS handshake failed.
        ConnectionError: the peer answered with something other than ``Connection.Start``.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = raw
        if use_tls:
            context = ssl.create_default_context()
            context.check_hostname = False  # a reachability probe, not a security decision
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(raw, server_hostname=host)
        try:
            sock.sendall(AMQP_PROTOCOL_HEADER)
            head = _recv_exactly(sock, 11)  # type(1) channel(2) size(4) class(2) method(2)
        finally:
            if sock is not raw:
                sock.close()
    if head.startswith(b'AMQP'):
        raise ConnectionError(f'peer wants another AMQP protocol version: {head[:8]!r}')
    frame_type, channel, _size, class_id, method_id = struct.unpack('>BHIHH', head)
    if frame_type != _FRAME_METHOD or channel != 0 or (class_id, method_id) != _CONNECTION_START:
        raise ConnectionError(
            f'peer did not answer with Connection.Start (frame type {frame_type}, '
            f'channel {channel}, method {class_id}.{method_id})'
        )


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b''
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f'peer closed the connection after {len(data)} bytes')
        data += chunk
    return data


class Broker:
    """A broker found by :func:`find_broker`.

    Attributes:
        url: kombu-style URL (``amqp://guest:guest@127.0.0.1:5672//``); it holds the password,
            so never log it: use :func:`mask_url` (``repr`` does).
        source: ``'AMQP_URL'``, ``'localhost'`` or ``'docker'``.

    :meth:`close` removes a container this process started and is a no-op otherwise (also in a
    forked child, which never removes its parent's container); it is idempotent and
    thread-safe. Usable as a context manager.
    """

    def __init__(self, url: str, source: str, container: Any = None, client: Any = None) -> None:
        self.url = url
        self.source = source
        self._container = container
        self._client = client  # the docker client that started the container
        self._close_lock = threading.Lock()
        self._pid = os.getpid()  # only this process removes the container
        if container is not None:
            atexit.register(self.close)  # a test run that dies before close() leaks nothing

    @property
    def host(self) -> str:
        """Host of :attr:`url` (the first of a failover list)."""
        return host_port(self.url)[0]

    @property
    def port(self) -> int:
        """Port of :attr:`url` (the first of a failover list)."""
        return host_port(self.url)[1]

    @property
    def container_name(self) -> Optional[str]:
        """Name of the container this broker runs in, while it runs; None for other sources."""
        container = self._container
        return None if container is None else getattr(container, 'name', None)

    def close(self) -> None:
        """Stop and remove the container if this broker is one; otherwise do nothing. Blocks."""
        if self._pid != os.getpid():  # a forked child: the container (and lock) are the parent's
            return
        with self._close_lock:
            container, self._container = self._container, None
            client, self._client = self._client, None
        if container is None:
            return
        atexit.unregister(self.close)
        _remove_container(container)
        _close_quietly(client)

    def __enter__(self) -> 'Broker':
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'Broker(url={mask_url(self.url)!r}, source={self.source!r})'


def find_broker(*, use_docker: bool = True, timeout: float = 3.0) -> Broker:
    """Return a broker that answers the AMQP handshake, looking in the order of the module docstring.

    Blocks: up to ``timeout`` seconds per probe, plus up to ``DOCKER_START_TIMEOUT`` seconds (and
    an image pull) when a container is started. ``use_docker=False`` skips step 3.

    Raises:
        BrokerNotFound: ``$AMQP_URL`` is set but does not answer (nothing else is tried then),
            or no step found a broker. The message never holds a password.
    """
    tried: List[str] = []
    env_url = os.environ.get('AMQP_URL', '').strip()
    if env_url:
        return _from_env(env_url, timeout)
    tried.append('AMQP_URL: not set')

    host, port = LOCAL_HOST, LOCAL_PORT
    try:
        probe_amqp(host, port, timeout)
    except OSError as exc:  # ConnectionError is an OSError too
        tried.append(
            f'localhost: nothing answered the AMQP handshake on {host}:{port} ({_why(exc)})'
        )
    else:
        LOGGER.info('using the broker on %s:%s', host, port)
        return Broker(f'amqp://guest:guest@{host}:{port}//', 'localhost')

    if not use_docker:
        tried.append('Docker: not tried (use_docker=False)')
    else:
        broker, why = _start_container(timeout)
        if broker is not None:
            return broker
        tried.append(f'Docker: {why}')

    steps = '\n'.join(f'  {n}. {step}' for n, step in enumerate(tried, 1))
    raise BrokerNotFound(f'no RabbitMQ broker found. Tried, in order:\n{steps}\n{_HOW_TO_GET_ONE}')


def _from_env(env_url: str, timeout: float) -> Broker:
    failures = []
    for one in split_urls(env_url):
        try:
            address = parse_url(one)[0]
            probe_amqp(address.host, address.port, timeout, use_tls=address.ssl)
        except (OSError, ValueError) as exc:
            failures.append(f'{mask_url(one)}: {_why(exc)}')
        else:
            LOGGER.info('using the broker of AMQP_URL=%s', mask_url(env_url))
            return Broker(env_url, 'AMQP_URL')
    reasons = '\n'.join(f'  - {line}' for line in failures) or '  - it holds no URL'
    raise BrokerNotFound(
        f'AMQP_URL={mask_url(env_url)} does not answer the AMQP handshake:\n{reasons}\n'
        'Nothing else was tried, since AMQP_URL names the broker to use: start that broker, '
        'fix AMQP_URL, or unset it to let find_broker look on localhost and in Docker.'
    )


def _start_container(timeout: float) -> Tuple[Optional[Broker], str]:
    """Start a RabbitMQ container and wait for it; return ``(broker, '')`` or ``(None, why not)``."""
    try:
        import docker  # optional: the pika_rpc[docker] extra
    except ImportError:
        return None, (
            'the docker package is not installed, so no container could be started '
            "(pip install 'pika_rpc[docker]')"
        )
    try:
        # Asks the engine for its API version: fails fast without one. (docker 7.x then leaks
        # its socket, a ResourceWarning we cannot prevent from here.)
        client = docker.from_env()
    except Exception as exc:  # docker.errors.DockerException and whatever the transport raises
        return None, f'no Docker engine answered ({_why(exc)})'
    name = f'pika-rpc-broker-{uuid.uuid4().hex[:12]}'
    try:
        LOGGER.info('starting a throwaway RabbitMQ container %s (%s)', name, DOCKER_IMAGE)
        container = client.containers.run(
            DOCKER_IMAGE,
            detach=True,
            name=name,
            labels={CONTAINER_LABEL: '1'},
            ports={'5672/tcp': ('127.0.0.1', None)},
        )  # None: Docker picks a free host port
    except Exception as exc:
        _close_quietly(client)
        return None, f'could not start a {DOCKER_IMAGE} container ({_why(exc)})'
    try:
        port = _wait_until_answering(container, timeout)
    except Exception as exc:
        _remove_container(container)
        _close_quietly(client)
        return None, f'container {name} ({DOCKER_IMAGE}) did not become a broker ({_why(exc)})'
    LOGGER.info('container %s answers on 127.0.0.1:%s', name, port)
    return Broker(f'amqp://guest:guest@127.0.0.1:{port}//', 'docker', container, client), ''


def _wait_until_answering(container: Any, timeout: float) -> int:
    """Return the host port once the container answers the handshake; raise past the deadline."""
    deadline = time.monotonic() + DOCKER_START_TIMEOUT
    pause = threading.Event()  # never set: its wait() is an interruptible, bounded pause
    last: Exception = TimeoutError('no published port yet')
    while True:
        container.reload()
        if container.status in ('exited', 'dead'):
            raise RuntimeError(f'it stopped (status {container.status!r})')
        port = _published_port(container)
        if port is not None:
            try:
                probe_amqp('127.0.0.1', port, timeout)
                return port
            except OSError as exc:
                last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f'no AMQP handshake within {DOCKER_START_TIMEOUT:g} s; last error: {_why(last)}'
            )
        pause.wait(DOCKER_PROBE_INTERVAL)


def _published_port(container: Any) -> Optional[int]:
    bindings = (container.attrs.get('NetworkSettings') or {}).get('Ports') or {}
    for binding in bindings.get('5672/tcp') or ():
        if binding.get('HostPort'):
            return int(binding['HostPort'])
    return None


def _remove_container(container: Any) -> None:
    try:
        container.remove(force=True)  # force: stop (SIGKILL) and remove in one call
        LOGGER.info('removed container %s', getattr(container, 'name', container))
    except Exception as exc:  # already gone, engine gone: nothing left to clean
        LOGGER.warning(
            'could not remove container %s: %s', getattr(container, 'name', container), _why(exc)
        )


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # a client of a vanished engine: nothing to release
        pass


def _why(exc: BaseException) -> str:
    text = str(exc) or 'no details'
    return f'{type(exc).__name__}: {redact(text)}'
