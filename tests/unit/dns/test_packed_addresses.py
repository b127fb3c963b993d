"""A formation's addresses go from the registry to the server packed (zone.PackedAddresses: one
bytes object, copied in one piece), not as a list of strings whose every element is touched on
each of the formation's starts and stops; the zone they make answers as the list would."""

from __future__ import annotations

import socket

import pytest

from dynod.dns.registry import Registry
from dynod.dns.server import DnsServer
from dynod.dns.zone import (
    EAGER_ROTATIONS,
    EMPTY_ZONE,
    PackedAddresses,
    Zone,
    build_zone,
    encode_name,
    patch_zone,
    prepare_late,
)
from tests.unit.dns.test_late_names import WEB, OneApp, web
from tests.unit.dns.test_zone import _prepared


def packed(*addresses: str) -> PackedAddresses:
    return PackedAddresses(b"".join(socket.inet_aton(a) for a in addresses))


def test_packed_addresses_read_as_the_addresses() -> None:
    many = packed("10.1.0.2", "10.1.0.6", "10.1.0.10")
    assert len(many) == 3
    assert list(many) == ["10.1.0.2", "10.1.0.6", "10.1.0.10"]
    assert many[0] == "10.1.0.2" and many[-1] == "10.1.0.10"
    assert many[1:] == ["10.1.0.6", "10.1.0.10"]
    assert "10.1.0.6" in many and "10.1.0.7" not in many
    with pytest.raises(IndexError):
        many[3]
    assert many == packed("10.1.0.2", "10.1.0.6", "10.1.0.10")
    assert many != packed("10.1.0.2", "10.1.0.6")
    assert many != ("10.1.0.2", "10.1.0.6", "10.1.0.10")  # another kind of source: rebuilt
    with pytest.raises(ValueError, match="4 bytes each"):
        PackedAddresses(b"\x0a\x01\x00")


def answers(zone: Zone) -> tuple[object, ...]:
    """What a zone answers with, its late names prepared first: every name's count, records
    and prepared answers, the prepared table and the children (not the sources, whose kind
    differs)."""
    for wire in list(zone.late):
        prepare_late(zone, wire)
    names = {
        wire: (name.explicit, name.count, name.records, _prepared(name.prepared))
        for wire, name in zone.names.items()
    }
    return names, _prepared(zone.prepared), zone.children


@pytest.mark.parametrize("size", [3, EAGER_ROTATIONS + 40])
def test_a_packed_formation_makes_the_zone_its_list_makes(size: int) -> None:
    """Small (prepared at once) and big (late), with an address twice (a dyno and the one
    replacing it), which is answered once as from a list."""
    listed = [f"10.1.{i // 60}.{4 * (i % 60) + 2}" for i in range(size)] + ["10.1.0.2"]
    one = {"1.web.sushi.app.localspace": ["10.1.0.2"]}
    from_list = patch_zone(patch_zone(EMPTY_ZONE, one), {WEB: listed})
    from_packed = patch_zone(patch_zone(EMPTY_ZONE, one), {WEB: packed(*listed)})
    assert (
        answers(from_packed)
        == answers(from_list)
        == answers(build_zone(one | {WEB: listed}, EMPTY_ZONE))
    )
    assert from_packed.names[encode_name(WEB)].count == size


def test_the_registry_sends_a_formation_packed_in_records_order() -> None:
    """Also after a stop from the middle, and a bad address is refused before anything
    changes."""
    server = DnsServer([("127.0.0.1", 9)])
    sent: list[dict[str, object]] = []
    update = server.update_scope

    def recorded(scope: str, changes: dict[str, object]) -> None:
        sent.append(dict(changes))
        update(scope, changes)  # type: ignore[arg-type]

    server.update_scope = recorded  # type: ignore[assignment, method-assign]
    try:
        registry = Registry(OneApp(), server, lambda space: ("10.1.0.0/16", "10.1.0.1"))  # type: ignore[arg-type]
        for number in (3, 1, 2, 5, 4):
            registry.register(web(number))
        registry.unregister(web(2))
        formation = sent[-1][WEB]
        assert isinstance(formation, PackedAddresses)
        assert list(formation) == [web(n).ip for n in (1, 3, 4, 5)]
        assert list(formation) == registry.records("tokyo")[WEB]
        before = len(sent)
        bad = web(6)
        bad.ip = "10.1.0.300"
        with pytest.raises(ValueError, match="not an IPv4 address"):
            registry.register(bad)
        assert len(sent) == before and registry.records("tokyo")[WEB] == list(formation)
        assert 6 not in registry._member
    finally:
        server.close()


def test_a_name_keeps_its_answers_between_a_packed_and_a_listed_source() -> None:
    """A publish (build_zone, listed) after the registry's patches (packed) keeps an unchanged
    formation's name and prepared answers, and so does a packed patch of a published name; a
    different order, or a bad listed address, is a change."""
    listed = [f"10.1.{i // 60}.{4 * (i % 60) + 2}" for i in range(EAGER_ROTATIONS + 6)]
    wire = encode_name(WEB)
    zone = patch_zone(EMPTY_ZONE, {WEB: packed(*listed)})
    name = zone.names[wire]
    assert build_zone({WEB: listed}, zone).names[wire] is name
    published = build_zone({WEB: listed}, EMPTY_ZONE)
    name = published.names[wire]
    assert patch_zone(published, {WEB: packed(*listed)}).names[wire] is name
    assert patch_zone(published, {WEB: packed(*reversed(listed))}).names[wire] is not name
    bad = patch_zone(EMPTY_ZONE, {WEB: [*listed[:-1], "10.1.0.300"]})
    assert patch_zone(bad, {WEB: packed(*listed)}).names[wire].source == packed(*listed)
