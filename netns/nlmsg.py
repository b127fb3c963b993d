"""Reading netlink datagrams (linux/netlink.h): their messages and a message's attributes, for
the sockets netns reads itself (rtnl.py's answers, nfevents.py's and nftrace.py's events)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
ATTR_HEADER = struct.Struct("=HH")  # nlattr: length, type
ATTR_TYPE_MASK = 0x3FFF  # the type without the nested and byte-order flags


def frames(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, body) of each message in a datagram; the body is what follows
    the header. A length shorter than a header ends the datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _port = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        yield kind, seq, data[offset + HEADER.size : offset + length]
        offset += (length + 3) & ~3


def attributes(data: bytes) -> dict[int, bytes]:
    """A run of netlink attributes by type (nesting and byte-order flags masked off); the last
    one wins when a type repeats."""
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + ATTR_HEADER.size <= len(data):
        length, kind = ATTR_HEADER.unpack_from(data, offset)
        if length < ATTR_HEADER.size:
            break
        attrs[kind & ATTR_TYPE_MASK] = data[offset + ATTR_HEADER.size : offset + length]
        offset += (length + 3) & ~3
    return attrs
