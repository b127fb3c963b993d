"""An attached one-off dyno's connection (`dynod run` without --type): after the HTTP Upgrade,
frames (api/frames.py) carry the user's stdin, window size and EOF to the dyno and its output and
exit status back, until the dyno exits or the client goes away (which stops the dyno).

It is bounded both ways: the dyno's output is read 16 KiB at a time and no more is read until
the client has taken what was sent (a flooding dyno waits on its full pty or pipe, as on a slow
terminal), and no frame from the client is read until the last stdin bytes are in the dyno's
pty or pipe. The daemon holds at most a frame or two per direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any

from dynod.api import frames
from dynod.api.wire import Upgrade
from dynod.control.dynos import DynoService
from dynod.kernel.stdio import DaemonEnds
from dynod.state.store import Dyno

READ_SIZE = 16 << 10  # bytes of the dyno's output read at once
GONE = (errno.EIO, errno.EPIPE, errno.EBADF)  # the other side of the pty or pipe is closed


def session(dyno: Dyno, ends: DaemonEnds, dynos: DynoService) -> Upgrade:
    """The answer to an attach request: 101, then `relay`; a refused answer stops the dyno.
    The exit is waited for from now: a quick command's status is kept for the relay."""
    exit_wait = asyncio.ensure_future(dynos.wait_exit(dyno))

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, early: bytes) -> None:
        await relay(dyno, ends, dynos, exit_wait, reader, writer, early)

    def refused() -> None:
        exit_wait.cancel()
        ends.close()
        dynos.stop_later(dyno)

    return Upgrade(frames.PROTOCOL, run, refused)


async def relay(
    dyno: Dyno,
    ends: DaemonEnds,
    dynos: DynoService,
    exit_wait: asyncio.Future[int | None],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    early: bytes,
) -> None:
    loop = asyncio.get_running_loop()
    pumps = [loop.create_task(_pump(ends.stdout, frames.STDOUT, writer))]
    if ends.stderr is not None:
        pumps.append(loop.create_task(_pump(ends.stderr, frames.STDERR, writer)))
    client = loop.create_task(_from_client(ends, reader, early))
    output_done: asyncio.Future[list[None]] = asyncio.gather(*pumps)
    try:
        # the dyno's output to its end, then its exit; or the client gone first
        first: set[asyncio.Future[Any]] = {output_done, client}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        output_whole = output_done.done() and output_done.exception() is None
        if output_whole and not client.done():
            last: set[asyncio.Future[Any]] = {exit_wait, client}
            await asyncio.wait(last, return_when=asyncio.FIRST_COMPLETED)
        if output_whole and exit_wait.done():
            writer.write(frames.exit_status(exit_wait.result()))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    finally:
        # Each pump is cancelled itself: a gather that ended with one pump's error (the client
        # gone mid-write) cancels nothing, and a pump left waiting in _ready would keep its fd
        # in the loop's selector after ends.close(); the next relay's pipe on that fd number
        # would then never be watched (add_reader finds it "registered") and never end.
        client.cancel()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(client, output_done, *pumps, return_exceptions=True)
        # closing the master first hangs the terminal up: its shell gets SIGHUP, as when a
        # terminal window is closed
        ends.close()
        if not exit_wait.done():
            dynos.stop_later(dyno)  # the client went away (killed, Ctrl-C in pipe mode)
        exit_wait.cancel()


async def _pump(fd: int, kind: bytes, writer: asyncio.StreamWriter) -> None:
    """The dyno's output on fd as frames of `kind`, at the pace the client reads."""
    while True:
        chunk = await _read(fd)
        if not chunk:
            return
        writer.write(frames.data(kind, chunk))
        await writer.drain()


async def _from_client(ends: DaemonEnds, reader: asyncio.StreamReader, early: bytes) -> None:
    """The client's frames, until it closes the connection (or sends a bad frame)."""
    decoder = frames.Decoder()
    data = early
    while True:
        for frame in decoder.feed(data):
            if frame.kind == frames.STDIN:
                await _write(ends, frame.payload)
            elif frame.kind == frames.EOF:
                ends.close_stdin()
            elif frame.kind == frames.RESIZE:
                rows, cols = frames.window(frame)
                with contextlib.suppress(OSError):
                    ends.resize(rows, cols)
            else:
                raise frames.BadFrame(f"the client sent a frame of kind {frame.kind!r}")
        data = await reader.read(frames.MAX_PAYLOAD)
        if not data:
            return


async def _read(fd: int) -> bytes:
    """Up to READ_SIZE bytes; b"" at the end (a pty's master reads EIO once the dyno's last
    process has closed the slave)."""
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            await _ready(fd, write=False)
        except OSError as exc:
            if exc.errno in GONE:
                return b""
            raise


async def _write(ends: DaemonEnds, payload: bytes) -> None:
    """All of payload into the dyno's stdin; dropped once the dyno has closed it."""
    view = memoryview(payload)
    while view and ends.stdin >= 0 and not ends.closed:
        try:
            view = view[os.write(ends.stdin, view) :]
        except BlockingIOError:
            await _ready(ends.stdin, write=True)
        except OSError as exc:
            if exc.errno in GONE:
                return
            raise


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
