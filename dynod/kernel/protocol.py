"""What the control side asks of the kernel for one dyno: the seam between the supervisor and
the machine. kernel/host.py's Kernel is the real one; kernel/fake.py an in-memory one that lets
the supervisor's logic (backoff, stop order, crashes, health, R15) be tested without root."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from dynod.kernel import firewall
from dynod.state.store import Dyno
from netns import cgroup


class KernelSide(Protocol):
    async def attach(self, dyno: Dyno, live: Callable[[], Iterable[Dyno]]) -> None:
        """Network and firewall elements for the dyno; live() gives every dyno, for the
        firewall to be rebuilt from if it refuses (changed behind our back)."""
        ...

    async def detach(self, dyno: Dyno) -> None: ...

    async def rebuild(self, dyno: Dyno) -> None: ...

    def web(self, dyno: Dyno) -> firewall.WebTarget | None: ...

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None: ...

    async def spawn(
        self, dyno: Dyno, env: Mapping[str, str], output_path: str, ipv6: bool = True
    ) -> subprocess.Popen[bytes]: ...

    async def signal_inside(self, dyno: Dyno, sig: signal.Signals) -> int: ...

    async def kill_inside(self, dyno: Dyno) -> None: ...

    async def pids_inside(self, dyno: Dyno) -> list[int]: ...

    def removed_objects(self, dyno: Dyno) -> list[str]: ...

    def cgroup_usage(self, dyno: Dyno) -> cgroup.Usage | None: ...
