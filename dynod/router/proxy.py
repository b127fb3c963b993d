"""Heroku's HTTP router, as an asyncio reverse proxy.

Every app is reachable as ``http://APP.localhost:PORT/``.  The router reads the ``Host``
header, asks ``resolve(app, client_ip)`` for the app's web dynos that are up, picks one
round-robin (one counter per app), opens a fresh TCP connection to it, forwards the request
with Heroku's ``X-Forwarded-*`` / ``X-Request-*`` / ``Via`` headers, streams the response
back, and hands one Heroku-style log line per request to ``log(line, app)`` (app is None
when the Host named no known app).

Design
------
* One asyncio task per client connection.  Requests on a keep-alive connection are handled
  one after the other, each routed independently; every request gets its own backend
  connection (``Connection: close`` is sent to the dyno), which keeps the state machine
  simple and matches a router that balances per request.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import logging
import re
import resource
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import h11

__all__ = [
    "Backend",
    "HerokuError",
    "Refused",
    "RequestLog",
    "Resolve",
    "Router",
    "app_from_host",
    "format_log_line",
    "forward_request_headers",
    "forward_response_headers",
    "hop_by_hop_names",
    "is_upgrade_request",
    "pick_request_id",
    "raise_open_file_limit",
    "split_absolute_form",
]

_logger = logging.getLogger(__name__)

READ_SIZE = 65536
# How much of an unwanted request body (404, H14, ...) we read to keep the connection alive.
DISCARD_LIMIT = 1 << 20
# Upper bound for flushing our last bytes / reading the client's leftovers before closing.
CLOSE_GRACE = 1.0
# Connections one client address may hold at once (a browser opens 6 per host).
MAX_CLIENT_CONNECTIONS = 64
# Open files kept for everything but the router's connections: the API, DNS (its TCP
# connections and their upstream sockets), state, logs, namespaces, dynos' output files.
FD_RESERVE = 768
# The daemon's open file limit (`ulimit -n`), raised at start-up from systemd's default 1,024.
OPEN_FILES = 65536

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Backend:
    dyno: str  # "web.1"
    host: str  # "172.16.0.6"
    port: int


Resolve = Callable[[str, str], Sequence[Backend] | None]


class Refused(Exception):
    """Raised by ``resolve`` when the app exists but this client may not reach it (a Private
    Space's trusted IP ranges): 403, logged with the reason."""


@dataclass(frozen=True)
class HerokuError:
    code: str
    desc: str
    status: int = 503


H12 = HerokuError("H12", "Request timeout")
H13 = HerokuError("H13", "Connection closed without response")
H14 = HerokuError("H14", "No web processes running")
H15 = HerokuError("H15", "Idle connection")
H17 = HerokuError("H17", "Poorly formatted HTTP response")
H18 = HerokuError("H18", "Server Request Interrupted")
H19 = HerokuError("H19", "Backend connection timeout")
H27 = HerokuError("H27", "Client Request Interrupted", 499)
H25 = HerokuError("H25", "HTTP Restriction", 400)
H28 = HerokuError("H28", "Client Connection Idle", 499)
H99 = HerokuError("H99", "Platform error")


# --------------------------------------------------------------------------- log lines


@dataclass
class RequestLog:
    """Everything that goes into one router log line.

    ``None`` renders as an empty value (``dyno= connect=``), as Heroku does when no dyno was
    involved.  ``bytes`` counts response body bytes relayed from the dyno, so it stays None
    for 404/H14 and is 0 for a 503 produced after a dyno was picked.
    """

    method: str = ""
    path: str = ""
    host: str = ""
    request_id: str = ""
    fwd: str = ""
    dyno: str | None = None
    connect_ms: int | None = None
    service_ms: int | None = None
    status: int = 0
    bytes: int | None = None
    error: HerokuError | None = None
    protocol: str = "http"
    emitted: bool = field(default=False, compare=False)
    app: str | None = field(default=None, compare=False)  # set once resolve() knows the app


_UNSAFE_BARE = re.compile(r'[^\x21-\x7e]|["\\]')
_UNSAFE_QUOTED = re.compile(r'[^\x20-\x7e]|["\\]')


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\" + char if char in '"\\' else f"%{ord(char) & 0xFF:02X}"


def _bare(value: str | None) -> str:
    # Unquoted values must not contain spaces or quotes, or log parsers would split them.
    return "" if value is None else _UNSAFE_BARE.sub(_escape, value)


def _quoted(value: str) -> str:
    return '"' + _UNSAFE_QUOTED.sub(_escape, value) + '"'


def _ms(value: int | None) -> str:
    return "" if value is None else f"{value}ms"


def format_log_line(entry: RequestLog) -> str:
    """Render the message part of a ``heroku[router]`` log line."""
    parts = ["at=info"]
    if entry.error is not None:
        parts = ["at=error", f"code={entry.error.code}", f'desc="{entry.error.desc}"']
    parts += [
        f"method={_bare(entry.method)}",
        f"path={_quoted(entry.path)}",
        f"host={_bare(entry.host)}",
        f"request_id={_bare(entry.request_id)}",
        f"fwd={_quoted(entry.fwd)}",
        f"dyno={_bare(entry.dyno)}",
        f"connect={_ms(entry.connect_ms)}",
        f"service={_ms(entry.service_ms)}",
        f"status={entry.status}",
        f"bytes={'' if entry.bytes is None else entry.bytes}",
        f"protocol={entry.protocol}",
    ]
    return " ".join(parts)


# --------------------------------------------------------------------------- headers

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",  # not standard, but old clients send it
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers the router owns: whatever the client sent is replaced (X-Forwarded-For and Via are
# appended to, below).
_ROUTER_OWNED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
        b"x-request-id",
        b"x-request-start",
        b"via",
    }
)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9+/=-]{20,200}")
_APP_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
VIA = b"1.1 dynod"


def _values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def _tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """Comma-separated tokens of every ``name`` header, lowercased."""
    return {
        token.strip().lower()
        for value in _values(headers, name)
        for token in value.split(b",")
        if token.strip()
    }


def _append(headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes) -> bytes:
    prior = b", ".join(_values(headers, name))
    return prior + b", " + value if prior else value


def hop_by_hop_names(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Lowercased names that must not cross the proxy: RFC 7230 6.1 plus those in Connection."""
    return set(_HOP_BY_HOP) | _tokens(headers, b"connection")


def is_upgrade_request(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    headers = list(headers)
    return bool(_values(headers, b"upgrade")) and b"upgrade" in _tokens(headers, b"connection")


# Names a sender may list in Connection that a proxy must still pass on: without Host a request
# cannot be sent at all, without Content-Length its body would be lost (RFC 9110 7.6.1: such
# fields are never meant as connection options).
_NEVER_HOP_BY_HOP = frozenset({b"host", b"content-length"})


def _end_to_end(
    headers: Sequence[tuple[bytes, bytes]], upgrade: bool, drop: Iterable[bytes]
) -> Headers:
    """Copy without hop-by-hop headers; for an upgrade, re-add Upgrade + Connection: Upgrade."""
    dropped = (hop_by_hop_names(headers) - _NEVER_HOP_BY_HOP) | set(drop)
    out = [(name, value) for name, value in headers if name.lower() not in dropped]
    if upgrade:
        out += [(b"Connection", b"Upgrade"), (b"Upgrade", b", ".join(_values(headers, b"upgrade")))]
    return out


def forward_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client_ip: str,
    listen_port: int,
    request_start_ms: int,
    request_id: str,
) -> Headers:
    """Headers to send to the dyno, given the client's (raw-cased) headers.

    Non-upgrade requests get ``Connection: close`` because the router does not reuse dyno
    connections.  A chunked request body stays chunked (Transfer-Encoding is hop-by-hop,
    but h11 needs it to frame what we send).
    """
    upgrade = is_upgrade_request(headers)
    chunked = bool(_values(headers, b"transfer-encoding"))
    # With both framings h11 went by Transfer-Encoding; passing Content-Length on as well
    # would let a dyno that prefers it read the body differently (request smuggling).
    out = _end_to_end(headers, upgrade, _ROUTER_OWNED | ({b"content-length"} if chunked else set()))
    if not upgrade:
        out.append((b"Connection", b"close"))
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    out += [
        (b"X-Forwarded-For", _append(headers, b"x-forwarded-for", client_ip.encode())),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Port", str(listen_port).encode()),
        (b"X-Request-Start", str(request_start_ms).encode()),
        (b"X-Request-Id", request_id.encode()),
        (b"Via", _append(headers, b"via", VIA)),
    ]
    return out


def forward_response_headers(headers: Sequence[tuple[bytes, bytes]], *, upgrade: bool) -> Headers:
    """Headers to send to the client; h11 re-adds framing (chunked/close) as needed."""
    out = _end_to_end(headers, upgrade, {b"via"})
    out.append((b"Via", _append(headers, b"via", VIA)))
    return out


def pick_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id if it is 20-200 chars of [A-Za-z0-9+/=-], else a uuid4."""
    for value in _values(headers, b"x-request-id"):
        if _REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return str(uuid.uuid4())


# ``APP.localhost`` from the host; ``APP.herokuapp.localspace`` from a Private Space's dynos,
# which dynod's DNS resolves to the space's own router address.
APP_DOMAINS = ("localhost", "herokuapp.localspace")


def app_from_host(host: str) -> str | None:
    """``Sushi.localhost:5000`` -> ``sushi``; None unless the host is ``<one label>.localhost``
    or ``<one label>.herokuapp.localspace``."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal, never an app
        return None
    host = host.rsplit(":", 1)[0].rstrip(".")
    app, dot, domain = host.partition(".")
    if not dot or domain not in APP_DOMAINS or not _APP_NAME.fullmatch(app):
        return None
    return app


_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")


def split_absolute_form(method: bytes, target: bytes) -> tuple[bytes, bytes] | None:
    """``http://other.localhost/x?y`` -> (``other.localhost``, ``/x?y``): the authority that
    replaces Host and the origin-form target for the dyno (RFC 9112 3.2.2; an empty path is
    ``/``, or ``*`` for OPTIONS, 3.2.4).  None for a target that is not absolute-form.
    ValueError for one the router cannot take: not http(s), no host, or user info."""
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None or method == b"CONNECT":
        return None
    scheme, authority, rest = match.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise ValueError(f"the scheme {scheme.decode('ascii', 'replace')} is not HTTP")
    if not authority or b"@" in authority:
        raise ValueError("the target has no host, or has user info")
    if not rest:
        rest = b"*" if method == b"OPTIONS" else b"/"
    elif not rest.startswith(b"/"):
        rest = b"/" + rest  # "http://a.localhost?q" is the path "/" and the query "q"
    return authority, rest


def raise_open_file_limit(want: int = OPEN_FILES) -> int:
    """``ulimit -n WANT`` for the daemon (and ``ulimit -Hn WANT`` first when the hard limit is
    lower, as root may): every client connection costs the router two open files, and the API
    and DNS share the same table.  Never lowers a limit.  Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= want:
        return soft
    if hard != infinite and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):  # not root, or above fs.nr_open: as far as allowed
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def _connection_limit() -> int:
    """How many client connections the open file limit leaves room for (two files each)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = OPEN_FILES
    return max(16, (soft - FD_RESERVE) // 2)


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    return ip.removeprefix("::ffff:")


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _elapsed_ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


# --------------------------------------------------------------------------- plumbing


class _Fail(Exception):
    """A request ends with a Heroku error code."""

    def __init__(self, error: HerokuError) -> None:
        super().__init__(error.code)
        self.error = error


class _ClientGone(Exception):
    """The client closed, misbehaved or went idle before the exchange finished.

    ``error`` is None when the response had already started: the log line then simply
    reports the status and the bytes that made it out.
    """

    def __init__(self, error: HerokuError | None) -> None:
        super().__init__(error.code if error else "client gone")
        self.error = error


class _BadBody(Exception):
    """The client's request body broke HTTP's framing (a malformed chunk size): H25, 400."""


H11Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class _Peer:
    """An h11 connection bound to one asyncio stream pair."""

    def __init__(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.saw_eof = False

    async def next_event(self, timeout: float | None = None) -> H11Event:
        """Next h11 event; ``timeout`` bounds each socket read (an idle timeout)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            self.saw_eof = self.saw_eof or not data
            self.conn.receive_data(data)

    async def send(self, event: h11.Event, timeout: float | None = None) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), timeout)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close gracefully (flush what is buffered), but never wait longer than CLOSE_GRACE."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:
        writer.transport.abort()  # peer not reading, or already reset


async def _linger(peer: _Peer) -> None:
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


@dataclass
class _Exchange:
    """One request in flight between a client and a dyno."""

    client: _Peer
    backend: _Peer
    entry: RequestLog
    sent_at: float
    upload: asyncio.Task[None] | None = None
    upload_done_at: float = 0.0


# --------------------------------------------------------------------------- router


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
    ) -> None:
        self._resolve = resolve
        self._log = log
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout  # a request head, once begun, is whole by then
        self.max_client_connections = max_client_connections
        self.max_connections = max_connections  # None: what the open file limit allows
        self._by_client: dict[str, int] = {}  # open connections per client address
        self._refused_at: dict[str, float] = {}  # when a refusal was last logged, per client
        self.socket_mark = socket_mark
        self.source_address = source_address
        self.port = 0  # the bound port, set by start()
        self._server: asyncio.Server | None = None
        self._extra: dict[str, asyncio.Server] = {}  # more listening addresses, by host
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters: dict[str, itertools.count[int]] = {}
        self._closing = False

    async def start(self, host: str, port: int) -> None:
        """Bind and listen; ``port=0`` picks a free port, readable afterwards as ``.port``."""
        if self._server is not None:
            raise RuntimeError("router already started")
        self._closing = False
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def listen(self, host: str, port: int) -> None:
        """Listen on one more address (a Private Space's router address)."""
        if host in self._extra:
            return
        self._extra[host] = await asyncio.start_server(self._on_client, host, port)

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
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # -- client connections --------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        client_ip = _peer_ip(writer)
        if self._closing or task is None or not self._admit(client_ip):
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            await self._serve(_Peer(h11.Connection(h11.SERVER), reader, writer))
        finally:
            self._tasks.discard(task)
            left = self._by_client[client_ip] - 1
            if left:
                self._by_client[client_ip] = left
            else:
                del self._by_client[client_ip]

    def _admit(self, client_ip: str) -> bool:
        """Count a new connection of `client_ip`, or refuse it: over the client's share, or
        over what the open file limit leaves room for (so the API stays usable)."""
        limit = self.max_connections or _connection_limit()
        held = self._by_client.get(client_ip, 0)
        if held < self.max_client_connections and len(self._tasks) < limit:
            self._by_client[client_ip] = held + 1
            return True
        now = time.monotonic()
        if now - self._refused_at.get(client_ip, -60.0) >= 10:  # one line per client per 10 s
            if len(self._refused_at) > 4096:
                self._refused_at.clear()
            self._refused_at[client_ip] = now
            _logger.warning(
                "router: refusing connections from %s: it holds %d (at most %d per client), "
                "%d in all (at most %d)",
                client_ip,
                held,
                self.max_client_connections,
                len(self._tasks),
                limit,
            )
        return False

    async def _serve(self, client: _Peer) -> None:
        client_ip = _peer_ip(client.writer)
        try:
            while await self._serve_one(client, client_ip):
                client.conn.start_next_cycle()
            if client.conn.their_state is h11.SEND_BODY:
                await _linger(client)
        except (ConnectionError, OSError, TimeoutError, h11.ProtocolError):
            pass  # the client went away or we could not frame something: just hang up
        except Exception:  # a bug must cost one connection, never the router
            _logger.exception("router: unexpected error serving %s", client_ip)
        finally:
            await _close_writer(client.writer)

    async def _serve_one(self, client: _Peer, client_ip: str) -> bool:
        """Handle the next request on the connection; True if another one may follow."""
        try:
            event = await self._next_request(client)
        except h11.RemoteProtocolError as exc:
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

    async def _next_request(self, client: _Peer) -> H11Event:
        """The next request head: the client may idle ``idle_timeout`` before it starts, and
        must finish it within ``head_timeout`` of the first byte (TimeoutError otherwise)."""
        deadline = None
        while True:
            event = client.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if deadline is None and client.conn.trailing_data[0]:
                deadline = time.monotonic() + self.head_timeout
            wait = self.idle_timeout if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(client.reader.read(READ_SIZE), wait)
            client.saw_eof = client.saw_eof or not data
            client.conn.receive_data(data)

    async def _reject(
        self, client: _Peer, client_ip: str, status: int, error: HerokuError | None
    ) -> None:
        """Answer a request the router cannot read (malformed, or too slow) and log it."""
        entry = RequestLog(request_id=str(uuid.uuid4()), fwd=client_ip, status=status)
        entry.error = error
        try:
            if client.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = _reason(status).lower() + b"\n"  # "bad request", "request timeout"
                await client.send(
                    h11.Response(
                        status_code=entry.status,
                        reason=_reason(entry.status),
                        headers=[
                            (b"Content-Type", b"text/plain"),
                            (b"Content-Length", str(len(body)).encode()),
                            (b"Connection", b"close"),
                        ],
                    ),
                    timeout=self.idle_timeout,
                )
                await client.send(h11.Data(data=body), timeout=self.idle_timeout)
                await client.send(h11.EndOfMessage(), timeout=self.idle_timeout)
        finally:
            self._emit(entry)

    # -- one request ---------------------------------------------------------------------

    async def _handle_request(self, client: _Peer, request: h11.Request, client_ip: str) -> bool:
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
        host = b", ".join(_values(raw, b"host")).decode("latin-1")
        entry = RequestLog(
            method=request.method.decode("ascii", "replace"),
            path=target.decode("ascii", "backslashreplace"),
            host=(host.rsplit(":", 1)[0] if not host.startswith("[") else host).lower(),
            request_id=pick_request_id(raw),
            fwd=client_ip,
        )
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
        self, client: _Peer, request: h11.Request, raw: Headers, entry: RequestLog, target: bytes
    ) -> bool:
        arrived_ms = _now_ms()
        app = app_from_host(entry.host) if request.method != b"CONNECT" else None
        try:
            backends = None if app is None else self._resolve(app, entry.fwd)
        except Refused as refused:
            entry.app = app
            return await self._answer_locally(client, entry, 403, None, f"{refused}\n".encode())
        except Exception:
            _logger.exception("router: resolve(%r) failed", app)
            return await self._answer_locally(client, entry, H99.status, H99)
        if backends is None:
            return await self._answer_locally(client, entry, 404, None)
        entry.app = app
        if not backends:
            return await self._answer_locally(client, entry, H14.status, H14)
        assert app is not None
        backend = backends[next(self._counters.setdefault(app, itertools.count())) % len(backends)]
        entry.dyno = backend.dyno
        try:
            peer = await self._connect(backend, entry)
        except _Fail as fail:
            entry.bytes = 0
            return await self._answer_locally(client, entry, fail.error.status, fail.error)
        try:
            headers = forward_request_headers(
                raw,
                client_ip=entry.fwd,
                listen_port=self.port,
                request_start_ms=arrived_ms,
                request_id=entry.request_id,
            )
            outgoing = h11.Request(method=request.method, target=target, headers=headers)
            return await self._exchange(client, peer, outgoing, entry)
        finally:
            await _close_writer(peer.writer)

    async def _connect(self, backend: Backend, entry: RequestLog) -> _Peer:
        """Open a marked (and optionally source-bound) connection to the dyno."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in backend.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            try:
                sock.setblocking(False)
                if self.socket_mark is not None:
                    # The firewall only lets packets carrying this mark reach the dynos.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.socket_mark)
                if self.source_address:
                    sock.bind((self.source_address, 0))
            except OSError as exc:
                _logger.error("router: cannot set up socket to %s: %s", backend, exc)
                raise _Fail(H99) from exc
            started = time.monotonic()
            try:
                await asyncio.wait_for(
                    loop.sock_connect(sock, (backend.host, backend.port)), self.connect_timeout
                )
            except TimeoutError as exc:
                raise _Fail(H19) from exc
            except OSError as exc:
                raise _Fail(H13) from exc
            finally:
                entry.connect_ms = _elapsed_ms(started)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return _Peer(h11.Connection(h11.CLIENT), reader, writer)

    async def _answer_locally(
        self,
        client: _Peer,
        entry: RequestLog,
        status: int,
        error: HerokuError | None,
        text: bytes = b"no such app\n",
    ) -> bool:
        """Answer without (further) involving a dyno: 404, 403, or a 503 error page."""
        entry.status, entry.error = status, error
        # Read a small unwanted body so the connection can stay alive -- unless the client is
        # waiting for "100 Continue", in which case it will not send the body at all.
        if not client.conn.they_are_waiting_for_100_continue:
            await self._discard_body(client)
        await self._send_error_page(client, status, error, text)
        return True

    async def _discard_body(self, client: _Peer) -> None:
        discarded = 0
        with contextlib.suppress(h11.RemoteProtocolError, TimeoutError, OSError):
            while client.conn.their_state is h11.SEND_BODY and discarded <= DISCARD_LIMIT:
                event = await client.next_event(timeout=self.idle_timeout)
                if not isinstance(event, h11.Data | h11.EndOfMessage):
                    return
                discarded += len(event.data) if isinstance(event, h11.Data) else 0

    async def _send_error_page(
        self,
        client: _Peer,
        status: int,
        error: HerokuError | None,
        text: bytes = b"no such app\n",
    ) -> None:
        if client.conn.our_state is not h11.SEND_RESPONSE:
            return  # response already (partly) sent: all we can do is close
        if error is None:
            body, ctype = text, b"text/plain; charset=utf-8"
        else:
            body = (
                "<!DOCTYPE html><html><head><title>Application Error</title></head><body>"
                f"<h1>Application Error</h1><p>{error.desc} ({error.code})</p></body></html>\n"
            ).encode()
            ctype = b"text/html; charset=utf-8"
        headers = [
            (b"Content-Type", ctype),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cache-Control", b"no-cache, no-store"),
            (b"Via", VIA),
        ]
        if client.conn.their_state is not h11.DONE:
            headers.append((b"Connection", b"close"))  # unread request body: we will hang up
        await client.send(
            h11.Response(status_code=status, reason=_reason(status), headers=headers),
            timeout=self.idle_timeout,
        )
        await client.send(h11.Data(data=body), timeout=self.idle_timeout)
        await client.send(h11.EndOfMessage(), timeout=self.idle_timeout)

    # -- talking to the dyno -------------------------------------------------------------

    async def _exchange(
        self, client: _Peer, backend: _Peer, outgoing: h11.Request, entry: RequestLog
    ) -> bool:
        ex = _Exchange(client, backend, entry, sent_at=time.monotonic())
        entry.bytes = 0
        try:
            try:
                await backend.send(outgoing, timeout=self.idle_timeout)
            except (OSError, TimeoutError) as exc:
                raise _Fail(H13) from exc
            ex.upload = asyncio.create_task(self._upload(ex))
            head = await self._await_response_head(ex)
            if isinstance(head, h11.InformationalResponse):
                await self._switch_protocols(ex, head)
                return False
            return await self._relay_response(ex, head)
        except _ClientGone as gone:
            if gone.error is not None:
                entry.status, entry.error = gone.error.status, gone.error
            return False
        except _BadBody:
            entry.status, entry.error = H25.status, H25
            await self._send_error_page(client, H25.status, H25)
            return False
        except _Fail as fail:
            entry.error = fail.error
            entry.status = fail.error.status
            # After the response head (H15, H18) this sends nothing and the caller hangs up.
            await self._send_error_page(client, fail.error.status, fail.error)
            return client.conn.their_state is h11.DONE
        finally:
            if entry.service_ms is None:
                entry.service_ms = _elapsed_ms(ex.sent_at)
            if ex.upload is not None:
                ex.upload.cancel()
                await asyncio.gather(ex.upload, return_exceptions=True)

    async def _upload(self, ex: _Exchange) -> None:
        """Stream the client's request body to the dyno, chunk by chunk."""
        try:
            while True:
                try:
                    event = await ex.client.next_event(timeout=self.idle_timeout)
                except TimeoutError as exc:
                    raise _ClientGone(H28) from exc
                except h11.RemoteProtocolError as exc:
                    if ex.client.saw_eof:  # the client went away mid-body
                        raise _ClientGone(H27) from exc
                    raise _BadBody() from exc
                except OSError as exc:
                    raise _ClientGone(H27) from exc
                if isinstance(event, h11.Data):
                    out: h11.Event = h11.Data(data=event.data)
                elif isinstance(event, h11.EndOfMessage):
                    out = h11.EndOfMessage()  # trailers are hop-by-hop for us: dropped
                else:
                    raise _ClientGone(H27)  # closed mid-body
                try:
                    await ex.backend.send(out, timeout=self.idle_timeout)
                except (h11.LocalProtocolError, OSError, TimeoutError):
                    return  # the dyno stopped reading; its response (or silence) decides
                if isinstance(out, h11.EndOfMessage):
                    return
        finally:
            ex.upload_done_at = time.monotonic()

    async def _next_head_event(self, ex: _Exchange) -> H11Event:
        """Next event from the dyno before the response head, enforcing H12.

        Like Heroku, the response timeout only starts once the whole request has been sent:
        a slow upload is bounded by the idle timeouts instead.
        """
        assert ex.upload is not None
        read = asyncio.ensure_future(ex.backend.next_event())
        try:
            if not ex.upload.done():
                await asyncio.wait({read, ex.upload}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                failure = None if ex.upload.cancelled() else ex.upload.exception()
                if isinstance(failure, _ClientGone | _BadBody):
                    raise failure
                left = ex.upload_done_at + self.response_timeout - time.monotonic()
                done, _ = await asyncio.wait({read}, timeout=max(left, 0))
                if not done:
                    raise _Fail(H12)
            return read.result()
        finally:
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)

    async def _await_response_head(self, ex: _Exchange) -> h11.Response | h11.InformationalResponse:
        """The dyno's response head (or its 101); other 1xx are relayed to the client."""
        while True:
            try:
                event = await self._next_head_event(ex)
            except h11.RemoteProtocolError as exc:
                raise _Fail(H13 if ex.backend.saw_eof else H17) from exc
            except OSError as exc:
                raise _Fail(H13) from exc
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise _Fail(H13)  # ConnectionClosed
            if event.status_code == 101:
                return event
            with contextlib.suppress(h11.LocalProtocolError):  # e.g. 1xx to an HTTP/1.0 client
                await ex.client.send(
                    h11.InformationalResponse(
                        status_code=event.status_code,
                        reason=event.reason,
                        headers=forward_response_headers(
                            list(event.headers.raw_items()), upgrade=False
                        ),
                    ),
                    timeout=self.idle_timeout,
                )

    async def _relay_response(self, ex: _Exchange, head: h11.Response) -> bool:
        """Stream the response to the client; True if the client connection stays usable."""
        ex.entry.status = head.status_code
        headers = forward_response_headers(list(head.headers.raw_items()), upgrade=False)
        try:
            await ex.client.send(
                h11.Response(status_code=head.status_code, reason=head.reason, headers=headers),
                timeout=self.idle_timeout,
            )
        except h11.LocalProtocolError as exc:
            raise _Fail(H17) from exc
        while True:
            try:
                event = await ex.backend.next_event(timeout=self.idle_timeout)
            except TimeoutError as exc:
                raise _Fail(H15) from exc
            except (h11.RemoteProtocolError, OSError) as exc:
                raise _Fail(H18) from exc
            if isinstance(event, h11.Data):
                await self._to_client(ex, h11.Data(data=event.data))
                ex.entry.bytes = (ex.entry.bytes or 0) + len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                await self._to_client(ex, h11.EndOfMessage())
                ex.entry.service_ms = _elapsed_ms(ex.sent_at)
                return True
            else:
                raise _Fail(H18)

    async def _to_client(self, ex: _Exchange, event: h11.Event) -> None:
        try:
            await ex.client.send(event, timeout=self.idle_timeout)
        except (OSError, TimeoutError) as exc:
            # The client left mid-response: nothing to report beyond what was sent.
            raise _ClientGone(None) from exc

    async def _switch_protocols(self, ex: _Exchange, head: h11.InformationalResponse) -> None:
        """Relay the dyno's 101, log the request, then splice raw bytes until one side closes."""
        ex.entry.status = 101
        headers = forward_response_headers(list(head.headers.raw_items()), upgrade=True)
        try:
            await ex.client.send(
                h11.InformationalResponse(status_code=101, reason=head.reason, headers=headers),
                timeout=self.idle_timeout,
            )
        except h11.LocalProtocolError as exc:
            raise _Fail(H17) from exc
        ex.entry.service_ms = _elapsed_ms(ex.sent_at)
        self._emit(ex.entry)  # a WebSocket may live for hours: log the handshake now
        await _Splice(ex.client, ex.backend, self.idle_timeout).run()

    def _emit(self, entry: RequestLog) -> None:
        if entry.emitted:
            return
        entry.emitted = True
        try:
            self._log(format_log_line(entry), entry.app)
        except Exception:
            _logger.exception("router: log callback failed")


class _Splice:
    """Copy raw bytes both ways after a protocol switch.

    EOF on one side is passed on as a half-close; the tunnel ends when both directions have
    ended, or when neither has carried a byte for ``idle`` seconds (Heroku's 55 s rule).
    """

    def __init__(self, client: _Peer, backend: _Peer, idle: float) -> None:
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
