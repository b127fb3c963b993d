"""What the control side asks of the kernel for one dyno: the seam between the supervisor and
the machine. kernel/host.py's Kernel is the real one; kernel/fake.py an in-memory one that lets
the supervisor's logic (backoff, stop order, crashes, health, R15) be tested without root.

It is handed a dyno's facts (kernel/facts.py: DynoNetwork, Running) and a frozen spawn spec
(sandbox.Launch), never a state row."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from dynod.kernel import firewall
from dynod.kernel.facts import NO_PIDS, DynoNetwork, Pids, Removed, Running
from dynod.kernel.machine import Net
from dynod.kernel.sandbox import Launch
from dynod.kernel.stdio import DynoEnds
from netns import cgroup


class SpawnFailed(Exception):
    """The dyno's network is up, but its process could not be started (the cause chained)."""


@dataclass(frozen=True)
class Launched:
    attached_at: float  # time.perf_counter() when the network was up: the setup's end
    popen: subprocess.Popen[bytes]


class RemovalEvents(Protocol):
    """Deletions of namespace names, links and routes as they happen (netns/removals.py)."""

    broken: bool  # the watch is gone: only listings can tell

    def current(self) -> bool:
        """Still watching what it was opened on (else a new watch is needed)?"""
        ...

    def fileno(self) -> int: ...

    def drain(self) -> bool:
        """Was a name or a link deleted (or were such events lost) since the last drain? Route
        deletions are kept for take_routes()."""
        ...

    def take_routes(self) -> list[tuple[str, int]] | None:
        """The IPv4 routes deleted or replaced since the last take, as (destination, prefix
        length); None: route events were lost."""
        ...

    def take_unaddressed(self) -> set[int]:
        """The devices an IPv4 address was removed from since the last take, by index."""
        ...

    def close(self) -> None: ...


class KernelSide(Protocol):
    def net(self, key: str) -> Net:
        """The network ("" the Common Runtime, else a space's) whose pool /30s come from."""
        ...

    async def launch(
        self,
        dyno: DynoNetwork,
        live: Callable[[], Iterable[DynoNetwork]],
        how: Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
    ) -> Launched:
        """Network and firewall elements, then the process, in one hand-over to the kernel side
        (a first start; live() gives every dyno, for the firewall to be rebuilt from if it
        refuses, changed behind our back): the time the network was up, and the process. A
        spawn's failure is a SpawnFailed (the network is up then: the caller undoes it); the
        network's is raised as it is."""
        ...

    async def teardown(self, dyno: DynoNetwork, group: str | None) -> None:
        """detach(), then remove_group(group) when the dyno is sized, in one hand-over."""
        ...

    async def remove_group(self, group: str) -> None: ...

    async def rebuild(self, dyno: DynoNetwork) -> None: ...

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None: ...

    async def spawn(
        self,
        how: Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
    ) -> subprocess.Popen[bytes]: ...

    async def signal_inside(
        self, dyno: Running, sig: signal.Signals, skip: Pids = NO_PIDS, via_init: bool = False
    ) -> list[int]:
        """sig to every process of the dyno but those in skip (with via_init, those of its pid
        namespace left to its init, which passes it on); those signalled."""
        ...

    async def kill_inside(self, dyno: Running) -> None: ...

    async def still_starting(self, dyno: Running) -> bool:
        """Whether the dyno's first process, the init of its pid namespace, has no SIGTERM
        handler yet: the kernel drops a SIGTERM sent to it now (an init is shielded from what
        it does not handle), and it may not have started its command yet (DYNO_INIT sets its
        trap right after it starts the command)."""
        ...

    async def pids_inside(self, dyno: Running) -> list[int]: ...

    def removed_objects(self, dyno: DynoNetwork) -> Removed: ...

    def missing_objects(self, dynos: list[tuple[int, str, str]]) -> list[int]:
        """Of these (id, netns, veth), the ids whose namespace name or veth is not there, from
        one listing of each for all of them."""
        ...

    def bridge_indexes(self) -> set[int]:
        """The index of every open bridge of every network (shards included). An address
        removed from one (the last one: a shard past 0 has none of its own) flushes every route
        through it, the dynos' gateways too, with no event for theirs (fib_disable_ip)."""
        ...

    async def bridges_up(self) -> dict[str, bool]:
        """Each open bridge of the daemon's: is it up (`ip link show`'s UP)?"""
        ...

    async def missing_gateways(
        self, dynos: list[DynoNetwork], whole: bool = False
    ) -> list[DynoNetwork]:
        """Of these, those whose gateway's local route is not on their bridge (one listing)."""
        ...

    async def restore_gateways(
        self, live: Iterable[DynoNetwork], whole: bool = False
    ) -> dict[str, str]:
        """Their gateways' routes and neighbour entries put back (kernel/sweep.py): those put
        back (""), or that could not be (a route first that cannot be removed: why), by
        namespace. `whole`: from a listing of the whole table (kernel/sweep.py)."""
        ...

    def removal_events(self) -> RemovalEvents | None:
        """A watch of deletions; None where there is none (listings only)."""
        ...

    def cgroup_usage(self, group: str, above: int | None = None) -> cgroup.Usage | None:
        """What a dyno's group holds (netns/cgroup.py usage: with `above`, a bound when it is
        at most that); None without one."""
        ...
