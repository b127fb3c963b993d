"""An attached one-off dyno's standard streams: a pseudo-terminal pair (`dynod run` from a
terminal) or three pipes (`--no-tty`, or stdin not a terminal). The daemon keeps its ends and
relays them to the CLI; the dyno gets the others, never the user's own terminal (a hostile dyno
could push keystrokes into the user's shell with TIOCSTI)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
from dataclasses import dataclass

from netns import descriptors


@dataclass
class DynoEnds:
    """What the dyno's process gets as fds 0, 1 and 2; `tty`: they are a terminal's slave,
    which becomes its controlling terminal in a session of its own."""

    stdin: int
    stdout: int
    stderr: int
    tty: bool
    closed: bool = False

    def close(self) -> None:
        """Once only: a second close could hit an fd number reused meanwhile."""
        if not self.closed:
            self.closed = True
            _close_each(self.stdin, self.stdout, self.stderr)


@dataclass
class DaemonEnds:
    """What the daemon relays: on a terminal, `stdin` and `stdout` are the master (the same
    fd) and `stderr` is None; with pipes, three fds."""

    stdin: int
    stdout: int
    stderr: int | None
    tty: bool
    closed: bool = False

    def close(self) -> None:
        """Once only: a second close could hit an fd number reused meanwhile."""
        if not self.closed:
            self.closed = True
            _close_each(self.stdin, self.stdout, self.stderr)

    def close_stdin(self) -> None:
        """End of the user's stdin: the dyno reads EOF (pipes only; on a terminal, Ctrl-D is a
        byte the line discipline reads)."""
        if not self.tty and self.stdin >= 0 and not self.closed:
            with contextlib.suppress(OSError):
                os.close(self.stdin)
            self.stdin = -1

    def resize(self, rows: int, cols: int) -> None:
        """TIOCSWINSZ on the master: the kernel sends SIGWINCH to the foreground process group
        of the dyno's terminal."""
        if self.tty and rows and cols:
            set_window(self.stdin, rows, cols)


def terminal(rows: int, cols: int) -> tuple[DaemonEnds, DynoEnds]:
    """`openpty`: the master for the daemon (non-blocking, close-on-exec), the slave for the
    dyno, with the caller's window size set before the dyno starts."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    master = descriptors.lifted(master)  # kept while it runs: above select()'s range
    os.set_blocking(master, False)
    if rows and cols:
        set_window(master, rows, cols)
    return DaemonEnds(master, master, None, True), DynoEnds(slave, slave, slave, True)


def pipes() -> tuple[DaemonEnds, DynoEnds]:
    """Three pipes: the daemon writes the dyno's stdin and reads its stdout and stderr."""
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    # the daemon's ends are kept while the dyno runs: above select()'s range
    waiting, lifted = [in_w, out_r, err_r], []
    try:
        while waiting:
            lifted.append(descriptors.lifted(waiting.pop(0)))  # a failed lift closed its own
    except BaseException:
        _close_each(in_r, out_w, err_w, *waiting, *lifted)
        raise
    in_w, out_r, err_r = lifted
    for fd in (in_w, out_r, err_r):
        os.set_blocking(fd, False)
    return DaemonEnds(in_w, out_r, err_r, False), DynoEnds(in_r, out_w, err_w, False)


def set_window(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_window(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on fd; (0, 0) when it has none."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return 0, 0
    return rows, cols


def _close_each(*fds: int | None) -> None:
    """Each fd once (on a terminal stdin and stdout are one fd); None or -1: none there."""
    for fd in set(fds):
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
