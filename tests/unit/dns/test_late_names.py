"""A dyno's start or stop in a big formation costs the DNS side the same whatever the
formation's size: no address packed, no table copied (zone.py: late names, patch_zone in
place); the formation's answer is prepared on its first query after the change, and is the one
a fresh build gives."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from dynod.dns.registry import Registry
from dynod.dns.server import NS_NAME, DnsServer
from dynod.dns.wire import A, parse_query
from dynod.dns.zone import (
    EAGER_ROTATIONS,
    EMPTY_ZONE,
    build_zone,
    encode_name,
    local_reply,
    patch_zone,
)
from dynod.state.store import App, Dyno
from tests.unit.dns.test_server import MakeServer, addresses, ask
from tests.unit.dns.test_server import make_server as make_server  # noqa: F401 - the fixture
from tests.unit.dns.test_zone import comparable

WEB = "web.sushi.app.localspace"


class OneApp:
    """The state as the registry reads it: one app of the space, discovery on."""

    def __init__(self) -> None:
        self.sushi = App("sushi", space="tokyo", dns_discovery=True)

    def app(self, name: str) -> App | None:
        return self.sushi if name == "sushi" else None

    def apps_in(self, space: str) -> list[App]:
        return [self.sushi]


def web(number: int) -> Dyno:
    return Dyno(
        id=number, app="sushi", type="web", number=number, state="up", slot=number,
        ip=f"10.1.{number // 60}.{4 * (number % 60) + 2}", port=5000, pid=None, pid_start=None,
        netns="", veth="", command="", cwd="", uid=0, gid=0, space="tokyo",
    )  # fmt: skip


def packed_by_ten_starts(size: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, bool]:
    """Addresses packed by the 10 starts after `size` dynos of one formation, and whether the
    zone's prepared table stayed the same object (not copied) through them."""
    server = DnsServer([("127.0.0.1", 9)])
    try:
        registry = Registry(OneApp(), server, lambda space: ("10.1.0.0/16", "10.1.0.1"))  # type: ignore[arg-type]
        for number in range(1, size + 1):
            registry.register(web(number))
        prepared = server._scopes["tokyo"].zone.prepared
        packed = 0
        real = socket.inet_pton

        def counted(*args: Any) -> bytes:
            nonlocal packed
            packed += 1
            return real(*args)

        monkeypatch.setattr(socket, "inet_pton", counted)
        for number in range(size + 1, size + 11):
            registry.register(web(number))
        monkeypatch.undo()
        return packed, server._scopes["tokyo"].zone.prepared is prepared
    finally:
        server.close()


def test_a_start_packs_as_many_addresses_in_a_formation_of_200_as_of_2000(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: each start packed its formation's whole list (2,000 vs 20,000 for 10 starts),
    and copied the space's prepared table."""
    small = packed_by_ten_starts(200, monkeypatch)
    big = packed_by_ten_starts(2000, monkeypatch)
    # each start: its address packed once by the registry (the formation's list is kept
    # packed), and its own dyno name's one address checked (before any change) and packed
    assert small == big == (30, True)


def test_a_late_name_is_prepared_on_its_first_query_as_a_build_would(
    make_server: MakeServer,
) -> None:
    server, address = make_server()
    many = [f"10.5.{i // 250}.{i % 250 + 1}" for i in range(EAGER_ROTATIONS + 50)]
    server.set_scope("sushi-space", "127.10.0.0/16", {"1.web.sushi.app.localspace": [many[0]]})
    for count in (EAGER_ROTATIONS + 1, EAGER_ROTATIONS + 50):
        server.update_scope("sushi-space", {WEB: many[:count]})
        zone = server._scopes["sushi-space"].zone
        assert encode_name(WEB) in zone.late  # not prepared yet
        first = addresses(ask(address, WEB))  # the slower path, which prepares it
        assert zone.late == set()
        second = addresses(ask(address, WEB))  # the prepared answer: one further
        assert first[1:] == second[:-1] and set(first) <= set(many[:count])
        served = {NS_NAME: ["127.10.0.1"], "1.web.sushi.app.localspace": [many[0]]}
        assert comparable(zone) == comparable(build_zone(served | {WEB: many[:count]}, EMPTY_ZONE))


def test_a_late_name_with_a_bad_address_answers_nothing_and_breaks_nothing() -> None:
    """Its addresses are checked when it is first asked (ValueError there), not at the change:
    the query fails (the listener counts it dropped), the other names answer."""
    zone = patch_zone(EMPTY_ZONE, {"1.web.sushi.app.localspace": ["10.1.0.6"]})
    bad = [f"10.5.0.{i}" for i in range(EAGER_ROTATIONS)] + ["10.5.0.300"]
    zone = patch_zone(zone, {WEB: bad})
    q = parse_query(
        b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + encode_name(WEB) + b"\x00\x01\x00\x01"
    )
    assert q is not None and q.qtype == A
    with pytest.raises(ValueError):
        local_reply(q, zone, 512)
    one = parse_query(
        b"\x00\x08\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + encode_name("1.web.sushi.app.localspace")
        + b"\x00\x01\x00\x01"
    )
    assert one is not None
    assert local_reply(one, zone, 512)[6:8] == b"\x00\x01"  # one answer
