"""dynod's firewall, rendered as nftables text.

Two tables, both named after the daemon's prefix and touched by nobody else:

* `bridge PREFIX` sees frames as they enter a bridge from a dyno's port, before the bridge
  learns from them or the IP stack sees them. It is the anti-spoofing layer: a frame from a
  dyno's port passes only with that dyno's own MAC and IP (ARP included); IPv6 and every other
  ethertype are dropped. It works whether br_netfilter is loaded or not.
* `inet PREFIX` is the policy at the IP layer. Every bridge (the Common Runtime's and one per
  Private Space) is a network of its own:
  - nothing new reaches a dyno from another network, the host or the outside, except the
    router's connections to a web dyno's PORT;
  - inside a Private Space (and only there), dynos reach each other on TCP and UDP ports
    1024-65535 and by ping; Common Runtime dynos never reach each other;
  - dynos reach only dynod's own services on the host: DNS on their bridge's address, and in a
    space the internal router on port 80 there;
  - outbound traffic is masqueraded behind the host in the Common Runtime, and SNATed to the
    space's stable NAT address in a Private Space.

Ports of the bridges are also `isolated on`, so frames between two dynos never cross a bridge:
traffic between dynos of a space is routed by the host, where the rules above see it.
A port itself is never an IP interface: a frame a dyno sends to an IEEE link-local group MAC
(01:80:c2:00:00:00-0f) is not bridged but handed to the host's IP stack on the port, where
neither the bridge table nor a rule on `@bridges` would see it. `inet PREFIX` drops everything
whose iifname is a port before conntrack (and again in input and forward); the port also has
IPv6 off and answers no ARP (network.attach), which no `nft flush ruleset` can undo.
The rules are fixed; dynos and spaces add set and map elements, so the ruleset does not grow
with the number of dynos (or spaces) and every change is one atomic `nft -f` transaction.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from dynod.rules.names import DNS_PORT, INTERNAL_ROUTER_PORT
from netns import conntrack
from netns.conntrack import Flow

# The router in the daemon marks its sockets (SO_MARK needs CAP_NET_ADMIN), and the router's
# worker processes run as a user of their own (Layout.router_user): the only host traffic let
# through to a dyno is the router's, to a web dyno's PORT.
ROUTER_MARK = 0x6479


@dataclass(frozen=True)
class Port:
    """One dyno's bridge port: the host end of its veth, the dyno's MAC and IP."""

    ifname: str
    mac: str
    ip: str


@dataclass(frozen=True)
class WebTarget:
    ip: str
    port: int


@dataclass(frozen=True)
class Network:
    """One network and its range: the Common Runtime's, or a Private Space's (with nat_ip),
    on one bridge or sharded over several (machine.Net)."""

    bridge: str  # shard 0, which holds the network's address
    cidr: str
    address: str  # the bridge's own address, where dynod's DNS (and router) listen
    nat_ip: str | None = None  # None: masquerade (Common Runtime)
    shards: tuple[str, ...] = ()  # every bridge of the network, shard 0 first; () just bridge

    @property
    def is_space(self) -> bool:
        return self.nat_ip is not None

    @property
    def bridges(self) -> tuple[str, ...]:
        return self.shards or (self.bridge,)


@dataclass(frozen=True)
class Layout:
    """What the rules are written against: names, and the networks."""

    table: str  # nftables table name, the daemon's prefix
    port_glob: str  # matches every dyno port's name, e.g. "dynod-*"
    common: Network  # the Common Runtime
    spaces: tuple[Network, ...] = field(default=())
    router_mark: int = ROUTER_MARK
    router_user: int | None = None  # the router workers' user id; None: no workers (or not root)

    @property
    def networks(self) -> tuple[Network, ...]:
        return (self.common, *self.spaces)


def _port_element(port: Port) -> str:
    return f'"{port.ifname}" . {port.mac} . {port.ip}'


def _web_element(target: WebTarget) -> str:
    return f"{target.ip} . {target.port}"


def _elements(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _services(net: Network, bridges: Iterable[str] | None = None) -> list[str]:
    """What dynos of a network may reach on the host: DNS, and in a space the internal router,
    on the network's address, whichever of its bridges (shards) they come from (the host
    routes a shard's traffic to that address as to any of its own)."""
    ports = [("udp", DNS_PORT), ("tcp", DNS_PORT)]
    if net.is_space:
        ports.append(("tcp", INTERNAL_ROUTER_PORT))
    return [
        f'"{bridge}" . {net.address} . {proto} . {port}'
        for bridge in (net.bridges if bridges is None else bridges)
        for proto, port in ports
    ]


def _intra(net: Network, new: str | None = None) -> list[str]:
    """In a space, every pair of its bridges (a shard to itself included): its dynos reach
    each other across shards through the host's routing. With new, the pairs it adds."""
    if not net.is_space:
        return []
    pairs = [(a, b) for a in net.bridges for b in net.bridges if new is None or new in (a, b)]
    return [f'"{a}" . "{b}"' for a, b in pairs]


def _set_body(kind: str, items: list[str], flags: str = "") -> str:
    lines = [f"type {kind}"]
    if flags:
        lines.append(f"flags {flags}")
    if items:
        lines.append(f"elements = {_elements(items)}")
    return "\n        ".join(lines)


def ruleset(layout: Layout, ports: Iterable[Port] = (), web: Iterable[WebTarget] = ()) -> str:
    """The whole of dynod's firewall, replacing what was there in one transaction.

    `add table` then `delete table` makes the text work whether or not the table existed.
    """
    t, glob, cr = layout.table, layout.port_glob, layout.common
    spaces = layout.spaces
    bridges = _set_body("ifname", [f'"{b}"' for n in layout.networks for b in n.bridges])
    common = _set_body("ifname", [f'"{b}"' for b in cr.bridges])
    intra = _set_body("ifname . ifname", [pair for n in spaces for pair in _intra(n)])
    services = _set_body(
        "ifname . ipv4_addr . inet_proto . inet_service",
        [item for n in layout.networks for item in _services(n)],
    )
    nat = _set_body("ipv4_addr : ipv4_addr", [f"{n.cidr} : {n.nat_ip}" for n in spaces], "interval")
    port_set = _set_body("ifname . ether_addr . ipv4_addr", [_port_element(p) for p in ports])
    web_set = _set_body("ipv4_addr . inet_service", [_web_element(w) for w in web])
    workers = _router_user_rule(layout)
    return f"""
add table bridge {t}
delete table bridge {t}
table bridge {t} {{
    # a dyno's port name . its MAC . its IP: the only source a frame from that port may carry
    set ports {{
        {port_set}
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname "{glob}" jump from_dyno comment "a frame from a dyno's port: check its source"
    }}
    chain from_dyno {{
        ether type ip iifname . ether saddr . ip saddr @ports accept \\
            comment "the dyno's own MAC and IP"
        ether type arp iifname . ether saddr . arp saddr ip @ports \\
            iifname . arp saddr ether . arp saddr ip @ports accept \\
            comment "ARP with the dyno's own MAC and IP"
        counter drop comment "spoofed (not the port's dyno's MAC and IP), IPv6 or other ethertype"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        # ports are isolated already; this is the second lock on the same door
        iifname "{glob}" oifname "{glob}" counter drop \\
            comment "dyno port to dyno port: never bridged (the ports are isolated too)"
    }}
}}
add table inet {t}
delete table inet {t}
table inet {t} {{
    # every dyno bridge: the Common Runtime's and one per Private Space
    set bridges {{
        {bridges}
    }}
    # the Common Runtime's bridges (its shards): its dynos never reach each other
    set common {{
        {common}
    }}
    # "space bridge" . "same bridge": where dynos may open connections to each other
    set intra {{
        {intra}
    }}
    # bridge . its address . protocol . port: the host services a network's dynos may use
    set services {{
        {services}
    }}
    # dyno IP . PORT of web dynos that are up: where the router may connect
    set web {{
        {web_set}
    }}
    # a space's range -> its stable NAT address
    map nat {{
        {nat}
    }}
    # A dyno's frames reach the IP stack through its bridge (br_netfilter names the bridge as
    # iifname then). A frame to an IEEE link-local group MAC (01:80:c2:00:00:0X) is not
    # bridged: it is handed to the host on the port itself, past the bridge table's
    # anti-spoofing. Nothing legitimate arrives with a port as iifname, so drop it all, before
    # conntrack sees it.
    chain ports_raw {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{glob}" counter drop comment "a dyno port is never an IP interface"
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{glob}" counter drop comment "second lock: a dyno port to the host"
        iifname @bridges jump dyno_to_host comment "a dyno to the host: only dynod's services"
    }}
    chain dyno_to_host {{
        ct state established,related accept comment "replies within a connection allowed before"
        iifname . ip daddr . meta l4proto . th dport @services accept \\
            comment "a dynod service: DNS on the bridge's address (in a space, the router too)"
        counter drop comment "no other host service is offered to dynos"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{glob}" counter drop comment "second lock: a dyno port routed anywhere"
        oifname @bridges ct state established,related accept \\
            comment "replies within a connection allowed before"
        iifname . oifname @intra meta l4proto {{ tcp, udp }} th dport 1024-65535 accept \\
            comment "dyno to dyno in the same Private Space, on ports 1024-65535"
        iifname . oifname @intra icmp type echo-request accept \\
            comment "dyno to dyno in the same Private Space: ping"
        iifname . oifname @intra counter drop \\
            comment "dyno to dyno in the same Private Space: only ports 1024-65535 and ping"
        iifname @common oifname @common counter drop \\
            comment "dyno to dyno in the Common Runtime"
        iifname @bridges oifname @bridges counter drop \\
            comment "dyno to dyno of another network (Common Runtime or Private Space)"
        oifname @bridges counter drop comment "new connection to a dyno from outside"
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname @bridges ct state established,related accept \\
            comment "replies within a connection allowed before"
        oifname @bridges meta mark {layout.router_mark:#x} ip daddr . tcp dport @web accept \\
            comment "the router (its sockets' mark) to a web dyno's PORT"{workers}
        oifname @bridges counter drop \\
            comment "the host to a dyno: only the router, only to a web dyno's PORT"
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname @bridges return comment "to a dyno: addresses kept"
        ip saddr {cr.cidr} masquerade comment "Common Runtime to the outside: behind the host"
        snat ip to ip saddr map @nat comment "Private Space to the outside: its stable NAT address"
    }}
}}
"""


def _router_user_rule(layout: Layout) -> str:
    """The output chain's rule for the router's workers, which run as a user of their own."""
    if layout.router_user is None:
        return ""
    return (
        f"\n        oifname @bridges meta skuid {layout.router_user} ip daddr . tcp dport @web "
        "accept \\\n"
        "            comment \"the router's workers (their own user) to a web dyno's PORT\""
    )


def remove(layout: Layout) -> str:
    """Delete both tables (and nothing else), whether or not they exist."""
    t = layout.table
    return "".join(
        f"add table {family} {t}\ndelete table {family} {t}\n" for family in ("bridge", "inet")
    )


def add_dyno(layout: Layout, port: Port, web: WebTarget | None = None) -> str:
    text = f"add element bridge {layout.table} ports {{ {_port_element(port)} }}\n"
    if web is not None:
        text += f"add element inet {layout.table} web {{ {_web_element(web)} }}\n"
    return text


def remove_dyno(layout: Layout, port: Port, web: WebTarget | None = None) -> str:
    text = f"delete element bridge {layout.table} ports {{ {_port_element(port)} }}\n"
    if web is not None:
        text += f"delete element inet {layout.table} web {{ {_web_element(web)} }}\n"
    return text


def add_shard(layout: Layout, net: Network, bridge: str) -> str:
    """A new shard of net (already in net.bridges): where its dynos come from and go to, the
    host services they may use, and in a space its pairs with the other shards."""
    t = layout.table
    text = f'add element inet {t} bridges {{ "{bridge}" }}\n'
    if not net.is_space:  # a shard of the Common Runtime
        text += f'add element inet {t} common {{ "{bridge}" }}\n'
    text += f"add element inet {t} services {_elements(_services(net, [bridge]))}\n"
    pairs = _intra(net, bridge)
    if pairs:
        text += f"add element inet {t} intra {_elements(pairs)}\n"
    return text


def close_web(layout: Layout, web: WebTarget) -> str:
    return f"delete element inet {layout.table} web {{ {_web_element(web)} }}\n"


def open_web(layout: Layout, web: WebTarget) -> str:
    return f"add element inet {layout.table} web {{ {_web_element(web)} }}\n"


# ---------------------------------------------------------------- what the kernel should hold
def port_value(port: Port) -> object:
    """A `ports` element as `nft -j list` shows it."""
    return {"concat": [port.ifname, port.mac, port.ip]}


def web_value(target: WebTarget) -> object:
    """A `web` element as `nft -j list` shows it."""
    return {"concat": [target.ip, target.port]}


# ---------------------------------------------------------------- tracked flows
INTRA_PORTS = range(1024, 65536)
ICMP_ECHO_REQUEST = 8
# The protocols with ports, named as conntrack names them; ICMP, without, is judged apart.
PROTOCOLS = {
    number: conntrack.PROTOCOLS[number] for number in (socket.IPPROTO_TCP, socket.IPPROTO_UDP)
}


def _dyno_network(layout: Layout, address: str, local: Set[str]) -> Network | None:
    """The network whose range holds this dyno address (host addresses there are not dynos)."""
    if address in local:
        return None
    ip = ipaddress.IPv4Address(address)
    for net in layout.networks:
        if ip in ipaddress.IPv4Network(net.cidr):
            return net
    return None


def allows(
    layout: Layout, web: Set[WebTarget], local: Set[str], flow: Flow, *, marked: bool
) -> bool:
    """Do the rules let this flow's first packet through? `marked`: sent by the router (a
    socket with its mark, or of its workers' user). Flows that touch no dyno are not dynod's
    to judge: they pass."""
    src = _dyno_network(layout, flow.src, local)
    dst = _dyno_network(layout, flow.dst, local)
    proto = PROTOCOLS.get(flow.proto)
    if dst is not None:
        if src is not None:
            return src == dst and dst.is_space and _intra_allowed(flow, proto)
        if flow.src in local:
            return marked and proto == "tcp" and WebTarget(flow.dst, flow.dport or 0) in web
        return False  # from outside: nothing new reaches a dyno
    if src is not None and flow.dst in local:
        return f'"{src.bridge}" . {flow.dst} . {proto} . {flow.dport}' in _services(src)
    return True  # a dyno to the outside, or not a dyno's flow at all


def refused(layout: Layout, web: Set[WebTarget], local: Set[str], flow: Flow) -> bool:
    """Would the rules have refused this tracked flow? Conntrack keeps neither the router's
    mark nor its socket's user, so any host connection to a web dyno's PORT is taken for the
    router's."""
    return not allows(layout, web, local, flow, marked=True)


def _intra_allowed(flow: Flow, proto: str | None) -> bool:
    if proto is not None:
        return flow.dport in INTRA_PORTS
    return flow.proto == socket.IPPROTO_ICMP and flow.icmp_type == ICMP_ECHO_REQUEST
