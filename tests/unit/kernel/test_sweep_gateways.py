"""kernel/sweep.py missing_gateways, against a route table held here: which dynos miss a
gateway route or have a /30 with another source, and which listing it reads. No root needed."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

from dynod.kernel import sweep
from dynod.kernel.addressing import Subnet
from dynod.kernel.facts import DynoNetwork
from netns.rtnl import (
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    RTN_LOCAL,
    RTN_UNICAST,
    RTPROT_BOOT,
    RTPROT_STATIC,
    Route,
)


def dyno(n: int, bridge_index: int) -> DynoNetwork:
    """Dyno n on shard `bridge_index - 10` of network dynod0."""
    subnet = Subnet(n, ipaddress.IPv4Network(f"172.16.{n}.0/30"))
    return DynoNetwork(f"ns{n}", f"v{n}", "dynod0", bridge_index - 10, subnet, "0a:00", None)


def gateway_routes(d: DynoNetwork, index: int, source: str | None = None) -> list[Route]:
    """add_gateway's two routes of this dyno, through index (its /30's `src`: source)."""
    net = str(d.subnet.network.network_address)
    return [
        Route(RT_TABLE_LOCAL, RTN_LOCAL, RTPROT_STATIC, d.gateway, 32, index, d.gateway),
        Route(
            RT_TABLE_MAIN,
            RTN_UNICAST,
            RTPROT_STATIC,
            net,
            30,
            index,
            d.gateway if source is None else source,
        ),
    ]


class Table:
    """The host's routes, and which listings were asked for."""

    def __init__(self, routes: list[Route], bridges: int) -> None:
        self.table = routes
        self.names = {
            f"dynod0-{i - 10}" if i > 10 else "dynod0": i for i in range(10, 10 + bridges)
        }
        self.asked: list[Any] = []

    def routes(self) -> list[Route]:
        self.asked.append("all")
        return list(self.table)

    filters = True  # the kernel filters dumps (4.20 and later)

    def routes_through(self, index: int) -> list[Route]:
        self.asked.append(index)
        return [r for r in self.table if r.oif == index]

    def index_of(self, name: str) -> int | None:
        return self.names.get(name)


def machine(table: Table) -> Any:
    net = SimpleNamespace(
        shard_index=lambda shard: 10 + shard if shard < len(table.names) else None
    )
    return SimpleNamespace(
        network_of=lambda bridge: net if bridge == "dynod0" else None,
        worker=SimpleNamespace(rtnl=table),
    )


def test_a_missing_route_or_another_met_first_is_missing_read_bridge_by_bridge() -> None:
    a, b, c, d, e = dyno(1, 10), dyno(2, 10), dyno(3, 11), dyno(4, 11), dyno(5, 11)
    routes = gateway_routes(a, 10) + gateway_routes(b, 10, source="")
    routes += gateway_routes(c, 11)[1:]  # its local route deleted
    routes += gateway_routes(d, 11)
    routes[-1] = routes[-1]._replace(proto=RTPROT_BOOT)  # replaced by hand (proto boot)
    # e's /30 with another before it (prepended), and after it (appended) for a: neither
    # is a's or e's, but only the first is the one a lookup meets
    routes += [gateway_routes(e, 11, source="")[1]] + gateway_routes(e, 11)
    routes.append(gateway_routes(a, 10, source="")[1])
    table = Table(routes, bridges=2)
    assert sweep.missing_gateways(machine(table), [a, b, c, d, e], whole=False) == [b, c, d, e]
    assert table.asked == [10, 11]  # each bridge's own, not the whole table


def test_dynos_on_more_bridges_than_the_filter_pays_for_read_the_whole_table_once() -> None:
    many = [dyno(n, 10 + n) for n in range(sweep.FILTERED_BRIDGES + 3)]
    routes = [r for d in many for r in gateway_routes(d, 10 + d.shard)]
    routes[1] = routes[1]._replace(source="172.16.99.1")
    # the whole table shows what a bridge's own listing cannot: a route to many[1]'s /30
    # through another device (eth0, index 2) before it; a tos route before many[2]'s is never
    # met by the host's lookups (tos 0); a blackhole (no device) before many[3]'s local route
    first_of_1 = routes.index(gateway_routes(many[1], 11)[1])
    routes.insert(first_of_1, gateway_routes(many[1], 2)[1])
    first_of_2 = routes.index(gateway_routes(many[2], 12)[1])
    routes.insert(first_of_2, gateway_routes(many[2], 12, source="")[1]._replace(tos=0x10))
    first_of_3 = routes.index(gateway_routes(many[3], 13)[0])
    routes.insert(first_of_3, Route(RT_TABLE_LOCAL, 6, RTPROT_BOOT, many[3].gateway, 32, 0, ""))
    table = Table(routes, bridges=len(many))
    assert sweep.missing_gateways(machine(table), many, whole=False) == [many[0], many[1], many[3]]
    assert table.asked == ["all"]


def test_a_kernel_that_does_not_filter_dumps_is_read_once_whole() -> None:
    a, b = dyno(1, 10), dyno(2, 11)
    table = Table(gateway_routes(a, 10), bridges=2)
    table.filters = False
    assert sweep.missing_gateways(machine(table), [a, b], whole=False) == [b]
    assert table.asked == ["all"]


def test_a_deleted_bridge_or_a_closed_shard_is_not_read() -> None:
    on_deleted, on_closed, kept = dyno(1, 11), dyno(2, 15), dyno(3, 10)
    table = Table(gateway_routes(kept, 10), bridges=2)
    del table.names["dynod0-1"]
    assert sweep.missing_gateways(machine(table), [on_deleted, on_closed, kept], whole=False) == []
    assert table.asked == [10]


def test_a_look_at_every_dyno_reads_the_whole_table_and_sees_other_devices() -> None:
    """A route prepended through another device (no event tells of it) or one with a `via` is
    not the gateway's: a look at every dyno (whole) reads the whole table, even for one bridge,
    and finds it; a look at one bridge's routes sees the `via` one only."""
    a, b = dyno(1, 10), dyno(2, 10)
    routes = [gateway_routes(a, 2)[1]]  # a's /30 through eth0 (index 2), before a's own
    routes += gateway_routes(a, 10)
    routes += [gateway_routes(b, 10)[0], gateway_routes(b, 10)[1]._replace(gateway="10.9.9.9")]
    table = Table(routes, bridges=1)
    assert sweep.missing_gateways(machine(table), [a, b], whole=True) == [a, b]
    assert table.asked == ["all"]
    table.asked.clear()
    assert sweep.missing_gateways(machine(table), [a, b], whole=False) == [b]
    assert table.asked == [10]
