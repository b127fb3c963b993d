"""What a dyno learns by ARP, and a space whose bridge was deleted by hand (found by an
adversarial try of issue 7's fixes)."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from tests.support import gateway_of, netns_exec, running_daemon, sh

pytestmark = pytest.mark.root

# Run as root in a dyno's namespace: an ARP request on eth0 for each target, broadcast; prints
# which targets were answered.
ARP = r"""
import json, socket, struct, sys, time
targets = json.loads(sys.argv[1])
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
own = sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
s.settimeout(0.1)
for target in targets:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(own),
                       b"\0" * 6, socket.inet_aton(target))
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + body)
answered = set()
deadline = time.monotonic() + 1.5
while time.monotonic() < deadline:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02":
        answered.add(socket.inet_ntoa(frame[28:32]))
print(json.dumps(sorted(answered)))
"""


def arp_answers(netns: str, own_ip: str, targets: list[str]) -> list[str]:
    code = f"import sys; sys.argv = ['arp', {json.dumps(targets)!r}, {own_ip!r}]\n" + ARP
    result = netns_exec(netns, code)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_a_dyno_gets_no_arp_answer_from_the_host() -> None:
    """Its gateway is the host's by a local route, not an address of the bridge, which answers
    ARP only for an address of its own in the asker's subnet (arp_ignore 2): the dyno was told
    its gateway's MAC at its start, and learns none of the host's addresses, nor another dyno's
    gateway."""
    with running_daemon() as d:
        one = d.run("sushi", "worker", "sleep 600")
        two = d.run("tuna", "worker", "sleep 600")
        d.wait_for(lambda: d.dyno("tuna", "worker.1")["state"] == "up", "two up")
        own, other = gateway_of(one["ip"]), gateway_of(two["ip"])
        bridge_address = d.cidr.rsplit(".", 1)[0] + ".1"  # the bridge's own, x.y.z.1
        answered = arp_answers(
            d.netns("sushi", "worker.1"), one["ip"], [own, other, bridge_address]
        )
        assert answered == [], answered


def test_a_deleted_space_bridge_neither_blocks_stop_nor_leaks_a_namespace() -> None:
    with running_daemon() as d:
        d.client.call("POST", "/v1/spaces", {"name": f"{d.prefix}x", "cidr": "10.213.0.0/16"})
        d.client.call("POST", "/v1/apps", {"name": "spb", "space": f"{d.prefix}x"})
        d.run("spb", "worker", "sleep 600")
        d.wait_for(lambda: d.dyno("spb", "worker.1")["state"] == "up", "worker up")
        bridge = next(
            s["bridge"] for s in d.client.call("GET", "/v1/spaces") if s["name"] == f"{d.prefix}x"
        )
        sh("ip", "link", "del", bridge)
        d.stop_dyno("spb", "worker.1", grace=1)
        assert d.dynos("spb") == []
        assert not os.path.exists(f"/run/netns/{d.netns('spb', 'worker.1')}")
        with pytest.raises(Exception, match="could not set up the network"):
            d.run("spb", "other", "sleep 600")
        assert not os.path.exists(f"/run/netns/{d.netns('spb', 'other.1')}")
        d.client.call("DELETE", "/v1/apps/spb")
        d.client.call("DELETE", f"/v1/spaces/{d.prefix}x")


def test_a_bridge_taken_down_and_up_gets_its_dynos_gateway_routes_back() -> None:
    """`ip link set BRIDGE down` flushes every route through the bridge, and every neighbour
    entry on it: the gateways' routes (an address's would come back by themselves at `up`) and
    the host's entries for its dynos. The health check puts them back once the bridge is up
    (the kernel refuses a route through a bridge that is down, which the dyno's log says once);
    a gateway route someone deletes is put back too, and one someone replaces is made the
    gateway's again."""
    with running_daemon() as d:
        web = d.run_app("flap", "web")
        assert d.via_router("flap")[0] == 200
        bridge, gateway = f"{d.prefix}0", gateway_of(web["ip"])

        subnet = ipaddress.IPv4Network(f"{web['ip']}/30", strict=False)
        try:

            def local_routes() -> str:
                return sh("ip", "route", "show", "table", "local", "dev", bridge).stdout

            def routed() -> bool:
                return f"{subnet} proto static" in sh("ip", "route", "show", "dev", bridge).stdout

            sh("ip", "link", "set", bridge, "down")
            assert not routed()  # (the local route stays: scope host)
            d.wait_for(lambda: "cannot be put back yet (Network is down)" in d.log(), "the refusal")
            sh("ip", "link", "set", bridge, "up")
            d.wait_for(routed, "the /30's route back")
            d.wait_for(lambda: d.via_router("flap")[0] == 200, "the web dyno reached again")
            pinned = sh("ip", "neigh", "show", web["ip"], "dev", bridge).stdout
            assert "PERMANENT" in pinned, pinned
            assert (
                "gateway routes were removed or changed by someone else (`ip route del`" in d.log()
            )
            sh("ip", "route", "del", "local", gateway, "dev", bridge, "table", "local")
            d.wait_for(lambda: f"local {gateway} " in local_routes(), "the deleted route back")
            assert d.via_router("flap")[0] == 200
            # the /30's route alone: the deletion names the dyno (Networks.route_owner)
            sh("ip", "route", "del", str(subnet), "dev", bridge)
            d.wait_for(routed, "the deleted /30 route back")
            assert d.via_router("flap")[0] == 200
            # replaced without the gateway's source (as `proto boot`, then as `proto static`),
            # through another device, or the local route replaced: heard (within a few ticks,
            # where the listing that would find it anyway comes every 30 s), and made the
            # gateway's again
            sourced = f"{subnet} proto static scope link src {gateway}"
            local = f"local {gateway} proto static scope host src {gateway}"
            for change in (
                [str(subnet), "dev", bridge, "proto", "boot"],
                [str(subnet), "dev", bridge, "proto", "static"],
                [str(subnet), "dev", "lo"],  # through another device: the dyno cut off
                ["local", gateway, "dev", bridge, "table", "local", "proto", "boot"],
            ):
                assert sourced in sh("ip", "route", "show", "dev", bridge).stdout
                assert local in local_routes()
                sh("ip", "route", "replace", *change)
                assert sourced not in sh("ip", "route", "show", "dev", bridge).stdout or (
                    local not in local_routes()
                )
                d.wait_for(
                    lambda: (
                        sourced in sh("ip", "route", "show", "dev", bridge).stdout
                        and local in local_routes()
                    ),
                    f"the gateway's routes made its own again after `ip route replace {change}`",
                    timeout=5,
                )
                assert d.via_router("flap")[0] == 200

            # another /30 put before the gateway's, through another device (not heard: a new
            # route; and a listing of the bridge's routes does not show it): the look at every
            # dyno every 30 s lists the whole table, finds that a lookup meets it first, and
            # it goes
            def to_subnet() -> list[str]:
                shown = sh("ip", "route", "show", str(subnet)).stdout.splitlines()
                return [line.strip() for line in shown]

            ours = f"{subnet} dev {bridge} proto static scope link src {gateway}"
            sh("ip", "route", "prepend", str(subnet), "dev", "lo", "proto", "boot")
            assert to_subnet() == [f"{subnet} dev lo scope link", ours], to_subnet()
            assert d.via_router("flap")[0] == 503  # cut off
            d.wait_for(lambda: to_subnet() == [ours], "the prepended /30 route gone", timeout=40)
            assert d.via_router("flap")[0] == 200
            # the bridge's own address: the kernel flushes every route through the bridge and
            # tells only of the address's own routes, which name no dyno
            own = sh("ip", "-o", "-4", "addr", "show", "dev", bridge).stdout.split()[3]
            before = d.log().count("put back")
            sh("ip", "addr", "del", own, "dev", bridge)  # the /30's route goes with it
            try:
                # (not looked at at once: the check may have put it back already)
                d.wait_for(
                    lambda: routed() and d.log().count("put back") > before,
                    "the /30 route put back after the bridge's address went",
                )
                assert d.via_router("flap")[0] == 200
            finally:
                sh("ip", "addr", "replace", own, "dev", bridge)
        finally:  # a route of the test's through lo, if the daemon did not remove it
            sh("ip", "route", "del", str(subnet), "dev", "lo", check=False)
