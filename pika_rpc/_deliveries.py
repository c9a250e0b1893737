"""Deliveries and confirms read straight from the connection's input, ahead of pika.

Receiving a message through pika costs three generic frame decodes, callback-registry
lookups per frame, the channel's content assembler and the consumer lookup: most of the
I/O thread's time per result (issue 9). For the channels it is given (our consumer
channels), a :class:`DeliveryReader` parses the frames of a delivery itself —
``Basic.Deliver``, the content header, the body frames — and calls the channel's handler
with the same ``(method, properties, body)`` pika would pass. The same goes for the
``Basic.Ack``/``Basic.Nack`` frames of the publish channel (``register_confirms``), which
settle publications (``_confirms.Pipeline.on_confirm``). Every other frame (any other
method, heartbeats, other channels, anything it does not recognise) goes to pika unchanged
and in order: frames before a delivery are handed to pika before the delivery is handled.

Two paths, one result:

* A delivery whose frames are all in what has been read (small results: most of them) is
  parsed in one go, the fast path.
* A delivery that is not (its frames span socket reads; pika reads 4 KB at a time) is
  *assembled*: its method and header frames are parsed once, then its body is collected
  as it arrives, each byte copied once into one buffer (a body frame split over reads is
  taken piece by piece, never buffered and re-parsed), which becomes the body without
  another copy. Receiving is linear in the body size. Frames of other channels may come
  between its content frames (AMQP allows it; RabbitMQ does not do it, as it writes a
  message's frames in one go): they are handled in order as they come, so pika sees
  heartbeats and its channels' frames without waiting for the delivery. A protocol
  violation in a delivery being assembled (a body longer than its header said, a bad
  frame end, a method frame before its content is complete) raises the exception pika's
  own reader raises, which aborts the connection as pika would.

Bytes count as received (``bytes_received``, which pika's heartbeat checker watches) as
they are consumed: a large delivery arriving slowly keeps the connection alive.

It takes over the connection's frame reader through ``_pika.Wire.take_reader`` (the pika
internals it relies on are named and checked in ``_pika``); what it touches of pika here is
public: ``bytes_received``, ``is_closed``, ``pika.spec``/``pika.frame``. The properties are
decoded by pika's own ``BasicProperties.decode``; :func:`check_parser` checks once per
process that a delivery pika marshals reads back whole. I/O thread only.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
from typing import Any, Callable, Dict, Optional, Tuple

import pika
import pika.exceptions
import pika.frame
import pika.spec

from ._pika import PikaContractError

LOGGER = logging.getLogger(__name__)

__all__ = ['DeliveryReader', 'check_parser']

_FRAME_HEADER = struct.Struct('>BHI')  # type, channel, payload size
_DELIVER = b'\x00\x3c\x00\x3c'  # class 60 (basic), method 60 (deliver)
_FRAME_METHOD, _FRAME_HEADER_TYPE, _FRAME_BODY = 1, 2, 3
_FRAME_END = 0xCE
_U64 = struct.Struct('>Q')
_BODY_SIZE = struct.Struct('>HHQ')  # class, weight, body size

Handler = Callable[[Any, pika.spec.Basic.Deliver, pika.spec.BasicProperties, bytes], None]
ConfirmHandler = Callable[[int, bool, bool], None]
_Entry = Tuple[Any, Optional[Handler], Optional[ConfirmHandler]]
_CONFIRMS = (b'\x00\x3c\x00\x50', b'\x00\x3c\x00\x78')  # basic.ack (80), basic.nack (120)


class _Assembly:
    """A delivery of a registered channel whose frames have not all been read yet."""

    __slots__ = ('entry', 'method', 'properties', 'left', 'body')

    def __init__(self, entry: _Entry, method: pika.spec.Basic.Deliver) -> None:
        self.entry = entry
        self.method = method
        self.properties: Optional[pika.spec.BasicProperties] = None  # until its header
        self.left = 0  # body bytes still to come (known from the header)
        # Each piece is copied in as it is read; getvalue() at the end hands over this
        # buffer without copying it again (no join of the whole body after its last byte).
        self.body = io.BytesIO()


class DeliveryReader:
    """Installed on one connection (a ``_pika.Wire``) for its lifetime.

    Raises ``PikaContractError`` when pika's frames do not parse as expected."""

    def __init__(self, wire: Any) -> None:
        check_parser()
        self._conn = wire.impl  # pika's connection: bytes_received, is_closed
        # channel number -> (channel, delivery handler, None) or (channel, None, confirm handler)
        self._handlers: Dict[int, _Entry] = {}
        # channel number -> its delivery being assembled (several only if the broker
        # interleaves channels' content frames)
        self._assembling: Dict[int, _Assembly] = {}
        # The body frame being read piece by piece: its delivery, its channel, and how many
        # of its bytes (payload + the frame-end octet) are still to come; 0 when none.
        self._stream: Optional[_Assembly] = None
        self._stream_channel = 0
        self._stream_left = 0
        # A partial frame pika may hold already becomes the start of our buffer.
        self._pika_on_data, self._buf = wire.take_reader(self._on_data)
        self.fast = 0  # deliveries read here (for stats and tests)

    def register(self, channel: Any, handler: Handler) -> None:
        """Read the deliveries of ``channel`` (a ``pika.channel.Channel``) here from now on;
        ``handler(channel, method, properties, body)`` as pika's ``on_message_callback``."""
        self._handlers[channel.channel_number] = (channel, handler, None)

    def register_confirms(self, channel: Any, on_confirm: 'ConfirmHandler') -> None:
        """Read ``Basic.Ack``/``Basic.Nack`` of ``channel`` (in confirm mode) here:
        ``on_confirm(delivery_tag, multiple, nack)``."""
        self._handlers[channel.channel_number] = (channel, None, on_confirm)

    def unregister(self, channel: Any) -> None:
        """Leave ``channel``'s frames to pika from now on. A delivery of it being assembled
        is still read to its end here (pika never saw its start), then dropped."""
        entry = self._handlers.get(channel.channel_number)
        if entry is not None and entry[0] is channel:
            del self._handlers[channel.channel_number]

    def _on_data(self, data: bytes) -> None:
        # pika's transport hands every socket read here (I/O thread), in order.
        if self._stream_left:  # inside a body frame of ours
            pos = self._stream_body(data)
            if pos == len(data):
                return
            buf = data
        else:
            buf = self._buf + data if self._buf else data
            pos = 0
        size = len(buf)
        run = -1  # start of frames waiting to be handed to pika
        handlers = self._handlers
        assembling = self._assembling
        try:
            while size - pos >= 8:
                ftype, channel_number, length = _FRAME_HEADER.unpack_from(buf, pos)
                end = pos + 7 + length  # index of the frame-end octet
                if end >= size:
                    if ftype == _FRAME_BODY and channel_number in assembling:
                        if run >= 0:  # pika's frames come first
                            frames, run = buf[run:pos], -1
                            self._to_pika(frames)
                        pos = self._start_stream(buf, pos, size, channel_number, length)
                    break
                if channel_number in assembling:  # a frame of a delivery being read
                    if run >= 0:
                        frames, run = buf[run:pos], -1
                        self._to_pika(frames)
                        if self._conn.is_closed:
                            pos = size
                            break
                    start, pos = pos, end + 1  # consumed, whatever a handler does
                    self._content_frame(buf, start, end, ftype, channel_number)
                    continue
                entry = handlers.get(channel_number) if ftype == _FRAME_METHOD else None
                parsed: Any = False
                if entry is not None and buf[end] == _FRAME_END:
                    kind = buf[pos + 7 : pos + 11]
                    if entry[1] is None and length == 13 and kind in _CONFIRMS:
                        parsed = end + 1, None, None, None  # a publisher confirm
                    elif entry[1] is not None and kind == _DELIVER:
                        parsed = _parse_delivery(buf, pos, end, size, channel_number)
                if parsed is False:  # pika's frame
                    if run < 0:
                        run = pos
                    pos = end + 1
                    continue
                if run >= 0:  # pika's frames come first
                    frames, run = buf[run:pos], -1
                    self._to_pika(frames)
                    if self._conn.is_closed:  # nothing more to read
                        pos = size
                        break
                    if channel_number not in handlers:  # pika closed that channel
                        continue
                if parsed is None:  # a delivery not all here: assemble it
                    self._assembling[channel_number] = _Assembly(
                        entry,  # type: ignore[arg-type]  # parsed: entry is not None
                        _parse_deliver_method(buf, pos, end),
                    )
                    self._conn.bytes_received += end + 1 - pos
                    pos = end + 1
                    continue
                nxt, method, properties, body = parsed
                self._conn.bytes_received += nxt - pos
                start, pos = pos, nxt  # consumed, whatever the handler does
                channel, on_delivery, on_confirm = entry  # type: ignore[misc]  # as above
                if channel.is_open:
                    if on_delivery is not None:
                        self.fast += 1
                        on_delivery(channel, method, properties, body)
                    else:
                        on_confirm(  # type: ignore[misc]  # a confirm entry has it
                            _U64.unpack_from(buf, start + 11)[0],
                            bool(buf[start + 19] & 1),
                            buf[start + 10] == 120,
                        )
        finally:
            if run >= 0:
                frames, run = buf[run:pos], -1
                self._to_pika(frames)
            self._buf = buf[pos:] if pos < size else b''

    def _content_frame(
        self, buf: bytes, pos: int, end: int, ftype: int, channel_number: int
    ) -> None:
        """Take the whole frame at ``pos`` (its end octet at ``end``) of the delivery being
        assembled on ``channel_number``: its header or a body frame."""
        assembly = self._assembling[channel_number]
        if buf[end] != _FRAME_END:
            raise pika.exceptions.InvalidFrameError('Invalid FRAME_END marker')
        if ftype == _FRAME_HEADER_TYPE and assembly.properties is None:
            body_size = _BODY_SIZE.unpack_from(buf, pos + 7)[2]
            properties = pika.spec.BasicProperties()
            properties.decode(buf, pos + 19)
            assembly.properties, assembly.left = properties, body_size
        elif ftype == _FRAME_BODY and assembly.properties is not None:
            length = end - pos - 7
            if length > assembly.left:
                raise _too_long(assembly, length)
            if length:
                assembly.body.write(memoryview(buf)[pos + 7 : end])
                assembly.left -= length
        else:
            raise _unexpected(ftype, channel_number, assembly)
        self._conn.bytes_received += end + 1 - pos
        if not assembly.left and assembly.properties is not None:
            self._complete(channel_number)

    def _start_stream(
        self, buf: bytes, pos: int, size: int, channel_number: int, length: int
    ) -> int:
        """The body frame at ``pos`` is not all read: take what is here, read the rest as it
        comes (``_stream_body``). Returns the new position (``size``)."""
        assembly = self._assembling[channel_number]
        if assembly.properties is None:
            raise _unexpected(_FRAME_BODY, channel_number, assembly)
        if length > assembly.left:
            raise _too_long(assembly, length)
        got = size - pos - 7  # < length + 1: the end octet is not here
        if got > length:
            got = length
        assembly.body.write(memoryview(buf)[pos + 7 : pos + 7 + got])
        assembly.left -= got
        self._stream, self._stream_channel = assembly, channel_number
        self._stream_left = length + 1 - got
        self._conn.bytes_received += size - pos
        return size

    def _stream_body(self, data: bytes) -> int:
        """Read the rest of the body frame being streamed from ``data``: how much of ``data``
        it took."""
        left = self._stream_left
        assembly: _Assembly = self._stream  # type: ignore[assignment]  # set while streaming
        n = len(data)
        if n < left:  # all payload: the end octet comes later
            assembly.body.write(data)
            assembly.left -= n
            self._stream_left = left - n
            self._conn.bytes_received += n
            return n
        if left > 1:
            assembly.body.write(memoryview(data)[: left - 1])
            assembly.left -= left - 1
        if data[left - 1] != _FRAME_END:
            raise pika.exceptions.InvalidFrameError('Invalid FRAME_END marker')
        self._stream, self._stream_left = None, 0
        self._conn.bytes_received += left
        if not assembly.left:
            self._complete(self._stream_channel)
        return left

    def _complete(self, channel_number: int) -> None:
        """The delivery assembled on ``channel_number`` is all read: hand it on."""
        assembly = self._assembling.pop(channel_number)
        body = assembly.body.getvalue()
        channel, on_delivery, _ = assembly.entry
        if self._handlers.get(channel_number) is assembly.entry and channel.is_open:
            self.fast += 1
            on_delivery(channel, assembly.method, assembly.properties, body)  # type: ignore[misc, arg-type]

    def _to_pika(self, frames: bytes) -> None:
        if frames and not self._conn.is_closed:
            self._pika_on_data(frames)


def _too_long(assembly: _Assembly, length: int) -> Exception:
    return pika.exceptions.BodyTooLongError(
        f'a body frame of {length} bytes where {assembly.left} were left of delivery '
        f'{assembly.method.delivery_tag}'
    )


def _unexpected(ftype: int, channel_number: int, assembly: _Assembly) -> Exception:
    return pika.exceptions.UnexpectedFrameError(
        f'frame type {ftype} on channel {channel_number} while delivery '
        f'{assembly.method.delivery_tag} was not complete'
    )


def _short_string(buf: bytes, offset: int) -> Tuple[str, int]:
    length = buf[offset]
    offset += 1
    return buf[offset : offset + length].decode('utf-8'), offset + length


def _parse_deliver_method(buf: bytes, pos: int, end: int) -> Any:
    """The ``Basic.Deliver`` of the method frame at ``pos`` (its end octet at ``end``);
    ``None`` when it is malformed."""
    try:
        offset = pos + 11
        consumer_tag, offset = _short_string(buf, offset)
        delivery_tag = _U64.unpack_from(buf, offset)[0]
        redelivered = bool(buf[offset + 8] & 1)
        exchange, offset = _short_string(buf, offset + 9)
        routing_key, offset = _short_string(buf, offset)
    except Exception:  # malformed: pika reads it and reports it its own way
        return None
    if offset != end:
        return None
    return pika.spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)


def _parse_delivery(buf: bytes, pos: int, end: int, size: int, channel_number: int) -> Any:
    """The delivery whose method frame is at ``pos`` (its end octet at ``end``):
    ``(next position, method, properties, body)`` when its header and body frames follow it
    in ``buf``, all there and well-formed; None when they do not (not all read yet, another
    channel's frame in between, or a bad content frame: the delivery is then assembled frame
    by frame); False when the method frame is malformed (pika then reads it)."""
    method = _parse_deliver_method(buf, pos, end)
    if method is None:
        return False
    try:
        hpos = end + 1
        hend = _content_end(buf, hpos, size, _FRAME_HEADER_TYPE, channel_number)
        if hend < 0:
            return None
        body_size = _BODY_SIZE.unpack_from(buf, hpos + 7)[2]
        chunks = []
        got = 0
        bpos = hend + 1
        while got < body_size:
            bend = _content_end(buf, bpos, size, _FRAME_BODY, channel_number)
            if bend < 0:
                return None
            chunks.append(buf[bpos + 7 : bend])
            got += bend - bpos - 7
            bpos = bend + 1
        if got != body_size:
            return None
        properties = pika.spec.BasicProperties()
        properties.decode(buf, hpos + 19)
    except Exception:  # a bad header: the assembly reports it as pika would
        return None
    body = chunks[0] if len(chunks) == 1 else b''.join(chunks)
    return bpos, method, properties, bytes(body)


def _content_end(buf: bytes, pos: int, size: int, ftype: int, channel_number: int) -> int:
    """Index of the end octet of the whole, well-formed ``ftype`` frame of
    ``channel_number`` at ``pos``; -1 when there is no such frame there (yet)."""
    if size - pos < 8:
        return -1
    found, channel, length = _FRAME_HEADER.unpack_from(buf, pos)
    end = pos + 7 + length
    if found != ftype or channel != channel_number or end >= size or buf[end] != _FRAME_END:
        return -1
    return end


# ---------------------------------------------------------------------- self-check
@functools.lru_cache(maxsize=None)
def check_parser() -> None:
    """Check once per process that a delivery marshalled by pika (``pika.frame``,
    ``BasicProperties``, ``Basic.Deliver``) parses back to the same method, properties and
    body here. Raises ``PikaContractError`` if not."""
    method = pika.spec.Basic.Deliver('ctag', 7, True, 'ex', 'rk')
    properties = pika.spec.BasicProperties(
        content_type='application/json', correlation_id='c', headers={'k': 1}
    )
    frames = (
        pika.frame.Method(1, method).marshal()
        + pika.frame.Header(1, 2, properties).marshal()
        + pika.frame.Body(1, b'{}').marshal()
    )
    end = _FRAME_HEADER.unpack_from(frames, 0)[2] + 7
    try:
        parsed = _parse_delivery(frames, 0, end, len(frames), 1)
        ok = (
            parsed not in (None, False)
            and parsed[0] == len(frames)
            and (vars(parsed[1]), vars(parsed[2]), parsed[3])
            == (vars(method), vars(properties), b'{}')
        )
    except Exception as exc:
        raise PikaContractError(
            f'pika {pika.__version__}: a delivery it marshals does not read back: {exc!r}'
        ) from exc
    if not ok:
        raise PikaContractError(
            f'pika {pika.__version__}: a delivery it marshals reads back changed'
        )
