"""The outbox: publications on their way to the broker, from hand-over until settled.

One ``Outbox`` per link. It owns the publish channel (confirm mode, ``_confirms.Pipeline``)
and the two lists of publications waiting to be re-published: ``delayed`` (waiting out a
retry interval on a timer of the current connection) and ``retry_later`` (lost with a
connection; re-published first after the reconnect). With the hand-off queue and the
ledger, these are the structures that own a publication until it settles, and a
publication is owned by exactly one of them at a time: it moves from one to the next with
nothing that can raise in between (``take_unsettled`` -> ``retry_or_fail``), so a failure at
any point (the connection dropping while the publish channel is reopened, the I/O thread
dying) leaves each one where the loss handling, the give-up or the shutdown settles it:
confirmed, re-published under its retry budget, or failed with a typed error.

Re-publishing follows the publication's own retry policy (``_handoff.Publication``): each
publish that reaches the broker is an attempt, a nack or a lost connection costs one, the
waits between attempts are the policy's (``_retry.intervals``, the same backoff as
connecting), and its deadline ends it. A
publication the broker refused by name (a publish to a missing exchange closes the publish
channel) fails at once: retrying cannot help.

**A nack replaces the publish channel.** RabbitMQ 3.10 nacks every publish of a channel
whose first publish to a quorum queue came while that queue had no leader (an election after
its leader's node was lost), for the channel's whole life; a new channel publishes normally
once a leader is elected. So after a nack the next publish goes out on a new channel (at most
once per ``NACK_NEW_CHANNEL_INTERVAL``), and the old channel stays open until the broker has
settled what it holds (``_draining``), so nothing is re-published that it would still have
confirmed. A re-published nacked task can still reach the queue twice when the broker took it
after all: publishing is at-least-once.

``publish`` runs on any thread (a caller's direct write, else the hand-off); everything else
on the I/O thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any, List, Optional, Tuple

import pika.exceptions

from . import _confirms, _pika
from ._handoff import Publication
from ._retry import intervals
from .errors import PikaRPCError, PublishError

LOGGER = logging.getLogger(__name__)

__all__ = ['Outbox', 'NACK_NEW_CHANNEL_INTERVAL', 'DRAIN_MAX']

#: After a nack the publish channel is replaced, at most once per this many seconds.
NACK_NEW_CHANNEL_INTERVAL = 0.5
#: A replaced channel is closed once it holds nothing unsettled, or after this many seconds
#: (what it still holds then is re-published under its retry policy).
DRAIN_MAX = 30.0


class Outbox:
    """The publish side of a link (see the module docstring).

    ``link`` provides ``connection``, ``confirms``, ``wire``, ``reader``, ``wait_until(...)``,
    ``enqueue(item, deadline)`` (callers' side), ``handoff``, ``callbacks``, ``io_stats``,
    ``count(key)`` (callers' counters), ``gen`` (the connection generation), ``direct_writes``
    and ``name``.
    """

    def __init__(self, link: Any) -> None:
        self._link = link
        self.pipeline: Optional[_confirms.Pipeline] = None
        self._channel: Any = None
        self.retry_later: List[Publication] = []
        self.delayed: List[Publication] = []
        self._nacked = False  # a nack since the channel was opened: replace it
        self._replaced_at = float('-inf')
        #: Replaced publish channels waiting for their confirms: (channel, pipeline, since).
        self._draining: List[Tuple[Any, _confirms.Pipeline, float]] = []

    # ------------------------------------------------------------------ any thread
    def publish(self, pub: Publication, open_now: bool) -> Publication:
        """Write ``pub`` to the socket on this thread when the connection is open
        (``open_now``) and nothing is queued ahead; else hand it to the I/O thread.

        Raises:
            PublishError: the hand-off queue stayed full until the publication's deadline.
            ClosedError: the link is closed.
        """
        link, pipeline = self._link, self.pipeline
        if (
            link.direct_writes
            and pipeline is not None
            and open_now
            and not pub.cancelled
            and self._publish_direct(pipeline, pub)
        ):
            return pub
        if not link.enqueue(pub, pub.deadline):
            raise PublishError(
                f'publish to {pub.routing_key!r}: hand-off queue full until deadline'
            )
        return pub

    def _publish_direct(self, pipeline: _confirms.Pipeline, pub: Publication) -> bool:
        handoff = self._link.handoff
        if not pipeline.takes_direct(pub) or handoff.queued_pubs:
            return False
        try:
            props = _pika.basic_properties(pub.properties)
        except Exception:  # the I/O thread reports it as a PublishError
            return False
        if pub.deadline is not None and time.monotonic() >= pub.deadline:
            return False
        pub.attempts += 1
        pub.gen = self._link.gen
        try:
            # True once the ledger holds it, whatever became of the write: never queue it
            # then, or it is sent twice (the loss handling re-publishes it).
            sent = pipeline.publish_direct(pub, props, lambda: handoff.queued_pubs > 0)
        except Exception:  # pika cannot marshal it (not on the ledger): the I/O
            sent = False  # thread reports it
        if not sent:
            pub.attempts -= 1
            return False
        self._link.count('direct_publishes')
        return True

    def in_flight(self) -> tuple:
        """``(unconfirmed now, most ever unconfirmed)`` on the current publish channel."""
        pipeline = self.pipeline
        return (pipeline.in_flight, pipeline.peak_in_flight) if pipeline else (0, 0)

    # ------------------------------------------------------------------ I/O thread
    def holds(self, pub: Publication) -> bool:
        """Whether the current ledger owns ``pub`` (it was handed to pika)."""
        return self.pipeline is not None and self.pipeline.holds(pub)

    def send(self, pub: Publication) -> None:
        """Publish a queued publication through pika (no wait for the confirm).

        Raises what pika raises for a lost connection or channel, and ``WriteBusy``."""
        if pub.cancelled or pub.done.is_set():
            return
        self.ensure_channel()
        if pub.deadline is not None and time.monotonic() >= pub.deadline:
            pub._finish(PublishError(f'publish to {pub.routing_key!r} not sent within its timeout'))
            return
        try:
            self.pipeline.publish(  # type: ignore[union-attr]  # ensure_channel() made it
                pub,
                pub.exchange,
                pub.routing_key,
                pub.body,
                _pika.basic_properties(pub.properties),
                pub.mandatory,
            )
        except (_confirms.WriteBusy,) + _pika.CONNECTION_ERRORS + _pika.CHANNEL_ERRORS:
            raise
        except Exception as exc:  # pika cannot encode it (a float header, priority > 255...)
            pub._finish(
                PublishError(f'cannot publish to {pub.routing_key!r}: {type(exc).__name__}: {exc}')
            )
        else:  # no confirm can be read before the loop polls again
            pub.attempts += 1
            pub.gen = self._link.gen
            self._link.io_stats['publishes'] += 1

    def open_channel(self) -> None:
        """Open the publish channel on the current connection: in confirm mode, unless the
        link publishes without confirms (``link.confirms`` False: kombu's
        ``confirm_publish=False``; a publication is then settled once written)."""
        link = self._link
        self._channel = link.connection.channel()
        pipeline: List[_confirms.Pipeline] = []  # its settle handler knows which it is

        def on_settled(pub: Publication, outcome: str, returned: Optional[tuple]) -> None:
            self._on_settled(pub, outcome, returned, pipeline[0])

        pipeline.append(
            _confirms.Pipeline(
                _pika.channel_impl(self._channel), on_settled, confirms=link.confirms
            )
        )
        self.pipeline = pipeline[0]
        ready = self.pipeline.start(link.wire, link.reader)
        link.wait_until(ready, 30.0, 'Confirm.SelectOk')

    def ensure_channel(self) -> None:
        """Reopen the publish channel when the broker closed it (a publish to a missing or
        forbidden exchange), without dropping the connection: the publications the broker's
        reason names fail at once (never retried), the others it discarded are re-published
        under their retry budget. Any other closure is a lost connection (raised).

        After a nack, open a new publish channel (see the module docstring); close the
        replaced ones once the broker settled what they hold."""
        if self._draining:
            self._close_drained()
        if self._channel is None:
            return
        if self._channel.is_open:
            if self._nacked and time.monotonic() - self._replaced_at >= NACK_NEW_CHANNEL_INTERVAL:
                self._replace_channel()
            return
        reason = self.pipeline.closed_reason if self.pipeline is not None else None
        if (
            not isinstance(reason, pika.exceptions.ChannelClosedByBroker)
            or not self._link.connection.is_open
        ):
            raise pika.exceptions.ChannelClosed(0, 'publish channel closed')
        code, text = reason.reply_code, reason.reply_text
        LOGGER.warning(
            '%s: the broker closed the publish channel (%s %s); reopening it',
            self._link.name,
            code,
            text,
        )
        # Each goes to its next owner before the reopen, which may fail with the connection.
        for pub in self.pipeline.take_unsettled():  # type: ignore[union-attr]  # a reason: a pipeline
            if pub.exchange and f"exchange '{pub.exchange}'" in text:
                pub._finish(
                    PublishError(f'publish to exchange {pub.exchange!r} refused: {code} {text}')
                )
            else:
                self.retry_or_fail(
                    pub,
                    PublishError(
                        f'publish to {pub.routing_key!r} discarded: the broker closed the channel '
                        f'({code} {text})'
                    ),
                )
        self.open_channel()

    def _replace_channel(self) -> None:
        """Publish on a new channel from now on; the old one drains (``_draining``)."""
        self._nacked = False
        self._replaced_at = time.monotonic()
        old_channel, old_pipeline = self._channel, self.pipeline
        if old_pipeline is None:  # no channel to replace
            return
        LOGGER.warning(
            '%s: the broker nacked a publish; publishing on a new channel (RabbitMQ keeps '
            'nacking a channel that published to a quorum queue during its leader election)',
            self._link.name,
        )
        old_pipeline.stop_direct()  # direct writers take the new pipeline from here
        self._draining.append((old_channel, old_pipeline, self._replaced_at))
        self._link.io_stats['publish_channels_replaced'] += 1
        self.open_channel()

    def _close_drained(self) -> None:
        """Close each replaced channel that holds nothing unsettled (or was closed, or waited
        ``DRAIN_MAX``); what it still held is re-published under its retry policy."""
        now, keep = time.monotonic(), []
        for channel, pipeline, since in self._draining:
            if pipeline.in_flight and channel.is_open and now - since < DRAIN_MAX:
                keep.append((channel, pipeline, since))
                continue
            for pub in pipeline.take_unsettled():
                self.retry_or_fail(
                    pub,
                    PublishError(
                        f'publish to {pub.routing_key!r} not confirmed on a replaced channel'
                    ),
                )
            if channel.is_open:
                try:
                    _pika.channel_impl(channel).close()  # no wait for CloseOk
                except Exception:  # closing already, or the connection went: nothing to do
                    LOGGER.debug('%s: closing a replaced channel', self._link.name, exc_info=True)
        self._draining = keep

    def _take_draining(self) -> List[Publication]:
        draining, self._draining = self._draining, []
        return [pub for _, pipeline, _ in draining for pub in pipeline.take_unsettled()]

    def _on_settled(
        self,
        pub: Publication,
        outcome: str,
        returned: Optional[tuple],
        pipeline: Optional[_confirms.Pipeline] = None,
    ) -> None:
        self._link.io_stats['confirms'] += 1
        if outcome == _confirms.SETTLED_NACK:
            if pipeline is not None and pipeline is self.pipeline:  # not a replaced one's
                self._nacked = True
                pipeline.stop_direct()  # the next publish goes through send(): a new channel
            self.retry_or_fail(
                pub, PublishError(f'broker nacked the publish to {pub.routing_key!r}')
            )
            return
        pub.returned = returned
        pub._finish(None)

    def retry_or_fail(self, pub: Publication, exc: PikaRPCError) -> None:
        """A publication failed (nack, lost channel or connection): re-publish it within its
        budget, else fail it. ``pub`` has exactly one owner when this returns: settled, the
        hand-off queue, ``delayed`` or ``retry_later``. Does not raise: callers hand on lists
        of them."""
        if pub.cancelled:
            pub._finish(exc)
            return
        if pub.waits is None:
            pub.waits = intervals(pub.policy)
        interval = next(pub.waits)
        out_of_time = pub.deadline is not None and time.monotonic() + interval >= pub.deadline
        if (pub.max_retries is not None and pub.attempts > pub.max_retries) or out_of_time:
            why = 'its deadline passed' if out_of_time else f'{pub.attempts} attempt(s)'
            pub._finish(PublishError(f'{exc} (gave up after {why})'))
            return
        link = self._link
        link.io_stats['republishes'] += 1
        if link.connection is None or not link.connection.is_open:
            self.retry_later.append(pub)  # re-published after the reconnect
        elif interval > 0:
            self.delayed.append(pub)  # moved to retry_later if the connection goes
            link.connection.call_later(interval, lambda: self._requeue(pub))
        else:
            link.handoff.requeue([pub])
        if pub.errback is not None:
            try:
                link.callbacks.submit(pub.errback, exc, interval)
            except Exception:  # no thread for it: the retry goes on all the same
                LOGGER.exception(
                    '%s: cannot run the errback of a publish to %r', link.name, pub.routing_key
                )

    def _requeue(self, pub: Publication) -> None:
        try:
            self.delayed.remove(pub)
        except ValueError:  # its connection went away: in retry_later now
            return
        self._link.handoff.requeue([pub])

    # ------------------------------------------------------------------ connections
    def connected(self) -> None:
        """A new connection is open: open the publish channel, and queue what was lost with
        the last connection first in line (callers' own writes wait for those)."""
        self.open_channel()
        retry = [pub for pub in self.retry_later if not pub.done.is_set()]
        self.retry_later = []
        self._link.handoff.requeue(retry, front=True)

    def lost(self) -> None:
        """The connection is gone: retire the ledger (no caller registers on it any more)
        and hand every unconfirmed publication to its retry policy; the timers of that
        connection never fire now, so what waited on them is re-published after the
        reconnect too."""
        pipeline, self.pipeline, self._channel = self.pipeline, None, None
        self._nacked = False
        unsettled = self._take_draining()
        if pipeline is not None:
            unsettled += pipeline.take_unsettled()
        for pub in unsettled:
            self.retry_or_fail(
                pub,
                PublishError(
                    f'connection lost before the broker confirmed the publish to '
                    f'{pub.routing_key!r}'
                ),
            )
        delayed, self.delayed = self.delayed, []
        self.retry_later.extend(delayed)

    def fail_retries(self, err: BaseException) -> None:
        """The link gave up connecting: fail what waited for the reconnect."""
        retry, self.retry_later = self.retry_later, []
        for pub in retry:
            pub._finish(err)

    def take_all(self) -> List[Publication]:
        """The link is shutting down: remove and return every publication it owns here."""
        pipeline, self.pipeline, self._channel = self.pipeline, None, None
        owned = pipeline.take_unsettled() if pipeline is not None else []
        owned += self._take_draining() + self.retry_later + self.delayed
        self.retry_later, self.delayed = [], []
        return owned
