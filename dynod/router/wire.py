"""What the daemon and the router's worker processes say to each other, on a Unix stream
socket pair: frames of a 4-byte big-endian length and a JSON value.

daemon -> worker: ``{"table": RouteTable.to_wire()}`` on every change (a whole table, so a
worker that starts late or restarts needs only the last one). worker -> daemon: ``{"logs":
[[line, app], ...]}``, the router log lines of the last few milliseconds in one frame.
Listening sockets travel on a second, datagram socket pair (`send_listen`), with SCM_RIGHTS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

__all__ = ["MAX_FRAME", "frame", "read_frame", "recv_listen", "send_listen"]

MAX_FRAME = 64 << 20  # a route table of 100,000 dynos is a few MB
_LENGTH = struct.Struct(">I")


def frame(value: Any) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next value, or None at EOF (the other side is gone)."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_FRAME:
            raise ValueError(f"a frame of {length} bytes")
        return json.loads(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        return None


def send_listen(channel: socket.socket, key: str, sock: socket.socket | None) -> None:
    """Serve `sock` as `key` ("main" or a space's address); None: stop serving `key`."""
    message = json.dumps({"key": key, "listen": sock is not None}).encode()
    socket.send_fds(channel, [message], [sock.fileno()] if sock is not None else [])


def recv_listen(channel: socket.socket) -> tuple[str, socket.socket | None] | None:
    """The next listen message (non-blocking channel: None when there is none)."""
    try:
        message, fds, _flags, _addr = socket.recv_fds(channel, 4096, 1)
    except BlockingIOError:
        return None
    if not message:
        raise EOFError
    parsed = json.loads(message)
    sock = socket.socket(fileno=fds[0]) if fds else None
    return str(parsed["key"]), sock
