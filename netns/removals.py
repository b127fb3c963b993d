"""Deletions of network namespace names and of links, as they happen: `inotifywait -m -e delete
/run/netns` and `ip monitor link` (RTM_DELLINK only), behind one descriptor an event loop can wait
on (an epoll of the two).

Listing /run/netns and /sys/class/net instead, to find what someone removed, costs O(names)
every time (11-13 ms a second at 2,000 dynos, on the daemon's event loop).
"""

from __future__ import annotations

import errno
import select
import socket

from netns import namespace, nfevents
from netns.inotify import (
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVED_FROM,
    IN_Q_OVERFLOW,
    Inotify,
)

RTMGRP_LINK = 1
RTM_DELLINK = 17


class Removals:
    """Opened in the host's network namespace (the links of the calling thread's namespace are
    watched). fileno() is readable when something may have been removed; drain() says whether
    something was, or whether events were lost (then the caller must look for itself)."""

    def __init__(self) -> None:
        self.broken = False  # the directory's watch is gone: only a listing can tell now
        self._inotify = Inotify()
        self._links: socket.socket | None = None
        self._poll: select.epoll | None = None
        try:
            self._inotify.add(namespace.RUN_DIR, IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF)
            self._links = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
            )
            self._links.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._links.bind((0, RTMGRP_LINK))
            self._poll = select.epoll()
            self._poll.register(self._inotify.fd, select.EPOLLIN)
            self._poll.register(self._links.fileno(), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        assert self._poll is not None
        return self._poll.fileno()

    def drain(self) -> bool:
        """Everything queued so far, read: was a name or a link deleted, or were events lost?"""
        removed = False
        for _wd, mask in self._inotify.events():
            if mask & (IN_DELETE_SELF | IN_IGNORED):
                self.broken = True
            if mask & (IN_DELETE | IN_MOVED_FROM | IN_Q_OVERFLOW | IN_DELETE_SELF | IN_IGNORED):
                removed = True
        assert self._links is not None
        while True:
            try:
                data = self._links.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                removed = True  # the kernel dropped some: any of them may have been one
                continue
            removed = removed or _has_dellink(data)
        return removed

    def close(self) -> None:
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        if self._links is not None:
            self._links.close()
            self._links = None
        self._inotify.close()


def _has_dellink(data: bytes) -> bool:
    return next(nfevents.messages(data, RTM_DELLINK), None) is not None


def removals() -> Removals | None:
    """A watch, or None where the kernel gives none (no inotify instance or watch left, no
    netlink): then only listings can tell."""
    try:
        return Removals()
    except OSError:
        return None
