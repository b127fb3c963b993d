"""The composition root: takes the host (claim.py), builds every part of the daemon with its
dependencies ready, and runs the daemon and its API until SIGINT/SIGTERM.

The API knows the services; the daemon knows neither the API (it is handed the API's listen())
nor the operations (the services'): it starts, stops and reconciles."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence

from dynod.api.endpoints import Services
from dynod.api.server import ApiServer, socket_group
from dynod.claim import Claim
from dynod.config import Config
from dynod.control.apps import AppService
from dynod.control.configvars import ConfigService
from dynod.control.dynos import DynoService
from dynod.control.formation import FormationService
from dynod.control.routing import RoutePublisher
from dynod.control.spaces import SpaceService
from dynod.control.status import StatusReport
from dynod.control.supervisor import Supervisor
from dynod.daemon import Daemon
from dynod.dns.registry import Registry
from dynod.dns.server import DnsServer
from dynod.errors import DynodError
from dynod.inspect.service import InspectService
from dynod.kernel.host import Kernel
from dynod.logs.book import LogBook
from dynod.router.limits import raise_open_file_limit
from dynod.router.routes import RouteChange, RouteTable
from dynod.router.server import Router
from dynod.router.workers import AnyRouter, RouterWorkers
from dynod.rules import names
from dynod.state.store import State
from dynod.trace.service import TraceService
from netns import record


async def serve(config: Config) -> None:
    """`dynod daemon`: start, wait for SIGINT or SIGTERM, shut down."""
    # The kernel thread and the event loop hand the GIL to each other many times per dyno;
    # Python's default 5 ms switch interval would add up to that much to every handoff.
    sys.setswitchinterval(0.0005)
    raise_open_file_limit()  # systemd's default soft limit, 1,024, is too few (issue 7)
    stop = asyncio.Event()
    # Handlers first: a SIGTERM during start-up still ends in shutdown(), which removes
    # whatever start-up had made by then.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    claim = Claim.take(config)  # refused: nothing was made
    try:
        daemon, services = build(config, claim, loop)
    except BaseException:
        claim.release()
        raise
    api = ApiServer(services)
    try:
        # what start-up does is kept (bounded) for `dynod explain daemon`
        with record.recording(services.startup):
            await daemon.start(lambda: api.start(config.socket, socket_group(config.socket_group)))
    except BaseException:
        await _close(api, daemon, stop_dynos=False)
        raise
    services.formation.start()  # after reconcile: converges what a killed daemon left half done
    try:
        await stop.wait()
    finally:
        await services.formation.close()
        await _close(api, daemon, stop_dynos=True)


def _router(config: Config, kernel: Kernel, log: LogBook, user: int | None) -> AnyRouter:
    def emit(text: str, app: str | None) -> None:
        log.emit(app, "heroku[router]", text)

    if config.router_workers > 0:
        return RouterWorkers(
            emit,
            count=config.router_workers,
            user=user,
            # with a user of their own, their sockets need no mark (nor the capability for it)
            socket_mark=None if user is not None else kernel.layout.router_mark,
            log_batch=lambda items: log.emit_many("heroku[router]", items),
            say=lambda text: log.emit(None, "dynod", text),
        )
    # no app until the first table is pushed
    return Router(RouteTable().resolve, emit, socket_mark=kernel.layout.router_mark)


def _pusher(router: AnyRouter) -> Callable[[RouteTable, Sequence[RouteChange]], None]:
    """Worker processes are sent what changed; a router in the daemon takes the table."""
    if isinstance(router, RouterWorkers):
        return router.update
    return lambda table, _changes: router.update(table)


def build(config: Config, claim: Claim, loop: asyncio.AbstractEventLoop) -> tuple[Daemon, Services]:
    """Every part, whole: the daemon, and the services the API calls. Nothing here touches the
    kernel yet (Daemon.start does)."""
    state = State(config.state_dir)
    # the user id the router's workers run as (claim.py; None: no workers)
    router_user = claim.router_user.uid if claim.router_user is not None else None
    log = LogBook(f"{config.state_dir}/dynod.log", echo=sys.stderr if config.echo_logs else None)
    kernel = Kernel(
        config.prefix,
        config.cidr,
        config.resolv_dir,
        config.hosts_dir,
        # from the kernel thread: the log belongs to the event loop
        say=lambda text: loop.call_soon_threadsafe(log.emit, None, "dynod", text),
        shard_ports=config.shard_ports,
        router_user=router_user,
    )
    resolvers = upstreams(config)
    dns = DnsServer(
        resolvers,
        timeout=config.dns_timeout,
        # called from the DNS server's threads: the log belongs to the event loop
        log=lambda text: loop.call_soon_threadsafe(log.emit, None, "dynod", f"dns: {text}"),
    )
    registry = Registry(state, dns, kernel.space_network)
    router = _router(config, kernel, log, router_user)
    routes = RoutePublisher(state, kernel.space_network, _pusher(router))
    supervisor = Supervisor(state, kernel, log, config, registry, on_change=routes.dyno_changed)
    admin = asyncio.Lock()  # spaces and apps: see control/admin.py
    spaces = SpaceService(
        state, kernel, dns, registry, router, routes, log, resolvers, admin, supervisor.networks
    )
    apps = AppService(state, spaces, supervisor, registry, routes, log, admin)
    dynos = DynoService(config, claim, kernel, state, supervisor, routes)
    formation = FormationService(config, state, dynos, supervisor, log)
    status = StatusReport(config, kernel, dns, router, resolvers)
    daemon = Daemon(
        config, claim, kernel, state, log, dns, router, routes, supervisor, spaces, dynos
    )
    inspect = InspectService(state, kernel, supervisor.networks, registry)
    config_vars = ConfigService(state, supervisor, log)
    traces = TraceService(state, kernel, lambda: router.port)
    services = Services(spaces, apps, dynos, status, log, inspect, config_vars, traces, formation)
    return daemon, services


async def _close(api: ApiServer, daemon: Daemon, stop_dynos: bool) -> None:
    """The API first: no new request while the dynos stop."""
    await api.close()
    await daemon.shutdown(stop_dynos=stop_dynos)


def upstreams(config: Config) -> list[tuple[str, int]]:
    """--upstream, else the nameservers of the host's /etc/resolv.conf."""
    if config.upstreams:
        return [names.parse_upstream(text) for text in config.upstreams]
    found = []
    for text in host_nameservers():
        with contextlib.suppress(DynodError):  # e.g. `nameserver 0.0.0.0`: unusable, skip
            found.append(names.parse_upstream(text))
    return found


def host_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The IPv4 nameservers of the host's resolv.conf (read, never changed)."""
    found = []
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver" and ":" not in fields[1]:
                found.append(fields[1])
    return found
