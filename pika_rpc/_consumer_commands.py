"""The link's consumer commands for caller threads (mixed into ``_link.Link``): each runs
its ``_consumers.Consumers`` counterpart on the I/O thread through ``Link.call`` and blocks
its caller until done (or its timeout), except a fire-and-forget ack (``wait=False``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._consumers import Consumers, ConsumerSpec

__all__ = ['ConsumerCommands']


class ConsumerCommands:
    """The link's consumer commands, for any thread (mixed into ``_link.Link``): each runs its
    ``Consumers`` counterpart on the I/O thread through ``Link.call``."""

    _consumers: Consumers
    _thread: Any
    _stop: Any
    call: Callable[..., Any]

    def consume(self, spec: ConsumerSpec, timeout: Optional[float] = None) -> str:
        """Subscribe ``spec`` (declarations first); kept across reconnects. Returns the tag."""
        return self.call(
            self._consumers.consume, spec, timeout=timeout, what=f'consume from {spec.queue!r}'
        )

    def cancel(self, spec: ConsumerSpec, timeout: Optional[float] = None) -> None:
        """Stop ``spec``; unacked deliveries go back to the queue (its channel closes)."""
        if self._thread is None or self._stop.is_set():
            spec.active = False
            return
        self.call(
            self._consumers.cancel, spec, timeout=timeout, what=f'cancel consumer of {spec.queue!r}'
        )

    def ack(
        self,
        spec: ConsumerSpec,
        gen: int,
        tag: int,
        multiple: bool = False,
        reject: bool = False,
        requeue: bool = True,
        timeout: Optional[float] = 10.0,
        wait: bool = True,
    ) -> bool:
        """Ack (or reject) a delivery; False when its channel is gone (it will be redelivered).

        With ``wait=False`` the ack is queued and True returned at once (no round trip to the
        I/O thread; a lost channel makes the broker redeliver, which is what False would say).
        """
        result = self.call(
            self._consumers.ack,
            spec,
            gen,
            tag,
            multiple,
            reject,
            requeue,
            timeout=timeout,
            what='ack',
            wait=wait,
        )
        return True if not wait else result

    def qos(self, spec: ConsumerSpec, prefetch_count: int, timeout: Optional[float] = 10.0) -> None:
        self.call(self._consumers.qos, spec, prefetch_count, timeout=timeout, what='qos')

    def recover(self, spec: ConsumerSpec, timeout: Optional[float] = 10.0) -> None:
        self.call(self._consumers.recover, spec, timeout=timeout, what='recover')

    def pause(self, spec: ConsumerSpec, timeout: Optional[float] = 10.0) -> None:
        """Stop ``spec``'s deliveries; what it delivered stays ackable until ``cancel``."""
        self.call(self._consumers.pause, spec, timeout=timeout, what=f'pause {spec.queue!r}')
