"""Deletions of network namespace names, of links and of IPv4 routes, as they happen:
`inotifywait -m -e delete /run/netns`, `ip monitor link` (RTM_DELLINK only) and `ip monitor
route` (RTM_DELROUTE, and RTM_NEWROUTE for a route replaced: `ip route replace|change`), behind
one descriptor an event loop can wait on (an epoll of the three).

Listing /run/netns and /sys/class/net instead, to find what someone removed, costs O(names)
every time (11-13 ms a second at 2,000 dynos, on the daemon's event loop).
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct

from netns import namespace, nfevents, nlmsg
from netns.inotify import (
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Inotify,
)
from netns.rtnl import RT_TABLE_LOCAL, RTN_LOCAL, RTPROT_KERNEL, Route, route_of

RTNLGRP_LINK = 1
RTNLGRP_IPV4_ROUTE = 7
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED  # the watched directory itself
RTM_DELLINK = 17
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
NLM_F_REPLACE = 0x100
_ROUTE_KINDS = (RTM_NEWROUTE, RTM_DELROUTE)
SO_ATTACH_FILTER = 26
# classic BPF (linux/filter.h): ldh, jeq, jset, ret
_BPF_LDH_ABS, _BPF_JEQ_K, _BPF_JSET_K, _BPF_RET_K = 0x28, 0x15, 0x45, 0x06


class Removals:
    """Opened in the host's network namespace (the links of the calling thread's namespace are
    watched). fileno() is readable when something may have been removed; drain() says whether
    something was, or whether events were lost (then the caller must look for itself)."""

    def __init__(self) -> None:
        self.broken = False  # the directory's watch is gone: only a listing can tell now
        # the IPv4 routes deleted or replaced since the last take_routes(), as (destination,
        # prefix length); None: route events were lost, so any route may have gone
        self._deleted_routes: list[tuple[str, int]] | None = []
        # the devices an IPv4 address went from since the last take_unaddressed() (the kernel's
        # own local route for it was deleted)
        self._unaddressed: set[int] = set()
        self._inotify = Inotify()
        self._links: socket.socket | None = None
        self._routes: socket.socket | None = None
        self._poll: select.epoll | None = None
        try:
            found = os.stat(namespace.RUN_DIR)
            self._identity = (found.st_dev, found.st_ino)
            self._inotify.add(namespace.RUN_DIR, IN_DELETE | IN_MOVED_FROM | _GONE)
            self._links = nfevents.open_group(RTNLGRP_LINK, socket.NETLINK_ROUTE)
            _only(self._links, RTM_DELLINK)
            self._routes = nfevents.open_group(RTNLGRP_IPV4_ROUTE, socket.NETLINK_ROUTE)
            _deleted_or_replaced(self._routes)
            self._poll = select.epoll()
            self._poll.register(self._inotify.fd, select.EPOLLIN)
            self._poll.register(self._links.fileno(), select.EPOLLIN)
            self._poll.register(self._routes.fileno(), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def current(self) -> bool:
        """Is the watched directory still /run/netns (`stat -c %d:%i /run/netns`)? Not when
        someone moved, removed or covered it: a new watch is needed."""
        try:
            found = os.stat(namespace.RUN_DIR)
        except OSError:
            return False
        return not self.broken and (found.st_dev, found.st_ino) == self._identity

    def fileno(self) -> int:
        assert self._poll is not None
        return self._poll.fileno()

    def drain(self) -> bool:
        """Everything queued so far, read: was a name or a link deleted, or were events lost?
        Deleted routes are kept for take_routes() instead."""
        removed = False
        for _wd, mask in self._inotify.events():
            if mask & _GONE:
                self.broken = True
            if mask & (IN_DELETE | IN_MOVED_FROM | IN_Q_OVERFLOW | _GONE):
                removed = True
        assert self._links is not None
        for data in nfevents.receive(self._links):  # None: the kernel dropped some
            removed = removed or data is None or _has(data, RTM_DELLINK)
        assert self._routes is not None
        for data in nfevents.receive(self._routes):
            if data is None:
                self._deleted_routes = None
            elif self._deleted_routes is not None:
                # the filter queues only deletions and replacements (_deleted_or_replaced)
                for kind, _seq, body in nlmsg.frames(data):
                    if kind in _ROUTE_KINDS and (route := route_of(body)) is not None:
                        self._deleted_routes.append((route.dst, route.dst_len))
                        if kind == RTM_DELROUTE and _an_address(route):
                            self._unaddressed.add(route.oif)
        return removed

    def take_routes(self) -> list[tuple[str, int]] | None:
        """The IPv4 routes deleted or replaced since the last take (read by drain()), as
        (destination, prefix length), so the caller can tell whose they were: each stop deletes
        its dyno's own. None: route events were lost (any route may have gone)."""
        taken, self._deleted_routes = self._deleted_routes, []
        return taken

    def take_unaddressed(self) -> set[int]:
        """The devices (by index) an IPv4 address was removed from since the last take (`ip
        addr del`, `ip addr flush`): when a device's last address goes, the kernel flushes every
        route through it and tells only of the address's own (fib_disable_ip)."""
        taken, self._unaddressed = self._unaddressed, set()
        return taken

    def close(self) -> None:
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        for sock in (self._links, self._routes):
            if sock is not None:
                sock.close()
        self._links = self._routes = None
        self._inotify.close()


def _only(sock: socket.socket, kind: int) -> None:
    """The kernel queues only messages of this kind (RTM_DELLINK) on the socket (a socket
    filter): every link a start makes or changes sends RTM_NEWLINKs to the group, and each one
    queued would wake the event loop, which reads them only to throw them away, while the
    kernel thread makes the next."""
    _attach(
        sock,
        (_BPF_LDH_ABS, 0, 0, 4),  # nlmsg_type
        (_BPF_JEQ_K, 0, 1, _big(kind)),
        (_BPF_RET_K, 0, 0, 0xFFFFFFFF),
        (_BPF_RET_K, 0, 0, 0),
    )


def _deleted_or_replaced(sock: socket.socket) -> None:
    """As _only, for RTM_DELROUTE and an RTM_NEWROUTE with NLM_F_REPLACE: a route someone
    replaced (`ip route replace NET/30 dev BRIDGE`, without the gateway's `src`) is not one a
    start makes (theirs are new routes)."""
    _attach(
        sock,
        (_BPF_LDH_ABS, 0, 0, 4),  # nlmsg_type
        (_BPF_JEQ_K, 3, 0, _big(RTM_DELROUTE)),  # -> accept
        (_BPF_JEQ_K, 0, 3, _big(RTM_NEWROUTE)),  # else -> drop
        (_BPF_LDH_ABS, 0, 0, 6),  # nlmsg_flags
        (_BPF_JSET_K, 0, 1, _big(NLM_F_REPLACE)),
        (_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # accept
        (_BPF_RET_K, 0, 0, 0),  # drop
    )


def _big(value: int) -> int:
    """A header's 16-bit field as ldh reads it: the host's byte order read as big-endian."""
    return int(struct.unpack(">H", struct.pack("=H", value))[0])


def _attach(sock: socket.socket, *program: tuple[int, int, int, int]) -> None:
    """`setsockopt(SO_ATTACH_FILTER)` of a classic BPF program."""
    code = b"".join(struct.pack("=HBBI", *op) for op in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _an_address(route: Route) -> bool:
    """Is this the route the kernel makes for an address of a device (`local ADDRESS`, table
    local, proto kernel)?"""
    return (route.table, route.kind, route.proto) == (RT_TABLE_LOCAL, RTN_LOCAL, RTPROT_KERNEL)


def _has(data: bytes, kind: int) -> bool:
    return next(nfevents.messages(data, kind), None) is not None


def removals() -> Removals | None:
    """A watch, or None where the kernel gives none (no inotify instance or watch left, no
    netlink): then only listings can tell."""
    try:
        return Removals()
    except OSError:
        return None
