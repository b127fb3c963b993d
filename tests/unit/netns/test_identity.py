"""netns/identity.py's choice of a user id, against a made-up host (its /proc, its systemd
lock directory). No root needed."""

from __future__ import annotations

import fcntl
import os
import zlib
from pathlib import Path

import pytest

from netns import identity

SIZE = identity.LAST - identity.FIRST + 1
START = identity.FIRST + zlib.crc32(b"dynod") % SIZE  # where the seed "dynod" starts


@pytest.fixture
def nobody_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "_named", lambda uid: False)


def test_the_seed_picks_where_the_search_starts_and_a_taken_or_named_id_is_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(identity, "_named", lambda uid: uid == START + 1)
    systemd = str(tmp_path)  # no system/ in it: systemd is not PID 1, no lock is taken
    assert identity.reserve_uid("dynod", "x", set(), systemd) == identity.Reserved(START)
    # taken by a process, then named in /etc/passwd or /etc/group: the next one
    assert identity.reserve_uid("dynod", "x", taken={START}, systemd=systemd).uid == START + 2
    assert identity.reserve_uid("other", "x", taken=set(), systemd=systemd).uid != START
    assert os.listdir(tmp_path) == []


def test_the_search_wraps_around_the_range_and_a_full_range_is_an_error(
    nobody_named: None, tmp_path: Path
) -> None:
    every = set(range(identity.FIRST, identity.LAST + 1))
    (tmp_path / "system").mkdir()
    old = os.umask(0o077)  # the daemon's (claim.py)
    try:
        found = identity.reserve_uid("dynod", "x", every - {identity.FIRST}, str(tmp_path))
    finally:
        os.umask(old)
    assert found.uid == identity.FIRST
    found.release()
    with pytest.raises(RuntimeError, match="61184 to 65519"):
        identity.reserve_uid("dynod", "x", taken=every, systemd=str(tmp_path))
    # the lock directory, made as systemd makes it whatever the umask, and left in place
    assert sorted(os.listdir(tmp_path)) == ["dynamic-uid", "system"]
    assert (tmp_path / "dynamic-uid").stat().st_mode & 0o777 == 0o755
    assert os.listdir(tmp_path / "dynamic-uid") == []


def test_an_id_whose_systemd_lock_is_held_is_skipped_and_ours_is_held_until_released(
    nobody_named: None, tmp_path: Path
) -> None:
    (tmp_path / "system").mkdir()  # systemd is PID 1
    locks = tmp_path / "dynamic-uid"
    locks.mkdir()
    held = os.open(locks / str(START), os.O_RDWR | os.O_CREAT, 0o600)  # a service's
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        ours = identity.reserve_uid("dynod", "dynod-router-x", set(), str(tmp_path))
        try:
            assert ours.uid == START + 1 and ours.lock_path == str(locks / str(START + 1))
            assert (locks / str(START + 1)).read_text() == "dynod-router-x\n"
            probe = os.open(locks / str(START + 1), os.O_RDWR)
            try:  # held: systemd's flock -n on it fails, so it picks another id
                with pytest.raises(BlockingIOError):
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)
        finally:
            ours.release()
        assert sorted(os.listdir(locks)) == [str(START)]  # its own lock went, not the dir
        ours.release()  # twice: nothing more
    finally:
        os.close(held)


def test_a_lock_file_without_a_holder_is_taken(nobody_named: None, tmp_path: Path) -> None:
    """Left by a holder that died (systemd's, or a daemon killed): free to take."""
    (tmp_path / "system").mkdir()
    locks = tmp_path / "dynamic-uid"
    locks.mkdir()
    (locks / str(START)).write_text("old-service\n")
    again = identity.reserve_uid("dynod", "x", taken=set(), systemd=str(tmp_path))
    try:
        assert again.uid == START and (locks / str(START)).read_text() == "x\n"
    finally:
        again.release()


def test_the_ids_of_running_processes_are_every_one_of_their_uid_line(tmp_path: Path) -> None:
    for pid, uids in (("1", "0\t0\t0\t0"), ("42", "1000\t61185\t1000\t1000")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "status").write_text(f"Name:\tx\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n")
    (tmp_path / "self").mkdir()  # not a process's number
    (tmp_path / "7").mkdir()  # exited: no status
    assert identity.running_uids(str(tmp_path)) == {0, 1000, 61185}
