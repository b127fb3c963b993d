"""The topology from what the kernel holds (look.Look) and what the state says should be there
(Wanted): a pure function, so every difference it flags is unit-tested without root.

What should be there is what attach() makes for each dyno of the state (kernel/network.py):
its namespace, its veth on its bridge with the port isolated, learning and flooding off, a
static FDB entry for its MAC, its gateway on the bridge, eth0 with its /30 and a default route
via the gateway; and every element the daemon's last firewall transactions put in its sets.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from dynod.inspect import model
from dynod.inspect.look import Look
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.network import Names
from netns import topology
from netns.nftables import element_key

# said with each difference of a dyno the state says is starting (attach() may be under way), or
# stopping (its teardown may be under way; a restart in place is "stopping" too, its network
# kept)
STARTING = " (it is starting: its network may be unfinished)"
STOPPING = " (it is stopping or restarting: its network may be being taken apart)"
CHANGING = {"starting": STARTING, "stopping": STOPPING}


@dataclass(frozen=True)
class WantedNet:
    key: str  # "" the Common Runtime, else the space's name
    bridge: str
    cidr: str
    address: str  # the bridge's own address
    prefixlen: int
    nat_ip: str | None
    # Its shards past 0 the daemon holds open (machine.Net.shards): one whose last dyno left
    # stays until the next start (kernel/shards.py), a bridge of the network, not a stray.
    shards: tuple[str, ...] = ()


@dataclass(frozen=True)
class WantedDyno:
    app: str
    name: str
    space: str
    state: str
    network: DynoNetwork


@dataclass
class Wanted:
    """What the state says, for the scope asked about."""

    prefix: str
    scope: str
    networks: list[WantedNet]
    dynos: list[WantedDyno]
    elements: dict[str, set[str]] | None  # "family set" -> element keys; None: never applied
    dns: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    everything: bool = True  # strays are looked for only in the unscoped view
    # every dyno on the networks shown (an app's view shows its own dynos, but the ports and
    # gateways of the other apps of its space are theirs, not strays); None: `dynos`
    neighbours: list[WantedDyno] | None = None

    @property
    def on_networks(self) -> list[WantedDyno]:
        return self.dynos if self.neighbours is None else self.neighbours


class _Builder:
    """Every look-up below goes through a dict or a set built once here, so a build is linear
    in what the kernel and the state hold (thousands of dynos), never a scan per dyno."""

    def __init__(self, look: Look, wanted: Wanted) -> None:
        self.look = look
        self.wanted = wanted
        self.names = Names(wanted.prefix)
        self.problems: list[model.Problem] = []
        self.links = {link.name: link for link in look.links}
        self.namespaces = set(look.namespaces)
        self.ports: dict[int, list[topology.Link]] = {}  # bridge index -> its ports, in order
        for link in look.links:
            if link.master is not None:
                self.ports.setdefault(link.master, []).append(link)
        self.on_bridge: dict[str, list[WantedDyno]] = {}  # port bridge -> its dynos
        for d in wanted.on_networks:
            self.on_bridge.setdefault(d.network.port_bridge, []).append(d)
        self._dns_names: dict[str, dict[str, list[str]]] = {}  # space -> address -> names

    def link(self, name: str) -> topology.Link | None:
        return self.links.get(name)

    def dns_names(self, space: str, address: str) -> tuple[str, ...]:
        """The space's DNS names that answer `address`, sorted."""
        if space not in self._dns_names:
            by_address: dict[str, list[str]] = {}
            for name, ips in self.wanted.dns.get(space, {}).items():
                for ip in set(ips):
                    by_address.setdefault(ip, []).append(name)
            self._dns_names[space] = by_address
        return tuple(sorted(self._dns_names[space].get(address, ())))

    def flag(self, kind: str, subject: str, detail: str) -> None:
        self.problems.append(model.Problem(kind, subject, detail))

    def routed_networks(
        self, want: WantedNet, name: str, index: int, dynos: list[WantedDyno]
    ) -> None:
        """Each dyno's /30 is routed through its bridge from its gateway (the gateway's second
        route, `src GATEWAY`: without it the host has no way to the dyno, and the router none;
        from another source the dyno's answers go elsewhere); a static route there to a /30 of
        the network's range that is no dyno's is a stray (another route, or one outside the
        range, is someone else's: an administrator's, systemd-networkd's)."""
        routed = self.look.routed.get(index, {})
        wanted = {str(d.network.subnet.network): d for d in dynos}
        for network in sorted(wanted, key=ipaddress.IPv4Network):
            gateway = wanted[network].network.gateway
            shown = f"`ip route show {network} dev {name}`"
            starting = CHANGING.get(wanted[network].state, "")
            if network not in routed:
                self.flag("missing", f"route {network}", f"through {name}; {shown}{starting}")
            elif routed[network] != gateway:
                source = f"src {routed[network]}" if routed[network] else "no src"
                self.flag(
                    "wrong",
                    f"route {network}",
                    f"through {name} has {source}, the state says src {gateway}; {shown}",
                )
        ours = ipaddress.IPv4Network(want.cidr)
        for network in sorted(set(routed) - set(wanted), key=ipaddress.IPv4Network):
            found = ipaddress.IPv4Network(network)
            if found.prefixlen == 30 and found.subnet_of(ours):  # a dyno's shape, not a dyno's
                self.flag("stray", f"route {network}", f"through {name}, no dyno's")

    # ---------------------------------------------------------------- dynos
    def dyno(self, want: WantedDyno) -> model.Dyno:
        net = want.network
        label = f"{want.app}/{want.name}"
        found_before = len(self.problems)
        exists = net.netns in self.namespaces
        if not exists:
            self.flag("missing", f"namespace {net.netns}", f"{label}'s; `ip netns list`")
        veth = self.link(net.veth)
        if veth is None:
            self.flag("missing", f"veth {net.veth}", f"{label}'s; `ip link show {net.veth}`")
        inside = self.look.inside.get(net.netns)
        eth0 = next((x for x in inside.links if x.name == "eth0"), None) if inside else None
        address: str | None = None
        routes: tuple[str, ...] = ()
        if inside is not None:
            if eth0 is None:
                self.flag("missing", f"eth0 in {net.netns}", f"`ip -n {net.netns} link`")
            else:
                found = inside.addresses.get(eth0.index, [])
                address = found[0] if found else None
                want_address = f"{net.address}/{net.prefixlen}"
                if want_address not in found:
                    self.flag(
                        "wrong",
                        f"eth0 in {net.netns}",
                        f"has {', '.join(found) or 'no address'}, the state says {want_address}; "
                        f"`ip -n {net.netns} addr`",
                    )
                if veth is not None and (eth0.peer != veth.index or veth.peer != eth0.index):
                    self.flag(
                        "wrong",
                        f"veth {net.veth}",
                        f"is not the peer of eth0 in {net.netns}; `ip -d link show {net.veth}`",
                    )
            routes = tuple(_route_text(r, inside) for r in inside.routes)
            if not any(r.dst == "default" and r.gateway == net.gateway for r in inside.routes):
                self.flag(
                    "missing",
                    f"default route in {net.netns}",
                    f"via {net.gateway}; `ip -n {net.netns} route`",
                )
        if want.state in CHANGING:  # attach() or detach() may be under way: say so with each
            for i in range(found_before, len(self.problems)):
                p = self.problems[i]
                self.problems[i] = model.Problem(
                    p.kind, p.subject, f"{p.detail}{CHANGING[want.state]}"
                )
        return model.Dyno(
            app=want.app,
            name=want.name,
            space=want.space,
            state=want.state,
            netns=net.netns,
            netns_exists=exists,
            veth=net.veth,
            veth_index=veth.index if veth else None,
            eth0_index=eth0.index if eth0 else None,
            address=address,
            gateway=net.gateway,
            routes=routes,
            bridge=net.bridge,
            web_port=net.web.port if net.web else None,
            dns=self.dns_names(want.space, net.address),
        )

    # ---------------------------------------------------------------- bridges
    def shards(self, want: WantedNet) -> list[str]:
        """The network's bridges: its own (shard 0), the shards its dynos are ports of, and
        those the daemon holds open without a dyno."""
        used = {b for b in self.on_bridge if b.startswith(f"{want.bridge}-")}
        return [want.bridge] + sorted((used | set(want.shards)) - {want.bridge})

    def bridge(self, want: WantedNet, name: str) -> model.Bridge:
        """One bridge of the network `want`: `name` is its own bridge or one of its shards,
        which have no address of their own (their dynos reach the network's through routing)."""
        link = self.link(name)
        dynos = self.on_bridge.get(name, [])
        if link is None or link.kind != "bridge":
            self.flag("missing", f"bridge {name}", f"`ip -d link show {name}`")
            return model.Bridge(name, None, want.key, want.cidr, (), (), want.nat_ip)
        have = self.look.addresses.get(link.index, [])
        routed = self.look.gateways.get(link.index, [])
        own = [f"{want.address}/{want.prefixlen}"] if name == want.bridge else []
        gateways = {d.network.gateway: d.network.prefixlen for d in dynos}
        have_set, routed_set = set(have), set(routed)
        for address in own:
            if address not in have_set:
                self.flag(
                    "missing",
                    f"address {address}",
                    f"on {name}; `ip -4 addr show dev {name}`",
                )
        changing = {d.network.gateway: CHANGING.get(d.state, "") for d in dynos}
        for gateway in gateways:
            if gateway not in routed_set:
                self.flag(
                    "missing",
                    f"gateway {gateway}",
                    f"a local route to {name}; `ip route show table local dev {name}`"
                    + changing[gateway],
                )
        for address in have:
            if address not in own:
                self.flag("stray", f"address {address}", f"on {name}, no dyno of the state's")
        for gateway in routed:
            if gateway not in gateways:
                self.flag("stray", f"gateway {gateway}", f"a local route to {name}, no dyno's")
        self.routed_networks(want, name, link.index, dynos)
        # its own address, then its dynos' gateways (each shown with its dyno's /30)
        ordered = (
            [a for a in own if a in have_set]
            + [f"{g}/{length}" for g, length in gateways.items() if g in routed_set]
            + [a for a in have if a not in own]
            + [f"{g}/32" for g in routed if g not in gateways]
        )
        return model.Bridge(
            name=name,
            index=link.index,
            network=want.key,
            cidr=want.cidr,
            addresses=tuple(ordered),
            ports=tuple(self._ports(link, dynos)),
            nat_ip=want.nat_ip,
        )

    def _ports(self, bridge: topology.Link, dynos: list[WantedDyno]) -> list[model.Port]:
        by_veth = {d.network.veth: d for d in dynos}
        static: dict[int, list[str]] = {}  # port index -> its static MACs
        for entry in self.look.fdb.get(bridge.index, []):
            if entry.static:
                static.setdefault(entry.port, []).append(entry.mac)
        ports = []
        for link in self.ports.get(bridge.index, []):
            owner = by_veth.get(link.name)
            flags = link.port or topology.PortFlags(False, True, True)
            macs = tuple(sorted(static.get(link.index, ())))
            ports.append(
                model.Port(
                    name=link.name,
                    index=link.index,
                    peer_index=link.peer,
                    isolated=flags.isolated,
                    learning=flags.learning,
                    flood=flags.flood,
                    dyno=f"{owner.app}/{owner.name}" if owner else "",
                    fdb=macs,
                )
            )
            if owner is None:
                self.flag("stray", f"port {link.name}", f"on {bridge.name}, no dyno owns it")
                continue
            wrong = _wrong_flags(flags)
            if wrong:
                self.flag(
                    "wrong",
                    f"port {link.name}",
                    f"{', '.join(wrong)}; `bridge -d link show dev {link.name}`",
                )
            if owner.network.subnet.dyno_mac not in macs:
                self.flag(
                    "missing",
                    f"fdb entry {owner.network.subnet.dyno_mac}",
                    f"static on {link.name}; `bridge fdb show br {bridge.name}`",
                )
        for d in dynos:
            veth = self.link(d.network.veth)
            if veth is not None and veth.master != bridge.index:
                self.flag("wrong", f"veth {veth.name}", f"is not a port of {bridge.name}")
        return ports

    # ---------------------------------------------------------------- firewall
    def sets(self) -> list[model.NftSet]:
        prefix = self.wanted.prefix
        for family in ("bridge", "inet"):
            if f"{family} {prefix}" not in self.look.tables:
                self.flag(
                    "missing", f"table {family} {prefix}", f"`nft list table {family} {prefix}`"
                )
        found = []
        for key, elements in sorted(self.look.sets.items()):
            family, name = key.split(" ", 1)
            found.append(
                model.NftSet(
                    family, prefix, name, tuple(sorted(model.element_text(e) for e in elements))
                )
            )
            if self.wanted.elements is None or key not in self.wanted.elements:
                continue
            want = self.wanted.elements[key]
            have = {element_key(e): e for e in elements}
            subject = f"set {family} {prefix} {name}"
            for k, e in have.items():
                if k not in want:
                    self.flag("stray", f"element {model.element_text(e)}", f"in {subject}")
            for k in sorted(want - set(have)):
                self.flag("missing", f"element {_key_text(k)}", f"in {subject}")
        return found

    # ---------------------------------------------------------------- strays
    def strays(self) -> None:
        known_veths = {d.network.veth for d in self.wanted.dynos}
        known_bridges = {b for n in self.wanted.networks for b in self.shards(n)}
        known_netns = {d.network.netns for d in self.wanted.dynos}
        for link in self.look.links:
            if self.names.veth_pattern.fullmatch(link.name) and link.name not in known_veths:
                if link.master is None:  # a port's stray is flagged with its bridge
                    self.flag("stray", f"link {link.name}", "no dyno of the state owns it")
            elif self.names.bridge_pattern.fullmatch(link.name) and link.name not in known_bridges:
                self.flag("stray", f"bridge {link.name}", "no network of the state's")
        for name in self.look.namespaces:
            if name not in known_netns:
                self.flag("stray", f"namespace {name}", "no dyno of the state's")


def build(look: Look, wanted: Wanted) -> model.Topology:
    b = _Builder(look, wanted)
    bridges = [b.bridge(n, name) for n in wanted.networks for name in b.shards(n)]
    dynos = [b.dyno(d) for d in wanted.dynos]
    sets = b.sets()
    if wanted.everything:
        b.strays()
    return model.Topology(
        prefix=wanted.prefix,
        scope=wanted.scope,
        bridges=tuple(bridges),
        dynos=tuple(dynos),
        sets=tuple(sets),
        dns={k: v for k, v in wanted.dns.items() if any(n.key == k for n in wanted.networks)},
        problems=tuple(b.problems),
    )


def _wrong_flags(flags: topology.PortFlags) -> list[str]:
    wrong = []
    if not flags.isolated:
        wrong.append("isolated off (should be on)")
    if flags.learning:
        wrong.append("learning on (should be off)")
    if flags.flood:
        wrong.append("flood on (should be off)")
    return wrong


def _route_text(route: topology.Route, inside: topology.Namespace) -> str:
    dev = next((x.name for x in inside.links if x.index == route.dev), "?")
    via = f" via {route.gateway}" if route.gateway else ""
    return f"{route.dst}{via} dev {dev}"


def _key_text(key: str) -> str:
    return model.element_text(json.loads(key))
