"""A sandbox's own /etc/hosts and the fstab file that binds it in (netns/hosts.py): written
with their modes, the bind before the mounts that could hide its source, removed by name, and
all but the kept ones swept. No root needed."""

from __future__ import annotations

import os
from pathlib import Path

from netns import fstab, hosts

MOUNTS = fstab.Private("dynod-abc", resolv="/s/resolv/br0.conf")


def test_a_sandbox_gets_its_name_at_its_address_and_localhost(tmp_path: Path) -> None:
    files = hosts.Files(str(tmp_path / "hosts"))
    path = files.write("d-a.web.1", "7c9e6679-7425-40de-944b-e07fc1f90ae7", "172.16.0.6", MOUNTS)
    written = tmp_path / "hosts" / "d-a.web.1.hosts"
    assert written.read_text().splitlines() == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "172.16.0.6\t7c9e6679-7425-40de-944b-e07fc1f90ae7",
    ]
    assert written.stat().st_mode & 0o777 == 0o644  # read through /etc/hosts by its user
    assert Path(path) == tmp_path / "hosts" / "d-a.web.1.fstab"
    assert Path(path).stat().st_mode & 0o777 == 0o600
    targets = [line.split(" ")[:2] for line in Path(path).read_text().splitlines()]
    # right after resolv.conf's bind: before /tmp's tmpfs, which would hide a state dir there
    assert targets[1:3] == [
        ["/s/resolv/br0.conf", "/etc/resolv.conf"],
        [str(written), "/etc/hosts"],
    ]
    assert [t for _, t in targets].index("/etc/hosts") < [t for _, t in targets].index("/tmp")
    assert Path(path).read_text() == fstab.text(fstab.Private(
        "dynod-abc", resolv="/s/resolv/br0.conf", hosts=str(written)
    ))  # fmt: skip


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
    assert sorted(os.listdir(directory)) == ["d-a.web.1.fstab", "d-a.web.1.hosts"]
    files.remove_all()
    assert not directory.exists()
    files.remove_all()  # and nothing there at all
    assert files.names() == set()
