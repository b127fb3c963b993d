"""inspect's build and text rendering look things up through dicts and sets: how many times
they scan a list of the kernel's links, FDB entries, namespaces or the topology's dynos does not
grow with the number of dynos (counted, not timed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dynod.inspect import build, model, text
from dynod.inspect.look import Look
from dynod.kernel.addressing import Pool
from dynod.kernel.facts import describe
from dynod.kernel.machine import Net
from netns.topology import FdbEntry, Link, Namespace, PortFlags, Route

GOOD = PortFlags(isolated=True, learning=False, flood=False)
POOL = Pool("172.16.0.0/16")


class Counted(list[Any]):
    """A list that counts the scans made of it: each iteration and each `in`."""

    scans = 0

    def __iter__(self) -> Iterator[Any]:
        Counted.scans += 1
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        Counted.scans += 1
        return super().__contains__(item)


class CountedDict(dict[str, Any]):
    def items(self) -> Any:
        Counted.scans += 1
        return super().items()


class CountedTuple(tuple[Any, ...]):
    def __iter__(self) -> Iterator[Any]:
        Counted.scans += 1
        return super().__iter__()


def world(n: int) -> tuple[Look, build.Wanted]:
    """n web dynos on one bridge, the kernel exactly as the state says."""
    bridge = Link("dynod0", 4, "bridge", "0a:5a:ac:10:00:01", True, None, None, None)
    links, fdb, dynos, inside = [bridge], [], [], {}
    addresses = [f"{POOL.bridge.gateway}/30"]
    gateways = []
    routed: dict[str, str] = {}
    names: dict[str, list[str]] = CountedDict()  # a space's DNS names
    for i in range(1, n + 1):
        subnet = POOL.subnet(i)
        netns = f"dynod-a.web.{i}"
        net = describe(netns, f"dynod-{i}", Net("", "dynod0", POOL), subnet, 40000 + i)
        links.append(Link(f"dynod-{i}", 100 + i, "veth", subnet.host_mac, True, 4, 2, GOOD))
        fdb.append(FdbEntry(subnet.dyno_mac, 100 + i, True))
        gateways.append(subnet.gateway)
        routed[str(subnet.network)] = subnet.gateway
        eth0 = Link("eth0", 2, "veth", subnet.dyno_mac, True, None, 100 + i, None)
        inside[netns] = Namespace(
            links=[eth0],
            addresses={2: [f"{subnet.address}/30"]},
            routes=[Route("default", subnet.gateway, 2)],
        )
        dynos.append(build.WantedDyno("a", f"web.{i}", "", "up", net))
        names[f"{i}.web.a"] = [subnet.address]
    look = Look(
        links=Counted(links),
        addresses={4: Counted(addresses)},
        gateways={4: Counted(gateways)},
        routed={4: routed},
        fdb={4: Counted(fdb)},
        namespaces=Counted(inside),
        inside=inside,
        tables=["bridge dynod", "inet dynod"],
    )
    wanted = build.Wanted(
        prefix="dynod",
        scope="everything",
        networks=[build.WantedNet("", "dynod0", "172.16.0.0/16", POOL.bridge.gateway, 30, None)],
        dynos=Counted(dynos),
        elements=None,
        dns={"": names},
    )
    return look, wanted


def scans(n: int) -> tuple[int, int, model.Topology]:
    """The scans a build makes, and those rendering its text makes, for n dynos."""
    look, wanted = world(n)
    Counted.scans = 0
    top = build.build(look, wanted)
    built = Counted.scans
    top = model.Topology(
        top.prefix, top.scope, top.bridges, CountedTuple(top.dynos), top.sets, top.dns,
        top.problems,
    )  # fmt: skip
    Counted.scans = 0
    text.render(top)
    return built, Counted.scans, top


def test_build_and_render_scan_no_list_once_per_dyno() -> None:
    small_build, small_render, top = scans(20)
    assert top.problems == ()  # the world is whole: every look-up found what it looked for
    (bridge,) = top.bridges
    assert bridge.addresses[1] == f"{POOL.subnet(1).gateway}/30"
    assert text.address_label(top, bridge, bridge.addresses[1]) == (
        f"{POOL.subnet(1).gateway}/30 (a/web.1 gw)"
    )
    assert top.dynos[0].dns == ("1.web.a",) and len(bridge.ports) == 20
    large_build, large_render, top = scans(200)
    assert top.problems == () and len(top.dynos) == 200
    # The same number of scans for 10 times the dynos: none of them is per dyno.
    assert (large_build, large_render) == (small_build, small_render)
