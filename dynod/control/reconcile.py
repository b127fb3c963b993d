"""After a daemon restart (even one after SIGKILL): make the kernel match the state.

Each dyno of the state gets one decision from what is found of it (decide(), a pure function);
reconcile() carries the decisions out through the kernel side and the supervisor."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Protocol

from dynod.control.health import were_removed
from dynod.control.networks import running
from dynod.control.supervisor import Supervisor
from dynod.kernel import processes
from dynod.kernel.facts import DynoNetwork, Removed
from dynod.kernel.protocol import KernelSide
from dynod.state.store import Dyno, State


class Decision(enum.Enum):
    ADOPT = "adopt"  # alive and whole: watched again
    ADOPT_AND_STOP = "adopt and stop"  # caught mid-stop, or a foreground dyno without its stream
    RESTART = "restart"  # crashed before, its namespace kept: restarted with the usual backoff
    CRASH = "crash"  # alive, but part of its network was removed while no daemon watched
    CLEAN = "clean"  # dead (or unusable): everything of it removed, its row forgotten


def decide(dyno: Dyno, alive: bool, removed: Removed) -> Decision:
    """What to do with one dyno of the state, given whether its process is alive and which of
    its network objects are gone."""
    namespace_exists = not removed.namespace_gone
    if alive and not removed and dyno.state != "crashed":
        # `dynod run` in the foreground lost its stream with the old daemon: the dyno ends.
        if dyno.state == "stopping" or not dyno.detached:
            return Decision.ADOPT_AND_STOP
        return Decision.ADOPT
    if namespace_exists and dyno.state == "crashed":
        return Decision.RESTART
    if alive and dyno.detached and dyno.state in ("starting", "up"):
        return Decision.CRASH
    return Decision.CLEAN


class HostSweep(Protocol):
    """What reconcile asks of the kernel beyond one dyno: remove what no kept dyno owns."""

    async def remove_unknown(self, live: Iterable[DynoNetwork]) -> None: ...

    async def remove_unknown_cgroups(self, groups: Iterable[str]) -> None: ...

    async def restore_gateways(
        self, live: Iterable[DynoNetwork], whole: bool = False
    ) -> dict[str, str]: ...


class ReconcileKernel(KernelSide, HostSweep, Protocol):
    pass


async def reconcile(
    state: State,
    kernel: ReconcileKernel,
    supervisor: Supervisor,
    is_alive: Callable[[Dyno], bool] = lambda d: processes.is_alive(d.pid, d.pid_start),
) -> tuple[list[Dyno], list[Dyno]]:
    """Carry out each dyno's decision. Returns (kept, to_stop): the dynos whose kernel objects
    stay, and those to stop once the daemon has started."""
    kept: list[Dyno] = []
    to_stop: list[Dyno] = []
    for dyno in state.dynos():
        removed = kernel.removed_objects(supervisor.networks.of(dyno))
        decision = decide(dyno, is_alive(dyno), removed)
        if decision in (Decision.ADOPT, Decision.ADOPT_AND_STOP):
            supervisor.adopt(dyno)
            if decision is Decision.ADOPT_AND_STOP:
                to_stop.append(dyno)
        elif decision is Decision.RESTART:
            await kernel.kill_inside(running(dyno))
            supervisor.schedule_restart(dyno)
        elif decision is Decision.CRASH:
            # Its processes are found by pid namespace, not by the (removed) name.
            supervisor.say(
                dyno,
                f"Error: the dyno's {were_removed(removed)} while the daemon was down; "
                "stopping all processes with SIGKILL",
            )
            await kernel.kill_inside(running(dyno))
            supervisor.say(dyno, f"State changed from {dyno.state} to crashed")
            state.update_dyno(dyno, state="crashed")
            supervisor.schedule_restart(dyno)
        else:
            supervisor.say(dyno, "Cleaned up after daemon restart")
            await kernel.kill_inside(running(dyno))
            await supervisor.teardown(dyno)
            supervisor.forget(dyno)
            continue
        kept.append(dyno)
    networks = [supervisor.networks.of(d) for d in kept]
    await kernel.remove_unknown(networks)
    await kernel.remove_unknown_cgroups(d.netns for d in kept)  # a cgroup is named as its netns
    # those that cannot be put back are the health check's to say and try again (its first look
    # is at every dyno)
    restored = await kernel.restore_gateways(networks, whole=True)
    for dyno in kept:
        if restored.get(dyno.netns) == "":
            supervisor.say(
                dyno,
                "Warning: the dyno's gateway routes were missing or changed at the daemon's "
                "start; put back",
            )
    return kept, to_stop
