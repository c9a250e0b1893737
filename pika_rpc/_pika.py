"""The pika boundary: the only module that touches pika's internals.

pika_rpc uses pika's public API where it can (``BlockingConnection``, channels, frames,
``BasicProperties``) and reaches behind it in four places, each for a measured reason:

* **the underlying objects** of the blocking adapter: ``BlockingConnection._impl`` (the
  connection, for its ioloop, plain channels without a ``BlockingChannel`` around them, and
  the frame reader) and ``BlockingChannel._impl`` (confirm mode with pipelined confirms:
  the blocking adapter would make every publish wait out its own round trip);
* **the frame reader**: ``Connection._on_data_available`` is replaced on the instance by
  ``_deliveries.DeliveryReader``, which takes over what ``_frame_buffer`` holds and counts
  ``bytes_received`` (public) for pika's heartbeat checker;
* **the writer**: the transport's ``_sock`` and ``_produce`` (wrapped to run under the
  write lock callers' direct writes take) and ``_body_max_length`` (the frame size);
  ``_MAX_RECV_BYTES`` is raised to read more per ``recv`` (speed only);
* **channel cookies**: ``Channel._set_cookie`` gives a plain channel the object
  ``BlockingConnection.close()`` expects to find on each of its channels.

:func:`check_pika` checks every one of them by what it is and does (not by pika's version):
once per process at the first connect (the reader's behaviour on an offline connection,
the classes), and on every new connection (the instances). A pika that differs raises
:class:`PikaContractError` at connect, naming what differs, instead of losing frames.
Verified with pika 1.3.0 to 1.4.4 and pika's main branch (``tests/unit/test_pika_contract.py``
runs pika's real code; ``tests/unit/test_layers.py`` fails if a private pika attribute is
used anywhere else). Upgrading pika: run those tests against it, then widen
``install_requires``.

Also here, because they translate pika's vocabulary into ours: connection parameters from
our settings, pika's error classes sorted for the I/O thread, and a channel closure turned
into a typed :class:`~pika_rpc.errors.BrokerRefused`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import socket
import ssl
import threading
from typing import Any, Callable, Optional, Tuple

import pika
import pika.adapters.blocking_connection
import pika.channel
import pika.connection
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from . import _advice
from .errors import BrokerRefused, refusal

LOGGER = logging.getLogger(__name__)

__all__ = [
    'PikaContractError',
    'check_pika',
    'Wire',
    'DirectSocket',
    'connection_parameters',
    'translate_channel_error',
    'connected_address',
    'closed_by_command',
    'refuses_global_qos',
    'translate_connection_close',
    'RetryAfterReconnect',
    'channel_impl',
    'set_channel_cookie',
    'CONNECTION_ERRORS',
    'CHANNEL_ERRORS',
    'CONNECT_ERRORS',
    'FATAL_CONNECT_ERRORS',
]

#: A connection is gone (or going): the I/O thread reconnects.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
    socket.error,
)
#: A channel of ours is gone: the command that used it fails, or the channel is reopened.
CHANNEL_ERRORS = (pika.exceptions.ChannelClosed, pika.exceptions.ChannelWrongStateError)
#: What opening a connection can raise. pika 1.4 may raise a bare ValueError ("Expected
#: connected socket") when the peer resets right after accepting; a handshake that times out
#: raises AMQPConnectorException, which is not an AMQPError.
CONNECT_ERRORS = CONNECTION_ERRORS + (pika.exceptions.AMQPError, ValueError, AMQPConnectorException)
#: Connect errors no retry can fix: wrong credentials, vhost or certificate.
FATAL_CONNECT_ERRORS = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    ssl.SSLCertVerificationError,
)

#: Bytes asked of the socket per read (pika asks 4 KB): a 24 MB result is 400 reads, not
#: 6,000, and what is behind it in the stream (confirms, small results) is read sooner.
#: Below glibc's mmap threshold (128 KB), so a short read costs no mmap/munmap.
READ_SIZE = 65536


class PikaContractError(RuntimeError):
    """The installed pika's internals are not the ones pika_rpc relies on (see
    :mod:`pika_rpc._pika`); the connection is not used."""


# ------------------------------------------------------------------ our vocabulary


def connection_parameters(opts: dict, name: str) -> pika.ConnectionParameters:
    """pika parameters for one broker address (a ``config.connection_options`` item).

    TLS: the context verifies the certificate unless ``cert_reqs`` is ``CERT_NONE``, and
    the host name unless ``check_hostname`` is false (or ``cert_reqs`` is ``CERT_NONE``:
    a name cannot be checked on a certificate that is not verified)."""
    ssl_options = None
    ssl_conf = opts.get('ssl')
    if ssl_conf:
        conf = ssl_conf if isinstance(ssl_conf, dict) else {}
        context = ssl.create_default_context(cafile=conf.get('ca_certs'))
        if conf.get('certfile'):
            context.load_cert_chain(conf['certfile'], conf.get('keyfile'))
        cert_reqs = conf.get('cert_reqs', ssl.CERT_REQUIRED)
        context.check_hostname = (
            bool(conf.get('check_hostname', True)) and cert_reqs != ssl.CERT_NONE
        )
        context.verify_mode = cert_reqs
        ssl_options = pika.SSLOptions(context, conf.get('server_hostname') or opts['host'])
    timeout = opts.get('connection_timeout')
    return pika.ConnectionParameters(
        host=opts['host'],
        port=opts['port'],
        virtual_host=opts['virtual_host'],
        credentials=pika.PlainCredentials(opts['userid'], opts['password']),
        heartbeat=opts.get('heartbeat'),
        socket_timeout=timeout,
        stack_timeout=timeout,
        blocked_connection_timeout=opts.get('blocked_connection_timeout'),
        connection_attempts=1,
        ssl_options=ssl_options,
        client_properties=dict(
            {'connection_name': name, 'product': 'pika_rpc'}, **opts.get('client_properties', {})
        ),
    )


def translate_channel_error(exc: BaseException, what: str) -> BrokerRefused:
    """A pika channel closure as our typed refusal (a 406 says how to fix it)."""
    code = getattr(exc, 'reply_code', None)
    text = getattr(exc, 'reply_text', str(exc))
    if code == 406:
        advice = _advice.precondition_advice(text)
        advice = f' {advice}.' if advice else ''
        return refusal(code, f'{what}: 406 PRECONDITION_FAILED ({text}).{advice}', text)
    return refusal(code, f'{what}: {code} {text}', text)


def connected_address(connection: Any) -> Tuple[str, int]:
    """``(host, port)`` a ``BlockingConnection`` reached (of the addresses it was given)."""
    params = connection._impl.params
    return params.host, params.port


#: Connection-level reply codes the broker answers a faulty *command* with (502 syntax,
#: 503 command invalid, 504 channel error, 505 unexpected frame, 530 not allowed, 540 not
#: implemented). Others (320 forced by an operator, 541 internal error, missed heartbeats)
#: are not the command's doing: it runs again on the next connection.
_COMMAND_FAULTS = frozenset({502, 503, 504, 505, 530, 540})


class RetryAfterReconnect(pika.exceptions.AMQPConnectionError):
    """The broker closed the connection because of a command that has been changed since
    (a consumer that now asks for per-consumer QoS): the link reconnects and runs it again."""


def process_data_events(connection: Any, time_limit: Optional[float]) -> None:
    """Run ``connection``'s ioloop as ``BlockingConnection.process_data_events`` does.

    pika's main branch (after 1.4.4) raises a ``ChannelClosedByBroker`` out of
    ``process_data_events`` for each ``BlockingChannel`` the broker closed; pika 1.3 and 1.4
    raise it only from that channel's own calls. Our channels' close callbacks already
    handle every closure (the publish channel is reopened, its publications settled), so
    the raise is only noted here: a channel error never reads as a lost connection.
    """
    try:
        connection.process_data_events(time_limit=time_limit)
    except pika.exceptions.ChannelClosedByBroker as exc:
        LOGGER.debug('channel closed by the broker, handled by its callback: %r', exc)


def closed_by_command(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker closing the connection because of the command that was
    running (a 503 for an unknown exchange type, a 540...): running it again would close
    the connection again, for every thread."""
    return (
        isinstance(exc, pika.exceptions.ConnectionClosedByBroker)
        and exc.reply_code in _COMMAND_FAULTS
    )


def refuses_global_qos(exc: BaseException) -> bool:
    """Whether the broker closed the connection because a consumer with a global (per
    channel) prefetch subscribed to a queue that has none: a quorum queue or a stream
    (RabbitMQ: ``540 NOT_IMPLEMENTED - queue 'q' in vhost '/' does not support global qos``)."""
    return (
        isinstance(exc, pika.exceptions.ConnectionClosedByBroker)
        and exc.reply_code == 540
        and 'global qos' in str(exc.reply_text)
    )


def translate_connection_close(exc: BaseException, what: str) -> BrokerRefused:
    """A connection the broker closed because of command ``what``, as the typed refusal that
    command fails with (it is not run again)."""
    code = getattr(exc, 'reply_code', None)
    text = getattr(exc, 'reply_text', str(exc))
    return refusal(
        code,
        f'{what}: the broker closed the connection ({code} {text}); every thread lost its '
        f'channels on it and the link reconnected; the command is not run again',
        text,
    )


def basic_properties(props: dict) -> pika.spec.BasicProperties:
    """pika's properties object for a dict of AMQP properties."""
    return pika.spec.BasicProperties(**props)


# ------------------------------------------------------------------ the internals


def channel_impl(blocking_channel: Any) -> Any:
    """The ``pika.channel.Channel`` behind a ``BlockingChannel``."""
    return blocking_channel._impl


def set_channel_cookie(impl: Any, cookie: Any) -> None:
    """Give a plain channel the object ``BlockingConnection.close()`` finds on it
    (``is_open``, ``close(code, text)``), as a ``BlockingChannel`` would be."""
    impl._set_cookie(cookie)


class Wire:
    """The internals of one open ``BlockingConnection``, checked when it is made.

    I/O thread only. Raises ``PikaContractError`` when the connection lacks what pika_rpc
    touches."""

    def __init__(self, connection: Any) -> None:
        impl = getattr(connection, '_impl', None)
        if impl is None:
            raise PikaContractError(_contract_message('BlockingConnection has no _impl'))
        self._setup(impl)

    @classmethod
    def of(cls, impl: Any) -> 'Wire':
        """The wire of a ``pika.connection.Connection`` used without the blocking adapter
        (the contract tests drive pika's reader that way)."""
        wire = cls.__new__(cls)
        wire._setup(impl)
        return wire

    def _setup(self, impl: Any) -> None:
        check_pika(impl)
        self.impl = impl
        self.ioloop: Any = getattr(impl, 'ioloop', None)
        self.params: Any = getattr(impl, 'params', None)

    def open_channel(self, on_open: Callable[[Any], None]) -> Any:
        """A plain ``pika.channel.Channel`` (no ``BlockingChannel`` around it); ``on_open``
        gets it once the broker's Channel.OpenOk arrived."""
        return self.impl.channel(on_open_callback=on_open)

    def take_reader(
        self, on_data: Callable[[bytes], None]
    ) -> Tuple[Callable[[bytes], None], bytes]:
        """Route every socket read to ``on_data`` from now on; returns pika's own reader
        (for the frames ``on_data`` leaves to pika) and the partial frame pika held."""
        pika_on_data = self.impl._on_data_available
        held = _take_frame_buffer(self.impl)
        self.impl._on_data_available = on_data
        _read_more_per_call(self.impl)
        return pika_on_data, held

    def direct_socket(self, lock: threading.Lock, io_wait: float) -> Optional['DirectSocket']:
        """The plaintext socket for callers' direct writes, with pika's own writer wrapped to
        run under ``lock`` (waiting at most ``io_wait`` for it); None on TLS or an unknown
        transport (then every publication goes through the I/O thread)."""
        transport = getattr(self.impl, '_transport', None)
        sock = getattr(transport, '_sock', None)
        frame_max = getattr(self.impl, '_body_max_length', None)
        if (
            transport is None
            or not isinstance(sock, socket.socket)
            or type(sock).__module__.startswith('ssl')
            or not hasattr(transport, '_produce')
            or not isinstance(frame_max, int)
        ):
            return None
        if not getattr(transport, '_pika_rpc_wrapped', False):
            produce = transport._produce

            def locked_produce() -> None:
                # Never wait long: a caller holding the lock may be waiting for the broker
                # to read, and the I/O thread must go on reading meanwhile. The writability
                # watch stays on while pika's buffer is not empty, so this runs again.
                wlock = transport._pika_rpc_wlock
                if wlock.acquire(timeout=io_wait):
                    try:
                        produce()
                    finally:
                        wlock.release()

            transport._produce = locked_produce
            transport._pika_rpc_wrapped = True
        # One lock per transport: every writer of this connection writes under it.
        transport.__dict__.setdefault('_pika_rpc_wlock', lock)
        return DirectSocket(sock, transport, transport._pika_rpc_wlock, frame_max)


class DirectSocket:
    """A plaintext connection's socket, its write lock and pika's write buffer size."""

    __slots__ = ('sock', 'lock', 'frame_max', '_buffered')

    def __init__(
        self, sock: socket.socket, transport: Any, lock: threading.Lock, frame_max: int
    ) -> None:
        self.sock, self.lock, self.frame_max = sock, lock, frame_max
        self._buffered = transport.get_write_buffer_size

    def pika_buffered(self) -> int:
        """Bytes pika still has to write (a direct write waits until it is 0)."""
        return self._buffered()


def _read_more_per_call(impl: Any) -> None:
    """Have pika's transport read ``READ_SIZE`` bytes per ``recv`` (its
    ``_MAX_RECV_BYTES``, 4 KB). Speed only: a transport without it reads as it does."""
    transport: Any = getattr(impl, '_transport', None)
    if (
        isinstance(getattr(transport, '_MAX_RECV_BYTES', None), int)
        and transport._MAX_RECV_BYTES < READ_SIZE
    ):
        transport._MAX_RECV_BYTES = READ_SIZE
    else:
        LOGGER.debug('pika transport %r: read size left as it is', transport)


def _take_frame_buffer(impl: Any) -> bytes:
    """Empty pika's input buffer (a partial frame at most) and return what it held.

    The buffer keeps its type and, when it is mutable, its identity: pika <= 1.4 rebinds
    a ``bytes`` buffer on every read; pika's main branch appends to a ``bytearray`` and
    empties it in place, and stops reading frames once the attribute is another object."""
    held = impl._frame_buffer
    data = bytes(held)
    if isinstance(held, bytearray):
        del held[:]
    else:
        impl._frame_buffer = held[:0]
    return data


# ------------------------------------------------------------------ the contract check


def check_pika(impl: Any = None) -> None:
    """Check that pika's internals are the ones named in this module's docstring.

    By what they are and do, not by pika's version:

    * ``Connection._on_data_available(data_in)`` reads every whole frame it is handed at
      once, counts them in ``bytes_received`` and leaves ``_frame_buffer`` empty, whether
      pika rebinds that buffer (pika <= 1.4) or empties it in place (pika's main branch);
      tried once per process on a connection object that never connects;
    * ``BlockingChannel`` keeps its ``pika.channel.Channel`` as ``_impl``; that channel has
      ``_set_cookie`` and ``confirm_delivery(ack_nack_callback, callback)``;
    * with ``impl`` (a live connection): ``_frame_buffer`` (bytes or bytearray) and
      ``bytes_received`` (an int), not inside its own frame loop. The transport's
      ``_sock``/``_produce`` and the connection's ``_body_max_length`` are not required:
      without them callers never write directly (slower, nothing lost).

    Raises ``PikaContractError`` naming what differs. Any thread; cheap after the first call.
    """
    _check_pika_classes(pika.connection.Connection._on_data_available)
    if impl is None:
        return
    problems = []
    if not callable(getattr(impl, '_on_data_available', None)):
        problems.append('the connection has no _on_data_available')
    if not isinstance(getattr(impl, '_frame_buffer', None), (bytes, bytearray)):
        problems.append(
            'its _frame_buffer is '
            f'{type(getattr(impl, "_frame_buffer", None)).__name__}, '
            'not bytes or bytearray'
        )
    if type(getattr(impl, 'bytes_received', None)) is not int:
        problems.append('its bytes_received is not an int')
    if getattr(impl, '_processing_frame_buffer', False):
        problems.append('it is inside its own frame loop')
    if problems:
        raise PikaContractError(_contract_message('; '.join(problems)))


def _contract_message(what: str) -> str:
    return (
        f'pika {getattr(pika, "__version__", "?")} does not work as pika_rpc expects '
        f"({what}); install a pika release within pika_rpc's requirement "
        f'(install_requires)'
    )


@functools.lru_cache(maxsize=None)
def _check_pika_classes(on_data_available: Any) -> None:
    # Cached by the frame reader's function: a pika patched later is checked again.
    params = list(inspect.signature(on_data_available).parameters)
    if len(params) != 2:
        raise PikaContractError(
            _contract_message(
                f'Connection._on_data_available takes {params[1:]}, not one data argument'
            )
        )
    if not callable(getattr(pika.channel.Channel, '_set_cookie', None)):
        raise PikaContractError(_contract_message('pika.channel.Channel has no _set_cookie'))
    confirm = list(inspect.signature(pika.channel.Channel.confirm_delivery).parameters)
    if confirm[1:3] != ['ack_nack_callback', 'callback']:
        raise PikaContractError(_contract_message(f'Channel.confirm_delivery takes {confirm[1:]}'))
    blocking_init = pika.adapters.blocking_connection.BlockingChannel.__init__
    if '_impl' not in blocking_init.__code__.co_names:
        raise PikaContractError(_contract_message('BlockingChannel keeps no _impl'))
    _check_reader_behaviour()


def _check_reader_behaviour() -> None:
    """Hand pika's reader whole frames, as the delivery reader does, on a connection that
    never connects; it must read them all at once, count their bytes and keep nothing."""
    heartbeat = pika.frame.Heartbeat().marshal()
    try:
        conn = pika.SelectConnection(
            pika.ConnectionParameters(), internal_connection_workflow=False
        )
    except Exception as exc:
        raise PikaContractError(
            _contract_message(f'a SelectConnection cannot be made without connecting: {exc!r}')
        ) from exc
    conn._heartbeat_checker = _HeartbeatSink()  # type: ignore[assignment]  # pika warns of heartbeats without
    try:
        conn._on_data_available(heartbeat[:3])  # pika holds a partial frame...
        held = _take_frame_buffer(conn)  # ...which the reader takes over
        if held != heartbeat[:3] or len(conn._frame_buffer):
            raise PikaContractError(
                _contract_message(f'_frame_buffer held {held!r} after a partial frame')
            )
        frames0, bytes0 = conn.frames_received, conn.bytes_received
        conn._on_data_available(heartbeat * 3)
        read, counted = conn.frames_received - frames0, conn.bytes_received - bytes0
        if (read, counted, len(conn._frame_buffer)) != (3, 3 * len(heartbeat), 0):
            raise PikaContractError(
                _contract_message(
                    f'of 3 whole frames handed to _on_data_available it read {read}, counted '
                    f'{counted} of {3 * len(heartbeat)} bytes in bytes_received and kept '
                    f'{len(conn._frame_buffer)} bytes'
                )
            )
    except PikaContractError:
        raise
    except Exception as exc:
        raise PikaContractError(_contract_message(f'its frame reader failed: {exc!r}')) from exc
    finally:
        try:
            conn.ioloop.close()
        except Exception:
            LOGGER.debug('closing the ioloop of the check connection failed', exc_info=True)


class _HeartbeatSink:
    """The heartbeat checker of the connection :func:`_check_reader_behaviour` makes."""

    def received(self) -> None:
        pass

    def stop(self) -> None:
        pass
