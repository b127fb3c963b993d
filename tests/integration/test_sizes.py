"""Dyno sizes against real cgroups, and each dyno's own /run/lock.

Whatever the host has is what is tested: cgroup v2 when its tree below this process offers
memory, pids and cpu, else the v1 hierarchies (the daemon runs in this test's own cgroups, and
puts its dynos' groups below them). Allocations are bounded: at most 1.5 GB, in a dyno whose
kernel limit (standard-1x: 1 GB) stops it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from dynod.api.client import Client
from dynod.errors import DynodError
from dynod.rules import sizes
from netns import cgroup
from tests.support import PYTHON, SYSTEM_PATH, DaemonProc, cgroup_names, daemon_tree

pytestmark = pytest.mark.root

MB = 1024 * 1024
INTERVAL = "0.1"  # --metrics-interval: R14 samples come quickly

# Holds N MB of its own memory (touched, so it is really resident), says so, and waits.
HOLD = (
    "import sys, time\n"
    "chunks = [b'x' * (16 << 20) for _ in range(int(sys.argv[1]) // 16)]\n"
    "print('holding', len(chunks) * 16, flush=True)\n"
    "time.sleep(60)\n"
)

# Starts up to 300 processes that wait; prints how many it got before fork failed.
FORKS = (
    "import os, time\n"
    "children = []\n"
    "try:\n"
    "    for _ in range(300):\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            time.sleep(20)\n"
    "            os._exit(0)\n"
    "        children.append(pid)\n"
    "    print('forked', len(children), 'no-limit', flush=True)\n"
    "except OSError as exc:\n"
    "    print('forked', len(children), 'refused', exc.errno, flush=True)\n"
    "for pid in children:\n"
    "    os.kill(pid, 9)\n"
    "    os.waitpid(pid, 0)\n"
)

# The sizes of the dyno's private mounts, in bytes, by statvfs.
MOUNT_SIZES = (
    "import os\n"
    "for path in ('/tmp', '/dev/shm', '/var/tmp', '/run/lock'):\n"
    "    st = os.statvfs(path)\n"
    "    print(path, st.f_blocks * st.f_frsize)\n"
)


def body(d: DaemonProc, ptype: str, command: str, size: object, detach: bool = True) -> Any:
    request: dict[str, Any] = {
        "type": ptype,
        "command": command,
        "cwd": str(d.app_dir),
        "env": {"PATH": SYSTEM_PATH},
        "detach": detach,
    }
    if size is not None:
        request["size"] = size
    return request


def run(d: DaemonProc, app: str, ptype: str, command: str, size: object = None) -> Any:
    return d.client.call("POST", f"/v1/apps/{app}/dynos", body(d, ptype, command, size))


def run_script(d: DaemonProc, app: str, name: str, script: str, *args: str) -> str:
    """Write the script into the app's directory; the command that runs it."""
    path = d.app_dir / f"{name}.py"
    path.write_text(script)
    path.chmod(0o644)
    return f"{PYTHON} -u {path.name} {' '.join(args)}"


def heroku_lines(d: DaemonProc, name: str) -> list[str]:
    marker = f" heroku[{name}]: "
    return [line.split(marker, 1)[1] for line in d.log().splitlines() if marker in line]


def tree(prefix: str) -> cgroup.Tree:
    """Where the daemon of that prefix makes its dynos' groups (tests/support.py)."""
    found = daemon_tree(prefix)
    assert found is not None
    return found


def groups(prefix: str) -> set[str]:
    return cgroup_names(prefix)


def enforced(d: DaemonProc) -> bool:
    """Whether the daemon found cgroups to put sizes in (`dynod status` says how, or why not)."""
    return not d.client.call("GET", "/v1/status")["sizes"].startswith("not enforced")


@pytest.fixture
def sized(daemon: DaemonProc) -> DaemonProc:
    """A daemon that enforces sizes. A host that cannot (cgroup v2 without delegation: the
    daemon shares its cgroup with other processes) is told by the daemon, and these tests are
    skipped with its reason; test_size_is_refused_where_it_cannot_be_enforced runs instead."""
    if not enforced(daemon):
        pytest.skip(daemon.client.call("GET", "/v1/status")["sizes"])
    return daemon


@pytest.fixture
def daemon() -> Iterator[DaemonProc]:
    d = DaemonProc(extra=["--metrics-interval", INTERVAL])
    try:
        yield d.start()
    finally:
        found = d.close()  # its namespaces, links, tables and cgroups, even after a SIGKILL
        assert not found, f"the daemon left kernel objects behind: {found}"


def test_each_dyno_has_its_own_run_lock(daemon: DaemonProc) -> None:
    marker = f"dynod-test-{daemon.prefix}"
    try:
        writer = run(
            daemon,
            "locka",
            "worker",
            f"echo secret > /run/lock/{marker} && echo wrote && sleep 30",
        )
        daemon.wait_for(lambda: "wrote" in daemon.output("locka", writer["name"]), "the write")
        status, lines = daemon.run_once(
            "lockb", "run", f"cat /run/lock/{marker}; echo more >> /run/lock/{marker}; echo done"
        )
        assert lines[-1:] == ["done"]
        assert "secret" not in lines
        assert not os.path.exists(f"/run/lock/{marker}"), "the host's /run/lock has the file"
        daemon.stop_dyno("locka")
    finally:
        with contextlib.suppress(FileNotFoundError):  # where it lands without the fix
            os.unlink(f"/run/lock/{marker}")


def test_private_mounts_are_sized_to_the_quota(sized: DaemonProc) -> None:
    daemon = sized
    command = run_script(daemon, "mounts", "mounts", MOUNT_SIZES)
    for size, quota in (("standard-1x", 512), ("standard-2x", 1024)):
        request = body(daemon, "run", command, size, detach=False)
        lines = _foreground(daemon, "mounts", request)
        found = dict(line.split() for line in lines if line.startswith("/"))
        for path in ("/tmp", "/dev/shm", "/var/tmp"):
            assert int(found[path]) == quota * MB, (size, path, found)
        assert int(found["/run/lock"]) == 5 * MB


def _foreground(d: DaemonProc, app: str, request: dict[str, Any]) -> list[str]:

    lines = []
    for raw in Client(d.socket, timeout=60).lines(f"/v1/apps/{app}/dynos", "POST", request):
        message = json.loads(raw)
        if "lines" in message:
            lines += message["lines"]
        elif "line" in message:
            lines.append(message["line"])
    return lines


def test_the_process_limit_stops_a_fork_loop(sized: DaemonProc) -> None:
    daemon = sized
    command = run_script(daemon, "forks", "forks", FORKS)
    lines = _foreground(daemon, "forks", body(daemon, "run", command, "standard-1x", False))
    result = next(line for line in lines if line.startswith("forked"))
    count = int(result.split()[1])
    assert "refused" in result, result
    # 256 tasks for the whole dyno: its init, the shell, python itself and its children
    assert 240 <= count < sizes.SIZES["standard-1x"].tasks, result


def test_r14_between_quota_and_hard_limit(sized: DaemonProc) -> None:
    daemon = sized
    # 1.3 times standard-1x's 512 MB quota, well under its 1 GB hard limit
    command = run_script(daemon, "hold", "hold", HOLD, str(int(512 * 1.3)))
    dyno = run(daemon, "hold", "worker", command, "standard-1x")
    name = dyno["name"]
    daemon.wait_for(lambda: "holding" in daemon.output("hold", name), "the allocation")
    began = len(heroku_lines(daemon, name))
    daemon.wait_for(lambda: sizes.R14 in heroku_lines(daemon, name)[began:], "R14", timeout=30)
    lines = heroku_lines(daemon, name)[began:]
    running = [line for line in lines if line.startswith("Process running mem=")]
    match = re.fullmatch(r"Process running mem=(\d+)M\((\d+\.\d)%\)", running[0])
    assert match, running[0]
    mem, share = int(match[1]), float(match[2])
    assert 640 <= mem < 760 and 125 <= share < 150, running[0]
    assert lines.index(running[0]) + 1 == lines.index(sizes.R14)  # Heroku's order
    assert sizes.R15 not in lines
    assert daemon.dyno("hold", name)["state"] == "up"
    # `dynod ps`: its size, and its memory against the quota
    ps = daemon.cli("ps", "--app", "hold")
    assert ps.returncode == 0, ps.stderr
    row = next(line for line in ps.stdout.splitlines() if line.startswith(f"{name} "))
    assert row.startswith(f"{name} (Standard-1X): up "), row
    used = re.search(r"\b(\d+)M/512M\b", row)
    assert used and 640 <= int(used[1]) < 760, row
    daemon.stop_dyno("hold")


# Holds N MB of its own memory and reads a file (its pages, the page cache, are charged to the
# dyno's group too, but are not what its processes hold), says so, and waits.
HOLD_AND_READ = (
    "import sys, time\n"
    "held = b'x' * (int(sys.argv[1]) << 20)\n"
    "with open(sys.argv[2], 'rb') as f:\n"
    "    while f.read(1 << 20):\n"
    "        pass\n"
    "print('read', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_samples_one_number_bounds_what_the_processes_hold(sized: DaemonProc) -> None:
    """Memory sampling reads the group's page counter first (one number, with the page cache)
    and memory.stat only when that is over the quota (netns/cgroup.py usage): the number is
    never below what memory.stat says the processes hold, and counts the cache they read."""
    daemon = sized
    cached = daemon.app_dir / "cache.bin"
    with open(cached, "wb") as f:
        f.write(os.urandom(1 << 20) * 64)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # read by the dyno first
    cached.chmod(0o644)
    command = run_script(daemon, "cache", "cache", HOLD_AND_READ, "32", str(cached))
    dyno = run(daemon, "cache", "worker", command, "standard-1x")
    daemon.wait_for(lambda: "read" in daemon.output("cache", dyno["name"]), "the read")
    where, group = tree(daemon.prefix), dyno["netns"]
    held = cgroup.usage(where, group)
    bound = cgroup.usage(where, group, above=1 << 40)
    again = cgroup.usage(where, group, above=MB)  # over that: memory.stat is read
    assert held is not None and bound is not None and again is not None
    assert 32 * MB <= held.memory < 128 * MB, held
    assert bound.memory >= held.memory + 48 * MB, (bound, held)  # the 64 MB it read
    assert abs(again.memory - held.memory) < 8 * MB, (again, held)
    assert sizes.R14 not in heroku_lines(daemon, dyno["name"])
    daemon.stop_dyno("cache")


def test_r15_at_the_hard_limit_kills_and_restarts(sized: DaemonProc) -> None:
    daemon = sized
    command = run_script(daemon, "leak", "leak", HOLD, "1536")  # 1.5 times the 1 GB limit
    dyno = run(daemon, "leak", "worker", command, "standard-1x")
    name = dyno["name"]
    daemon.wait_for(lambda: sizes.R15 in heroku_lines(daemon, name), "R15", timeout=60)
    daemon.wait_for(
        lambda: "State changed from crashed to starting" in heroku_lines(daemon, name),
        "the restart",
        timeout=30,
    )
    lines = heroku_lines(daemon, name)
    r15 = lines.index(sizes.R15)
    assert lines[r15 - 1].startswith("Process running mem=")
    assert lines[r15 + 1] == sizes.KILLED
    assert "holding 1536" not in daemon.output("leak", name)  # it never got that much
    assert daemon.dyno("leak", name)["restarts"] >= 1
    daemon.stop_dyno("leak", grace=0)


def test_default_size_unknown_size_and_cgroups_gone(sized: DaemonProc) -> None:
    daemon = sized
    status = daemon.client.call("GET", "/v1/status")
    assert status["sizes"].startswith(f"cgroup v{tree(daemon.prefix).version} below "), status
    dyno = run(daemon, "plain", "worker", "sleep 30")
    assert dyno["size"] == sizes.DEFAULT
    name = daemon.netns("plain", dyno["name"])
    assert name in groups(daemon.prefix)
    limit = _memory_limit(daemon.prefix, name)
    assert limit == sizes.SIZES[sizes.DEFAULT].hard_mb * MB
    daemon.stop_dyno("plain")
    assert name not in groups(daemon.prefix)
    result = daemon.cli("run", "--app", "plain", "--size", "huge-9x", "--detach", "--", "true")
    assert result.returncode == 1
    assert "unknown dyno size 'huge-9x'" in result.stderr and "fix:" in result.stderr
    with pytest.raises(DynodError) as caught:  # the API refuses it too, whoever sends it
        run(daemon, "plain", "worker", "true", size=512)
    assert caught.value.status == 400 and "size" in caught.value.problem
    assert groups(daemon.prefix) == set()


def test_every_process_of_a_dyno_is_in_each_of_its_groups(sized: DaemonProc) -> None:
    """The dyno's first process joins its groups as one thread (v1: `echo 0 > tasks`, which
    the kernel does without the machine-wide threadgroup lock; v2: cgroup.procs): what it
    starts after, and what those fork, in the background or from a subshell, are in every
    group of the dyno too (memory, pids and cpu)."""
    daemon = sized
    dyno = run(daemon, "forks", "worker", "sleep 61 & (sleep 62 &); sleep 63")
    name = daemon.netns("forks", dyno["name"])
    leader = psutil.Process(daemon.dyno("forks", dyno["name"])["pid"])

    def sleeps() -> list[psutil.Process]:
        return [p for p in leader.children(recursive=True) if p.name() == "sleep"]

    daemon.wait_for(lambda: len(sleeps()) == 3, "the dyno's three sleeps")
    t = tree(daemon.prefix)
    wanted = {"memory", "pids", "cpu"} if t.version == 1 else {""}
    for process in [leader, *leader.children(recursive=True)]:
        with open(f"/proc/{process.pid}/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        found = {c for _, controllers, path in lines for c in controllers.split(",")
                 if path.endswith(f"/{name}")}  # fmt: skip
        assert wanted <= found, (process.cmdline(), lines)
    daemon.stop_dyno("forks")


def _memory_limit(prefix: str, name: str) -> int:
    t = tree(prefix)
    base = os.path.join(t.base("memory"), name)
    limit_file = "memory.max" if t.version == 2 else "memory.limit_in_bytes"
    with open(os.path.join(base, limit_file)) as f:
        return int(f.read())


def test_cgroups_after_sigkill_and_shutdown(sized: DaemonProc) -> None:
    daemon = sized
    # through the CLI: the size's name in any case, as Heroku's CLI takes it
    started = daemon.cli(
        "run",
        "--app",
        "kept",
        "--type",
        "worker",
        "--size",
        "Standard-2X",
        "--detach",
        "--json",
        "--",
        "sleep",
        "60",
    )
    assert started.returncode == 0, started.stderr
    kept = json.loads(started.stdout)
    assert kept["size"] == "standard-2x"
    kept_group = daemon.netns("kept", kept["name"])
    daemon.kill9()
    # a group a killed daemon left with nothing in the state (SIGKILL between mkdir and insert)
    stray = f"{daemon.prefix}-stray.web.1"
    cgroup.create(tree(daemon.prefix), stray, sizes.SIZES["eco"].limits)
    daemon.start()
    daemon.wait_for(lambda: stray not in groups(daemon.prefix), "the stray group removed")
    assert kept_group in groups(daemon.prefix)  # adopted with its dyno
    assert daemon.dyno("kept", kept["name"])["size"] == "standard-2x"
    assert daemon.terminate() == 0
    assert groups(daemon.prefix) == set()


def test_size_is_refused_where_it_cannot_be_enforced(daemon: DaemonProc) -> None:
    if enforced(daemon):
        pytest.skip("this host enforces sizes: the tests above cover them")
    dyno = run(daemon, "nolimit", "worker", "sleep 30")
    assert dyno["size"] == ""  # runs, unlimited, as before sizes existed
    with pytest.raises(DynodError) as caught:
        run(daemon, "nolimit", "worker", "sleep 30", "standard-1x")
    assert "cannot be enforced" in caught.value.problem and caught.value.fix
    daemon.stop_dyno("nolimit")
