"""The firewall's pure parts (dynod/kernel/firewall.py): which tracked flows the rules refuse, the
comparison of what the kernel holds with what the daemon put there, and the ruleset's text.
No root needed."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from dynod.kernel import firewall
from dynod.kernel.addressing import mac_for
from netns.conntrack import Flow
from netns.nftables import Snapshot, _without_counts, element_key

TCP, UDP, ICMP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP
ECHO, ECHO_REPLY = 8, 0

CR = firewall.Network("dyn0", "172.20.0.0/16", "172.20.0.1")
SPACE_A = firewall.Network("dyns1", "10.1.0.0/16", "10.1.0.1", "192.0.2.1")
SPACE_B = firewall.Network("dyns2", "10.2.0.0/16", "10.2.0.1", "192.0.2.2")
LAYOUT = firewall.Layout("dyn", "dyn-*", CR, (SPACE_A, SPACE_B))
# host addresses: the bridges', the dynos' gateways, the host's own
LOCAL = {
    "172.20.0.1",
    "172.20.0.5",
    "172.20.0.9",
    "10.1.0.1",
    "10.1.0.5",
    "10.2.0.1",
    "198.51.100.7",
}
CR1, CR2, A1, A2, B1 = "172.20.0.6", "172.20.0.10", "10.1.0.6", "10.1.0.10", "10.2.0.6"
WEB = {firewall.WebTarget(CR1, 5000), firewall.WebTarget(A1, 5001)}


def flow(proto: int, src: str, dst: str, dport: int | None = None, icmp: int | None = None) -> Flow:
    return Flow(proto, src, dst, 40000 if dport else None, dport, icmp)


def refused(f: Flow) -> bool:
    return firewall.refused(LAYOUT, WEB, LOCAL, f)


@pytest.mark.parametrize(
    "f",
    [
        flow(TCP, "172.20.0.5", CR1, 5000),  # the router to a web dyno's PORT
        flow(TCP, "10.1.0.1", A1, 5001),
        flow(TCP, CR1, "93.184.216.34", 443),  # a dyno to the outside
        flow(UDP, A1, "8.8.8.8", 53),
        flow(ICMP, B1, "1.1.1.1", icmp=ECHO),
        flow(TCP, A1, A2, 1024),  # inside a space, 1024-65535 and ping
        flow(UDP, A2, A1, 65535),
        flow(ICMP, A1, A2, icmp=ECHO),
        flow(UDP, CR1, "172.20.0.1", 53),  # DNS on the dyno's own bridge
        flow(TCP, A1, "10.1.0.1", 53),
        flow(TCP, A1, "10.1.0.1", 80),  # a space's internal router
        flow(TCP, "198.51.100.7", "93.184.216.34", 22),  # the host's own flows are not judged
        flow(TCP, "127.0.0.1", "127.0.0.1", 8080),
    ],
)
def test_flows_the_rules_allow_survive(f: Flow) -> None:
    assert not refused(f)


@pytest.mark.parametrize(
    "f",
    [
        flow(TCP, "198.51.100.7", CR2, 7000),  # the host to a dyno that is not web on PORT
        flow(TCP, "172.20.0.1", CR1, 5001),  # a web dyno, but not its PORT
        flow(UDP, "172.20.0.5", CR1, 5000),  # its PORT, but UDP
        flow(ICMP, "172.20.0.1", CR1, icmp=ECHO),
        flow(TCP, "203.0.113.9", CR1, 5000),  # from the outside, straight to a dyno
        flow(TCP, CR1, CR2, 5000),  # Common Runtime dynos never reach each other
        flow(ICMP, CR1, CR2, icmp=ECHO),
        flow(TCP, A1, B1, 5000),  # nor do two spaces
        flow(TCP, CR1, A1, 5001),
        flow(TCP, A1, A2, 1023),  # a space, but below 1024
        flow(ICMP, A1, A2, icmp=ECHO_REPLY),
        flow(TCP, CR1, "172.20.0.1", 80),  # no internal router in the Common Runtime
        flow(TCP, CR1, "172.20.0.1", 22),  # no other host service
        flow(UDP, CR1, "172.20.0.5", 53),  # DNS is on the bridge's address, not the gateway
        flow(UDP, A1, "172.20.0.1", 53),  # nor on another network's bridge
        flow(TCP, CR1, "198.51.100.7", 22),  # the host's own address
        flow(ICMP, CR1, "172.20.0.5", icmp=ECHO),
    ],
)
def test_flows_the_rules_refuse_are_cut(f: Flow) -> None:
    assert refused(f)


def test_a_snapshot_ignores_counters_and_compares_elements_as_sets() -> None:
    rule = {"expr": [{"counter": {"packets": 7, "bytes": 900}}, {"drop": None}]}
    assert _without_counts(rule) == {
        "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]
    }
    port = firewall.Port("dyn-1", "0a:58:ac:14:00:06", CR1)
    web = firewall.WebTarget(CR1, 5000)
    # what `nft -j list` shows, key order and all
    assert element_key(firewall.port_value(port)) == element_key(
        {"concat": ["dyn-1", "0a:58:ac:14:00:06", CR1]}
    )
    assert element_key(firewall.web_value(web)) == element_key({"concat": [CR1, 5000]})
    expected, seen = Snapshot(["table"]), Snapshot(["table"])
    expected.add("inet", "web", element_key(firewall.web_value(web)))
    seen.add("inet", "web", element_key({"concat": [CR1, 5000]}))
    assert expected == seen
    expected.discard("inet", "web", element_key(firewall.web_value(web)))
    assert expected != seen


def test_firewall_text_keeps_per_dyno_facts_in_sets() -> None:
    common = firewall.Network("dynod0", "172.16.0.0/12", "172.16.0.1")
    layout = firewall.Layout(table="dynod", port_glob="dynod-*", common=common)
    spaces = tuple(
        firewall.Network(f"dynods{i}", f"10.{i}.0.0/16", f"10.{i}.0.1", f"192.0.2.{i}")
        for i in range(1, 6)
    )
    with_spaces = firewall.Layout(table="dynod", port_glob="dynod-*", common=common, spaces=spaces)
    ports = [
        firewall.Port(
            f"dynod-{i:x}", mac_for(f"172.16.0.{4 * i + 2}", 0x58), f"172.16.0.{4 * i + 2}"
        )
        for i in range(1, 40)
    ]
    web = [firewall.WebTarget(p.ip, 5000 + i) for i, p in enumerate(ports)]
    small = firewall.ruleset(layout, ports[:1], web[:1])
    large = firewall.ruleset(layout, ports, web)
    rules = [line for line in large.splitlines() if "@" in line or "drop" in line]
    assert rules == [line for line in small.splitlines() if "@" in line or "drop" in line]
    assert large.count("dynod-") > small.count("dynod-")  # only the elements grew
    spaced = firewall.ruleset(with_spaces, ports, web)
    assert rules == [line for line in spaced.splitlines() if "@" in line or "drop" in line]
    assert '"dynods5" . "dynods5"' in spaced and "10.5.0.0/16 : 192.0.2.5" in spaced
    assert '"dynods5" . 10.5.0.1 . tcp . 80' in spaced
    assert '"dynod0" . 172.16.0.1 . tcp . 80' not in spaced  # no internal router there
    assert "ip saddr 172.16.0.0/12 masquerade" in large
    assert "meta mark 0x6479 ip daddr . tcp dport @web accept" in large
    assert "skuid" not in large  # no router workers: no user of theirs let through
    workers = dataclasses.replace(layout, router_user=61999)
    output = firewall.ruleset(workers).split("chain output")[1].split("}")[0]
    assert [line.split(" accept")[0].strip() for line in output.splitlines() if "@web" in line] == [
        "oifname @bridges meta mark 0x6479 ip daddr . tcp dport @web",
        "oifname @bridges meta skuid 61999 ip daddr . tcp dport @web",
    ]
    assert output.rstrip().endswith(
        'comment "the host to a dyno: only the router, only to a web dyno\'s PORT"'
    )
    assert firewall.add_dyno(layout, ports[0], web[0]) == (
        'add element bridge dynod ports { "dynod-1" . 0a:58:ac:10:00:06 . 172.16.0.6 }\n'
        "add element inet dynod web { 172.16.0.6 . 5000 }\n"
    )
    assert "delete element bridge dynod ports" in firewall.remove_dyno(layout, ports[0])
    assert firewall.remove(layout).count("delete table") == 2


def test_a_sharded_network_is_one_network_over_its_bridges() -> None:
    """Every shard is a bridge of ours; a space's shards reach each other (every pair), the
    Common Runtime's never; DNS (and a space's router) on the network's one address is
    offered from every shard; a new shard's elements come in one transaction."""
    common = firewall.Network("dynod0", "172.16.0.0/12", "172.16.0.1", None, ("dynod0", "dynod0-1"))
    space = firewall.Network(
        "dynods1", "10.1.0.0/16", "10.1.0.1", "192.0.2.1", ("dynods1", "dynods1-1", "dynods1-2")
    )
    layout = firewall.Layout(table="dynod", port_glob="dynod-*", common=common, spaces=(space,))
    text = firewall.ruleset(layout)
    for bridge in ("dynod0", "dynod0-1", "dynods1", "dynods1-1", "dynods1-2"):
        assert f'"{bridge}" . ' in text.split("set services")[1].split("}")[0]
    for a in space.bridges:
        for b in space.bridges:
            assert f'"{a}" . "{b}"' in text
    assert '"dynod0" . "dynod0-1"' not in text and '"dynod0" . "dynod0"' not in text
    assert '"dynods1-2" . 10.1.0.1 . tcp . 80' in text
    assert '"dynod0-1" . 172.16.0.1 . udp . 53' in text
    added = firewall.add_shard(layout, space, "dynods1-2")
    assert added.count("\n") == 3 and 'bridges { "dynods1-2" }' in added
    assert '"dynods1-2" . "dynods1"' in added and '"dynods1" . "dynods1-2"' in added
    assert '"dynods1" . "dynods1-1"' not in added  # pairs the older shards have already
    assert "intra" not in firewall.add_shard(layout, common, "dynod0-1")
    # the Common Runtime's dynos never reach each other, across its shards too: one rule on
    # the set of its bridges, which a new shard joins; a space's shards are not in it
    common_set = text.split("set common")[1].split("}")[0]
    assert '"dynod0"' in common_set and '"dynod0-1"' in common_set and "dynods1" not in common_set
    assert "iifname @common oifname @common counter drop" in text
    assert 'common { "dynod0-1" }' in firewall.add_shard(layout, common, "dynod0-1")
    assert "common" not in added
    # a flow between two dynos of the space on different shards is judged by address only
    local = {"10.1.0.1"}
    across = Flow(TCP, "10.1.0.6", "10.1.4.2", 40000, 8080, None)
    assert firewall.allows(layout, set(), local, across, marked=False)
    dns = Flow(UDP, "10.1.4.2", "10.1.0.1", 40000, 53, None)
    assert firewall.allows(layout, set(), local, dns, marked=False)
