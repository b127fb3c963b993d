"""Each dyno's network facts (kernel/facts.py), kept by the control side: computed once, at
allocation for a new dyno, or from its row when a restarted daemon adopts it; the kernel side
is handed these, never a row. Whether a dyno is a web dyno (gets a web target) is decided here."""

from __future__ import annotations

from dynod.kernel.addressing import Subnet
from dynod.kernel.facts import DynoNetwork, Running, describe
from dynod.kernel.machine import Net
from dynod.kernel.protocol import KernelSide
from dynod.rules import names
from dynod.state.store import Dyno, State


def web_port(ptype: str, port: int | None) -> int | None:
    """The PORT the router may reach: web dynos only."""
    return port if ptype == names.WEB_TYPE else None


def allocated(
    netns: str, veth: str, net: Net, subnet: Subnet, ptype: str, port: int | None
) -> DynoNetwork:
    """A new dyno's facts, from its allocation (Pool.allocate's /30 in net, and its names)."""
    return describe(netns, veth, net, subnet, web_port(ptype, port))


def running(dyno: Dyno) -> Running:
    return Running(dyno.netns, dyno.pid, dyno.pid_start)


def group(dyno: Dyno) -> str | None:
    """A sized dyno's cgroup (named as its namespace); None: it has none."""
    return dyno.netns if dyno.size else None


class Networks:
    def __init__(self, state: State, kernel: KernelSide) -> None:
        self.state = state
        self.kernel = kernel
        self._facts: dict[int, DynoNetwork] = {}
        # whose gateway each (destination, prefix length) route is: a deleted route names the
        # one dyno to look at (health.py), not all of them
        self._route_owners: dict[tuple[str, int], int] = {}

    def keep(self, dyno_id: int, network: DynoNetwork) -> None:
        self.forget(dyno_id)  # facts it had before (a restart's: the same routes) go whole
        self._facts[dyno_id] = network
        for route in network.gateway_routes:
            self._route_owners[route] = dyno_id

    def forget(self, dyno_id: int) -> None:
        network = self._facts.pop(dyno_id, None)
        if network is not None:
            for route in network.gateway_routes:
                if self._route_owners.get(route) == dyno_id:  # not a newer dyno's on its /30
                    del self._route_owners[route]

    def route_owner(self, destination: str, prefixlen: int) -> int | None:
        """The dyno whose gateway this route is one of (of those whose facts are known)."""
        return self._route_owners.get((destination, prefixlen))

    def known(self, dyno_id: int) -> DynoNetwork | None:
        """The dyno's facts if they were computed already (of()), without its row."""
        return self._facts.get(dyno_id)

    def of(self, dyno: Dyno) -> DynoNetwork:
        """The dyno's facts; for a dyno this daemon did not allocate (adopted, reconciled)
        computed once from its row."""
        known = self._facts.get(dyno.id)
        if known is None:
            net = self.kernel.net(dyno.space)
            known = describe(
                dyno.netns,
                dyno.veth,
                net,
                net.pool.subnet(dyno.slot),
                web_port(dyno.type, dyno.port),
            )
            self.keep(dyno.id, known)
        return known

    def live(self) -> list[DynoNetwork]:
        """Every dyno of the state whose network is open (at start-up spaces open one by one)."""
        found = []
        for dyno in self.state.dynos():
            try:
                found.append(self.of(dyno))
            except KeyError:
                continue
        return found
