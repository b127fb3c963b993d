"""Dyno sizes without root: the table, parsing, log lines, the cgroup plumbing against fake
cgroupfs trees (v2 and v1), the join wrapper, and the state's migration to sizes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from dynod.errors import DynodError
from dynod.rules import sizes
from dynod.state.store import SCHEMA, State
from netns import cgroup
from netns import exec as netns_exec

MB = 1024 * 1024


# ---------------------------------------------------------------- the table
@pytest.mark.parametrize(
    ("name", "quota", "hard", "tasks", "weight"),
    [
        ("eco", 512, 1024, 256, 100),
        ("basic", 512, 1024, 256, 100),
        ("standard-1x", 512, 1024, 256, 100),
        ("standard-2x", 1024, 2048, 512, 200),
        ("performance-m", 2560, 5120, 16384, 1200),
        ("performance-l", 14336, 28672, 32768, 5000),
        ("performance-l-ram", 30720, 36864, 16384, 2400),
        ("performance-xl", 63488, 76185, 32768, 5000),
        ("performance-2xl", 129024, 154828, 65536, 10000),
        ("private-s", 1024, 1024, 512, 1200),
        ("private-m", 2560, 2560, 16384, 1200),
        ("shield-l", 14336, 14336, 32768, 5000),
        ("private-2xl", 129024, 129024, 65536, 10000),
    ],
)
def test_heroku_table(name: str, quota: int, hard: int, tasks: int, weight: int) -> None:
    size = sizes.SIZES[name]
    assert (size.quota_mb, size.hard_mb, size.tasks, size.cpu_weight) == (
        quota,
        hard,
        tasks,
        weight,
    )
    assert size.limits == cgroup.Limits(hard * MB, tasks, weight)
    assert size.tmpfs_bytes == quota * MB


def test_hard_limits_match_herokus_rounded_figures() -> None:
    # "Dyno Memory Behavior": 36 GB, 74 GB and 151 GB for the 1.2-times sizes
    for name, gb in (("performance-l-ram", 36), ("performance-xl", 74), ("performance-2xl", 151)):
        assert round(sizes.SIZES[name].hard_mb / 1024) == gb


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("standard-1x", "standard-1x"),
        ("Standard-2X", "standard-2x"),
        (" performance-m ", "performance-m"),
        ("1X", "standard-1x"),
        ("2x", "standard-2x"),
        ("hobby", "basic"),
        ("free", "eco"),
    ],
)
def test_parse(given: str, expected: str) -> None:
    assert sizes.parse(given).name == expected


@pytest.mark.parametrize("given", ["huge", "standard-3x", "", "  ", 2, None, ["eco"]])
def test_parse_refuses(given: object) -> None:
    with pytest.raises(DynodError) as caught:
        sizes.parse(given)
    assert caught.value.fix


def test_choose() -> None:
    assert sizes.choose(None, None) == sizes.DEFAULT == "standard-1x"
    assert sizes.choose("", None) == "standard-1x"
    assert sizes.choose("Performance-M", None) == "performance-m"
    assert sizes.choose(None, "no memory controller") == ""  # runs, without limits
    with pytest.raises(DynodError) as caught:
        sizes.choose("eco", "no memory controller")
    assert "no memory controller" in str(caught.value)
    with pytest.raises(DynodError):
        sizes.choose("nope", None)


def test_log_lines() -> None:
    size = sizes.SIZES["standard-1x"]
    assert sizes.running_line(size, 666 * MB) == "Process running mem=666M(130.1%)"
    assert sizes.running_line(size, 1024 * MB) == "Process running mem=1024M(200.0%)"
    assert sizes.running_line(sizes.SIZES["standard-2x"], 512 * MB + 1) == (
        "Process running mem=512M(50.0%)"
    )
    assert sizes.R14 == "Error R14 (Memory quota exceeded)"
    assert sizes.R15 == "Error R15 (Memory quota vastly exceeded)"


def test_ps_memory_cell() -> None:
    from dynod.cli.main import _memory

    assert _memory({"memory_mb": 123.7, "memory_quota_mb": 512}) == "123M/512M"
    assert _memory({"memory_mb": None, "memory_quota_mb": None}) == "-"
    assert _memory({}) == "-"  # a daemon from before sizes


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
    assert sorted(procs) == sorted(
        str(p / "cgroup.procs")
        for p in (memory, points["pids"] / "d-a.web.1", points["cpu,cpuacct"] / "d-a.web.1")
    )
    assert (memory / "memory.limit_in_bytes").read_text() == str(1024 * MB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(1024 * MB)
    assert (points["pids"] / "d-a.web.1" / "pids.max").read_text() == "256"
    assert (points["cpu,cpuacct"] / "d-a.web.1" / "cpu.shares").read_text() == "1024"
    _write(memory / "memory.stat", "cache 900\nrss 1\ntotal_cache 900\ntotal_rss 100\n")
    _write(memory / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cgroup.usage(tree, "d-a.web.1") == cgroup.Usage(memory=100, oom_kills=1)


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


# ---------------------------------------------------------------- the wrappers
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


def test_isolate_arguments_carry_the_sizes() -> None:
    argv = netns_exec.own_namespaces(["true"], "/app", "1:2", "", tmpfs_size=512 * MB)
    assert argv[-6:] == ["/app", "1:2", "", str(512 * MB), str(netns_exec.LOCK_SIZE), "true"]
    unsized = netns_exec.own_namespaces(["true"], "/app", "1:2")
    assert unsized[-3] == ""
    assert "/run/lock" in netns_exec.ISOLATE


# ---------------------------------------------------------------- the state
def test_state_v2_gains_sizes(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    old_schema = "\n".join(line for line in SCHEMA.splitlines() if "size " not in line)
    db.executescript(old_schema)
    db.execute("INSERT INTO apps (name, created_at) VALUES ('a', 0)")
    db.execute(
        "INSERT INTO dynos (app, type, number, state, slot, ip, netns, veth, command, cwd, uid, "
        "gid, env, detached, log_path, created_at) VALUES ('a', 'web', 1, 'up', 1, '10.0.0.2', "
        "'d-a.web.1', 'd-1', 'x', '/', 1, 1, '{}', 1, '/o', 0)"
    )
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    state = State(str(tmp_path))
    try:
        (dyno,) = state.dynos()
        assert dyno.size == ""  # a dyno from before sizes keeps running without limits
        state.update_dyno(dyno, size="eco")
        assert state.dynos()[0].size == "eco"
        assert state.db.execute("PRAGMA user_version").fetchone()[0] == 4
    finally:
        state.close()
