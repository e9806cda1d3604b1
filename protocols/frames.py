"""Frames: an unsigned varint length, then one canonical CBOR message (DESIGN §8).

`FrameDecoder` is sans-I/O: it takes bytes as they arrive and returns whole messages. It refuses a
declared length over its cap before buffering the body, so it never holds more than one frame.
"""

from __future__ import annotations

from typing import Final

from protocols import cbor
from protocols.cbor import CBORValue
from protocols.cid import decode_varint, encode_varint
from protocols.errors import MalformedInput, TooLarge

MAX_LENGTH_BYTES: Final = 9  # a varint of 9 bytes already declares more than any cap we use


def encode_frame(value: CBORValue) -> bytes:
    """One frame: varint(len(body)) ‖ body, body the canonical CBOR of `value`."""
    return b"".join(frame_parts(value))


def frame_parts(value: CBORValue) -> list[bytes]:
    """`encode_frame(value)` in pieces, as `cbor.encode_parts` splits the body: a block in a
    message is written from where it lies, not copied into the frame."""
    parts = cbor.encode_parts(value)
    parts[0] = encode_varint(sum(map(len, parts))) + parts[0]
    return parts


class FrameDecoder:
    """Splits a byte stream into CBOR messages, each at most `max_frame` bytes of body and
    `max_items` CBOR items.

    After it raises (TooLarge for a declared length over the cap, MalformedInput for anything
    else) the decoder stays failed: the stream is out of step and must be closed.

    The body of a frame of `large` bytes or more is kept as the pieces that arrived and joined
    once when complete, so each of its bytes is copied once, not into a buffer and out again.
    """

    def __init__(
        self,
        max_frame: int,
        large: int = cbor.BULK_BYTES,
        *,
        max_items: int = cbor.DEFAULT_MAX_ITEMS,
    ) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.max_items = max_items  # per message, refused before it is decoded
        self.large = large
        self._buffer = bytearray()  # bytes not yet placed: lengths, small frames
        self._length: int | None = None  # declared body length of the frame being read
        self._pieces: list[bytes] | None = None  # the body so far of a large frame
        self._have = 0  # bytes in _pieces
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (at most max_frame + 9)."""
        return len(self._buffer) + self._have

    @property
    def in_frame(self) -> bool:
        """Part of a frame has been fed and the rest has not."""
        return bool(self._buffer) or self._length is not None

    @property
    def missing(self) -> int:
        """Bytes still to come of a large frame's body (0 when not inside one): what a reader
        may ask for at once."""
        return 0 if self._length is None or self._pieces is None else self._length - self._have

    def feed(self, data: bytes | bytearray | memoryview) -> list[CBORValue]:
        """Take the next bytes of the stream; return the messages they complete, in order."""
        if self._failed:
            raise MalformedInput("the frame decoder already failed on this stream")
        try:
            messages: list[CBORValue] = []
            if self._pieces is not None:
                data = self._collect(bytes(data), messages)
            if self._pieces is None:
                self._buffer += data
                self._drain(messages)
            return messages
        except (MalformedInput, TooLarge):
            self._failed = True
            self._buffer.clear()
            self._pieces, self._have = None, 0
            raise

    def end(self) -> None:
        """The stream ended: fine between frames, MalformedInput inside one."""
        if self._failed:
            raise MalformedInput("the frame decoder already failed on this stream")
        if self.in_frame:
            self._failed = True
            raise MalformedInput("the stream ended inside a frame")

    def _collect(self, data: bytes, messages: list[CBORValue]) -> bytes:
        """Add to the large frame's body; once complete, decode it. The bytes after it."""
        assert self._pieces is not None  # feed calls this only inside a large frame
        assert self._length is not None
        need = self._length - self._have
        self._pieces.append(data[:need])  # the very object when it all belongs to the body
        self._have += min(need, len(data))
        if self._have < self._length:
            return b""
        body = b"".join(self._pieces)
        self._pieces, self._have, self._length = None, 0, None
        messages.append(cbor.decode(body, limit=self.max_frame, max_items=self.max_items))
        return data[need:]

    def _drain(self, messages: list[CBORValue]) -> None:
        start = 0
        buffer = self._buffer
        while True:
            if self._length is None:
                length_end = _varint_end(buffer, start)
                if length_end is None:
                    break
                length, _ = decode_varint(bytes(buffer[start:length_end]), 0, MAX_LENGTH_BYTES)
                start = length_end
                if length > self.max_frame:
                    raise TooLarge(
                        f"a frame of {length} bytes is over the limit of {self.max_frame}"
                    )
                if length == 0:
                    raise MalformedInput("empty frame")
                self._length = length
            if len(buffer) - start < self._length:
                if self._length >= self.large:  # the rest of its body is collected as it comes
                    with memoryview(buffer) as view:
                        first = bytes(view[start:])
                    start = len(buffer)
                    self._pieces, self._have = [first], len(first)
                break
            end = start + self._length
            with memoryview(buffer) as view:  # one copy of the body, not two
                body = bytes(view[start:end])
            messages.append(cbor.decode(body, limit=self.max_frame, max_items=self.max_items))
            start, self._length = end, None
        del buffer[:start]


def _varint_end(buffer: bytearray, start: int) -> int | None:
    """Offset just past a varint starting at `start`, or None if it is not complete yet."""
    for i in range(start, min(len(buffer), start + MAX_LENGTH_BYTES)):
        if not buffer[i] & 0x80:
            return i + 1
    if len(buffer) - start >= MAX_LENGTH_BYTES:
        raise MalformedInput("frame length varint too long")
    return None
