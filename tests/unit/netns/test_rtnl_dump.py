"""netns/rtnl.py's dump, against a socket that answers what the kernel would. No root needed."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from netns import nlmsg
from netns.rtnl import NLMSG_DONE, RTM_GETNSID, RTM_NEWNSID, Rtnl


def _message(kind: int, seq: int, body: bytes) -> bytes:
    return nlmsg.HEADER.pack(nlmsg.HEADER.size + len(body), kind, 2, seq, 0) + body


def _nsid(seq: int, nsid: int) -> bytes:
    attr = struct.pack("=HHi", 8, 1, nsid)  # NETNSA_NSID
    return _message(RTM_NEWNSID, seq, struct.pack("=Bxxx", socket.AF_UNSPEC) + attr)


class Answers:
    """A socket whose recv() gives these datagrams, one a call, and which keeps what was sent."""

    def __init__(self, *datagrams: bytes) -> None:
        self.datagrams = list(datagrams)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.datagrams.pop(0)

    def close(self) -> None:
        pass


def _rtnl(answers: Answers) -> Rtnl:
    rtnl = Rtnl()
    rtnl._sock.close()
    rtnl._sock = answers  # type: ignore[assignment]
    return rtnl


def test_a_dump_over_several_datagrams_ends_at_its_done_and_skips_other_answers() -> None:
    answers = Answers(
        _nsid(1, 7) + _nsid(99, 8),  # 99: an answer to an earlier request, not this one
        _nsid(1, 2147483646),
        _message(NLMSG_DONE, 1, struct.pack("=i", 0)),
    )
    assert _rtnl(answers).nsids() == [7, 2147483646]
    length, kind, flags, seq, _ = nlmsg.HEADER.unpack_from(answers.sent[0])
    assert (kind, flags, seq, length) == (RTM_GETNSID, 0x301, 1, nlmsg.HEADER.size + 4)


def test_a_dump_that_failed_midway_says_so_in_its_done() -> None:
    answers = Answers(_nsid(1, 7), _message(NLMSG_DONE, 1, struct.pack("=i", -errno.EINTR)))
    with pytest.raises(NetlinkError) as refused:
        _rtnl(answers).nsids()
    assert refused.value.code == errno.EINTR
