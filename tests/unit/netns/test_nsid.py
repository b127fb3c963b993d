"""Which id a namespace gets (netns/nsid.py), against a fake netlink socket. No root needed."""

from __future__ import annotations

import errno
import os
from typing import cast

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from netns import namespace, nsid, record
from netns.rtnl import Rtnl


class FakeRtnl:
    """The host's ids, and what set_nsid is asked: refused with `refuse`'s errno per id (-1:
    the listing of the ids)."""

    def __init__(self, ids: list[int], refuse: dict[int, int] | None = None) -> None:
        self.ids = list(ids)
        self.refuse = refuse or {}
        self.asked: list[int] = []
        self.dumps = 0

    def nsids(self) -> list[int]:
        self.dumps += 1
        if self.refuse.get(-1):
            raise NetlinkError(self.refuse[-1], os.strerror(self.refuse[-1]))
        return list(self.ids)

    def set_nsid(self, fd: int, nsid: int) -> None:
        self.asked.append(nsid)
        if nsid in self.ids:
            raise NetlinkError(errno.EEXIST, "The specified nsid is already used")
        if nsid in self.refuse:
            raise NetlinkError(self.refuse[nsid], os.strerror(self.refuse[nsid]))
        self.ids.append(nsid)


@pytest.fixture(autouse=True)
def no_namespace_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namespace, "open_fd", lambda name: os.open(os.devnull, os.O_RDONLY))


def given(ids: nsid.Descending, fake: FakeRtnl, name: str = "ns") -> int | None:
    return ids.give_next(cast(Rtnl, fake), name)


def test_ids_go_down_from_the_top_and_ids_below_the_range_are_not_ours() -> None:
    fake = FakeRtnl([0, 1, 7])  # the kernel's own choices, from 0 up
    ids = nsid.Descending(top=1000, floor=900)
    assert [given(ids, fake) for _ in range(3)] == [1000, 999, 998]
    assert fake.dumps == 1  # the host's ids are listed once, at the first


def test_a_daemon_started_again_counts_on_below_the_lowest_id_in_the_range() -> None:
    fake = FakeRtnl([3, 950, 970, 1000, 2000])
    assert given(nsid.Descending(top=1000, floor=900), fake) == 949


def test_an_id_in_use_is_skipped_and_a_run_of_them_gives_up_on_that_start_only() -> None:
    fake = FakeRtnl([0])
    ids = nsid.Descending(top=1000, floor=900)
    assert given(ids, fake) == 1000
    fake.ids += [999, 998]  # given by someone else after the list was read
    assert given(ids, fake) == 997
    fake.ids += list(range(996 - nsid.TRIES + 1, 997))
    assert given(ids, fake) is None  # TRIES ids in use: this start goes on without one
    assert len(fake.asked) == 1 + 3 + nsid.TRIES
    assert given(ids, fake) == 996 - nsid.TRIES and not ids.stopped


def test_below_the_floor_none_is_given() -> None:
    fake = FakeRtnl([])
    ids = nsid.Descending(top=1000, floor=999)
    assert [given(ids, fake) for _ in range(3)] == [1000, 999, None]
    assert fake.asked == [1000, 999]


def test_another_refusal_stops_the_ids_with_its_reason() -> None:
    fake = FakeRtnl([], refuse={999: errno.EPERM})
    ids = nsid.Descending(top=1000, floor=900)
    assert given(ids, fake, "a") == 1000
    assert given(ids, fake, "b") is None
    assert ids.stopped == "`ip netns set b 999`: Operation not permitted"
    assert given(ids, fake, "c") is None and fake.asked == [1000, 999]


def test_a_given_id_is_explained_as_ip_netns_set() -> None:
    fake = FakeRtnl([])
    with record.recording() as rec:
        given(nsid.Descending(top=1000, floor=900), fake, "pfx-app.web.1")
    assert rec.commands() == ["ip netns set pfx-app.web.1 1000"]


def test_a_refused_listing_stops_the_ids_and_the_start_goes_on() -> None:
    fake = FakeRtnl([], refuse={-1: errno.EOPNOTSUPP})
    ids = nsid.Descending(top=1000, floor=900)
    assert given(ids, fake) is None and fake.asked == []
    assert ids.stopped == "`ip netns list-id`: Operation not supported"
    assert given(ids, fake) is None and fake.asked == [] and fake.dumps == 1  # for good


def test_an_error_of_the_system_also_stops_the_ids_and_the_start_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_descriptor(name: str) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(namespace, "open_fd", no_descriptor)
    ids = nsid.Descending(top=1000, floor=900)
    assert given(ids, FakeRtnl([])) is None
    assert ids.stopped == "`ip netns set ns 1000`: Too many open files"
