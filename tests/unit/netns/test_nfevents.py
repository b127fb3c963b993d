"""nftables commit events (netns/nfevents.py): who committed, read from raw netlink messages. No
root needed."""

from __future__ import annotations

import struct

from netns.nfevents import NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN, UNKNOWN, Commit, parse_commits


def newgen(pid: int | None, name: str | None) -> bytes:
    attrs = b""
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
