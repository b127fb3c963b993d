"""Ids of network namespaces in the calling thread's (the host's): `ip netns set NAME NSID` and
`ip netns list-id`, given from the top of the id range down so the kernel finds the newest at once.

A network namespace may know another by a number, its id there. Every notification about a link
whose other end is in another namespace carries that namespace's id (a dyno's host-side veth:
IFLA_LINK_NETNSID), and the kernel finds it by walking the host's ids in increasing order until
it meets the namespace (net/core/net_namespace.c, `__peernet2id`); a namespace without one is
given the lowest id free. So with N dynos a new dyno's id was the highest, and each of the five
notifications of its start (the veth made, made a bridge port, made promiscuous, its ARP setting,
its carrier up) walked all N: a tenth of the kernel thread's CPU at the 3,500th dyno
(`idr_for_each`, `net_eq_idr`), none at the first, the largest part of what a start cost more
with many dynos (bench/README.md, twelfth round). An id given here before the veth is made is
below every id given before it: the first notification finds it first. One walk past all the ids
is left, the kernel's own check, when the id is given, that the namespace has none yet.

The ids go down from TOP to FLOOR, a billion starts; below FLOOR none is given any more and the
kernel chooses, as it does for every namespace it meets without one. Ids live and die with their
namespaces: nothing to remove. Ids other programs gave (the kernel's lowest free ones, from 0 up)
are far below ours.
"""

from __future__ import annotations

import errno
import os
import struct

from pyroute2.netlink.exceptions import NetlinkError

from netns import namespace, record
from netns.rtnl import Rtnl

TOP = 2**31 - 2  # the highest id the kernel takes when asked for one (INT_MAX - 1)
FLOOR = 2**30
TRIES = 8  # ids in use by someone else skipped at one start before giving up on that start


def listed(rtnl: Rtnl) -> list[int]:
    """`ip netns list-id`: every id of the rtnl's namespace, in increasing order."""
    return sorted(rtnl.nsids())


def give(rtnl: Rtnl, name: str, nsid: int) -> None:
    """`ip netns set NAME NSID` in the rtnl's namespace (the calling thread's). NetlinkError
    EEXIST when the id is someone else's, or the namespace has one already."""
    fd = namespace.open_fd(name)
    try:
        rtnl.set_nsid(fd, nsid)
    finally:
        os.close(fd)
    record.note("ip", "netns", "set", name, str(nsid))


class Descending:
    """The ids this process gives its namespaces, each below every id given before it: the next
    one is below the lowest id at or above FLOOR that the host has when the first is given (a
    daemon started again keeps counting down from what its dynos kept), then one less each time.
    Used on one thread (the kernel thread), on the host's Rtnl."""

    def __init__(self, top: int = TOP, floor: int = FLOOR) -> None:
        self.top = top
        self.floor = floor
        self._next: int | None = None
        # why ids are not given any more ("": they are): a listing of the host's ids that failed,
        # or an id refused otherwise than by EEXIST; every start then goes on without one (the
        # kernel chooses it)
        self.stopped = ""

    def give_next(self, rtnl: Rtnl, name: str) -> int | None:
        """The namespace NAME (just made, without an id) gets the next id; that id, or None when
        none was given: ids are an optimisation, never a reason to refuse a start."""
        if self.stopped:
            return None
        if self._next is None:
            try:
                ours = [i for i in listed(rtnl) if self.floor <= i <= self.top]
            except (NetlinkError, OSError, struct.error) as exc:
                self.stopped = f"`ip netns list-id`: {_reason(exc)}"
                return None
            self._next = min(ours, default=self.top + 1) - 1
        for _ in range(TRIES):
            if self._next < self.floor:
                return None
            nsid = self._next
            self._next -= 1
            try:
                give(rtnl, name, nsid)
                return nsid
            except (NetlinkError, OSError) as exc:
                if not (isinstance(exc, NetlinkError) and exc.code == errno.EEXIST):
                    self.stopped = f"`ip netns set {name} {nsid}`: {_reason(exc)}"
                    return None
        return None


def _reason(exc: Exception) -> str:
    """A refusal's reason as the kernel's error text (`ip` says the same)."""
    if isinstance(exc, NetlinkError):
        return os.strerror(exc.code)
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc)
