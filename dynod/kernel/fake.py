"""An in-memory KernelSide (kernel/protocol.py) for unit tests that run without root.

Namespaces, veths and web elements are names in sets; the processes are real but plain: the
command runs as `/bin/sh -c COMMAND` in its own session, as the test's own user, in no
namespace, with the output appended to the dyno's output file. So exits, signals, pidfds and
the output reading of the supervisor work as with the real kernel, and each call is recorded
(with the dyno's state in the state store at that moment) for tests of ordering."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dynod.kernel import firewall
from dynod.kernel.host import Kernel
from dynod.kernel.protocol import KernelSide
from dynod.state.store import Dyno
from netns import cgroup


@dataclass
class FakeKernel:
    """What a dyno would have on the machine, kept in sets; `calls` is the log of requests."""

    state_of: Callable[[Dyno], str | None] = lambda dyno: dyno.state
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    namespaces: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    web_elements: set[firewall.WebTarget] = field(default_factory=set)
    usage: dict[int, cgroup.Usage] = field(default_factory=dict)
    sessions: dict[int, int] = field(default_factory=dict)  # dyno id -> its session's id
    fail_spawn: str = ""  # a reason to refuse the next spawns with

    def _record(self, what: str, dyno: Dyno) -> None:
        self.calls.append((what, dyno.name, self.state_of(dyno)))

    def operations(self, dyno_name: str) -> list[str]:
        """The requests made for one dyno, in order."""
        return [what for what, name, _ in self.calls if name == dyno_name]

    async def attach(self, dyno: Dyno, live: Callable[[], Iterable[Dyno]]) -> None:
        self._record("attach", dyno)
        self.namespaces.add(dyno.netns)
        self.links.add(dyno.veth)
        web = self.web(dyno)
        if web is not None:
            self.web_elements.add(web)

    async def detach(self, dyno: Dyno) -> None:
        self._record("detach", dyno)
        self.namespaces.discard(dyno.netns)
        self.links.discard(dyno.veth)
        web = self.web(dyno)
        if web is not None:
            self.web_elements.discard(web)

    async def rebuild(self, dyno: Dyno) -> None:
        self._record("rebuild", dyno)
        self.namespaces.add(dyno.netns)
        self.links.add(dyno.veth)

    def web(self, dyno: Dyno) -> firewall.WebTarget | None:
        return Kernel.web(dyno)  # the one rule of what a web element is

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
        self.web_elements.discard(old)
        self.web_elements.add(new)

    async def spawn(
        self, dyno: Dyno, env: Mapping[str, str], output_path: str, ipv6: bool = True
    ) -> subprocess.Popen[bytes]:
        self._record("spawn", dyno)
        if self.fail_spawn:
            raise OSError(self.fail_spawn)
        with open(output_path, "ab") as out:
            popen = subprocess.Popen(
                ["/bin/sh", "-c", dyno.command],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.sessions[dyno.id] = popen.pid
        return popen

    async def signal_inside(self, dyno: Dyno, sig: signal.Signals) -> int:
        self._record(f"signal {sig.name}", dyno)
        pids = self._pids(dyno)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    async def kill_inside(self, dyno: Dyno) -> None:
        await self.signal_inside(dyno, signal.SIGKILL)

    async def pids_inside(self, dyno: Dyno) -> list[int]:
        return self._pids(dyno)

    def _pids(self, dyno: Dyno) -> list[int]:
        """The live (not zombie) processes of the dyno's session: `pgrep -s SID`."""
        session = self.sessions.get(dyno.id)
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

    def removed_objects(self, dyno: Dyno) -> list[str]:
        removed = []
        if dyno.netns not in self.namespaces:
            removed.append(f"network namespace {dyno.netns}")
        if dyno.veth not in self.links:
            removed.append(f"veth {dyno.veth}")
        return removed

    def cgroup_usage(self, dyno: Dyno) -> cgroup.Usage | None:
        return self.usage.get(dyno.id) if dyno.size else None

    # What reconcile asks beyond one dyno (control/reconcile.py's HostSweep).
    async def remove_unknown(self, live: Iterable[Dyno]) -> None:
        kept = list(live)
        self.namespaces &= {d.netns for d in kept}
        self.links &= {d.veth for d in kept}
        self.calls.append(("remove unknown", ",".join(sorted(d.name for d in kept)), None))

    async def remove_unknown_cgroups(self, live: Iterable[Dyno]) -> None:
        self.usage = {i: u for i, u in self.usage.items() if i in {d.id for d in live}}

    async def restore_gateways(self, live: Iterable[Dyno]) -> None:
        # The fake has no addresses to lose: only the request is recorded.
        self.calls.append(("restore gateways", ",".join(sorted(d.name for d in live)), None))


def _conforms(fake: FakeKernel) -> KernelSide:
    """mypy checks here that the fake is a KernelSide."""
    return fake
