"""A running dyno whose network someone removed (`ip link del VETH`, `ip netns delete NS`) is
a crashed dyno: killed, then restarted on a rebuilt network like any crash."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dynod.control.networks import Networks, running
from dynod.control.say import Say
from dynod.kernel.facts import Removed
from dynod.kernel.protocol import KernelSide
from dynod.state.store import Dyno, State


def were_removed(removed: Removed) -> str:
    """ "veth x was removed"; two of them "... and ... were removed"."""
    gone = removed.described()
    return f"{' and '.join(gone)} {'was' if len(gone) == 1 else 'were'} removed"


class HealthWatch:
    def __init__(
        self,
        state: State,
        kernel: KernelSide,
        networks: Networks,
        say: Say,
        lock: Callable[[int], asyncio.Lock],
    ) -> None:
        """lock(dyno_id) is the dyno's lock, held by whoever starts or stops it."""
        self.state = state
        self.kernel = kernel
        self.networks = networks
        self.say = say
        self.lock = lock
        self._broken: set[int] = set()  # dynos whose network someone removed: being killed

    def forget(self, dyno_id: int) -> None:
        self._broken.discard(dyno_id)

    async def check(self) -> None:
        """Every running dyno's namespace name and veth, from one listing of /run/netns and
        /sys/class/net (not a stat of each, nor each dyno's row: every second, that was O(N) on
        the event loop, 70 ms at 4,000 dynos); a dyno missing one is looked at closer. A dyno
        being started, restarted or stopped (its lock is held) is skipped: its objects come and
        go."""
        for dyno_id in self.kernel.missing_objects(self.state.running_networks()):
            if dyno_id in self._broken or self.lock(dyno_id).locked():
                continue
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state not in ("starting", "up") or not dyno.pid:
                continue
            if self.removed(dyno):
                await self._on_network_removed(dyno.id)

    async def _on_network_removed(self, dyno_id: int) -> None:
        """Someone deleted the dyno's veth or its namespace's name: it can no longer be
        reached, or no longer be found by name. Treat it as a crash: kill every process (found
        by its pid namespace, not by the name), then the exit is handled as any other: a
        detached dyno is restarted with the usual backoff on a rebuilt network (repair), a
        foreground one ends."""
        async with self.lock(dyno_id):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state not in ("starting", "up"):
                return
            removed = self.removed(dyno)
            if not removed:
                return
            self._broken.add(dyno_id)
            self.say(
                dyno,
                f"Error: the dyno's {were_removed(removed)} by someone else; "
                "stopping all processes with SIGKILL",
            )
            await self.kernel.kill_inside(running(dyno))

    async def repair(self, dyno: Dyno) -> None:
        """Before a restart: a network with a removed part is rebuilt whole."""
        self._broken.discard(dyno.id)
        removed = self.removed(dyno)
        if removed:
            self.say(dyno, f"Rebuilding its network ({' and '.join(removed.described())} gone)")
            await self.kernel.rebuild(self.networks.of(dyno))

    def removed(self, dyno: Dyno) -> Removed:
        return self.kernel.removed_objects(self.networks.of(dyno))
