"""The one publish-and-wait path: hand a publication to the link, wait for its confirm, map
the outcome to one set of errors.

Every caller that publishes and waits (``App.send_task``, ``App.control_revoke``,
``RPCBackend.store_result``, ``Producer.publish``/``Connection.basic_publish`` and the
Worker's re-send for a retry) goes through :func:`publish_and_wait`, so they all fail the
same way:

* not settled by the deadline (hand-off queue full, not confirmed): ``PublishError``;
* the broker could not be reached, or the link gave up or was closed: ``ConnectionLost``
  (``ClosedError``) unchanged; not settled by the deadline while the link's connect attempts
  were failing: ``ConnectionLost`` saying why and what to do (``Link.unreachable``);
* nacked, or re-published until its retry budget ran out: ``PublishError``;
* any other failure (pika could not encode it): ``PublishError`` with the cause chained.

A mandatory publication the broker returned (no queue bound) was still confirmed: it is
returned as an ``Unroutable`` error, not raised; the caller decides (a task message, a result
and a kombu ``on_return`` are reported differently).
"""

from __future__ import annotations

from typing import Any, Optional

from ._handoff import Publication
from ._timeouts import remaining
from .errors import ConnectionLost, PublishError, Unroutable

__all__ = ['publish_and_wait']


def publish_and_wait(link: Any, pub: Publication, what: str) -> Optional[Unroutable]:
    """Publish ``pub`` on ``link`` and block until the broker settled it or its deadline
    (``Publication(timeout=...)``) passed.

    ``what`` names the message in errors (``'task tasks.add[<id>]'``). Any thread but the
    I/O thread. A publication not settled in time is cancelled: it is not re-published later.

    Returns:
        None when confirmed and routed; an ``Unroutable`` when the broker returned it.

    Raises:
        PublishError: nacked, not confirmed in time, or re-published until its retries ran out.
        ConnectionLost: the broker could not be reached or the link was closed.
    """
    link.publish(pub)
    if not pub.wait(remaining(pub.deadline)):
        pub.cancelled = True
        down = link.unreachable()
        if down is not None:  # its connect attempts are failing: say why, and what to do
            raise ConnectionLost(f'{what} not sent: {down}')
        raise PublishError(
            f'{what} not confirmed within {pub.timeout:.3g} s (exchange '
            f'{pub.exchange!r}, routing key {pub.routing_key!r})'
        )
    error = pub.error
    if error is not None:
        if isinstance(error, (PublishError, ConnectionLost)):
            raise error
        raise PublishError(f'{what} not published: {error}') from error
    if pub.returned is not None:
        code, text = pub.returned
        return Unroutable(pub.exchange, pub.routing_key, code, text, what)
    return None
