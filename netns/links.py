"""Links: bridges and veth pairs, through one pyroute2 netlink socket (no `ip` subprocess).

Every function takes the IPRoute to use, so the caller decides which thread and which
namespace the netlink socket lives in.
"""

from __future__ import annotations

import os
import re
from typing import TypeAlias

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netns import namespace, record
from netns.rtnl import IPV4_DEVCONF_ARP_IGNORE, Rtnl

# What the functions here take: pyroute2's IPRoute, or the lean socket of the per-dyno path
# (netns/rtnl.py), which answers the same calls.
Netlink: TypeAlias = "IPRoute | Rtnl"

LOOPBACK_INDEX = 1  # the kernel's LOOPBACK_IFINDEX: lo is 1 in every network namespace
ENOENT = 2
ENODEV = 19
EEXIST = 17
NUD_NOARP = 0x40  # `static` in `bridge fdb`: an entry put there, never learnt
NTF_MASTER = 0x04  # the entry goes to the bridge the port is in


def index_of(ipr: Netlink, name: str) -> int | None:
    if isinstance(ipr, Rtnl):
        return ipr.index_of(name)
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def name_of(ipr: Netlink, index: int) -> str:
    if isinstance(ipr, Rtnl):
        return ipr.name_of(index)
    found = ipr.get_links(index)
    return found[0].get_attr("IFLA_IFNAME") if found else f"if{index}"


def ensure_bridge(ipr: IPRoute, name: str) -> int:
    """`ip link add NAME type bridge; ip link set NAME up` unless it exists; returns its index.

    STP is off and forward delay is 0, so a new port forwards at once (as Docker's bridges do).
    """
    index = index_of(ipr, name)
    if index is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            record.note(
                "ip", "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"
            )
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise
        index = index_of(ipr, name)
        assert index is not None
    ipr.link("set", index=index, state="up")
    record.note("ip", "link", "set", name, "up")
    return index


def set_address(ipr: Netlink, index: int, mac: str) -> None:
    """`ip link set IF address MAC`."""
    ipr.link("set", index=index, address=mac)
    if record.active():
        record.note("ip", "link", "set", name_of(ipr, index), "address", mac)


QUEUES = ("numtxqueues", "1", "numrxqueues", "1")  # how `ip link` says one queue each way


def add_veth_into_netns(
    ipr: Netlink,
    *,
    host_name: str,
    host_mac: str,
    master: int,
    peer_name: str,
    peer_mac: str,
    netns: str,
) -> int:
    """`ip link add HOST address MAC master BR up numtxqueues 1 numrxqueues 1 type veth peer
    name eth0 address MAC netns NS numtxqueues 1 numrxqueues 1`.

    The peer is created directly inside the namespace, so it gets an index from the
    namespace's own counter (2, after lo) however many links the host has seen. The host end
    is up from the start.

    One queue each way, as the kernel would leave them: a veth is made with a queue per CPU
    (for XDP) and, unless told how many, cut down to one right after, which waits for an
    expedited RCU grace period per end with the kernel's rtnl lock held (1.8 ms each on a busy
    2-CPU host, every other link change waiting meanwhile: bench/README.md, "Sixth round").
    """
    fd = namespace.open_fd(netns)
    try:
        ipr.link(
            "add",
            ifname=host_name,
            address=host_mac,
            kind="veth",
            master=master,
            state="up",
            num_tx_queues=1,
            num_rx_queues=1,
            peer={
                "ifname": peer_name,
                "address": peer_mac,
                "net_ns_fd": fd,
                "num_tx_queues": 1,
                "num_rx_queues": 1,
            },
        )
    finally:
        os.close(fd)
    if record.active():
        record.note(
            "ip",
            "link",
            "add",
            host_name,
            "address",
            host_mac,
            "master",
            name_of(ipr, master),
            "up",
            *QUEUES,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "address",
            peer_mac,
            "netns",
            netns,
            *QUEUES,
        )
    index = index_of(ipr, host_name)
    assert index is not None
    return index


def isolate_bridge_port(ipr: Netlink, index: int) -> None:
    """`bridge link set dev PORT isolated on learning off flood off`.

    An isolated port can talk only to the bridge itself and to non-isolated ports, never to
    another isolated port: frames between two containers never cross the bridge, whatever
    addresses they carry. No learning: the bridge's FDB cannot be poisoned from the port.
    No unknown-unicast flooding: a port never sees frames meant for another port's MAC.
    """
    ipr.brport("set", index=index, isolated=1, learning=0, unicast_flood=0)
    if record.active():
        record.note(
            "bridge",
            "link",
            "set",
            "dev",
            name_of(ipr, index),
            "isolated",
            "on",
            "learning",
            "off",
            "flood",
            "off",
        )


def set_arp_ignore(rtnl: Rtnl, index: int, value: int) -> None:
    """`sysctl -w net.ipv4.conf.IF.arp_ignore=VALUE`, as a netlink message (Rtnl.ipv4_conf)."""
    rtnl.ipv4_conf(index=index, settings={IPV4_DEVCONF_ARP_IGNORE: value})
    record.note("sysctl", "-w", f"net.ipv4.conf.{name_of(rtnl, index)}.arp_ignore={value}")


def add_fdb_entry(ipr: Netlink, port_index: int, mac: str) -> None:
    """`bridge fdb replace MAC dev PORT master static`: with learning off, the bridge knows
    where the container's MAC is from us, not from frames the container sends."""
    ipr.fdb("replace", ifindex=port_index, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER)
    if record.active():
        record.note(
            "bridge", "fdb", "replace", mac, "dev", name_of(ipr, port_index), "master", "static"
        )


def set_up(ipr: Netlink, index: int) -> None:
    """`ip link set IF up`."""
    ipr.link("set", index=index, state="up")
    if record.active():
        record.note("ip", "link", "set", name_of(ipr, index), "up")


def delete(ipr: Netlink, name: str) -> bool:
    """`ip link del NAME`; False if it was already gone."""
    index = index_of(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (ENODEV, ENOENT):
            raise
        return False
    record.note("ip", "link", "del", name)
    return True


def names_matching(ipr: IPRoute, pattern: re.Pattern[str]) -> list[str]:
    """`ip -o link | grep PATTERN`: names of this namespace's links that fully match."""
    found = []
    for msg in ipr.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        if name and pattern.fullmatch(name):
            found.append(name)
    return sorted(found)
