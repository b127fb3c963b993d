"""netns/identity.py's choice of a user id, against a made-up host. No root needed."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from netns import identity


def test_the_seed_picks_where_the_search_starts_and_a_taken_or_named_id_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(identity, "_named", lambda uid: uid == start + 1)
    size = identity.LAST - identity.FIRST + 1
    start = identity.FIRST + zlib.crc32(b"dynod") % size
    assert identity.unused_uid("dynod", taken=set()) == start
    # taken by a process, then named in /etc/passwd or /etc/group: the next one
    assert identity.unused_uid("dynod", taken={start}) == start + 2
    assert identity.unused_uid("other", taken=set()) != start  # another prefix, another start


def test_the_search_wraps_around_the_range_and_a_full_range_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = set(range(identity.FIRST, identity.LAST + 1))
    monkeypatch.setattr(identity, "_named", lambda uid: False)
    assert identity.unused_uid("dynod", taken=every - {identity.FIRST}) == identity.FIRST
    with pytest.raises(RuntimeError, match="61184 to 65519"):
        identity.unused_uid("dynod", taken=every)


def test_the_ids_of_running_processes_are_every_one_of_their_uid_line(tmp_path: Path) -> None:
    for pid, uids in (("1", "0\t0\t0\t0"), ("42", "1000\t61185\t1000\t1000")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "status").write_text(f"Name:\tx\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n")
    (tmp_path / "self").mkdir()  # not a process's number
    (tmp_path / "7").mkdir()  # exited: no status
    assert identity.running_uids(str(tmp_path)) == {0, 1000, 61185}


def test_this_machine_has_a_free_id_that_is_nobodys() -> None:
    uid = identity.unused_uid("dynod-test")
    assert identity.FIRST <= uid <= identity.LAST
    assert uid not in identity.running_uids()
