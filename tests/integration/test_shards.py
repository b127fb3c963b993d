"""A network sharded over several bridges (`--shard-ports 2`: 5 dynos span 3 bridges).

A bridge takes at most 1,023 ports; every dyno has its own routed /30, so a network can hang
off several bridges without any dyno noticing. These tests check, against the real kernel,
that the shards are made as the lower ones fill, that a space is still one network across them
(DNS, dyno to dyno) while the Common Runtime's dynos still never reach each other, and that
reconcile and teardown handle every shard. The probe matrix of test_isolation.py runs with one
dyno per bridge too.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from dynod.testing.daemon import free_space_cidr
from netns.nftables import Nft, set_elements, snapshot
from tests.support import PYTHON, DaemonProc, bridge_of, running_daemon, sh

pytestmark = pytest.mark.root

# A DNS query (dnslib, in the test's own python) sent from inside a dyno's namespace to the
# address its resolv.conf names: prints the A records of the answer.
RESOLVE = r"""
import sys
from dnslib import DNSRecord, QTYPE
reply = DNSRecord.parse(DNSRecord.question(sys.argv[2]).send(sys.argv[1], 53, timeout=3))
print(" ".join(sorted(str(r.rdata) for r in reply.rr if r.rtype == QTYPE.A)))
"""

# A TCP connection from inside a namespace: prints True or False.
CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print(True)
except OSError:
    print(False)
"""


def in_netns(netns: str, script: str, *args: str, python: str = sys.executable) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, python, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def our_bridges(prefix: str) -> set[str]:
    links = json.loads(sh("ip", "-j", "link", "show", "type", "bridge").stdout)
    return {link["ifname"] for link in links if link["ifname"].startswith(prefix)}


def nft_set(prefix: str, name: str) -> list[Any]:
    listing = json.loads(sh("nft", "-j", "list", "set", "inet", prefix, name).stdout)
    return next(item["set"] for item in listing["nftables"] if "set" in item).get("elem", [])


def make_space(d: DaemonProc, app: str) -> dict[str, Any]:
    space = f"{d.prefix}a"
    made = d.cli("spaces:create", space, "--cidr", free_space_cidr())
    assert made.returncode == 0, made.stderr
    made = d.cli("apps:create", app, "--space", space)
    assert made.returncode == 0, made.stderr
    return next(s for s in d.client.call("GET", "/v1/spaces") if s["name"] == space)


def test_a_space_over_three_bridges_is_one_network_and_reconcile_keeps_its_shards() -> None:
    with running_daemon(extra=["--shard-ports", "2"]) as d:
        space = make_space(d, "shd")
        base = space["bridge"]
        dynos = [d.run_app("shd", "web") for _ in range(5)]
        on = [bridge_of(x["netns"]) for x in dynos]
        assert on == [base, base, f"{base}-1", f"{base}-1", f"{base}-2"]
        # the Common Runtime has its one bridge only: no shard is made before it is needed
        assert our_bridges(d.prefix) == {f"{d.prefix}0", base, f"{base}-1", f"{base}-2"}
        bridges = {e for e in nft_set(d.prefix, "bridges")}
        assert {base, f"{base}-1", f"{base}-2"} <= bridges
        # a set read alone is keyed as a reading of its table keys it: the guard's record of
        # the sets a new shard's elements go to is taken that way (ruleset.add_shard)
        with Nft() as nft:
            whole = snapshot(nft, [("inet", d.prefix)])
            assert whole is not None
            for name in ("bridges", "common", "intra", "services"):
                alone = set_elements(nft, "inet", d.prefix, name)
                assert alone and alone == whole.elements[f"inet {name}"], name
        # DNS: the address every dyno's resolv.conf names answers from the last shard too
        resolv = sh("cat", f"{d.state_dir}/resolv/{base}.conf").stdout
        assert f"nameserver {space['dns']}" in resolv
        addresses = in_netns(dynos[4]["netns"], RESOLVE, space["dns"], "web.shd.app.localspace")
        assert addresses.split() == sorted(x["ip"] for x in dynos)
        # across shards, routed by the host: shard 2 to shard 0 and back, shard 1 to shard 2
        for src, dst in ((4, 0), (0, 4), (2, 4)):
            got = in_netns(
                dynos[src]["netns"],
                CONNECT,
                dynos[dst]["ip"],
                str(dynos[dst]["port"]),
                python=PYTHON,
            )
            assert got == "True", (src, dst)
        # inspect draws the three bridges of the one network, each with its own ports, and
        # finds nothing amiss
        seen = d.cli("inspect", "--space", space["name"], "--format", "json")
        assert seen.returncode == 0, seen.stderr
        topology = json.loads(seen.stdout)
        assert [b["name"] for b in topology["bridges"]] == [base, f"{base}-1", f"{base}-2"]
        assert [len(b["ports"]) for b in topology["bridges"]] == [2, 2, 1]
        assert topology["problems"] == []
        # a shard stays while the daemon runs; a restart's reconcile removes the empty one
        assert d.stop_dyno("shd", "web.5")["stopped"] == ["web.5"]
        assert f"{base}-2" in our_bridges(d.prefix)
        # meanwhile inspect draws it as its network's, empty, and flags nothing (no stray)
        seen = d.cli("inspect", "--format", "json")
        assert seen.returncode == 0, seen.stderr
        topology = json.loads(seen.stdout)
        ports = {b["name"]: len(b["ports"]) for b in topology["bridges"]}
        assert ports[f"{base}-2"] == 0 and topology["problems"] == [], topology["problems"]
        d.kill9()
        d.start()
        assert our_bridges(d.prefix) == {f"{d.prefix}0", base, f"{base}-1"}
        assert [bridge_of(x["netns"]) for x in dynos[:4]] == on[:4]
        assert {x["pid"] for x in d.dynos("shd")} == {x["pid"] for x in dynos[:4]}
        bridges = {e for e in nft_set(d.prefix, "bridges")}
        assert {base, f"{base}-1"} <= bridges and f"{base}-2" not in bridges
        got = in_netns(
            dynos[3]["netns"], CONNECT, dynos[0]["ip"], str(dynos[0]["port"]), python=PYTHON
        )
        assert got == "True"
        # the next dyno takes the lowest free /30 again, and with it shard 2 back
        again = d.run_app("shd", "web")
        assert bridge_of(again["netns"]) == f"{base}-2"
        addresses = in_netns(again["netns"], RESOLVE, space["dns"], "web.shd.app.localspace")
        assert len(addresses.split()) == 5
        # destroying the space removes every one of its bridges
        done = d.cli("apps:destroy", "shd")
        assert done.returncode == 0, done.stderr
        done = d.cli("spaces:destroy", space["name"])
        assert done.returncode == 0, done.stderr
        assert our_bridges(d.prefix) == {f"{d.prefix}0"}


def test_common_runtime_dynos_on_different_shards_still_never_reach_each_other() -> None:
    with running_daemon(extra=["--shard-ports", "1"]) as d:
        first, second = (d.run_app(f"cr{n}", "web") for n in (1, 2))
        assert bridge_of(first["netns"]) == f"{d.prefix}0"
        assert bridge_of(second["netns"]) == f"{d.prefix}0-1"
        for src, dst in ((first, second), (second, first)):
            got = in_netns(src["netns"], CONNECT, dst["ip"], str(dst["port"]), python=PYTHON)
            assert got == "False"
        # DNS on the Common Runtime's address is reachable from the second shard (TCP 53)
        address = sh("cat", f"{d.state_dir}/resolv/{d.prefix}0.conf").stdout.split()[-1]
        got = in_netns(second["netns"], CONNECT, address, "53", python=PYTHON)
        assert got == "True"


def test_a_restart_with_another_shard_size_is_refused_while_dynos_run() -> None:
    """Adopted dynos would be looked for on other bridges: the daemon says so and changes
    nothing; with the size it had, it adopts them."""
    with running_daemon(extra=["--shard-ports", "1"]) as d:
        first, second = (d.run_app("kept", "web") for _ in range(2))
        d.kill9()
        d.extra = ["--shard-ports", "2"]
        with pytest.raises(RuntimeError) as refused:
            d.start(timeout=60)
        assert "error: the state's 2 dynos are on bridges of 1 ports each" in str(refused.value)
        assert "fix: start the daemon with --shard-ports 1" in str(refused.value)
        assert bridge_of(second["netns"]) == f"{d.prefix}0-1"  # untouched
        d.extra = []  # no --shard-ports: the state's size, not the default
        d.start(timeout=60)
        assert {x["pid"] for x in d.dynos("kept")} == {first["pid"], second["pid"]}
        assert bridge_of(second["netns"]) == f"{d.prefix}0-1"
        third = d.run_app("kept", "web")
        assert bridge_of(third["netns"]) == f"{d.prefix}0-2"  # one port each, as before


def test_an_address_removed_from_a_shard_bridge_gives_its_dynos_their_routes_back() -> None:
    """A shard past the first has no address of its own. One added there and removed again
    (`ip addr del`: the device's last) takes every route through the bridge with it, and the
    kernel tells only of the address's own: the health check hears that an address went from
    one of its bridges and puts the gateway routes of the shard's dynos back."""
    with running_daemon(extra=["--shard-ports", "1"]) as d:
        d.run_app("sa1", "web")
        second = d.run_app("sa2", "web")
        shard = f"{d.prefix}0-1"
        assert bridge_of(second["netns"]) == shard
        subnet = ipaddress.IPv4Network(f"{second['ip']}/30", strict=False)

        def routed() -> bool:
            return f"{subnet} proto static" in sh("ip", "route", "show", "dev", shard).stdout

        assert routed()
        time.sleep(3)  # the checks that follow the starts are over: none looks by chance
        said = "gateway routes were removed or changed by someone else"
        assert said not in d.log()
        sh("ip", "addr", "add", "192.0.2.77/32", "dev", shard)
        try:
            sh("ip", "addr", "del", "192.0.2.77/32", "dev", shard)  # the routes go with it
            # heard, within a few checks (the look at every dyno that would find it anyway
            # comes every 30 s): put back, and said in the dyno's log
            d.wait_for(lambda: routed() and said in d.log(), "the /30 route put back", timeout=5)
            assert d.via_router("sa2")[0] == 200
        finally:
            sh("ip", "addr", "del", "192.0.2.77/32", "dev", shard, check=False)
