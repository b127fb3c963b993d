"""The cgroup plumbing (netns/cgroup.py) against fake cgroupfs trees, v2 and v1. No root needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynod.rules import sizes
from netns import cgroup

MB = 1024 * 1024


# ---------------------------------------------------------------- fake cgroupfs trees
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    """A host with only cgroup v2 (Debian 12): the daemon in system.slice/dynod.service."""
    base = tmp / "cg" / "system.slice" / "dynod.service"
    _write(base / "cgroup.controllers", controllers + "\n")
    _write(base / "cgroup.subtree_control", "\n")
    _write(base / "cgroup.procs", "")
    _write(tmp / "self-cgroup", "0::/system.slice/dynod.service\n")
    _write(
        tmp / "mountinfo",
        "22 1 0:20 / /proc rw - proc proc rw\n"
        f"29 23 0:26 / {tmp / 'cg'} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    )
    return base


def _v1(tmp: Path, with_unified: bool = True) -> dict[str, Path]:
    """This host's layout: v1 hierarchies (cpu with cpuacct) and an empty unified tree."""
    lines = ["22 1 0:20 / /proc rw - proc proc rw"]
    own = ["4:memory:/process_api/abc", "8:pids:/", "1:cpu,cpuacct:/"]
    points = {}
    for i, (options, name) in enumerate(
        [("memory", "memory"), ("pids", "pids"), ("cpu,cpuacct", "cpu,cpuacct")]
    ):
        point = tmp / "cg" / name
        point.mkdir(parents=True)
        lines.append(f"{30 + i} 23 0:{30 + i} / {point} rw - cgroup cgroup rw,{options}")
        points[name] = point
    if with_unified:
        _write(tmp / "cg" / "unified" / "cgroup.controllers", "\n")
        lines.append(f"40 23 0:40 / {tmp / 'cg' / 'unified'} rw - cgroup2 cgroup2 rw")
        own.append("0::/")
    (points["memory"] / "process_api" / "abc").mkdir(parents=True)
    _write(tmp / "mountinfo", "\n".join(lines) + "\n")
    _write(tmp / "self-cgroup", "\n".join(own) + "\n")
    return points


def _discover(tmp: Path, leaf: str = "") -> cgroup.Tree:
    return cgroup.discover(leaf, str(tmp / "self-cgroup"), str(tmp / "mountinfo"))


def test_v2_discover_prepare_create_and_usage(tmp_path: Path) -> None:
    base = _v2(tmp_path)
    tree = _discover(tmp_path)
    assert tree.version == 2
    assert {b for _, b in tree.bases} == {str(base)}
    cgroup.prepare(tree, "dynod.daemon")
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    _write(base / "d-a.web.1" / "memory.swap.max", "max\n")  # the kernel makes it on mkdir
    procs = cgroup.create(tree, "d-a.web.1", sizes.SIZES["standard-2x"].limits)
    group = base / "d-a.web.1"
    assert procs == [str(group / "cgroup.procs")]
    assert (group / "memory.max").read_text() == str(2048 * MB)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "pids.max").read_text() == "512"
    assert (group / "cpu.weight").read_text() == "200"
    _write(group / "memory.stat", "anon 300\nfile 5000\nshmem 20\nkernel 7\n")
    _write(group / "memory.swap.current", "4\n")
    _write(group / "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert cgroup.usage(tree, "d-a.web.1") == cgroup.Usage(memory=324, oom_kills=2)
    # a sample's question, "over the quota?": the page counter first, memory.stat only if over
    _write(group / "memory.current", "5400\n")  # the page cache too
    assert cgroup.usage(tree, "d-a.web.1", above=6000) == cgroup.Usage(5404, oom_kills=2)
    assert cgroup.usage(tree, "d-a.web.1", above=5403) == cgroup.Usage(324, oom_kills=2)
    assert cgroup.names(tree, "d-") == {"d-a.web.1"}
    assert cgroup.names(tree, "e-") == set()


def test_v2_release_undoes_prepare(tmp_path: Path) -> None:
    base = _v2(tmp_path)
    tree = _discover(tmp_path)
    (base / "dynod.daemon").mkdir()  # where prepare() moved the daemon (EBUSY on a real host)
    cgroup.release(tree, "dynod.daemon")
    assert (base / "cgroup.subtree_control").read_text() == "-memory -pids -cpu"
    assert (base / "cgroup.procs").read_text() == str(os.getpid())
    assert not (base / "dynod.daemon").exists()


def test_v2_a_daemon_already_in_its_leaf_has_the_parent_as_its_cgroup(tmp_path: Path) -> None:
    base = _v2(tmp_path)
    # restarted after SIGKILL into the leaf the last one made (or put there by systemd's
    # DelegateSubgroup=): the dynos' groups are the leaf's siblings
    _write(base / "dynod.daemon" / "cgroup.controllers", "cpu memory pids\n")
    _write(tmp_path / "self-cgroup", "0::/system.slice/dynod.service/dynod.daemon\n")
    assert _discover(tmp_path, "dynod.daemon").bases == tuple(
        (c, str(base)) for c in cgroup.CONTROLLERS
    )
    other = _discover(tmp_path, "other.daemon")
    assert other.base("memory") == str(base / "dynod.daemon")


def test_v2_already_delegated_is_left_alone(tmp_path: Path) -> None:
    base = _v2(tmp_path)
    _write(base / "cgroup.subtree_control", "cpu memory pids\n")
    cgroup.prepare(_discover(tmp_path), "dynod.daemon")
    assert (base / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert not (base / "dynod.daemon").exists()


def test_v2_without_the_controllers_falls_back_or_refuses(tmp_path: Path) -> None:
    _v2(tmp_path, controllers="cpuset io")
    with pytest.raises(cgroup.Unavailable) as caught:
        _discover(tmp_path)
    assert "memory" in caught.value.problem and "Delegate=yes" in caught.value.fix


def test_v1_hybrid_host(tmp_path: Path) -> None:
    points = _v1(tmp_path)
    tree = _discover(tmp_path)
    assert tree.version == 1
    assert tree.base("memory") == str(points["memory"] / "process_api" / "abc")
    assert tree.base("pids") == str(points["pids"])
    assert tree.base("cpu") == str(points["cpu,cpuacct"])
    cgroup.prepare(tree, "dynod.daemon")  # nothing to do on v1
    memory = points["memory"] / "process_api" / "abc" / "d-a.web.1"
    _write(memory / "memory.memsw.limit_in_bytes", "max")
    procs = cgroup.create(tree, "d-a.web.1", sizes.SIZES["standard-1x"].limits)
    assert sorted(procs) == sorted(  # a thread joins by `tasks`: no threadgroup lock
        str(p / "tasks")
        for p in (memory, points["pids"] / "d-a.web.1", points["cpu,cpuacct"] / "d-a.web.1")
    )
    assert (memory / "memory.limit_in_bytes").read_text() == str(1024 * MB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(1024 * MB)
    assert (points["pids"] / "d-a.web.1" / "pids.max").read_text() == "256"
    assert (points["cpu,cpuacct"] / "d-a.web.1" / "cpu.shares").read_text() == "1024"
    _write(memory / "memory.stat", "cache 900\nrss 1\ntotal_cache 900\ntotal_rss 100\n")
    _write(memory / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cgroup.usage(tree, "d-a.web.1") == cgroup.Usage(memory=100, oom_kills=1)
    # with swap accounting the counter with swap (memsw), without it the memory counter alone
    _write(memory / "memory.usage_in_bytes", "1000\n")
    _write(memory / "memory.memsw.usage_in_bytes", "1200\n")
    assert cgroup.usage(tree, "d-a.web.1", above=1200) == cgroup.Usage(1200, oom_kills=1)
    assert cgroup.usage(tree, "d-a.web.1", above=1199) == cgroup.Usage(100, oom_kills=1)
    (memory / "memory.memsw.usage_in_bytes").unlink()
    assert cgroup.usage(tree, "d-a.web.1", above=1000) == cgroup.Usage(1000, oom_kills=1)
    (memory / "memory.usage_in_bytes").unlink()
    (memory / "memory.oom_control").unlink()
    with pytest.raises(FileNotFoundError):  # a group gone meanwhile: "no group" to the caller
        cgroup.usage(tree, "d-a.web.1", above=1000)


def test_v1_missing_pids_is_unavailable(tmp_path: Path) -> None:
    points = _v1(tmp_path)
    mountinfo = (tmp_path / "mountinfo").read_text()
    (tmp_path / "mountinfo").write_text(
        "\n".join(line for line in mountinfo.splitlines() if str(points["pids"]) not in line)
    )
    with pytest.raises(cgroup.Unavailable) as caught:
        _discover(tmp_path)
    assert "pids" in caught.value.problem


def test_remove_tolerates_a_missing_group(tmp_path: Path) -> None:
    _v1(tmp_path)
    tree = _discover(tmp_path)
    cgroup.remove(tree, "never-made")  # nothing there: nothing to do
    for directory in tree.directories("empty"):
        os.makedirs(directory)
    cgroup.remove(tree, "empty")
    assert cgroup.names(tree, "empty") == set()
