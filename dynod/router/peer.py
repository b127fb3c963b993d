"""One side of a proxied exchange: an h11 connection bound to an asyncio stream pair, how it
is closed, the byte splice after a protocol switch, and the exceptions that end an exchange."""

from __future__ import annotations

import asyncio
import contextlib
import http
import time

import h11

from dynod.router.limits import CLOSE_GRACE, DISCARD_LIMIT, READ_SIZE
from dynod.router.logline import HerokuError

__all__ = [
    "BadBody",
    "ClientGone",
    "Fail",
    "H11Event",
    "Peer",
    "Splice",
    "close_writer",
    "elapsed_ms",
    "linger",
    "now_ms",
    "peer_ip",
    "reason",
]


def peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    return ip.removeprefix("::ffff:")


def reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def now_ms() -> int:
    return int(time.time() * 1000)


def elapsed_ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class Fail(Exception):
    """A request ends with a Heroku error code."""

    def __init__(self, error: HerokuError) -> None:
        super().__init__(error.code)
        self.error = error


class ClientGone(Exception):
    """The client closed, misbehaved or went idle before the exchange finished.

    ``error`` is None when the response had already started: the log line then simply
    reports the status and the bytes that made it out.
    """

    def __init__(self, error: HerokuError | None) -> None:
        super().__init__(error.code if error else "client gone")
        self.error = error


class BadBody(Exception):
    """The client's request body broke HTTP's framing (a malformed chunk size): H25, 400."""


H11Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class Peer:
    """An h11 connection bound to one asyncio stream pair."""

    def __init__(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.saw_eof = False
        self.refused = False  # its last head was refused (400, 431...): it may still be coming
        self.pending = bytearray()  # framed by h11 but not yet written (`hold`)

    async def next_event(self, timeout: float | None = None) -> H11Event:
        """Next h11 event; ``timeout`` bounds each socket read (an idle timeout)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            # asyncio.timeout, not wait_for: wait_for wraps each read in a task of its own, which
            # was a tenth of the router's time per request.
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
            self.saw_eof = self.saw_eof or not data
            self.conn.receive_data(data)

    def hold(self, event: h11.Event) -> None:
        """Frame `event` now, write it with the next `send` or `flush`: a small response goes
        out in one write (one system call, one packet) instead of one per h11 event."""
        self.pending += self.conn.send(event) or b""

    async def send(self, event: h11.Event, timeout: float | None = None) -> None:
        self.hold(event)
        await self.flush(timeout)

    async def flush(self, timeout: float | None = None) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            self.writer.write(data)
            transport = self.writer.transport
            if transport.get_write_buffer_size() == 0 and not transport.is_closing():
                return  # all went to the kernel: no drain, no timer to arm and cancel
            async with asyncio.timeout(timeout):
                await self.writer.drain()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close gracefully (flush what is buffered), but never wait longer than CLOSE_GRACE."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:
        writer.transport.abort()  # peer not reading, or already reset


async def linger(peer: Peer) -> None:
    """Half-close and swallow what the client is still sending before we close.

    Closing a socket with unread input makes the kernel send RST, which can destroy the
    response we just wrote (e.g. a 404 to a big upload) before the client reads it.
    """
    with contextlib.suppress(Exception):
        if peer.writer.can_write_eof():
            peer.writer.write_eof()
        deadline = time.monotonic() + CLOSE_GRACE
        swallowed = 0
        while swallowed < DISCARD_LIMIT and (left := deadline - time.monotonic()) > 0:
            data = await asyncio.wait_for(peer.reader.read(READ_SIZE), left)
            if not data:
                return
            swallowed += len(data)


class Splice:
    """Copy raw bytes both ways after a protocol switch.

    EOF on one side is passed on as a half-close; the tunnel ends when both directions have
    ended, or when neither has carried a byte for ``idle`` seconds (Heroku's 55 s rule).
    """

    def __init__(self, client: Peer, backend: Peer, idle: float) -> None:
        self.client = client
        self.backend = backend
        self.idle = idle
        self.last_activity = time.monotonic()

    async def run(self) -> None:
        # Bytes that arrived together with the request / the 101 are still inside h11.
        with contextlib.suppress(OSError, TimeoutError):
            await self._write(self.backend.writer, self.client.conn.trailing_data[0])
            await self._write(self.client.writer, self.backend.conn.trailing_data[0])
        pumps = [
            asyncio.create_task(self._pump(self.client.reader, self.backend.writer)),
            asyncio.create_task(self._pump(self.backend.reader, self.client.writer)),
        ]
        try:
            with contextlib.suppress(OSError, TimeoutError):  # reset or idle: tunnel over
                await asyncio.gather(*pumps)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.idle)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), self.idle)
            except TimeoutError:
                if time.monotonic() - self.last_activity < self.idle:
                    continue  # the other direction is busy: the tunnel is not idle
                raise
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            self.last_activity = time.monotonic()
            await self._write(writer, data)
