"""nftables change events (`nft monitor`): a netlink socket in the NFNLGRP_NFTABLES group.

Every committed nftables transaction ends with an NFT_MSG_NEWGEN message that carries the id of
the thread that committed it (NFTA_GEN_PROC_PID), so a listener can tell its own transactions
from everybody else's. The socket is non-blocking: an event loop reads it when it is readable.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
NLMSG_HEADER = struct.Struct("=IHHII")
NFGENMSG_SIZE = 4
NLA_HEADER = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF
UNKNOWN = -1  # a commit whose author is unknown (events were lost: the queue overflowed)


@dataclass(frozen=True)
class Commit:
    """One committed nftables transaction: the committing thread's id and its process's name."""

    pid: int
    name: str = "?"

    def ours(self) -> bool:
        """Made by one of this process's threads (libnftables runs in-process)?"""
        return self.pid != UNKNOWN and os.path.exists(f"/proc/self/task/{self.pid}")

    def __str__(self) -> str:
        return "unknown (events lost)" if self.pid == UNKNOWN else f"pid {self.pid} ({self.name})"


class NftEvents:
    """`nft monitor` without the text: the committers' thread ids, as they come."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER
        )
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Commit]:
        """The thread ids of every transaction committed since the last read (UNKNOWN when the
        kernel dropped events because nobody read them in time)."""
        committers: list[Commit] = []
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return committers
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                committers.append(Commit(UNKNOWN))
                continue
            committers.extend(parse_commits(data))

    def close(self) -> None:
        self._sock.close()


def parse_commits(data: bytes) -> list[Commit]:
    """The commit (NFT_MSG_NEWGEN) messages in a netlink datagram."""
    found = []
    offset = 0
    newgen = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _seq, _port = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            break
        if kind == newgen:
            attrs = data[offset + NLMSG_HEADER.size + NFGENMSG_SIZE : offset + length]
            found.append(_commit(attrs))
        offset += (length + 3) & ~3
    return found


def _commit(attrs: bytes) -> Commit:
    pid, name = UNKNOWN, "?"
    offset = 0
    while offset + NLA_HEADER.size <= len(attrs):
        length, kind = NLA_HEADER.unpack_from(attrs, offset)
        if length < NLA_HEADER.size:
            break
        value = attrs[offset + NLA_HEADER.size : offset + length]
        if kind & NLA_TYPE_MASK == NFTA_GEN_PROC_PID and len(value) == 4:
            pid = int(struct.unpack("!I", value)[0])
        elif kind & NLA_TYPE_MASK == NFTA_GEN_PROC_NAME:
            name = value.split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return Commit(pid, name)
