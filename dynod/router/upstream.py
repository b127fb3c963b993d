"""The dyno side of the fast path (`dynod.router.fast`): one keep-alive connection to a dyno as
an `asyncio.Protocol`, its response parsed by httptools (llhttp) and re-framed for the client as
it arrives, with flow control from the client's side.

The response goes to the client as h11 would frame it on the proven path: the head with
`forward_response_headers`, a Content-Length body relayed as it comes, a chunked one re-chunked
from the parser's body callbacks (trailers dropped), a close-delimited one chunked too (the
client is HTTP/1.1) so the client connection stays usable, 204/304 bodyless, other 1xx relayed
before the final answer. A dyno that answers 101 without being asked is H17. Only the first
response is relayed: bytes after it (a second response in the same packet) stop the parser and
the connection is not reused, so they never answer the client's next request. A response head
(or the bytes before one) past `MAX_HEAD` is H17, trailers past it H18 (h11's bound).

Timeouts, on one `Deadline` per connection: H12 until the response head (``response_timeout``
from the request sent), then H15 between two pieces of body (``idle_timeout``); neither while
the client's transport is paused (the dyno is not read then: the client's own idle deadline
ends an exchange it does not read, logged as the proven path logs it). A dyno that
closes before any byte of the answer is H13 (or, on a reused connection, a stale connection the
client side may retry); mid-body it is H18.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

import httptools

from dynod.router.deadline import Deadline
from dynod.router.dial import dial
from dynod.router.fastheaders import response_plan
from dynod.router.frames import CHUNKED_END, response_head
from dynod.router.headers import Headers, forward_response_headers
from dynod.router.limits import MAX_HEAD
from dynod.router.logline import H12, H13, H15, H17, H18, HerokuError, RequestLog
from dynod.router.routes import Backend

__all__ = ["Receiver", "Upstream", "open_upstream"]

_logger = logging.getLogger(__name__)

_NO_BODY = (204, 304)


# At most what a dyno may send before its request went out (one response head and a small body).
EARLY_LIMIT = 64 * 1024


class Receiver(Protocol):
    """The client side of an exchange, as an `Upstream` sees it (`fast.Receiver`)."""

    close_after: bool  # the client asked to close after this response
    write_paused: bool  # the client's transport is over its high-water mark

    def write(self, data: bytes | bytearray) -> None: ...

    def exchange_done(self, upstream: Upstream, reusable: bool) -> None: ...

    def exchange_failed(
        self, upstream: Upstream, error: HerokuError, head_sent: bool, *, stale: bool
    ) -> None: ...


class Upstream(asyncio.Protocol):
    """A connection to one dyno; `client` is the exchange using it (None while it is idle)."""

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Receiver | None = None
        self.entry: RequestLog | None = None
        self.open = True
        self.reusable = True  # false once anything unclean happened on it
        self.deadline = Deadline(loop, self._expired)
        self.timeout = 30.0
        self.idle = 55.0
        # What a new connection got before its first request went out: a dyno may answer as it
        # accepts, without reading (the h11 path reads it as the answer too). Kept until
        # `begin`, then read as the answer; on a reused connection such bytes are unasked-for.
        self.fresh = True
        self.early = bytearray()
        self.early_end = False
        self._reset()

    def _reset(self) -> None:
        self.reason = b""
        self.headers: Headers = []
        self.head_size = 0  # bytes of header names and values
        # Bytes fed since the parser last got to a head or a piece of body: a head, trailers or a
        # chunk line past MAX_HEAD is refused (h11's bound), not accumulated.
        self.unframed = 0
        self.trailers = 0  # bytes of trailers, dropped
        self.head = False  # the final response head has come
        self.chunked = False  # re-chunked to the client
        self.informational = False
        self.complete = False
        self.keep = True  # the dyno lets the connection be reused
        self.got_any = False
        self.until_close = False  # the body ends when the dyno closes
        self.error: HerokuError | None = None  # set by a callback that stopped the parser
        self.out = bytearray()

    # -- the exchange ---------------------------------------------------------------------

    def begin(
        self, client: Receiver, entry: RequestLog, request: bytes, timeout: float, idle: float
    ) -> None:
        """Send `request` (a bodyless head) for `client` and await the answer: its head within
        `timeout` (H12), then no more than `idle` between two pieces of body (H15)."""
        self._reset()
        self.client, self.entry = client, entry
        self.timeout, self.idle = timeout, idle
        assert self.transport is not None
        self.transport.write(request)
        self.deadline.set(self.loop.time() + self.timeout)
        if client.write_paused:
            self.transport.pause_reading()
        if self.fresh:
            self.fresh = False
            if self.early or self.early_end:  # read after this call: never inside the caller's
                self.loop.call_soon(self._read_early)

    def _read_early(self) -> None:
        """Read what came before `begin` (at most once); then the end, if it came too."""
        early, self.early = bytes(self.early), bytearray()
        if early and self.client is not None:
            self.data_received(early)
        if self.early_end:
            self.early_end = False
            self._ended()

    def resume_reading(self) -> None:
        """The client reads again: read the dyno, whose clock restarts (it was not to blame)."""
        if self.transport is not None:
            self.transport.resume_reading()
        if self.client is not None:
            self.deadline.set(self.loop.time() + (self.idle if self.head else self.timeout))

    def detach(self) -> None:
        """The exchange is over (or abandoned): no more relaying to its client."""
        self.client = self.entry = None
        self.deadline.clear()

    def abort(self) -> None:
        self.open = self.reusable = False
        self.detach()
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one in all we use.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None and self.fresh and len(self.early) + len(data) <= EARLY_LIMIT:
            self.early += data
            return
        if client is None or self.complete:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted again
            return
        self.got_any = True
        self.unframed += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # or a callback's
            if not self.complete:
                self._fail(self.error or (H18 if self.head else H17))
                return
            # Bytes behind a whole answer (another response, garbage): never relayed, they would
            # answer the client's next request; the connection is not used again.
            self.reusable = False
        if self.client is not client:
            return  # failed inside a callback
        if self.unframed > MAX_HEAD and not self.complete:
            self._fail(H18 if self.head else H17)  # an endless head, trailer or chunk line
            return
        if self.out:
            client.write(self.out)
            self.out = bytearray()
        if self.complete:
            self.detach()
            client.exchange_done(self, self.keep and self.reusable and self.open)

    def eof_received(self) -> bool:
        if self.fresh:
            self.early_end = True
            return True  # the transport stays until `begin` has read what came before
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fresh:
            self.early_end = True
            self.deadline.cancel()
            return
        self._ended()
        self.deadline.cancel()

    def pause_writing(self) -> None:
        pass  # only request heads are written here: they fit in the socket buffer

    def resume_writing(self) -> None:
        pass

    def _ended(self) -> None:
        if self.early and not self.fresh:  # the end overtook the read of the early answer
            self._read_early()
        self.open = self.reusable = False
        client = self.client
        if client is None:
            return
        if self.head and not self.complete and self.until_close:
            self.out += CHUNKED_END  # a close-delimited body ends here, whole
            client.write(self.out)
            self.out = bytearray()
            self.detach()
            client.exchange_done(self, False)
        elif self.head:
            self._fail(H18)
        else:
            self._fail(H13)

    def _expired(self) -> None:
        client = self.client
        if client is not None and not client.write_paused:  # else the client's clock runs
            self._fail(H15 if self.head else H12)

    def _fail(self, error: HerokuError) -> None:
        client, got_any = self.client, self.got_any
        if client is not None and self.head and self.out:
            client.write(self.out)  # what came before the fault, as the h11 path relays it
            self.out = bytearray()
        self.abort()
        if client is not None:
            client.exchange_failed(self, error, self.head, stale=error is H13 and not got_any)

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the same read: stop before it is parsed
            raise ValueError("bytes after a whole response")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head:  # a trailer: dropped (as h11's re-chunking does), bounded like a head
            self.trailers += len(name) + len(value) + 4
            if self.trailers > MAX_HEAD:
                self.error = H18
                raise ValueError("trailers too long")
            return
        self.headers.append((name, value.rstrip(b" \t")))
        self.head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        client, entry = self.client, self.entry
        assert client is not None and entry is not None
        headers = self.headers
        self.unframed = 0
        if self.head_size > MAX_HEAD:  # a head past h11's bound, come in one read
            self.error = H17
            raise ValueError("response head too long")
        if status < 200:
            if status == 101:  # never asked for: the fast path forwards no Upgrade
                self.error = H17
                raise ValueError("101 without an Upgrade request")
            self.informational = True
            self.out += response_head(
                status, self.reason, forward_response_headers(headers, upgrade=False)
            )
            self.reason, self.headers, self.head_size = b"", [], 0
            return
        self.head = True
        entry.status = status
        entry.bytes = 0
        version = self.parser.get_http_version()
        key = (status, self.reason, version, client.close_after, *headers)
        framed = _framed.get(key)
        if framed is None:
            framed = _frame(status, self.reason, version, client.close_after, headers)
            if self.head_size <= _FRAMED_LONGEST:
                if len(_framed) >= _FRAMED_SIZE:
                    _framed.clear()
                _framed[key] = framed
        head, self.chunked, self.until_close, self.keep = framed
        if not head:  # a framing h11 refuses: H17 before anything is relayed
            self.head, self.error = False, H17
            raise ValueError("unsupported Transfer-Encoding")
        self.out += head
        self.deadline.set(self.loop.time() + self.idle)

    def on_body(self, body: bytes) -> None:
        entry = self.entry
        assert entry is not None
        entry.bytes = (entry.bytes or 0) + len(body)
        self.unframed = 0
        if self.chunked:
            if body:
                self.out += b"%x\r\n" % len(body)
                self.out += body
                self.out += b"\r\n"
        else:
            self.out += body
        self.deadline.set(self.loop.time() + self.idle)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.chunked:
            self.out += CHUNKED_END
        self.complete = True


# The client's head and framing, by the dyno's head: a dyno answers the same head (within its
# Date's second) to one request after another; building it was a tenth of a request. Bounded.
_FRAMED_SIZE = 256
_FRAMED_LONGEST = 4096  # a head with more header bytes is framed, not kept
_framed: dict[tuple[object, ...], tuple[bytes, bool, bool, bool]] = {}


def _frame(
    status: int, reason: bytes, version: str, close_after: bool, headers: Headers
) -> tuple[bytes, bool, bool, bool]:
    """(head for the client, re-chunked, delimited by the dyno's close, dyno keeps alive); an
    empty head for a Transfer-Encoding h11 refuses (not exactly one, and `chunked`): a `gzip`
    alone would be close-delimited to llhttp, H17 on the proven path."""
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
        return b"", False, False, False
    plan = response_plan(headers)
    keep = not plan.asks_close and version == "1.1"
    out = plan.headers
    chunked = until_close = False
    if status not in _NO_BODY and (plan.chunked or not plan.length):
        # chunked from the dyno, or delimited by its close: chunked to the client (h11's rule)
        chunked, until_close = True, not plan.chunked
        if plan.length:
            out = [(n, v) for n, v in out if n.lower() != b"content-length"]
        out.append((b"Transfer-Encoding", b"chunked"))
    if close_after:
        out.append((b"Connection", b"close"))
    return response_head(status, reason, out), chunked, until_close, keep


async def open_upstream(
    backend: Backend,
    entry: RequestLog,
    *,
    timeout: float,
    socket_mark: int | None,
    source_address: str | None,
) -> Upstream:
    """A new marked (optionally source-bound) connection to the dyno: `proxy.connect`'s rules,
    H99 (socket set-up), H19 (connect timeout) or H13 (refused) as `Fail`."""
    loop = asyncio.get_running_loop()
    sock = await dial(
        backend, entry, timeout=timeout, socket_mark=socket_mark, source_address=source_address
    )
    try:
        _, upstream = await loop.create_connection(lambda: Upstream(backend, loop), sock=sock)
    except BaseException:
        sock.close()
        raise
    return upstream
