"""nftables change events (`nft monitor`): a netlink socket in the NFNLGRP_NFTABLES group.

Every committed nftables transaction ends with an NFT_MSG_NEWGEN message that carries the id of
the thread that committed it (NFTA_GEN_PROC_PID), so a listener can tell its own transactions
from everybody else's, and the ruleset's new generation (NFTA_GEN_ID, one more at every commit).
The socket is non-blocking: an event loop reads it when it is readable. generation() asks for
the current one (NFT_MSG_GETGEN, as `nft list ruleset` does first).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from netns import nlmsg
from netns.nlmsg import attributes

__all__ = ["attributes"]  # read here, and by nftrace.py and the tests from here

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNLGRP_NFTRACE = 9
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
GENERATIONS = 1 << 32  # the ruleset's generation is a u32 that wraps (past 0: the kernel skips it)
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLMSG_HEADER = nlmsg.HEADER
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id
UNKNOWN = -1  # a commit whose author is unknown (events were lost: the queue overflowed)


@dataclass(frozen=True)
class Commit:
    """One committed nftables transaction: the committing thread's id and its process's name,
    and the ruleset's generation it made (None: not said)."""

    pid: int
    name: str = "?"
    generation: int | None = None

    def ours(self) -> bool:
        """Made by one of this process's threads (libnftables runs in-process)? Sure only
        where this process's pids are the kernel's own (pids_are_global())."""
        return self.pid != UNKNOWN and os.path.exists(f"/proc/self/task/{self.pid}")

    def __str__(self) -> str:
        return "unknown (events lost)" if self.pid == UNKNOWN else f"pid {self.pid} ({self.name})"


class NftEvents:
    """`nft monitor` without the text: the committers' thread ids, as they come."""

    def __init__(self) -> None:
        self._sock = open_group(NFNLGRP_NFTABLES)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Commit]:
        """The thread ids of every transaction committed since the last read (UNKNOWN when the
        kernel dropped events because nobody read them in time)."""
        committers: list[Commit] = []
        for data in receive(self._sock):
            if data is None:
                committers.append(Commit(UNKNOWN))
            else:
                committers.extend(parse_commits(data))
        return committers

    def close(self) -> None:
        self._sock.close()


def parse_commits(data: bytes) -> list[Commit]:
    """The commit (NFT_MSG_NEWGEN) messages in a netlink datagram."""
    newgen = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
    return [_commit(attributes(body[NFGENMSG.size :])) for body in messages(data, newgen)]


def _commit(attrs: dict[int, bytes]) -> Commit:
    pid, name = UNKNOWN, "?"
    value = attrs.get(NFTA_GEN_PROC_PID)
    if value is not None and len(value) == 4:
        pid = int(struct.unpack("!I", value)[0])
    value = attrs.get(NFTA_GEN_PROC_NAME)
    if value is not None:
        name = value.split(b"\0", 1)[0].decode(errors="replace")
    return Commit(pid, name, _generation(attrs))


def _generation(attrs: dict[int, bytes]) -> int | None:
    value = attrs.get(NFTA_GEN_ID)
    return int(struct.unpack("!I", value)[0]) if value is not None and len(value) == 4 else None


def next_generation(generation: int) -> int:
    """The generation one commit after this one."""
    return (generation + 1) % GENERATIONS or 1


def pids_are_global() -> bool:
    """Are this process's pids those of the kernel's first pid namespace, as the events'
    NFTA_GEN_PROC_PID is (`grep NSpid /proc/self/status`: one number)? Not in a container with
    a pid namespace of its own: there a host process may have the pid of one of our threads."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        pass
    return False


def generation() -> int:
    """The ruleset's current generation (NFT_MSG_GETGEN) in the calling thread's network
    namespace: it changes at every committed transaction, whoever commits it."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        body = NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
        sock.send(
            NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, NLM_F_REQUEST, 1, 0) + body
        )
        while True:
            data = sock.recv(1 << 16)
            _raise_error(data)
            for reply in messages(data, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN):
                found = _generation(attributes(reply[NFGENMSG.size :]))
                if found is not None:
                    return found


def _raise_error(data: bytes) -> None:
    """An NLMSG_ERROR with a non-zero code in the datagram, as the OSError it stands for."""
    for body in messages(data, NLMSG_ERROR):
        code = -struct.unpack_from("=i", body)[0]
        if code:
            raise OSError(code, f"nftables generation: {os.strerror(code)}")


# ---------------------------------------------------------------- nfnetlink, shared with nftrace
def open_group(group: int, protocol: int = NETLINK_NETFILTER) -> socket.socket:
    """A non-blocking netlink socket subscribed to a multicast group (NFNLGRP_*; RTNLGRP_* with
    NETLINK_ROUTE), in the calling thread's network namespace, with a 1 MiB receive buffer."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def receive(sock: socket.socket) -> Iterator[bytes | None]:
    """The datagrams waiting on a non-blocking socket, until none is left; None where the kernel
    dropped some (ENOBUFS: the receive buffer overflowed, nobody read in time)."""
    while True:
        try:
            yield sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            yield None


def messages(data: bytes, kind: int) -> Iterator[bytes]:
    """The bodies (what follows the netlink header: nfgenmsg, then attributes) of the messages
    of this type ((subsystem << 8) | message) in a netlink datagram."""
    return (body for found, _seq, body in nlmsg.frames(data) if found == kind)
