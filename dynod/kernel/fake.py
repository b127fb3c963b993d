"""An in-memory KernelSide (kernel/protocol.py) for unit tests that run without root.

Namespaces, veths and web elements are names in sets; the processes are real but plain: the
command runs as `/bin/sh -c COMMAND` in its own session, as the test's own user, in no
namespace, with the output appended to the dyno's output file. So exits, signals, pidfds and
the output reading of the supervisor work as with the real kernel, and each call is recorded
(with the dyno's state in the state store at that moment) for tests of ordering, and every
network fact handed to it, for tests that the facts are the allocation's."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dynod.kernel import firewall
from dynod.kernel.addressing import Pool
from dynod.kernel.facts import NO_PIDS, DynoNetwork, Pids, Removed, Running
from dynod.kernel.machine import Net, bridge_indexes
from dynod.kernel.protocol import KernelSide, Launched, SpawnFailed
from dynod.kernel.sandbox import Launch
from dynod.kernel.stdio import DynoEnds
from netns import cgroup


@dataclass
class FakeKernel:
    """What a dyno would have on the machine, kept in sets; `calls` is the log of requests,
    each with the dyno's namespace name (its key: unique while it lives) and its state then;
    `handed` every network fact it was given, in order."""

    state_of: Callable[[str], str | None] = lambda netns: None
    cidr: str = "10.0.0.0/16"
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    handed: list[tuple[str, DynoNetwork]] = field(default_factory=list)
    namespaces: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    web_elements: set[firewall.WebTarget] = field(default_factory=set)
    usage: dict[str, cgroup.Usage] = field(default_factory=dict)  # cgroup name -> usage
    gateways_lost: set[str] = field(default_factory=set)  # netns whose gateway routes went
    # netns whose gateway routes cannot be put back, with why
    gateways_blocked: dict[str, str] = field(default_factory=dict)
    groups_removed: list[str] = field(default_factory=list)
    sessions: dict[str, int] = field(default_factory=dict)  # netns -> its session's id
    # every session started, also one a later spawn in the same namespace replaced in sessions
    # (a test that marks a running dyno crashed and restarts it): end_sessions ends them all
    started: list[int] = field(default_factory=list)
    fail_spawn: str = ""  # a reason to refuse the next spawns with
    fail_attach: int = 0  # an errno to refuse the next attaches with, as netlink does
    # how many still_starting() questions are answered yes, and a SIGTERM meanwhile dropped,
    # as the kernel drops it for an init with no handler yet
    starting: int = 0

    def __post_init__(self) -> None:
        self.common = Net("", "fake0", Pool(self.cidr))
        self.spaces: dict[str, Net] = {}

    def net(self, key: str) -> Net:
        return self.common if key == "" else self.spaces[key]

    def _record(self, what: str, netns: str) -> None:
        self.calls.append((what, netns, self.state_of(netns)))

    def _hand(self, what: str, dyno: DynoNetwork) -> None:
        self._record(what, dyno.netns)
        self.handed.append((what, dyno))

    def operations(self, netns: str) -> list[str]:
        """The requests made for one dyno, in order."""
        return [what for what, name, _ in self.calls if name == netns]

    async def _attach(self, dyno: DynoNetwork) -> None:
        self._hand("attach", dyno)
        if self.fail_attach:
            raise OSError(self.fail_attach, os.strerror(self.fail_attach))
        self.namespaces.add(dyno.netns)
        self.links.add(dyno.veth)
        if dyno.web is not None:
            self.web_elements.add(dyno.web)

    async def _detach(self, dyno: DynoNetwork) -> None:
        self._hand("detach", dyno)
        self.namespaces.discard(dyno.netns)
        self.links.discard(dyno.veth)
        if dyno.web is not None:
            self.web_elements.discard(dyno.web)

    async def launch(
        self,
        dyno: DynoNetwork,
        live: Callable[[], Iterable[DynoNetwork]],
        how: Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
    ) -> Launched:
        await self._attach(dyno)
        attached_at = time.perf_counter()
        try:
            popen = await self.spawn(how, env, output_path, stdio)
        except Exception as exc:
            raise SpawnFailed(str(exc)) from exc
        return Launched(attached_at, popen)

    async def teardown(self, dyno: DynoNetwork, group: str | None) -> None:
        await self._detach(dyno)
        if group is not None:
            await self.remove_group(group)

    async def remove_group(self, group: str) -> None:
        self.groups_removed.append(group)
        self.usage.pop(group, None)

    async def rebuild(self, dyno: DynoNetwork) -> None:
        self._hand("rebuild", dyno)
        self.namespaces.add(dyno.netns)
        self.links.add(dyno.veth)

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
        self.web_elements.discard(old)
        self.web_elements.add(new)

    async def spawn(
        self,
        how: Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
    ) -> subprocess.Popen[bytes]:
        self._hand("spawn", how.network)
        if self.fail_spawn:
            raise OSError(self.fail_spawn)
        with open(output_path, "ab") as out:
            popen = subprocess.Popen(
                ["/bin/sh", "-c", how.command],
                env=dict(env),
                stdin=subprocess.DEVNULL if stdio is None else stdio.stdin,
                stdout=out if stdio is None else stdio.stdout,
                stderr=out if stdio is None else stdio.stderr,
                start_new_session=True,
            )
        self.sessions[how.network.netns] = popen.pid
        self.started.append(popen.pid)
        return popen

    async def signal_inside(
        self, dyno: Running, sig: signal.Signals, skip: Pids = NO_PIDS, via_init: bool = False
    ) -> list[int]:
        """Every process of the session: what an init that passes the signal on gives too."""
        self._record(f"signal {sig.name}", dyno.netns)
        pids = [pid for pid in self._pids(dyno) if pid not in skip]
        for pid in pids:
            if sig == signal.SIGTERM and self.starting > 0 and pid == dyno.pid:
                continue  # sent, but dropped: an init with no handler yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    async def kill_inside(self, dyno: Running) -> None:
        await self.signal_inside(dyno, signal.SIGKILL)

    async def pids_inside(self, dyno: Running) -> list[int]:
        return self._pids(dyno)

    async def still_starting(self, dyno: Running) -> bool:
        if self.starting > 0:
            self.starting -= 1
            return True
        return False

    def _pids(self, dyno: Running) -> list[int]:
        """The live (not zombie) processes of the dyno's session: `pgrep -s SID`."""
        session = self.sessions.get(dyno.netns)
        if session is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[3]) == session:
                found.append(int(entry))
        return sorted(found)

    def removed_objects(self, dyno: DynoNetwork) -> Removed:
        return Removed(
            None if dyno.netns in self.namespaces else dyno.netns,
            None if dyno.veth in self.links else dyno.veth,
        )

    def missing_objects(self, dynos: list[tuple[int, str, str]]) -> list[int]:
        return [
            i for i, netns, veth in dynos if netns not in self.namespaces or veth not in self.links
        ]

    def removal_events(self) -> None:
        return None

    def cgroup_usage(self, group: str, above: int | None = None) -> cgroup.Usage | None:
        return self.usage.get(group)

    # What reconcile asks beyond one dyno (control/reconcile.py's HostSweep).
    async def remove_unknown(self, live: Iterable[DynoNetwork]) -> None:
        kept = list(live)
        self.namespaces &= {d.netns for d in kept}
        self.links &= {d.veth for d in kept}
        self.calls.append(("remove unknown", ",".join(sorted(d.netns for d in kept)), None))

    async def remove_unknown_cgroups(self, groups: Iterable[str]) -> None:
        keep = set(groups)
        self.usage = {name: u for name, u in self.usage.items() if name in keep}

    def bridge_indexes(self) -> set[int]:
        return bridge_indexes([self.common, *self.spaces.values()])

    async def bridges_up(self) -> dict[str, bool]:
        return {}

    async def missing_gateways(
        self, dynos: list[DynoNetwork], whole: bool = False
    ) -> list[DynoNetwork]:
        return [d for d in dynos if d.netns in self.gateways_lost]

    async def restore_gateways(
        self, live: Iterable[DynoNetwork], whole: bool = False
    ) -> dict[str, str]:
        # Only the request is recorded, and the gateways a test said were lost come back, but
        # those a test said are blocked.
        live = list(live)
        self.calls.append(("restore gateways", ",".join(sorted(d.netns for d in live)), None))
        done = {
            d.netns: self.gateways_blocked.get(d.netns, "")
            for d in live
            if d.netns in self.gateways_lost or d.netns in self.gateways_blocked
        }
        self.gateways_lost -= {netns for netns, why in done.items() if not why}
        return done


def _conforms(fake: FakeKernel) -> KernelSide:
    """mypy checks here that the fake is a KernelSide."""
    return fake
