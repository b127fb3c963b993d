"""netns/rtnl.py's dump, against a socket that answers what the kernel would. No root needed."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from netns import nlmsg
from netns.rtnl import NLMSG_DONE, RTM_GETNSID, RTM_NEWNSID, Rtnl, route_of


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


def _route_body(*attrs: tuple[int, bytes], tos: int = 0) -> bytes:
    """An RTM_NEWROUTE's body: a main-table static /30 to 10.0.0.4, and these attributes."""
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 30, 0, tos, 254, 4, 253, 1, 0)
    for kind, payload in ((1, socket.inet_aton("10.0.0.4")), *attrs):
        length = 4 + len(payload)
        body += struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)
    return body


def test_a_route_s_next_hop_is_read_whatever_its_kind() -> None:
    """rtnl.route_of: a device route, one `via` an IPv4 gateway, one `via inet6` (RTA_VIA),
    one of `nexthop`s (RTA_MULTIPATH), one with an `encap` (RTA_ENCAP), one with a tos, one of
    a nexthop object: none of the last five is the device route the first one is."""
    oif, src = (4, struct.pack("=i", 7)), (7, socket.inet_aton("10.0.0.5"))
    plain = route_of(_route_body(oif, src))
    assert plain is not None
    assert (plain.dst, plain.dst_len, plain.oif, plain.source) == ("10.0.0.4", 30, 7, "10.0.0.5")
    assert (plain.gateway, plain.other_hop, plain.tos, plain.nh_id) == ("", False, 0, 0)
    via = route_of(_route_body(oif, src, (5, socket.inet_aton("10.0.0.6"))))
    assert via is not None and via.gateway == "10.0.0.6" and via != plain
    for kind in (18, 9, 22):  # RTA_VIA, RTA_MULTIPATH, RTA_ENCAP
        other = route_of(_route_body(oif, src, (kind, b"\0" * 8)))
        assert other is not None and other.other_hop and other != plain
    tossed = route_of(_route_body(oif, src, tos=0x10))
    assert tossed is not None and tossed.tos == 0x10
    nexthop = route_of(_route_body(src, (30, struct.pack("=I", 42))))
    assert nexthop is not None and nexthop.nh_id == 42 and nexthop.oif == 0
