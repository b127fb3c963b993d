"""inotify(7) through libc: Python 3.11's `os` has no binding. Plumbing only: one descriptor,
a watch per file, and the events read without blocking (what `inotifywait -m FILE` shows)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

IN_MODIFY = 0x00000002  # written, truncated, or a hole punched
IN_MOVED_FROM = 0x00000040  # a name moved out of the watched directory
IN_DELETE = 0x00000200  # a name deleted from the watched directory
IN_DELETE_SELF = 0x00000400  # the watched directory itself deleted
IN_MOVE_SELF = 0x00000800  # the watched directory itself moved
IN_UNMOUNT = 0x00002000  # the filesystem holding the watched directory unmounted
IN_Q_OVERFLOW = 0x00004000  # the kernel's event queue was full: events were lost
IN_IGNORED = 0x00008000  # the watch is gone (removed, or its file deleted for good)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_READ = 64 << 10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _checked(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class Inotify:
    """One inotify instance (inotify_init1), non-blocking, closed on exec."""

    def __init__(self) -> None:
        self.fd = _checked(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add(self, path: str, mask: int) -> int:
        """inotify_add_watch: the watch descriptor (the same one for a file watched again).
        ENOSPC when fs.inotify.max_user_watches is reached."""
        return _checked(
            _libc.inotify_add_watch(self.fd, os.fsencode(path), mask), f"inotify_add_watch {path}"
        )

    def remove(self, wd: int) -> None:
        """inotify_rm_watch; a watch the kernel already dropped (its file deleted) is no error."""
        if _libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    def events(self) -> Iterator[tuple[int, int]]:
        """(wd, mask) of every event queued so far; nothing when none is."""
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size + length
                yield wd, mask
            if len(data) < _READ - 4096:  # a short read: the queue is empty
                return

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # instances are few per user (fs.inotify.max_user_instances)
        self.close()
