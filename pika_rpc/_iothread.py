"""The link: one I/O thread that owns the process's only pika ``BlockingConnection``.

Caller threads do not call pika. They hand *commands* to the I/O thread through our own
bounded queue (``handoff_max``) and wait on a per-command event with one deadline for the
whole call. ``add_callback_threadsafe`` is only the wake-up, sent once per batch behind a
"wake pending" flag, so many threads publishing at once cost few wake-ups (``stats()``
counts them). A command whose caller gave up before the I/O thread reached it is skipped.
The one exception is the hot path of publishing: on a plaintext connection a caller writes
its publication's frames to the socket itself when nothing is queued ahead of it
(``_confirms.Pipeline.publish_direct``); the I/O thread still reads and settles the confirm.

Channels of one connection:

* the *publish* channel, in confirm mode with pipelined confirms (``_confirms.Pipeline``):
  every publish is ``mandatory`` as asked and settles as confirmed, returned, nacked or
  lost; lost and nacked publications are re-published while their retry budget lasts;
* the *control* channel for declarations, deletes, binds and purges; a channel error
  (404, 406, 403) is raised to the caller as a typed error and the channel is reopened;
* one plain ``pika.channel.Channel`` per consumer (no ``BlockingChannel``), so
  ``prefetch_count`` is per consumer and one consumer's failure cannot stop another's
  deliveries. Its deliveries are parsed as they are read (``_deliveries.DeliveryReader``)
  and go to the consumer's ``on_delivery`` at once (which must only hand off).

The loop is ``process_data_events(None)``: it returns on a wake-up, a timer (a tick every
``POLL_INTERVAL``, a retry) or a channel event. Nothing in the loop blocks on a caller or
runs user code. Batch-acking consumers (the reply queue) are acked with ``multiple=True``
every ``ACK_EVERY`` deliveries and at every turn.

Reconnect (DESIGN §6.2): when the connection drops, the I/O thread reconnects under the
connection retry policy (``broker_connection_max_retries``, failover list in order),
reopens the channels, re-runs each consumer's declarations and re-subscribes it, and
re-publishes what was unconfirmed (at-least-once). If it gives up, every queued command
and unsettled publication fails with ``ConnectionLost`` and listeners hear ``gave_up``;
the next command starts a new connection cycle.

Every publication handed to the link is owned by exactly one structure until it settles:
the command queue (or the batch ``_drain_commands`` is running, which puts back what it did
not hand on, whatever is raised), the publish channel's ledger (``_confirms.Pipeline``),
``_delayed`` (a retry timer of the current connection) or ``_retry_later`` (re-published
after the reconnect). It moves from one to the next with nothing that can raise in between
(``take_unsettled`` -> ``_retry_or_fail``), so a failure at any point (the connection
dropping while the publish channel is reopened, the I/O thread dying) leaves each one where
the loss handling, ``_give_up`` or ``_shutdown`` settles it: confirmed, re-published under
its retry budget, or failed with a typed error. A caller's direct write that put its
publication on the ledger never queues it too.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

import pika
from pika.adapters.utils.connection_workflow import AMQPConnectorException
import pika.exceptions
import pika.spec

from . import _advice, _confirms, _deliveries
from ._commands import ConsumerSpec, Delivery, Publication, _Command  # noqa: F401 (re-exported)
from ._threads import SerialExecutor
from ._timeouts import deadline, remaining
from .errors import (BrokerRefused, ClosedError, ConnectionLost, PikaRPCError, refusal,
                     PublishError, TimeoutError)

LOGGER = logging.getLogger(__name__)

IDLE = 'IDLE'                  # no connection, none wanted yet (lazy start, or gave up)
CONNECTING = 'CONNECTING'
OPEN = 'OPEN'
RECONNECTING = 'RECONNECTING'
CLOSED = 'CLOSED'

#: The loop's tick: the longest one ``process_data_events`` lasts (commands end it early), so
#: this bounds how late the loop notices a closed channel, a stop or acks left to send.
POLL_INTERVAL = 0.2
# Batch-acking consumers (the reply queue) ack every ACK_EVERY deliveries, and at every loop
# turn (at least each POLL_INTERVAL): an ack is not written between a delivery and the
# waiter it wakes, and a burst costs one ack frame per ACK_EVERY messages.
ACK_EVERY = 256
# Slices in which the I/O thread runs the ioloop while it waits for a reply to its own
# request (Channel.OpenOk, Basic.ConsumeOk...): the latency such a step may add.
WAIT_SLICE = 0.002
# A queued publish that found a caller writing to the socket is tried again this much later.
BUSY_RETRY = 0.002

_CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError,
                      pika.exceptions.StreamLostError, ConnectionError, OSError, socket.error)
_CHANNEL_ERRORS = (pika.exceptions.ChannelClosed, pika.exceptions.ChannelWrongStateError)

_link_ids = itertools.count(1)

#: The counters ``Link.stats()`` always reports.
_COUNTERS = ('commands', 'wake_ups', 'publishes', 'direct_publishes', 'confirms',
             'republishes', 'ack_frames', 'reconnects', 'deliveries', 'ticks', 'write_busy')


def _basic_properties(props: dict) -> pika.spec.BasicProperties:
    return pika.spec.BasicProperties(**props)


def connection_parameters(opts: dict, name: str) -> pika.ConnectionParameters:
    """pika parameters for one broker address (``config.connection_options`` item)."""
    ssl_options = None
    ssl_conf = opts.get('ssl')
    if ssl_conf:
        conf = ssl_conf if isinstance(ssl_conf, dict) else {}
        context = ssl.create_default_context(cafile=conf.get('ca_certs'))
        if conf.get('certfile'):
            context.load_cert_chain(conf['certfile'], conf.get('keyfile'))
        cert_reqs = conf.get('cert_reqs', ssl.CERT_REQUIRED)
        if cert_reqs == ssl.CERT_NONE:
            context.check_hostname = False
        context.verify_mode = cert_reqs
        ssl_options = pika.SSLOptions(context, conf.get('server_hostname') or opts['host'])
    timeout = opts.get('connection_timeout')
    return pika.ConnectionParameters(
        host=opts['host'], port=opts['port'], virtual_host=opts['virtual_host'],
        credentials=pika.PlainCredentials(opts['userid'], opts['password']),
        heartbeat=opts.get('heartbeat'), socket_timeout=timeout, stack_timeout=timeout,
        blocked_connection_timeout=opts.get('blocked_connection_timeout'),
        connection_attempts=1, ssl_options=ssl_options,
        client_properties={'connection_name': name, 'product': 'pika_rpc'})


def translate_channel_error(exc: BaseException, what: str) -> BrokerRefused:
    """Turn a pika channel closure into our typed refusal (a 406 says how to fix it)."""
    code = getattr(exc, 'reply_code', None)
    text = getattr(exc, 'reply_text', str(exc))
    if code == 406:
        advice = _advice.precondition_advice(text) or (
            'An entity of that name already exists with other arguments (durable, auto_delete, '
            'exclusive, x-expires, ...): declare it with the same arguments, use another name, '
            'or delete it first')
        return refusal(code, f'{what}: 406 PRECONDITION_FAILED ({text}). {advice}.', text)
    return refusal(code, f'{what}: {code} {text}', text)


class Link:
    """The I/O thread and its connection. Every public method is thread-safe.

    Args:
        options: connection options per failover address (``config.connection_options``).
        handoff_max: bound of the command queue; a full queue blocks the caller until its
            deadline, then ``TimeoutError`` (``PublishError`` for a publish).
        max_connect_retries: reconnect attempts before giving up (None: forever).
        connect_interval: ``(start, step, max)`` seconds between connect attempts.
        direct_writes: let caller threads write publications to a plaintext connection's
            socket themselves (``publish``); False: every publication goes through the I/O
            thread. May be changed at any time.
    """

    def __init__(self, options: List[dict], *, handoff_max: int = 10000,
                 max_connect_retries: Optional[int] = 100,
                 connect_interval: tuple = (0.0, 0.5, 2.0),
                 callbacks: Optional[SerialExecutor] = None,
                 name: Optional[str] = None, direct_writes: bool = True) -> None:
        if not options:
            raise ValueError('no broker address given')
        self.id = next(_link_ids)
        self.name = name or f'pika-rpc-io-{os.getpid()}-{self.id}'
        self._options = list(options)
        self._params = [connection_parameters(o, self.name) for o in self._options]
        self._handoff_max = handoff_max
        self._max_connect_retries = max_connect_retries
        self._connect_interval = connect_interval
        self.callbacks = callbacks or SerialExecutor('pika-rpc-callbacks')
        self.pid = os.getpid()
        self.direct_writes = direct_writes

        # Hand-off: `_mutex` guards `_commands`, `_wake_pending` and `_state`.
        self._mutex = threading.Lock()
        # Notified when a command is queued or close() is called: the I/O thread waits on it
        # while there is no connection. Also notified when the queue shrinks (not_full).
        self._work = threading.Condition(self._mutex)
        self._not_full = threading.Condition(self._mutex)
        # Notified on every state change; wait_for_state() waits on it.
        self._state_changed = threading.Condition(self._mutex)
        self._commands: Deque[Any] = collections.deque()
        # Publications queued for the I/O thread and not yet handed to pika: while there are
        # any, callers do not write directly (one thread's publications keep their order).
        self._queued_pubs = 0
        self._wake_pending = False
        self._state = IDLE
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

        # I/O-thread-only state.
        self._conn: Any = None
        self._pub_ch: Any = None
        self._ctl_ch: Any = None
        self._pipeline: Optional[_confirms.Pipeline] = None
        self._consumers: Dict[int, ConsumerSpec] = {}
        self._acks: Dict[int, tuple] = {}          # id(spec) -> (spec, gen, highest tag)
        self._retry_later: List[Publication] = []  # lost with a connection: re-publish
        # Waiting out a retry interval on a call_later timer of the current connection;
        # moved to _retry_later when that connection (and so its timers) goes away.
        self._delayed: List[Publication] = []
        self._listeners: List[Callable[[str, Any], None]] = []
        self.address: Optional[str] = None

        # Declaration cache, per connection; read by callers (maybe_declare) under its lock.
        self._declared_lock = threading.Lock()
        self._declared: set = set()

        self.last_advice = ''          # what to do about last_error (pika_rpc._advice)
        self._stats = collections.Counter()
        self.last_error: Optional[str] = None
        self._gen = 0                  # connection generation, bumped at every connect
        self._gen_started = False      # True once a connection was ever open
        self._reconnect_wanted = False # lost a connection that consumers or retries need
        self._revive_wanted = False    # under _mutex: revive() asked for a new connection cycle
        self._ioloop: Any = None       # the connection's native ioloop (for 0-delay timers)
        self._reader: Optional[_deliveries.DeliveryReader] = None   # of the connection
        self._batch_end_pending = False
        self._unacked = 0              # batch-acked deliveries not acked yet

    # ------------------------------------------------------------------ callers' side
    def __repr__(self) -> str:
        return f'<Link {self.name} {self.state} {self.address or "not connected"}>'

    @property
    def state(self) -> str:
        return self._state

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def stats(self) -> dict:
        """Counters: commands, wake_ups, publishes, confirms, reconnects, deliveries...

        Every counter is present from the start (0 until it first moves)."""
        stats = dict.fromkeys(_COUNTERS, 0)
        stats.update(self._stats)
        stats.update(state=self._state, in_flight=self._pipeline.in_flight if self._pipeline else 0,
                     peak_in_flight=self._pipeline.peak_in_flight if self._pipeline else 0,
                     queued_commands=len(self._commands), last_error=self.last_error)
        return stats

    def add_listener(self, listener: Callable[[str, Any], None]) -> None:
        """``listener(event, info)`` runs on the I/O thread for 'connected', 'lost',
        'gave_up' and 'closed' (info: the error); it must be quick and must not block or call
        back into the link."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str, Any], None]) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def wait_for_state(self, *states: str, timeout: Optional[float] = None) -> bool:
        with self._state_changed:
            return self._state_changed.wait_for(lambda: self._state in states, timeout)

    def is_declared(self, key: Any) -> bool:
        with self._declared_lock:
            return key in self._declared

    def _enqueue(self, item: Any, dl: Optional[float]) -> bool:
        if self._stop.is_set():          # before the mutex: an abandoned link's may be held
            raise ClosedError(f'{self.name} is closed')
        with self._mutex:
            if self._stop.is_set():
                raise ClosedError(f'{self.name} is closed')
            while len(self._commands) >= self._handoff_max:
                if not self._not_full.wait(remaining(dl)) and len(self._commands) >= self._handoff_max:
                    return False
                if self._stop.is_set():
                    raise ClosedError(f'{self.name} is closed')
            self._commands.append(item)
            if isinstance(item, Publication):
                self._queued_pubs += 1
            self._stats['commands'] += 1
            wake = not self._wake_pending
            self._wake_pending = True
            if self._thread is None:
                self._start_thread()
            conn = self._conn if self._state == OPEN else None
            self._work.notify()
        if wake and conn is not None:
            self._stats['wake_ups'] += 1
            try:
                conn.add_callback_threadsafe(_noop)
            except Exception:  # the connection is being replaced; the loop drains anyway
                pass
        return True

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: Optional[float] = None,
             what: Optional[str] = None) -> Any:
        """Run ``fn(*args)`` on the I/O thread once the link is open; return its result.

        Blocks up to ``timeout`` for the whole call (queue space, connection, execution).

        Raises:
            TimeoutError: not done in time (a command not yet started is then skipped).
            ConnectionLost: the link gave up connecting; ClosedError: the link is closed.
            PikaRPCError: the broker refused (``PreconditionFailed`` for a 406).
        """
        dl = deadline(timeout)
        what = what or getattr(fn, '__name__', 'command')
        cmd = _Command(fn, args, what)
        if not self._enqueue(cmd, dl):
            raise TimeoutError(f'{what}: hand-off queue still full after {timeout} s')
        if not cmd.done.wait(remaining(dl)):
            cmd.cancelled = True
            raise TimeoutError(f'{what} not done within {_seconds(timeout)} s{self._why_not_open()}')
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    def _why_not_open(self) -> str:
        """For a timeout message: why the link is not open, and what to do about it."""
        if self._state == OPEN:
            return ''
        why = f' (link {self._state}'
        if self.last_error and self._state in (CONNECTING, RECONNECTING, IDLE):
            why += f'; the broker cannot be reached: {self.last_error}'
            if self.last_advice:
                why += f'. {self.last_advice}'
        return why + ')'

    def publish(self, pub: Publication) -> Publication:
        """Publish ``pub`` with confirms; returns at once (not settled: wait on ``pub``).

        On an open plaintext connection the calling thread writes the message to the socket
        itself (``_confirms.Pipeline.publish_direct``); otherwise, or when that path is busy,
        it is queued for the I/O thread. Either way the I/O thread settles it.

        Raises:
            PublishError: the hand-off queue stayed full until the publication's deadline.
            ClosedError: the link is closed.
        """
        pipeline = self._pipeline
        if self.direct_writes and pipeline is not None and self._state == OPEN \
                and not self._stop.is_set() \
                and not pub.cancelled and self._publish_direct(pipeline, pub):
            return pub
        if not self._enqueue(pub, pub.deadline):
            raise PublishError(f'publish to {pub.routing_key!r}: hand-off queue full until deadline')
        return pub

    def _publish_direct(self, pipeline: _confirms.Pipeline, pub: Publication) -> bool:
        if not pipeline.takes_direct(pub) or self._queued_pubs:
            return False
        try:
            props = _basic_properties(pub.properties)
        except Exception:          # the I/O thread reports it as a PublishError
            return False
        if pub.deadline is not None and time.monotonic() >= pub.deadline:
            return False
        pub.attempts += 1
        pub.gen = self._gen
        try:
            # True once the ledger holds it, whatever became of the write: never queue it
            # then, or it is sent twice (the loss handling re-publishes it).
            sent = pipeline.publish_direct(pub, props, self._has_queued_pubs)
        except Exception:          # pika cannot marshal it (not on the ledger): the I/O
            sent = False           # thread reports it
        if not sent:
            pub.attempts -= 1
            return False
        self._stats['publishes'] += 1
        self._stats['direct_publishes'] += 1
        return True

    def _has_queued_pubs(self) -> bool:
        return self._queued_pubs > 0

    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """Stop the I/O thread and close the connection. Idempotent, bounded by ``timeout``.

        Queued commands and unsettled publications fail with ``ClosedError``. Returns
        True when the thread ended in time (False: it was abandoned, logged).
        """
        with self._mutex:
            if self._stop.is_set():
                thread = None
            else:
                self._stop.set()
                thread = self._thread
                conn = self._conn
                self._work.notify_all()
                self._not_full.notify_all()
        if thread is None:
            self._set_state(CLOSED)
            self._fail_queued(ClosedError(f'{self.name} closed'))
            return True
        if conn is not None:
            try:
                conn.add_callback_threadsafe(_noop)
            except Exception:
                pass
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                LOGGER.warning('%s still running %s s after close(); abandoning it', self.name, timeout)
                return False
        return True

    def revive(self) -> bool:
        """Start a new connection cycle if the link is idle (it gave up, or never started).

        The I/O thread then connects under the retry policy as it does for a new command, and
        listeners hear 'connected' or 'gave_up'. Never blocks; any thread. Returns True when
        a cycle was asked for, False when the link is connecting, open or closed.
        """
        with self._mutex:
            if self._stop.is_set() or self._state != IDLE:
                return False
            self._revive_wanted = True
            if self._thread is None:
                self._start_thread()
            self._work.notify()
            return True

    def abandon(self) -> None:
        """Forget this link without any I/O (a forked child's inherited link).

        A new, set stop flag: the parent's Event may have been mid-use by a thread gone here."""
        self._stop = threading.Event()
        self._stop.set()

    # ------------------------------------------------------------------ I/O thread
    def _set_state(self, new: str) -> None:
        with self._state_changed:
            if self._state != new:
                LOGGER.debug('%s: %s -> %s', self.name, self._state, new)
                self._state = new
                self._state_changed.notify_all()

    def _notify(self, event: str, info: Any = None) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, info)
            except Exception:
                LOGGER.exception('link listener %r failed on %s', listener, event)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._conn is None:
                    with self._mutex:
                        while not self._commands and not self._retry_later and not self._stop.is_set() \
                                and not self._wants_connection():
                            self._work.wait()
                        self._revive_wanted = False     # this cycle answers it
                    if self._stop.is_set():
                        break
                    if not self._connect():
                        continue
                try:
                    self._turn()
                except _CONNECTION_ERRORS as exc:
                    self._on_connection_lost(exc)
                except _CHANNEL_ERRORS as exc:
                    # A channel of ours closed under us outside a command: rebuild everything.
                    self._on_connection_lost(exc)
        except Exception as exc:
            LOGGER.critical('%s died', self.name, exc_info=True)
            self.last_error = f'I/O thread died: {type(exc).__name__}: {exc}'
            self._stop.set()          # later calls raise ClosedError instead of timing out
        finally:
            self._shutdown()

    def _wants_connection(self) -> bool:
        return self._reconnect_wanted or self._revive_wanted

    def _turn(self) -> None:
        self._drain_commands()
        # Returns on a wake-up (a command), a timer (the tick, a retry) or an event of a
        # BlockingChannel (control, publish). Deliveries and confirms do not end it: they
        # are handled as they are read.
        self._conn.process_data_events(time_limit=None)
        self._drain_commands()
        self._flush_acks()
        self._check_channels()

    def _drain_commands(self) -> None:
        """Run the queued commands and publish the queued publications, in order.

        The batch taken off the queue is this function's until each item is run or handed
        on: whatever an item raises, what was not run goes back to the front of the queue
        (the item too, unless pika or a settle took it) before the exception leaves."""
        with self._mutex:
            self._wake_pending = False
            if not self._commands:
                return
            batch = list(self._commands)
            self._commands.clear()
            self._not_full.notify_all()
        ran = 0             # items of the batch run so far
        handed = 0          # publications among them: no longer queued (pika has them...)
        try:
            for item in batch:
                if isinstance(item, Publication):
                    self._do_publish(item)
                    handed += 1
                else:
                    self._do_command(item)
                ran += 1
        except _confirms.WriteBusy:
            # A caller is finishing a frame on the socket: this and the rest of the batch go
            # back to the front, and the loop comes back shortly.
            self._put_back(batch[ran:])
            self._stats['write_busy'] += 1
            self._conn.call_later(BUSY_RETRY, _noop)
        except BaseException:
            # A lost connection or channel (the rest runs after the reconnect), or a bug.
            item, rest = batch[ran], batch[ran + 1:]
            if isinstance(item, Publication) and (item.done.is_set() or self._in_ledger(item)):
                handed += 1                  # settled, or the ledger's (the loss re-sends it)
            else:
                rest.insert(0, item)         # never handed to pika: not a retry
            self._put_back(rest)
            raise
        finally:
            if handed:
                # Only now: until pika holds them, callers must not write around them.
                with self._mutex:
                    self._queued_pubs = max(0, self._queued_pubs - handed)

    def _put_back(self, items: List[Any]) -> None:
        """Return items taken off the queue, unrun, to its front (they stay counted)."""
        if items:
            with self._mutex:
                self._commands.extendleft(reversed(items))

    def _in_ledger(self, pub: Publication) -> bool:
        return self._pipeline is not None and self._pipeline.holds(pub)

    def _do_command(self, cmd: _Command) -> None:
        if cmd.cancelled:
            return
        try:
            result = cmd.fn(*cmd.args)
        except _CONNECTION_ERRORS:
            raise
        except pika.exceptions.ChannelClosed as exc:
            self._reopen_control()
            cmd.finish(error=translate_channel_error(exc, cmd.what))
        except PikaRPCError as exc:
            cmd.finish(error=exc)
        except Exception as exc:  # a bug or bad argument: report it, keep the thread alive
            cmd.finish(error=exc)
        else:
            cmd.finish(result)

    def _do_publish(self, pub: Publication) -> None:
        if pub.cancelled or pub.done.is_set():
            return
        self._ensure_publish_channel()
        if pub.deadline is not None and time.monotonic() >= pub.deadline:
            pub._finish(PublishError(f'publish to {pub.routing_key!r} not sent within its timeout'))
            return
        try:
            self._pipeline.publish(pub, pub.exchange, pub.routing_key, pub.body,
                                   _basic_properties(pub.properties), pub.mandatory)
        except (_confirms.WriteBusy,) + _CONNECTION_ERRORS + _CHANNEL_ERRORS:
            raise
        except Exception as exc:  # pika cannot encode it (a float header, priority > 255...)
            pub._finish(PublishError(f'cannot publish to {pub.routing_key!r}: '
                                     f'{type(exc).__name__}: {exc}'))
        else:                     # no confirm can be read before the loop polls again
            pub.attempts += 1
            pub.gen = self._gen
            self._stats['publishes'] += 1

    def _on_settled(self, pub: Publication, outcome: str, returned: Optional[tuple]) -> None:
        self._stats['confirms'] += 1
        if outcome == _confirms.SETTLED_NACK:
            self._retry_or_fail(pub, PublishError(f'broker nacked the publish to {pub.routing_key!r}'))
            return
        pub.returned = returned
        pub._finish(None)

    def _retry_or_fail(self, pub: Publication, exc: PikaRPCError) -> None:
        """A publication failed (nack, lost channel or connection): re-publish it within its
        budget, else fail it. ``pub`` has exactly one owner when this returns: settled, the
        command queue, ``_delayed`` (a retry timer of this connection) or ``_retry_later``
        (re-published after the reconnect). Does not raise: callers hand on lists of them."""
        if pub.cancelled:
            pub._finish(exc)
            return
        out_of_time = pub.deadline is not None and time.monotonic() + pub.interval >= pub.deadline
        if (pub.max_retries is not None and pub.attempts > pub.max_retries) or out_of_time:
            why = 'its deadline passed' if out_of_time else f'{pub.attempts} attempt(s)'
            pub._finish(PublishError(f'{exc} (gave up after {why})'))
            return
        interval = pub.interval
        pub.interval = min(pub.interval + pub.interval_step, pub.interval_max)
        self._stats['republishes'] += 1
        if self._conn is None or not self._conn.is_open:
            self._retry_later.append(pub)      # re-published by _open() after the reconnect
        elif interval > 0:
            self._delayed.append(pub)          # moved to _retry_later if the connection goes
            self._conn.call_later(interval, lambda: self._requeue(pub))
        else:
            self._queue_again(pub)
        if pub.errback is not None:
            try:
                self.callbacks.submit(pub.errback, exc, interval)
            except Exception:     # no thread for it: the retry goes on all the same
                LOGGER.exception('%s: cannot run the errback of a publish to %r', self.name,
                                 pub.routing_key)

    def _requeue(self, pub: Publication) -> None:
        try:
            self._delayed.remove(pub)
        except ValueError:                     # its connection went away: in _retry_later now
            return
        self._queue_again(pub)

    def _queue_again(self, pub: Publication) -> None:
        """Queue a publication to re-publish (I/O thread: no wake-up needed; the loop drains
        the queue every turn). Callers' own writes wait behind it."""
        with self._mutex:
            self._commands.append(pub)
            self._queued_pubs += 1

    def _end_batch(self) -> None:
        # An ioloop timer (delay 0): runs once the frames of this read are processed.
        self._batch_end_pending = False
        self._flush_acks()

    def _flush_acks(self) -> None:
        """One ``multiple=True`` ack per batch-acking consumer for what it received so far.
        Buffered on the channel's impl: written by the ioloop's next poll (no flush here, so
        this may run inside an ioloop callback)."""
        if not self._acks:
            return
        acks = list(self._acks.values())
        self._acks.clear()
        self._unacked = 0
        for spec, gen, tag in acks:
            if spec.gen == gen and spec.channel is not None and spec.channel.is_open:
                spec.channel.impl.basic_ack(tag, multiple=True)
                self._stats['ack_frames'] += 1

    def _ensure_publish_channel(self) -> None:
        """Reopen the publish channel when the broker closed it (a publish to a missing or
        forbidden exchange), without dropping the connection: the publications the broker's
        reason names fail at once (never retried, DESIGN 6.11), the others it discarded are
        re-published under their retry budget. Any other closure is a lost connection."""
        if self._pub_ch is None or self._pub_ch.is_open:
            return
        reason = self._pipeline.closed_reason if self._pipeline is not None else None
        if not isinstance(reason, pika.exceptions.ChannelClosedByBroker) or not self._conn.is_open:
            raise pika.exceptions.ChannelClosed(0, 'publish channel closed')
        code, text = reason.reply_code, reason.reply_text
        LOGGER.warning('%s: the broker closed the publish channel (%s %s); reopening it',
                       self.name, code, text)
        # Each goes to its next owner before the reopen, which may fail with the connection.
        for pub in self._pipeline.take_unsettled():
            if pub.exchange and f"exchange '{pub.exchange}'" in text:
                pub._finish(PublishError(f'publish to exchange {pub.exchange!r} refused: {code} {text}'))
            else:
                self._retry_or_fail(pub, PublishError(
                    f'publish to {pub.routing_key!r} discarded: the broker closed the channel '
                    f'({code} {text})'))
        self._open_publish_channel()

    def _check_channels(self) -> None:
        self._ensure_publish_channel()
        for spec in list(self._consumers.values()):
            if spec.active and (spec.channel is None or not spec.channel.is_open):
                LOGGER.warning('%s: consumer channel for %r closed; re-subscribing', self.name, spec.queue)
                try:
                    self._subscribe(spec)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    spec.active = False
                    self._consumers.pop(id(spec), None)
                    LOGGER.error('%s: consumer of %r stopped: %s', self.name, spec.queue,
                                 translate_channel_error(exc, 'consume'))

    # ---------------------------------------------------------------- connecting
    def _connect(self) -> bool:
        """Connect under the retry policy. True when open; False after giving up."""
        reconnect = self._gen_started
        self._set_state(RECONNECTING if reconnect else CONNECTING)
        start, step, top = self._connect_interval
        interval, errors = start, []
        began = time.monotonic()
        for attempt in itertools.count(1):
            if self._stop.is_set():
                return False
            try:
                self._open()
                break
            # pika 1.4 may raise a bare ValueError ("Expected connected socket") when the
            # peer resets right after accepting: that is a failed connect too.
            # A handshake that times out raises pika's AMQPConnectorException (not an AMQPError).
            except (_CONNECTION_ERRORS + (pika.exceptions.AMQPError, ValueError,
                                          AMQPConnectorException)) as exc:
                errors.append(_advice.describe(exc))
                self.last_error = errors[-1]
                self.last_advice = _advice.connect_advice(exc, self._options)
                self._drop_connection()
                # Wrong credentials, vhost or certificate: retrying cannot help.
                if isinstance(exc, (pika.exceptions.ProbableAuthenticationError,
                                    pika.exceptions.ProbableAccessDeniedError,
                                    ssl.SSLCertVerificationError)) or (
                        self._max_connect_retries is not None and attempt > self._max_connect_retries):
                    self._give_up(attempt, time.monotonic() - began, errors[-1])
                    return False
                LOGGER.warning('%s: cannot connect to %s (%s); retry %d in %.1f s', self.name,
                               self._addresses(), errors[-1], attempt, interval)
                if self._stop.wait(interval):
                    return False
                interval = min(interval + step, start + top)
        self._gen_started = True
        self._reconnect_wanted = False
        if reconnect:
            self._stats['reconnects'] += 1
        self._set_state(OPEN)
        self._notify('connected', reconnect)
        return True

    def _addresses(self) -> str:
        return ', '.join(f'{p.host}:{p.port} (vhost {p.virtual_host!r})' for p in self._params)

    def _open(self) -> None:
        self._conn = pika.BlockingConnection(self._params)
        self._gen += 1
        self._ioloop = self._conn._impl.ioloop
        self._reader = _deliveries.DeliveryReader(self._conn._impl)
        self._batch_end_pending = False
        params = self._conn._impl.params
        self.address = f'{params.host}:{params.port}'
        with self._declared_lock:
            self._declared.clear()
        self._ctl_ch = self._conn.channel()
        self._open_publish_channel()
        for spec in list(self._consumers.values()):
            if spec.active:
                try:
                    self._subscribe(spec)
                except pika.exceptions.ChannelClosed as exc:
                    spec.active = False
                    LOGGER.error('%s: cannot re-subscribe to %r: %s', self.name, spec.queue,
                                 translate_channel_error(exc, 'consume'))
        self._conn.call_later(POLL_INTERVAL, self._on_tick)
        # Lost with the last connection: first in line now (callers' own writes wait for them).
        retry = [pub for pub in self._retry_later if not pub.done.is_set()]
        self._retry_later = []
        if retry:
            with self._mutex:
                self._commands.extendleft(reversed(retry))
                self._queued_pubs += len(retry)
        LOGGER.info('%s: connected to %s', self.name, self.address)

    def _on_tick(self) -> None:
        # A timer of this connection: ends the current process_data_events, so the loop
        # checks its channels and the stop flag at least every POLL_INTERVAL.
        self._stats['ticks'] += 1
        if self._conn is not None and self._conn.is_open:
            self._conn.call_later(POLL_INTERVAL, self._on_tick)

    def _open_publish_channel(self) -> None:
        self._pub_ch = self._conn.channel()
        self._pipeline = _confirms.Pipeline(self._pub_ch, self._on_settled)
        ready = self._pipeline.start(self._conn, self._reader)
        self._wait_until(ready, 30.0, 'Confirm.SelectOk')

    def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Run the ioloop until ``predicate()`` (set by a callback of a plain pika channel,
        which does not end ``process_data_events``: hence the short slices)."""
        dl = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= dl:
                raise pika.exceptions.AMQPConnectionError(f'no {what} within {timeout} s')
            self._conn.process_data_events(time_limit=WAIT_SLICE)

    def _reopen_control(self) -> None:
        try:
            if self._ctl_ch is not None and self._ctl_ch.is_open:
                return
            self._ctl_ch = self._conn.channel()
        except _CONNECTION_ERRORS:
            raise

    def _on_connection_lost(self, exc: BaseException) -> None:
        self.last_error = f'{type(exc).__name__}: {exc}'
        LOGGER.warning('%s: connection lost (%s); reconnecting', self.name, self.last_error)
        self._drop_connection()        # what was unconfirmed is re-published after the reconnect
        self._reconnect_wanted = True
        self._notify('lost', self.last_error)

    def _reclaim_ledger(self) -> None:
        """Retire the publish channel's ledger (no caller registers on it any more) and hand
        every unconfirmed publication to the retry policy: re-published after the reconnect,
        or failed. Called with the connection gone (``_conn`` None)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        for pub in pipeline.take_unsettled():
            self._retry_or_fail(pub, PublishError(f'connection lost before the broker confirmed '
                                                  f'the publish to {pub.routing_key!r}'))

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._reclaim_ledger()
        self._pub_ch = self._ctl_ch = None
        self._acks.clear()
        for spec in self._consumers.values():
            spec.channel = None
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass
        # The timers of that connection never fire now: re-publish those after the reconnect.
        delayed, self._delayed = self._delayed, []
        self._retry_later.extend(delayed)

    def _give_up(self, attempts: int, elapsed: float, last: str) -> None:
        advice = f'. {self.last_advice}' if self.last_advice else ''
        err = ConnectionLost(f'cannot connect to {self._addresses()} after {attempts} attempt(s) '
                             f'in {elapsed:.1f} s; last error: {last}{advice}')
        LOGGER.error('%s', err)
        self._set_state(IDLE)
        self._fail_queued(err)
        retry, self._retry_later = self._retry_later, []
        for pub in retry:
            pub._finish(err)
        self._reconnect_wanted = False   # consumers stay registered; the next command reconnects
        self._notify('gave_up', err)

    def _fail_queued(self, err: BaseException) -> None:
        with self._mutex:
            batch = list(self._commands)
            self._commands.clear()
            self._queued_pubs = 0
            self._wake_pending = False
            self._not_full.notify_all()
        for item in batch:
            if isinstance(item, Publication):
                item._finish(err)
            else:
                item.finish(error=err)

    def _shutdown(self) -> None:
        died = self.last_error if (self.last_error or '').startswith('I/O thread died') else None
        err = ClosedError(f'{self.name} closed' + (f' ({died})' if died else ''))
        # Every publication not settled, wherever it is, fails with err: taken here first.
        pipeline, self._pipeline = self._pipeline, None
        owned = pipeline.take_unsettled() if pipeline is not None else []
        owned += self._retry_later + self._delayed
        self._retry_later, self._delayed = [], []
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    LOGGER.debug('%s: error while closing the connection', self.name, exc_info=True)
            self._set_state(CLOSED)
        finally:
            self._fail_queued(err)
            for pub in owned:
                pub._finish(err)
            self._notify('closed', err)   # the users' waiters wake with this error

    # ------------------------------------------------------------------ commands (I/O thread)
    def _subscribe(self, spec: ConsumerSpec) -> None:
        if spec.subscribed_once and spec.check_exists and not spec.cancelled_by_broker \
                and not self._queue_exists(spec.queue):
            LOGGER.warning('%s: queue %r vanished while we were away', self.name, spec.queue)
            if spec.on_missing is not None:
                spec.on_missing()
        if spec.declarations:
            self._reopen_control()
            try:
                for kind, kwargs in spec.declarations:
                    _DECLARE[kind](self._ctl_ch, **kwargs)
            except pika.exceptions.ChannelClosed:
                self._reopen_control()
                raise
        channel = self._open_consumer_channel()
        if spec.prefetch_count:
            # One consumer per channel: global (per-channel) QoS also reaches a running consumer.
            self._impl_sync(channel, lambda done: channel.impl.basic_qos(
                prefetch_count=spec.prefetch_count, global_qos=True, callback=done), 'Basic.QosOk')
        spec.gen += 1
        gen = spec.gen
        stats, acks, batch_ack = self._stats, self._acks, spec.batch_ack

        # Runs as the frames are read, not later through BlockingChannel's event queue (the
        # waiters wake sooner; no loop turn per batch).
        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            stats['deliveries'] += 1
            try:
                spec.on_delivery(Delivery(spec, gen, method, properties, body))
            except Exception:
                # Never into pika (it would drop the connection, and the redelivered message
                # would raise again): log it and settle the message so it cannot loop.
                settled = 'acknowledged' if batch_ack or spec.no_ack else 'rejected (not requeued)'
                LOGGER.exception('%s: the consumer of %r failed on delivery %s (correlation_id '
                                 '%s); the message is %s', self.name, spec.queue,
                                 method.delivery_tag, properties.correlation_id, settled)
                if not batch_ack and not spec.no_ack:
                    _ch.basic_reject(method.delivery_tag, requeue=False)
            if batch_ack:
                acks[id(spec)] = (spec, gen, method.delivery_tag)
                self._unacked += 1
                if self._unacked >= ACK_EVERY and not self._batch_end_pending:
                    self._batch_end_pending = True
                    self._ioloop.call_later(0, self._end_batch)

        impl = channel.impl
        impl.add_on_cancel_callback(lambda _frame: self._on_broker_cancel(spec))
        # Live before Basic.Consume: queued messages follow the ConsumeOk at once, and are
        # handed on (and acked by their owner) while _impl_sync still runs the ioloop.
        was_active, spec.channel, spec.active = spec.active, channel, True
        tag: List[str] = []
        try:
            self._impl_sync(channel, lambda done: tag.append(impl.basic_consume(
                spec.queue, on_message, auto_ack=spec.no_ack, exclusive=spec.exclusive,
                consumer_tag=spec.consumer_tag, arguments=spec.arguments, callback=done)),
                'Basic.ConsumeOk')
        except BaseException:
            spec.active = was_active
            raise
        spec.consumer_tag = tag[0]
        # From now on the reader hands this channel's deliveries to on_message; any that
        # came with the ConsumeOk went through pika to the same callback, in order.
        self._reader.register(impl, on_message)
        spec.subscribed_once = True
        spec.cancelled_by_broker = False
        self._consumers[id(spec)] = spec

    def _open_consumer_channel(self) -> '_ConsumerChannel':
        """A plain ``pika.channel.Channel`` of the connection (no BlockingChannel around it:
        its consumers' callbacks run as frames arrive, and a broker's Basic.Cancel is ours)."""
        opened: List[Any] = []
        channel = _ConsumerChannel(self._conn._impl.channel(on_open_callback=opened.append),
                                   self._reader)
        self._wait_until(lambda: opened or channel.closed_reason is not None, 30.0, 'Channel.OpenOk')
        if not opened:
            raise channel.error()
        return channel

    def _impl_sync(self, channel: '_ConsumerChannel', start: Callable[[Callable], Any],
                   what: str) -> Any:
        """Start an asynchronous method on ``channel``, ``start(callback)``; run the ioloop
        until its reply (returned) or the channel closes (raises ``ChannelClosed``)."""
        replies: List[Any] = []
        start(replies.append)
        self._wait_until(lambda: replies or channel.closed_reason is not None, 30.0, what)
        if not replies:
            raise channel.error()
        return replies[0]

    def _on_broker_cancel(self, spec: ConsumerSpec) -> None:
        LOGGER.warning('%s: broker cancelled the consumer of %r (queue deleted?)', self.name, spec.queue)
        with self._declared_lock:
            self._declared.clear()
        if spec.on_cancel is not None:
            spec.on_cancel()
        spec.cancelled_by_broker = True
        old = spec.channel
        spec.channel = None          # _check_channels re-subscribes at the end of this turn
        spec.consumer_tag = None
        if old is not None:
            _close_quietly(old)

    def _queue_exists(self, name: str) -> bool:
        channel = self._conn.channel()
        try:
            channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            raise
        _close_quietly(channel)
        return True

    def consume(self, spec: ConsumerSpec, timeout: Optional[float] = None) -> str:
        """Subscribe ``spec`` (declarations first); kept across reconnects. Returns the tag."""
        return self.call(self._consume, spec, timeout=timeout, what=f'consume from {spec.queue!r}')

    def _consume(self, spec: ConsumerSpec) -> str:
        try:
            self._subscribe(spec)
        except pika.exceptions.ChannelClosed as exc:
            self._consumers.pop(id(spec), None)
            spec.active = False
            raise translate_channel_error(exc, f'consume from {spec.queue!r}') from None
        return spec.consumer_tag

    def cancel(self, spec: ConsumerSpec, timeout: Optional[float] = None) -> None:
        """Stop ``spec``; unacked deliveries go back to the queue (its channel closes)."""
        if self._thread is None or self._stop.is_set():
            spec.active = False
            return
        self.call(self._cancel, spec, timeout=timeout, what=f'cancel consumer of {spec.queue!r}')

    def _cancel(self, spec: ConsumerSpec) -> None:
        spec.active = False
        self._consumers.pop(id(spec), None)
        pending = self._acks.pop(id(spec), None)
        channel, spec.channel = spec.channel, None
        if channel is not None and channel.is_open:
            if pending is not None and pending[1] == spec.gen:
                # Handed to the owner already: ack them, or closing would requeue them.
                channel.impl.basic_ack(pending[2], multiple=True)
            # Closing the channel cancels the consumer; unacked deliveries are requeued by the
            # time Channel.CloseOk arrives, which cancel() waits for.
            _close_quietly(channel)
            self._wait_until(lambda: channel.impl.is_closed, 30.0, 'Channel.CloseOk')
        spec.gen += 1

    def ack(self, spec: ConsumerSpec, gen: int, tag: int, multiple: bool = False,
            reject: bool = False, requeue: bool = True, timeout: Optional[float] = 10.0,
            wait: bool = True) -> bool:
        """Ack (or reject) a delivery; False when its channel is gone (it will be redelivered).

        With ``wait=False`` the ack is queued and True returned at once (no round trip to the
        I/O thread; a lost channel makes the broker redeliver, which is what False would say).
        """
        if not wait:
            if not self._enqueue(_Command(self._ack, (spec, gen, tag, multiple, reject, requeue),
                                          'ack'), deadline(timeout)):
                raise TimeoutError(f'ack: hand-off queue still full after {timeout} s')
            return True
        return self.call(self._ack, spec, gen, tag, multiple, reject, requeue, timeout=timeout,
                         what='ack')

    def _ack(self, spec: ConsumerSpec, gen: int, tag: int, multiple: bool, reject: bool,
             requeue: bool) -> bool:
        if spec.gen != gen or spec.channel is None or not spec.channel.is_open:
            return False
        if reject:
            spec.channel.impl.basic_reject(tag, requeue=requeue)
        else:
            spec.channel.impl.basic_ack(tag, multiple=multiple)
        return True

    def qos(self, spec: ConsumerSpec, prefetch_count: int, timeout: Optional[float] = 10.0) -> None:
        spec.prefetch_count = prefetch_count

        def qos() -> None:
            channel = spec.channel
            if channel is not None:
                self._impl_sync(channel, lambda done: channel.impl.basic_qos(
                    prefetch_count=prefetch_count, global_qos=True, callback=done), 'Basic.QosOk')
        self.call(qos, timeout=timeout, what='qos')

    def recover(self, spec: ConsumerSpec, timeout: Optional[float] = 10.0) -> None:
        def recover() -> None:
            channel = spec.channel
            if channel is not None:
                self._impl_sync(channel, lambda done: channel.impl.basic_recover(
                    requeue=True, callback=done), 'Basic.RecoverOk')
        self.call(recover, timeout=timeout, what='recover')

    def control(self, kind: str, timeout: Optional[float] = None, cache_key: Any = None,
                **kwargs: Any) -> Any:
        """Run a declaration-like command on the control channel (declare_queue,
        declare_exchange, bind_queue, unbind_queue, bind_exchange, unbind_exchange,
        delete_queue, delete_exchange, purge_queue). With ``cache_key``, the result is
        remembered for this connection (``is_declared``)."""
        return self.call(self._control, kind, kwargs, cache_key, timeout=timeout,
                         what=f'{kind} {kwargs.get("queue") or kwargs.get("exchange") or ""}'.strip())

    def _control(self, kind: str, kwargs: dict, cache_key: Any) -> Any:
        self._reopen_control()
        result = _DECLARE[kind](self._ctl_ch, **kwargs)
        if cache_key is not None:
            with self._declared_lock:
                self._declared.add(cache_key)
        if kind == 'declare_queue':
            return result.method.message_count if result is not None else None
        if kind == 'purge_queue':
            return result.method.message_count if result is not None else 0
        return None

    def forget_declared(self, key: Any) -> None:
        with self._declared_lock:
            self._declared.discard(key)


def _seconds(value: Optional[float]) -> str:
    return 'no' if value is None else f'{value:.3g}'


def _noop() -> None:
    pass


class _ConsumerChannel:
    """A consumer's ``pika.channel.Channel`` and why it closed. I/O thread only.

    It is also the channel's *cookie*, the object ``BlockingConnection.close()`` expects to
    find on every channel of its connection (``is_open``, ``close(code, text)``)."""

    __slots__ = ('impl', 'closed_reason', 'reader')

    def __init__(self, impl: Any, reader: Optional[_deliveries.DeliveryReader]) -> None:
        self.impl = impl
        self.closed_reason: Optional[BaseException] = None
        self.reader = reader          # reads its deliveries once registered there
        impl.add_on_close_callback(self._on_close)
        impl._set_cookie(self)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed_reason = reason
        if self.reader is not None:
            self.reader.unregister(self.impl)

    @property
    def is_open(self) -> bool:
        return self.impl.is_open

    def close(self, reply_code: int = 200, reply_text: str = 'Normal shutdown') -> None:
        if self.impl.is_open:
            self.impl.close(reply_code, reply_text)

    def error(self) -> pika.exceptions.ChannelClosed:
        reason = self.closed_reason
        if isinstance(reason, pika.exceptions.ChannelClosed):
            return reason
        return pika.exceptions.ChannelClosed(0, f'channel closed: {reason}')


def _close_quietly(channel: Any) -> None:
    try:
        if channel.is_open:
            channel.close()
    except Exception:
        pass


_DECLARE: Dict[str, Callable[..., Any]] = {
    'declare_queue': lambda ch, **kw: ch.queue_declare(**kw),
    'declare_exchange': lambda ch, **kw: ch.exchange_declare(**kw),
    'bind_queue': lambda ch, **kw: ch.queue_bind(**kw),
    'unbind_queue': lambda ch, **kw: ch.queue_unbind(**kw),
    'bind_exchange': lambda ch, **kw: ch.exchange_bind(**kw),
    'unbind_exchange': lambda ch, **kw: ch.exchange_unbind(**kw),
    'delete_queue': lambda ch, **kw: ch.queue_delete(**kw),
    'delete_exchange': lambda ch, **kw: ch.exchange_delete(**kw),
    'purge_queue': lambda ch, **kw: ch.queue_purge(**kw),
}
