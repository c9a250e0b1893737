"""Deliveries and confirms read straight from the connection's input, ahead of pika.

Receiving a message through pika costs three generic frame decodes, callback-registry
lookups per frame, the channel's content assembler and the consumer lookup: most of the
I/O thread's time per result (issue 9). For the channels it is given (our consumer
channels), a :class:`DeliveryReader` parses the three frames of a delivery itself —
``Basic.Deliver``, the content header, the body frames — and calls the channel's handler
with the same ``(method, properties, body)`` pika would pass. The same goes for the
``Basic.Ack``/``Basic.Nack`` frames of the publish channel (``register_confirms``), which
settle publications (``_confirms.Pipeline.on_confirm``). Every other frame (any other
method, heartbeats, other channels, anything it does not recognise) goes to pika unchanged
and in order: frames before a delivery are handed to pika before the delivery is handled.

It replaces ``SelectConnection._on_data_available`` on the connection instance (the pika
internal this module depends on, with ``_frame_buffer`` and ``bytes_received``, which the
heartbeat checker reads). The properties are decoded by pika's own
``BasicProperties.decode``. I/O thread only. Requires ``pika>=1.3,<2``.
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Callable, Dict, Optional, Tuple

import pika.spec

LOGGER = logging.getLogger(__name__)

__all__ = ['DeliveryReader']

_FRAME_HEADER = struct.Struct('>BHI')          # type, channel, payload size
_DELIVER = b'\x00\x3c\x00\x3c'                 # class 60 (basic), method 60 (deliver)
_FRAME_METHOD, _FRAME_HEADER_TYPE, _FRAME_BODY = 1, 2, 3
_FRAME_END = 0xCE
_U64 = struct.Struct('>Q')
_BODY_SIZE = struct.Struct('>HHQ')             # class, weight, body size

Handler = Callable[[Any, pika.spec.Basic.Deliver, pika.spec.BasicProperties, bytes], None]
ConfirmHandler = Callable[[int, bool, bool], None]
_CONFIRMS = (b'\x00\x3c\x00\x50', b'\x00\x3c\x00\x78')   # basic.ack (80), basic.nack (120)


class DeliveryReader:
    """Installed on one connection (``BlockingConnection._impl``) for its lifetime."""

    def __init__(self, impl: Any) -> None:
        self._impl = impl
        self._pika_on_data = impl._on_data_available
        # channel number -> (channel, delivery handler, None) or (channel, None, confirm handler)
        self._handlers: Dict[int, Tuple[Any, Optional[Handler], Optional[ConfirmHandler]]] = {}
        # A partial frame pika may hold already becomes the start of our buffer.
        self._buf = bytes(impl._frame_buffer or b'')
        impl._frame_buffer = b''
        impl._on_data_available = self._on_data
        self.fast = 0                # deliveries read here (for stats and tests)

    def register(self, channel: Any, handler: Handler) -> None:
        """Read the deliveries of ``channel`` (a ``pika.channel.Channel``) here from now on;
        ``handler(channel, method, properties, body)`` as pika's ``on_message_callback``."""
        self._handlers[channel.channel_number] = (channel, handler, None)

    def register_confirms(self, channel: Any, on_confirm: 'ConfirmHandler') -> None:
        """Read ``Basic.Ack``/``Basic.Nack`` of ``channel`` (in confirm mode) here:
        ``on_confirm(delivery_tag, multiple, nack)``."""
        self._handlers[channel.channel_number] = (channel, None, on_confirm)

    def unregister(self, channel: Any) -> None:
        entry = self._handlers.get(channel.channel_number)
        if entry is not None and entry[0] is channel:
            del self._handlers[channel.channel_number]

    def _on_data(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        run = -1                     # start of frames waiting to be handed to pika
        handlers = self._handlers
        try:
            while size - pos >= 8:
                ftype, channel_number, length = _FRAME_HEADER.unpack_from(buf, pos)
                end = pos + 7 + length                    # index of the frame-end octet
                if end >= size:
                    break
                entry = handlers.get(channel_number) if ftype == _FRAME_METHOD else None
                parsed: Any = False
                if entry is not None and buf[end] == _FRAME_END:
                    kind = buf[pos + 7:pos + 11]
                    if entry[1] is None and length == 13 and kind in _CONFIRMS:
                        parsed = end + 1, None, None, None          # a publisher confirm
                    elif entry[1] is not None and kind == _DELIVER:
                        parsed = _parse_delivery(buf, pos, end, size, channel_number)
                        if parsed is None:                # the rest has not arrived yet
                            break
                if parsed is False:                       # pika's frame
                    if run < 0:
                        run = pos
                    pos = end + 1
                    continue
                if run >= 0:                              # pika's frames come first
                    self._to_pika(buf[run:pos])
                    run = -1
                    if self._impl.is_closed:              # nothing more to read
                        pos = size
                        break
                    if channel_number not in handlers:    # pika closed that channel
                        continue
                nxt, method, properties, body = parsed
                self._impl.bytes_received += nxt - pos
                channel, on_delivery, on_confirm = entry
                if channel.is_open:
                    if on_delivery is not None:
                        self.fast += 1
                        on_delivery(channel, method, properties, body)
                    else:
                        on_confirm(_U64.unpack_from(buf, pos + 11)[0],
                                   bool(buf[pos + 19] & 1), buf[pos + 10] == 120)
                pos = nxt
        finally:
            if run >= 0:
                self._to_pika(buf[run:pos])
            self._buf = buf[pos:] if pos < size else b''

    def _to_pika(self, frames: bytes) -> None:
        if frames and not self._impl.is_closed:
            self._pika_on_data(frames)


def _short_string(buf: bytes, offset: int) -> Tuple[str, int]:
    length = buf[offset]
    offset += 1
    return buf[offset:offset + length].decode('utf-8'), offset + length


class _Incomplete(Exception):
    """The rest of a message has not arrived yet."""


def _content_frame(buf: bytes, pos: int, size: int, ftype: int, channel_number: int) -> int:
    """Index of the end octet of the ``ftype`` frame of ``channel_number`` at ``pos``.

    Raises ``_Incomplete`` when it is not all in ``buf`` yet, ``ValueError`` when the frame
    there is another one (or malformed)."""
    if size - pos < 8:
        raise _Incomplete
    found, channel, length = _FRAME_HEADER.unpack_from(buf, pos)
    end = pos + 7 + length
    if found != ftype or channel != channel_number:
        raise ValueError(f'frame type {found} on channel {channel} inside a delivery')
    if end >= size:
        raise _Incomplete
    if buf[end] != _FRAME_END:
        raise ValueError('bad frame end')
    return end


def _parse_delivery(buf: bytes, pos: int, end: int, size: int, channel_number: int) -> Any:
    """The delivery whose method frame is at ``pos`` (its end octet at ``end``):
    ``(next position, method, properties, body)``; None when its frames are not all in
    ``buf`` yet; False when they are not a well-formed delivery (pika then reads them)."""
    try:
        offset = pos + 11
        consumer_tag, offset = _short_string(buf, offset)
        delivery_tag = _U64.unpack_from(buf, offset)[0]
        redelivered = bool(buf[offset + 8] & 1)
        exchange, offset = _short_string(buf, offset + 9)
        routing_key, offset = _short_string(buf, offset)
        if offset != end:
            return False
        hpos = end + 1
        hend = _content_frame(buf, hpos, size, _FRAME_HEADER_TYPE, channel_number)
        _class, _weight, body_size = _BODY_SIZE.unpack_from(buf, hpos + 7)
        properties = pika.spec.BasicProperties()
        properties.decode(buf, hpos + 19)
        chunks = []
        got = 0
        bpos = hend + 1
        while got < body_size:
            bend = _content_frame(buf, bpos, size, _FRAME_BODY, channel_number)
            chunks.append(buf[bpos + 7:bend])
            got += bend - bpos - 7
            bpos = bend + 1
        if got != body_size:
            return False
    except _Incomplete:
        return None
    except Exception:            # malformed: pika reads it and reports it its own way
        return False
    body = chunks[0] if len(chunks) == 1 else b''.join(chunks)
    method = pika.spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange,
                                     routing_key)
    return bpos, method, properties, bytes(body)
