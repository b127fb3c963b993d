"""The firewall guard's ledger (control/guard.py): when the slow poll may skip reading the
tables. No root needed."""

from __future__ import annotations

import threading

from dynod.control.guard import CommitLedger
from netns.nfevents import UNKNOWN, Commit


def ours(generation: int | None) -> Commit:
    return Commit(threading.get_native_id(), "dynod", generation)


def theirs(generation: int | None) -> Commit:
    return Commit(2**31 - 1, "nft", generation)


def checked_at(generation: int) -> CommitLedger:
    ledger = CommitLedger()
    assert ledger.take() == []
    ledger.checked(generation, right=True)
    return ledger


def test_nothing_is_skipped_before_a_first_check_even_after_our_own_commits() -> None:
    ledger = CommitLedger()
    assert not ledger.saw([ours(3), ours(4)])  # no baseline: who knows what came before
    assert not ledger.unchanged(4)


def test_after_a_check_our_own_commits_keep_the_tables_known() -> None:
    ledger = checked_at(5)
    assert ledger.unchanged(5) and not ledger.unchanged(6)  # a commit it did not see
    assert not ledger.saw([ours(6), ours(7)])
    assert ledger.unchanged(7)


def test_someone_elses_commit_or_lost_events_call_for_a_check() -> None:
    for foreign in (theirs(6), Commit(UNKNOWN)):
        ledger = checked_at(5)
        assert ledger.saw([ours(6), foreign, ours(8)])
        assert not ledger.unchanged(8)
        assert ledger.take() == [foreign]
        ledger.checked(8, right=True)
        assert ledger.unchanged(8)


def test_our_commits_during_a_check_count_and_theirs_do_not() -> None:
    ledger = checked_at(5)
    ledger.saw([theirs(6)])
    ledger.take()  # a check starts after asking: generation 6
    ledger.saw([ours(7), ours(8)])  # starts go on meanwhile
    ledger.checked(6, right=True)
    assert ledger.unchanged(8)
    ledger.take()
    ledger.saw([ours(9), theirs(10)])
    ledger.checked(8, right=True)
    assert not ledger.unchanged(10) and ledger.foreign == [theirs(10)]


def test_a_failed_check_or_a_commit_without_its_generation_leaves_them_unknown() -> None:
    ledger = checked_at(5)
    ledger.take()
    ledger.checked(5, right=False)
    assert not ledger.unchanged(5)
    ledger = checked_at(5)
    ledger.saw([ours(None)])
    assert not ledger.unchanged(5) and not ledger.unchanged(6)
    ledger = CommitLedger()
    ledger.take()
    ledger.checked(None, right=True)  # the generation could not be asked for
    assert not ledger.unchanged(0)


def test_commits_that_came_during_a_check_are_answered_by_its_restore() -> None:
    ledger = checked_at(5)
    ledger.saw([theirs(6)])
    assert ledger.take() == [theirs(6)]
    ledger.saw([theirs(7)])  # came while the tables were read: the restore answers it too
    assert ledger.more() == [theirs(7)]
    ledger.saw([ours(8)])  # the restore
    ledger.checked(7, right=True)
    assert ledger.unchanged(8)


def test_a_start_between_the_asking_and_the_reading_still_counts_as_unchanged() -> None:
    ledger = checked_at(2**32 - 1)
    ledger.saw([ours(1)])  # the kernel skips 0 when it wraps
    assert ledger.unchanged(2**32 - 1) and ledger.unchanged(1)
    assert not ledger.unchanged(2)  # a commit not read yet


def test_where_pids_cannot_be_told_apart_every_poll_reads_the_tables() -> None:
    ledger = CommitLedger(trusted=False)
    ledger.take()
    ledger.checked(5, right=True)
    assert not ledger.unchanged(5)
