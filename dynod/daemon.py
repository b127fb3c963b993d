"""The root daemon: owns every kernel object, the state, the router and the API.

Start-up order matters: take the locks, open the state, reconcile the kernel with it (adopt live
dynos, clean dead ones and anything the state does not know), re-apply the firewall, and only
then listen. Shutdown (SIGTERM, SIGINT) stops every dyno and removes everything dynod made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from dynod.api.requests import RunRequest
from dynod.claim import Claim
from dynod.config import Config
from dynod.control import launch, networks
from dynod.control.reconcile import reconcile
from dynod.control.supervisor import Supervisor
from dynod.dns.registry import FEATURE, Registry
from dynod.dns.server import DnsServer
from dynod.errors import DynodError, NotFound
from dynod.kernel import processes
from dynod.kernel.host import Kernel
from dynod.logs.book import LogBook
from dynod.router.routes import Backend, RouteTable
from dynod.router.server import Router
from dynod.rules import names, sizes, spaces
from dynod.rules.names import DNS_PORT, INTERNAL_ROUTER_PORT
from dynod.state.store import App, Dyno, Space, State
from netns import nfevents

# seconds between checks of dynod's nftables tables when no nftables event came (a backstop:
# every commit by another process is an event, and is checked at once)
FIREWALL_CHECK = 10.0
T = TypeVar("T")


def _administrative(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run under the daemon's admin lock (creating and destroying spaces and apps)."""

    @functools.wraps(method)
    async def locked(self: Daemon, *args: Any, **kwargs: Any) -> T:
        async with self._admin:
            return await method(self, *args, **kwargs)

    return locked


class Daemon:
    """Starts, stops and reconciles; built whole by compose.build (nothing in it is None)."""

    def __init__(
        self,
        config: Config,
        claim: Claim,
        kernel: Kernel,
        state: State,
        log: LogBook,
        dns: DnsServer,
        registry: Registry,
        supervisor: Supervisor,
        upstreams: list[tuple[str, int]],
    ) -> None:
        self.config = config
        self.claim = claim
        self.kernel = kernel
        self.names = kernel.names
        self.pool = kernel.pool
        self.state = state
        self.log = log
        self.dns = dns
        self.registry = registry
        self.supervisor = supervisor
        self.upstreams = upstreams  # where DNS forwards names outside .localspace
        self.router = Router(
            self._resolve,
            lambda text, app: log.emit(app, "heroku[router]", text),
            socket_mark=kernel.layout.router_mark,
        )
        self._trusted: dict[str, list[ipaddress.IPv4Network]] = {}  # space -> trusted ranges
        # Creating and destroying spaces and apps wait for one another: a space is never
        # destroyed while an app is being created in it, and two creations never pick one name.
        self._admin = asyncio.Lock()

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
        for warning in await self.kernel.prepare_host():
            self.log.emit(None, "dynod", f"warning: {warning}")
        self.dns.listen(self.kernel.common.address, DNS_PORT)
        # Every space first, the firewall once after reconcile: the tables a killed daemon left
        # stay whole (and correct) until then.
        for space in self.state.spaces():
            await self._open_space(space, starting=True)
        to_stop = await self._reconcile()
        await self.kernel.apply_firewall(self.supervisor.networks.live())
        await self.router.start(self.config.router_host, self.config.router_port)
        await listen()
        self.supervisor.start_loops()
        self.supervisor.background(self._guard_firewall())
        for dyno in to_stop:
            self.supervisor.background(self.supervisor.stop(dyno))
        self.log.emit(
            None,
            "dynod",
            f"daemon ready: api {self.config.socket}, router "
            f"{self.config.router_host}:{self.router.port}, range {self.pool.network}, "
            f"bridge {self.names.bridge}",
        )

    def socket_group(self) -> int | None:
        try:
            return grp.getgrnam(self.config.socket_group).gr_gid
        except KeyError:
            return None

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
        await self._sweep_draining()
        return to_stop

    async def _sweep_draining(self) -> None:
        """A drained /30 is free again once the kernel has destroyed its dyno's veth."""
        draining = self.state.draining()
        if not draining:
            return
        present = await self.kernel.existing_veths()
        self.state.drained([key for key, veth in draining.items() if veth not in present])

    async def _guard_firewall(self) -> None:
        """`nft flush ruleset` or a firewall reload removes dynod's tables (docker/for-linux#1472),
        and anyone may delete a rule or a set element: notice at once (every nftables commit
        by another process is an event), put the whole firewall back from the state, and cut
        the connections that slipped through meanwhile. A slow poll backs the events up."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        foreign: list[nfevents.Commit] = []  # commits by others since the last check
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
            foreign.extend(c for c in source.read() if not c.ours())
            if foreign:
                changed.set()

        if events is not None:
            loop.add_reader(events.fileno(), on_events, events)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), FIREWALL_CHECK)
                changed.clear()
                seen = sorted({str(c) for c in foreign})
                by = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
                foreign.clear()
                await self._check_firewall(by or "none, found by the poll")
        finally:
            if events is not None:
                loop.remove_reader(events.fileno())
                events.close()

    async def _check_firewall(self, by: str) -> None:
        try:
            if await self.kernel.firewall_intact():
                return
            self.log.emit(
                None,
                "dynod",
                "warning: dynod's nftables tables were changed by someone "
                f"else (nft flush ruleset?); re-applying them from the state; commits: {by}",
            )
            cut = await self.kernel.restore_firewall(self.supervisor.networks.live())
            if cut:
                self.log.emit(None, "dynod", f"firewall restored; cut {cut} connections it refuses")
        except Exception as exc:  # noqa: BLE001 - keep guarding
            self.log.emit(None, "dynod", f"error: re-applying the firewall: {exc}")

    # ---------------------------------------------------------------- dynos
    async def run_dyno(self, request: RunRequest, peer_uid: int, peer_gid: int) -> Dyno:
        app = names.check_app(request.app)
        ptype = names.check_process_type(request.type)
        command = request.command
        cwd = os.path.abspath(request.cwd)
        uid, gid = launch.dyno_user(request, peer_uid, peer_gid, self.config.dyno_user)
        env = launch.dyno_env(request.env, uid)
        size = sizes.choose(request.size, self.kernel.cgroups.problem)
        launch.check_can_enter(cwd, uid, gid)
        processes.check_command(command, cwd, env["PATH"])
        await self._sweep_draining()
        # From here to insert_dyno nothing awaits, so concurrent runs cannot pick the same
        # number or /30; an unknown app is created (in the Common Runtime) only once its first
        # dyno has a /30.
        known = self.state.app(app)
        space = known.space if known is not None else ""
        number = names.lowest_free_number(self.state.numbers_taken(app, ptype))
        net = self.kernel.net(space)
        subnet = net.pool.allocate(self.state.slots_unavailable(space))
        if known is None:
            self.state.add_app(App(app))
        dyno_id = self.state.next_dyno_id()
        port = launch.choose_port() if ptype == names.WEB_TYPE else None
        network = networks.allocated(
            self.names.netns(app, ptype, number),
            self.names.veth(dyno_id),
            net.bridge,
            subnet,
            ptype,
            port,
        )
        dyno = self.state.insert_dyno(
            Dyno(
                id=dyno_id,
                app=app,
                type=ptype,
                number=number,
                state="starting",
                slot=subnet.slot,
                ip=network.address,
                port=port,
                pid=None,
                pid_start=None,
                netns=network.netns,
                veth=network.veth,
                command=command,
                cwd=cwd,
                uid=uid,
                gid=gid,
                env=env,
                detached=request.detach,
                log_path=os.path.join(self.claim.output_dir, f"{dyno_id}.out"),
                created_at=time.time(),
                space=space,
                size=size,
            )
        )
        await self.supervisor.launch(dyno, network)
        return dyno

    async def stop_dyno(self, dyno: Dyno, grace: float | None = None) -> None:
        await self.supervisor.stop(dyno, grace)

    def background(self, coro: Any) -> None:
        self.supervisor.background(coro)

    async def wait_exit(self, dyno: Dyno) -> int | None:
        return await self.supervisor.wait_exit(dyno)

    @property
    def timings(self) -> dict[int, dict[str, float]]:
        return self.supervisor.timings

    def memory(self, dyno: Dyno) -> dict[str, Any]:
        """What `dynod ps` shows of a dyno's size: its memory now and its quota, in MB."""
        usage = self.supervisor.memory.usage(dyno)
        size = sizes.SIZES.get(dyno.size)
        return {
            "memory_mb": None if usage is None else round(usage.memory / sizes.MB, 1),
            "memory_quota_mb": size.quota_mb if size else None,
        }

    # ---------------------------------------------------------------- queries
    def find(self, app: str, dyno_name: str) -> Dyno:
        ptype, number = names.parse_dyno_name(dyno_name)
        self.app_dynos(app)
        dyno = self.state.find_dyno(app, ptype, number)
        if dyno is None:
            raise NotFound(
                f"no dyno {dyno_name} in app {app}", f"`dynod ps --app {app}` lists its dynos"
            )
        return dyno

    def app_dynos(self, app: str) -> list[Dyno]:
        names.check_app(app)
        if not self.state.app_exists(app):
            raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
        return self.state.dynos(app)

    def _resolve(self, name: str, client: str) -> Sequence[Backend] | None:
        """The router's question: which web dynos serve app `name` to this client?

        The policy is the route table's (dynod.router.routes). Interim step of issue 8: the
        table of this one app is built per request, until the services that own the state
        changes push whole tables with `router.update`."""
        app = self.state.app(name)
        if app is None:
            return None
        cidrs = {app.space: self.kernel.space_network(app.space)[0]} if app.space else {}
        table = RouteTable.build([app], self.state.dynos(name), cidrs, self._trusted)
        return table.resolve(name, client)

    # ---------------------------------------------------------------- DNS
    # ---------------------------------------------------------------- spaces
    async def _open_space(self, space: Space, starting: bool = False) -> None:
        """The space's bridge, firewall entries, DNS and internal router; all or nothing for a
        new space. At start-up a failure undoes nothing: the daemon stops and leaves the
        space's running dynos their network, for the next start to adopt."""
        net = await self.kernel.add_space(
            space.name,
            space.id,
            space.cidr,
            space.nat_ip,
            None if starting else self.supervisor.networks.live(),
        )
        try:
            self.dns.listen(net.address, DNS_PORT)
            self.registry.publish(space.name)
            await self.router.listen(net.address, INTERNAL_ROUTER_PORT)
        except BaseException:
            if not starting:
                await self._close_space(space.name)
            raise
        self._trusted[space.name] = [
            ipaddress.IPv4Network(c) for c in self.state.trusted_ips(space.name)
        ]

    async def _close_space(self, name: str) -> None:
        """The kernel side first: if it fails, the space still works as before."""
        net = self.kernel.spaces.get(name)
        if net is None:
            return
        await self.kernel.remove_space(name, self.supervisor.networks.live())
        await self.router.unlisten(net.address)
        self.registry.forget_space(name)
        self.dns.unlisten(net.address)
        self._trusted.pop(name, None)

    def _space(self, name: str) -> Space:
        names.check_space(name)
        space = self.state.space(name)
        if space is None:
            raise NotFound(f"no space named {name!r}", "`dynod spaces` lists the spaces")
        return space

    @_administrative
    async def create_space(self, name: str, cidr: str | None, nat_ip: str | None) -> dict[str, Any]:
        names.check_space(name)
        if self.state.space(name) is not None:
            raise DynodError(
                f"a space named {name!r} already exists", "choose another name", status=409
            )
        in_use = {f"space {s.name}": ipaddress.IPv4Network(s.cidr) for s in self.state.spaces()}
        in_use["the Common Runtime range"] = self.pool.network
        for host, _ in self.upstreams:
            with contextlib.suppress(ValueError):
                in_use[f"the DNS resolver {host}"] = ipaddress.IPv4Network(host)
        if cidr is None:
            routed = await self.kernel.routed_ranges()
            network = spaces.next_free_range([*in_use.values(), *routed])
        else:
            network = ipaddress.IPv4Network(names.check_space_cidr(cidr))
            spaces.check_range_free(network, in_use)
            await self.kernel.check_range(str(network))
        if nat_ip is None:
            nat_ip = await self.kernel.default_source()
            if nat_ip is None:
                raise DynodError(
                    "this host has no default route, so there is no address for the space's "
                    "outbound traffic to leave from",
                    "give one of the host's addresses with --nat-ip",
                )
        else:
            nat_ip = names.check_nat_ip(nat_ip)
            ranges = [str(n) for n in in_use.values()] + [str(network)]
            spaces.check_nat_address(nat_ip, await self.kernel.local_addresses(), ranges)
        space = self.state.add_space(name, str(network), nat_ip, [spaces.EVERYWHERE])
        try:
            await self._open_space(space)
        except BaseException:
            self.state.remove_space(name)
            raise
        self.log.emit(None, "dynod", f"space {name} created: {network}, NAT address {nat_ip}")
        return self._space_info(space)

    def _space_info(self, space: Space) -> dict[str, Any]:
        net = self.kernel.net(space.name)
        return {
            "name": space.name,
            "cidr": space.cidr,
            "bridge": net.bridge,
            "dns": net.address,
            "router": f"{net.address}:{INTERNAL_ROUTER_PORT}",
            "nat_ip": space.nat_ip,
            "apps": [a.name for a in self.state.apps_in(space.name)],
            "trusted_ips": self.state.trusted_ips(space.name),
        }

    async def spaces_info(self) -> list[dict[str, Any]]:
        return [self._space_info(s) for s in self.state.spaces()]

    @_administrative
    async def destroy_space(self, name: str) -> None:
        self._space(name)
        apps = [a.name for a in self.state.apps_in(name)]
        if apps:
            raise DynodError(
                f"space {name} still has apps: {', '.join(apps)}",
                "destroy them first (`dynod apps:destroy APP`)",
                status=409,
            )
        await self._close_space(name)
        self.state.remove_space(name)
        self.log.emit(None, "dynod", f"space {name} destroyed")

    # ---------------------------------------------------------------- trusted IP ranges
    async def trusted_ips(self, space: str) -> list[str]:
        self._space(space)
        return self.state.trusted_ips(space)

    async def add_trusted_ip(self, space: str, cidr: str) -> list[str]:
        self._space(space)
        cidr = names.check_cidr(cidr, "trusted IP range")
        spaces.check_can_add_trusted(self.state.trusted_ips(space), cidr)
        self.state.add_trusted_ip(space, cidr)
        return self._trusted_changed(space)

    async def remove_trusted_ip(self, space: str, cidr: str) -> list[str]:
        self._space(space)
        cidr = names.check_cidr(cidr, "trusted IP range")
        if not self.state.remove_trusted_ip(space, cidr):
            raise NotFound(
                f"{cidr} is not a trusted IP range of space {space}",
                f"`dynod trusted-ips --space {space}` lists them",
            )
        return self._trusted_changed(space)

    def _trusted_changed(self, space: str) -> list[str]:
        """The router reads the new ranges on its next request."""
        current = self.state.trusted_ips(space)
        self._trusted[space] = [ipaddress.IPv4Network(c) for c in current]
        return current

    # ---------------------------------------------------------------- apps
    def _app(self, name: str) -> App:
        names.check_app(name)
        app = self.state.app(name)
        if app is None:
            raise NotFound(f"no app named {name!r}", "`dynod apps` lists the apps")
        return app

    @_administrative
    async def create_app(
        self, name: str, space: str | None, internal_routing: bool
    ) -> dict[str, Any]:
        names.check_app(name)
        if self.state.app_exists(name):
            raise DynodError(f"an app named {name!r} already exists", "choose another name", 409)
        names.check_routing(space, internal_routing)
        if space:
            self._space(space)
        self.state.add_app(
            App(name, space or "", internal_routing=internal_routing, dns_discovery=bool(space))
        )
        if space:
            self.registry.publish(space)  # APP.herokuapp.localspace resolves from now on
        return self._app_info(self._app(name))

    def _app_info(self, app: App) -> dict[str, Any]:
        return {
            "name": app.name,
            "space": app.space or None,  # the API's Common Runtime is null
            "internal_routing": app.internal_routing,
            "features": {FEATURE: app.dns_discovery},
            "dynos": len(self.state.dynos(app.name)),
        }

    async def apps_info(self) -> list[dict[str, Any]]:
        return [self._app_info(a) for a in self.state.apps()]

    @_administrative
    async def destroy_app(self, name: str) -> dict[str, Any]:
        """Stop its dynos (until none is left: a run may race with the destroy), forget it."""
        app = self._app(name)
        stopped: list[str] = []
        while dynos := self.state.dynos(name):
            await asyncio.gather(*(self.supervisor.stop(d) for d in dynos))
            stopped += [d.name for d in dynos]
        self.state.remove_app(name)
        if app.space:
            self.registry.publish(app.space)
        self.log.emit(name, "dynod", f"app {name} destroyed")
        return {"stopped": stopped}

    # ---------------------------------------------------------------- features
    def _feature(self, app: App) -> dict[str, Any]:
        running = [d for d in self.state.dynos(app.name) if d.state in ("starting", "up")]
        note = (
            "DNS answers change at once; a dyno's HEROKU_DNS_* variables and IPv6 follow at "
            "its next start"
        )
        if running:
            note += f" ({len(running)} dyno(s) running: stop and run them again to apply)"
        return {
            "name": FEATURE,
            "enabled": app.dns_discovery,
            "description": "DNS service discovery: TYPE.APP.app.localspace names for the "
            "space's dynos; turns IPv6 off in the app's dynos",
            "note": note if app.space else "only apps in a Private Space can use it",
        }

    async def features(self, name: str) -> list[dict[str, Any]]:
        return [self._feature(self._app(name))]

    @_administrative
    async def set_feature(self, name: str, feature: str, enabled: bool) -> dict[str, Any]:
        app = self._app(name)
        if feature != FEATURE:
            raise NotFound(f"no feature named {feature!r}", f"the one feature is {FEATURE}")
        if not app.space:
            raise DynodError(
                f"{feature} works only for apps in a Private Space; {name} is in the Common "
                "Runtime",
                "create the app in a space (`dynod apps:create APP --space SPACE`)",
            )
        self.state.set_dns_discovery(name, enabled)
        self.registry.publish(app.space)
        return self._feature(self._app(name))

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "socket": self.config.socket,
            "router": f"{self.config.router_host}:{self.router.port if self.router else 0}",
            "range": str(self.pool.network),
            "bridge": self.names.bridge,
            "dns": self.kernel.common.address,
            "upstreams": [f"{h}:{p}" for h, p in self.upstreams],
            "spaces": len(self.kernel.spaces),
            "dns_stats": self.dns.stats,
            "prefix": self.config.prefix,
            "state_dir": self.config.state_dir,
            "sizes": self._sizes_status(),
        }

    def _sizes_status(self) -> str:
        """How dyno sizes are enforced here (cgroup v1 or v2), or why they are not."""
        tree = self.kernel.cgroups.tree
        if tree is None:
            return f"not enforced: {self.kernel.cgroups.problem}"
        return f"cgroup v{tree.version} below {tree.base('memory')}, default {sizes.DEFAULT}"
