"""The guard's record after a whole apply or a new shard (kernel/ruleset.py _record): taken only
from a reading that no one else's commit got into. The kernel's calls are replaced; no root."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dynod.kernel import ruleset
from netns.nftables import Snapshot

READ = Snapshot(structure=["table"], elements={"bridge ports": {"a"}})


def machine() -> Any:
    return SimpleNamespace(nftables=lambda: None, layout=SimpleNamespace(table="t"), expected=None)


def reading(monkeypatch: pytest.MonkeyPatch, found: Snapshot | None, after: int | None) -> None:
    monkeypatch.setattr(ruleset, "snapshot", lambda nft, tables: found)
    monkeypatch.setattr(ruleset, "_generation", lambda: after)


def test_our_commit_alone_is_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    m = machine()
    reading(monkeypatch, READ, after=8)
    assert ruleset._record(m, before=7, last=False) and m.expected == READ
    reading(monkeypatch, READ, after=1)  # past 2**32 - 1 the kernel skips 0
    assert ruleset._record(m, before=2**32 - 1, last=False)


def test_someone_elses_commit_in_between_leaves_it_unknown_but_on_the_last_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = machine()
    reading(monkeypatch, READ, after=9)
    assert not ruleset._record(m, before=7, last=False)
    assert m.expected == Snapshot() and m.expected != READ  # no table matches it: a restore
    assert ruleset._record(m, before=7, last=True) and m.expected == READ


def test_a_missing_table_is_never_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    m = machine()
    for after, last in ((9, True), (8, False), (None, True)):
        reading(monkeypatch, None, after=after)
        assert not ruleset._record(m, before=7, last=last)
        assert m.expected == Snapshot()  # compared with any reading: a difference, a restore


class ShardKernel:
    """Our sets as a new shard's commit and the readings see them: `add element FAMILY TABLE
    SET { a, b }` adds a and b; reading a whole table is refused (the test's point)."""

    def __init__(self, sets: dict[str, set[str]], generations: list[int]) -> None:
        self.sets = sets
        self.generations = generations  # what _generation() answers, in turn
        self.commits: list[str] = []
        self.read: list[str] = []

    def run(self, text: str, **_: Any) -> str:
        self.commits.append(text)
        for line in text.splitlines():
            words = line.split(None, 5)
            self.sets.setdefault(f"{words[2]} {words[4]}", set()).update(
                e.strip() for e in words[5].strip("{} ").split(",")
            )
        return ""

    def set_elements(self, nft: Any, family: str, table: str, name: str) -> set[str] | None:
        self.read.append(f"{family} {name}")
        found = self.sets.get(f"{family} {name}")
        return None if found is None else set(found)


def shard_machine(
    monkeypatch: pytest.MonkeyPatch, kernel: ShardKernel, record: Snapshot | None
) -> Any:
    def no_table(nft: Any, tables: Any) -> None:
        raise AssertionError("a new shard read our tables whole")

    monkeypatch.setattr(ruleset, "snapshot", no_table)
    monkeypatch.setattr(ruleset, "set_elements", kernel.set_elements)
    monkeypatch.setattr(ruleset, "_generation", lambda: kernel.generations.pop(0))
    monkeypatch.setattr(
        ruleset.firewall,
        "add_shard",
        lambda layout, net, bridge: (
            f"add element inet t bridges {{ {bridge} }}\n"
            f"add element inet t services {{ {bridge} . 53 }}\n"
        ),
    )
    net = SimpleNamespace(firewall=lambda: None)
    m = SimpleNamespace(nftables=lambda: kernel, layout=SimpleNamespace(table="t"))
    m.expected = record
    return m, net


def recorded() -> Snapshot:
    return Snapshot(
        structure=["table", "chain"],
        elements={
            "bridge ports": {"p1", "p2"},
            "inet bridges": {"b0"},
            "inet services": {"b0 . 53"},
        },
    )


def kernel_as(record: Snapshot, generations: list[int]) -> ShardKernel:
    return ShardKernel({k: set(v) for k, v in record.elements.items()}, generations)


def test_a_new_shard_reads_and_records_its_own_sets_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sets the shard's elements go to, before and after its commit, never the tables
    (every dyno's elements: 70-220 ms a reading at 4,000 dynos); the record's other sets and
    structure are as they were."""
    kernel = kernel_as(recorded(), generations=[7, 8])
    m, net = shard_machine(monkeypatch, kernel, recorded())
    ruleset.add_shard(m, net, "b1")
    assert len(kernel.commits) == 1
    assert sorted(kernel.read) == ["inet bridges"] * 2 + ["inet services"] * 2
    assert m.expected.elements == {
        "bridge ports": {"p1", "p2"},
        "inet bridges": {"b0", "b1"},
        "inet services": {"b0 . 53", "b1 . 53"},
    }
    assert m.expected.structure == ["table", "chain"]
    assert m.expected.elements == kernel.sets  # what the guard will compare: equal


def test_a_set_someone_changed_is_not_taken_into_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A set that differed from the record before the commit keeps the record's old view, so
    the guard still sees the change (and restores)."""
    kernel = kernel_as(recorded(), generations=[7, 8])
    kernel.sets["inet bridges"].add("theirs")
    m, net = shard_machine(monkeypatch, kernel, recorded())
    ruleset.add_shard(m, net, "b1")
    assert len(kernel.commits) == 1  # the shard's elements are in, whatever the record says
    assert m.expected == recorded()
    assert m.expected.elements != kernel.sets


def test_someone_elses_commit_or_a_missing_set_leaves_the_record_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = kernel_as(recorded(), generations=[7, 9])  # a commit besides ours
    m, net = shard_machine(monkeypatch, kernel, recorded())
    ruleset.add_shard(m, net, "b1")
    assert m.expected == Snapshot()  # no table matches it: a restore
    kernel = kernel_as(recorded(), generations=[7, 8])
    m, net = shard_machine(monkeypatch, kernel, recorded())
    set_elements = kernel.set_elements

    def gone_after_commit(nft: Any, family: str, table: str, name: str) -> set[str] | None:
        return (
            None
            if kernel.commits and name == "services"
            else set_elements(nft, family, table, name)
        )

    monkeypatch.setattr(ruleset, "set_elements", gone_after_commit)
    ruleset.add_shard(m, net, "b1")
    assert m.expected == Snapshot()


def test_a_shard_change_that_is_not_elements_alone_reads_the_tables_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line other than `add element` to our table (a rule, a set of its own) changes the
    structure too: the record is read whole again, as before."""
    kernel = kernel_as(recorded(), generations=[7, 8])
    m, net = shard_machine(monkeypatch, kernel, Snapshot(["table"], {"bridge ports": {"a"}}))
    monkeypatch.setattr(
        ruleset.firewall, "add_shard", lambda layout, net, bridge: "add rule inet t x accept\n"
    )
    whole: list[Any] = []
    monkeypatch.setattr(ruleset, "snapshot", lambda nft, tables: whole.append(tables) or READ)
    monkeypatch.setattr(kernel, "run", lambda text, **_: kernel.commits.append(text) or "")
    ruleset.add_shard(m, net, "b1")
    assert len(whole) == 2 and kernel.read == []  # intact(), then the record
    assert kernel.commits == ["add rule inet t x accept\n"] and m.expected == READ
