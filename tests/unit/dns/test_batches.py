"""The UDP hot path's batches (dynod/dns/batch.py: recvmmsg/sendmmsg) and its prepared negative
answers (dynod/dns/zone.py remember_negative), over real sockets on 127.0.0.0/8: no root."""

from __future__ import annotations

import socket
import struct

import dnslib

from dynod.dns import batch
from dynod.dns.wire import parse_query
from dynod.dns.zone import MAX_NEGATIVE, remember_negative
from tests.unit.dns.test_server import (
    IN_SCOPE_A,
    WEB,
    MakeServer,
    ask,
    assert_negative,
    exchange_udp,
    query,
    rcode,
    unique_address,
)
from tests.unit.dns.test_server import make_server as make_server  # noqa: F401 - the fixture


def test_a_batch_takes_every_queued_datagram_and_answers_each_sender() -> None:
    address = unique_address(79)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((address, 0))
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
        try:
            for n, sender in enumerate(senders):
                sender.bind((f"127.10.9.{n + 1}", 0))
                sender.settimeout(2)
                sender.sendto(b"ping %d" % n + b"x" * n, server.getsockname())
            batched = batch.Batch(server, size=8)
            got: list[tuple[bytes, tuple[str, int]]] = []
            assert batched.receive() == 5  # loopback queues a datagram within sendto
            for i in range(5):
                got.append((batched.datagram(i), batched.sender(i)))
                source = batched.sources[4 * i + 1]
                assert source.to_bytes(4, "little") == socket.inet_aton(batched.sender(i)[0])
                assert batched.put(b"pong " + batched.datagram(i), i)
            assert batched.send() == []
            assert sorted(got) == sorted(
                (b"ping %d" % n + b"x" * n, s.getsockname()) for n, s in enumerate(senders)
            )
            for n, sender in enumerate(senders):
                assert sender.recvfrom(100) == (
                    b"pong ping %d" % n + b"x" * n,
                    server.getsockname(),
                )
            assert not batched.put(b"x" * (batch.SEND_SLOT + 1), 0)  # too big: the caller sends it
        finally:
            for sender in senders:
                sender.close()


def test_a_send_the_kernel_refuses_is_reported_and_the_rest_go() -> None:
    address = unique_address(79)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind((address, 0))
        client.bind((address, 0))
        client.settimeout(2)
        client.sendto(b"a", server.getsockname())
        client.sendto(b"b", server.getsockname())
        batched = batch.Batch(server, size=4)
        assert batched.receive() == 2  # loopback queues a datagram within sendto
        # The first reply goes to port 0, which no datagram may be sent to: EINVAL
        struct.pack_into("!H", batched.addresses, 2, 0)
        assert batched.put(b"lost", 0) and batched.put(b"sent", 1)
        errors = batched.send()
        assert len(errors) == 1 and isinstance(errors[0], OSError)
        assert client.recv(10) == b"sent"


def test_negative_answers_are_prepared_after_the_first_and_forgotten_on_a_change(
    make_server: MakeServer,
) -> None:
    server, address = make_server()
    zone = server._scopes["sushi-space"].zone
    for _ in range(3):  # the first parses, the next ones are prepared: the same answer
        assert_negative(ask(address, "nope.sushi.app.localspace"), "NXDOMAIN", "nxdomain")
        assert_negative(ask(address, "worker.sushi.app.localspace"), "NOERROR", "no data")
        assert_negative(ask(address, WEB, "AAAA"), "NOERROR", "AAAA")
    assert len(zone.negative) == 1  # known names (even with no address) were prepared already
    assert server.stats["nxdomain"] == 3  # prepared NXDOMAINs are counted too
    # The case comes back as asked, from the prepared answer too (0x20 resolvers check it)
    reply = dnslib.DNSRecord.parse(
        exchange_udp(address, query("NoPe.Sushi.app.localspace"), IN_SCOPE_A)
    )
    assert str(reply.q.qname) == "NoPe.Sushi.app.localspace." and rcode(reply) == "NXDOMAIN"
    # A dyno of that name registers: the next query finds it, nothing negative is left
    records = {"nope.sushi.app.localspace": ["10.1.0.50"], WEB: ["10.1.0.2"]}
    server.set_scope("sushi-space", "127.10.0.0/16", records)
    reply = ask(address, "nope.sushi.app.localspace")
    assert rcode(reply) == "NOERROR" and [str(rr.rdata) for rr in reply.rr] == ["10.1.0.50"]
    assert server._scopes["sushi-space"].zone.negative == {}


def test_only_plain_answers_with_nothing_to_rotate_are_remembered(make_server: MakeServer) -> None:
    server, address = make_server()
    zone = server._scopes["sushi-space"].zone
    ask(address, "nope.localspace", edns=1232)  # EDNS: an OPT record per asker, not kept
    # CD set: a rotating answer on the parsing path, not kept
    exchange_udp(address, query(WEB, flags=0x0110), IN_SCOPE_A)
    ask(address, "localspace", "NS")  # the apex's fixed answer: kept
    assert list(zone.negative) == [query("localspace", "NS")[2:]]
    # a type byte that lowercasing would change (0x41 is "A"): not kept, still answered
    odd = query("nope.localspace")[:-4] + struct.pack("!HH", 0x41, 1)
    assert rcode(dnslib.DNSRecord.parse(exchange_udp(address, odd, IN_SCOPE_A))) == "NXDOMAIN"
    assert len(zone.negative) == 1


def test_the_negative_answers_are_bounded(make_server: MakeServer) -> None:
    server, _address = make_server()
    zone = server._scopes["sushi-space"].zone
    for n in range(MAX_NEGATIVE + 10):
        data = query(f"n{n}.localspace")
        q = parse_query(data)
        assert q is not None
        remember_negative(zone, q, data[:2] + b"\x81\x83" + data[4:])
        assert len(zone.negative) <= MAX_NEGATIVE


def test_a_datagram_bigger_than_a_slot_is_cut_and_refused_and_the_batch_goes_on(
    make_server: MakeServer,
) -> None:
    _server, address = make_server()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((IN_SCOPE_A, 0))
        sock.settimeout(2)
        big = query(WEB) + b"\x00" * (2 * batch.RECEIVE_SLOT)  # bytes no count accounts for
        sock.sendto(big, address)
        sock.sendto(query("nope.localspace", qid=7), address)  # queued behind it
        first = dnslib.DNSRecord.parse(sock.recv(65535))
        second = dnslib.DNSRecord.parse(sock.recv(65535))
        assert rcode(first) == "FORMERR" and first.header.id == 0x1234
        assert rcode(second) == "NXDOMAIN" and second.header.id == 7
