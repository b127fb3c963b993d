"""Which output files may have something new since the last poll, so that a poll of N dynos
costs nothing for the quiet ones: an inotify watch (IN_MODIFY) per open file, read at each poll.

A file stays due from its first event until its reader finds it quiet (`settled`), so a reader
that read only its budget, or has a drop to report, is asked again at the next poll without a
new event. Files that cannot be watched (no inotify instance left, more files than
fs.inotify.max_user_watches, a watch the kernel dropped) are polled every time, as before:
output is never lost, only its cost is back to one fstat per poll for those files.

The events are read at each poll, not as they come (loop.add_reader): a chatty dyno's writes
then wake the event loop for nothing between two polls, and a poll's events are one read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from netns.inotify import IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, Inotify


def _inotify() -> Inotify | None:
    try:
        return Inotify()
    except OSError:  # fs.inotify.max_user_instances reached: every file is polled
        return None


class Changes:
    """Keys are dyno ids."""

    def __init__(self, make: Callable[[], Inotify | None] = _inotify) -> None:
        self._make = make
        self._inotify: Inotify | None = None
        self._made = False
        self._key: dict[int, int] = {}  # watch descriptor -> key
        self._wd: dict[int, int] = {}  # key -> watch descriptor
        self.polled: dict[int, None] = {}  # files without a watch, in order
        self._due: dict[int, None] = {}  # watched files with news, in order

    def _instance(self) -> Inotify | None:
        if not self._made:  # on first use: a daemon that reads no output opens none
            self._made = True
            self._inotify = self._make()
        return self._inotify

    def watch(self, key: int, fd: int | None) -> None:
        """Follow the file open as fd (None: not open, polled); it is due at the next poll."""
        self.forget(key)
        self._due[key] = None
        inotify = self._instance()
        if fd is None or inotify is None:
            self.polled[key] = None
            return
        try:
            # the open file itself, whatever its name is now (or if it has none any more)
            wd = inotify.add(f"/proc/self/fd/{fd}", IN_MODIFY)
        except OSError:  # ENOSPC (max_user_watches) and the like: polled instead
            self.polled[key] = None
            return
        old = self._key.get(wd)
        if old is not None and old != key:  # the same file under two keys: poll the old one
            self._wd.pop(old, None)
            self.polled[old] = None
        self._key[wd] = key
        self._wd[key] = wd

    def forget(self, key: int) -> None:
        self.polled.pop(key, None)
        self._due.pop(key, None)
        wd = self._wd.pop(key, None)
        if wd is not None and self._key.get(wd) == key:
            del self._key[wd]
            if self._inotify is not None:
                with contextlib.suppress(OSError):
                    self._inotify.remove(wd)

    def due(self) -> list[int]:
        """The files to ask this poll: those with an event since, those not settled yet, and
        those polled."""
        if self._inotify is not None:
            for wd, mask in self._inotify.events():
                if mask & IN_Q_OVERFLOW:  # events were lost: every watched file is due once
                    self._due.update(dict.fromkeys(self._wd))
                    continue
                key = self._key.get(wd)
                if key is None:
                    continue  # a watch forgotten since
                if mask & IN_IGNORED:  # the kernel dropped the watch: poll the file instead
                    del self._key[wd]
                    self._wd.pop(key, None)
                    self.polled[key] = None
                self._due[key] = None
        return list(self._due) + [key for key in self.polled if key not in self._due]

    def settled(self, key: int) -> None:
        """Its reader found nothing to do: not due again until its next event."""
        self._due.pop(key, None)

    def watched(self) -> int:
        return len(self._wd)

    def close(self) -> None:
        """The instance goes; files still followed are polled from now on."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._made = True
        self.polled.update(dict.fromkeys(self._wd))
        self._key.clear()
        self._wd.clear()
