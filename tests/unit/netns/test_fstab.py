"""The sandbox's private mounts as an fstab file (netns/fstab.py): its lines, and the files
written once per content. No root needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netns import fstab

MB = 1024 * 1024


def fields(text: str) -> list[list[str]]:
    return [line.split(" ") for line in text.splitlines()]


def test_lines_carry_the_source_sizes_and_resolv_in_mount_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os.path, "isdir", lambda path: True)
    mounts = fstab.Private("dynod-abc", resolv="/s/resolv/br0.conf", tmpfs_size=512 * MB)
    lines = fields(fstab.text(mounts))
    assert [line[1] for line in lines] == [
        "/proc",
        "/etc/resolv.conf",
        "/tmp",
        "/dev/shm",
        "/var/tmp",
        "/run/lock",
        "/run/netns",
        "/sys",
    ]
    # its own pid namespace's, mounted by its first process (the host's "proc" is never taken)
    assert lines[0] == ["dynod-abc", "/proc", "proc", "nosuid,nodev,noexec", "0", "0"]
    assert lines[1] == ["/s/resolv/br0.conf", "/etc/resolv.conf", "none", "bind,ro", "0", "0"]
    for line in lines[2:5]:
        assert line == [
            "dynod-abc",
            line[1],
            "tmpfs",
            f"mode=1777,nosuid,nodev,size={512 * MB}",
            "0",
            "0",
        ]
    assert lines[5][3] == f"mode=1777,nosuid,nodev,noexec,size={fstab.LOCK_SIZE}"
    assert lines[6][3] == "mode=755,nosuid,nodev,noexec"
    assert lines[7] == ["dynod-abc", "/sys", "sysfs", "ro,nosuid,nodev,noexec", "0", "0"]
    # every line but the bind names the caller: `mount -a` never takes the host's for its own
    assert {line[0] for i, line in enumerate(lines) if i != 1} == {"dynod-abc"}


def test_unsized_without_resolv_and_without_the_hosts_lock_and_netns_dirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os.path, "isdir", lambda path: path not in ("/run/lock", "/run/netns"))
    lines = fields(fstab.text(fstab.Private("dynod-abc")))
    assert [line[1] for line in lines] == ["/proc", "/tmp", "/dev/shm", "/var/tmp", "/sys"]
    assert lines[1][3] == "mode=1777,nosuid,nodev"


def test_no_netns_line_where_a_template_covers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os.path, "isdir", lambda path: True)
    lines = fields(fstab.text(fstab.Private("dynod-abc", cover_netns=False)))
    assert "/run/netns" not in [line[1] for line in lines] and "/run/lock" in lines[4]


def test_a_path_with_blanks_or_backslashes_stays_one_field() -> None:
    escaped = fstab.escape("/a dir/tab\there\\x\nend")
    assert escaped == "/a\\040dir/tab\\011here\\134x\\012end"
    resolv = fstab.text(fstab.Private("s", resolv="/a b/r.conf")).splitlines()[1]
    assert resolv.startswith("/a\\040b/r.conf ") and len(resolv.split()) == 6


def test_files_are_written_once_per_content_and_again_when_gone(tmp_path: Path) -> None:
    files = fstab.Files(str(tmp_path / "fstab"))
    small = fstab.Private("dynod-abc", tmpfs_size=MB)
    first = files.path(small)
    assert Path(first).read_text() == fstab.text(small)
    assert os.stat(tmp_path / "fstab").st_mode & 0o777 == 0o700
    mtime = os.stat(first).st_mtime_ns
    assert files.path(small) == first and os.stat(first).st_mtime_ns == mtime
    other = files.path(fstab.Private("dynod-abc", tmpfs_size=2 * MB))
    assert other != first and sorted(os.listdir(tmp_path / "fstab")) == sorted(
        [os.path.basename(first), os.path.basename(other)]
    )
    os.unlink(first)
    assert files.path(small) == first and Path(first).read_text() == fstab.text(small)
    # a new daemon (a new Files) finds the same name for the same content
    assert fstab.Files(str(tmp_path / "fstab")).path(small) == first
    files.remove()
    assert not (tmp_path / "fstab").exists()
    files.remove()  # gone already: nothing to say
