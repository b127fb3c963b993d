"""The DNS server of DNS service discovery: `web.sushi.app.localspace` and friends.

The daemon embeds one `DnsServer`.  It listens on the bridge address of every space (and of
the Common Runtime), answers the `*.localspace` names of the asker's space, and forwards every
other name to the host's upstream resolvers.

A DNS message, on the wire
--------------------------
A query is one UDP datagram (or, over TCP, one message after a 2-byte length): a 12-byte
header (the asker's transaction ID, flags, and four counts), then the question: the name as
length-prefixed labels (``\\x03web\\x05sushi\\x03app\\x0alocalspace\\x00``), the type (1 = A)
and the class (1 = IN).  The reply repeats the header with the same ID and the question, then
adds answer records.  Each of our A records is 16 bytes: the owner name as a 2-byte pointer to
the question's name at offset 12 ("name compression"), type, class, TTL, length, 4 address
bytes.  `dynod.dns_wire` has the details.

Why the answers are prepared in advance
---------------------------------------
Parsing a query into objects and building a reply out of objects costs about 200 us in Python
(dnslib's own server answers about 4,400 queries a second); the two system calls of a query
cost about 6 us.  So `set_scope` does the work: for every name it builds the bytes of the
answer (records laid out by dnslib), for every rotation of its addresses, and indexes them by
the bytes of the query that asks for them (the query after its ID, lowercased).  Answering a
UDP query for a known name is then: ``recvfrom``, a dict lookup for the asker's scope (by
source address), a dict lookup of the query bytes, and ``sendto`` of the asker's ID + the
prepared flags and counts + the asker's own question (so the case they used comes back, as
"0x20" resolvers check) + one prepared answer section.  No object per query, no parsing:
about 0.4 us of Python.  Anything else (EDNS, unknown names, odd flags, garbage, forwarded
names) takes a slower path (about 5 us) that parses the query by hand, strictly: one
question, no compression pointers, at most an OPT record.

Why TC and TCP
--------------
A UDP reply may not be larger than 512 bytes, or than the size the asker advertised in an
EDNS OPT record (capped here at 1232: larger UDP packets fragment, and fragments get lost).  An
answer that does not fit goes out with the TC (truncated) flag and as many whole records as
fit; the asker then asks again over TCP, where messages may be 64 KiB.  A formation of 50 dynos
(50 x 16 bytes of records) needs TCP.  Without TCP such lookups would fail outright.

Why TTL 0
---------
Dynos come and go; an address cached by a resolver or a client would outlive its dyno (and
then belong to another dyno).  With TTL 0 every lookup comes here, which is also what makes
round robin (every query starts the list at the next dyno) spread connections.  Negative
answers carry an SOA with TTL 0 and MINIMUM 0, so NXDOMAIN is not cached either.

Threads
-------
The daemon runs asyncio; the server runs beside it in plain threads, so a busy DNS never waits
for the event loop, nor the loop for DNS: one thread per listening UDP socket (blocking
``recvfrom``/``sendto``: the cheapest way Python has to move datagrams), one accepting TCP
thread per address, one thread per TCP connection (bounded, idle ones closed), one forwarder
thread (`dynod.dns_forward`).  `set_scope` replaces a scope's answers with one attribute
assignment, which every thread sees at its next query: no lock on the query path, no rebinding
of sockets (aardvark-dns#389), no moment without answers.  `close` shuts the sockets down,
which wakes every blocked thread at once.

Shares
------
One dyno must not starve another tenant's lookups.  TCP connections and forwarded queries in
flight are bounded three ways: per source address (one dyno), per scope (one space, or the
Common Runtime) and in total.  A dyno that holds every connection it may, or floods a slow
domain, is refused beyond its own share (its extra connections are closed, its extra queries
get SERVFAIL at once) while every other source keeps its own.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

from dynod.dns.forward import Address, Forwarder, ShareKey, Shares, Throttle, read_exact
from dynod.dns.wire import (
    BADVERS,
    NOTIMP,
    NXDOMAIN,
    TCP_LIMIT,
    BadQuery,
    Query,
    Zone,
    build_zone,
    empty_reply,
    error_reply,
    local_reply,
    parse_query,
    udp_limit,
)
from dynod.dns.wire import EMPTY_ZONE as _EMPTY_ZONE
from dynod.errors import DynodError

__all__ = ["DnsServer"]

READ_SIZE = 4096  # a query is small; a bigger datagram is cut and then fails to parse: FORMERR
UDP_RECEIVE_BUFFER = 1 << 20  # absorbs bursts while the thread is busy (capped by rmem_max)
MAX_CACHED_ASKERS = 65536  # source address -> scope; cleared when full
TCP_BACKLOG = 128
# Shares (see "Shares" above).  A share larger than the total is the total.
MAX_TCP = 256
MAX_TCP_PER_SCOPE = 64
MAX_TCP_PER_SOURCE = 16
MAX_INFLIGHT = 1000
MAX_INFLIGHT_PER_SCOPE = 400
MAX_INFLIGHT_PER_SOURCE = 100


@dataclass(eq=False, slots=True)
class _Counters:
    """Counts of one thread, written by that thread only (no lock, no lost increments)."""

    queries: int = 0
    formerr: int = 0
    notimp: int = 0
    nxdomain: int = 0
    dropped: int = 0


@dataclass(eq=False, slots=True)
class _Scope:
    name: str
    network: ipaddress.IPv4Network
    zone: Zone  # replaced whole by set_scope


_NOWHERE = _Scope("", ipaddress.IPv4Network("0.0.0.0/32"), _EMPTY_ZONE)  # askers in no scope

# (network address, netmask, scope) as integers, most specific network first
_Route = tuple[int, int, _Scope]


class DnsServer:
    """Answers `*.localspace` by scope, forwards the rest.  Thread safe: every method may be
    called from any thread (the daemon calls them from its event loop)."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        timeout: float = 2.0,
        log: Callable[[str], object] | None = None,
        max_inflight: int = MAX_INFLIGHT,
        max_inflight_per_scope: int = MAX_INFLIGHT_PER_SCOPE,
        max_inflight_per_source: int = MAX_INFLIGHT_PER_SOURCE,
        max_tcp_connections: int = MAX_TCP,
        max_tcp_per_scope: int = MAX_TCP_PER_SCOPE,
        max_tcp_per_source: int = MAX_TCP_PER_SOURCE,
        tcp_idle_timeout: float = 5.0,
    ) -> None:
        self._log = log or (lambda _text: None)
        self._report = Throttle(self._log)
        self._forwarder = Forwarder(
            upstreams,
            timeout=timeout,
            shares=Shares(max_inflight, max_inflight_per_scope, max_inflight_per_source),
            report=self._report,
        )
        self._tcp_idle_timeout = tcp_idle_timeout
        self._tcp_shares = Shares(max_tcp_connections, max_tcp_per_scope, max_tcp_per_source)
        self._lock = threading.Lock()  # scopes, listeners, counters: never taken by queries
        self._scopes: dict[str, _Scope] = {}
        self._listeners: dict[str, _Listener] = {}
        self._counters: list[_Counters] = []
        self._retired = _Counters()
        self._closed = False
        # The routes and the cache of source address -> scope are replaced together whenever
        # a network comes or goes; the cache fills lazily, one entry per asker.
        self._routes: tuple[tuple[_Route, ...], dict[str, _Scope]] = ((), {})
        self._scope_by_ip: dict[str, _Scope] = self._routes[1]

    # ----------------------------------------------------------------------- public API

    def listen(self, address: str, port: int = 53) -> None:
        """Serve UDP and TCP on address:port (IPv4).  DynodError if it cannot bind."""
        with self._lock:
            if self._closed:
                raise DynodError("the DNS server is closed", "this is a bug in dynod")
            current = self._listeners.get(address)
            if current is not None and current.port == port:
                return
            if current is not None:
                raise DynodError(
                    f"DNS already listens on {address}:{current.port}, not {port}",
                    "unlisten the address first",
                )
            listener = _Listener(self, address, port)
            listener.start()
            self._listeners[address] = listener
        self._log(f"listening on {address}:{port} (udp, tcp)")

    def unlisten(self, address: str) -> None:
        """Stop serving `address`: its sockets are closed, its threads gone, when this returns."""
        with self._lock:
            listener = self._listeners.pop(address, None)
        if listener is not None:
            listener.stop()

    def set_scope(self, scope: str, network: str, records: Mapping[str, Sequence[str]]) -> None:
        """Serve `records` (lowercase name -> IPv4 addresses, in order) to askers whose source
        address is in `network`, replacing what `scope` served before, from the next query on.
        Where networks overlap, the most specific one wins.  ValueError for a bad network,
        name or address (nothing changes then)."""
        net = ipaddress.IPv4Network(network, strict=False)
        with self._lock:
            current = self._scopes.get(scope)
            zone = build_zone(records, current.zone if current else _EMPTY_ZONE)
            if current is not None and current.network == net:
                current.zone = zone  # one assignment: queries see the old zone or this one
                return
            if current is not None:
                current.zone = _EMPTY_ZONE  # in case a query still holds the old scope
            self._scopes[scope] = _Scope(scope, net, zone)
            self._reroute()

    def remove_scope(self, scope: str) -> None:
        with self._lock:
            current = self._scopes.pop(scope, None)
            if current is not None:
                current.zone = _EMPTY_ZONE
                self._reroute()

    def close(self) -> None:
        """Stop every thread and close every socket (prompt: blocked threads are woken)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for listener in listeners:
            listener.stop()
        self._forwarder.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """Counts since start: queries (every packet received), forwarded, servfail (upstream
        timeouts, no upstream, too many in flight), formerr, notimp, nxdomain, dropped (not
        answered: no header, a response, an internal error); and now: inflight (forwarded
        queries awaiting an answer), tcp_connections."""
        with self._lock:
            counters = [self._retired, *self._counters]
            totals = {f.name: sum(getattr(c, f.name) for c in counters) for f in fields(_Counters)}
        totals["forwarded"] = self._forwarder.forwarded
        totals["servfail"] = self._forwarder.servfail
        totals["inflight"] = self._forwarder.inflight
        totals["tcp_connections"] = self._tcp_shares.total
        return totals

    # ------------------------------------------------------------------------- scopes

    def _reroute(self) -> None:
        """New routes and a new, empty cache of asker -> scope (lock held).  Queries that read
        the old cache a moment ago finish with it; the next one uses the new one."""
        ordered = sorted(self._scopes.values(), key=lambda s: s.network.prefixlen, reverse=True)
        routes = tuple((int(s.network.network_address), int(s.network.netmask), s) for s in ordered)
        cache: dict[str, _Scope] = {}
        self._routes = (routes, cache)
        self._scope_by_ip = cache

    def _find_scope(self, ip: str) -> _Scope:
        """The scope of an asker not in the cache yet; caches it.  Routes and cache are read
        together, so an answer computed from old routes can only land in an old cache."""
        routes, cache = self._routes
        try:
            value = int.from_bytes(socket.inet_aton(ip), "big")
        except OSError:  # not IPv4: in no scope
            scope = _NOWHERE
        else:
            scope = next((s for net, mask, s in routes if value & mask == net), _NOWHERE)
        if len(cache) >= MAX_CACHED_ASKERS:
            cache.clear()
        cache[ip] = scope
        return scope

    # ------------------------------------------------------------------ answering (slow)

    def _read(self, data: bytes, counters: _Counters) -> Query | bytes | None:
        """The query to answer, or an error reply to send at once, or None: send nothing."""
        try:
            q = parse_query(data)
        except BadQuery as bad:
            if bad.rcode == NOTIMP:
                counters.notimp += 1
            else:
                counters.formerr += 1
            return error_reply(data, bad.rcode)
        if q is None:
            counters.dropped += 1
            return None
        if q.edns_version:  # we speak EDNS version 0 only (RFC 6891 6.1.3)
            return empty_reply(q, BADVERS)
        return q

    def _local(self, q: Query, zone: Zone, limit: int, counters: _Counters) -> bytes:
        reply = local_reply(q, zone, limit)
        if reply[3] & 0x0F == NXDOMAIN:
            counters.nxdomain += 1
        return reply

    def _answer_udp(
        self, data: bytes, scope: _Scope, sock: socket.socket, client: Address, counters: _Counters
    ) -> bytes | None:
        """Everything the prepared answers do not cover.  None: nothing to send now (dropped,
        or forwarded: the forwarder thread sends the answer)."""
        q = self._read(data, counters)
        if not isinstance(q, Query):
            return q
        if q.local:
            return self._local(q, scope.zone, udp_limit(q), counters)
        return self._forwarder.forward_udp(q, sock, client, (scope.name, client[0]))

    def _answer_tcp(
        self,
        data: bytes,
        peer: str,
        counters: _Counters,
        track: Callable[[socket.socket, bool], bool],
    ) -> bytes | None:
        counters.queries += 1
        q = self._read(data, counters)
        if not isinstance(q, Query):
            return q
        if q.local:
            scope = self._scope_by_ip.get(peer) or self._find_scope(peer)
            return self._local(q, scope.zone, TCP_LIMIT, counters)
        return self._forwarder.forward_tcp(q, track)

    # ---------------------------------------------------------------------- counters

    def _scope_of(self, ip: str) -> _Scope:
        return self._scope_by_ip.get(ip) or self._find_scope(ip)

    def _take_tcp_slot(self, peer: str) -> ShareKey | None:
        """The share a new TCP connection from `peer` takes, or None: its share is full."""
        key = (self._scope_of(peer).name, peer)
        return key if self._tcp_shares.take(key) else None

    def _new_counters(self) -> _Counters:
        counters = _Counters()
        with self._lock:
            self._counters.append(counters)
        return counters

    def _retire(self, counters: _Counters) -> None:
        """Fold the counts of a thread that ends into the totals."""
        with self._lock:
            self._counters.remove(counters)
            retired = self._retired
            for f in fields(_Counters):
                setattr(retired, f.name, getattr(retired, f.name) + getattr(counters, f.name))


class _Listener:
    """The sockets and threads of one listening address."""

    def __init__(self, server: DnsServer, address: str, port: int) -> None:
        self.server = server
        self.address = address
        self.port = port
        self.closing = False
        self._lock = threading.Lock()
        self._tracked: set[socket.socket] = set()  # TCP connections and their upstream sockets
        self._threads: set[threading.Thread] = set()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    def start(self) -> None:
        self._udp, self._tcp = _bind(self.address, self.port)
        self._spawn(self._serve_udp, "udp")
        self._spawn(self._accept, "tcp")

    def _spawn(self, target: Callable[..., None], kind: str, *args: object) -> None:
        thread = threading.Thread(
            target=self._run, args=(target, *args), name=f"dynod-dns-{kind}-{self.address}"
        )
        thread.daemon = True
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def stop(self) -> None:
        with self._lock:
            self.closing = True
            sockets = [s for s in (self._udp, self._tcp) if s is not None] + list(self._tracked)
            threads = list(self._threads)
        for sock in sockets:
            # shutdown() wakes threads blocked in recvfrom/accept/recv on that socket at once
            # (for an unconnected UDP socket Linux does it while returning ENOTCONN)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 2
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for listening in (self._udp, self._tcp):
            if listening is not None:
                listening.close()

    # -------------------------------------------------------------------------- UDP

    def _serve_udp(self) -> None:
        """The hot path.  Keep it short: every line runs for every query."""
        assert self._udp is not None
        server = self.server
        sock = self._udp
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        counters = server._new_counters()
        try:
            while True:
                try:
                    data, client = recvfrom(READ_SIZE)
                except OSError as exc:
                    if self.closing or exc.errno == errno.EBADF:
                        return
                    server._report("udp recv", f"{self.address}: receiving: {exc}")
                    continue
                if client is None:  # shut down by stop()
                    if self.closing:
                        return
                    continue
                counters.queries += 1
                try:
                    scope = server._scope_by_ip.get(client[0]) or server._find_scope(client[0])
                    prepared = scope.zone.prepared.get(data[2:].lower())
                    if prepared is not None:
                        head, sections, turn = prepared
                        section = sections[next(turn) % len(sections)]
                        sendto(data[:2] + head + data[12:] + section, client)
                        continue
                    reply = server._answer_udp(data, scope, sock, client, counters)
                    if reply is not None:
                        sendto(reply, client)
                except Exception as exc:  # one bad packet costs that packet only
                    counters.dropped += 1
                    if not self.closing:
                        server._report("udp", f"{self.address}: query from {client[0]}: {exc!r}")
        finally:
            server._retire(counters)

    # -------------------------------------------------------------------------- TCP

    def _accept(self) -> None:
        assert self._tcp is not None
        server = self.server
        while True:
            try:
                conn, peer = self._tcp.accept()
            except OSError as exc:
                if self.closing:
                    return
                # EMFILE and the like: back off instead of spinning
                server._report("accept", f"{self.address}: accepting TCP: {exc}")
                time.sleep(0.05)
                continue
            share = server._take_tcp_slot(peer[0])
            if share is None:
                server._report(
                    f"tcp full {peer[0]}",
                    f"TCP connections from {peer[0]} (or its network) over its share: refusing",
                )
                conn.close()
                continue
            if not self._track(conn, True):
                server._tcp_shares.release(share)
                conn.close()
                continue
            self._spawn(self._serve_tcp, "tcp", conn, peer[0], share)

    def _track(self, sock: socket.socket, on: bool) -> bool:
        """Register (or forget) a socket that stop() must shut down.  False once closing."""
        with self._lock:
            if not on:
                self._tracked.discard(sock)
                return True
            if self.closing:
                return False
            self._tracked.add(sock)
            return True

    def _serve_tcp(self, conn: socket.socket, peer: str, share: ShareKey) -> None:
        """Queries one after the other on one connection (RFC 7766), until the client closes,
        is idle for tcp_idle_timeout, or the listener stops."""
        server = self.server
        idle = server._tcp_idle_timeout
        counters = server._new_counters()
        try:
            while not self.closing:
                head = read_exact(conn, 2, time.monotonic() + idle)
                size = int.from_bytes(head, "big") if head else 0
                data = read_exact(conn, size, time.monotonic() + idle) if size else None
                if data is None:
                    return  # closed, idle, or a zero length: nothing sensible follows
                reply = server._answer_tcp(data, peer, counters, self._track)
                if reply is not None:
                    conn.settimeout(idle)
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            pass  # the client went away, or stop() shut the connection down
        except Exception as exc:
            server._report("tcp", f"{self.address}: TCP query from {peer}: {exc!r}")
        finally:
            self._track(conn, False)
            conn.close()
            server._tcp_shares.release(share)
            server._retire(counters)


def _bind(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """The UDP and TCP sockets of address:port.  TCP is bound first: a listening TCP socket
    shares its port with nobody (short of SO_REUSEPORT on both, which we never set), so a DNS
    server already there, on this address or on 0.0.0.0, is detected.  SO_REUSEADDR is set on
    TCP only, where it lets a restarted daemon rebind while old connections linger in
    TIME_WAIT; UDP has no TIME_WAIT, and on Linux SO_REUSEADDR on UDP would let a second
    daemon bind the very same address and silently steal queries."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, port))
        tcp.listen(TCP_BACKLOG)
        udp.bind((address, port))
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    except OSError as exc:
        tcp.close()
        udp.close()
        raise _bind_error(address, port, exc) from exc
    return udp, tcp


def _bind_error(address: str, port: int, exc: OSError) -> DynodError:
    where = f"{address}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return DynodError(
            f"cannot serve DNS on {where}: the port is taken",
            f"another DNS server holds it, typically one bound to 0.0.0.0:{port} (dnsmasq, "
            "systemd-resolved, bind9, libvirt's or LXD's dnsmasq) or another dynod daemon; "
            f"find it with `ss -lntup 'sport = :{port}'`, then stop it or make it bind only "
            "its own addresses (dnsmasq: bind-interfaces or bind-dynamic; systemd-resolved: "
            "DNSStubListener=no)",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return DynodError(
            f"cannot serve DNS on {where}: no interface has the address {address}",
            "the bridge must be up with its address before DNS listens on it",
        )
    if exc.errno == errno.EACCES:
        return DynodError(
            f"cannot serve DNS on {where}: permission denied",
            "ports below 1024 need root or CAP_NET_BIND_SERVICE",
        )
    return DynodError(f"cannot serve DNS on {where}: {exc.strerror or exc}", "")
