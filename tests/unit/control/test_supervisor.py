"""The supervisor's logic on the fake kernel side (dynod/kernel/fake.py): no root needed.

The processes are real (plain /bin/sh children), so exits, pidfds and signals are the real ones;
only the network is sets of names."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from dynod.config import Config
from dynod.control import networks
from dynod.control.supervisor import RESTART_CAP, Supervisor, restart_delay
from dynod.dns.registry import Registry
from dynod.errors import DynodError
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.fake import FakeKernel
from dynod.logs.book import LogBook
from dynod.rules import names
from dynod.state.store import App, Dyno, State
from netns import cgroup
from tests.unit.control.worlds import NoDns, end_sessions, run_with, until


@dataclass
class World:
    state: State
    kernel: FakeKernel
    log: LogBook
    supervisor: Supervisor
    directory: str

    def dyno(
        self, command: str, ptype: str = "worker", detached: bool = True, size: str = ""
    ) -> Dyno:
        dyno_id = self.state.next_dyno_id()
        self.state.add_app(App("app"))
        return self.state.insert_dyno(
            Dyno(
                id=dyno_id,
                app="app",
                type=ptype,
                number=dyno_id,
                state="starting",
                slot=dyno_id,
                ip=f"10.0.0.{4 * dyno_id + 2}",
                port=5000 + dyno_id if ptype == names.WEB_TYPE else None,
                pid=None,
                pid_start=None,
                netns=f"ns-{dyno_id}",
                veth=f"veth-{dyno_id}",
                command=command,
                cwd="/",
                uid=os.getuid(),
                gid=os.getgid(),
                env={"PATH": "/usr/bin:/bin"},
                detached=detached,
                log_path=os.path.join(self.directory, f"{dyno_id}.out"),
                created_at=time.time(),
                size=size,
            )
        )

    def allocated(self, dyno: Dyno) -> DynoNetwork:
        """The facts the daemon computes when it allocates the dyno's /30."""
        subnet = self.kernel.net(dyno.space).pool.subnet(dyno.slot)
        net = self.kernel.net(dyno.space)
        return networks.allocated(dyno.netns, dyno.veth, net, subnet, dyno.type, dyno.port)

    async def launch(self, dyno: Dyno) -> None:
        await self.supervisor.launch(dyno, self.allocated(dyno))

    def said(self, dyno: Dyno) -> list[str]:
        return [
            line.text
            for line in self.log.recent(lambda line: line.source == f"heroku[{dyno.name}]", 1000)
        ]

    def output(self, dyno: Dyno) -> list[str]:
        """The dyno's lines so far (what the supervisor's output loop would have read)."""
        row = self.row(dyno)
        if row is not None:
            self.supervisor.outputs.drain(row)
        return [
            line.text
            for line in self.log.recent(lambda line: line.source == f"app[{dyno.name}]", 1000)
        ]

    def row(self, dyno: Dyno) -> Dyno | None:
        return self.state.dyno(dyno.id)


@pytest.fixture
def world(tmp_path: object) -> Iterator[World]:
    directory = str(tmp_path)
    state = State(os.path.join(directory, "state"))
    kernel = FakeKernel(
        state_of=lambda netns: next((d.state for d in state.dynos() if d.netns == netns), None)
    )
    log = LogBook(None, echo=None)
    config = Config(grace=0.5, restart_crashed=True, health_interval=0.05, metrics_interval=60)
    registry = Registry(state, NoDns(), lambda space: ("10.1.0.0/16", "10.1.0.1"))
    yield World(state, kernel, log, Supervisor(state, kernel, log, config, registry), directory)
    end_sessions(kernel)
    state.db.close()


def run(world: World, test: Callable[[], Awaitable[None]]) -> None:
    run_with(world.supervisor, test)


def test_restart_delay_doubles_up_to_twenty_minutes() -> None:
    assert [restart_delay(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert restart_delay(40) == RESTART_CAP == 1200.0


def test_a_worker_is_attached_then_spawned_and_up(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("sleep 30")
        await world.launch(dyno)
        assert world.kernel.operations(dyno.netns) == ["attach", "spawn"]
        row = world.row(dyno)
        assert row is not None and row.state == "up" and row.pid
        assert dyno.netns in world.kernel.namespaces
        assert world.said(dyno)[-1] == "State changed from starting to up"

    run(world, test)


def test_a_start_and_a_stop_tell_the_health_check_when_they_began(world: World) -> None:
    """Its backstop waits while dynos are being started or stopped (control/health.py)."""

    async def test() -> None:
        sup = world.supervisor
        assert sup.last_change == float("-inf")
        dyno = world.dyno("sleep 30")
        before = time.monotonic()
        await world.launch(dyno)
        started = sup.last_change
        assert before <= started <= time.monotonic()
        assert sup.health._busy(time.monotonic())
        await sup.stop(dyno, grace=0.2)
        assert started < sup.last_change <= time.monotonic()

    run(world, test)


def test_stop_order_state_then_sigterm_then_grace_then_sigkill_then_detach(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("trap '' TERM; echo ready; while :; do sleep 0.05; done")
        await world.launch(dyno)
        await until(lambda: "ready" in world.output(dyno))  # the trap is set
        began = time.monotonic()
        await world.supervisor.stop(dyno)
        waited = time.monotonic() - began
        # The state was "stopping" before the first signal; detach came after SIGKILL.
        calls = [(what, state) for what, name, state in world.kernel.calls if name == dyno.netns]
        assert calls == [
            ("attach", "starting"),
            ("spawn", "starting"),
            ("signal SIGTERM", "stopping"),
            ("signal SIGKILL", "stopping"),
            ("detach", "stopping"),
        ]
        assert waited >= 0.5  # the grace period was given
        said = world.said(dyno)
        start = said.index("State changed from up to down")
        assert said[start:] == [
            "State changed from up to down",
            "Stopping all processes with SIGTERM",
            "Error R12 (Exit timeout) -> At least one process failed to exit within 0.5 "
            "seconds of SIGTERM",
            "Stopping remaining processes with SIGKILL",
            "Process exited with status 137",
        ]
        assert world.row(dyno) is None  # forgotten last
        assert dyno.netns not in world.kernel.namespaces
        assert not os.path.exists(dyno.log_path)

    run(world, test)


@pytest.mark.parametrize("starting", [0, 3])
def test_a_process_that_obeys_sigterm_gets_no_sigkill(world: World, starting: int) -> None:
    """Also when stopped while still starting (starting=3): the kernel drops a SIGTERM to an
    init with no handler yet (the fake: for as long as still_starting says so, asked before the
    SIGTERM, after it, and once more), and the stop sends it again once the dyno's first
    process handles it: it ends by SIGTERM within the grace, with no R12 and no SIGKILL."""

    async def test() -> None:
        dyno = world.dyno("echo ready; exec sleep 30")
        await world.launch(dyno)
        await until(lambda: "ready" in world.output(dyno))
        world.kernel.starting = starting
        await world.supervisor.stop(dyno)
        signals = ["signal SIGTERM"] * (2 if starting else 1)
        assert world.kernel.operations(dyno.netns) == ["attach", "spawn", *signals, "detach"]
        said = world.said(dyno)
        assert "Process exited with status 143" in said
        assert not [line for line in said if "R12" in line or "SIGKILL" in line], said

    run(world, test)


def test_a_stop_that_finds_an_attached_one_offs_init_alone_looks_again_for_its_command(
    world: World,
) -> None:
    """An attached one-off's init runs its SIGTERM handler only once its foreground command has
    ended: when the stop's scan found the init alone, the command may have been forked since,
    so the daemon looks again (the fake: nothing more to find, as its init is all there is)."""

    async def test() -> None:
        dyno = world.dyno("echo ready; exec sleep 30", detached=False)
        await world.launch(dyno)
        await until(lambda: "ready" in world.output(dyno))
        await world.supervisor.stop(dyno)
        signals = [op for op in world.kernel.operations(dyno.netns) if op.startswith("signal")]
        assert signals == ["signal SIGTERM", "signal SIGTERM"]
        assert "Process exited with status 143" in world.said(dyno)

    run(world, test)


def test_a_crash_is_restarted_at_once_then_with_backoff(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("echo hi; exit 3")
        await world.launch(dyno)
        # First crash: restarted at once (restarts 0 -> 1); second: one second later.
        await until(lambda: (row := world.row(dyno)) is not None and row.restarts >= 1)
        await until(lambda: "Process exited with status 3" in world.said(dyno)[-3:])
        await until(lambda: dyno.id in world.supervisor._timers)
        row = world.row(dyno)
        assert row is not None and row.state == "crashed" and row.restarts == 1
        handle = world.supervisor._timers[dyno.id]
        delay = handle.when() - asyncio.get_running_loop().time()
        assert 0.5 < delay <= 1.0
        said = world.said(dyno)
        assert said.count("State changed from up to crashed") == 2
        assert "State changed from crashed to starting" in said
        # Between the crash and the restart nothing was detached: the network is kept.
        assert "detach" not in world.kernel.operations(dyno.netns)
        assert world.kernel.operations(dyno.netns).count("spawn") == 2
        # A stop during the cool-off cancels the restart.
        await world.supervisor.stop(dyno)
        assert dyno.id not in world.supervisor._timers
        assert world.row(dyno) is None

    run(world, test)


def test_no_restart_when_restarting_is_off(world: World) -> None:
    world.supervisor.config.restart_crashed = False

    async def test() -> None:
        dyno = world.dyno("exit 1")
        await world.launch(dyno)
        await until(lambda: (row := world.row(dyno)) is not None and row.state == "crashed")
        await asyncio.sleep(0.2)
        row = world.row(dyno)
        assert row is not None and row.state == "crashed" and row.restarts == 0
        assert world.kernel.operations(dyno.netns).count("spawn") == 1

    run(world, test)


def test_a_foreground_dyno_ends_with_its_process(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("echo done", detached=False)
        await world.launch(dyno)
        status = await world.supervisor.wait_exit(dyno)
        assert status == 0
        await until(lambda: world.row(dyno) is None)
        assert world.kernel.operations(dyno.netns)[-1] == "detach"
        assert world.kernel.operations(dyno.netns).count("spawn") == 1

    run(world, test)


def test_a_failed_spawn_undoes_the_network_and_forgets_the_dyno(world: World) -> None:
    async def test() -> None:
        world.kernel.fail_spawn = "no such file"
        dyno = world.dyno("true")
        with pytest.raises(Exception, match="could not start worker"):
            await world.launch(dyno)
        assert world.kernel.operations(dyno.netns) == ["attach", "spawn", "detach"]
        assert world.row(dyno) is None
        assert dyno.netns not in world.kernel.namespaces

    run(world, test)


def test_a_start_refused_before_its_network_is_forgotten(world: World) -> None:
    """What the process needs is read before anything is made (here: a size this dynod does
    not know, as a state from a newer one could hold): nothing made, no row left starting."""

    async def test() -> None:
        dyno = world.dyno("true", size="no-such-size")
        with pytest.raises(DynodError, match="could not start worker"):
            await world.launch(dyno)
        assert world.row(dyno) is None
        assert world.kernel.operations(dyno.netns) == []

    run(world, test)


def test_a_refused_network_says_why_and_what_to_do_and_forgets_the_dyno(world: World) -> None:
    """A full bridge (EXFULL, what the 1,024th port of a bridge gets) or any other refusal of
    the kernel comes back at once as an error with a fix, and leaves nothing stored."""

    async def test() -> None:
        for code, words in ((errno.EXFULL, "--shard-ports"), (errno.EPERM, "dmesg")):
            world.kernel.fail_attach = code
            dyno = world.dyno("true")
            with pytest.raises(DynodError) as refused:
                await world.launch(dyno)
            assert refused.value.problem.startswith("could not set up the network of worker")
            assert words in refused.value.fix
            assert world.row(dyno) is None
            assert world.kernel.operations(dyno.netns) == ["attach"]

    run(world, test)


def test_a_removed_veth_is_a_crash_and_the_restart_rebuilds_the_network(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("sleep 30")
        await world.launch(dyno)
        world.kernel.links.discard(dyno.veth)  # `ip link del VETH` by someone else
        await world.supervisor.health.check()
        said = world.said(dyno)
        assert (
            f"Error: the dyno's veth {dyno.veth} was removed by someone else; "
            "stopping all processes with SIGKILL"
        ) in said
        await until(lambda: "rebuild" in world.kernel.operations(dyno.netns))
        await until(lambda: (row := world.row(dyno)) is not None and row.state == "up")
        assert world.kernel.operations(dyno.netns) == [
            "attach",
            "spawn",
            "signal SIGKILL",  # the health check, on seeing the veth gone
            "signal SIGKILL",  # the crash: whatever the main process left behind
            "rebuild",
            "spawn",
        ]
        assert f"Rebuilding its network (veth {dyno.veth} gone)" in world.said(dyno)
        assert dyno.veth in world.kernel.links

    run(world, test)


def test_a_removed_namespace_is_seen_too(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("sleep 30")
        await world.launch(dyno)
        world.kernel.namespaces.discard(dyno.netns)
        world.kernel.links.discard(dyno.veth)
        await world.supervisor.health.check()
        assert (
            f"Error: the dyno's network namespace {dyno.netns} and veth {dyno.veth} were "
            "removed by someone else; stopping all processes with SIGKILL"
        ) in world.said(dyno)

    run(world, test)


def test_an_oom_kill_is_r15_and_the_dyno_restarts(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("sleep 30", size="standard-1x")
        await world.launch(dyno)
        watch = world.supervisor.memory
        world.kernel.usage[dyno.netns] = cgroup.Usage(memory=1 << 20, oom_kills=0)
        for _ in range(watch.slices):  # a whole interval: every dyno's turn came
            await watch.sample()
        assert "signal SIGKILL" not in world.kernel.operations(dyno.netns)
        world.kernel.usage[dyno.netns] = cgroup.Usage(memory=1 << 20, oom_kills=1)
        for _ in range(watch.slices):
            await watch.sample()
        said = world.said(dyno)
        assert any(line.startswith("Error R15 (Memory quota vastly exceeded)") for line in said)
        assert "signal SIGKILL" in world.kernel.operations(dyno.netns)
        await until(lambda: (row := world.row(dyno)) is not None and row.restarts == 1)
        await until(lambda: world.kernel.operations(dyno.netns).count("spawn") == 2)

    run(world, test)


def test_a_detached_dyno_that_exits_0_at_once_gets_a_note_on_its_command(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("exit 0")
        await world.launch(dyno)
        await until(lambda: any("keep running" in line for line in world.said(dyno)))
        said = world.said(dyno)
        exited = said.index("Process exited with status 0")
        assert "Its command was read as: /bin/sh -c 'exit 0'" in said[exited + 1]
        await world.supervisor.stop(dyno)

    run(world, test)
