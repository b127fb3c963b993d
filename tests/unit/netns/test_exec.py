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


def test_isolate_arguments_carry_the_fstab() -> None:
    argv = netns_exec.own_namespaces(["true"], "/app", "1:2", "/state/fstab/x.fstab")
    assert argv[-4:] == ["/app", "1:2", "/state/fstab/x.fstab", "true"]
    assert 'mount -a -T "$fstab"' in netns_exec.ISOLATE
