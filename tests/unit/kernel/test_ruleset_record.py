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
