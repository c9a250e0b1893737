"""A TCP fault-injection proxy between an AMQP client and RabbitMQ, on loopback.

One daemon thread runs a ``selectors`` loop over the listening socket, every forwarded
connection and a wake-up socket pair. Controls (:meth:`FaultProxy.pause`, :meth:`~FaultProxy.cut`,
...) are queued to that thread and block until it has run them, so when a control returns its
effect is in place: after ``pause()`` not one more byte is forwarded; after ``cut()`` every
connection that existed is gone. Only the loop thread touches sockets.

The client -> server stream is cut into whole AMQP 0-9-1 frames (after the 8-byte protocol
header) before it is forwarded, so a frame split over TCP reads is seen whole: that is how
``basic.publish`` method frames are counted and how :meth:`~FaultProxy.cut_at_next_publish`
drops a connection before the broker sees the publish (:meth:`~FaultProxy.cut_at_next_method`
does the same for any method: ``channel.open``, ``confirm.select``...). A stream that is not AMQP (bad frame
end) is forwarded untouched from then on. The server -> client stream is forwarded as is.

Decisions: ``refuse(True)`` accepts each new connection and resets it at once (RST) rather than
closing the listening socket, so the port stays ours and every attempt is counted. A peer's EOF
closes the whole forwarded connection once what it sent has been passed on (AMQP needs no
half-close). ``cut()`` resets both sockets (``SO_LINGER`` 0), so both peers see an RST, not a FIN.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import selectors
import socket
import ssl
import struct
import threading
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

__all__ = ['FaultProxy']

LOGGER = logging.getLogger(__name__)

AMQP_PROTOCOL_HEADER = b'AMQP\x00\x00\x09\x01'
_FRAME_END = 0xCE
_BASIC_PUBLISH = struct.pack('>HH', 60, 40)  # class-id Basic, method-id Publish
_MAX_FRAME = 1 << 27  # larger than any frame_max RabbitMQ accepts: past it, not AMQP
_MAX_PENDING = 1 << 20  # bytes buffered per direction before we stop reading the source
_RECV_SIZE = 1 << 16
#: Seconds a control call waits for the loop thread to run it.
CONTROL_TIMEOUT = 10.0
_LINGER_RST = struct.pack('ii', 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class _FrameScanner:
    """Cuts the client -> server byte stream into forwardable units: ``[(bytes, is_publish)]``.

    Units are the protocol header, then whole frames. Incomplete frames stay buffered here.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header_seen = False
        self._opaque = False  # not AMQP after all: forward raw bytes from now on

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> List[Tuple[bytes, bool]]:
        if self._opaque:
            return [(data, False)]
        self._buf += data
        units: List[Tuple[bytes, bool]] = []
        if not self._header_seen:
            n = min(len(self._buf), len(AMQP_PROTOCOL_HEADER))
            if bytes(self._buf[: min(n, 4)]) != AMQP_PROTOCOL_HEADER[: min(n, 4)]:
                return self._give_up(units, 'no AMQP protocol header')
            if n < len(AMQP_PROTOCOL_HEADER):
                return units
            units.append((bytes(self._buf[:8]), False))
            del self._buf[:8]
            self._header_seen = True
        while len(self._buf) >= 7:
            frame_type, _channel, size = struct.unpack_from('>BHI', self._buf)
            if size > _MAX_FRAME:
                return self._give_up(units, f'frame size {size}')
            end = 7 + size + 1
            if len(self._buf) < end:
                break
            if self._buf[end - 1] != _FRAME_END:
                return self._give_up(units, 'bad frame end')
            is_publish = frame_type == 1 and self._buf[7:11] == _BASIC_PUBLISH
            units.append((bytes(self._buf[:end]), is_publish))
            del self._buf[:end]
        return units

    def _give_up(self, units: List[Tuple[bytes, bool]], why: str) -> List[Tuple[bytes, bool]]:
        LOGGER.warning('fault proxy: %s; forwarding this stream without parsing it', why)
        self._opaque = True
        units.append((bytes(self._buf), False))
        self._buf.clear()
        return units


class _Link:
    """One forwarded connection. Touched by the loop thread only."""

    def __init__(self, client: socket.socket, server: socket.socket, tls: bool) -> None:
        self.client, self.server = client, server
        self.connected = False  # server side: non-blocking connect finished
        self.handshaking = tls  # client side: TLS handshake not finished
        self.handshake_wants = selectors.EVENT_READ
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.scanner = _FrameScanner()
        self.eof_from: Optional[str] = None  # 'client' or 'server': flush the other way, then close
        self.closed = False


class FaultProxy:
    """Forward TCP connections from ``127.0.0.1:port`` to ``target_host:target_port``, with faults.

    Controls and counters are thread-safe. Controls block until the proxy thread has applied them
    (at most ``CONTROL_TIMEOUT`` s; then ``TimeoutError``). Every counter change notifies one
    condition, which :meth:`wait_for` waits on: nobody needs to poll.

    Args:
        target_host, target_port: the broker.
        ssl_context: a server-side context: clients then talk TLS to the proxy, which forwards
            plaintext (see ``tlsproxy.TLSProxy``).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = '127.0.0.1',
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.target_host, self.target_port = target_host, int(target_port)
        self.listen_host = listen_host
        self._ssl_context = ssl_context
        self._lock = threading.RLock()
        # Notified (under _lock) on every counter change and when a connection opens or closes.
        self._changed = threading.Condition(self._lock)
        self._connection_attempts = self._publish_count = self._cut_count = 0
        self._commands: Deque[Callable[[], None]] = collections.deque()
        self._accepting_commands = False
        self._started = self._stopping = False
        self._thread: Optional[threading.Thread] = None
        # Loop-thread state (set up in start(), then only the loop thread uses it):
        self._links: Set[_Link] = set()
        self._paused = self._refusing = False
        self._cut_next: Optional[bytes] = None  # class-id + method-id of the frame to cut at
        self._interest: Dict[socket.socket, int] = {}
        self._selector: Optional[selectors.BaseSelector] = None
        self._listener: Optional[socket.socket] = None
        self._wake_r = self._wake_w = None
        self._target_addr: Tuple = ()
        self._port: Optional[int] = None
        self._family = socket.AF_INET

    # ----------------------------------------------------------------- life cycle

    def start(self) -> 'FaultProxy':
        """Listen on a free port and start forwarding. Returns self. Raises OSError if it can't."""
        with self._lock:
            if self._started:
                raise RuntimeError('a FaultProxy starts once')
            self._started = True
        family, _, _, _, addr = socket.getaddrinfo(
            self.target_host, self.target_port, type=socket.SOCK_STREAM
        )[0]
        self._family, self._target_addr = family, addr
        self._listener = socket.create_server((self.listen_host, 0))
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._set_interest(self._listener, selectors.EVENT_READ, self._on_accept)
        self._set_interest(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._accepting_commands = True
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f'fault-proxy-{self.port}'
        )
        self._thread.start()
        LOGGER.debug(
            'fault proxy 127.0.0.1:%s -> %s:%s', self.port, self.target_host, self.target_port
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Reset every connection, stop listening, join the thread (bounded). Idempotent."""
        with self._lock:
            if self._stopping or self._thread is None:
                return
            self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            LOGGER.warning('fault proxy thread still running after %s s; abandoning it', timeout)

    def __enter__(self) -> 'FaultProxy':
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port clients connect to (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError('the proxy is not started')
        return self._port

    def url(self, base_url: str) -> str:
        """``base_url`` (its first URL if a ``;`` list) pointed at this proxy; all else kept."""
        return _retarget(base_url, self.listen_host, self.port)

    # ----------------------------------------------------------------- controls

    def pause(self) -> None:
        """Stop forwarding in both directions; connections stay open (heartbeats go missing)."""
        self._call(functools.partial(setattr, self, '_paused', True))

    def resume(self) -> None:
        """Forward again what was held back by :meth:`pause`, and everything after it."""
        self._call(functools.partial(setattr, self, '_paused', False))

    def cut(self) -> int:
        """Reset (RST) both sockets of every current connection. Returns how many were cut."""
        cut: List[int] = []

        def command() -> None:
            links = list(self._links)
            for link in links:
                self._close_link(link, reset=True)
            self._count('_cut_count', len(links))
            cut.append(len(links))

        self._call(command)
        return cut[0] if cut else 0

    def refuse(self, refusing: bool = True) -> None:
        """While ``refusing``, reset each new connection as soon as it is accepted (still counted)."""
        self._call(functools.partial(setattr, self, '_refusing', bool(refusing)))

    def cut_at_next_publish(self) -> None:
        """Arm a one-shot cut: the next ``basic.publish`` frame (any connection) is not forwarded;
        its connection is reset instead. Frames before it are sent first, best effort (the RST
        may still make the broker discard them). :attr:`cut_count` goes up when it fires."""
        self.cut_at_next_method(60, 40)

    def cut_at_next_method(self, class_id: int, method_id: int) -> None:
        """As :meth:`cut_at_next_publish`, for the next method frame ``class_id.method_id`` a
        client sends (e.g. ``20, 10``: ``channel.open``; ``85, 10``: ``confirm.select``).
        Replaces a cut armed before and not fired yet."""
        self._call(
            functools.partial(setattr, self, '_cut_next', struct.pack('>HH', class_id, method_id))
        )

    # ----------------------------------------------------------------- counters

    @property
    def connection_attempts(self) -> int:
        """TCP connections accepted, refused ones included."""
        with self._lock:
            return self._connection_attempts

    @property
    def publish_count(self) -> int:
        """``basic.publish`` method frames let through client -> server (queued for the broker;
        one held by :meth:`pause` counts, one dropped by :meth:`cut_at_next_publish` does not)."""
        with self._lock:
            return self._publish_count

    @property
    def cut_count(self) -> int:
        """Connections reset by :meth:`cut`, :meth:`cut_at_next_publish` or
        :meth:`cut_at_next_method`."""
        with self._lock:
            return self._cut_count

    @property
    def active_connections(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._links)

    def wait_for(self, predicate: Callable[[], object], timeout: Optional[float] = 10.0) -> bool:
        """Block until ``predicate()`` is true (re-checked on every counter change) or ``timeout``.

        Returns whether ``predicate()`` held, so ``assert proxy.wait_for(...)`` works.
        """
        with self._changed:
            return bool(self._changed.wait_for(predicate, timeout))

    # ----------------------------------------------------------------- plumbing (any thread)

    def _call(self, fn: Callable[[], None]) -> None:
        """Run fn on the loop thread and wait for it; inline if the loop is not running."""
        done = threading.Event()
        errors: List[BaseException] = []

        def command() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the caller below
                errors.append(exc)
            finally:
                done.set()

        with self._lock:
            queued = self._accepting_commands
            if queued:
                self._commands.append(command)
        if not queued:
            command()
        else:
            self._wake()
            if not done.wait(CONTROL_TIMEOUT):
                raise TimeoutError(
                    f'fault proxy thread did not run a control in {CONTROL_TIMEOUT} s'
                )
        if errors:
            raise errors[0]

    def _wake(self) -> None:
        try:
            self._wake_w.send(b'x')
        except (BlockingIOError, OSError):  # full: a wake-up is already pending; closed: stopped
            pass

    def _count(self, name: str, by: int = 1) -> None:
        with self._changed:
            setattr(self, name, getattr(self, name) + by)
            self._changed.notify_all()

    # ----------------------------------------------------------------- loop thread

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_commands()
                if self._stopping:
                    break
                for link in list(self._links):
                    self._update_link_interest(link)
                for key, mask in self._selector.select():
                    key.data(key.fileobj, mask)
        except BaseException:
            LOGGER.critical('fault proxy thread died', exc_info=True)
        finally:
            with self._lock:
                self._accepting_commands = False
            self._run_commands()  # nobody waits forever on a control queued before the end
            for link in list(self._links):
                self._close_link(link, reset=True)
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()
            self._selector.close()

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            command()

    def _set_interest(self, sock: socket.socket, events: int, handler: Callable) -> None:
        old = self._interest.get(sock, 0)
        if events == old:
            return
        if not events:
            self._selector.unregister(sock)
            del self._interest[sock]
        elif not old:
            self._selector.register(sock, events, handler)
            self._interest[sock] = events
        else:
            self._selector.modify(sock, events, handler)
            self._interest[sock] = events

    def _on_wake(self, sock: socket.socket, mask: int) -> None:
        try:
            while sock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_accept(self, sock: socket.socket, mask: int) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. EMFILE: try again on the next event
                LOGGER.warning('fault proxy: accept failed: %s', exc)
                return
            if self._refusing:
                self._count('_connection_attempts')  # before the RST, as above
                _reset(client)
                continue
            self._open_link(client)
            self._count('_connection_attempts')

    def _open_link(self, client: socket.socket) -> None:
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            client = self._ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        server = socket.socket(self._family, socket.SOCK_STREAM)
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = server.connect_ex(self._target_addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            LOGGER.warning(
                'fault proxy: cannot reach %s:%s: %s',
                self.target_host,
                self.target_port,
                errno.errorcode.get(err, err),
            )
            _reset(client)
            _reset(server)
            return
        with self._changed:
            self._links.add(_Link(client, server, self._ssl_context is not None))
            self._changed.notify_all()

    def _update_link_interest(self, link: _Link) -> None:
        flowing = not self._paused and link.eof_from is None
        client = server = 0
        if link.handshaking:
            client = link.handshake_wants
        else:
            if flowing and link.scanner.pending + len(link.to_server) < _MAX_PENDING:
                client |= selectors.EVENT_READ
            if link.to_client and not self._paused:
                client |= selectors.EVENT_WRITE
        if not link.connected:
            server = selectors.EVENT_WRITE  # the connect completes (or fails)
        else:
            if flowing and len(link.to_client) < _MAX_PENDING:
                server |= selectors.EVENT_READ
            if link.to_server and not self._paused:
                server |= selectors.EVENT_WRITE
        handler = functools.partial(self._on_link_event, link)
        self._set_interest(link.client, client, handler)
        self._set_interest(link.server, server, handler)

    def _on_link_event(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link.closed:  # closed earlier in this same batch of events
            return
        try:
            if sock is link.server:
                self._on_server_event(link, mask)
            else:
                self._on_client_event(link, mask)
        except OSError as exc:  # reset by a peer, broken pipe, TLS error: drop the connection
            LOGGER.debug('fault proxy: connection dropped: %r', exc)
            self._close_link(link, reset=True)
            return
        if not link.closed and link.eof_from is not None:
            pending = link.to_server if link.eof_from == 'client' else link.to_client
            if not pending or (link.eof_from == 'client' and not link.connected):
                self._close_link(link, reset=False)

    def _on_server_event(self, link: _Link, mask: int) -> None:
        if not link.connected:
            err = link.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f'connect to the target failed: {os.strerror(err)}')
            link.connected = True
            return
        if mask & selectors.EVENT_READ:
            data, eof = _recv(link.server)
            link.to_client += data
            if eof:
                link.eof_from = 'server'
        if mask & selectors.EVENT_WRITE and not self._paused:
            _send(link.server, link.to_server)

    def _on_client_event(self, link: _Link, mask: int) -> None:
        if link.handshaking:
            try:
                link.client.do_handshake()
            except ssl.SSLWantReadError:
                link.handshake_wants = selectors.EVENT_READ
                return
            except ssl.SSLWantWriteError:
                link.handshake_wants = selectors.EVENT_WRITE
                return
            link.handshaking = False
            mask |= selectors.EVENT_READ  # data may already sit decrypted in the TLS buffer
        # No pause check: READ interest is dropped while paused, except right after a TLS
        # handshake, when reading into the buffer (not forwarding) keeps decrypted data from
        # being stranded in the TLS object.
        if mask & selectors.EVENT_READ and link.eof_from is None:
            data, eof = _recv(link.client)
            if data and not self._from_client(link, data):
                return
            if eof:
                link.eof_from = 'client'
        if mask & selectors.EVENT_WRITE and not self._paused:
            _send(link.client, link.to_client)

    def _from_client(self, link: _Link, data: bytes) -> bool:
        """Queue whole frames for the server; False if the link was cut at the armed method."""
        for unit, is_publish in link.scanner.feed(data):
            if self._cut_next is not None and unit[0] == 1 and unit[7:11] == self._cut_next:
                self._cut_next = None
                if link.connected:  # best effort: frames before that one reach the broker
                    try:
                        _send(link.server, link.to_server)
                    except OSError:
                        pass
                self._count('_cut_count')  # before the RST: a client that saw it sees the count
                self._close_link(link, reset=True)
                return False
            link.to_server += unit
            if is_publish:
                self._count('_publish_count')
        return True

    def _close_link(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        for sock in (link.client, link.server):
            if sock in self._interest:
                self._set_interest(sock, 0, None)
            if reset:
                _reset(sock)
            else:
                sock.close()
        with self._changed:
            self._links.discard(link)
            self._changed.notify_all()


def _recv(sock: socket.socket) -> Tuple[bytes, bool]:
    """Read what is available: ``(data, eof)``. A TLS socket is drained (its buffer is invisible
    to the selector); a plain one is read once."""
    chunks: List[bytes] = []
    while True:
        try:
            chunk = sock.recv(_RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return b''.join(chunks), False
        if not chunk:
            return b''.join(chunks), True
        chunks.append(chunk)
        if not isinstance(sock, ssl.SSLSocket):
            return b''.join(chunks), False


def _send(sock: socket.socket, buf: bytearray) -> None:
    """Send as much of ``buf`` as the socket takes now; remove what was sent."""
    while buf:
        try:
            sent = sock.send(buf)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        del buf[:sent]


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), never a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def _retarget(base_url: str, host: str, port: int, scheme: Optional[str] = None) -> str:
    """Replace host and port (and the scheme if given) of the first URL in ``base_url``."""
    first = base_url.split(';', 1)[0].strip()
    old_scheme, sep, rest = first.partition('://')
    if not sep:
        raise ValueError('not a URL with a scheme')
    userinfo, at, hostpart = rest.rpartition('@')
    cut = min(
        (i for i in (hostpart.find('/'), hostpart.find('?')) if i >= 0), default=len(hostpart)
    )
    return f'{scheme or old_scheme}://{userinfo}{at}{host}:{port}{hostpart[cut:]}'
