"""``ResultConsumer``: the client side of rpc://, fed by the I/O thread.

One reply queue per *process* (the backend's ``oid``), consumed by the I/O thread with
manual, batched acks. Every state message is decoded (small bodies on the I/O thread, big
ones on the decoder thread, order kept) and routed by the body's ``task_id`` into the
pending table, where waiting threads wake. The body's id wins because a sender may choose its
own ``correlation_id``; that property is used only for a body without one
(``protocol.task_id_of``; ``docs/wire-format.rst``, "Which task a message belongs to").

The ``RPCBackend`` owns the link, the reply queue's name and the pending table, and hands
them to its consumer per process (:meth:`ResultConsumer._attach`, at creation and after a
fork); the consumer owns everything about consuming: the subscription and its hand-off, the
decoder thread and its ordering, the hook guards, the ``drain_events`` waiters and their
counters. ``RPCBackend.result_consumer`` is Celery's public object (``start``, ``stop``,
``consume_from``, ``cancel_for``, ``drain_events``, ``on_after_fork``, ``on_state_change``).

Choices where Celery leaves room:

* Subscribing is a broker round trip, so no lock is held across it: one thread subscribes
  (``ensure_consuming``) while the others that need the subscription wait on a condition,
  each within its own deadline, and take over if the subscribing thread fails.
* The reply queue is declared ``durable=True, auto_delete=False, exclusive=False`` with
  ``x-expires = result_expires`` (``config.reply_queue_arguments``): it survives a
  reconnect, and the link re-subscribes it after every reconnect, checking first that it
  still exists. A reply queue that is gone (deleted, expired) fails every pending task with
  ``ReplyQueueLost``: their results can no longer arrive.
* A reply queue whose home node is down (a RabbitMQ cluster: the broker refuses its
  re-subscribe with ``QueueNodeDown``) is left at once for a new one: a new oid, declared by
  the next subscribe on the node the connection is on now (``_on_refused``, the spec's
  ``on_refused``). Its pending tasks fail with ``ReplyQueueLost`` naming them and the node.
  A task names the queue it was registered for (``expect``: one step under ``_subscribed``),
  so no task waits on a queue that was left. A quorum reply queue (``result_queue_type``)
  keeps its name: its leader moves to another node and nothing in it is lost.
* Hooks (``on_state_change``, the backend's ``on_out_of_band_result``) run on the thread
  that decoded the message, guarded: one that raises is logged with the task id; the state
  is still recorded, its waiters still wake and the message is acknowledged (no
  poison-message loop).
* A body over ``result_max_size``, or one that does not decode, fails the waiters of its
  task (when it names one) with its ``DecodeError``, and is acknowledged.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from typing import Any, Callable, Dict, Optional

from . import protocol, serialization
from ._consumers import ConsumerSpec, Delivery
from ._link import Link
from ._pending import PendingTable
from ._threads import Counters, SerialExecutor
from ._timeouts import deadline, remaining
from .config import reply_queue_arguments
from .errors import (
    BrokerRefused,
    DecodeError,
    PikaRPCError,
    QueueNodeDown,
    ReplyQueueLost,
    TimeoutError,
)
from .messaging import Consumer

LOGGER = logging.getLogger(__name__)

__all__ = ['ResultConsumer']

# How often one ensure_consuming moves on to a new reply queue before it gives up.
_MOVES_PER_CALL = 3
_CANCELLED = 'was deleted or lost its home node (the broker cancelled its consumer)'


class ResultConsumer:
    """The seed's ResultConsumer, fed by the I/O thread instead of drained by the caller.

    ``drain_events`` exists for compatibility: results arrive without it, so it only waits
    (up to ``timeout``) for any new state message. Every method may be called from any
    thread except the I/O thread.
    """

    Consumer = Consumer

    def __init__(self, backend: Any, *args: Any, **kwargs: Any) -> None:
        self.backend = backend
        self._oid = ''
        # Both set by _attach() before any other method runs.
        self._pending: PendingTable = None  # type: ignore[assignment]
        self._get_link: Callable[[], Link] = None  # type: ignore[assignment]

    def _attach(self, oid: str, pending: PendingTable, get_link: Callable[[], Link]) -> None:
        """Called by the backend for each process (at creation and in a forked child): the
        reply queue to consume, the table to fill and how to get the link. Starts over: no
        subscription, new locks, a new decoder thread."""
        self._pid = os.getpid()
        self._oid, self._pending, self._get_link = oid, pending, get_link
        conf = self.backend.conf
        # Read once: Settings lookups are not free on the per-message path.
        self._large_body = conf.large_body_threshold
        self._max_size = conf.result_max_size
        self._decoder = SerialExecutor('pika-rpc-decoder')
        self._decoding = 0  # bodies handed to the decoder and not yet stored
        self._decoding_lock = threading.Lock()
        # Guards _spec, _spec_link, _subscribing and changes of _oid (a move: _on_refused);
        # notified when a subscribe attempt ends.
        self._subscribed = threading.Condition(threading.Lock())
        self._spec: Optional[ConsumerSpec] = None
        self._spec_link: Optional[Link] = None  # the link _spec is subscribed on
        self._subscribing = False  # a thread is in link.consume() for us
        self._background = False  # consume_soon()'s thread runs
        self._arrived = threading.Condition(threading.Lock())
        self._drain_waiters = 0  # threads in drain_events
        self._stats = Counters(
            'out_of_band_received', 'bad_messages', 'hook_errors', 'reply_queue_moves'
        )

    # ------------------------------------------------------------------ Celery's API
    def start(
        self, initial_task_id: Optional[str] = None, no_ack: bool = True, **kwargs: Any
    ) -> None:
        """Subscribe to the reply queue (idempotent); expect ``initial_task_id``. Blocks up
        to ``publish_timeout`` for the subscription."""
        if initial_task_id is None:
            self.ensure_consuming()
        else:
            self.expect(initial_task_id)

    def stop(self) -> None:
        """Cancel the subscription (results stay in the queue for a later ``start``)."""
        try:
            self._cancel(timeout=5.0)
        except PikaRPCError as exc:
            LOGGER.debug('cancel of the reply consumer failed: %s', exc)

    def consume_from(self, task_id: str) -> None:
        self.start(task_id)

    def cancel_for(self, task_id: str) -> None:
        self._pending.discard(task_id)

    def drain_events(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` for the next state message (pushed by the I/O thread).

        Returns True when one arrived, False when ``timeout`` passed first.
        """
        self.ensure_consuming()
        with self._arrived:
            self._drain_waiters += 1
            try:
                return self._arrived.wait(timeout)
            finally:
                self._drain_waiters -= 1

    def on_after_fork(self) -> None:
        self.backend._forget_parent_state()

    def on_state_change(self, meta: dict, message: Any) -> None:
        """Hook called (decoder or I/O thread) for every state message; quick, no I/O."""

    # ------------------------------------------------------------------ subscription
    @property
    def reply_queue(self) -> str:
        """The reply queue results are sent to now: the oid, or the queue it moved to."""
        return self._oid

    def expect(self, task_id: str, timeout: Optional[float] = None) -> str:
        """Subscribe (``ensure_consuming``) and expect results for ``task_id``; returns the
        reply queue its task message must name. The queue is read and the task registered
        for it in one step, so a move to a new queue (its node is down) either fails this
        task with ``ReplyQueueLost`` or happened before and this task names the new queue.

        Blocks and raises as ``ensure_consuming`` (one deadline for the whole call).
        """
        limit = self.backend.conf.publish_timeout if timeout is None else timeout
        dl = deadline(limit)
        while True:
            self.ensure_consuming(timeout=remaining(dl))
            with self._subscribed:
                spec = self._spec
                if spec is not None and spec.active and spec.queue == self._oid:
                    self._pending.register(task_id, queue=self._oid)
                    return self._oid
            # It moved between the two steps: subscribe the new queue, within dl.
            if remaining(dl) == 0:
                raise TimeoutError(f'reply queue {self._oid} not consumed within {limit} s')

    def ensure_consuming(self, timeout: Optional[float] = None) -> None:
        """Subscribe to the reply queue unless subscribed on the backend's current link.

        Blocks up to ``timeout`` (default ``publish_timeout``): for the broker's answer, or
        for another thread's subscribe to end (then, if that one failed, this thread tries).
        A reply queue whose home node is down is replaced by a new one (``_on_refused``),
        which is then subscribed within the same deadline.

        Raises:
            TimeoutError: not subscribed within ``timeout``.
            ConnectionLost, PikaRPCError: the broker could not be reached, or refused.
            ClosedError: the backend is closed.
        """
        link = self._spec_link  # unlocked fast path: subscribed on a live link here
        if (
            link is not None
            and not link.closed
            and self._pid == os.getpid()
            and self._is_subscribed(link)
        ):
            return
        link = self._get_link()  # a fork resets this consumer here (the backend's pid check)
        limit = self.backend.conf.publish_timeout if timeout is None else timeout
        dl = deadline(limit)
        for attempt in range(_MOVES_PER_CALL + 1):
            try:
                self._subscribe(link, dl, limit)
                return
            except QueueNodeDown as exc:
                if exc.queue == self._oid or attempt == _MOVES_PER_CALL:
                    raise  # not moved (not ours?), or moved too often: say so
                # _on_refused moved us to a new queue: subscribe that one.

    def consume_soon(self) -> None:
        """Start subscribing in the background unless subscribed or subscribing; never
        blocks (``get_task_meta``: a poll never waits on the network). One background
        subscribe at a time; its failure is logged at DEBUG and the next poll tries again."""
        link = self._spec_link
        if link is not None and not link.closed and self._is_subscribed(link):
            return
        with self._subscribed:
            if self._subscribing or self._background:
                return
            self._background = True
        threading.Thread(
            target=self._consume_in_background,
            name=f'pika-rpc-subscribe-{os.getpid()}',
            daemon=True,
        ).start()

    def _consume_in_background(self) -> None:
        try:
            self.ensure_consuming()
        except PikaRPCError as exc:
            LOGGER.debug('background subscribe of reply queue %s failed: %s', self._oid, exc)
        finally:
            with self._subscribed:
                self._background = False

    def _subscribe(self, link: Link, dl: Optional[float], limit: Optional[float]) -> None:
        """Subscribe the current reply queue on ``link``, or wait for the thread that does."""
        with self._subscribed:
            while True:
                if self._is_subscribed(link):
                    return
                if not self._subscribing:
                    self._subscribing = True  # this thread subscribes; others wait
                    oid = self._oid
                    break
                if not self._subscribed.wait(remaining(dl)):
                    raise TimeoutError(
                        f'reply queue {self._oid} not consumed within {limit} s '
                        '(another thread is subscribing it)'
                    )
        subscribed = None
        try:
            spec = self._new_spec(oid)
            link.consume(spec, timeout=remaining(dl))
            subscribed = spec
        finally:
            with self._subscribed:
                if subscribed is not None and oid == self._oid:
                    self._spec, self._spec_link = subscribed, link
                self._subscribing = False
                self._subscribed.notify_all()  # done, or the next waiter tries

    def _new_spec(self, oid: str) -> ConsumerSpec:
        return ConsumerSpec(
            oid,
            self._on_reply,
            batch_ack=True,
            declarations=(
                (
                    'declare_queue',
                    dict(
                        queue=oid,
                        durable=True,
                        auto_delete=False,
                        exclusive=False,
                        arguments=reply_queue_arguments(self.backend.conf),
                    ),
                ),
            ),
            check_exists=True,
            on_missing=functools.partial(self._on_queue_lost, oid, ''),
            on_cancel=functools.partial(self._on_queue_lost, oid, _CANCELLED),
            on_refused=functools.partial(self._on_refused, oid),
            consumer_tag=f'pika-rpc-{oid}',
        )

    def _is_subscribed(self, link: Link) -> bool:
        spec = self._spec
        return spec is not None and spec.active and self._spec_link is link

    def _cancel(self, timeout: Optional[float]) -> bool:
        """Cancel the subscription (for ``stop`` and the backend's ``close``); True when
        there was one. Blocks up to ``timeout``.

        Raises:
            PikaRPCError: the cancel failed (the subscription is forgotten all the same).
        """
        with self._subscribed:
            spec, link = self._spec, self._spec_link
            self._spec = self._spec_link = None
        if spec is None:
            return False
        if link is not None:
            link.cancel(spec, timeout=timeout)
        return True

    def _on_queue_lost(self, oid: str, reason: str) -> None:  # I/O thread
        ids = self._pending.fail_pending(lambda ids: ReplyQueueLost(oid, ids, reason), queue=oid)
        LOGGER.error(
            'reply queue %s %s; %d pending task(s) lost: %s',
            oid,
            reason or 'was deleted or expired',
            len(ids),
            ', '.join(ids[:20]),
        )

    def _on_refused(self, oid: str, error: BrokerRefused) -> bool:  # I/O thread
        """``ConsumerSpec.on_refused`` of reply queue ``oid``: when its home node is down, move
        to a new reply queue at once (True: the link stops the old spec). Its pending tasks
        fail with ``ReplyQueueLost``; the new queue is declared by the next subscribe, on the
        node the connection is on now."""
        if not isinstance(error, QueueNodeDown):
            return False
        why = f'its home node {error.node} is down' if error.node else 'its home node is stopping'
        reason = f'is lost: {why}'
        with self._subscribed:
            if self._oid != oid:
                return True  # moved already; stop the old spec
            self._oid = new = str(uuid.uuid4())
            self._spec = self._spec_link = None
            ids = self._pending.fail_pending(
                lambda ids: ReplyQueueLost(oid, ids, reason), queue=oid
            )
        self._stats.add('reply_queue_moves')
        LOGGER.warning(
            'reply queue %s is lost (%s): results sent there are lost; new tasks use reply '
            'queue %s; %d pending task(s) lost: %s',
            oid,
            why,
            new,
            len(ids),
            ', '.join(ids[:20]),
        )
        return True

    # ------------------------------------------------------------------ receiving
    def _on_reply(self, delivery: Delivery) -> None:  # I/O thread: hand off only
        # Once a body is with the decoder, later ones follow it there: order is kept.
        if self._decoding or len(delivery.body) > self._large_body:
            with self._decoding_lock:
                self._decoding += 1
            self._decoder.submit(self._decode_off_thread, delivery)
        else:
            self._handle(delivery)

    def _decode_off_thread(self, delivery: Delivery) -> None:
        try:
            self._handle(delivery)
        finally:
            with self._decoding_lock:
                self._decoding -= 1

    def _handle(self, delivery: Delivery) -> None:
        props = delivery.properties
        raw = None
        try:
            max_size = self._max_size
            if max_size is not None and len(delivery.body) > max_size:
                raise DecodeError(
                    f'result body of {len(delivery.body)} bytes exceeds result_max_size={max_size}'
                )
            raw = serialization.loads(
                delivery.body,
                props.content_type,
                props.content_encoding,
                accept=self.backend.accept,
            )
            task_id = protocol.task_id_of(raw, props.correlation_id)
            meta = protocol.meta_from_raw(raw)
        except PikaRPCError as exc:
            self._stats.add('bad_messages')
            task_id = (
                protocol.task_id_of(raw, props.correlation_id)
                if isinstance(raw, dict)
                else props.correlation_id
            )
            if self._pending.fail_one(task_id, exc):
                LOGGER.warning(
                    'bad message for task %s on reply queue %s: %s (its waiters get this error)',
                    task_id,
                    self._oid,
                    exc,
                )
            else:
                LOGGER.warning(
                    'dropped a bad message on reply queue %s (task %s): %s', self._oid, task_id, exc
                )
            return
        if task_id is None:
            self._stats.add('bad_messages')
            LOGGER.warning('dropped a state message with no task id on %s', self._oid)
            return
        outcome = self._pending.deliver(task_id, raw, meta, len(delivery.body))
        if outcome == 'oob':
            self._stats.add('out_of_band_received')
            self._run_hook(
                self.backend.on_out_of_band_result,
                'on_out_of_band_result',
                task_id,
                task_id,
                delivery,
            )
        self._run_hook(self.on_state_change, 'on_state_change', task_id, meta, delivery)
        if self._drain_waiters:  # read unlocked: a waiter that starts later waits
            with self._arrived:  # for the next message anyway
                self._arrived.notify_all()

    def _run_hook(self, hook: Callable[..., Any], name: str, task_id: str, *args: Any) -> None:
        # User code on the I/O or decoder thread: an exception must not reach pika (it would
        # drop the connection and the redelivered message would raise again, forever).
        try:
            hook(*args)
        except Exception:
            self._stats.add('hook_errors')
            LOGGER.exception(
                '%s raised for task %s on reply queue %s; its state was recorded '
                'and the message acknowledged',
                name,
                task_id,
                self._oid,
            )

    def stats(self) -> Dict[str, int]:
        """Messages counted while consuming: out-of-band, bad, and raising hooks."""
        return self._stats.snapshot()
