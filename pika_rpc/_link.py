"""The link: one I/O thread that owns the process's only pika ``BlockingConnection``.

Caller threads do not call pika. They hand *commands* to the I/O thread through the bounded
hand-off queue (``_handoff.HandOff``) and wait on a per-command event with one deadline for
the whole call; a command whose caller gave up before the I/O thread reached it is skipped.
The one exception is the hot path of publishing: on a plaintext connection a caller writes
its publication's frames to the socket itself when nothing is queued ahead of it
(``_confirms.Pipeline.publish_direct``); the I/O thread still reads and settles the confirm.

Channels of one connection: the *publish* channel with pipelined confirms (``_outbox``),
the *control* channel for declarations (``_declarations``), and one plain channel per
consumer (``_consumers``; their caller-side commands, ``_consumer_commands``, are mixed in
here).

The loop is ``process_data_events(None)``: it returns on a wake-up, a timer (a tick every
``POLL_INTERVAL``, a retry) or a channel event. Nothing in the loop blocks on a caller or
runs user code.

Reconnect: the I/O thread reconnects by itself (idle waiters depend on it) under the
connection retry policy (``_connector``: the failover list, kombu's intervals, capped at
their ``interval_max``; ``broker_connection_max_retries``), reopens
the channels, re-runs each consumer's declarations and re-subscribes it, and re-publishes
what was unconfirmed (at-least-once). If it gives up, every queued command and unsettled
publication fails with ``ConnectionLost`` and listeners hear ``gave_up``; the next command
(or ``revive()``) starts a new connection cycle.

Every publication handed to the link is owned by exactly one structure until it settles:
the hand-off queue (or the batch ``_drain_commands`` is running, which puts back what it
did not hand on, whatever is raised), or the outbox (``_outbox``: the publish channel's
ledger and the lists of those waiting to be re-published); see ``_outbox`` for how a
publication moves between them without ever being dropped or sent twice.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional

import pika.exceptions

from . import _confirms, _deliveries, _pika
from ._connector import STOPPED, Connector, quiet_begin, quiet_end
from ._consumer_commands import ConsumerCommands
from ._consumers import Consumers
from ._declarations import Declarations
from ._handoff import Command, HandOff, Publication
from ._outbox import Outbox
from ._threads import SerialExecutor
from ._timeouts import deadline, remaining
from .errors import ClosedError, ConnectionLost, TimeoutError

LOGGER = logging.getLogger(__name__)

__all__ = ['Link', 'IDLE', 'CONNECTING', 'OPEN', 'RECONNECTING', 'CLOSED']

IDLE = 'IDLE'  # no connection, none wanted yet (lazy start, or gave up)
CONNECTING = 'CONNECTING'
OPEN = 'OPEN'
RECONNECTING = 'RECONNECTING'
CLOSED = 'CLOSED'

#: The loop's tick: the longest one ``process_data_events`` lasts (commands end it early), so
#: this bounds how late the loop notices a closed channel, a stop or acks left to send.
POLL_INTERVAL = 0.2
# Slices in which the I/O thread runs the ioloop while it waits for a reply to its own
# request (Channel.OpenOk, Basic.ConsumeOk...). The reply's arrival ends a slice at once
# (``wait_until``); this bounds how late anything else is noticed.
WAIT_SLICE = 0.02
# A queued publish that found a caller writing to the socket is tried again this much later.
BUSY_RETRY = 0.002

_link_ids = itertools.count(1)

#: Counters kept by the I/O thread, and by callers (under ``_stats_lock``).
_IO_COUNTERS = (
    'publishes',
    'confirms',
    'republishes',
    'publish_channels_replaced',
    'ack_frames',
    'reconnects',
    'deliveries',
    'ticks',
    'write_busy',
)
_CALLER_COUNTERS = ('commands', 'wake_ups', 'direct_publishes')


class Link(ConsumerCommands):
    """The I/O thread and its connection. Every public method is thread-safe.

    Args:
        options: connection options per failover address (``config.connection_options``).
        handoff_max: bound of the command queue; a full queue blocks the caller until its
            deadline, then ``TimeoutError`` (``PublishError`` for a publish).
        max_connect_retries: reconnect attempts before giving up (None: forever).
        connect_interval: ``(start, step, max)`` seconds between connect attempts, kombu's
            knobs (``_retry.intervals``).
        direct_writes: let caller threads write publications to a plaintext connection's
            socket themselves (``publish``); False: every publication goes through the I/O
            thread. May be changed at any time.
        failover_strategy: the order the addresses are tried in (``_connector``).
        confirms: False publishes without confirms (settled once written: ``_confirms``).
    """

    def __init__(
        self,
        options: List[dict],
        *,
        handoff_max: int = 10000,
        max_connect_retries: Optional[int] = 100,
        connect_interval: tuple = (0.0, 0.5, 2.0),
        callbacks: Optional[SerialExecutor] = None,
        name: Optional[str] = None,
        direct_writes: bool = True,
        failover_strategy: str = 'round-robin',
        confirms: bool = True,
    ) -> None:
        self.id = next(_link_ids)
        self.confirms = confirms
        self.name = name or f'pika-rpc-io-{os.getpid()}-{self.id}'
        self._connector = Connector(
            options,
            self.name,
            max_retries=max_connect_retries,
            interval=connect_interval,
            failover_strategy=failover_strategy,
        )
        self.callbacks = callbacks or SerialExecutor('pika-rpc-callbacks')
        self.pid = os.getpid()
        self.direct_writes = direct_writes

        self.handoff = HandOff(handoff_max)
        # `_state` changes under the hand-off's mutex; wait_for_state() waits on this.
        self._state_changed = threading.Condition(self.handoff.mutex)
        self._state = IDLE
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._revive_wanted = False  # under the mutex: revive() asked for a connection cycle

        # I/O-thread-only state.
        self.connection: Any = None  # the BlockingConnection while one is open
        self.wire: Optional[_pika.Wire] = None
        self.reader: Optional[_deliveries.DeliveryReader] = None
        self._outbox = Outbox(self)
        self._consumers = Consumers(self)
        self._listeners: List[Callable[[str, Any], None]] = []
        self.address: Optional[str] = None
        self.gen = 0  # connection generation, bumped at every connect
        self.gen_started = False  # True once a connection was ever open
        self._reconnect_wanted = False  # lost a connection that consumers or retries need

        self._declarations = Declarations()  # control channel, per-connection cache

        self.last_error: Optional[str] = None
        self.last_advice = ''  # what to do about last_error (pika_rpc._advice)
        self._down: Optional[str] = None  # unreachable(): connect attempts are failing
        self.failed_attempts = 0  # connect attempts that failed; changes under the mutex
        self.io_stats = collections.Counter(dict.fromkeys(_IO_COUNTERS, 0))  # I/O thread
        self._stats_lock = threading.Lock()
        self._caller_stats = dict.fromkeys(_CALLER_COUNTERS, 0)  # under the lock

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
        """Counters (commands, wake_ups, publishes, direct_publishes, confirms, republishes,
        publish_channels_replaced, ack_frames, reconnects, deliveries, ticks, write_busy), the
        state, what is in flight and queued, and the last error. Every counter is present from the start."""
        with self._stats_lock:
            out: Dict[str, Any] = dict(self._caller_stats)
        out.update(self.io_stats)
        out['publishes'] += out['direct_publishes']
        in_flight, peak = self._outbox.in_flight()
        out.update(
            state=self._state,
            in_flight=in_flight,
            peak_in_flight=peak,
            queued_commands=len(self.handoff),
            last_error=self.last_error,
        )
        return out

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

    def wait_until_state(self, predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
        """Wait until ``predicate()`` is true; it is called under the state lock at every state
        change and failed connect attempt (``state``, ``failed_attempts``). Callers only."""
        with self._state_changed:
            return self._state_changed.wait_for(predicate, timeout)

    def is_declared(self, key: Any) -> bool:
        """Whether ``key`` was declared on the current connection (``control(cache_key=)``)."""
        return self._declarations.is_declared(key)

    def forget_declared(self, key: Any) -> None:
        self._declarations.forget(key)

    def enqueue(self, item: Any, dl: Optional[float]) -> bool:
        if self._stop.is_set():  # before the mutex: an abandoned link's may be held
            raise ClosedError(f'{self.name} is closed')
        try:
            queued, wake, conn = self.handoff.put(item, dl, self._stop.is_set, self._queued)
        except ClosedError:
            raise ClosedError(f'{self.name} is closed') from None
        if wake and conn is not None:
            self.count('wake_ups')
            try:
                conn.add_callback_threadsafe(_noop)
            except Exception:  # the connection is being replaced; the loop drains anyway
                pass
        return queued

    def _queued(self) -> Any:
        # Under the hand-off's mutex, once an item is queued: start the I/O thread if need
        # be; the connection to wake, if it is open.
        self._caller_stats['commands'] += 1
        if self._thread is None:
            self._start_thread()
        return self.connection if self._state == OPEN else None

    def count(self, key: str) -> None:
        with self._stats_lock:
            self._caller_stats[key] += 1

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: Optional[float] = None,
        what: Optional[str] = None,
        wait: bool = True,
    ) -> Any:
        """Run ``fn(*args)`` on the I/O thread once the link is open; return its result.

        Blocks up to ``timeout`` for the whole call (queue space, connection, execution).
        With ``wait=False`` it returns once queued (fire and forget; only the queue's
        space is waited for).

        Raises:
            TimeoutError: not done in time (a command not yet started is then skipped).
            ConnectionLost: the link gave up connecting, or at the deadline its connect
                attempts were failing (``unreachable``); ClosedError: the link is closed.
            BrokerRefused: the broker refused (``PreconditionFailed`` for a 406, ...).
        """
        dl = deadline(timeout)
        what = what or str(getattr(fn, '__name__', 'command'))
        cmd = Command(fn, args, what)
        if not self.enqueue(cmd, dl):
            raise TimeoutError(f'{what}: hand-off queue still full after {timeout} s')
        if not wait:
            return None
        if not cmd.done.wait(remaining(dl)):
            cmd.cancelled = True
            down = self.unreachable()
            if down is not None:
                raise down
            raise TimeoutError(
                f'{what} not done within {"no" if timeout is None else f"{timeout:.3g}"} s'
                + self._why_not_open()
            )
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    def _why_not_open(self) -> str:
        """For a timeout message: why the link is not open (no attempt failed yet)."""
        if self._state == OPEN:
            return ''
        return f' (still connecting to {self._connector.where})'

    def unreachable(self) -> Optional[ConnectionLost]:
        """A ``ConnectionLost`` saying why the broker cannot be reached and what to do, when
        this link's connect attempts are failing (the last one of the current cycle failed,
        or the cycle gave up); None while open, or while no attempt failed yet. Any thread;
        never blocks."""
        down = self._down
        return None if down is None or self._state == OPEN else ConnectionLost(down)

    # ------------------------------------------------------------------ control channel
    def control(
        self, kind: str, timeout: Optional[float] = None, cache_key: Any = None, **kwargs: Any
    ) -> Any:
        """Run a declaration-like command on the control channel (declare_queue,
        declare_exchange, bind_queue, unbind_queue, bind_exchange, unbind_exchange,
        delete_queue, delete_exchange, purge_queue). With ``cache_key``, the result is
        remembered for this connection (``is_declared``)."""
        return self.call(
            self._control,
            kind,
            kwargs,
            cache_key,
            timeout=timeout,
            what=f'{kind} {kwargs.get("queue") or kwargs.get("exchange") or ""}'.strip(),
        )

    def _control(self, kind: str, kwargs: dict, cache_key: Any) -> Any:
        return self._declarations.command(self.connection, kind, kwargs, cache_key)

    def declare(self, kind: str, kwargs: dict) -> Any:
        """I/O thread: run one control command (``_declarations``); raises pika's
        ``ChannelClosed`` when the broker refuses."""
        return self._declarations.run(self.connection, kind, kwargs)

    def forget_declarations(self) -> None:
        """Forget every cached declaration (a queue was deleted under us)."""
        self._declarations.forget_all()

    # ------------------------------------------------------------------ publishing
    def publish(self, pub: Publication) -> Publication:
        """Publish ``pub`` with confirms; returns at once (not settled: wait on ``pub``).

        On an open plaintext connection the calling thread writes the message to the socket
        itself (``_confirms.Pipeline.publish_direct``); otherwise, or when that path is busy,
        it is queued for the I/O thread. Either way the I/O thread settles it.

        Raises:
            PublishError: the hand-off queue stayed full until the publication's deadline.
            ClosedError: the link is closed.
        """
        return self._outbox.publish(pub, self._state == OPEN and not self._stop.is_set())

    # ------------------------------------------------------------------ life cycle
    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """Stop the I/O thread and close the connection. Idempotent, bounded by ``timeout``.

        Queued commands and unsettled publications fail with ``ClosedError``. Returns
        True when the thread ended in time (False: it was abandoned, logged).
        """
        handoff = self.handoff
        with handoff.mutex:
            if self._stop.is_set():
                thread = None
            else:
                self._stop.set()
                thread = self._thread
                conn = self.connection
                handoff.work.notify_all()
                handoff.not_full.notify_all()
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
                LOGGER.warning(
                    '%s still running %s s after close(); abandoning it', self.name, timeout
                )
                return False
        return True

    def revive(self) -> bool:
        """Start a new connection cycle if the link is idle (it gave up, or never started).

        The I/O thread then connects under the retry policy as it does for a new command, and
        listeners hear 'connected' or 'gave_up'. Never blocks; any thread. Returns True when
        a cycle was asked for, False when the link is connecting, open or closed.
        """
        with self.handoff.mutex:
            if self._stop.is_set() or self._state != IDLE:
                return False
            self._revive_wanted = True
            if self._thread is None:
                self._start_thread()
            self.handoff.work.notify()
            return True

    def abandon(self) -> None:
        """Forget this link without any I/O (a forked child's inherited link). A new, set
        stop flag: the parent's Event may have been mid-use by a thread gone here."""
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
        quiet_begin()  # pika's records of this thread go to DEBUG: we say it (_connector)
        try:
            while not self._stop.is_set():
                if self.connection is None:
                    self._wait_for_work()
                    if self._stop.is_set():
                        break
                    if not self._connect():
                        continue
                try:
                    self._turn()
                except _pika.CONNECTION_ERRORS + _pika.CHANNEL_ERRORS as exc:
                    # A lost connection, or a channel of ours closed under us outside a
                    # command: rebuild everything.
                    self._on_connection_lost(exc)
        except Exception as exc:
            LOGGER.critical('%s died', self.name, exc_info=True)
            self.last_error = f'I/O thread died: {type(exc).__name__}: {exc}'
            self._stop.set()  # later calls raise ClosedError instead of timing out
        finally:
            self._shutdown()
            quiet_end()

    def _wait_for_work(self) -> None:
        """No connection: wait until something needs one (a command, a retry, a consumer
        that lost its connection, ``revive()``) or the link stops."""
        handoff = self.handoff
        with handoff.mutex:
            while (
                not len(handoff)
                and not self._outbox.retry_later
                and not self._stop.is_set()
                and not self._reconnect_wanted
                and not self._revive_wanted
            ):
                handoff.work.wait()
            self._revive_wanted = False  # this cycle answers it

    def _turn(self) -> None:
        self._drain_commands()
        # Returns on a wake-up (a command), a timer (the tick, a retry) or an event of a
        # BlockingChannel (control, publish). Deliveries and confirms do not end it: they
        # are handled as they are read.
        _pika.process_data_events(self.connection, None)
        self._drain_commands()
        self._consumers.flush_acks()
        self._outbox.ensure_channel()
        self._consumers.check()

    def _drain_commands(self) -> None:
        """Run the queued commands and publish the queued publications, in order.

        The batch taken off the queue is this function's until each item is run or handed
        on: whatever an item raises, what was not run goes back to the front of the queue
        (the item too, unless pika or a settle took it) before the exception leaves."""
        batch = self.handoff.take_all()
        if not batch:
            return
        ran = 0  # items of the batch run so far
        handed = 0  # publications among them: no longer queued (pika has them...)
        try:
            for item in batch:
                if isinstance(item, Publication):
                    self._outbox.send(item)
                    handed += 1
                else:
                    self._do_command(item)
                ran += 1
        except _confirms.WriteBusy:
            # A caller is finishing a frame on the socket: this and the rest of the batch go
            # back to the front, and the loop comes back shortly.
            self.handoff.put_back(batch[ran:])
            self.io_stats['write_busy'] += 1
            self.connection.call_later(BUSY_RETRY, _noop)
        except BaseException:
            # A lost connection or channel (the rest runs after the reconnect), or a bug.
            item, rest = batch[ran], batch[ran + 1 :]
            if isinstance(item, Publication) and (item.done.is_set() or self._outbox.holds(item)):
                handed += 1  # settled, or the ledger's (the loss re-sends it)
            elif isinstance(item, Command) and item.done.is_set():
                pass  # failed for good (it made the broker close the connection)
            else:
                rest.insert(0, item)  # never handed to pika: not a retry
            self.handoff.put_back(rest)
            raise
        finally:
            # Only now: until pika holds them, callers must not write around them.
            self.handoff.handed(handed)

    def _do_command(self, cmd: Command) -> None:
        if cmd.cancelled:
            return
        try:
            result = cmd.fn(*cmd.args)
        except _pika.CONNECTION_ERRORS as exc:
            if _pika.closed_by_command(exc):
                # Run again on the next connection, it would close that one too (a storm
                # that stops every thread): it fails, and the link reconnects once.
                cmd.finish(error=_pika.translate_connection_close(exc, cmd.what))
            raise
        except pika.exceptions.ChannelClosed as exc:
            cmd.finish(error=_pika.translate_channel_error(exc, cmd.what))
        except Exception as exc:  # ours (PikaRPCError), or a bug or bad argument: report it,
            cmd.finish(error=exc)  # keep the thread alive
        else:
            cmd.finish(result)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """I/O thread: run the ioloop until ``predicate()`` (``_pika.wait_until``)."""
        _pika.wait_until(self.connection, self.reader, predicate, timeout, what, WAIT_SLICE)

    # ---------------------------------------------------------------- connecting
    def _connect(self) -> bool:
        """Connect under the retry policy (``_connector``). True when open; False after
        giving up (everything queued then fails) or when told to stop."""
        reconnect = self.gen_started
        self._set_state(RECONNECTING if reconnect else CONNECTING)
        outcome = self._connector.cycle(self._open, self._after_failed_attempt, self._stop)
        if outcome is STOPPED:
            return False
        if isinstance(outcome, ConnectionLost):  # else None: connected
            self._give_up(outcome)
            return False
        self.gen_started = True
        self._down = None
        self._reconnect_wanted = False
        if reconnect:
            self.io_stats['reconnects'] += 1
        self._set_state(OPEN)
        self._notify('connected', reconnect)
        return True

    def _after_failed_attempt(self) -> None:
        self.last_error = self._connector.last_error
        self.last_advice = self._connector.last_advice
        self._down = self._connector.down
        self._drop_connection()
        with self._state_changed:  # wakes wait_until_state()
            self.failed_attempts += 1
            self._state_changed.notify_all()

    def _open(self) -> None:
        self.connection = self._connector.open_connection()
        self.gen += 1
        self.wire = _pika.Wire(self.connection)
        self.reader = _deliveries.DeliveryReader(self.wire)
        self.address = f'{self.wire.params.host}:{self.wire.params.port}'
        self._declarations.open(self.connection)
        self._outbox.connected()
        self._consumers.resubscribe()
        self.connection.call_later(POLL_INTERVAL, self._on_tick)
        LOGGER.info('%s: connected to %s', self.name, self.address)

    def _on_tick(self) -> None:
        # A timer of this connection: ends the current process_data_events, so the loop
        # checks its channels and the stop flag at least every POLL_INTERVAL.
        self.io_stats['ticks'] += 1
        if self.connection is not None and self.connection.is_open:
            self.connection.call_later(POLL_INTERVAL, self._on_tick)

    def _on_connection_lost(self, exc: BaseException) -> None:
        self.last_error = f'{type(exc).__name__}: {exc}'
        LOGGER.warning(
            'Lost the connection to %s (%s); reconnecting', self._connector.where, self.last_error
        )
        self._drop_connection()  # what was unconfirmed is re-published after the reconnect
        self._reconnect_wanted = True
        self._notify('lost', self.last_error)

    def _drop_connection(self) -> None:
        conn, self.connection = self.connection, None
        self._outbox.lost()
        self._declarations.drop()
        self._consumers.drop()
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass

    def _give_up(self, err: ConnectionLost) -> None:
        self._set_state(IDLE)
        self._fail_queued(err)
        self._outbox.fail_retries(err)
        self._reconnect_wanted = False  # consumers stay registered; the next command reconnects
        self._notify('gave_up', err)

    def _fail_queued(self, err: BaseException) -> None:
        for item in self.handoff.clear():
            if isinstance(item, Publication):
                item._finish(err)
            else:
                item.finish(error=err)

    def _shutdown(self) -> None:
        died = self.last_error if (self.last_error or '').startswith('I/O thread died') else None
        err = ClosedError(f'{self.name} closed' + (f' ({died})' if died else ''))
        # Every publication not settled, wherever it is, fails with err: taken here first.
        owned = self._outbox.take_all()
        conn, self.connection = self.connection, None
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
            self._notify('closed', err)  # the users' waiters wake with this error


def _noop() -> None:
    pass
