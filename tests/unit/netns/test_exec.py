"""The argv wrappers (netns/exec.py): joining cgroups, and the sized namespaces of a dyno. No root
needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from netns import exec as netns_exec

MB = 1024 * 1024


def test_join_wrapper_writes_zero_then_becomes_the_program(tmp_path: Path) -> None:
    files = [str(tmp_path / "a.procs"), str(tmp_path / "b.procs")]
    argv = netns_exec.in_cgroups(files, ["/bin/sh", "-c", 'echo "ran $1"', "sh", "it"])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert done.stdout == "ran it\n"
    assert [Path(f).read_text() for f in files] == ["0\n", "0\n"]


def test_join_wrapper_stops_when_a_group_refuses(tmp_path: Path) -> None:
    argv = netns_exec.in_cgroups([str(tmp_path / "missing" / "cgroup.procs")], ["echo", "ran"])
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 126 and "ran" not in done.stdout


def test_isolate_arguments_carry_the_fstab_and_the_groups() -> None:
    groups = ["/g/cgroup.procs"]
    argv = netns_exec.sandboxed(["true"], "/app", "1:2", "/state/fstab/x.fstab", groups)
    assert argv[-6:] == ["/app", "1:2", "/state/fstab/x.fstab", "/g/cgroup.procs", "--", "true"]
    assert 'mount -a -T "$fstab"' in netns_exec.ISOLATE


def test_isolate_joins_its_groups_before_anything_else(tmp_path: Path) -> None:
    """ISOLATE (as its own first process would run it, here as anyone): each group's file gets
    the writer's 0; a group that refuses stops it before its mounts and its program."""
    files = [str(tmp_path / "a.procs"), str(tmp_path / "b.procs")]
    empty = tmp_path / "empty.fstab"
    empty.write_text("")
    root = Path("/").stat()
    keep = f"{root.st_dev}:{root.st_ino}"
    argv = netns_exec.sandboxed(["echo", "ran"], "/", keep, str(empty), files)
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr
    assert [Path(f).read_text() for f in files] == ["0\n", "0\n"]
    refused = [str(tmp_path / "missing" / "cgroup.procs")]
    argv = netns_exec.sandboxed(["echo", "ran"], "/", keep, str(tmp_path / "no.fstab"), refused)
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 126 and "ran" not in done.stdout
    assert "no.fstab" not in done.stderr  # stopped before mount -a
