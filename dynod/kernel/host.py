"""What the daemon asks of the kernel, for the Common Runtime: every method here runs its work on
the single kernel thread (netns.worker), never on the event loop's.

The daemon decides *when* (lifecycle, reconcile); this module knows *what* that means in netlink
calls and nftables transactions, in terms of the netns/ plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pyroute2 import IPRoute

from dynod.errors import DynodError
from dynod.kernel import firewall, network, processes, sandbox
from dynod.kernel.addressing import Pool, Subnet
from dynod.kernel.cgroups import DynoCgroups
from dynod.rules import names, sizes
from dynod.state.store import Dyno
from netns import addresses, cgroup, conntrack, links, namespace, sysctl
from netns.nftables import Nft, NftError, Snapshot, element_key, snapshot
from netns.worker import KernelWorker

SYS_NET = "/sys/class/net"  # the host's links, one directory each


@dataclass
class Net:
    """One dyno network: the Common Runtime's (key "") or a Private Space's (key: its name)."""

    key: str
    bridge: str
    pool: Pool
    nat_ip: str | None = None  # a space's stable NAT address; None: masquerade
    index: int | None = None  # the bridge's ifindex, once it exists

    @property
    def address(self) -> str:
        """The bridge's own address: where dynod's DNS (and a space's internal router) listen."""
        return self.pool.bridge.gateway

    def firewall(self) -> firewall.Network:
        return firewall.Network(self.bridge, str(self.pool.network), self.address, self.nat_ip)


class Kernel:
    def __init__(self, prefix: str, cidr: str, resolv_dir: str) -> None:
        self.names = network.Names(prefix)
        self.common = Net("", self.names.bridge, Pool(cidr))
        self.spaces: dict[str, Net] = {}
        self.resolv_dir = resolv_dir
        self.worker = KernelWorker(f"{prefix}-kernel")
        self._nft: Nft | None = None
        # What our tables should hold: taken right after each full apply, and kept up to date
        # (on the kernel thread) with the elements each later transaction added or removed.
        self._expected: Snapshot | None = None
        self.touched = False  # whether anything was made that shutdown must remove
        self.cgroups = DynoCgroups(prefix)  # where sized dynos' groups go

    @property
    def pool(self) -> Pool:
        return self.common.pool

    @property
    def layout(self) -> firewall.Layout:
        return firewall.Layout(
            table=self.names.prefix,
            port_glob=self.names.port_glob,
            common=self.common.firewall(),
            spaces=tuple(n.firewall() for _, n in sorted(self.spaces.items())),
        )

    def net(self, key: str) -> Net:
        return self.common if key == "" else self.spaces[key]

    def space_network(self, space: str) -> tuple[str, str]:
        """A network's (CIDR, bridge address): "" is the Common Runtime."""
        net = self.net(space)
        return str(net.pool.network), net.address

    def resolv_path(self, net: Net) -> str:
        return os.path.join(self.resolv_dir, f"{net.bridge}.conf")

    # ---------------------------------------------------------------- host-wide objects
    async def prepare_host(self) -> list[str]:
        """Forwarding on, the Common Runtime's bridge; returns warnings about other firewalls."""
        self.touched = True
        return await self.worker.run(self._prepare_host)

    def _prepare_host(self) -> list[str]:
        check_range_is_free(self.worker.ipr, self.common.pool.network, self.common.bridge)
        self._nft = Nft()
        if sysctl.read("net.ipv4.ip_forward") != "1":
            sysctl.write("net.ipv4.ip_forward", 1)
        self._make_bridge(self.common)
        return foreign_drop_policies(self._nft, self.layout.table) + self.cgroups.find()

    def _make_bridge(self, net: Net) -> None:
        net.index = network.ensure_bridge(self.worker.ipr, net.bridge, net.pool)
        # What dynos of this network find in /etc/resolv.conf (bound over it in their own
        # mount namespace): dynod's DNS, and no search or ndots lines, the names are complete.
        os.makedirs(self.resolv_dir, mode=0o755, exist_ok=True)
        path = self.resolv_path(net)
        with open(path + ".new", "w") as f:
            f.write(f"# dynod: DNS on the {net.bridge} bridge\nnameserver {net.address}\n")
        os.chmod(path + ".new", 0o644)
        os.replace(path + ".new", path)

    async def add_space(
        self, key: str, space_id: int, cidr: str, nat_ip: str, live: Iterable[Dyno] | None
    ) -> Net:
        """A space's bridge and its place in the firewall: the whole firewall is re-applied, in
        one transaction, with the live dynos' elements. With live=None (the daemon's start-up,
        which opens every space of the state first and then applies the firewall once) the
        firewall is left alone, and a failure removes nothing: the space's dynos may be
        running on that bridge."""
        net = Net(key, self.names.space_bridge(space_id), Pool(cidr), nat_ip)
        await self.worker.run(self._add_space, net, None if live is None else list(live))
        return net

    def _add_space(self, net: Net, live: list[Dyno] | None) -> None:
        check_range_is_free(self.worker.ipr, net.pool.network, net.bridge)
        self._make_bridge(net)
        self.spaces[net.key] = net
        if live is None:
            return
        try:
            self._apply_firewall(live)
        except BaseException:
            del self.spaces[net.key]
            network.remove_bridge(self.worker.ipr, net.bridge)
            raise

    async def remove_space(self, key: str, live: Iterable[Dyno]) -> None:
        await self.worker.run(self._remove_space, key, list(live))

    def _remove_space(self, key: str, live: list[Dyno]) -> None:
        net = self.spaces.pop(key)
        try:
            self._apply_firewall(live)
        except BaseException:
            self.spaces[key] = net  # nothing changed: the space is still whole
            raise
        network.remove_bridge(self.worker.ipr, net.bridge)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.resolv_path(net))

    async def check_range(self, cidr: str) -> None:
        """Refuse a range a route of the host already covers (see check_range_is_free)."""
        wanted = ipaddress.IPv4Network(cidr)
        await self.worker.run(lambda: check_range_is_free(self.worker.ipr, wanted, None))

    async def routed_ranges(self) -> list[ipaddress.IPv4Network]:
        """Every IPv4 range the host has a route to, but the default route."""
        return await self.worker.run(
            lambda: [r for r, _ in addresses.ipv4_routes(self.worker.ipr) if r.prefixlen]
        )

    async def local_addresses(self) -> set[str]:
        return await self.worker.run(lambda: addresses.local_ipv4(self.worker.ipr))

    async def default_source(self) -> str | None:
        """The address the host's own outbound traffic leaves from (`ip route get 192.0.2.0`'s
        src is what a person would read; the default route's preferred source here)."""
        return await self.worker.run(lambda: addresses.default_source(self.worker.ipr))

    async def remove_host_objects(self) -> None:
        await self.worker.run(self._remove_host_objects)

    def _remove_host_objects(self) -> None:
        nft = self._nft or Nft()
        nft.run(firewall.remove(self.layout))
        nft.close()
        self._nft = None
        # Veths of namespaces deleted moments ago may still be being destroyed by the kernel;
        # the daemon leaves nothing behind, so it deletes them itself.
        ipr = self.worker.ipr
        for veth in network.existing_veths(ipr, self.names):
            links.delete(ipr, veth)
        for bridge in network.existing_space_bridges(ipr, self.names) | {self.common.bridge}:
            network.remove_bridge(ipr, bridge)
        self.cgroups.release()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.resolv_dir)

    def close(self) -> None:
        self.worker.close()

    # ---------------------------------------------------------------- one dyno
    def subnet(self, dyno: Dyno) -> Subnet:
        return self.net(dyno.space).pool.subnet(dyno.slot)

    def port(self, dyno: Dyno) -> firewall.Port:
        return firewall.Port(dyno.veth, self.subnet(dyno).dyno_mac, dyno.ip)

    @staticmethod
    def web(dyno: Dyno) -> firewall.WebTarget | None:
        if dyno.type == names.WEB_TYPE and dyno.port:
            return firewall.WebTarget(dyno.ip, dyno.port)
        return None

    def _attachment(self, dyno: Dyno) -> network.Attachment:
        return network.Attachment(dyno.netns, dyno.veth, self.subnet(dyno))

    def _nftables(self) -> Nft:
        assert self._nft is not None, "prepare_host() first"
        return self._nft

    async def attach(self, dyno: Dyno, live: Callable[[], Iterable[Dyno]]) -> None:
        """The dyno's namespace, veth, /30, route and sysctls, and its firewall elements; all
        or nothing. When nft refuses the elements, our tables were changed behind our back (a
        flushed ruleset): they are rebuilt from live() (this dyno included), and tried again
        once."""
        try:
            await self.worker.run(self._attach, dyno)
        except NftError:
            await self.apply_firewall(live())
            await self.worker.run(self._attach, dyno)

    def _attach(self, dyno: Dyno) -> None:
        bridge = self.net(dyno.space).index
        assert bridge is not None
        # Firewall elements first: they are plain data, harmless before the port exists, and
        # a refusal then leaves nothing in the network to undo.
        self._nftables().run(firewall.add_dyno(self.layout, self.port(dyno), self.web(dyno)))
        self._expect(dyno, present=True)
        try:
            network.attach(self.worker.ipr, bridge, self._attachment(dyno))
        except BaseException:
            with contextlib.suppress(NftError):
                self._nftables().run(
                    firewall.remove_dyno(self.layout, self.port(dyno), self.web(dyno))
                )
            self._expect(dyno, present=False)
            raise

    async def detach(self, dyno: Dyno) -> None:
        """Firewall elements, gateway address and namespace (and so the veth) go."""
        await self.worker.run(self._detach, dyno)
        await self.worker.run(self.cgroups.remove, dyno)

    def _detach(self, dyno: Dyno) -> None:
        with contextlib.suppress(NftError):  # elements already gone: nothing to remove
            self._nftables().run(firewall.remove_dyno(self.layout, self.port(dyno), self.web(dyno)))
        self._expect(dyno, present=False)
        network.detach(self.worker.ipr, self.net(dyno.space).index, self._attachment(dyno))

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
        """A restarted web dyno's new PORT replaces the old one, in one transaction."""
        await self.worker.run(self._move_web, old, new)

    def _move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
        text = firewall.close_web(self.layout, old) + firewall.open_web(self.layout, new)
        self._nftables().run(text)
        if self._expected is not None:
            self._expected.discard("inet", "web", element_key(firewall.web_value(old)))
            self._expected.add("inet", "web", element_key(firewall.web_value(new)))

    def _expect(self, dyno: Dyno, present: bool) -> None:
        """Record what a successful transaction did to the per-dyno sets."""
        if self._expected is None:
            return
        change = self._expected.add if present else self._expected.discard
        change("bridge", "ports", element_key(firewall.port_value(self.port(dyno))))
        web = self.web(dyno)
        if web is not None:
            change("inet", "web", element_key(firewall.web_value(web)))

    async def kill_inside(self, dyno: Dyno) -> None:
        """SIGKILL to every process of the dyno (see dyno_pids): its pid namespace's init first
        among them, whose death makes the kernel kill the rest of that namespace."""
        await self.worker.run(_signal_dyno, dyno, signal.SIGKILL)

    async def signal_inside(self, dyno: Dyno, sig: signal.Signals) -> int:
        """Send sig to every process of the dyno, found and signalled in one go (a PID found now
        is signalled now, not after it could have been reused); how many."""
        return await self.worker.run(_signal_dyno, dyno, sig)

    @staticmethod
    async def pids_inside(dyno: Dyno) -> list[int]:
        """The dyno's processes (dyno_pids): a /proc scan, off the event loop and off the kernel
        thread."""
        return await asyncio.to_thread(dyno_pids, dyno)

    @staticmethod
    def removed_objects(dyno: Dyno) -> list[str]:
        """What someone removed of the dyno's network while it runs, as `ip netns list` and
        `ip link show VETH` would tell: a stat each, cheap enough to ask every second."""
        removed = []
        if not namespace.exists(dyno.netns):
            removed.append(f"network namespace {dyno.netns}")
        if not os.path.exists(os.path.join(SYS_NET, dyno.veth)):
            removed.append(f"veth {dyno.veth}")
        return removed

    async def rebuild(self, dyno: Dyno) -> None:
        """A dyno's network from scratch, for one whose namespace name or veth was removed while
        it ran (its processes must be gone): what is left is removed (`ip netns delete`,
        `ip link del VETH`, the gateway address and firewall elements), then attach()."""
        await self.worker.run(self._rebuild, dyno)

    def _rebuild(self, dyno: Dyno) -> None:
        self._detach(dyno)
        # A namespace whose name was deleted dies with its last process, and the kernel
        # destroys its veth a moment later: the name must be free for the new one now.
        links.delete(self.worker.ipr, dyno.veth)
        self._attach(dyno)

    async def spawn(
        self, dyno: Dyno, env: Mapping[str, str], output_path: str, ipv6: bool = True
    ) -> subprocess.Popen[bytes]:
        """`ip netns exec NS setpriv ... /bin/sh -c COMMAND >>OUTPUT 2>&1 </dev/null`, with IPv6
        on or off in the namespace (DNS discovery turns it off) and the network's resolv.conf."""
        return await self.worker.run(self._spawn, dyno, env, output_path, ipv6)

    def _spawn(
        self, dyno: Dyno, env: Mapping[str, str], output_path: str, ipv6: bool
    ) -> subprocess.Popen[bytes]:
        network.set_ipv6(dyno.netns, ipv6)
        size = sizes.SIZES[dyno.size] if dyno.size else None
        return sandbox.spawn(
            sandbox.Spawn(
                netns=dyno.netns,
                command=dyno.command,
                cwd=dyno.cwd,
                uid=dyno.uid,
                gid=dyno.gid,
                resolv=self.resolv_path(self.net(dyno.space)),
                tmpfs_size=size.tmpfs_bytes if size else None,
                cgroups=self.cgroups.make(dyno, size) if size else [],
            ),
            env,
            output_path,
        )

    # ---------------------------------------------------------------- cgroups (dyno sizes)
    def cgroup_usage(self, dyno: Dyno) -> cgroup.Usage | None:
        return self.cgroups.usage(dyno)

    async def remove_unknown_cgroups(self, live: Iterable[Dyno]) -> None:
        """Groups with our prefix below the daemon's cgroup that no live dyno owns (left by a
        daemon killed with SIGKILL): their processes are killed, the groups removed."""
        await self.worker.run(self.cgroups.remove_all_but, {self.cgroups.name(d) for d in live})

    # ---------------------------------------------------------------- reconcile
    async def existing_veths(self) -> set[str]:
        return await self.worker.run(lambda: network.existing_veths(self.worker.ipr, self.names))

    async def apply_firewall(self, live: Iterable[Dyno]) -> None:
        """The whole ruleset, rebuilt from the state, replacing what is there atomically."""
        await self.worker.run(self._apply_firewall, list(live))

    def _apply_firewall(self, dynos: list[Dyno]) -> None:
        # At start-up spaces are opened one by one: a dyno of one not opened yet waits for it.
        dynos = [d for d in dynos if d.space == "" or d.space in self.spaces]
        web = [w for w in (self.web(d) for d in dynos) if w is not None]
        self._nftables().run(firewall.ruleset(self.layout, [self.port(d) for d in dynos], web))
        self._expected = snapshot(self._nftables(), self._tables())
        # Ports made by an older dynod (adopted at start-up), or changed by hand since, get the
        # port settings the firewall relies on too.
        for dyno in dynos:
            with contextlib.suppress(FileNotFoundError):  # its veth is gone: reconcile's job
                network.close_port_to_host(dyno.veth)

    def _tables(self) -> list[tuple[str, str]]:
        return [("bridge", self.layout.table), ("inet", self.layout.table)]

    async def firewall_intact(self) -> bool:
        """Are our tables there with every rule and every set element we put in them?"""
        return await self.worker.run(self._firewall_intact)

    def _firewall_intact(self) -> bool:
        if self._expected is None:
            return True  # never applied yet: nothing to compare with
        return snapshot(self._nftables(), self._tables()) == self._expected

    async def restore_firewall(self, live: Iterable[Dyno]) -> int:
        """Re-apply the whole firewall from the state, then cut the tracked flows it refuses
        (connections opened while it was missing would live on in conntrack); how many."""
        return await self.worker.run(self._restore_firewall, list(live))

    def _restore_firewall(self, dynos: list[Dyno]) -> int:
        self._apply_firewall(dynos)
        layout = self.layout
        web = {w for w in (self.web(d) for d in dynos) if w is not None}
        local = addresses.local_ipv4(self.worker.ipr)
        return conntrack.delete_where(lambda flow: firewall.refused(layout, web, local, flow))

    async def remove_unknown(self, live: Iterable[Dyno]) -> None:
        """Namespaces, veths and bridge addresses with our prefix that no live dyno owns."""
        await self.worker.run(self._remove_unknown, list(live))

    def _remove_unknown(self, live: list[Dyno]) -> None:
        ipr = self.worker.ipr
        known_netns = {d.netns for d in live}
        for name in namespace.names(f"{self.names.prefix}-"):
            if self.names.owns_netns(name) and name not in known_netns:
                _kill_inside(name)
                namespace.delete(name)
        known_veths = {d.veth for d in live}
        for veth in network.existing_veths(ipr, self.names):
            if veth not in known_veths:
                links.delete(ipr, veth)
        known_bridges = {n.bridge for n in self.spaces.values()}
        for bridge in network.existing_space_bridges(ipr, self.names) - known_bridges:
            network.remove_bridge(ipr, bridge)
        for net in (self.common, *self.spaces.values()):
            assert net.index is not None
            wanted = {net.address} | {self.subnet(d).gateway for d in live if d.space == net.key}
            for iface in addresses.ipv4_on(ipr, net.index):
                if iface.ip in net.pool.network and str(iface.ip) not in wanted:
                    addresses.delete(ipr, net.index, str(iface.ip), iface.network.prefixlen)

    async def restore_gateways(self, live: Iterable[Dyno]) -> None:
        """Put back the gateway address of every kept dyno (someone may have removed it)."""
        await self.worker.run(self._restore_gateways, list(live))

    def _restore_gateways(self, live: list[Dyno]) -> None:
        for dyno in live:
            bridge = self.net(dyno.space).index
            assert bridge is not None
            subnet = self.subnet(dyno)
            addresses.add(self.worker.ipr, bridge, subnet.gateway, subnet.prefixlen)


def check_range_is_free(
    ipr: IPRoute, wanted: ipaddress.IPv4Network, own_bridge: str | None
) -> None:
    """Refuse a range that a route of the host already covers (a LAN on 172.16/12 or 10/8 is
    common): dynos would shadow those hosts, or never be reached. A route through our own bridge
    of that name (left by a previous run) does not count."""
    ours = links.index_of(ipr, own_bridge) if own_bridge else None
    for routed, oif in addresses.ipv4_routes(ipr):
        if routed.prefixlen == 0 or (ours and oif == ours) or not routed.overlaps(wanted):
            continue
        device = links.name_of(ipr, oif) if oif else "?"
        raise DynodError(
            f"the range {wanted} overlaps the route to {routed} on {device}",
            "choose a free range (--cidr)",
        )


def dyno_pids(dyno: Dyno) -> list[int]:
    """Every process of a dyno, also when its namespace's name was deleted (`ip netns delete`
    while it runs: the namespace lives on, held by its processes).

    The dyno's recorded process is `unshare --pid --fork`; every process whose pid namespace
    is the one unshare made for its children belongs to the dyno, and a dyno's processes cannot
    leave it. Also unshare itself, and whatever is in the named network namespace (a process
    that root put there with `ip netns exec`, or one whose unshare is gone)."""
    found: set[int] = set(namespace.pids_inside(dyno.netns))
    if processes.is_alive(dyno.pid, dyno.pid_start):
        assert dyno.pid is not None
        found.add(dyno.pid)
        found.update(namespace.pids_in_child_pid_namespace(dyno.pid))
    return sorted(found)


def _signal_dyno(dyno: Dyno, sig: signal.Signals) -> int:
    pids = dyno_pids(dyno)
    processes.signal_all(pids, sig)
    return len(pids)


def _signal_inside(netns: str, sig: signal.Signals) -> int:
    pids = namespace.pids_inside(netns)
    processes.signal_all(pids, sig)
    return len(pids)


def _kill_inside(netns: str) -> None:
    """`ip netns pids NS | xargs kill -KILL`, for namespaces no dyno of the state owns."""
    _signal_inside(netns, signal.SIGKILL)


def foreign_drop_policies(nft: Nft, own_table: str) -> list[str]:
    """Base chains of other tables that drop by default on forward or input.

    An accept in dynod's table cannot override a drop in another table (each table's chains
    see the packet), so such a host firewall silently breaks dyno traffic: say so at start-up.
    """
    found = []
    for item in nft.ruleset():
        chain = item.get("chain")
        if not chain or chain.get("table") == own_table:
            continue
        if chain.get("hook") in ("forward", "input") and chain.get("policy") == "drop":
            found.append(
                f"table {chain['family']} {chain['table']} chain {chain['name']} drops "
                f"{chain['hook']} traffic by default; dyno traffic it does not accept is dropped "
                "whatever dynod allows"
            )
    return found
