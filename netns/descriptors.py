"""Descriptors kept per dyno live above select(2)'s range.

libnftables (through libmnl) waits for its netlink socket's answers with select(2), whose
fd_set holds descriptors 0-1023 only: glibc aborts the whole process on a larger one ("bit out
of range 0 - FD_SETSIZE on fd_set"). A new socket gets the lowest free number, and the daemon
keeps two descriptors per dyno (its pidfd, its output file): past about 500 dynos, an nftables
context opened then (`dynod trace` opens one in each namespace it traces) got one above 1023
and killed the daemon. So what is kept per dyno moves to 1024 and up, `exec {new}>&FD`, and
the numbers below stay free for sockets.
"""

from __future__ import annotations

import errno
import fcntl
import os

FD_SETSIZE = 1024  # glibc's: select(2) takes descriptors below it only


def lifted(fd: int) -> int:
    """fd moved to the lowest free number from FD_SETSIZE up (F_DUPFD_CLOEXEC; the old
    number is closed), close-on-exec; fd itself where the open-file limit leaves no room up
    there (the daemon raises its limit to 65,536: router/limits.py)."""
    try:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_SETSIZE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EMFILE):
            return fd
        os.close(fd)  # the caller gets no descriptor back: none is left open
        raise
    os.close(fd)
    return new


def low_one_free() -> bool:
    """Whether a descriptor opened now gets a number below FD_SETSIZE (`: < /dev/null`)."""
    probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(probe)
    return probe < FD_SETSIZE
