"""The sockets and threads of one address the DNS server listens on: a UDP thread (the hot
path: prepared answers straight from the asker's zone), a TCP accepting thread, and one thread
per TCP connection (see `dynod.dns.server` for the design)."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from dynod.dns import batch
from dynod.dns.limits import ShareKey
from dynod.dns.scopes import Counters, Scope
from dynod.dns.upstream import Address, Track, read_exact
from dynod.dns.wire import NXDOMAIN
from dynod.dns.zone import Zone
from dynod.errors import DynodError

__all__ = ["Answers", "Listener"]

READ_SIZE = 4096  # a query is small; a bigger datagram is cut and then fails to parse: FORMERR
UDP_RECEIVE_BUFFER = 1 << 20  # absorbs bursts while the thread is busy (capped by rmem_max)
TCP_BACKLOG = 128


class Answers(Protocol):
    """What a listener asks of the DNS server it serves (`dynod.dns.server.DnsServer`)."""

    # the cache of asker -> scope, read on the hot path: by the address as text, or as the
    # int of its 4 bytes in network order read natively (what a batch has at hand)
    scope_by_ip: dict[str | int, Scope]
    tcp_idle_timeout: float

    def find_scope(self, ip: str) -> Scope: ...
    def find_scope_raw(self, source: int) -> Scope: ...
    def report(self, kind: str, text: str) -> None: ...
    def answer_udp(
        self,
        data: bytes,
        scope: Scope,
        zone: Zone,
        sock: socket.socket,
        client: Address,
        counters: Counters,
    ) -> bytes | None: ...
    def answer_tcp(
        self, data: bytes, peer: str, counters: Counters, track: Track
    ) -> bytes | None: ...
    def take_tcp_slot(self, peer: str) -> ShareKey | None: ...
    def release_tcp_slot(self, key: ShareKey) -> None: ...
    def new_counters(self) -> Counters: ...
    def retire(self, counters: Counters) -> None: ...


class Listener:
    """The sockets and threads of one listening address."""

    def __init__(self, server: Answers, address: str, port: int) -> None:
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
        """The hot path.  Keep it short: every line runs for every query.  Datagrams come and
        go in batches (`dynod.dns.batch`): one recvmmsg takes every query queued, one sendmmsg
        sends their answers."""
        assert self._udp is not None
        if not batch.supported():
            self._serve_udp_one_by_one()
            return
        server = self.server
        sock = self._udp
        batched = batch.Batch(sock)
        receive, datagram, put, sources = (
            batched.receive,
            batched.datagram,
            batched.put,
            batched.sources,
        )
        counters = server.new_counters()
        try:
            while True:
                try:
                    count = receive()
                except OSError as exc:
                    if self.closing or exc.errno == errno.EBADF:
                        return
                    server.report("udp recv", f"{self.address}: receiving: {exc}")
                    continue
                if self.closing:  # woken by stop()'s shutdown
                    return
                counters.queries += count
                for i in range(count):
                    data = datagram(i)
                    try:
                        source = sources[4 * i + 1]  # the IPv4 address, as an int
                        scope = server.scope_by_ip.get(source) or server.find_scope_raw(source)
                        zone = scope.zone
                        key = data[2:].lower()
                        prepared = zone.prepared.get(key)
                        if prepared is None:
                            prepared = zone.negative.get(key)
                            if prepared is not None and prepared[0][1] & 0x0F == NXDOMAIN:
                                counters.nxdomain += 1
                        if prepared is not None:
                            head, sections, turn = prepared
                            section = sections[next(turn) % len(sections)]
                            put(data[:2] + head + data[12:] + section, i)
                            continue
                        client = batched.sender(i)
                        reply = server.answer_udp(data, scope, zone, sock, client, counters)
                        if reply is not None and not put(reply, i):
                            sock.sendto(reply, client)
                    except Exception as exc:  # one bad packet costs that packet only
                        counters.dropped += 1
                        if not self.closing:
                            who = batched.sender(i)[0]
                            server.report("udp", f"{self.address}: query from {who}: {exc!r}")
                for failed in batched.send():
                    counters.dropped += 1
                    if not self.closing:
                        server.report("udp send", f"{self.address}: sending: {failed}")
        finally:
            server.retire(counters)

    def _serve_udp_one_by_one(self) -> None:
        """recvfrom and sendto, where recvmmsg's layouts are not known (not a 64-bit Linux)."""
        assert self._udp is not None
        server = self.server
        sock = self._udp
        counters = server.new_counters()
        try:
            while True:
                try:
                    data, client = sock.recvfrom(READ_SIZE)
                except OSError as exc:
                    if self.closing or exc.errno == errno.EBADF:
                        return
                    server.report("udp recv", f"{self.address}: receiving: {exc}")
                    continue
                if client is None:  # shut down by stop()
                    if self.closing:
                        return
                    continue
                counters.queries += 1
                try:
                    scope = server.scope_by_ip.get(client[0]) or server.find_scope(client[0])
                    zone = scope.zone
                    key = data[2:].lower()
                    prepared = zone.prepared.get(key) or zone.negative.get(key)
                    if prepared is not None:
                        head, sections, turn = prepared
                        if head[1] & 0x0F == NXDOMAIN:
                            counters.nxdomain += 1
                        section = sections[next(turn) % len(sections)]
                        sock.sendto(data[:2] + head + data[12:] + section, client)
                        continue
                    reply = server.answer_udp(data, scope, zone, sock, client, counters)
                    if reply is not None:
                        sock.sendto(reply, client)
                except Exception as exc:  # one bad packet costs that packet only
                    counters.dropped += 1
                    if not self.closing:
                        server.report("udp", f"{self.address}: query from {client[0]}: {exc!r}")
        finally:
            server.retire(counters)

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
                server.report("accept", f"{self.address}: accepting TCP: {exc}")
                time.sleep(0.05)
                continue
            share = server.take_tcp_slot(peer[0])
            if share is None:
                server.report(
                    f"tcp full {peer[0]}",
                    f"TCP connections from {peer[0]} (or its network) over its share: refusing",
                )
                conn.close()
                continue
            if not self._track(conn, True):
                server.release_tcp_slot(share)
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
        idle = server.tcp_idle_timeout
        counters = server.new_counters()
        try:
            while not self.closing:
                head = read_exact(conn, 2, time.monotonic() + idle)
                size = int.from_bytes(head, "big") if head else 0
                data = read_exact(conn, size, time.monotonic() + idle) if size else None
                if data is None:
                    return  # closed, idle, or a zero length: nothing sensible follows
                reply = server.answer_tcp(data, peer, counters, self._track)
                if reply is not None:
                    conn.settimeout(idle)
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            pass  # the client went away, or stop() shut the connection down
        except Exception as exc:
            server.report("tcp", f"{self.address}: TCP query from {peer}: {exc!r}")
        finally:
            self._track(conn, False)
            conn.close()
            server.release_tcp_slot(share)
            server.retire(counters)


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
