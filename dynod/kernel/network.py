"""A dyno's network: what the Common Runtime builds in the kernel for each dyno.

Everything here runs on the kernel worker's thread (netns.worker). For one dyno it amounts to:

    ip netns add NS
    ip link add dynod-1a address 0a:59:.. master dynod0 up type veth \\
        peer name eth0 address 0a:58:.. netns NS
    sysctl -w net.ipv6.conf.dynod-1a.disable_ipv6=1 net.ipv4.conf.dynod-1a.arp_ignore=8
    bridge link set dev dynod-1a isolated on learning off flood off
    bridge fdb replace 0a:58:.. dev dynod-1a master static
    ip route add local 172.16.0.5 dev dynod0 table local proto static src 172.16.0.5
    ip route add 172.16.0.4/30 dev dynod0 proto static scope link src 172.16.0.5   # its gateway
    ip neigh replace 172.16.0.6 lladdr 0a:58:.. dev dynod0 nud permanent
    ip netns exec NS sysctl -w net.ipv6.conf.all.disable_ipv6=1   # DNS discovery (kernel defaults)
    ip -n NS link set lo up; ip -n NS link set eth0 up
    ip -n NS addr add 172.16.0.6/30 dev eth0
    ip -n NS neigh replace 172.16.0.5 lladdr 0a:5a:.. dev eth0 nud permanent
    ip -n NS route add default via 172.16.0.5 proto static
    ip netns exec NS sysctl -w net.ipv4.ping_group_range="0 2147483647"

The gateway is two routes on the host, not an address (netns/addresses.py add_gateway: an
address a dyno made every start walk all of them), and each side knows the other's MAC from a
permanent neighbour entry: no ARP crosses the veth, so a dyno learns none of the host's
addresses and no other dyno can answer for its gateway.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from pyroute2 import IPRoute

from dynod.errors import DynodError
from dynod.kernel.addressing import Pool, Subnet
from netns import addresses, links, namespace, nsid, sysctl
from netns.rtnl import Rtnl

PREFIX = re.compile(r"^[a-z][a-z0-9]{1,5}$")
IFNAMSIZ = 15  # a link name's longest, without its NUL


@dataclass(frozen=True)
class Names:
    """Kernel object names of one daemon instance: all start with its prefix, so cleanup removes
    exactly what this daemon made. The host end of a veth is `PREFIX-<dyno id in hex>` (at most
    15 characters, the kernel's limit); the bridge is `PREFIX0`."""

    prefix: str

    def __post_init__(self) -> None:
        if not PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"invalid prefix {self.prefix!r}: 2-6 lowercase letters and digits, "
                "starting with a letter"
            )

    @property
    def bridge(self) -> str:
        """The Common Runtime's bridge."""
        return f"{self.prefix}0"

    def space_bridge(self, space_id: int) -> str:
        return f"{self.prefix}s{space_id}"

    @property
    def bridge_pattern(self) -> re.Pattern[str]:
        """Every bridge of ours: the Common Runtime's, the spaces', and their shards (`-N`)."""
        return re.compile(rf"{self.prefix}(0|s[0-9]{{1,8}})(-[0-9]{{1,7}})?")

    @property
    def port_glob(self) -> str:
        return f"{self.prefix}-*"

    @property
    def veth_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"{self.prefix}-[0-9a-f]{{1,8}}")

    def veth(self, dyno_id: int) -> str:
        return f"{self.prefix}-{dyno_id:x}"

    def netns(self, app: str, ptype: str, number: int) -> str:
        """PREFIX-APP.TYPE.N: no '.' in an app name or a type, so no two dynos share one."""
        return f"{self.prefix}-{app}.{ptype}.{number}"

    def owns_netns(self, name: str) -> bool:
        return name.startswith(f"{self.prefix}-")


@dataclass(frozen=True)
class Attachment:
    """What attach() needs of a dyno."""

    netns: str
    veth: str
    subnet: Subnet
    bridge_mac: str  # its bridge's: where its gateway is


def ensure_bridge(ipr: IPRoute, name: str, pool: Pool) -> int:
    """A network's bridge (shard_bridge) with the range's first /30: the network's address."""
    index = ensure_shard_bridge(ipr, name, pool)
    own = pool.bridge
    addresses.add(ipr, index, own.gateway, own.prefixlen)
    return index


def ensure_shard_bridge(ipr: IPRoute, name: str, pool: Pool) -> int:
    """A bridge of the network with a fixed MAC (a bridge otherwise takes its lowest port's
    MAC, which changes as dynos come and go and leaves dynos with a stale gateway MAC). A shard
    past the first gets no address of its own: its dynos reach the network's address (DNS)
    through their gateway, routed by the host."""
    if len(name) > IFNAMSIZ:
        raise DynodError(
            f"the bridge name {name} is longer than the kernel's {IFNAMSIZ} characters",
            "use a shorter --prefix, or a larger --shard-ports so fewer shards are needed",
            status=503,
        )
    index = links.ensure_bridge(ipr, name)
    links.set_address(ipr, index, pool.bridge_mac)
    # Dynos get no IPv6 from the bridge; it needs no link-local address either.
    sysctl.write(f"net.ipv6.conf.{name}.disable_ipv6", 1)
    # ARP is answered only for an address of the bridge's own in the asker's subnet: none of a
    # dyno's (its gateway is routes, its MAC pinned: add_gateway), so a dyno learns none of the
    # host's addresses, nor other dynos' gateways.
    sysctl.write(f"net.ipv4.conf.{name}.arp_ignore", 2)
    return index


def attach(
    ipr: Rtnl,
    bridge_index: int,
    dyno: Attachment,
    nsids: nsid.Descending | None = None,
    *,
    ipv6: bool,
) -> None:
    """The dyno's namespace (with its id in the host's from nsids: netns/nsid.py), its veth on
    the bridge, the port's settings, the gateway's routes, the dyno's neighbour entry and the
    inside configured. Without `ipv6`, IPv6 goes off before the links go up where new
    namespaces get the kernel's defaults (ipv6_off_before_up); elsewhere the spawn sets it."""
    subnet = dyno.subnet
    off_first = not ipv6 and new_namespaces_have_ipv6()  # read in the host's namespace
    namespace.create(dyno.netns)
    try:
        if nsids is not None:
            nsids.give_next(ipr, dyno.netns)  # before the veth: its notifications carry it
        port = links.add_veth_into_netns(
            ipr,
            host_name=dyno.veth,
            host_mac=subnet.host_mac,
            master=bridge_index,
            peer_name="eth0",
            peer_mac=subnet.dyno_mac,
            netns=dyno.netns,
        )
        close_port_to_host(dyno.veth, ipr, port)
        links.isolate_bridge_port(ipr, port)
        links.add_fdb_entry(ipr, port, subnet.dyno_mac)
        add_gateway(ipr, bridge_index, subnet)
        addresses.pin_neighbour(ipr, bridge_index, subnet.address, subnet.dyno_mac)
        _configure_inside(dyno.netns, subnet, dyno.bridge_mac, off_first)
    except BaseException:
        detach(ipr, bridge_index, dyno)
        raise


def close_port_to_host(port: str, rtnl: Rtnl | None = None, index: int | None = None) -> None:
    """`sysctl -w net.ipv6.conf.PORT.disable_ipv6=1 net.ipv4.conf.PORT.arp_ignore=8`; with an
    Rtnl and the port's index, arp_ignore goes as a netlink message (links.set_arp_ignore),
    which spares a /proc/sys lookup (IPv6's settings have no netlink form).

    A dyno's traffic to the host enters through its bridge. Frames to an IEEE link-local group
    MAC are handed to the host on the port instead (the firewall drops them there too): with
    IPv6 off the port has no link-local address and takes no IPv6 at all, and arp_ignore=8
    makes it answer no ARP request for any host address. These live and die with the veth."""
    sysctl.write(f"net.ipv6.conf.{port}.disable_ipv6", 1)
    if rtnl is not None and index is not None:
        links.set_arp_ignore(rtnl, index, 8)
    else:
        sysctl.write(f"net.ipv4.conf.{port}.arp_ignore", 8)


def add_gateway(rtnl: Rtnl, bridge_index: int, subnet: Subnet) -> None:
    """The dyno's gateway on the host, as routes (addresses.add_gateway)."""
    network = str(subnet.network.network_address)
    addresses.add_gateway(rtnl, bridge_index, subnet.gateway, network, subnet.prefixlen)


def pin_gateway(netns: str, subnet: Subnet, bridge_mac: str) -> None:
    """`ip -n NS neigh replace GATEWAY lladdr BRIDGE_MAC dev eth0 nud permanent`, for a dyno
    made by a dynod that gave its gateway an address (which answered its ARP): now nothing does."""
    with namespace.entered(netns):
        inner = Rtnl()
        try:
            eth0 = links.index_of(inner, "eth0")
            if eth0 is not None:
                addresses.pin_neighbour(inner, eth0, subnet.gateway, bridge_mac)
        finally:
            inner.close()


def _configure_inside(netns: str, subnet: Subnet, bridge_mac: str, ipv6_off: bool) -> None:
    with namespace.entered(netns):
        inner = Rtnl()  # opened inside: the namespace's links
        try:
            eth0 = links.index_of(inner, "eth0")
            assert eth0 is not None
            if ipv6_off:
                ipv6_off_before_up()
            links.set_up(inner, links.LOOPBACK_INDEX)
            links.set_up(inner, eth0)
            addresses.add(inner, eth0, subnet.address, subnet.prefixlen)
            # its gateway's MAC, which the bridge would not tell it (addresses.add_gateway)
            addresses.pin_neighbour(inner, eth0, subnet.gateway, bridge_mac)
            addresses.add_default_route(inner, subnet.gateway)
            # Unprivileged processes may open ICMP sockets, so `ping` works without
            # capabilities (Docker and Podman do the same).
            sysctl.write("net.ipv4.ping_group_range", "0 2147483647")
        finally:
            inner.close()


def detach(ipr: Rtnl, bridge_index: int | None, dyno: Attachment) -> None:
    """Undo attach(), whatever part of it happened. Deleting the namespace is enough for the
    veth: the kernel destroys both ends with it, without us waiting for it."""
    try:
        unplug(ipr, bridge_index, dyno)
    finally:
        # whatever happened to the bridge (someone may have deleted it), the namespace goes
        namespace.delete(dyno.netns)


def unplug(ipr: Rtnl, bridge_index: int | None, dyno: Attachment) -> None:
    """The host side of detach(): the dyno's gateway's routes and its neighbour entry on its
    bridge (the namespace is left to the caller)."""
    subnet = dyno.subnet
    if bridge_index is not None:
        network = str(subnet.network.network_address)
        addresses.delete_gateway(ipr, bridge_index, subnet.gateway, network, subnet.prefixlen)
        addresses.forget_neighbour(ipr, bridge_index, subnet.address)


def ipv6_off_before_up() -> None:
    """`sysctl -w net.ipv6.conf.all.disable_ipv6=1` in a namespace made just now, before its
    lo and eth0 go up (the calling thread is inside it): the kernel then sets `default` and
    both links to 1 too, and they never get ::1 or a link-local address. Turned off after
    they are up, the kernel would make both addresses (a link-local's duplicate detection,
    multicast joins), then remove them again, and each removal queues a clean-up of the
    conntrack table (nftables' masquerade listens to every namespace's addresses) on the CPU
    of the start: work a start with DNS discovery does not need. Only where new namespaces
    get the kernel's IPv6 defaults (new_namespaces_have_ipv6()): elsewhere the spawn sets all
    four values (set_ipv6)."""
    sysctl.write("net.ipv6.conf.all.disable_ipv6", 1)


def set_ipv6(netns: str, enabled: bool, fresh: bool = False) -> None:
    """`ip netns exec NS sysctl -w net.ipv6.conf.{all,default,lo,eth0}.disable_ipv6=N`: with
    it off, the dyno has no ::1 and no link-local address, so nothing in it tries IPv6 first.

    fresh: attach() made the namespace in this same job, given `enabled` as its `ipv6`. When
    the host gives new namespaces the kernel's IPv6 defaults (new_namespaces_have_ipv6()),
    nothing is left to write: its four values are 0 already for IPv6 on, and attach() turned
    it off before the links went up (ipv6_off_before_up). Through /proc each write's lookup
    grew with the number of namespaces on the host (four writes a start were about 4 ms at
    1,000 dynos); netns.sysctl's own procfs instances keep it flat, and fewer writes still
    cost less."""
    value = 0 if enabled else 1
    if not kernel_has_ipv6() or (fresh and new_namespaces_have_ipv6()):
        return  # no IPv6 to turn on or off, or attach() did
    with namespace.entered(netns):
        for conf in ("all", "default", "lo", "eth0"):
            sysctl.write(f"net.ipv6.conf.{conf}.disable_ipv6", value)


@functools.cache
def kernel_has_ipv6() -> bool:
    """Is IPv6 in this kernel at all (`ls /proc/sys/net/ipv6`)? Not when it was booted with
    ipv6.disable=1, or built without it: then a dyno has none, and there is nothing to set.
    Read once, in the host's namespace."""
    return os.path.isdir("/proc/sys/net/ipv6")


@functools.cache
def new_namespaces_have_ipv6() -> bool:
    """Does a new network namespace start with IPv6 on everywhere (disable_ipv6 0 in all,
    default and each link)? Yes when the kernel was not booted with ipv6.disable_ipv6=1 and
    `net.core.devconf_inherit_init_net` resets a new namespace's IPv6 settings to the kernel's
    defaults (0 or 2; 1 and 3 copy the host's instead). Read once, in the host's namespace;
    anything unreadable is a no."""
    if not kernel_has_ipv6():
        return False
    try:
        with open("/sys/module/ipv6/parameters/disable_ipv6") as f:
            if f.read().strip() != "0":
                return False
        return sysctl.read("net.core.devconf_inherit_init_net") in ("0", "2")
    except OSError:
        return False


def remove_bridge(ipr: IPRoute, name: str) -> None:
    links.delete(ipr, name)


def existing_bridges(ipr: IPRoute, names: Names) -> set[str]:
    return set(links.names_matching(ipr, names.bridge_pattern))


def existing_veths(ipr: IPRoute, names: Names) -> set[str]:
    return set(links.names_matching(ipr, names.veth_pattern))
