"""The proxying of one request: connect to the dyno, send it the request, stream the body up
while awaiting the response head, relay the response (or the 101 and then raw bytes), and map
every failure onto Heroku's error codes (see `dynod.router.server` for the whole design)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import h11

from dynod.router.dial import dial
from dynod.router.headers import forward_response_headers
from dynod.router.limits import READ_SIZE
from dynod.router.logline import H12, H13, H15, H17, H18, H25, H27, H28, RequestLog
from dynod.router.pages import send_error_page
from dynod.router.peer import BadBody, ClientGone, Fail, H11Event, Peer, Splice, elapsed_ms
from dynod.router.routes import Backend

__all__ = ["Exchange", "Stale", "connect"]

_logger = logging.getLogger(__name__)


async def connect(
    backend: Backend,
    entry: RequestLog,
    *,
    timeout: float,
    socket_mark: int | None,
    source_address: str | None,
) -> Peer:
    """Open a marked (and optionally source-bound) connection to the dyno; H99, H19 or H13."""
    sock = await dial(
        backend, entry, timeout=timeout, socket_mark=socket_mark, source_address=source_address
    )
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    return Peer(h11.Connection(h11.CLIENT), reader, writer)


def _bodyless(request: h11.Request) -> bool:
    """No body follows the head: neither chunked nor a Content-Length above 0."""
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    return True


class Stale(Exception):
    """A reused keep-alive connection failed before anything came back, for a request that
    may be sent again: the caller retries it once on a fresh connection (as nginx does)."""


class Exchange:
    """One request in flight between a client and a dyno."""

    def __init__(
        self,
        client: Peer,
        backend: Peer,
        entry: RequestLog,
        *,
        idle_timeout: float,
        response_timeout: float,
        emit: Callable[[RequestLog], None],
        may_retry: bool = False,
    ) -> None:
        self.client = client
        # A reused connection and a request that can be repeated: H13 before any byte of
        # the answer raises Stale instead of answering the error page.
        self.may_retry = may_retry
        self.backend = backend
        self.entry = entry
        self.idle = idle_timeout
        self.response_timeout = response_timeout
        self.emit = emit  # logs the request line (early, for a WebSocket)
        self.sent_at = time.monotonic()
        self.upload: asyncio.Task[None] | None = None
        self.upload_done_at = 0.0

    async def run(self, outgoing: h11.Request) -> bool:
        """Proxy the request; True if the client connection stays usable."""
        entry = self.entry
        entry.bytes = 0
        try:
            return await self._proxy(outgoing)
        except ClientGone as gone:
            if gone.error is not None:
                entry.status, entry.error = gone.error.status, gone.error
            return False
        except Stale:
            entry.status = 0
            raise
        except BadBody:
            entry.status, entry.error = H25.status, H25
            await send_error_page(self.client, H25.status, H25, self.idle)
            return False
        except Fail as fail:
            entry.error = fail.error
            entry.status = fail.error.status
            # After the response head (H15, H18) this sends nothing and the caller hangs up.
            await send_error_page(self.client, fail.error.status, fail.error, self.idle)
            return self.client.conn.their_state is h11.DONE
        finally:
            if entry.service_ms is None:
                entry.service_ms = elapsed_ms(self.sent_at)
            if self.upload is not None:
                self.upload.cancel()
                await asyncio.gather(self.upload, return_exceptions=True)

    async def _proxy(self, outgoing: h11.Request) -> bool:
        try:
            head = await self._send_and_await_head(outgoing)
        except Fail as fail:
            if self.may_retry and fail.error is H13:
                raise Stale() from fail
            raise
        self.may_retry = False
        if isinstance(head, h11.InformationalResponse):
            await self._switch_protocols(head)
            return False
        return await self._relay_response(head)

    async def _send_and_await_head(
        self, outgoing: h11.Request
    ) -> h11.Response | h11.InformationalResponse:
        try:
            await self.backend.send(outgoing, timeout=self.idle)
        except (OSError, TimeoutError) as exc:
            raise Fail(H13) from exc
        if _bodyless(outgoing):
            # Most requests have no body: end it here, with no upload task to start and await.
            await self._end_bodyless()
        else:
            self.may_retry = False  # a body streamed once cannot be sent again
            self.upload = asyncio.create_task(self._upload())
        return await self._await_response_head()

    async def _upload(self) -> None:
        """Stream the client's request body to the dyno, chunk by chunk."""
        try:
            while True:
                out = await self._next_body_event()
                try:
                    await self.backend.send(out, timeout=self.idle)
                except (h11.LocalProtocolError, OSError, TimeoutError):
                    return  # the dyno stopped reading; its response (or silence) decides
                if isinstance(out, h11.EndOfMessage):
                    return
        finally:
            self.upload_done_at = time.monotonic()

    async def _next_body_event(self) -> h11.Data | h11.EndOfMessage:
        """The client's next piece of body, ready to send on; ClientGone or BadBody."""
        try:
            event = await self.client.next_event(timeout=self.idle)
        except TimeoutError as exc:
            raise ClientGone(H28) from exc
        except h11.RemoteProtocolError as exc:
            if self.client.saw_eof:  # the client went away mid-body
                raise ClientGone(H27) from exc
            raise BadBody() from exc
        except OSError as exc:
            raise ClientGone(H27) from exc
        if isinstance(event, h11.Data):
            return h11.Data(data=event.data)
        if isinstance(event, h11.EndOfMessage):
            return h11.EndOfMessage()  # trailers are hop-by-hop for us: dropped
        raise ClientGone(H27)  # closed mid-body

    async def _end_bodyless(self) -> None:
        """The request has no body: take its EndOfMessage from the client and pass it on."""
        if self.client.conn.their_state is h11.SEND_BODY:  # not yet taken (by a first try)
            event = self.client.conn.next_event()  # never NEED_DATA: framing says length 0
            if not isinstance(event, h11.EndOfMessage):
                raise BadBody()
        try:
            await self.backend.send(h11.EndOfMessage(), timeout=self.idle)
        except (OSError, TimeoutError) as exc:
            raise Fail(H13) from exc
        self.upload_done_at = time.monotonic()

    async def _next_head_event(self, upload: asyncio.Task[None] | None) -> H11Event:
        """Next event from the dyno before the response head, enforcing H12.

        Like Heroku, the response timeout only starts once the whole request has been sent:
        a slow upload is bounded by the idle timeouts instead.
        """
        if upload is None:  # the whole request is sent: only the response timeout runs
            try:
                async with asyncio.timeout(self.response_timeout):
                    return await self.backend.next_event()
            except TimeoutError as exc:
                raise Fail(H12) from exc
        read = asyncio.ensure_future(self.backend.next_event())
        try:
            if not upload.done():
                await asyncio.wait({read, upload}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                failure = None if upload.cancelled() else upload.exception()
                if isinstance(failure, ClientGone | BadBody):
                    raise failure
                left = self.upload_done_at + self.response_timeout - time.monotonic()
                done, _ = await asyncio.wait({read}, timeout=max(left, 0))
                if not done:
                    raise Fail(H12)
            return read.result()
        finally:
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)

    async def _await_response_head(self) -> h11.Response | h11.InformationalResponse:
        """The dyno's response head (or its 101); other 1xx are relayed to the client."""
        while True:
            try:
                event = await self._next_head_event(self.upload)
            except h11.RemoteProtocolError as exc:
                raise Fail(H13 if self.backend.saw_eof else H17) from exc
            except OSError as exc:
                raise Fail(H13) from exc
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise Fail(H13)  # ConnectionClosed
            if event.status_code == 101:
                return event
            await self._relay_informational(event)

    async def _relay_informational(self, event: h11.InformationalResponse) -> None:
        self.may_retry = False  # the client has seen part of this answer
        with contextlib.suppress(h11.LocalProtocolError):  # e.g. 1xx to an HTTP/1.0 client
            await self.client.send(
                h11.InformationalResponse(
                    status_code=event.status_code,
                    reason=event.reason,
                    headers=forward_response_headers(
                        list(event.headers.raw_items()), upgrade=False
                    ),
                ),
                timeout=self.idle,
            )

    async def _relay_response(self, head: h11.Response) -> bool:
        """Stream the response to the client; True if the client connection stays usable."""
        self.entry.status = head.status_code
        headers = forward_response_headers(list(head.headers.raw_items()), upgrade=False)
        try:
            # Held, not sent: it goes out with the body when that is already here.
            # `_parsed`: the dyno's headers passed h11's regexes when its head was parsed (and
            # Via is the router's own); framing headers are still checked.
            self.client.hold(
                h11.Response(
                    status_code=head.status_code, reason=head.reason, headers=headers, _parsed=True
                )
            )
        except h11.LocalProtocolError as exc:
            raise Fail(H17) from exc
        while True:
            try:
                event = self.backend.conn.next_event()
                if event is h11.NEED_DATA:
                    await self._flush_client()  # before waiting on the dyno
                    event = await self.backend.next_event(timeout=self.idle)
            except TimeoutError as exc:
                raise Fail(H15) from exc
            except (h11.RemoteProtocolError, OSError) as exc:
                raise Fail(H18) from exc
            if isinstance(event, h11.Data):
                self.client.hold(h11.Data(data=event.data))
                self.entry.bytes = (self.entry.bytes or 0) + len(event.data)
                if len(self.client.pending) >= READ_SIZE:
                    await self._flush_client()
            elif isinstance(event, h11.EndOfMessage):
                await self._to_client(h11.EndOfMessage())
                self.entry.service_ms = elapsed_ms(self.sent_at)
                return True
            else:
                raise Fail(H18)

    async def _flush_client(self) -> None:
        try:
            await self.client.flush(timeout=self.idle)
        except (OSError, TimeoutError) as exc:
            raise ClientGone(None) from exc

    async def _to_client(self, event: h11.Event) -> None:
        try:
            await self.client.send(event, timeout=self.idle)
        except (OSError, TimeoutError) as exc:
            # The client left mid-response: nothing to report beyond what was sent.
            raise ClientGone(None) from exc

    async def _switch_protocols(self, head: h11.InformationalResponse) -> None:
        """Relay the dyno's 101, log the request, then splice raw bytes until one side closes."""
        self.entry.status = 101
        headers = forward_response_headers(list(head.headers.raw_items()), upgrade=True)
        try:
            await self.client.send(
                h11.InformationalResponse(status_code=101, reason=head.reason, headers=headers),
                timeout=self.idle,
            )
        except h11.LocalProtocolError as exc:
            raise Fail(H17) from exc
        self.entry.service_ms = elapsed_ms(self.sent_at)
        self.emit(self.entry)  # a WebSocket may live for hours: log the handshake now
        await Splice(self.client, self.backend, self.idle).run()
