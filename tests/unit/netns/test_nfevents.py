"""nftables commit events (netns/nfevents.py): who committed, read from raw netlink messages. No
root needed."""

from __future__ import annotations

import errno
import struct

import pytest

from netns.nfevents import (
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_NEWGEN,
    UNKNOWN,
    Commit,
    attributes,
    messages,
    parse_commits,
    receive,
)


def newgen(pid: int | None, name: str | None, generation: int | None = None) -> bytes:
    attrs = b""
    if generation is not None:
        attrs += struct.pack("=HH", 8, 1) + struct.pack("!I", generation)
    if pid is not None:
        attrs += struct.pack("=HH", 8, 2) + struct.pack("!I", pid)
    if name is not None:
        raw = name.encode() + b"\0"
        attrs += struct.pack("=HH", 4 + len(raw), 3) + raw + b"\0" * (-len(raw) % 4)
    body = struct.pack("=BBH", 0, 0, 0) + attrs
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def other_message() -> bytes:
    body = b"\0" * 8
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | 0, 0, 0, 0) + body


def test_commit_events_name_who_committed() -> None:
    data = other_message() + newgen(4242, "nft") + other_message() + newgen(None, None)
    assert parse_commits(data) == [Commit(4242, "nft"), Commit(UNKNOWN, "?")]
    assert str(Commit(4242, "nft")) == "pid 4242 (nft)"
    assert not Commit(UNKNOWN).ours()  # lost events are always someone else's
    assert not Commit(2**31 - 1).ours()


def test_commit_events_carry_the_generation_they_made() -> None:
    data = newgen(4242, "nft", 2**32 - 1) + newgen(4243, "nft")
    assert [c.generation for c in parse_commits(data)] == [2**32 - 1, None]
    assert parse_commits(data)[0] == Commit(4242, "nft", 2**32 - 1)


def test_messages_and_attributes_walk_a_datagram() -> None:
    data = other_message() + newgen(7, "nft") + b"\0" * 3  # a tail too short for a header
    bodies = list(messages(data, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN))
    assert len(bodies) == 1
    attrs = attributes(bodies[0][4:])
    assert attrs == {2: struct.pack("!I", 7), 3: b"nft\0"}
    assert attributes(struct.pack("=HH", 2, 1)) == {}  # a length shorter than its header


class FakeSocket:
    """recv() hands out these datagrams or raises these errors, then would block."""

    def __init__(self, *results: bytes | OSError) -> None:
        self.results = list(results)

    def recv(self, _size: int) -> bytes:
        if not self.results:
            raise BlockingIOError
        result = self.results.pop(0)
        if isinstance(result, OSError):
            raise result
        return result


def test_receive_marks_lost_events_and_stops_when_nothing_is_left() -> None:
    lost = OSError(errno.ENOBUFS, "No buffer space available")
    sock = FakeSocket(b"one", lost, b"two")
    assert list(receive(sock)) == [b"one", None, b"two"]  # type: ignore[arg-type]
    failing = FakeSocket(OSError(errno.EBADF, "Bad file descriptor"))
    with pytest.raises(OSError) as raised:  # other errors are the caller's
        list(receive(failing))  # type: ignore[arg-type]
    assert raised.value.errno == errno.EBADF
