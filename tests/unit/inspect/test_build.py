"""inspect/build.py: a kernel that holds what the state says gives no difference; each way the
kernel can differ (a missing veth or namespace, a stray element, link or namespace, a port with
the wrong flags, a wrong address, a missing FDB entry or route) is flagged."""

from __future__ import annotations

import dataclasses

from dynod.inspect import build
from dynod.inspect.look import Look
from dynod.kernel import firewall
from dynod.kernel.addressing import Pool
from dynod.kernel.facts import describe
from dynod.kernel.machine import Net
from netns.nftables import element_key
from netns.topology import FdbEntry, Link, Namespace, PortFlags, Route

POOL = Pool("172.16.0.0/24")
SUBNET = POOL.subnet(1)
NET = describe("dynod-sushi.web.1", "dynod-1", Net("", "dynod0", POOL), SUBNET, 41234)
GOOD = PortFlags(isolated=True, learning=False, flood=False)


def _wanted(**changes: object) -> build.Wanted:
    own = POOL.bridge
    wanted = build.Wanted(
        prefix="dynod",
        scope="everything",
        networks=[build.WantedNet("", "dynod0", "172.16.0.0/24", own.gateway, 30, None)],
        dynos=[build.WantedDyno("sushi", "web.1", "", "up", NET)],
        elements={
            "bridge ports": {element_key(firewall.port_value(NET.port))},
            "inet web": {element_key(firewall.web_value(NET.web))} if NET.web else set(),
        },
    )
    return dataclasses.replace(wanted, **changes)


def _look() -> Look:
    """What attach() makes for NET, as the kernel would list it."""
    bridge = Link("dynod0", 4, "bridge", "0a:5a:ac:10:00:01", True, None, None, None)
    veth = Link("dynod-1", 7, "veth", SUBNET.host_mac, True, 4, 2, GOOD)
    eth0 = Link("eth0", 2, "veth", SUBNET.dyno_mac, True, None, 7, None)
    lo = Link("lo", 1, "", "00:00:00:00:00:00", True, None, None, None)
    inside = Namespace(
        links=[lo, eth0],
        addresses={1: ["127.0.0.1/8"], 2: [f"{SUBNET.address}/30"]},
        routes=[Route("default", SUBNET.gateway, 2), Route(f"{SUBNET.network}", None, 2)],
    )
    return Look(
        links=[lo, bridge, veth],
        addresses={4: ["172.16.0.1/30"]},
        gateways={4: [SUBNET.gateway]},
        routed={4: {str(SUBNET.network): SUBNET.gateway}},
        fdb={4: [FdbEntry(SUBNET.dyno_mac, 7, True)]},
        namespaces=["dynod-sushi.web.1"],
        inside={"dynod-sushi.web.1": inside},
        sets={
            "bridge ports": [firewall.port_value(NET.port)],
            "inet web": [firewall.web_value(NET.web)] if NET.web else [],
            "inet bridges": ["dynod0"],
        },
        tables=["bridge dynod", "inet dynod"],
    )


def _problems(look: Look, wanted: build.Wanted | None = None) -> list[str]:
    return [str(p) for p in build.build(look, wanted or _wanted()).problems]


def test_a_kernel_as_the_state_says_has_no_difference() -> None:
    top = build.build(_look(), _wanted())
    assert top.problems == ()
    (dyno,) = top.dynos
    assert dyno.address == f"{SUBNET.address}/30"
    assert (dyno.veth_index, dyno.eth0_index) == (7, 2)
    assert dyno.routes[0] == f"default via {SUBNET.gateway} dev eth0"
    (bridge,) = top.bridges
    assert bridge.addresses == ("172.16.0.1/30", f"{SUBNET.gateway}/30")
    (port,) = bridge.ports
    assert (port.dyno, port.peer_index, port.fdb) == ("sushi/web.1", 2, (SUBNET.dyno_mac,))
    sets = {s.name: s.elements for s in top.sets}
    assert sets["ports"] == (f"dynod-1 . {SUBNET.dyno_mac} . {SUBNET.address}",)
    assert sets["web"] == (f"{SUBNET.address} . 41234",)


def test_a_missing_veth_is_flagged() -> None:
    look = _look()
    look.links = [x for x in look.links if x.name != "dynod-1"]
    found = _problems(look)
    assert "missing veth dynod-1: sushi/web.1's; `ip link show dynod-1`" in found


def test_a_missing_namespace_is_flagged() -> None:
    look = _look()
    look.namespaces, look.inside = [], {}
    assert any(p.startswith("missing namespace dynod-sushi.web.1") for p in _problems(look))


def test_a_stray_and_a_missing_set_element_are_flagged() -> None:
    look = _look()
    look.sets["inet web"] = [{"concat": ["172.16.0.66", 9999]}]
    found = _problems(look)
    assert "stray element 172.16.0.66 . 9999: in set inet dynod web" in found
    assert f"missing element {SUBNET.address} . 41234: in set inet dynod web" in found


def test_a_port_with_wrong_flags_is_flagged() -> None:
    look = _look()
    look.links[2] = dataclasses.replace(look.links[2], port=PortFlags(False, True, True))
    (problem,) = _problems(look)
    assert problem.startswith("wrong port dynod-1: isolated off (should be on), learning on")
    assert "flood on (should be off)" in problem


def test_stray_links_namespaces_and_ports_are_flagged() -> None:
    look = _look()
    look.links.append(Link("dynod-9", 12, "veth", "", True, None, 2, None))
    look.links.append(Link("dynod-a", 13, "veth", "", True, 4, 2, GOOD))
    look.links.append(Link("dynods7", 14, "bridge", "", True, None, None, None))
    look.links.append(Link("other-1", 15, "veth", "", True, None, 2, None))  # not ours
    look.namespaces.append("dynod-old.web.1")
    found = _problems(look)
    assert "stray link dynod-9: no dyno of the state owns it" in found
    assert "stray port dynod-a: on dynod0, no dyno owns it" in found
    assert "stray bridge dynods7: no network of the state's" in found
    assert "stray namespace dynod-old.web.1: no dyno of the state's" in found
    assert not any("other-1" in p for p in found)


def test_strays_are_looked_for_only_in_the_whole_view() -> None:
    look = _look()
    look.namespaces.append("dynod-old.web.1")
    assert _problems(look, _wanted(everything=False, scope="app sushi")) == []


def test_a_wrong_address_missing_route_gateway_and_fdb_entry_are_flagged() -> None:
    look = _look()
    inside = look.inside["dynod-sushi.web.1"]
    inside.addresses[2] = ["172.16.0.99/30"]
    inside.routes = []
    look.addresses[4] = ["172.16.0.1/30", "172.16.0.77/30"]
    look.gateways[4] = ["172.16.0.81"]
    look.routed[4] = {"172.16.0.80/30": "172.16.0.81"}
    look.fdb[4] = []
    found = _problems(look)
    assert any(p.startswith("wrong eth0 in dynod-sushi.web.1: has 172.16.0.99/30") for p in found)
    assert any(p.startswith("missing default route in dynod-sushi.web.1") for p in found)
    assert any(p.startswith(f"missing gateway {SUBNET.gateway}: a local route") for p in found)
    assert "stray address 172.16.0.77/30: on dynod0, no dyno of the state's" in found
    assert "stray gateway 172.16.0.81: a local route to dynod0, no dyno's" in found
    shown = f"`ip route show {SUBNET.network} dev dynod0`"
    assert f"missing route {SUBNET.network}: through dynod0; {shown}" in found
    assert "stray route 172.16.0.80/30: through dynod0, no dyno's" in found
    assert any(p.startswith(f"missing fdb entry {SUBNET.dyno_mac}") for p in found)


def test_a_veth_that_is_not_eth0s_peer_is_flagged() -> None:
    look = _look()
    look.links[2] = dataclasses.replace(look.links[2], peer=5)
    assert any(p.startswith("wrong veth dynod-1: is not the peer of eth0") for p in _problems(look))


def test_missing_bridge_and_tables_are_flagged() -> None:
    look = _look()
    look.links = [x for x in look.links if x.name != "dynod0"]
    look.tables, look.sets = [], {}
    found = _problems(look)
    assert "missing bridge dynod0: `ip -d link show dynod0`" in found
    assert "missing table inet dynod: `nft list table inet dynod`" in found


def test_dns_names_go_with_their_dyno() -> None:
    names = {"1.web.sushi.app.localspace": [SUBNET.address], "sushi.herokuapp.localspace": ["x"]}
    wanted = _wanted(dns={"": names})
    (dyno,) = build.build(_look(), wanted).dynos
    assert dyno.dns == ("1.web.sushi.app.localspace",)


def test_an_apps_view_takes_its_neighbours_ports_and_gateways_as_theirs() -> None:
    """--app other: sushi's dyno is on the same bridge; its port and gateway are not strays."""
    shown: list[build.WantedDyno] = []
    wanted = _wanted(dynos=shown, neighbours=_wanted().dynos, everything=False, scope="app other")
    top = build.build(_look(), wanted)
    assert top.problems == ()
    assert top.dynos == ()
    assert [p.dyno for p in top.bridges[0].ports] == ["sushi/web.1"]
    without = build.build(_look(), _wanted(dynos=shown, everything=False))
    assert "stray port dynod-1: on dynod0, no dyno owns it" in [str(p) for p in without.problems]


def test_a_starting_or_stopping_dynos_differences_say_so() -> None:
    look = _look()
    look.namespaces, look.inside = [], {}
    starting = [dataclasses.replace(_wanted().dynos[0], state="starting")]
    (problem,) = [p for p in _problems(look, _wanted(dynos=starting)) if "namespace" in p]
    assert problem.endswith("(it is starting: its network may be unfinished)")
    look.gateways[4], look.routed[4] = [], {}  # its gateway's routes not made yet either
    found = [p for p in _problems(look, _wanted(dynos=starting)) if "gateway" in p or "route" in p]
    assert len(found) == 2, found
    assert all(p.endswith("(it is starting: its network may be unfinished)") for p in found)
    stopping = [dataclasses.replace(_wanted().dynos[0], state="stopping")]
    found = [p for p in _problems(look, _wanted(dynos=stopping)) if "gateway" in p or "route" in p]
    assert len(found) == 2, found
    assert all(
        p.endswith("(it is stopping or restarting: its network may be being taken apart)")
        for p in found
    )
    assert [p for p in _problems(look) if "gateway" in p or "route" in p] == [
        f"missing gateway {SUBNET.gateway}: a local route to dynod0; "
        "`ip route show table local dev dynod0`",
        f"missing route {SUBNET.network}: through dynod0; "
        f"`ip route show {SUBNET.network} dev dynod0`",
    ]  # up: no such words


def test_a_static_route_outside_the_network_s_range_is_someone_else_s() -> None:
    """An administrator's (or systemd-networkd's `[Route]`) static route on the bridge is not
    dynod's to flag; a /30 of the network's range that no dyno has is a stray."""
    look = _look()
    look.routed[4] = {
        str(SUBNET.network): SUBNET.gateway,
        "10.20.0.0/24": "",
        "172.16.0.128/25": "",
        "172.16.0.200/30": "172.16.0.201",
    }
    assert [p for p in _problems(look) if "route" in p] == [
        "stray route 172.16.0.200/30: through dynod0, no dyno's"
    ]


def test_a_dyno_s_route_from_another_source_is_wrong() -> None:
    """Put back by hand without `src GATEWAY`, the host sends to the dyno from another address
    of its own, and the dyno's answers go there."""
    look = _look()
    for source, said in (("", "no src"), ("172.16.0.1", "src 172.16.0.1")):
        look.routed[4] = {str(SUBNET.network): source}
        assert [p for p in _problems(look) if "route" in p] == [
            f"wrong route {SUBNET.network}: through dynod0 has {said}, the state says src "
            f"{SUBNET.gateway}; `ip route show {SUBNET.network} dev dynod0`"
        ]


def test_an_empty_shard_the_daemon_holds_open_is_a_bridge_of_its_network_not_a_stray() -> None:
    """A shard whose last dyno left stays until the next start (kernel/shards.py): inspect
    draws it, without ports, and flags nothing; a shard bridge the daemon does not hold is
    still a stray."""
    look = _look()
    look.links.append(Link("dynod0-1", 20, "bridge", "", True, None, None, None))
    look.links.append(Link("dynod0-2", 21, "bridge", "", True, None, None, None))
    (net,) = _wanted().networks
    wanted = _wanted(networks=[dataclasses.replace(net, shards=("dynod0-1",))])
    top = build.build(look, wanted)
    assert [(b.name, b.ports) for b in top.bridges][1:] == [("dynod0-1", ())]
    assert [str(p) for p in top.problems] == ["stray bridge dynod0-2: no network of the state's"]
