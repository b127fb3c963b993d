"""Issue 7, items 2 and 7 without root: private state modes, finding a dyno's processes by pid
namespace, and the health check's choices."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

from dynod.claim import make_private_dir, make_private_tree
from dynod.config import Config
from dynod.control.supervisor import Supervisor
from dynod.kernel.host import Kernel, dyno_pids
from dynod.logs.book import LogBook
from dynod.state.store import Dyno
from netns import namespace


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_tree_closes_everything_but_what_dynos_read(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "output").mkdir(parents=True)
    (root / "resolv").mkdir()
    files = {
        "state.db": 0o644,
        "state.db-wal": 0o666,
        "dynod.log": 0o644,
        "output/1.out": 0o644,
        "resolv/dynod0.conf": 0o600,
    }
    for name, m in files.items():
        (root / name).write_text("x")
        (root / name).chmod(m)
    for d in (root, root / "output", root / "resolv"):
        d.chmod(0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "api.sock"))
        before = mode(root / "api.sock")

        make_private_dir(str(root))
        changed = make_private_tree(
            str(root), readable=lambda p: p.startswith(str(root / "resolv")) and p.endswith(".conf")
        )

        assert mode(root) == 0o700
        assert mode(root / "output") == mode(root / "resolv") == 0o700
        for name in ("state.db", "state.db-wal", "dynod.log", "output/1.out"):
            assert mode(root / name) == 0o600, name
        assert mode(root / "resolv/dynod0.conf") == 0o644  # bound over a dyno's resolv.conf
        assert mode(outside) == 0o644  # a symlink is never followed out of the tree
        assert mode(root / "api.sock") == before  # nor special files touched
    assert str(root / "state.db") in changed and str(outside) not in changed
    # A second pass changes nothing.
    assert make_private_tree(str(root), readable=lambda p: p.endswith(".conf")) == []


def test_private_dir_is_made_with_its_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    old = os.umask(0o077)
    try:
        make_private_dir(str(target))
    finally:
        os.umask(old)
    assert mode(target) == 0o700 and mode(tmp_path / "a") == 0o700


def test_no_pid_namespace_of_its_own_is_never_the_whole_host() -> None:
    # This process made no pid namespace: its children's is its own, which holds every process
    # of the host. Killing "the dyno" must never mean that.
    assert namespace.pids_in_child_pid_namespace(os.getpid()) == []
    assert namespace.pids_in_child_pid_namespace(2**22 + 1) == []  # no such process
    own = namespace.inode_of(os.getpid(), "pid")
    assert own is not None and os.getpid() in namespace.pids_in("pid", own)


def dyno(**changes: Any) -> Dyno:
    base: dict[str, Any] = dict(
        id=1,
        app="sushi",
        type="web",
        number=1,
        state="up",
        slot=1,
        ip="172.16.0.6",
        port=5000,
        pid=None,
        pid_start=None,
        netns="tstunit-no-such-namespace",
        veth="lo",
        command="true",
        cwd="/",
        uid=65534,
        gid=65534,
    )
    base.update(changes)
    return Dyno(**base)


def test_removed_objects_names_what_is_missing() -> None:
    assert Kernel.removed_objects(dyno()) == ["network namespace tstunit-no-such-namespace"]
    assert Kernel.removed_objects(dyno(veth="tstunit-nolink")) == [
        "network namespace tstunit-no-such-namespace",
        "veth tstunit-nolink",
    ]


def test_a_dead_or_reused_pid_finds_no_processes() -> None:
    # The recorded start time does not match: a reused PID is never taken for the dyno's.
    assert dyno_pids(dyno(pid=os.getpid(), pid_start=1.0)) == []


class FakeState:
    def __init__(self, dynos: list[Dyno]) -> None:
        self._dynos = {d.id: d for d in dynos}

    def dynos(self) -> list[Dyno]:
        return list(self._dynos.values())

    def dyno(self, dyno_id: int) -> Dyno | None:
        return self._dynos.get(dyno_id)


class FakeKernel:
    def __init__(self, broken: set[int]) -> None:
        self.broken = broken
        self.killed: list[int] = []

    def removed_objects(self, d: Dyno) -> list[str]:
        return [f"veth {d.veth}"] if d.id in self.broken else []

    async def kill_inside(self, d: Dyno) -> None:
        self.killed.append(d.id)


def test_the_health_check_kills_only_running_dynos_with_a_removed_part() -> None:
    dynos = [
        dyno(id=1, pid=10, veth="v1"),  # up, broken: killed
        dyno(id=2, pid=20, veth="v2"),  # up, whole: left alone
        dyno(id=3, pid=30, veth="v3", state="crashed"),  # its restart repairs it
        dyno(id=4, pid=40, veth="v4", state="stopping"),  # being torn down
        dyno(id=5, pid=None, veth="v5", state="starting"),  # network still being built
        dyno(id=6, pid=60, veth="v6", type="worker"),  # locked: a start or stop is under way
    ]
    kernel = FakeKernel({1, 3, 4, 5, 6})
    log = LogBook(None, echo=None)
    sup = Supervisor(FakeState(dynos), kernel, log, Config(), None)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with sup._lock(6):
            await sup.health.check()
        await sup.health.check()  # already handled: not killed twice

    asyncio.run(scenario())
    assert kernel.killed == [1, 6]
    said = [str(line) for line in log.recent(lambda _: True, 10)]
    assert any(
        "heroku[web.1]: Error: the dyno's veth v1 was removed by someone else; stopping all "
        "processes with SIGKILL" in line
        for line in said
    ), said
