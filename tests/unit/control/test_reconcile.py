"""Reconcile after a daemon restart, on the fake kernel side: each dyno's decision, and what is
done about it. No root needed."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest

from dynod.control.reconcile import Decision, decide, reconcile
from dynod.kernel.facts import Removed
from tests.unit.control.test_supervisor import World, until
from tests.unit.control.test_supervisor import world as world  # noqa: F401 - the fixture

NONE = Removed()
NS = Removed(netns="ns-1")
VETH = Removed(veth="veth-1")
BOTH = Removed("ns-1", "veth-1")


@pytest.mark.parametrize(
    ("state", "detached", "alive", "removed", "expected"),
    [
        ("up", True, True, NONE, Decision.ADOPT),
        ("starting", True, True, NONE, Decision.ADOPT),
        ("stopping", True, True, NONE, Decision.ADOPT_AND_STOP),  # caught mid-stop
        ("up", False, True, NONE, Decision.ADOPT_AND_STOP),  # foreground: its stream is gone
        ("crashed", True, False, NONE, Decision.RESTART),
        ("crashed", True, True, VETH, Decision.RESTART),  # its namespace is still there
        ("crashed", True, False, BOTH, Decision.CLEAN),
        ("up", True, True, VETH, Decision.CRASH),  # removed while no daemon watched
        ("up", True, True, NS, Decision.CRASH),
        ("up", False, True, VETH, Decision.CLEAN),  # a foreground one ends instead
        ("stopping", True, True, VETH, Decision.CLEAN),
        ("up", True, False, NONE, Decision.CLEAN),  # dead
        ("starting", True, False, BOTH, Decision.CLEAN),
    ],
)
def test_decide(
    world: World, state: str, detached: bool, alive: bool, removed: Removed, expected: Decision
) -> None:
    dyno = world.dyno("true", detached=detached)
    dyno.state = state
    assert decide(dyno, alive, removed) is expected


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process left by the "old daemon": alive, not our child."""
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_reconcile_adopts_restarts_crashes_and_cleans(
    world: World, sleeper: subprocess.Popen[bytes]
) -> None:
    async def test() -> None:
        kernel, state = world.kernel, world.state
        alive = world.dyno("sleep 30")
        foreground = world.dyno("sleep 30", detached=False)
        crashed = world.dyno("exit 1")
        broken = world.dyno("sleep 30")
        dead = world.dyno("sleep 30")
        for dyno, row_state in [
            (alive, "up"),
            (foreground, "up"),
            (crashed, "crashed"),
            (broken, "up"),
            (dead, "up"),
        ]:
            state.update_dyno(dyno, state=row_state, pid=sleeper.pid)
            kernel.namespaces.add(dyno.netns)
            kernel.links.add(dyno.veth)
        kernel.links.discard(broken.veth)  # `ip link del` while the daemon was down
        kernel.gateways_lost.add(alive.netns)  # `ip route del` of its gateway meanwhile
        kernel.namespaces.add("ns-left-by-nobody")
        living = {alive.id, foreground.id, broken.id}

        kept, to_stop = await reconcile(
            state, kernel, world.supervisor, is_alive=lambda d: d.id in living
        )

        assert [d.name for d in kept] == [alive.name, foreground.name, crashed.name, broken.name]
        assert [d.name for d in to_stop] == [foreground.name]
        assert state.dyno(dead.id) is None  # forgotten, and its network detached
        assert kernel.operations(dead.netns) == ["signal SIGKILL", "detach"]
        assert "Cleaned up after daemon restart" in world.said(dead)
        assert "ns-left-by-nobody" not in kernel.namespaces  # what nobody owns is removed
        assert alive.netns in kernel.namespaces
        assert f"Adopted again (pid {sleeper.pid})" in world.said(alive)
        put_back = "Warning: the dyno's gateway routes were missing or changed at the daemon's "
        put_back += "start; put back"
        assert put_back in world.said(alive) and alive.netns not in kernel.gateways_lost
        # The broken one is a crash: killed, marked crashed, restarted on a rebuilt network.
        assert (
            f"Error: the dyno's veth {broken.veth} was removed while the daemon was down; "
            "stopping all processes with SIGKILL"
        ) in world.said(broken)
        assert "State changed from up to crashed" in world.said(broken)
        living.clear()
        await until(lambda: "rebuild" in kernel.operations(broken.netns))
        await until(lambda: kernel.operations(crashed.netns).count("spawn") >= 1)
        assert kernel.operations(crashed.netns)[0] == "signal SIGKILL"
        row = state.dyno(crashed.id)
        assert row is not None and row.restarts >= 1

    async def main() -> None:
        try:
            await test()
        finally:
            await world.supervisor.close()

    asyncio.run(main())
