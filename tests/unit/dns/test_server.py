"""DnsServer over real sockets on 127.0.0.0/8: no root needed.

Every test uses its own 127.77.x.y address for the server (and 127.78.x.y for a fake
upstream), so tests never collide and never touch the host's resolver.  Askers bind their
sockets to chosen source addresses to land in a scope (127.10.0.0/16, 127.20.0.0/16) or in
none (127.30.0.0/16).
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import dnslib
import pytest

from dynod.dns.server import DnsServer
from dynod.errors import DynodError

Address = tuple[str, int]

IN_SCOPE_A = "127.10.0.5"
IN_SCOPE_B = "127.20.0.5"
NO_SCOPE = "127.30.0.5"
WEB = "web.sushi.app.localspace"
RECORDS = {
    WEB: ["10.1.0.2", "10.1.0.6", "10.1.0.10"],
    "1.web.sushi.app.localspace": ["10.1.0.2"],
    "2.web.sushi.app.localspace": ["10.1.0.6"],
    "3.web.sushi.app.localspace": ["10.1.0.10"],
    "worker.sushi.app.localspace": [],
    "sushi.herokuapp.localspace": ["10.1.0.1"],
}

_hosts = itertools.count(1)


def unique_address(second: int) -> str:
    n = next(_hosts)
    return f"127.{second}.{n // 250}.{n % 250 + 1}"


def free_port(address: str) -> int:
    """A port free for both TCP and UDP on `address`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
        return port


def dns_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dynod-dns")]


# ------------------------------------------------------------------------ DNS client side


def query(
    name: str,
    qtype: str = "A",
    *,
    qid: int = 0x1234,
    edns: int | None = None,
    flags: int = 0x0100,
) -> bytes:
    """A query as raw bytes; `flags` are the header's (0x0100: RD)."""
    record = dnslib.DNSRecord.question(name, qtype)
    if edns is not None:
        record.add_ar(dnslib.EDNS0(udp_len=edns))
    data = bytes(record.pack())
    return struct.pack("!HH", qid, flags) + data[4:]


def exchange_udp(server: Address, packet: bytes, source: str, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(packet, server)
        return sock.recv(65535)


def silent_udp(server: Address, packet: bytes, source: str, wait: float = 0.2) -> bool:
    """True if the server sends nothing back to `packet` within `wait`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(wait)
        sock.sendto(packet, server)
        try:
            sock.recv(65535)
        except TimeoutError:
            return True
        return False


def recv_message(sock: socket.socket) -> bytes:
    head = recv_exactly(sock, 2)
    return recv_exactly(sock, int.from_bytes(head, "big"))


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def frame(packet: bytes) -> bytes:
    return len(packet).to_bytes(2, "big") + packet


def tcp_connect(server: Address, source: str, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(server)
    except OSError:
        sock.close()
        raise
    return sock


def exchange_tcp(server: Address, packet: bytes, source: str, timeout: float = 2.0) -> bytes:
    with tcp_connect(server, source, timeout) as sock:
        sock.sendall(frame(packet))
        return recv_message(sock)


def ask(
    server: Address,
    name: str,
    qtype: str = "A",
    *,
    source: str = IN_SCOPE_A,
    tcp: bool = False,
    edns: int | None = None,
) -> dnslib.DNSRecord:
    packet = query(name, qtype, edns=edns)
    raw = (exchange_tcp if tcp else exchange_udp)(server, packet, source)
    reply = dnslib.DNSRecord.parse(raw)
    assert reply.header.id == 0x1234
    return reply


def addresses(reply: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A]


def rcode(reply: dnslib.DNSRecord) -> str:
    return dnslib.RCODE.get(reply.header.rcode)


def rotated(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def is_rotation(answer: Sequence[str], of: Sequence[str]) -> bool:
    return len(answer) == len(of) and any(list(answer) == rotated(of, k) for k in range(len(of)))


# ---------------------------------------------------------------------------- fake upstream


class FakeUpstream:
    """A resolver on a 127.78.x.y address, UDP and TCP, built with dnslib.

    example.test: A 192.0.2.1.  big.test: TC and no records over UDP, 100 records over TCP.
    slow.test: never answers.  fail.test: SERVFAIL.  Anything else: NXDOMAIN.  Replies carry
    the question lowercased (as some servers do), and every query received is kept in `seen`.
    """

    def __init__(self) -> None:
        self.host = unique_address(78)
        self.port = free_port(self.host)
        self.address = (self.host, self.port)
        self.seen: list[tuple[str, bytes]] = []
        self._closed = threading.Event()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(self.address)
        self._udp.settimeout(0.05)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.bind(self.address)
        self._tcp.listen()
        self._tcp.settimeout(0.05)
        self._threads = [
            threading.Thread(target=self._serve_udp, name="fake-upstream-udp"),
            threading.Thread(target=self._serve_tcp, name="fake-upstream-tcp"),
        ]
        for thread in self._threads:
            thread.start()

    def answer(self, data: bytes, transport: str) -> bytes | None:
        self.seen.append((transport, data))
        request = dnslib.DNSRecord.parse(data)
        name = str(request.q.qname).lower().rstrip(".")
        reply = request.reply()
        reply.header.aa = 0
        reply.questions[0].qname = dnslib.DNSLabel(name)
        if name == "slow.test":
            return None
        if name == "example.test":
            reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1"), ttl=60))
        elif name == "big.test" and transport == "udp":
            reply.header.tc = 1
        elif name == "big.test":
            for i in range(100):
                rdata = dnslib.A(f"198.51.100.{i}")
                reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=rdata, ttl=60))
        elif name == "fail.test":
            reply.header.rcode = dnslib.RCODE.SERVFAIL
        else:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        return bytes(reply.pack())

    def _serve_udp(self) -> None:
        while not self._closed.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            reply = self.answer(data, "udp")
            if reply is not None:
                self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _peer = self._tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    reply = self.answer(recv_message(conn), "tcp")
                    if reply is not None:
                        conn.sendall(frame(reply))
                    else:
                        self._closed.wait(1)  # hold the connection, answer nothing
                except (OSError, ConnectionError):
                    pass

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join()
        self._udp.close()
        self._tcp.close()


# ---------------------------------------------------------------------------------- fixtures

MakeServer = Callable[..., tuple[DnsServer, Address]]


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    """make_server(upstreams=[], **options) -> (server, (address, port)), listening on a fresh
    address, with RECORDS for 127.10.0.0/16; closed (and checked to leave no thread) after."""
    servers: list[DnsServer] = []

    def make(upstreams: Sequence[Address] = (), **options: object) -> tuple[DnsServer, Address]:
        server = DnsServer(list(upstreams), **options)  # type: ignore[arg-type]
        servers.append(server)
        address = unique_address(77)
        port = free_port(address)
        server.listen(address, port)
        server.set_scope("sushi-space", "127.10.0.0/16", RECORDS)
        return server, (address, port)

    try:
        yield make
    finally:
        for server in servers:
            started = time.monotonic()
            server.close()
            assert time.monotonic() - started < 1.0, "close() must be prompt"
        assert dns_threads() == [], "close() left threads running"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    try:
        yield fake
    finally:
        fake.close()


# ------------------------------------------------------------------------------ local names


def test_formation_and_dyno_names(make_server: MakeServer) -> None:
    _server, address = make_server()
    reply = ask(address, WEB)
    assert rcode(reply) == "NOERROR"
    assert sorted(addresses(reply)) == sorted(RECORDS[WEB])
    assert all(rr.ttl == 0 for rr in reply.rr)
    assert reply.header.aa == 1 and reply.header.ra == 1 and reply.header.qr == 1
    assert addresses(ask(address, "2.web.sushi.app.localspace")) == ["10.1.0.6"]
    assert addresses(ask(address, "sushi.herokuapp.localspace")) == ["10.1.0.1"]
    assert addresses(ask(address, WEB, "ANY")) != []


def test_rotation_starts_one_further_each_query(make_server: MakeServer) -> None:
    """Query k starts at element k mod n, whichever path answers it (prepared UDP, EDNS, TCP)."""
    _server, address = make_server()
    web = RECORDS[WEB]
    for k in range(7):
        tcp, edns = k % 3 == 1, 1232 if k % 3 == 2 else None
        assert addresses(ask(address, WEB, tcp=tcp, edns=edns)) == rotated(web, k)


def test_rotation_survives_unrelated_changes(make_server: MakeServer) -> None:
    server, address = make_server()
    web = RECORDS[WEB]
    assert addresses(ask(address, WEB)) == rotated(web, 0)
    server.set_scope("sushi-space", "127.10.0.0/16", {**RECORDS, "x.sushi.app.localspace": []})
    assert addresses(ask(address, WEB)) == rotated(web, 1)


def test_names_are_case_insensitive_and_the_question_comes_back_as_asked(
    make_server: MakeServer,
) -> None:
    _server, address = make_server()
    mixed = "WeB.SuShI.aPp.LocalSPACE"
    for edns, exchange in ((None, exchange_udp), (1232, exchange_udp), (None, exchange_tcp)):
        packet = query(mixed, edns=edns)
        raw = exchange(address, packet, IN_SCOPE_A)
        question_end = 12 + len(mixed) + 2 + 4
        assert raw[12:question_end] == packet[12:question_end]
        reply = dnslib.DNSRecord.parse(raw)
        assert sorted(addresses(reply)) == sorted(RECORDS[WEB])
        assert all(str(rr.rname) == mixed + "." for rr in reply.rr)


def test_flags_are_echoed(make_server: MakeServer) -> None:
    """RD and CD come back as sent; prepared and parsed paths agree."""
    _server, address = make_server()
    for flags in (0x0000, 0x0100, 0x0120, 0x0110, 0x0010):
        raw = exchange_udp(address, query(WEB, flags=flags), IN_SCOPE_A)
        reply = dnslib.DNSRecord.parse(raw)
        assert reply.header.rd == (flags >> 8) & 1
        assert reply.header.cd == (flags >> 4) & 1
        assert reply.header.ad == 0 and reply.header.aa == 1 and reply.header.ra == 1
        assert len(addresses(reply)) == 3


def test_scopes_by_source_address(make_server: MakeServer) -> None:
    server, address = make_server()
    server.set_scope("other-space", "127.20.0.0/16", {WEB: ["10.2.0.2"]})
    assert sorted(addresses(ask(address, WEB, source="127.10.3.4"))) == sorted(RECORDS[WEB])
    assert addresses(ask(address, WEB, source="127.20.200.9")) == ["10.2.0.2"]
    reply = ask(address, WEB, source=NO_SCOPE)
    assert rcode(reply) == "NXDOMAIN" and reply.rr == []
    # the most specific network wins where networks overlap
    server.set_scope("everyone", "127.0.0.0/8", {WEB: ["10.3.0.3"]})
    assert addresses(ask(address, WEB, source=NO_SCOPE)) == ["10.3.0.3"]
    assert addresses(ask(address, WEB, source=IN_SCOPE_B)) == ["10.2.0.2"]
    assert rcode(ask(address, "sushi.herokuapp.localspace", source=IN_SCOPE_B)) == "NXDOMAIN"


def assert_negative(reply: dnslib.DNSRecord, expected: str, what: object) -> None:
    """An authoritative negative answer (RFC 2308): no records, the zone's SOA in the
    authority section, cached for 0 seconds (TTL and MINIMUM 0)."""
    assert rcode(reply) == expected, what
    assert reply.header.aa == 1 and reply.rr == [], what
    assert [rr.rtype for rr in reply.auth] == [dnslib.QTYPE.SOA], what
    assert str(reply.auth[0].rname) == "localspace.", what
    assert reply.auth[0].ttl == 0 and reply.auth[0].rdata.times[-1] == 0, what


EVERY_PATH = ({}, {"edns": 1232}, {"tcp": True})  # prepared UDP, parsed UDP, TCP


def test_unknown_localspace_names_are_nxdomain(make_server: MakeServer) -> None:
    _server, address = make_server()
    for name in (
        "9.web.sushi.app.localspace",
        "x.web.sushi.app.localspace",  # below an existing name: still nothing there
        "nope.sushi.app.localspace",  # unknown below an existing app
        "web.tuna.app.localspace",
        "tuna.app.localspace",
        "nope.localspace",
    ):
        for path in EVERY_PATH:
            assert_negative(ask(address, name, **path), "NXDOMAIN", (name, path))


def test_empty_non_terminals_are_noerror_with_no_data(make_server: MakeServer) -> None:
    """Names with names below them exist (RFC 8020: NXDOMAIN would deny everything below, and a
    resolver applying it would lose web.sushi.app.localspace), but have no address."""
    server, address = make_server()
    for name in ("sushi.app.localspace", "app.localspace", "herokuapp.localspace"):
        for qtype in ("A", "AAAA", "TXT", "ANY"):
            for path in EVERY_PATH:
                assert_negative(ask(address, name, qtype, **path), "NOERROR", (name, qtype, path))
    # another space's askers see nothing of sushi, not even that the app exists
    server.set_scope("other-space", "127.20.0.0/16", {"web.tuna.app.localspace": ["10.2.0.2"]})
    assert_negative(ask(address, "sushi.app.localspace", source=IN_SCOPE_B), "NXDOMAIN", "B")
    assert_negative(ask(address, "tuna.app.localspace", source=IN_SCOPE_B), "NOERROR", "B")
    assert_negative(ask(address, "herokuapp.localspace", source=IN_SCOPE_B), "NXDOMAIN", "B")
    # when the last name below goes, so does the empty non-terminal
    server.set_scope("other-space", "127.20.0.0/16", {})
    assert_negative(ask(address, "tuna.app.localspace", source=IN_SCOPE_B), "NXDOMAIN", "gone")
    assert_negative(ask(address, "app.localspace", source=IN_SCOPE_B), "NXDOMAIN", "gone")


def test_apex_has_soa_and_ns(make_server: MakeServer) -> None:
    """localspace. is a zone: SOA and NS at the apex; the NS, ns.localspace, is this server as
    the scope reaches it (the first address of the scope's network: its bridge)."""
    _server, address = make_server()
    for path in EVERY_PATH:
        soa = ask(address, "localspace", "SOA", **path)
        assert rcode(soa) == "NOERROR" and soa.header.aa == 1
        assert [(str(rr.rname), rr.rtype) for rr in soa.rr] == [("localspace.", dnslib.QTYPE.SOA)]
        ns = ask(address, "localspace", "NS", **path)
        assert rcode(ns) == "NOERROR" and ns.header.aa == 1
        assert [(str(rr.rname), rr.rtype) for rr in ns.rr] == [("localspace.", dnslib.QTYPE.NS)]
        assert str(ns.rr[0].rdata) == "ns.localspace."
        both = ask(address, "localspace", "ANY", **path)
        assert sorted(rr.rtype for rr in both.rr) == [dnslib.QTYPE.NS, dnslib.QTYPE.SOA]
        assert addresses(ask(address, "ns.localspace", **path)) == ["127.10.0.1"]
        for qtype in ("A", "AAAA", "MX"):
            assert_negative(ask(address, "localspace", qtype, **path), "NOERROR", (qtype, path))


def test_known_names_have_no_data_of_other_types(make_server: MakeServer) -> None:
    _server, address = make_server()
    for name, qtype in (
        (WEB, "AAAA"),
        (WEB, "MX"),
        (WEB, "TXT"),
        ("worker.sushi.app.localspace", "A"),
    ):
        for tcp in (False, True):
            reply = ask(address, name, qtype, tcp=tcp)
            assert rcode(reply) == "NOERROR" and reply.rr == [], (name, qtype)
            assert reply.header.aa == 1


def test_big_answers_set_tc_over_udp_and_come_whole_over_tcp(make_server: MakeServer) -> None:
    server, address = make_server()
    name = "web.big.app.localspace"
    fifty = [f"10.5.{i // 200}.{i % 200 + 1}" for i in range(50)]
    server.set_scope("sushi-space", "127.10.0.0/16", {name: fifty})

    raw = exchange_udp(address, query(name), IN_SCOPE_A)
    reply = dnslib.DNSRecord.parse(raw)
    assert len(raw) <= 512 and reply.header.tc == 1
    # as many whole records as fit, in rotation order
    fit = (512 - 12 - (len(name) + 2 + 4)) // 16
    assert addresses(reply) == rotated(fifty, 0)[:fit]

    reply = ask(address, name, tcp=True)
    assert reply.header.tc == 0 and addresses(reply) == rotated(fifty, 1)


def test_edns(make_server: MakeServer) -> None:
    server, address = make_server()
    fifty = [f"10.5.0.{i + 1}" for i in range(50)]
    hundred = [f"10.6.0.{i + 1}" for i in range(100)]
    server.set_scope(
        "sushi-space", "127.10.0.0/16", {"fifty.localspace": fifty, "hundred.localspace": hundred}
    )

    # 50 records fit in 1232 bytes: no TC, and the reply carries our OPT record
    reply = ask(address, "fifty.localspace", edns=1232)
    assert reply.header.tc == 0 and len(addresses(reply)) == 50
    opt = [rr for rr in reply.ar if rr.rtype == dnslib.QTYPE.OPT]
    assert len(opt) == 1 and opt[0].edns_len == 1232

    # an advertised 4096 is capped at 1232
    raw = exchange_udp(address, query("hundred.localspace", edns=4096), IN_SCOPE_A)
    reply = dnslib.DNSRecord.parse(raw)
    assert reply.header.tc == 1 and len(raw) <= 1232 and 0 < len(addresses(reply)) < 100

    # below 512 counts as 512
    raw = exchange_udp(address, query("fifty.localspace", edns=100), IN_SCOPE_A)
    assert 100 < len(raw) <= 512 and dnslib.DNSRecord.parse(raw).header.tc == 1

    # no OPT in the query, none in the reply
    assert ask(address, WEB).ar == []

    # an EDNS version we do not speak: BADVERS (extended rcode 16)
    packet = bytearray(query(WEB, edns=1232))
    packet[-5] = 1  # the version byte of the OPT record's TTL field
    reply = dnslib.DNSRecord.parse(exchange_udp(address, bytes(packet), IN_SCOPE_A))
    assert reply.rr == [] and reply.ar[0].edns_rcode == 1 and reply.header.rcode == 0


def test_set_scope_takes_effect_on_the_very_next_query(make_server: MakeServer) -> None:
    server, address = make_server()
    for i in range(20):
        server.set_scope("sushi-space", "127.10.0.0/16", {WEB: [f"10.7.0.{i + 1}"]})
        assert addresses(ask(address, WEB)) == [f"10.7.0.{i + 1}"]
        assert addresses(ask(address, WEB, tcp=True)) == [f"10.7.0.{i + 1}"]
    server.set_scope("sushi-space", "127.30.0.0/16", {WEB: ["10.7.1.1"]})  # moved network
    assert rcode(ask(address, WEB)) == "NXDOMAIN"
    assert addresses(ask(address, WEB, source=NO_SCOPE)) == ["10.7.1.1"]
    server.remove_scope("sushi-space")
    assert rcode(ask(address, WEB, source=NO_SCOPE)) == "NXDOMAIN"


def test_small_changes_to_a_big_scope(make_server: MakeServer) -> None:
    """A few names changed or gone among many (the prepared answers are patched, not rebuilt):
    no stale answer survives, on the prepared path or any other."""
    server, address = make_server()
    many = {f"{i}.web.sushi.app.localspace": [f"10.4.0.{i + 1}"] for i in range(40)}
    server.set_scope("sushi-space", "127.10.0.0/16", {**RECORDS, **many})
    assert addresses(ask(address, "7.web.sushi.app.localspace")) == ["10.4.0.8"]
    del many["7.web.sushi.app.localspace"]
    many["8.web.sushi.app.localspace"] = ["10.4.1.1"]
    server.set_scope("sushi-space", "127.10.0.0/16", {**RECORDS, **many})
    for tcp in (False, True):
        assert rcode(ask(address, "7.web.sushi.app.localspace", tcp=tcp)) == "NXDOMAIN"
        assert rcode(ask(address, "7.web.sushi.app.localspace", "AAAA", tcp=tcp)) == "NXDOMAIN"
        assert addresses(ask(address, "8.web.sushi.app.localspace", tcp=tcp)) == ["10.4.1.1"]
        assert addresses(ask(address, "9.web.sushi.app.localspace", tcp=tcp)) == ["10.4.0.10"]


def test_update_scope_changes_the_names_given_from_the_next_query(make_server: MakeServer) -> None:
    """A dyno's start and stop, as the registry sends them: the names it changes answer anew
    at once, on UDP (prepared, then a remembered negative answer) and TCP; the others as
    before."""
    server, address = make_server()
    server.set_scope("sushi-space", "127.10.0.0/16", RECORDS)
    one = "4.web.sushi.app.localspace"
    many = [f"10.5.{i // 250}.{i % 250 + 1}" for i in range(100)]  # rotations cut when asked
    assert rcode(ask(address, one)) == "NXDOMAIN"
    assert rcode(ask(address, one)) == "NXDOMAIN"  # now a remembered negative answer
    server.update_scope("sushi-space", {one: ["10.4.0.6"], WEB: many})
    for tcp in (False, True):
        assert addresses(ask(address, one, tcp=tcp)) == ["10.4.0.6"]
        assert sorted(addresses(ask(address, WEB, tcp=True))) == sorted(many)
    first = [addresses(ask(address, WEB))[0] for _ in range(3)]
    assert len(set(first)) == 3  # round robin over the big name: each query starts elsewhere
    server.update_scope("sushi-space", {one: None})
    for tcp in (False, True):
        assert rcode(ask(address, one, tcp=tcp)) == "NXDOMAIN"
    with pytest.raises(ValueError):
        server.update_scope("sushi-space", {WEB: ["10.0.0.300"]})
    assert sorted(addresses(ask(address, WEB, tcp=True))) == sorted(many)
    with pytest.raises(DynodError):
        server.update_scope("tuna-space", {WEB: ["10.0.0.1"]})


def test_set_scope_rejects_bad_records_and_changes_nothing(make_server: MakeServer) -> None:
    server, address = make_server()
    for bad in ({"web.example.com": ["10.0.0.1"]}, {WEB: ["10.0.0.300"]}, {"a..localspace": []}):
        with pytest.raises(ValueError):
            server.set_scope("sushi-space", "127.10.0.0/16", bad)
    with pytest.raises(ValueError):
        server.set_scope("sushi-space", "not-a-network", RECORDS)
    assert sorted(addresses(ask(address, WEB))) == sorted(RECORDS[WEB])


def test_set_scope_while_queried_never_mixes_answers(make_server: MakeServer) -> None:
    server, address = make_server()
    versions = [
        ["10.8.0.1", "10.8.0.2", "10.8.0.3"],
        ["10.9.0.1", "10.9.0.2"],
        ["10.8.0.3", "10.9.0.1", "10.8.0.1", "10.9.0.2"],
    ]
    stop = threading.Event()
    changes = 0

    def hammer() -> None:
        nonlocal changes
        deadline = time.monotonic() + 5
        while not stop.is_set() and changes < 20000 and time.monotonic() < deadline:
            records = {
                WEB: versions[changes % 3],
                f"{changes}.web.sushi.app.localspace": ["10.0.0.1"],
            }
            server.set_scope("sushi-space", "127.10.0.0/16", records)
            changes += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    while changes == 0 and thread.is_alive():  # the first answer must be of a version too
        time.sleep(0.001)
    try:
        seen = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((IN_SCOPE_A, 0))
            sock.settimeout(2)
            for i in range(400):
                sock.sendto(query(WEB, qid=i, edns=1232 if i % 4 == 0 else None), address)
                reply = dnslib.DNSRecord.parse(sock.recv(65535))
                assert reply.header.id == i
                answer = addresses(reply)
                assert len(set(answer)) == len(answer), answer
                assert any(is_rotation(answer, v) for v in versions), answer
                seen.add(len(answer))
    finally:
        stop.set()
        thread.join()
    assert changes > 0 and len(seen) > 1


# ------------------------------------------------------------------------------ TCP details


def test_several_queries_on_one_tcp_connection(make_server: MakeServer) -> None:
    _server, address = make_server()
    with tcp_connect(address, IN_SCOPE_A) as sock:
        names = [WEB, "2.web.sushi.app.localspace", "nope.localspace"]
        sock.sendall(b"".join(frame(query(n, qid=i)) for i, n in enumerate(names)))
        replies = [dnslib.DNSRecord.parse(recv_message(sock)) for _ in names]
    assert [r.header.id for r in replies] == [0, 1, 2]
    assert [rcode(r) for r in replies] == ["NOERROR", "NOERROR", "NXDOMAIN"]
    assert addresses(replies[1]) == ["10.1.0.6"]


def test_idle_tcp_connections_are_closed(make_server: MakeServer) -> None:
    _server, address = make_server(tcp_idle_timeout=0.2)
    with tcp_connect(address, IN_SCOPE_A) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - started < 2


def test_tcp_connections_are_bounded(make_server: MakeServer) -> None:
    server, address = make_server(max_tcp_connections=2)
    first, second = tcp_connect(address, IN_SCOPE_A), tcp_connect(address, IN_SCOPE_A)
    try:
        with tcp_connect(address, IN_SCOPE_A) as third:
            assert third.recv(10) == b""  # accepted and closed at once
        for sock in (first, second):
            sock.sendall(frame(query(WEB)))
            assert dnslib.DNSRecord.parse(recv_message(sock)).header.id == 0x1234
        assert server.stats["tcp_connections"] == 2
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + 2
    while server.stats["tcp_connections"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(addresses(ask(address, WEB, tcp=True))) == 3


# ------------------------------------------------------------------------------- forwarding


def test_forwarding_over_udp_and_tcp(make_server: MakeServer, upstream: FakeUpstream) -> None:
    _server, address = make_server([upstream.address])
    for tcp in (False, True):
        packet = query("ExAmple.TEST", qid=0xBEEF)
        raw = (exchange_tcp if tcp else exchange_udp)(address, packet, IN_SCOPE_A)
        reply = dnslib.DNSRecord.parse(raw)
        assert reply.header.id == 0xBEEF
        assert addresses(reply) == ["192.0.2.1"] and reply.rr[0].ttl == 60
        # the upstream lowercased the question; the asker gets its own case back
        assert str(reply.q.qname) == "ExAmple.TEST."
        assert upstream.seen[-1][0] == ("tcp" if tcp else "udp")
    # non-local names are forwarded for askers in no scope too
    assert addresses(ask(address, "example.test", source=NO_SCOPE)) == ["192.0.2.1"]
    assert rcode(ask(address, "other.test")) == "NXDOMAIN"


def test_truncated_upstream_answers_go_to_tcp(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    _server, address = make_server([upstream.address])
    reply = ask(address, "big.test")
    assert reply.header.tc == 1 and reply.rr == []
    reply = ask(address, "big.test", tcp=True)
    assert reply.header.tc == 0 and len(addresses(reply)) == 100
    assert [transport for transport, _data in upstream.seen] == ["udp", "tcp"]


def test_upstream_timeout_is_servfail(make_server: MakeServer, upstream: FakeUpstream) -> None:
    logged: list[str] = []
    server, address = make_server([upstream.address], timeout=0.3, log=logged.append)
    for tcp in (False, True):
        started = time.monotonic()
        reply = ask(address, "slow.test", tcp=tcp)
        elapsed = time.monotonic() - started
        assert rcode(reply) == "SERVFAIL" and 0.25 < elapsed < 1.5, (tcp, elapsed)
    assert server.stats["servfail"] == 2
    assert f"upstream {upstream.host}:{upstream.port} did not answer in time" in logged


def test_no_upstream_is_servfail(make_server: MakeServer) -> None:
    _server, address = make_server([])
    assert rcode(ask(address, "example.test")) == "SERVFAIL"
    assert rcode(ask(address, "example.test", tcp=True)) == "SERVFAIL"


def test_dead_upstream_fails_over_to_the_next(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    dead_host = unique_address(78)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:  # bound, never answers
        dead.bind((dead_host, 0))
        _server, address = make_server([dead.getsockname(), upstream.address], timeout=1.0)
        started = time.monotonic()
        assert addresses(ask(address, "example.test")) == ["192.0.2.1"]
        assert time.monotonic() - started < 1.5
        # the upstream that answered is asked first from now on
        started = time.monotonic()
        assert addresses(ask(address, "example.test")) == ["192.0.2.1"]
        assert time.monotonic() - started < 0.4


def test_upstream_servfail_moves_on_to_the_next(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    other = FakeUpstream()
    try:
        _server, address = make_server([upstream.address, other.address])
        assert rcode(ask(address, "fail.test")) == "SERVFAIL"
        assert len(upstream.seen) == 1 and len(other.seen) == 1
    finally:
        other.close()


def test_forwarding_is_bounded_and_never_stalls_local_names(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    server, address = make_server([upstream.address], timeout=1.0, max_inflight=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((IN_SCOPE_A, 0))
        sock.settimeout(2)
        started = time.monotonic()
        for i in range(8):
            sock.sendto(query("slow.test", qid=i), address)
        # beyond 5 in flight: SERVFAIL at once
        early = [dnslib.DNSRecord.parse(sock.recv(65535)) for _ in range(3)]
        assert {r.header.id for r in early} == {5, 6, 7}
        assert all(rcode(r) == "SERVFAIL" for r in early)
        # local names are answered while the 5 wait for the upstream
        assert len(addresses(ask(address, WEB))) == 3
        assert time.monotonic() - started < 0.5
        assert server.stats["inflight"] == 5
        late = [dnslib.DNSRecord.parse(sock.recv(65535)) for _ in range(5)]
        assert {r.header.id for r in late} == {0, 1, 2, 3, 4}
        assert all(rcode(r) == "SERVFAIL" for r in late)


# --------------------------------------------------------------------------- malformed input


def header(
    qid: int = 7, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def test_malformed_queries_get_formerr_or_notimp(make_server: MakeServer) -> None:
    _server, address = make_server()
    name = b"\x03web\x05sushi\x03app\x0alocalspace\x00"
    a_in = b"\x00\x01\x00\x01"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    cases = {
        "no question": header(),
        "compression loop": header() + b"\xc0\x0c" + a_in,
        "pointer ahead": header() + b"\x03web\xc0\x20" + a_in,
        "huge label length": header() + b"\x7fweb\x00" + a_in,
        "label past the end": header() + b"\x3fweb",
        "no type and class": header() + name,
        "name over 255 bytes": header() + b"\x3f" * 1 + (b"a" * 63 + b"\x3f") * 4 + b"\x00" + a_in,
        "two questions": header(qd=2) + name + a_in + name + a_in,
        "no questions": header(qd=0),
        "an answer in a query": header(an=1) + name + a_in,
        "trailing bytes": header() + name + a_in + b"junk",
        "additional not OPT": header(ar=1) + name + a_in + b"\x00\x00\x01\x00\x01",
        "OPT cut short": header(ar=1) + name + a_in + opt[:7],
        "two additional": header(ar=2) + name + a_in + opt + opt,
    }
    for case, packet in cases.items():
        reply = exchange_udp(address, packet, IN_SCOPE_A)
        assert reply[:2] == packet[:2], case
        assert reply[2] & 0x80 and reply[3] & 0x0F == 1, case  # a reply, FORMERR
        assert len(reply) <= len(packet), case  # never an amplifier
    update = header(flags=0x2800) + name + a_in  # opcode 5
    assert exchange_udp(address, update, IN_SCOPE_A)[3] & 0x0F == 4  # NOTIMP


def test_responses_and_headless_packets_are_never_answered(make_server: MakeServer) -> None:
    server, address = make_server()
    response = header(flags=0x8180) + b"\x03web\x05sushi\x03app\x0alocalspace\x00\x00\x01\x00\x01"
    for packet in (response, b"", b"\x12", header()[:11], header(flags=0x8000, qd=0)):
        assert silent_udp(address, packet, IN_SCOPE_A), packet
    assert server.stats["dropped"] == 5


def test_garbage_never_stops_the_server(make_server: MakeServer) -> None:
    """Hundreds of random and cut packets, over UDP and TCP, then the server still answers."""
    server, address = make_server()
    rng = random.Random(20240613)
    valid = query(WEB, edns=1232)
    packets = [valid[:cut] for cut in range(len(valid))]
    for _ in range(400):
        size = rng.choice((rng.randrange(0, 12), rng.randrange(12, 64), rng.randrange(64, 700)))
        packet = bytearray(rng.randbytes(size))
        if size >= 3 and rng.random() < 0.5:
            packet[2] &= 0x7F  # look like a query more often
        packets.append(bytes(packet))
    for _ in range(200):  # valid queries with a few bytes flipped
        packet = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        packets.append(bytes(packet))

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((IN_SCOPE_A, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i, packet in enumerate(packets):
            sock.sendto(packet, address)
            if i % 50 == 0:
                time.sleep(0.005)  # stay well within the socket buffers

    for _ in range(20):
        with tcp_connect(address, IN_SCOPE_A) as sock:
            for _ in range(rng.randrange(1, 4)):
                sock.sendall(frame(rng.choice(packets)))
            sock.sendall(rng.randbytes(rng.randrange(0, 40)))  # then cut framing
    with tcp_connect(address, IN_SCOPE_A) as sock:
        sock.sendall(b"\x00\x00")  # a zero length: the server hangs up
        assert sock.recv(10) == b""

    deadline = time.monotonic() + 5
    while server.stats["queries"] < len(packets) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats["queries"] >= len(packets)
    assert f"dynod-dns-udp-{address[0]}" in dns_threads()
    assert f"dynod-dns-tcp-{address[0]}" in dns_threads()
    assert len(addresses(ask(address, WEB))) == 3
    assert len(addresses(ask(address, WEB, tcp=True))) == 3


# ------------------------------------------------------------------------ listen and close


def test_a_taken_port_is_a_dynod_error(make_server: MakeServer) -> None:
    server, (address, port) = make_server()
    other = DnsServer([])
    try:
        with pytest.raises(DynodError) as caught:
            other.listen(address, port)
        text = str(caught.value)
        assert f"{address}:{port}" in text and "dnsmasq" in text and "dynod" in text
    finally:
        other.close()
    # and the failure cost the running server nothing
    assert len(addresses(ask((address, port), WEB))) == 3
    server.listen(address, port)  # listening again on the same address is a no-op


def test_unlisten_and_close_stop_everything(make_server: MakeServer) -> None:
    server, first = make_server()
    second_host = unique_address(77)
    second = (second_host, free_port(second_host))
    server.listen(*second)
    assert len(addresses(ask(second, WEB))) == 3
    with tcp_connect(first, IN_SCOPE_A) as idle:  # an open connection must not hold close()
        server.unlisten(second_host)
        assert not any(second_host in name for name in dns_threads())
        assert silent_udp(second, query(WEB), IN_SCOPE_A)
        with pytest.raises(ConnectionRefusedError):
            tcp_connect(second, IN_SCOPE_A)
        # the port is free again at once
        server.listen(*second)
        assert len(addresses(ask(second, WEB, tcp=True))) == 3
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 1.0
        assert idle.recv(10) == b""
    assert dns_threads() == []
    server.close()  # twice is fine


def test_stats(make_server: MakeServer) -> None:
    server, address = make_server()
    ask(address, WEB)
    ask(address, "nope.localspace", tcp=True)
    ask(address, "example.test")  # no upstream: SERVFAIL
    exchange_udp(address, header(), IN_SCOPE_A)  # FORMERR
    stats = server.stats
    assert stats["queries"] == 4 and stats["nxdomain"] == 1 and stats["formerr"] == 1
    assert stats["servfail"] == 1 and stats["forwarded"] == 0 and stats["dropped"] == 0


# ------------------------------------------------------------- shares: no tenant starves another


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_one_source_holding_tcp_connections_does_not_starve_another(
    make_server: MakeServer,
) -> None:
    """Issue 7 item 4: one dyno held every TCP slot (128) with idle connections, and TCP lookups
    from another space failed 20 of 20 times.  Now each source has its own share."""
    server, address = make_server(tcp_idle_timeout=30)
    hostile = "127.10.0.66"
    held: list[socket.socket] = []
    try:
        for _ in range(140):
            held.append(tcp_connect(address, hostile))
        # the hostile source keeps its share only: the rest of its connections are closed
        assert wait_until(lambda: server.stats["tcp_connections"] == 16), server.stats
        time.sleep(0.2)
        assert server.stats["tcp_connections"] == 16
        for source in ("127.10.0.7", NO_SCOPE):  # same space, other source; another network
            answers = [ask(address, WEB, tcp=True, source=source) for _ in range(20)]
            assert all(len(addresses(a)) == 3 for a in answers if source == "127.10.0.7")
            assert all(rcode(a) == "NXDOMAIN" for a in answers if source == NO_SCOPE)
    finally:
        for sock in held:
            sock.close()


def test_a_network_holding_tcp_connections_does_not_starve_another(
    make_server: MakeServer,
) -> None:
    """Many sources of one network (a space's dynos) take at most the network's share."""
    server, address = make_server(tcp_idle_timeout=30)
    held: list[socket.socket] = []
    try:
        for n in range(10):  # 10 sources x 16 > the network's share of 64
            held += [tcp_connect(address, f"127.10.1.{n + 1}") for _ in range(16)]
        assert wait_until(lambda: server.stats["tcp_connections"] == 64), server.stats
        time.sleep(0.2)
        assert server.stats["tcp_connections"] == 64
        for _ in range(20):
            assert rcode(ask(address, WEB, tcp=True, source=IN_SCOPE_B)) == "NXDOMAIN"
    finally:
        for sock in held:
            sock.close()


def flood(address: Address, source: str, count: int) -> socket.socket:
    """Send `count` queries for slow.test (which the upstream never answers) from `source`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for i in range(count):
        sock.sendto(query("slow.test", qid=i), address)
    return sock


def test_a_slow_forward_flood_from_one_source_does_not_servfail_another(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    """Issue 7 item 4: one dyno querying a slow domain filled the 1,000 queries in flight, and
    another space's lookups got SERVFAIL.  Now each source has its own share."""
    server, address = make_server([upstream.address], timeout=5.0)
    with flood(address, "127.10.0.66", 1000) as hostile:
        assert wait_until(lambda: server.stats["queries"] >= 1000), server.stats
        assert server.stats["inflight"] == 100  # its share; the other 900 got SERVFAIL at once
        hostile.settimeout(2)
        assert rcode(dnslib.DNSRecord.parse(hostile.recv(65535))) == "SERVFAIL"
        for source in ("127.10.0.7", NO_SCOPE):
            for _ in range(10):
                assert addresses(ask(address, "example.test", source=source)) == ["192.0.2.1"]


def test_a_slow_forward_flood_from_one_network_does_not_servfail_another(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    server, address = make_server([upstream.address], timeout=5.0)
    sockets = [flood(address, f"127.10.2.{n + 1}", 150) for n in range(6)]
    try:
        assert wait_until(lambda: server.stats["queries"] >= 900), server.stats
        assert server.stats["inflight"] == 400  # the network's share
        for _ in range(10):
            assert addresses(ask(address, "example.test", source=NO_SCOPE)) == ["192.0.2.1"]
    finally:
        for sock in sockets:
            sock.close()


def test_common_runtime_dynos_each_have_their_own_share(
    make_server: MakeServer, upstream: FakeUpstream
) -> None:
    """An adversarial try: 4 dynos of one Common Runtime app (askers in no space) held the
    whole TCP and forwarding share of "no space", starving every other app there. Each of
    them is a group of its own now."""
    server, address = make_server([upstream.address], timeout=5.0, tcp_idle_timeout=30)
    hostile = [f"127.20.9.{n + 1}" for n in range(8)]
    held = [tcp_connect(address, source) for source in hostile for _ in range(16)]
    floods = [flood(address, source, 100) for source in hostile]
    try:
        assert wait_until(lambda: server.stats["tcp_connections"] == 128), server.stats
        assert wait_until(lambda: server.stats["inflight"] == 800), server.stats
        for _ in range(10):
            assert addresses(ask(address, "example.test", source=NO_SCOPE)) == ["192.0.2.1"]
            assert rcode(ask(address, "nope.localspace", tcp=True, source=NO_SCOPE)) == "NXDOMAIN"
    finally:
        for sock in held + floods:
            sock.close()
