"""Whose turn it is: the round-robin counter per app, shared by the router's worker processes.

Each worker picks an app's next web dyno by the same counter, so consecutive requests to an
app go web.1, web.2, web.1... whichever worker takes them, as with one router. The counters
live in a small shared memory file (memfd) the daemon makes and every worker maps: one 8-byte
counter per slot, an app's slot given by a hash of its name. Two apps may share a slot (each
then still spreads its requests over its dynos, less evenly), and two workers incrementing the
same counter at the same instant may give one dyno two requests in a row: neither is worth a
lock on every request.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

__all__ = ["SLOTS", "Turns", "shared_turns_file"]

SLOTS = 4096
_COUNTER = struct.Struct("=Q")
SIZE = SLOTS * _COUNTER.size


def shared_turns_file() -> int:
    """A new zeroed memfd for the counters (the daemon's; handed to each worker)."""
    fd = os.memfd_create("dynod-router-turns", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    return fd


class Turns:
    """The counters: in this process only, or in the shared file `fd`."""

    def __init__(self, fd: int | None = None) -> None:
        self._memory: mmap.mmap | bytearray = bytearray(SIZE) if fd is None else mmap.mmap(fd, SIZE)
        self._offsets: dict[str, int] = {}  # each app's counter, by name

    def next(self, app: str) -> int:
        """This app's turn number, then the next one."""
        offset = self._offsets.get(app)
        if offset is None:
            if len(self._offsets) >= SLOTS:
                self._offsets.clear()
            offset = self._offsets[app] = zlib.crc32(app.encode()) % SLOTS * _COUNTER.size
        (turn,) = _COUNTER.unpack_from(self._memory, offset)
        _COUNTER.pack_into(self._memory, offset, (turn + 1) & 0xFFFF_FFFF_FFFF_FFFF)
        return int(turn)
