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
bytes.  `dynod.dns.wire` has the details.

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
question, no compression pointers, at most an OPT record.  A plain query whose answer has
nothing to rotate (NXDOMAIN, no data) leaves its answer behind in the zone's bounded cache of
prepared negative answers (`zone.remember_negative`), so the next one takes the fast path too;
a whole new zone (`set_scope`) starts with none, and a changed one (`update_scope`: a dyno
came or went) loses those of the names it changed.

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
``recvmmsg``, which takes every queued query at once, and one ``sendmmsg`` for their answers:
`dynod.dns.batch`; two system calls per batch instead of two per query), one accepting TCP
thread per address, one thread per TCP connection (bounded, idle ones closed), one forwarder
thread (`dynod.dns.forward`).  `set_scope` replaces a scope's answers with one attribute
assignment, which every thread sees at its next query: no lock on the query path, no rebinding
of sockets (aardvark-dns#389), no moment without answers.  `close` shuts the sockets down,
which wakes every blocked thread at once.

Modules
-------
``server`` (this one: the scopes and the answers), ``listener`` (the sockets and threads of one
address), ``scopes`` (a scope, a thread's counts), ``wire`` (parsing queries, building
replies), ``zone`` (the prepared answers of one scope), ``forward`` (the forwarder thread),
``upstream`` (upstream resolvers, TCP forwarding), ``limits`` (shares, the throttled log),
``batch`` (recvmmsg/sendmmsg),
``registry`` (which names each space's dynos have).

Shares
------
One dyno must not starve another tenant's lookups.  TCP connections and forwarded queries in
flight are bounded three ways: per source address (one dyno), per scope (one space, or the
Common Runtime) and in total.  A dyno that holds every connection it may, or floods a slow
domain, is refused beyond its own share (its extra connections are closed, its extra queries
get SERVFAIL at once) while every other source keeps its own.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields

from dynod.dns.forward import Forwarder
from dynod.dns.limits import ShareKey, Shares, Throttle
from dynod.dns.listener import Listener
from dynod.dns.scopes import NOWHERE, Counters, Route, Scope
from dynod.dns.upstream import Address
from dynod.dns.wire import (
    BADVERS,
    NOTIMP,
    NS_NAME,
    NXDOMAIN,
    TCP_LIMIT,
    BadQuery,
    Query,
    empty_reply,
    error_reply,
    parse_query,
    udp_limit,
)
from dynod.dns.zone import (
    EMPTY_ZONE,
    Zone,
    build_zone,
    local_reply,
    patch_zone,
    prepare_late,
    remember_negative,
)
from dynod.errors import DynodError

__all__ = ["DnsServer"]

MAX_CACHED_ASKERS = 65536  # source address -> scope; cleared when full
# Shares (see "Shares" above).  A share larger than the total is the total.
MAX_TCP = 1024  # a connection costs a file; the daemon has 65,536
MAX_TCP_PER_SCOPE = 64
MAX_TCP_PER_SOURCE = 16
MAX_INFLIGHT = 4000
MAX_INFLIGHT_PER_SCOPE = 400
MAX_INFLIGHT_PER_SOURCE = 100


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
        self.report = Throttle(self._log)
        self._forwarder = Forwarder(
            upstreams,
            timeout=timeout,
            shares=Shares(max_inflight, max_inflight_per_scope, max_inflight_per_source),
            report=self.report,
        )
        self.tcp_idle_timeout = tcp_idle_timeout
        self._tcp_shares = Shares(max_tcp_connections, max_tcp_per_scope, max_tcp_per_source)
        # scopes, listeners, counters; a query takes it only to prepare a big formation's name
        # on its first query after a change (prepare_late), once per change
        self._lock = threading.Lock()
        self._scopes: dict[str, Scope] = {}
        self._listeners: dict[str, Listener] = {}
        self._counters: list[Counters] = []
        self._retired = Counters()
        self._closed = False
        # The routes and the cache of source address -> scope are replaced together whenever
        # a network comes or goes; the cache fills lazily, one entry per asker.
        self._routes: tuple[tuple[Route, ...], dict[str | int, Scope]] = ((), {})
        self.scope_by_ip: dict[str | int, Scope] = self._routes[1]

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
            listener = Listener(self, address, port)
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
        # The zone's NS, ns.localspace, is this server as the scope's dynos reach it: the
        # network's first address (the bridge's own), which their resolv.conf names.
        served = {NS_NAME: [str(net.network_address + 1)], **records}
        with self._lock:
            current = self._scopes.get(scope)
            zone = build_zone(served, current.zone if current else EMPTY_ZONE)
            if current is not None and current.network == net:
                current.zone = zone  # one assignment: queries see the old zone or this one
                return
            if current is not None:
                current.zone = EMPTY_ZONE  # in case a query still holds the old scope
            self._scopes[scope] = Scope(scope, net, zone)
            self._reroute()

    def update_scope(self, scope: str, changes: Mapping[str, Sequence[str] | None]) -> None:
        """Change some names of what `scope` serves (name -> its new addresses, None: the name
        goes), from the next query on; the other names keep their prepared answers, so the
        cost is that of the change, not of the scope's size.  DynodError if the scope does
        not exist (set_scope makes it), ValueError for a bad name or address (nothing changes
        then)."""
        with self._lock:
            current = self._scopes.get(scope)
            if current is None:
                raise DynodError(f"no DNS scope {scope!r}", "this is a bug in dynod")
            current.zone = patch_zone(current.zone, changes)

    def remove_scope(self, scope: str) -> None:
        with self._lock:
            current = self._scopes.pop(scope, None)
            if current is not None:
                current.zone = EMPTY_ZONE
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
            totals = {f.name: sum(getattr(c, f.name) for c in counters) for f in fields(Counters)}
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
        cache: dict[str | int, Scope] = {}
        self._routes = (routes, cache)
        self.scope_by_ip = cache

    def find_scope(self, ip: str) -> Scope:
        """The scope of an asker not in the cache yet; caches it.  Routes and cache are read
        together, so an answer computed from old routes can only land in an old cache."""
        routes, cache = self._routes
        try:
            value = int.from_bytes(socket.inet_aton(ip), "big")
        except OSError:  # not IPv4: in no scope
            scope = NOWHERE
        else:
            scope = next((s for net, mask, s in routes if value & mask == net), NOWHERE)
        if len(cache) >= MAX_CACHED_ASKERS:
            cache.clear()
        cache[ip] = scope
        return scope

    def find_scope_raw(self, source: int) -> Scope:
        """find_scope for an address given as its 4 bytes (network order) read as a native int,
        as a batch of datagrams has it; cached under that int."""
        routes, cache = self._routes
        value = int.from_bytes(source.to_bytes(4, sys.byteorder), "big")
        scope = next((s for net, mask, s in routes if value & mask == net), NOWHERE)
        if len(cache) >= MAX_CACHED_ASKERS:
            cache.clear()
        cache[source] = scope
        return scope

    # ------------------------------------------------------------------ answering (slow)

    def _read(self, data: bytes, counters: Counters) -> Query | bytes | None:
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

    def _local(self, q: Query, zone: Zone, limit: int, counters: Counters) -> bytes:
        reply = local_reply(q, zone, limit)
        if reply[3] & 0x0F == NXDOMAIN:
            counters.nxdomain += 1
        return reply

    def answer_udp(
        self,
        data: bytes,
        scope: Scope,
        zone: Zone,
        sock: socket.socket,
        client: Address,
        counters: Counters,
    ) -> bytes | None:
        """Everything the prepared answers do not cover, `zone` being the scope's zone as the
        hot path read it.  None: nothing to send now (dropped, or forwarded: the forwarder
        thread sends the answer).  A local answer that will never change while the zone lives
        (no addresses to rotate: NXDOMAIN, no data) is kept among the zone's prepared negative
        answers, so the next such query takes the hot path."""
        q = self._read(data, counters)
        if not isinstance(q, Query):
            return q
        if q.local:
            reply = self._local(q, zone, udp_limit(q), counters)
            remember_negative(zone, q, reply)
            if q.qname in zone.late:  # a big formation's first query since it changed
                with self._lock:
                    prepare_late(zone, q.qname)
            return reply
        return self._forwarder.forward_udp(q, sock, client, _share_key(scope, client[0]))

    def answer_tcp(
        self,
        data: bytes,
        peer: str,
        counters: Counters,
        track: Callable[[socket.socket, bool], bool],
    ) -> bytes | None:
        counters.queries += 1
        q = self._read(data, counters)
        if not isinstance(q, Query):
            return q
        if q.local:
            scope = self.scope_by_ip.get(peer) or self.find_scope(peer)
            return self._local(q, scope.zone, TCP_LIMIT, counters)
        return self._forwarder.forward_tcp(q, track)

    # ---------------------------------------------------------------------- counters

    def _scope_of(self, ip: str) -> Scope:
        return self.scope_by_ip.get(ip) or self.find_scope(ip)

    def take_tcp_slot(self, peer: str) -> ShareKey | None:
        """The share a new TCP connection from `peer` takes, or None: its share is full."""
        key = _share_key(self._scope_of(peer), peer)
        return key if self._tcp_shares.take(key) else None

    def release_tcp_slot(self, key: ShareKey) -> None:
        """A TCP connection taken with take_tcp_slot has closed."""
        self._tcp_shares.release(key)

    def new_counters(self) -> Counters:
        counters = Counters()
        with self._lock:
            self._counters.append(counters)
        return counters

    def retire(self, counters: Counters) -> None:
        """Fold the counts of a thread that ends into the totals."""
        with self._lock:
            self._counters.remove(counters)
            retired = self._retired
            for f in fields(Counters):
                setattr(retired, f.name, getattr(retired, f.name) + getattr(counters, f.name))


def _share_key(scope: Scope, source: str) -> ShareKey:
    """Whose shares an asker takes. A space is one tenant's network; an asker in no space (a
    Common Runtime dyno: every app there is a tenant of its own) is a group by itself, so a few
    dynos of one app cannot take the Common Runtime's whole share from the others."""
    group = scope.name if scope is not NOWHERE else f"source {source}"
    return (group, source)
