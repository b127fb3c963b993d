"""The root daemon: starts, stops and reconciles. Every operation on spaces, apps and dynos is
a service's (control/spaces.py, apps.py, dynos.py); compose.py builds the parts whole.

Start-up order matters: take the locks, open the state, reconcile the kernel with it (adopt live
dynos, clean dead ones and anything the state does not know), re-apply the firewall, and only
then listen. Shutdown (SIGTERM, SIGINT) stops every dyno and removes everything dynod made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dynod.claim import Claim
from dynod.config import Config
from dynod.control import shard_setting
from dynod.control.dynos import DynoService
from dynod.control.guard import CommitLedger
from dynod.control.reconcile import reconcile
from dynod.control.routing import RoutePublisher
from dynod.control.spaces import SpaceService
from dynod.control.supervisor import Supervisor
from dynod.dns.server import DnsServer
from dynod.kernel.host import Kernel
from dynod.logs.book import LogBook
from dynod.router.workers import AnyRouter
from dynod.rules.names import DNS_PORT
from dynod.state.store import Dyno, State
from netns import nfevents

# seconds between checks of dynod's nftables tables when no nftables event came (a backstop:
# every commit by another process is an event, and is checked at once)
FIREWALL_CHECK = 10.0


@dataclass(frozen=True)
class Daemon:
    """Starts, stops and reconciles; built whole by compose.build (nothing in it is None)."""

    config: Config
    claim: Claim
    kernel: Kernel
    state: State
    log: LogBook
    dns: DnsServer
    router: AnyRouter
    routes: RoutePublisher  # pushes the route table to the router
    supervisor: Supervisor
    spaces: SpaceService  # opened at start-up
    dynos: DynoService  # their drained /30s swept at start-up

    # ---------------------------------------------------------------- start and stop
    async def start(self, listen: Callable[[], Awaitable[None]]) -> None:
        """Everything up, reconciled with what the kernel has; listen() opens the API (built by
        compose.py: the daemon does not know it) once the router is up."""
        if self.claim.made_private:
            self.log.emit(
                None,
                "dynod",
                f"made {len(self.claim.made_private)} file(s) and directories under "
                f"{self.config.state_dir} readable by root only (an older dynod left them open)",
            )
        shard_setting.keep(self.config.state_dir, self.config.shard_ports, len(self.state.dynos()))
        for warning in await self.kernel.prepare_host():
            self.log.emit(None, "dynod", f"warning: {warning}")
        self.dns.listen(self.kernel.common.address, DNS_PORT)
        # Every space first, the firewall once after reconcile: the tables a killed daemon left
        # stay whole (and correct) until then.
        await self.spaces.open_all()
        to_stop = await self._reconcile()
        await self.kernel.apply_firewall(self.supervisor.networks.live())
        self.routes.publish()  # what reconcile found up is served as soon as the router is
        await self.router.start(self.config.router_host, self.config.router_port)
        await listen()
        self.supervisor.start_loops()
        if self.config.firewall_guard:
            self.supervisor.background(self._guard_firewall())
        for dyno in to_stop:
            self.supervisor.background(self.supervisor.stop(dyno))
        self.log.emit(
            None,
            "dynod",
            f"daemon ready: api {self.config.socket}, router "
            f"{self.config.router_host}:{self.router.port}, range {self.kernel.pool.network}, "
            f"bridge {self.kernel.names.bridge}",
        )

    async def shutdown(self, stop_dynos: bool = True) -> None:
        """Stop every dyno and remove what this daemon made.

        After a failed start (stop_dynos=False) running dynos are left alone, with the kernel
        objects they need, for the next start to adopt: a daemon that cannot start must not
        take down what runs."""
        self.log.emit(None, "dynod", "shutting down: stopping every dyno")
        await self.router.close()
        self.dns.close()
        keep = not stop_dynos and bool(self.state.dynos())
        if stop_dynos:
            await asyncio.gather(
                *(self.supervisor.stop(d) for d in self.state.dynos()),
                return_exceptions=True,
            )
        await self.supervisor.close()
        if self.kernel.touched and not keep:
            await self.kernel.remove_host_objects()
        self.kernel.close()
        self.log.emit(None, "dynod", "stopped")
        self.log.close()
        self.state.close()
        self.claim.release()

    # ---------------------------------------------------------------- reconcile
    async def _reconcile(self) -> list[Dyno]:
        """Make the kernel match the state after a restart (control/reconcile.py); the dynos to
        stop once started."""
        _, to_stop = await reconcile(self.state, self.kernel, self.supervisor)
        await self.dynos.sweep_draining()
        return to_stop

    async def _guard_firewall(self) -> None:
        """`nft flush ruleset` or a firewall reload removes dynod's tables (docker/for-linux#1472),
        and anyone may delete a rule or a set element: notice at once (every nftables commit
        by another process is an event), put the whole firewall back from the state, and cut
        the connections that slipped through meanwhile. A slow poll backs the events up; it
        reads the tables only when a commit happened that it did not see, or was not ours
        (control/guard.py)."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        # what was committed since the last check (control/guard.py)
        ledger = CommitLedger(trusted=nfevents.pids_are_global())
        try:
            events: nfevents.NftEvents | None = nfevents.NftEvents()
        except OSError as exc:
            self.log.emit(
                None,
                "dynod",
                f"warning: no nftables events ({exc}); the firewall is checked every "
                f"{FIREWALL_CHECK:g} s only",
            )
            events = None

        def on_events(source: nfevents.NftEvents) -> None:
            if ledger.saw(source.read()):
                changed.set()

        def answered(taken: list[nfevents.Commit]) -> list[nfevents.Commit]:
            """The foreign commits a restore answers: those the check started for, and those
            that came while it read the tables (its reading may have seen them too)."""
            if events is not None:
                on_events(events)
            return taken + ledger.more()

        if events is not None:
            loop.add_reader(events.fileno(), on_events, events)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), FIREWALL_CHECK)
                changed.clear()
                current = await self._generation()
                if events is not None and current is not None:
                    on_events(events)  # every commit up to `current` is in the socket by now
                    if ledger.unchanged(current):
                        continue  # every commit since the last check was ours
                right = await self._check_firewall(functools.partial(answered, ledger.take()))
                ledger.checked(current, right)
        finally:
            if events is not None:
                loop.remove_reader(events.fileno())
                events.close()

    async def _generation(self) -> int | None:
        """The ruleset's generation now; None when the kernel would not say."""
        try:
            return await self.kernel.nft_generation()
        except OSError:
            return None

    async def _check_firewall(self, commits: Callable[[], list[nfevents.Commit]]) -> bool:
        """Whether the tables were right, or were made right again. commits(): the foreign
        ones the check answers, for the log."""
        try:
            if await self.kernel.firewall_intact():
                return True
            seen = sorted({str(c) for c in commits()})
            by = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
            by = by or "none, found by the poll"
            self.log.emit(
                None,
                "dynod",
                "warning: dynod's nftables tables were changed by someone "
                f"else (nft flush ruleset?); re-applying them from the state; commits: {by}",
            )
            cut = await self.kernel.restore_firewall(self.supervisor.networks.live())
            # 0 when conntrack was off meanwhile (no table needed it): the restored rules then
            # refuse the window's connections at their next packet all the same
            self.log.emit(None, "dynod", f"firewall restored; cut {cut} connections it refuses")
            return True
        except Exception as exc:  # noqa: BLE001 - keep guarding
            self.log.emit(None, "dynod", f"error: re-applying the firewall: {exc}")
            return False
