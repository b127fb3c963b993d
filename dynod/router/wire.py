"""What the daemon and the router's worker processes say to each other, on a Unix stream
socket pair: frames of a 4-byte big-endian length and a JSON value.

daemon -> worker: ``{"table": RouteTable.to_wire()}`` once, when the worker (re)starts, then
``{"changes": [change_to_wire(...), ...]}`` per change: one app's route, one space's ranges, or
one web dyno in or out of its app's backends, so that a dyno's start costs the same on the wire
however many dynos run (`routed` applies either). worker -> daemon: ``{"logs":
[[line, app], ...]}``, the router log lines of the last few milliseconds in one frame.
Listening sockets travel on a second, datagram socket pair (`send_listen`), with SCM_RIGHTS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

from dynod.router.routes import Backend, RouteChange, RouteTable, change_from_wire, change_to_wire

__all__ = [
    "MAX_FRAME",
    "changes_frame",
    "frame",
    "read_frame",
    "recv_listen",
    "routed",
    "send_listen",
    "table_frame",
]

MAX_FRAME = 64 << 20  # a route table of 100,000 dynos is a few MB
_LENGTH = struct.Struct(">I")


def frame(value: Any) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


def table_frame(table: RouteTable) -> bytes:
    return frame({"table": table.to_wire()})


def changes_frame(changes: Sequence[RouteChange]) -> bytes:
    return frame({"changes": [change_to_wire(c) for c in changes]})


def routed(table: RouteTable, message: Any) -> tuple[RouteTable, list[Backend] | None] | None:
    """The table a worker routes by after `message` (from `table`, its last one), and the
    backends the changes took out (None: a whole table); None: the message says nothing of
    routes."""
    if "table" in message:
        return RouteTable.from_wire(message["table"]), None
    if "changes" in message:
        gone: list[Backend] = []
        for data in message["changes"]:
            change = change_from_wire(data)
            gone += table.dropped(change)
            table = table.changed(change)
        return table, gone
    return None


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
