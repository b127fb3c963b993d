"""Heroku's HTTP router, as an asyncio reverse proxy.

Every app is reachable as ``http://APP.localhost:PORT/``.  The router reads the ``Host``
header, asks its route table (``dynod.router.routes``, replaced by the control side with
``update(table)`` on every change) for the app's web dynos that are up, picks one
round-robin (one counter per app), opens a fresh TCP connection to it, forwards the request
with Heroku's ``X-Forwarded-*`` / ``X-Request-*`` / ``Via`` headers, streams the response
back, and hands one Heroku-style log line per request to ``log(line, app)`` (app is None
when the Host named no known app).

Design
------
* The modules: ``server`` (this one: listening, connections, one request's routing),
  ``proxy`` (one exchange with a dyno), ``peer`` (an h11 connection on a stream pair, closing,
  splicing), ``pages`` (answers the router writes itself), ``headers`` (HTTP header and target
  rules), ``logline`` (Heroku's error codes and log line), ``limits`` (caps and admission),
  ``routes`` (the access policy, as a value).
* Each connection starts on the fast path (``fast``: an ``asyncio.Protocol`` with httptools'
  parser, its dyno side in ``upstream``, its pool in ``fastpool``, its bytes in ``frames``),
  which serves the common exchange, a bodyless HTTP/1.1 request, with callbacks only and the
  same headers, log line and error codes.  Anything else (a body, HEAD, Upgrade, Expect,
  HTTP/1.0, absolute-form, a malformed or ambiguous head) is handed over, from the first byte
  of that request, to the h11 path below for the rest of the connection.
* On the h11 path, one asyncio task per client connection.  Requests on a keep-alive
  connection are handled one after the other, each routed independently (a router that
  balances per request).  The
  connections to the dynos are kept alive and reused (``pool``: at most 64 idle per dyno, only
  after a clean exchange, closed when the dyno leaves the route table); a reused connection the
  dyno closed meanwhile is retried once on a fresh one when the request may be repeated.
* While the response head is awaited, a second task streams the request body to the dyno,
  so a dyno can answer before it has read the whole body, and neither direction is ever
  buffered whole: each chunk is written and ``drain()``-ed before the next one is read.
* ``Upgrade`` requests (WebSocket) are forwarded with ``Connection: Upgrade``; if the dyno
  answers ``101`` the router relays the 101 and then splices raw bytes both ways.
* Failures map onto Heroku's error codes and a 503 page: H12 (no response head within
  ``response_timeout`` after the request was fully sent), H13 (connection refused, or the
  dyno closed without answering), H14 (no web dynos), H15 (dyno idle for ``idle_timeout``
  mid-body: the client connection is just closed), H17 (unparseable response), H18 (dyno
  closed mid-body), H19 (connect timeout), H27/H28 (client went away / went idle; logged
  with status 499, nothing sent), H99 (``resolve`` raised, or the outgoing socket could not
  be set up, e.g. ``SO_MARK`` without CAP_NET_ADMIN).
* ``Expect: 100-continue`` is passed to the dyno and its ``100 Continue`` relayed, so the
  dyno (not the router) decides whether it wants the body, as RFC 9110 intends for proxies.
* A request body the client frames badly (a malformed chunk size) is H25 "HTTP Restriction":
  400 to the client, the dyno's connection dropped.
* Resources: each client address may hold ``max_client_connections`` connections, and all
  clients together ``max_connections`` (by default what the open file limit leaves room for,
  two descriptors each: client and dyno); connections beyond are closed at once.  A keep-alive
  connection may idle ``idle_timeout`` before a request, and a request head, once begun, must be
  whole within ``head_timeout`` (slowloris): else 408, logged as H28.
* Routing goes by ``Host``, or by the authority of an absolute-form target
  (``GET http://other.localhost/ HTTP/1.1``), which overrides Host (RFC 9112 3.2.2); the dyno
  gets the origin-form (``GET / HTTP/1.1``) and a Host naming that authority.  Names listed in
  ``Connection`` are dropped as hop-by-hop, except Host and Content-Length, which the request
  cannot do without.
* Unknown apps (``resolve`` returns None, or the Host is not ``*.localhost``) get a 404
  "no such app" and are logged ``at=info ... status=404`` with empty dyno/connect/service/
  bytes, because nothing went wrong inside the platform.  Malformed requests get h11's
  suggested status (400, or 431 for oversized heads) and are logged the same way.

Strict framing on top of h11: a request head with obs-fold or a bare LF line end (which h11
tolerates) is refused with 400 before h11 parses it (``headers.strict_head_problem``), and so
is a request with both Content-Length and Transfer-Encoding, once h11 has parsed its head.

Why h11
-------
h11 is a pure-Python, sans-IO HTTP/1.1 state machine maintained by python-hyper.  Sans-IO
means the router owns the sockets (needed for ``SO_MARK`` and source binding on outgoing
connections) and all timeouts, while h11 only parses and frames.  Its strict RFC 7230
framing (rejecting conflicting Content-Length/Transfer-Encoding, bad chunk sizes, obs-fold,
...) is what protects a proxy against request smuggling, and the same library plays both
the server role (towards clients) and the client role (towards dynos), including the
protocol-switch bookkeeping (``trailing_data``) that WebSocket splicing needs.  aiohttp is a
whole framework with its own server/client lifecycles and lenient parsing, and httptools is
a C parser binding that only parses (no framing of what we send, no client role).

Why httptools too
-----------------
h11 was half of each request's time. The fast path parses with httptools (llhttp, what uvicorn
uses) and frames by hand (``frames``) the few shapes it takes, held byte for byte to h11's output
by the tests; every case where framing gets subtle (bodies, upgrades, 100-continue, HTTP/1.0,
malformed or ambiguous heads) stays with h11 through the handover. Where the dyno's response is
odd, the fast path is stricter than h11 and answers H17 where h11 relays it: a duplicate
identical Content-Length, Content-Length with Transfer-Encoding, a bare-LF response head. Both
refuse a Transfer-Encoding other than one ``chunked`` (H17, before anything is relayed) and
relay only the dyno's first response; the fast path bounds a response head by h11's 16 KiB (H17)
and drops trailers, 16 KiB at most (H18).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable

import h11

from dynod.router.fast import FastClient
from dynod.router.fastpool import UpstreamPool
from dynod.router.headers import (
    Headers,
    app_from_host,
    forward_request_headers,
    is_upgrade_request,
    new_request_id,
    pick_request_id,
    split_absolute_form,
    strict_head_problem,
)
from dynod.router.limits import DISCARD_LIMIT, MAX_CLIENT_CONNECTIONS, READ_SIZE, Admission
from dynod.router.listener import Listener
from dynod.router.logline import (
    H14,
    H28,
    H99,
    HerokuError,
    RequestLog,
    format_log_line,
    request_log,
)
from dynod.router.pages import send_error_page, send_rejection
from dynod.router.peer import Fail, H11Event, Peer, close_writer, linger, now_ms, peer_ip
from dynod.router.pool import IDEMPOTENT, BackendPool
from dynod.router.proxy import Exchange, Stale, connect
from dynod.router.routes import Backend, Refused, Resolve, RouteTable
from dynod.router.turns import Turns

__all__ = ["Router"]

_logger = logging.getLogger(__name__)


NO_SUCH_APP = b"no such app\n"
# The router's own answer: status, Heroku error, text of a plain page.
Answer = tuple[int, HerokuError | None, bytes]


class Router:
    """Heroku's router: ``APP.localhost`` -> round-robin over the app's web dynos."""

    def __init__(
        self,
        resolve: Resolve,
        log: Callable[[str, str | None], object],
        *,
        connect_timeout: float = 5.0,
        response_timeout: float = 30.0,
        idle_timeout: float = 55.0,
        socket_mark: int | None = None,
        source_address: str | None = None,
        head_timeout: float = 30.0,
        max_client_connections: int = MAX_CLIENT_CONNECTIONS,
        max_connections: int | None = None,
        turns: Turns | None = None,
    ) -> None:
        """`resolve(app, client_ip)` answers each request until `update` gives a route table:
        the daemon passes ``RouteTable().resolve`` (no apps yet), tests a function of theirs."""
        self._resolve = resolve
        self._log = log
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout  # a request head, once begun, is whole by then
        self.max_client_connections = max_client_connections
        self.max_connections = max_connections  # None: what the open file limit allows
        self._admission = Admission()
        self.socket_mark = socket_mark
        self.source_address = source_address
        self.port = 0  # the bound port, set by start()
        self._server: asyncio.Server | Listener | None = None
        self._extra: dict[str, asyncio.Server | Listener] = {}  # more listening addresses, by host
        self._tasks: set[asyncio.Task[None]] = set()
        self._turns = turns or Turns()  # round robin per app (shared between workers)
        self._pool = BackendPool()  # idle keep-alive connections to the dynos
        self._fast: set[FastClient] = set()  # client connections on the fast path
        self._upstreams = UpstreamPool()  # the fast path's idle connections to the dynos
        self._closing = False

    def update(self, table: RouteTable, gone: Iterable[Backend] | None = None) -> None:
        """Route every request from now on by `table` (a whole new one: tables never change);
        `gone`, when known, the backends it no longer has (else all are looked over)."""
        self._resolve = table.resolve
        # A dyno no longer in the table (stopped, crashed, on a new port) loses its pool.
        if gone is None:
            routed = {b for route in table.apps.values() for b in route.backends}
            self._pool.retain(routed)
            self._upstreams.retain(routed)
            return
        for backend in gone:
            self._pool.drop(backend)
            self._upstreams.drop(backend)

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        """Bind and listen; ``port=0`` picks a free port, readable afterwards as ``.port``.
        With `sock`, serve that listening socket instead (a worker process's, from the daemon)."""
        if self._server is not None:
            raise RuntimeError("router already started")
        self._closing = False
        self._server = await self._listen(host, port, sock)
        self.port = self._server.sockets[0].getsockname()[1]

    async def listen(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        """Listen on one more address (a Private Space's router address)."""
        if host in self._extra:
            return
        self._extra[host] = await self._listen(host, port, sock)

    async def _listen(
        self, host: str, port: int, sock: socket.socket | None
    ) -> asyncio.Server | Listener:
        """Each connection starts on the fast path (`router.fast`), which hands what it does
        not take over to `_serve`. A socket from the daemon, which the other workers share, is
        served one accept at a time (`router.listener`)."""
        if sock is not None:
            return Listener(sock, lambda: FastClient(self))
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: FastClient(self), host, port)

    async def unlisten(self, host: str) -> None:
        """Stop listening on that address; its connections in progress finish."""
        server = self._extra.pop(host, None)
        if server is not None:
            server.close()

    async def close(self) -> None:
        """Stop listening and drop every client connection (and its dyno connection)."""
        self._closing = True
        server, self._server = self._server, None
        for extra in self._extra.values():
            extra.close()
        self._extra.clear()
        if server is not None:
            server.close()
        for client in list(self._fast):
            client.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.close()
        self._upstreams.close()
        if server is not None:
            await server.wait_closed()

    # -- client connections --------------------------------------------------------------

    def _admit(self, client_ip: str) -> bool:
        return self._admission.admit(
            client_ip,
            len(self._tasks) + len(self._fast),
            self.max_client_connections,
            self.max_connections,
        )

    def _admit_fast(self, client: FastClient) -> bool:
        """Count a new connection on the fast path, or refuse it (the caps of `_admit`)."""
        if self._closing or not self._admit(client.ip):
            return False
        self._fast.add(client)
        return True

    def _release_fast(self, client: FastClient) -> None:
        if client in self._fast:
            self._fast.discard(client)
            self._admission.release(client.ip)

    def _handed_over(
        self, client: FastClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The fast path gives this connection (and its admission) to `_serve`."""
        self._fast.discard(client)
        task = asyncio.get_running_loop().create_task(self._serve_handed(client.ip, reader, writer))
        self._tasks.add(task)

    async def _serve_handed(
        self, client_ip: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self._serve(Peer(h11.Connection(h11.SERVER), reader, writer))
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            self._admission.release(client_ip)

    async def _serve(self, client: Peer) -> None:
        client_ip = peer_ip(client.writer)
        try:
            while await self._serve_one(client, client_ip):
                client.conn.start_next_cycle()
            # a body not read, or a head refused while it was still coming (431, or 400 for a
            # bare LF seen early): closing on unread input would make the kernel reset the
            # connection, answer and all
            if client.conn.their_state is h11.SEND_BODY or client.refused:
                await linger(client)
        except (ConnectionError, OSError, TimeoutError, h11.ProtocolError):
            pass  # the client went away or we could not frame something: just hang up
        except Exception:  # a bug must cost one connection, never the router
            _logger.exception("router: unexpected error serving %s", client_ip)
        finally:
            await close_writer(client.writer)

    async def _serve_one(self, client: Peer, client_ip: str) -> bool:
        """Handle the next request on the connection; True if another one may follow."""
        try:
            event = await self._next_request(client)
        except h11.RemoteProtocolError as exc:
            client.refused = True
            await self._reject(client, client_ip, exc.error_status_hint, None)
            return False
        except TimeoutError:
            if client.conn.trailing_data[0]:  # a request begun but not finished: slowloris
                await self._reject(client, client_ip, 408, H28)
            return False  # else an idle keep-alive connection: just close
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed (or PAUSED on a broken pipeline)
        keep = await self._handle_request(client, event, client_ip)
        conn = client.conn
        return keep and conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _next_request(self, client: Peer) -> H11Event:
        """The next request head: the client may idle ``idle_timeout`` before it starts, and
        must finish it within ``head_timeout`` of the first byte (TimeoutError otherwise)."""
        deadline = None
        while True:
            if client.conn.their_state is h11.IDLE:  # a head, not yet parsed: strict framing
                problem = strict_head_problem(client.conn.trailing_data[0])
                if problem is not None:
                    raise h11.RemoteProtocolError(problem, error_status_hint=400)
            event = client.conn.next_event()
            if isinstance(event, h11.Request) and _has_both_framings(event):
                # RFC 9112 6.1 lets a server read such a request by Transfer-Encoding; a proxy
                # refuses it instead: it is how request smuggling starts, and no honest client
                # sends both. 400, the connection closes, and nothing reaches a dyno.
                raise h11.RemoteProtocolError(
                    "both Content-Length and Transfer-Encoding", error_status_hint=400
                )
            if event is not h11.NEED_DATA:
                return event
            if deadline is None and client.conn.trailing_data[0]:
                deadline = time.monotonic() + self.head_timeout
            wait = self.idle_timeout if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                data = await client.reader.read(READ_SIZE)
            client.saw_eof = client.saw_eof or not data
            client.conn.receive_data(data)

    async def _reject(
        self, client: Peer, client_ip: str, status: int, error: HerokuError | None
    ) -> None:
        """Answer a request the router cannot read (malformed, or too slow) and log it."""
        entry = RequestLog(request_id=new_request_id(), fwd=client_ip, status=status)
        entry.error = error
        try:
            await send_rejection(client, status, self.idle_timeout)
        finally:
            self._emit(entry)

    # -- one request ---------------------------------------------------------------------

    async def _handle_request(self, client: Peer, request: h11.Request, client_ip: str) -> bool:
        raw = list(request.headers.raw_items())
        target = request.target
        bad_target: bytes | None
        try:
            absolute = split_absolute_form(request.method, target)
        except ValueError as exc:
            absolute, bad_target = None, f"{exc}\n".encode()
        else:
            bad_target = None
        if absolute is not None:
            # The absolute-form's authority overrides Host; the dyno gets a Host naming it.
            authority, target = absolute
            raw = [(b"Host", authority)] + [(k, v) for k, v in raw if k.lower() != b"host"]
        entry = _entry(request, raw, target, client_ip)
        try:
            if bad_target is not None:
                return await self._answer_locally(client, entry, 400, None, bad_target)
            return await self._route(client, request, raw, entry, target)
        except asyncio.CancelledError:
            entry.emitted = True  # router shutting down: not a request outcome worth logging
            raise
        finally:
            self._emit(entry)

    async def _route(
        self, client: Peer, request: h11.Request, raw: Headers, entry: RequestLog, target: bytes
    ) -> bool:
        arrived_ms = now_ms()
        app = app_from_host(entry.host) if request.method != b"CONNECT" else None
        chosen = self._choose(entry, app)
        if not isinstance(chosen, Backend):
            return await self._answer_locally(client, entry, *chosen)
        return await self._proxy(client, request, raw, entry, target, chosen, arrived_ms)

    def _choose(self, entry: RequestLog, app: str | None) -> Backend | Answer:
        """The dyno for this request (round robin over its app's), or the router's own answer
        (404, 403, H99, H14); `entry.app` once the app is known to this client."""
        if app is None:
            return 404, None, NO_SUCH_APP
        try:
            backends = self._resolve(app, entry.fwd)
        except Refused as refused:
            entry.app = app
            return 403, None, f"{refused}\n".encode()
        except Exception:
            _logger.exception("router: resolve(%r) failed", app)
            return H99.status, H99, NO_SUCH_APP
        if backends is None:
            return 404, None, NO_SUCH_APP
        entry.app = app
        if not backends:
            return H14.status, H14, NO_SUCH_APP
        return backends[self._turns.next(app) % len(backends)]

    async def _proxy(
        self,
        client: Peer,
        request: h11.Request,
        raw: Headers,
        entry: RequestLog,
        target: bytes,
        backend: Backend,
        arrived_ms: int,
    ) -> bool:
        """Send the request to `backend` and its answer back (or answer an error page)."""
        entry.dyno = backend.dyno
        headers = forward_request_headers(
            raw,
            client_ip=entry.fwd,
            listen_port=self.port,
            request_start_ms=arrived_ms,
            request_id=entry.request_id,
        )
        # `_parsed`: h11 skips its per-header name/value regexes (a tenth of a request's time),
        # which these passed when the client's head was parsed; what the router adds is digits,
        # an address, a checked request id, or a Host cut from the (checked) target. Method,
        # target, Host and the framing headers are still checked.
        outgoing = h11.Request(method=request.method, target=target, headers=headers, _parsed=True)
        upgrade = is_upgrade_request(raw)
        # A reused connection the dyno closed meanwhile is retried once on a fresh one.
        peer = None if upgrade else self._pool.take(backend)
        if peer is not None:
            entry.connect_ms = 0
            try:
                return await self._exchange(client, peer, backend, entry, outgoing, retry=True)
            except Stale:
                entry.service_ms = None
        try:
            peer = await connect(
                backend,
                entry,
                timeout=self.connect_timeout,
                socket_mark=self.socket_mark,
                source_address=self.source_address,
            )
        except Fail as fail:
            entry.bytes = 0
            return await self._answer_locally(client, entry, fail.error.status, fail.error)
        return await self._exchange(client, peer, backend, entry, outgoing, retry=False)

    async def _exchange(
        self,
        client: Peer,
        peer: Peer,
        backend: Backend,
        entry: RequestLog,
        outgoing: h11.Request,
        *,
        retry: bool,
    ) -> bool:
        """One try of the request on `peer`; the connection goes back to the pool after a
        clean exchange, else it is closed. Raises Stale (only with `retry`)."""
        kept = False
        try:
            exchange = Exchange(
                client,
                peer,
                entry,
                idle_timeout=self.idle_timeout,
                response_timeout=self.response_timeout,
                emit=self._emit,
                may_retry=retry and outgoing.method in IDEMPOTENT,
            )
            keep = await exchange.run(outgoing)
            kept = not self._closing and self._pool.give(backend, peer)
            return keep
        finally:
            if not kept:
                await close_writer(peer.writer)

    async def _answer_locally(
        self,
        client: Peer,
        entry: RequestLog,
        status: int,
        error: HerokuError | None,
        text: bytes = NO_SUCH_APP,
    ) -> bool:
        """Answer without (further) involving a dyno: 404, 403, or a 503 error page."""
        entry.status, entry.error = status, error
        # Read a small unwanted body so the connection can stay alive -- unless the client is
        # waiting for "100 Continue", in which case it will not send the body at all.
        if not client.conn.they_are_waiting_for_100_continue:
            await self._discard_body(client)
        await send_error_page(client, status, error, self.idle_timeout, text)
        return True

    async def _discard_body(self, client: Peer) -> None:
        discarded = 0
        with contextlib.suppress(h11.RemoteProtocolError, TimeoutError, OSError):
            while client.conn.their_state is h11.SEND_BODY and discarded <= DISCARD_LIMIT:
                event = await client.next_event(timeout=self.idle_timeout)
                if not isinstance(event, h11.Data | h11.EndOfMessage):
                    return
                discarded += len(event.data) if isinstance(event, h11.Data) else 0

    def _emit(self, entry: RequestLog) -> None:
        if entry.emitted:
            return
        entry.emitted = True
        try:
            self._log(format_log_line(entry), entry.app)
        except Exception:
            _logger.exception("router: log callback failed")


def _entry(request: h11.Request, raw: Headers, target: bytes, client_ip: str) -> RequestLog:
    """The log entry of a request, as far as its head tells."""
    host = b", ".join(value for name, value in raw if name.lower() == b"host")
    return request_log(request.method, target, host, pick_request_id(raw), client_ip)


def _has_both_framings(request: h11.Request) -> bool:
    names = {name for name, _ in request.headers}
    return b"transfer-encoding" in names and b"content-length" in names
