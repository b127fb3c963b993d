"""Which dyno or address each end of a trace is (`sushi/web.1`, `host`, `router`, an IP), from
the state and the host's addresses, and the port a probe goes to when none is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dynod.errors import DynodError, NotFound
from dynod.kernel.host import Kernel
from dynod.kernel.machine import Net
from dynod.rules import names
from dynod.rules.names import DNS_PORT, INTERNAL_ROUTER_PORT
from dynod.state.store import Dyno, State
from dynod.trace.spec import HOST, ROUTER, TraceRequest, dyno_name


@dataclass(frozen=True)
class End:
    label: str  # as the reader knows it: sushi/web.1, host, router, 192.0.2.1
    kind: str  # "dyno", "host", "router" or "address"
    address: str | None = None  # None: the host's routing picks it
    netns: str | None = None  # a dyno's namespace; None: the host's
    net: Net | None = None  # a dyno's network
    web_port: int | None = None  # a web dyno's PORT


@dataclass(frozen=True)
class Ends:
    source: End
    target: End
    port: int | None


class EndFinder:
    def __init__(self, state: State, kernel: Kernel, router_port: Callable[[], int]) -> None:
        self.state = state
        self.kernel = kernel
        self.router_port = router_port

    async def find(self, request: TraceRequest) -> Ends:
        local = await self.kernel.local_addresses()
        source = self._end(request.source, "FROM", local)
        if source.kind == "address":
            raise DynodError(
                f"FROM {request.source} is neither a dyno's address nor the host's",
                "trace from a dyno (APP/TYPE.N or its IP), host or router",
            )
        if source.kind == "router" and request.protocol != "tcp":
            raise DynodError(
                "the router only opens TCP connections",
                f"trace tcp from router, or trace {request.protocol} from host",
            )
        target = self._target(self._end(request.target, "TO", local), source)
        if source.kind == "dyno" and target.kind == "dyno" and source.netns == target.netns:
            raise DynodError(
                f"FROM and TO are the same dyno, {source.label}: the packet would never leave "
                "its namespace",
                "trace to another dyno, host, router or an address",
            )
        return Ends(source, target, self._port(request, target, source))

    def _end(self, word: str, which: str, local: set[str]) -> End:
        if word in (HOST, ROUTER):
            return End(word, word)
        named = dyno_name(word)
        if named is not None:
            return self._dyno_end(self._find_dyno(*named), which)
        for dyno in self.state.dynos():
            if dyno.ip == word:
                return self._dyno_end(dyno, which)
        if word in local:
            return End(f"host ({word})", "host", address=word)
        return End(word, "address", address=word)

    def _find_dyno(self, app: str, dyno_label: str) -> Dyno:
        ptype, number = names.parse_dyno_name(dyno_label)
        if not self.state.app_exists(app):
            raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
        dyno = self.state.find_dyno(app, ptype, number)
        if dyno is None:
            raise NotFound(
                f"no dyno {dyno_label} in app {app}", f"`dynod ps --app {app}` lists its dynos"
            )
        return dyno

    def _dyno_end(self, dyno: Dyno, which: str) -> End:
        label = f"{dyno.app}/{dyno.name}"
        if dyno.state != "up":
            raise DynodError(
                f"{which} {label} is {dyno.state}: it has no running network to trace "
                f"{'from' if which == 'FROM' else 'to'}",
                "wait until `dynod ps` shows it up (a crashed dyno restarts by itself), or "
                "trace another dyno",
                status=409,
            )
        net = self.kernel.net(dyno.space)
        web = dyno.port if dyno.type == names.WEB_TYPE else None
        return End(label, "dyno", dyno.ip, dyno.netns, net, web)

    @staticmethod
    def _target(target: End, source: End) -> End:
        """`host` and `router` as seen from a dyno: its bridge's address, where dynod's DNS
        and a space's router listen."""
        if target.kind not in ("host", "router") or target.address is not None:
            if target.kind == "host" and source.kind != "dyno":
                raise _both_host()
            return target
        if source.net is None:
            raise _both_host()
        return End(target.label, target.kind, source.net.address, net=source.net)

    def _port(self, request: TraceRequest, target: End, source: End) -> int | None:
        if request.protocol == "icmp" or request.port is not None:
            return request.port
        if target.web_port is not None:
            return target.web_port
        if target.kind == "router" and source.net is not None:
            return INTERNAL_ROUTER_PORT if source.net.nat_ip else self.router_port()
        if target.kind == "host":
            return DNS_PORT  # the one host service every dyno may use
        raise DynodError(
            f"which port of {target.label}? It is not a web dyno (it has no PORT)",
            f"give one: dynod trace {request.source} {request.target} {request.protocol} 8080",
        )


def _both_host() -> DynodError:
    return DynodError(
        "FROM and TO are both the host: the packet would never leave it",
        "trace between a dyno and the host (or router), or between two dynos",
    )
