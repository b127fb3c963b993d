"""patch_zone: a zone changed name by name is the zone build_zone makes of the changed records,
and its prepared negative answers are dropped for exactly the names a change touched."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from dynod.dns.wire import AAAA, IN, RECORD_LEN, A, parse_query
from dynod.dns.zone import (
    EAGER_ROTATIONS,
    EMPTY_ZONE,
    Zone,
    build_zone,
    encode_name,
    local_reply,
    patch_zone,
    remember_negative,
)

Records = dict[str, list[str]]


def comparable(zone: Zone) -> tuple[object, ...]:
    """Everything a zone answers with, without the turn counters (objects, not values)."""
    names = {
        wire: (name.source, name.explicit, name.count, name.records, _prepared(name.prepared))
        for wire, name in zone.names.items()
    }
    return names, _prepared(zone.prepared), zone.children


def _prepared(prepared: Mapping[bytes, tuple[bytes, Sequence[bytes], object]]) -> object:
    return {key: (head, list(sections)) for key, (head, sections, _turn) in prepared.items()}


def fresh(records: Records) -> Zone:
    return build_zone(records, EMPTY_ZONE)


def apply(records: Records, changes: Mapping[str, list[str] | None]) -> Records:
    result = dict(records)
    for name, addresses in changes.items():
        if addresses is None:
            result.pop(name, None)
        else:
            result[name] = addresses
    return result


def test_one_dyno_at_a_time_equals_a_fresh_build() -> None:
    records: Records = {"sushi.herokuapp.localspace": ["10.1.0.1"]}
    zone = fresh(records)
    steps: list[dict[str, list[str] | None]] = [
        {"web.sushi.app.localspace": ["10.1.0.6"], "1.web.sushi.app.localspace": ["10.1.0.6"]},
        {
            "web.sushi.app.localspace": ["10.1.0.6", "10.1.0.10"],
            "2.web.sushi.app.localspace": ["10.1.0.10"],
        },
        {"web.sushi.app.localspace": ["10.1.0.10"], "1.web.sushi.app.localspace": None},
        {"web.sushi.app.localspace": None, "2.web.sushi.app.localspace": None},
        {"sushi.herokuapp.localspace": None},
    ]
    for changes in steps:
        records = apply(records, changes)
        zone = patch_zone(zone, changes)
        assert comparable(zone) == comparable(fresh(records))
    assert zone.names == {} and zone.prepared == {} and zone.children == {}


def test_empty_non_terminals_come_and_go_with_the_names_below() -> None:
    zone = patch_zone(EMPTY_ZONE, {"1.web.sushi.app.localspace": ["10.1.0.6"]})
    between = [encode_name(n) for n in ("web.sushi.app.localspace", "sushi.app.localspace")]
    between.append(encode_name("app.localspace"))
    assert all(not zone.names[wire].explicit and zone.names[wire].count == 0 for wire in between)
    # An empty non-terminal given records becomes a name; losing them, empty again.
    zone = patch_zone(zone, {"web.sushi.app.localspace": ["10.1.0.6"]})
    assert zone.names[between[0]].explicit
    zone = patch_zone(zone, {"web.sushi.app.localspace": None})
    assert not zone.names[between[0]].explicit
    assert comparable(zone) == comparable(fresh({"1.web.sushi.app.localspace": ["10.1.0.6"]}))
    # An explicit name with no addresses stays when the last name below it goes.
    zone = patch_zone(zone, {"sushi.app.localspace": []})
    zone = patch_zone(zone, {"1.web.sushi.app.localspace": None})
    assert comparable(zone) == comparable(fresh({"sushi.app.localspace": []}))
    # Removing a name that is not among the records changes nothing.
    assert comparable(patch_zone(zone, {"app.localspace": None, "x.localspace": None})) == (
        comparable(zone)
    )


def test_random_changes_equal_a_fresh_build() -> None:
    rng = random.Random(11)
    labels = ["web", "worker", "1", "2", "3", "sushi", "tuna"]
    records: Records = {}
    zone = EMPTY_ZONE
    for _ in range(300):
        changes: dict[str, list[str] | None] = {}
        for _ in range(rng.randint(1, 4)):
            depth = rng.randint(1, 4)
            name = ".".join(rng.choice(labels) for _ in range(depth)) + ".app.localspace"
            if rng.random() < 0.4:
                changes[name] = None
            else:
                count = rng.randint(0, 3)
                changes[name] = [f"10.{rng.randint(0, 2)}.0.{i + 1}" for i in range(count)]
        records = apply(records, changes)
        zone = patch_zone(zone, changes)
        assert comparable(zone) == comparable(fresh(records))


def test_a_bad_change_changes_nothing() -> None:
    zone = fresh({"web.sushi.app.localspace": ["10.1.0.6"]})
    before = comparable(zone)
    with pytest.raises(ValueError):
        patch_zone(zone, {"2.web.sushi.app.localspace": ["10.1.0.7"], "x.example.com": ["1.2.3.4"]})
    with pytest.raises(ValueError):
        patch_zone(zone, {"1.web.sushi.app.localspace": ["not-an-address"]})
    assert comparable(zone) == before


def test_the_turn_of_a_changed_name_goes_on() -> None:
    zone = fresh({"web.sushi.app.localspace": ["10.1.0.6", "10.1.0.10"]})
    wire = encode_name("web.sushi.app.localspace")
    turn = zone.names[wire].turn
    zone = patch_zone(zone, {"web.sushi.app.localspace": ["10.1.0.6", "10.1.0.10", "10.1.0.14"]})
    assert zone.names[wire].turn is turn


def _query(name: str, qtype: int, ident: int = 7) -> bytes:
    # flags: RD and CD set (not one of the prepared combinations), one question
    return (
        ident.to_bytes(2, "big")
        + b"\x01\x10\x00\x01\x00\x00\x00\x00\x00\x00"
        + encode_name(name)
        + qtype.to_bytes(2, "big")
        + IN.to_bytes(2, "big")
    )


def _remember(zone: Zone, name: str, qtype: int) -> bytes:
    data = _query(name, qtype)
    q = parse_query(data)
    reply = local_reply(q, zone, 512)
    remember_negative(zone, q, reply)
    return data[2:].lower()


def test_negative_answers_of_touched_names_are_dropped_and_the_others_kept() -> None:
    zone = fresh({"web.sushi.app.localspace": ["10.1.0.6"]})
    unknown = _remember(zone, "1.web.sushi.app.localspace", A)  # NXDOMAIN
    other = _remember(zone, "2.web.sushi.app.localspace", A)  # NXDOMAIN, stays so
    no_data = _remember(zone, "web.sushi.app.localspace", AAAA)  # a name, no AAAA
    assert {unknown, other, no_data} <= zone.negative.keys()
    # Dyno 1 comes: its NXDOMAIN must go (it now has an address); the others stay.
    zone = patch_zone(zone, {"1.web.sushi.app.localspace": ["10.1.0.6"]})
    assert unknown not in zone.negative
    assert {other, no_data} <= zone.negative.keys()
    # The formation goes: its no-data answer must go too (it now is an empty non-terminal of
    # 1.web, whose answer is prepared), and the unrelated NXDOMAIN stays.
    zone = patch_zone(zone, {"web.sushi.app.localspace": None})
    assert no_data not in zone.negative and other in zone.negative
    # A name that goes with its empty non-terminals: the negative answers of those go too.
    ent = _remember(zone, "sushi.app.localspace", A)  # CD flag: not prepared, so remembered
    assert ent in zone.negative
    zone = patch_zone(zone, {"1.web.sushi.app.localspace": None})
    assert ent not in zone.negative and other in zone.negative


def test_a_build_starts_with_no_negative_answers() -> None:
    zone = fresh({"web.sushi.app.localspace": ["10.1.0.6"]})
    _remember(zone, "1.web.sushi.app.localspace", A)
    assert build_zone({"web.sushi.app.localspace": ["10.1.0.7"]}, zone).negative == {}


def test_a_big_name_rotates_as_a_small_one_does() -> None:
    """Above EAGER_ROTATIONS addresses the rotations are cut when asked: rotation k is the
    records from the k-th address on, as many as fit in 512 bytes, wrapping around."""
    addresses = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(EAGER_ROTATIONS + 36)]
    name = fresh({"web.sushi.app.localspace": addresses}).names[
        encode_name("web.sushi.app.localspace")
    ]
    _head, sections, _turn = next(iter(name.prepared.values()))
    assert len(sections) == len(addresses)
    fit = len(sections[0]) // RECORD_LEN
    assert 0 < fit < len(addresses)
    for k in (0, 1, len(addresses) - 1):
        got = [
            sections[k][i * RECORD_LEN + RECORD_LEN - 4 : (i + 1) * RECORD_LEN] for i in range(fit)
        ]
        want = [addresses[(k + i) % len(addresses)] for i in range(fit)]
        assert [".".join(map(str, packed)) for packed in got] == want
    assert list(sections) == [sections[k] for k in range(len(addresses))]
    with pytest.raises(IndexError):
        sections[len(addresses)]
