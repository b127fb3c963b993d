"""A sandbox's own /etc/hosts and /etc/hostname and the fstab file that binds them in
(netns/hosts.py): written with their modes, the binds before the mounts that could hide their
sources, none over a file the host lacks, removed by name, and all but the kept ones swept.
No root needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netns import fstab, hosts

MOUNTS = fstab.Private("dynod-abc", resolv="/s/resolv/br0.conf")
NAME = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def test_a_sandbox_gets_its_name_at_its_address_and_localhost(tmp_path: Path) -> None:
    files = hosts.Files(str(tmp_path / "hosts"))
    path = Path(files.write("d-a.web.1", NAME, "172.16.0.6", MOUNTS))
    written = tmp_path / "hosts" / "d-a.web.1.hosts"
    assert written.read_text().splitlines() == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"172.16.0.6\t{NAME}",
    ]
    assert written.stat().st_mode & 0o777 == 0o644  # read through /etc/hosts by its user
    named = tmp_path / "hosts" / "d-a.web.1.hostname"
    assert named.read_text() == f"{NAME}\n"
    assert named.stat().st_mode & 0o777 == 0o644
    assert path == tmp_path / "hosts" / "d-a.web.1.fstab"
    assert path.stat().st_mode & 0o777 == 0o600
    targets = [line.split(" ")[:2] for line in path.read_text().splitlines()]
    # right after resolv.conf's bind: before /tmp's tmpfs, which would hide a state dir there
    assert targets[1:4] == [
        ["/s/resolv/br0.conf", "/etc/resolv.conf"],
        [str(written), "/etc/hosts"],
        [str(named), "/etc/hostname"],
    ]
    assert [t for _, t in targets].index("/etc/hostname") < [t for _, t in targets].index("/tmp")
    whole = fstab.Private(
        "dynod-abc", resolv="/s/resolv/br0.conf", hosts=str(written), hostname=str(named)
    )
    assert path.read_text() == fstab.text(whole)


def test_a_host_without_the_files_gets_no_bind_over_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bind needs its target: without /etc/hosts (or /etc/hostname) `mount -a` would fail,
    and the dyno's start with it."""
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/etc/hosts" and real(p))
    mounts = fstab.Private("dynod-abc", hosts="/s/h/x.hosts", hostname="/s/h/x.hostname")
    targets = [line.split(" ")[1] for line in fstab.text(mounts).splitlines()]
    assert "/etc/hosts" not in targets and "/etc/hostname" in targets


def test_files_go_by_name_and_all_but_the_kept_are_swept(tmp_path: Path) -> None:
    directory = tmp_path / "hosts"
    files = hosts.Files(str(directory))
    for name in ("d-a.web.1", "d-a.web.2", "d-b.worker.1"):
        files.write(name, "h", "172.16.0.6", MOUNTS)
    (directory / "d-c.run.1.hosts.new").write_text("half written\n")
    assert files.names() == {"d-a.web.1", "d-a.web.2", "d-b.worker.1", "d-c.run.1"}
    files.remove("d-a.web.2")
    files.remove("d-a.web.2")  # gone already: nothing to do
    files.remove_all_but({"d-a.web.1"})
    assert sorted(os.listdir(directory)) == [
        "d-a.web.1.fstab",
        "d-a.web.1.hostname",
        "d-a.web.1.hosts",
    ]
    files.remove_all()
    assert not directory.exists()
    files.remove_all()  # and nothing there at all
    assert files.names() == set()
