"""netns/topology.py's read-only listings, on objects made by hand with `ip`, `bridge` and `nft`
inside namespaces of the test's own: what they read is what iproute2 and nft made."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from netns import namespace, topology
from netns.nftables import Nft
from tests.support import sh, sweep, unique_prefix

pytestmark = pytest.mark.root

DYNO_MAC = "0a:58:0a:09:00:06"


@pytest.fixture
def made() -> Iterator[tuple[str, str]]:
    """A "host" namespace with a bridge, a veth port (isolated, no learning, no flooding, a
    static FDB entry, a gateway address) into a "dyno" namespace (eth0, a /30, a default
    route), and an nftables table with a set and a map."""
    prefix = unique_prefix()
    host, dyno = f"{prefix}-host", f"{prefix}-dyno"
    try:
        sh("ip", "netns", "add", host)
        sh("ip", "netns", "add", dyno)
        for cmd in (
            f"ip -n {host} link add br0 type bridge",
            f"ip -n {host} link set br0 up",
            f"ip -n {host} link add port1 master br0 up type veth peer name eth0 netns {dyno}",
            f"ip -n {host} addr add 10.9.0.1/30 dev br0",
            f"ip -n {host} addr add 10.9.0.5/30 dev br0",
            f"ip netns exec {host} bridge link set dev port1 isolated on learning off flood off",
            f"ip netns exec {host} bridge fdb replace {DYNO_MAC} dev port1 master static",
            f"ip -n {dyno} link set eth0 address {DYNO_MAC} up",
            f"ip -n {dyno} addr add 10.9.0.6/30 dev eth0",
            f"ip -n {dyno} route add default via 10.9.0.5",
        ):
            sh(*cmd.split())
        ruleset = (
            "table inet t {\n"
            '  set ports { type ifname . ether_addr . ipv4_addr; elements = { "port1" . '
            f"{DYNO_MAC} . 10.9.0.6 }}; }}\n"
            "  map nat { type ipv4_addr : ipv4_addr; flags interval; "
            "elements = { 10.1.0.0/16 : 192.0.2.10 }; }\n"
            "  set web { type ipv4_addr . inet_service; }\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", host, "nft", "-f", "-"], input=ruleset, text=True, check=True
        )
        yield host, dyno
    finally:
        sh("ip", "netns", "del", dyno, check=False)
        sh("ip", "netns", "del", host, check=False)
        assert sweep(prefix) == {}


def test_links_ports_fdb_addresses_and_sets_as_made(made: tuple[str, str]) -> None:
    host, dyno = made
    with namespace.entered(host):
        ipr = IPRoute()
        nft = Nft()
        try:
            found = {link.name: link for link in topology.links(ipr)}
            bridge, port = found["br0"], found["port1"]
            fdb = topology.fdb(ipr, bridge.index)
            addrs = topology.ipv4_addresses(ipr)
            sets = topology.nft_sets(nft, "inet", "t")
            absent = topology.nft_sets(nft, "inet", "nosuchtable")
        finally:
            ipr.close()
            nft.close()
    assert bridge.kind == "bridge" and bridge.port is None
    assert port.kind == "veth" and port.master == bridge.index and port.up
    assert port.port == topology.PortFlags(isolated=True, learning=False, flood=False)
    assert topology.FdbEntry(DYNO_MAC, port.index, True) in fdb
    assert all(not int(e.mac[:2], 16) & 1 for e in fdb)  # no group addresses
    assert addrs[bridge.index] == ["10.9.0.1/30", "10.9.0.5/30"]
    assert sets == {
        "ports": [{"concat": ["port1", DYNO_MAC, "10.9.0.6"]}],
        "nat": [[{"prefix": {"addr": "10.1.0.0", "len": 16}}, "192.0.2.10"]],
        "web": [],
    }
    assert absent is None
    inside = topology.inside(dyno)
    eth0 = next(link for link in inside.links if link.name == "eth0")
    assert eth0.peer == port.index and port.peer == eth0.index
    assert eth0.mac == DYNO_MAC
    assert inside.addresses[eth0.index] == ["10.9.0.6/30"]
    assert topology.Route("default", "10.9.0.5", eth0.index) in inside.routes
    assert topology.Route("10.9.0.4/30", None, eth0.index) in inside.routes


def test_flags_follow_what_bridge_link_set_changes(made: tuple[str, str]) -> None:
    host, _ = made
    sh(
        "ip",
        "netns",
        "exec",
        host,
        "bridge",
        "link",
        "set",
        "dev",
        "port1",
        "learning",
        "on",
        "isolated",
        "off",
    )
    with namespace.entered(host):
        ipr = IPRoute()
        try:
            port = next(x for x in topology.links(ipr) if x.name == "port1")
        finally:
            ipr.close()
    assert port.port == topology.PortFlags(isolated=False, learning=True, flood=False)
