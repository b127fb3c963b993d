"""`dynod run --app APP -- CMD` without --type: a one-off dyno run.N attached to the caller, as
`heroku run`. The API request is switched (HTTP Upgrade) to frames (api/frames.py): stdin,
window size and EOF go to the dyno; its output and exit status come back.

On a terminal the dyno gets a pseudo-terminal of its own (made by the daemon) and this terminal
is put in raw mode, so Ctrl-C, Ctrl-Z and Ctrl-D are bytes for the dyno's terminal, and restored
on every way out (an exception, SIGTERM, SIGHUP). Otherwise, or with --no-tty, pipes: Ctrl-C
ends the CLI, and the daemon stops the dyno when the connection closes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import selectors
import signal
import socket
import termios
import tty
from collections.abc import Iterator
from types import FrameType
from typing import Any

import h11

from dynod.api import frames
from dynod.api.client import connect
from dynod.errors import DynodError
from dynod.kernel.stdio import get_window

READ_SIZE = 64 << 10
SEND_LIMIT = 256 << 10  # bytes of stdin queued for the daemon before stdin is left unread
# A terminal that went away (its window closed, its ssh connection lost) fails reads and writes
# with EIO; SIGHUP may never come (it goes to the session leader). The CLI ends as SIGHUP ends it.
HANGUP = 128 + signal.SIGHUP


def run_attached(socket_path: str, path: str, body: dict[str, Any], use_tty: bool) -> int:
    """Start the one-off and relay until it exits; its exit status (130 after Ctrl-C in pipe
    mode, 1 when the daemon went away without one)."""
    if use_tty:
        rows, cols = get_window(0)
        body = body | {"attach": True, "tty": True, "rows": rows, "cols": cols}
    else:
        body = body | {"attach": True}
    sock, early = _upgrade(socket_path, path, body)
    try:
        with _raw(0) if use_tty else contextlib.nullcontext(), _signals(use_tty) as winch:
            return _Relay(sock, early, winch).run()
    except KeyboardInterrupt:
        return 130  # closing the connection stops the dyno
    except BrokenPipeError:
        # `dynod run -- yes | head -1`: the reader is gone, so is the dyno (as SIGPIPE would)
        return 128 + signal.SIGPIPE
    finally:
        sock.close()


def _upgrade(socket_path: str, path: str, body: dict[str, Any]) -> tuple[socket.socket, bytes]:
    """POST the run request asking for the switch; the socket after 101 and the bytes already
    read past it. An error answer is raised as the daemon's DynodError."""
    sock = connect(socket_path)
    conn = h11.Connection(h11.CLIENT)
    payload = json.dumps(body).encode()
    headers = [
        ("host", "localhost"),
        ("content-type", "application/json"),
        ("content-length", str(len(payload))),
        ("connection", "Upgrade"),
        ("upgrade", frames.PROTOCOL),
    ]
    try:
        sock.sendall(conn.send(h11.Request(method="POST", target=path, headers=headers)))
        sock.sendall(conn.send(h11.Data(data=payload)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        status, answer = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(READ_SIZE))
            elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                return sock, bytes(conn.trailing_data[0])
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except BaseException:
        sock.close()
        raise
    sock.close()
    try:
        error = json.loads(answer or b"{}")
    except ValueError:
        error = {"error": answer.decode(errors="replace")}
    raise DynodError(
        error.get("error", f"the daemon answered {status} instead of starting the dyno"),
        error.get("fix", ""),
        status=status or 500,
    )


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """The terminal in raw mode (no echo, no line editing, no signals from keys: every byte
    goes to the dyno's terminal), as it was afterwards."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):  # a terminal gone has nothing to restore
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(use_tty: bool) -> Iterator[int]:
    """SIGTERM and SIGHUP end the CLI through its `finally`s (the terminal is restored);
    SIGWINCH writes to a pipe whose read end is yielded (-1 without a terminal)."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def resized(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(write_end, b"w")

    wanted = {signal.SIGTERM: leave, signal.SIGHUP: leave}
    if use_tty:
        wanted[signal.SIGWINCH] = resized
    before = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
    try:
        yield read_end if use_tty else -1
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        os.close(read_end)
        os.close(write_end)


class _Relay:
    """stdin -> the daemon, the daemon -> stdout/stderr, until the exit frame."""

    def __init__(self, sock: socket.socket, early: bytes, winch: int) -> None:
        self.sock = sock
        self.early = early
        self.winch = winch
        self.decoder = frames.Decoder()
        self.outgoing = bytearray()
        # poll, not epoll: a stdin redirected from a regular file is pollable (always ready)
        self.selector = selectors.PollSelector()
        self.stdin_open = True

    def run(self) -> int:
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ)
        if self.winch >= 0:
            self.selector.register(self.winch, selectors.EVENT_READ)
        try:
            os.fstat(0)
            self.selector.register(0, selectors.EVENT_READ)
        except OSError:  # no stdin at all: the dyno's is closed at once
            self._stdin_ended()
        status = self._incoming(self.early)
        while status is None:
            self._update_interest()
            for key, events in self.selector.select():
                if key.fileobj == 0:
                    self._stdin()
                elif key.fileobj == self.winch:
                    self._resized()
                elif events & selectors.EVENT_WRITE:
                    self._send()
                if status is None and key.fileobj is self.sock and events & selectors.EVENT_READ:
                    status = self._receive()
                    if status is not None:
                        break
        return status

    def _update_interest(self) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
        self.selector.modify(self.sock, events)
        if self.stdin_open:
            # stdin is read only while what was read of it has (mostly) reached the daemon
            wanted = len(self.outgoing) < SEND_LIMIT
            registered = 0 in self.selector.get_map()
            if wanted and not registered:
                self.selector.register(0, selectors.EVENT_READ)
            elif registered and not wanted:
                self.selector.unregister(0)

    def _stdin(self) -> None:
        try:
            data = os.read(0, READ_SIZE)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            data = b""
        if data:
            self.outgoing += frames.data(frames.STDIN, data)
        elif self.winch >= 0:
            # a terminal in raw mode never reads as ended (Ctrl-D is a byte): it hung up
            raise SystemExit(HANGUP)
        else:
            self.selector.unregister(0)
            self._stdin_ended()

    def _stdin_ended(self) -> None:
        self.stdin_open = False
        self.outgoing += frames.encode(frames.EOF)

    def _resized(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.winch, 64)
        self.outgoing += frames.resize(*get_window(0))

    def _send(self) -> None:
        with contextlib.suppress(BlockingIOError):
            sent = self.sock.send(self.outgoing)
            del self.outgoing[:sent]

    def _receive(self) -> int | None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return None
        except ConnectionError:
            data = b""
        if not data:
            with contextlib.suppress(OSError):
                _write(2, b"\r\nerror: the daemon closed the connection before the dyno exited\r\n")
            return 1
        return self._incoming(data)

    def _incoming(self, data: bytes) -> int | None:
        for frame in self.decoder.feed(data):
            if frame.kind == frames.STDOUT:
                _write(1, frame.payload)
            elif frame.kind == frames.STDERR:
                _write(2, frame.payload)
            elif frame.kind == frames.EXIT:
                status = frames.status_of(frame)
                return 1 if status is None else status
        return None


def _write(fd: int, data: bytes) -> None:
    """All of it, blocking: a slow terminal slows the dyno down, through the daemon."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError as exc:
            if exc.errno == errno.EIO:  # the terminal hung up
                raise SystemExit(HANGUP) from None
            raise


def wants_tty(no_tty: bool) -> bool:
    """A pseudo-terminal for the dyno when stdin is a terminal, unless --no-tty."""
    try:
        return not no_tty and os.isatty(0)
    except OSError:
        return False
