"""The router's fast path: a client connection as an `asyncio.Protocol`, request heads parsed by
httptools (llhttp), no coroutine or task per request.

It takes the common exchange: a bodyless HTTP/1.1 request (no Content-Length, or 0; no
Transfer-Encoding) in origin form with one Host, any method but CONNECT and HEAD, without
Upgrade or Expect, whose head is whole, under h11's 16 KiB and passes the router's strict-head
checks. Anything else, from the first byte of that request, is handed over to the proven
h11/streams path (`Router._serve`) for the rest of the connection, which also answers every
malformed request (400, 431, 501...) exactly as before: the fast path refuses nothing itself
but the slowloris head (408, H28).

Each request is routed like on the proven path (`server.Router._route`: 404, 403, H14, H99,
round robin), sent to the dyno on a pooled `Upstream` (or a new one: the one task per request
left, for the connect), and answered from the `Upstream`'s callbacks. The log entry is the same
`RequestLog`, emitted once per request. The client may idle ``idle_timeout`` between requests
and must finish a head within ``head_timeout`` of its first byte; while an exchange runs,
further (pipelined) bytes wait unparsed, and reading pauses once they pass ``READ_SIZE``.
Flow control: while the client's transport is over its high-water mark, the dyno's is not read,
and no further request of the client's is taken (nor read): pages the router writes itself
(404...) wait for the client to read too, for ``idle_timeout`` at most. Pipelined requests are
taken in a loop over a read offset, however many the router answers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol, cast

from dynod.router.deadline import Deadline
from dynod.router.fasthead import RequestHead
from dynod.router.fastheaders import request_head_bytes
from dynod.router.fastpool import UpstreamPool
from dynod.router.frames import error_page, rejection
from dynod.router.headers import (
    Headers,
    app_from_host,
    new_request_id,
    request_id_from,
)
from dynod.router.limits import MAX_HEAD, READ_SIZE
from dynod.router.logline import H27, H28, H99, HerokuError, RequestLog, request_log
from dynod.router.peer import Fail, elapsed_ms, now_ms
from dynod.router.pool import IDEMPOTENT
from dynod.router.routes import Backend, Resolve
from dynod.router.turns import Turns
from dynod.router.upstream import Upstream, open_upstream

__all__ = ["MAX_HEAD", "FastClient"]

_logger = logging.getLogger(__name__)


# `app_from_host` by host: the same few hosts come again and again. Bounded: cleared when full,
# and only hosts of a sane length kept.
_APPS_SIZE = 4096
_apps: dict[str, str | None] = {}


def _app_of(host: str) -> str | None:
    try:
        return _apps[host]
    except KeyError:
        if len(host) > 255:
            return app_from_host(host)
        if len(_apps) >= _APPS_SIZE:
            _apps.clear()
        app = _apps[host] = app_from_host(host)
        return app


class RouterSide(Protocol):
    """What the fast path uses of its `server.Router`."""

    port: int
    connect_timeout: float
    response_timeout: float
    idle_timeout: float
    head_timeout: float
    socket_mark: int | None
    source_address: str | None
    _closing: bool
    _resolve: Resolve
    _turns: Turns
    _upstreams: UpstreamPool

    def _admit_fast(self, client: FastClient) -> bool: ...

    def _release_fast(self, client: FastClient) -> None: ...

    def _handed_over(
        self, client: FastClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None: ...

    def _emit(self, entry: RequestLog) -> None: ...

    def _choose(
        self, entry: RequestLog, app: str | None
    ) -> Backend | tuple[int, HerokuError | None, bytes]: ...


class FastClient(asyncio.Protocol):
    """One client connection on the fast path."""

    def __init__(self, router: RouterSide) -> None:
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.ip_bytes = b""
        self.buf = b""  # received; the requests before `pos` are taken
        self.pos = 0
        self.taking = False  # `_next` is running: an answer given inside it does not recurse
        self.head = RequestHead()
        self.deadline = Deadline(self.loop, self._expired)
        self.head_begun = False  # the slowloris clock runs
        self.closed = False
        self.eof = False
        self.reading = True
        self.write_paused = False
        # The exchange in progress (entry is None between requests).
        self.entry: RequestLog | None = None
        self.upstream: Upstream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.close_after = False
        self.sent_at = 0.0
        self.retry = False  # the request may be sent again on a fresh connection
        self.request = b""  # its head, as sent to the dyno

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one in all we use.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.ip = ip.removeprefix("::ffff:")
        self.ip_bytes = self.ip.encode()
        if not self.router._admit_fast(self):
            self.closed = True
            transport.abort()
            return
        self.deadline.set(self.loop.time() + self.router.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.pos:
            self.buf, self.pos = self.buf[self.pos :] + data, 0
        else:
            self.buf = self.buf + data if self.buf else data
        if self.entry is not None:
            if len(self.buf) > READ_SIZE and self.reading:
                self._pause_reading()  # pipelined bytes wait for the exchange
            return
        self._next()

    def eof_received(self) -> bool:
        self.eof = True
        if self.entry is None and not self.closed and not self.write_paused:
            if len(self.buf) > self.pos:
                self._handover()  # a head cut short: the proven path answers it (400)
            else:
                self._close()
        return True  # half-closed: an exchange in progress still answers

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return  # handed over
        self.closed = True
        self.deadline.cancel()
        if self.entry is not None:
            self._abandon()
        self.router._release_fast(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()
        if self.entry is not None:
            # The dyno is not read now, so not to blame for its silence (H12, H15): the client
            # has idle_timeout to read on, as on the proven path.
            self.deadline.set(self.loop.time() + self.router.idle_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.entry is not None:
            self.deadline.clear()
            if self.upstream is not None:
                self.upstream.resume_reading()
        elif not self.closed:
            self._next()  # the requests waiting behind answers the client had not read

    # -- requests -------------------------------------------------------------------------

    def _next(self) -> None:
        """Take the requests that are whole, one at a time, while no exchange runs: a loop, as
        requests answered by the router itself (404...) may come pipelined by the thousand."""
        if self.taking:
            return  # called back from inside the loop (an answer given in `_start`)
        self.taking = True
        try:
            self._take()
        finally:
            self.taking = False

    def _take(self) -> None:
        while self.entry is None and not self.closed:
            if self.write_paused:
                # The client does not read our answers: read no more requests from it until
                # it does (`resume_writing`), for `idle_timeout` at most.
                if self.reading:
                    self._pause_reading()
                self.head_begun = False
                self.deadline.set(self.loop.time() + self.router.idle_timeout)
                return
            if not self.reading:
                self.reading = True
                assert self.transport is not None
                self.transport.resume_reading()
            buf, pos = self.buf, self.pos
            if pos >= len(buf):
                self.buf, self.pos = b"", 0
                if self.eof:
                    self._close()
                else:
                    self.head_begun = False
                    self.deadline.set(self.loop.time() + self.router.idle_timeout)
                return
            end = buf.find(b"\r\n\r\n", pos, pos + MAX_HEAD)
            if end < 0:
                if len(buf) - pos >= MAX_HEAD or self.eof:
                    self._handover()  # oversized or cut: the proven path answers
                elif not self.head_begun:
                    self.head_begun = True
                    self.deadline.set(self.loop.time() + self.router.head_timeout)
                return
            head = buf[pos : end + 4]
            if not self.head.parse(head):
                self._handover()
                return
            self.pos = end + 4
            self._start(head)

    def _start(self, request: bytes) -> None:
        head = self.head
        method = head.method
        raw = head.headers
        self.close_after = not head.keep
        self.head_begun = False
        self.deadline.clear()
        request_id = request_id_from(head.ids) if head.ids else new_request_id()
        entry = self.entry = request_log(method, head.url, head.host, request_id, self.ip)
        self._route(entry, method, raw)

    def _route(self, entry: RequestLog, method: bytes, raw: Headers) -> None:
        """`Router._route` for the fast path."""
        router = self.router
        arrived_ms = now_ms()
        backend = router._choose(entry, _app_of(entry.host))
        if not isinstance(backend, Backend):
            self._answer(*backend)
            return
        entry.dyno = backend.dyno
        request = request_head_bytes(
            method,
            self.head.url,
            raw,
            client_ip=self.ip_bytes,
            listen_port=b"%d" % router.port,
            request_start_ms=arrived_ms,
            request_id=entry.request_id.encode(),
            lowers=self.head.lowers,
        )
        upstream = router._upstreams.take(backend)
        if upstream is None:
            self._connect(backend, request)
        else:
            entry.connect_ms = 0
            self._send(upstream, request, retry=method in IDEMPOTENT)

    def _send(self, upstream: Upstream, request: bytes, *, retry: bool) -> None:
        self.upstream = upstream
        self.retry = retry
        self.request = request
        self.sent_at = time.monotonic()
        assert self.entry is not None
        router = self.router
        upstream.begin(self, self.entry, request, router.response_timeout, router.idle_timeout)

    def _connect(self, backend: Backend, request: bytes) -> None:
        self.connecting = self.loop.create_task(self._connect_and_send(backend, request))

    async def _connect_and_send(self, backend: Backend, request: bytes) -> None:
        entry, router = self.entry, self.router
        assert entry is not None
        try:
            upstream = await open_upstream(
                backend,
                entry,
                timeout=router.connect_timeout,
                socket_mark=router.socket_mark,
                source_address=router.source_address,
            )
        except Exception as exc:  # Fail (H99, H19, H13), or a bug: never a request left hanging
            self.connecting = None
            error = exc.error if isinstance(exc, Fail) else H99
            if not isinstance(exc, Fail):
                _logger.exception("router: connecting to %s failed", backend)
            if self.entry is entry:
                entry.bytes = 0
                self._answer(error.status, error)
            return
        self.connecting = None
        if self.entry is not entry or self.closed:
            upstream.abort()
            return
        self._send(upstream, request, retry=False)

    # -- outcomes -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def exchange_done(self, upstream: Upstream, reusable: bool) -> None:
        """The whole response went to the client (called by `upstream`)."""
        entry, self.entry, self.upstream = self.entry, None, None
        assert entry is not None
        entry.service_ms = elapsed_ms(self.sent_at)
        transport = upstream.transport
        if transport is not None and not transport.is_reading() and reusable:
            transport.resume_reading()
        if reusable and not self.router._closing:
            self.router._upstreams.give(upstream.backend, upstream)
        else:
            upstream.abort()
        self._finish(entry)
        self._after_exchange()

    def exchange_failed(
        self, upstream: Upstream, error: HerokuError, head_sent: bool, *, stale: bool
    ) -> None:
        """The dyno failed the exchange (called by `upstream`, which is closed)."""
        entry = self.entry
        self.upstream = None
        if entry is None:
            return
        if stale and self.retry:
            # A reused connection the dyno had closed: once more on a fresh one (nginx's rule).
            entry.service_ms = None
            self._connect(upstream.backend, self.request)
            return
        entry.service_ms = elapsed_ms(self.sent_at)
        entry.error = error
        entry.status = error.status
        if head_sent:  # H15, H18: the response is cut, all that is left is to hang up
            self.entry = None
            self._finish(entry)
            self._close()
            return
        entry.bytes = 0
        self._answer(error.status, error)

    def _answer(
        self, status: int, error: HerokuError | None, text: bytes = b"no such app\n"
    ) -> None:
        """Answer without (further) involving a dyno: 404, 403, or a 503 error page."""
        entry, self.entry = self.entry, None
        assert entry is not None
        entry.status, entry.error = status, error
        self.write(error_page(status, error, text, self.close_after))
        self._finish(entry)
        self._after_exchange()

    def _finish(self, entry: RequestLog) -> None:
        self.router._emit(entry)

    def _after_exchange(self) -> None:
        self.sent_at = 0.0
        if self.close_after:
            self._close()
            return
        self._next()  # (resumes reading unless the client is not reading our answers)

    def _expired(self) -> None:
        if self.closed:
            return
        if self.entry is not None:
            if self.write_paused:
                self._unread()
            return
        if self.write_paused:  # our answers went unread for idle_timeout: give up on them
            self.closed = True
            assert self.transport is not None
            self.transport.abort()
            return
        if len(self.buf) > self.pos:  # a head begun and not finished in time: slowloris
            entry = RequestLog(request_id=new_request_id(), fwd=self.ip, status=408)
            entry.error = H28
            self.write(rejection(408))
            self.router._emit(entry)
        self._close()

    def _unread(self) -> None:
        """The client read nothing of the response for idle_timeout: hang up, logged as the
        proven path logs it (the dyno's status, the bytes relayed, no error of the dyno's)."""
        assert self.transport is not None
        self._abandon()
        self.closed = True
        self.transport.abort()

    def _abandon(self) -> None:
        """Drop the exchange in progress, the client gone or hung up on; logged (H27 if
        nothing was answered yet)."""
        entry, self.entry = self.entry, None
        assert entry is not None
        if self.connecting is not None:
            self.connecting.cancel()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        if entry.status == 0:  # nothing answered yet: the client went away
            entry.status, entry.error = H27.status, H27
        if self.sent_at:
            entry.service_ms = elapsed_ms(self.sent_at)
        self._finish(entry)

    def _pause_reading(self) -> None:
        self.reading = False
        assert self.transport is not None
        self.transport.pause_reading()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """The router is closing: drop the connection and its exchange."""
        if self.connecting is not None:
            self.connecting.cancel()
        if self.upstream is not None:
            self.upstream.abort()
        if self.entry is not None:
            self.entry.emitted = True  # shutting down: not a request outcome worth logging
        if self.transport is not None:
            self.transport.abort()

    # -- handover to the proven path ------------------------------------------------------

    def _handover(self) -> None:
        """The rest of this connection goes to `Router._serve`, from this request's first byte."""
        transport = self.transport
        assert transport is not None
        self.deadline.cancel()
        self.closed = True
        self.transport = None
        reader = asyncio.StreamReader(loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
        if self.write_paused:
            protocol.pause_writing()  # the transport will not say it again: drain must wait
        if len(self.buf) > self.pos:
            reader.feed_data(self.buf[self.pos :])
        if self.eof:
            reader.feed_eof()
        if not self.reading:
            with contextlib.suppress(Exception):
                transport.resume_reading()
        self.router._handed_over(self, reader, writer)
