"""rules/formation.py: how `ps:scale` arguments read, and the per-app cap."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.rules import formation
from dynod.rules.formation import Change


def test_set_add_remove_and_size() -> None:
    assert formation.parse_changes(["web=2", "worker+1", "clock-3", "big=1:Standard-2X"]) == [
        Change("web", quantity=2),
        Change("worker", delta=1),
        Change("clock", delta=-3),
        Change("big", quantity=1, size="standard-2x"),
    ]
    assert formation.parse_change("web=0").apply(5) == 0
    assert formation.parse_change("web-1").apply(5) == 4


@pytest.mark.parametrize(
    "bad", ["web", "web=", "web=-1", "web=two", "=2", "web==2", "web+1:standard-2x", "w b=1"]
)
def test_unreadable_changes(bad: str) -> None:
    with pytest.raises(DynodError):
        formation.parse_change(bad)


@pytest.mark.parametrize(("bad", "says"), [("run=1", "one-off"), ("release=1", "release")])
def test_reserved_types(bad: str, says: str) -> None:
    with pytest.raises(DynodError, match=says):
        formation.parse_change(bad)


def test_a_type_given_twice_and_an_unknown_size() -> None:
    with pytest.raises(DynodError, match="scaled twice"):
        formation.parse_changes(["web=1", "web+1"])
    with pytest.raises(DynodError, match="unknown dyno size"):
        formation.parse_change("web=1:huge")


def test_apply_refuses_negative_counts_and_the_cap_as_a_whole() -> None:
    assert formation.apply({"web": 1}, [Change("web", delta=2), Change("worker", 1)]) == {
        "web": 3,
        "worker": 1,
    }
    with pytest.raises(DynodError, match="would have -1 dynos"):
        formation.apply({"web": 1}, [Change("web", delta=-2)])
    cap = formation.MAX_DYNOS_PER_APP
    assert formation.apply({}, [Change("web", cap)]) == {"web": cap}
    with pytest.raises(DynodError, match=f"at most {cap}"):
        formation.apply({"web": cap - 1}, [Change("worker", quantity=2)])
