"""The frames of an attached one-off dyno's connection (`dynod run` without --type), spoken in
both directions after the API's HTTP Upgrade (`Upgrade: dynod-attach`, answered 101).

Every frame is a 1-byte kind, a 4-byte big-endian payload length, then the payload:

    from the CLI       i  stdin bytes        what the user typed or piped
                       e  (empty)            end of stdin: the dyno's stdin is closed
                                             (on a terminal it means nothing: Ctrl-D is a byte)
                       w  rows, cols         the window's size: 2 unsigned 16-bit big-endian
    from the daemon    o  stdout bytes       (on a terminal: everything the dyno writes)
                       r  stderr bytes
                       x  status             the command's exit status: 4-byte signed
                                             big-endian, -1 when unknown; the last frame

A payload is at most MAX_PAYLOAD bytes; a longer one, or an unknown kind, ends the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dynod.errors import DynodError

PROTOCOL = "dynod-attach"
MAX_PAYLOAD = 64 << 10
HEADER = struct.Struct(">cI")

STDIN = b"i"
EOF = b"e"
RESIZE = b"w"
STDOUT = b"o"
STDERR = b"r"
EXIT = b"x"
KINDS = {STDIN, EOF, RESIZE, STDOUT, STDERR, EXIT}
SIZE = struct.Struct(">HH")
STATUS = struct.Struct(">i")


@dataclass(frozen=True)
class Frame:
    kind: bytes
    payload: bytes = b""


class BadFrame(DynodError):
    pass


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame; a payload over MAX_PAYLOAD is the caller's to split (see `data`)."""
    if kind not in KINDS:
        raise BadFrame(f"unknown frame kind {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise BadFrame(f"a frame of {len(payload)} bytes; at most {MAX_PAYLOAD} are sent")
    return HEADER.pack(kind, len(payload)) + payload


def data(kind: bytes, payload: bytes) -> bytes:
    """Bytes of any length as frames of `kind` of at most MAX_PAYLOAD each (none for b"")."""
    view = memoryview(payload)
    return b"".join(
        encode(kind, bytes(view[i : i + MAX_PAYLOAD])) for i in range(0, len(view), MAX_PAYLOAD)
    )


def resize(rows: int, cols: int) -> bytes:
    return encode(RESIZE, SIZE.pack(_size(rows), _size(cols)))


def exit_status(status: int | None) -> bytes:
    return encode(EXIT, STATUS.pack(-1 if status is None else status))


def window(frame: Frame) -> tuple[int, int]:
    """A resize frame's (rows, cols)."""
    if len(frame.payload) != SIZE.size:
        raise BadFrame(f"a resize frame holds {SIZE.size} bytes, not {len(frame.payload)}")
    rows, cols = SIZE.unpack(frame.payload)
    return rows, cols


def status_of(frame: Frame) -> int | None:
    """An exit frame's status; None when the daemon did not know it."""
    if len(frame.payload) != STATUS.size:
        raise BadFrame(f"an exit frame holds {STATUS.size} bytes, not {len(frame.payload)}")
    (status,) = STATUS.unpack(frame.payload)
    return None if status < 0 else int(status)


def _size(value: int) -> int:
    return max(0, min(int(value), 0xFFFF))


class Decoder:
    """Bytes in, whole frames out; holds at most one frame's worth of bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if kind not in KINDS:
                raise BadFrame(f"unknown frame kind {kind!r}")
            if length > MAX_PAYLOAD:
                raise BadFrame(f"a frame of {length} bytes; at most {MAX_PAYLOAD} are taken")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(kind, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet whole."""
        return len(self._buffer)
