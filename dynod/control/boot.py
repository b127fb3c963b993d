"""A web dyno's boot: up once something listens on its PORT where the router can reach it, R10
if nothing does within the boot timeout (Heroku's)."""

from __future__ import annotations

import time
from collections.abc import Callable

from dynod.config import Config
from dynod.control.networks import running
from dynod.control.say import Say
from dynod.kernel import processes
from dynod.kernel.protocol import KernelSide
from dynod.state.store import Dyno, State


class BootWatch:
    def __init__(
        self,
        state: State,
        kernel: KernelSide,
        config: Config,
        say: Say,
        set_state: Callable[[Dyno, str], None],
    ) -> None:
        self.state = state
        self.kernel = kernel
        self.config = config
        self.say = say
        self.set_state = set_state
        self._booting: set[int] = set()  # web dynos waiting to bind PORT
        self._warned: set[int] = set()  # ...told that they bound an unreachable address

    def add(self, dyno_id: int) -> None:
        self._booting.add(dyno_id)

    def forget(self, dyno_id: int) -> None:
        self._booting.discard(dyno_id)
        self._warned.discard(dyno_id)

    async def check(self) -> None:
        """Web dynos are up once something listens on PORT; R10 if not within boot_timeout."""
        now = time.time()
        for dyno_id in list(self._booting):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state != "starting" or not dyno.pid:
                self._booting.discard(dyno_id)
                continue
            bound = processes.listening_addresses(dyno.pid, dyno.port or 0)
            if processes.reachable_on(bound, dyno.ip):
                self._booting.discard(dyno_id)
                self.set_state(dyno, "up")
            elif bound and dyno_id not in self._warned:
                self._warned.add(dyno_id)
                self.say(
                    dyno,
                    f"Web process listens on {', '.join(sorted(bound))}:{dyno.port}, which the "
                    "router cannot reach: bind 0.0.0.0 (or $HEROKU_PRIVATE_IP)",
                )
            elif dyno.started_at and now - dyno.started_at > self.config.boot_timeout:
                self._booting.discard(dyno_id)
                self.say(
                    dyno,
                    "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within "
                    f"{self.config.boot_timeout:g} seconds of launch",
                )
                self.say(dyno, "Stopping process with SIGKILL")
                await self.kernel.kill_inside(running(dyno))
