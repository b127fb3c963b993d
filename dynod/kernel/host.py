"""What the daemon asks of the kernel: every method here runs its work on the single kernel
thread (netns.worker), never on the event loop's. The work itself is in the modules named after
what they hold: bridges (host-wide objects and spaces), attachments (one dyno's network),
ruleset (the firewall and its guard), sweep (reconcile's), inside (a dyno's processes),
sandbox (spawning).

The daemon decides *when* (lifecycle, reconcile); the kernel side knows *what* that means in
netlink calls and nftables transactions. It is handed a dyno's facts (kernel/facts.py), never a
state row.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from dynod.kernel import attachments, bridges, firewall, network, ruleset, sandbox, sweep
from dynod.kernel.addressing import SHARD_PORTS, Pool
from dynod.kernel.bridges import check_range_is_free
from dynod.kernel.cgroups import DynoCgroups
from dynod.kernel.facts import NO_PIDS, DynoNetwork, Pids, Removed, Running
from dynod.kernel.inside import dyno_pids_in, signal_dyno_in, still_starting
from dynod.kernel.machine import Machine, Net, bridge_indexes
from dynod.kernel.mounts import MountTemplate
from dynod.kernel.protocol import Launched, SpawnFailed
from dynod.kernel.ruleset import foreign_drop_policies
from dynod.kernel.scans import SharedScans
from dynod.kernel.stdio import DynoEnds
from netns import addresses, cgroup, fstab, hosts, namespace, nfevents, nsid, removals
from netns.nftables import NftError
from netns.spawner import Spawner, borrowed, signal_wakeup_fd
from netns.worker import KernelWorker

__all__ = ["Kernel", "Net", "foreign_drop_policies"]

SYS_NET = "/sys/class/net"  # the host's links, one directory each


class Kernel:
    def __init__(
        self,
        prefix: str,
        cidr: str,
        resolv_dir: str,
        hosts_dir: str,
        say: Callable[[str], object],
        shard_ports: int = SHARD_PORTS,
        router_user: int | None = None,
    ) -> None:
        """say: a line for the daemon's log, from any thread (the mount template's repairs);
        router_user: the router workers' user id, whose connections to a web dyno's PORT the
        firewall lets through (None: no workers)."""
        names = network.Names(prefix)
        self.shard_ports = shard_ports  # ports per bridge of a network (machine.Net)
        self.machine = Machine(
            names=names,
            common=Net("", names.bridge, Pool(cidr), shard_ports=shard_ports),
            resolv_dir=resolv_dir,
            hosts=hosts.Files(hosts_dir, f"dynod-{prefix}"),
            worker=KernelWorker(f"{prefix}-kernel"),
            cgroups=DynoCgroups(prefix),  # where sized dynos' groups go
            mounts=MountTemplate(prefix, say),
            nsids=nsid.Descending(),
            router_user=router_user,
        )
        self.names = names
        self.say = say
        self.common = self.machine.common
        self.spaces = self.machine.spaces
        self.worker = self.machine.worker
        # dynos' processes start from a thread of their own, whose descriptor table is not the
        # daemon's two per dyno (netns/spawner.py)
        self.spawner = Spawner(f"{prefix}-spawn", keep=signal_wakeup_fd())
        self.cgroups = self.machine.cgroups
        self.touched = False  # whether anything was made that shutdown must remove
        self.nsids_said = False  # whether the log said that namespace ids stopped (nsid.py)
        self.scans = SharedScans()  # who runs in which namespace, one scan for many askers

    @property
    def pool(self) -> Pool:
        return self.common.pool

    @property
    def layout(self) -> firewall.Layout:
        return self.machine.layout

    def net(self, key: str) -> Net:
        return self.machine.net(key)

    def space_network(self, space: str) -> tuple[str, str]:
        """A network's (CIDR, bridge address): "" is the Common Runtime."""
        net = self.net(space)
        return str(net.pool.network), net.address

    # ---------------------------------------------------------------- host-wide objects
    async def prepare_host(self) -> list[str]:
        """Forwarding on, the Common Runtime's bridge; returns warnings about other firewalls."""
        self.touched = True
        return await self.worker.run(bridges.prepare_host, self.machine)

    async def add_space(
        self, key: str, space_id: int, cidr: str, nat_ip: str, live: Iterable[DynoNetwork] | None
    ) -> Net:
        """A space's bridge and its place in the firewall: the whole firewall is re-applied, in
        one transaction, with the live dynos' elements. With live=None (the daemon's start-up,
        which opens every space of the state first and then applies the firewall once) the
        firewall is left alone, and a failure removes nothing: the space's dynos may be
        running on that bridge."""
        bridge = self.names.space_bridge(space_id)
        net = Net(key, bridge, Pool(cidr), nat_ip, shard_ports=self.shard_ports)
        known = None if live is None else list(live)
        await self.worker.run(bridges.add_space, self.machine, net, known)
        return net

    async def remove_space(self, key: str, live: Iterable[DynoNetwork]) -> None:
        await self.worker.run(bridges.remove_space, self.machine, key, list(live))

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
        return await self.worker.run(
            lambda: addresses.local_ipv4(self.worker.ipr, self.worker.rtnl.routes())
        )

    async def default_source(self) -> str | None:
        """The address the host's own outbound traffic leaves from (`ip route get 192.0.2.0`'s
        src is what a person would read; the default route's preferred source here)."""
        return await self.worker.run(lambda: addresses.default_source(self.worker.ipr))

    async def remove_host_objects(self) -> None:
        await self.worker.run(bridges.remove_host_objects, self.machine)

    def close(self) -> None:
        try:
            self.worker.close()
        finally:
            self.spawner.close()

    # ---------------------------------------------------------------- one dyno
    async def launch(
        self,
        dyno: DynoNetwork,
        live: Callable[[], Iterable[DynoNetwork]],
        how: sandbox.Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
    ) -> Launched:
        """The dyno's namespace, veth, /30, route and sysctls and its firewall elements (all or
        nothing), then its process, in one job of the kernel thread (which waits for the
        spawn thread to start the process): one hand-over from the event loop and back instead
        of two (about 0.5 ms of a start). When nft refuses the
        elements, our tables were changed behind our back (a flushed ruleset): they are rebuilt
        from live() (this dyno included), and tried again once."""
        try:
            return await self.worker.run(self._launch, dyno, how, env, output_path, stdio)
        except NftError:
            await self.apply_firewall(live())
            return await self.worker.run(self._launch, dyno, how, env, output_path, stdio)

    def _launch(
        self,
        dyno: DynoNetwork,
        how: sandbox.Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None,
    ) -> Launched:
        attachments.attach(self.machine, dyno, ipv6=how.ipv6)
        attached_at = time.perf_counter()
        if self.machine.nsids.stopped and not self.nsids_said:
            self.nsids_said = True
            self.say(
                f"warning: dynos' network namespaces get no id of dynod's any more "
                f"({self.machine.nsids.stopped}): the kernel gives them one, and a start costs "
                "a little more with every dyno running"
            )
        try:
            popen = self._spawn(how, env, output_path, stdio, fresh=True)
        except Exception as exc:
            raise SpawnFailed(str(exc)) from exc
        return Launched(attached_at, popen)

    async def teardown(self, dyno: DynoNetwork, group: str | None) -> None:
        """Firewall elements, gateway routes and namespace (and so the veth) go, and the sized
        dyno's cgroup (cgroups.py). The firewall elements, gateway
        routes and neighbour entry go on the kernel thread while, on another thread, the
        namespace's name and the cgroup go: none depends on another once the dyno's processes
        are gone, and each mostly waits (an unmount for an RCU grace period, a route for
        the kernel's netlink lock), so the waits overlap instead of adding up."""
        results = await asyncio.gather(
            self.worker.run(attachments.unplug, self.machine, dyno),
            asyncio.to_thread(self._unname, dyno.netns, group),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _unname(self, netns: str, group: str | None) -> None:
        """`ip netns delete NS` and the cgroup's `rmdir`: mount and cgroupfs calls, safe on any
        thread (no namespace is entered)."""
        try:
            namespace.delete(netns)
        finally:
            self.machine.hosts.remove(netns)
            if group is not None:
                self.cgroups.remove(group)

    async def remove_group(self, group: str) -> None:
        """A sized dyno's cgroup: its processes killed, `rmdir` (cgroups.py)."""
        await self.worker.run(self.cgroups.remove, group)

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
        """A restarted web dyno's new PORT replaces the old one, in one transaction."""
        await self.worker.run(ruleset.move_web, self.machine, old, new)

    async def rebuild(self, dyno: DynoNetwork) -> None:
        """A dyno's network from scratch, for one whose namespace name or veth was removed while
        it ran (its processes must be gone): what is left is removed (`ip netns delete`,
        `ip link del VETH`, the gateway routes and firewall elements), then attach()."""
        await self.worker.run(attachments.rebuild, self.machine, dyno)

    @staticmethod
    def removed_objects(dyno: DynoNetwork) -> Removed:
        """What someone removed of the dyno's network while it runs, as `ip netns list` and
        `ip link show VETH` would tell: a stat each, cheap enough to ask every second."""
        return Removed(
            None if namespace.exists(dyno.netns) else dyno.netns,
            None if os.path.exists(os.path.join(SYS_NET, dyno.veth)) else dyno.veth,
        )

    @staticmethod
    def missing_objects(dynos: list[tuple[int, str, str]]) -> list[int]:
        """`ip netns list` and `ls /sys/class/net` once, for all these (id, netns, veth): the
        ids whose namespace name or veth is missing (removed_objects() says which)."""
        if not dynos:
            return []
        names = set(namespace.names())
        veths = set(os.listdir(SYS_NET))
        return [i for i, netns, veth in dynos if netns not in names or veth not in veths]

    @staticmethod
    def removal_events() -> removals.Removals | None:
        """`inotifywait -m -e delete /run/netns` and `ip monitor link`, in this thread's (the
        host's) network namespace: what the health check waits for instead of listing."""
        return removals.removals()

    # ---------------------------------------------------------------- one dyno's processes
    async def spawn(
        self,
        how: sandbox.Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
    ) -> subprocess.Popen[bytes]:
        """`ip netns exec NS setpriv ... /bin/sh -c COMMAND >>OUTPUT 2>&1 </dev/null`, with IPv6
        on or off in the namespace (DNS discovery turns it off) and the network's resolv.conf;
        an attached one-off's fds 0-2 are `stdio`."""
        return await self.worker.run(self._spawn, how, env, output_path, stdio)

    def _spawn(
        self,
        how: sandbox.Launch,
        env: Mapping[str, str],
        output_path: str,
        stdio: DynoEnds | None = None,
        fresh: bool = False,
    ) -> subprocess.Popen[bytes]:
        """fresh: the dyno's namespace was made in this same job (a first start), by an attach()
        given this `how.ipv6` (network.set_ipv6 relies on it). Each start
        is a new dyno as Heroku counts them, with a hostname of its own: a UUID (Heroku's dyno
        id), which its /etc/hosts gives its address."""
        netns = how.network.netns
        network.set_ipv6(netns, how.ipv6, fresh)
        size = how.size
        hostname = str(uuid.uuid4())
        spawn = sandbox.Spawn(
            netns=netns,
            command=how.command,
            cwd=how.cwd,
            uid=how.uid,
            gid=how.gid,
            hostname=hostname,
            fstab=lambda in_template: self.machine.hosts.write(
                netns,
                hostname,
                how.network.address,
                fstab.Private(
                    source=f"dynod-{self.names.prefix}",
                    resolv=self.machine.resolv_path(how.network.bridge),
                    tmpfs_size=size.tmpfs_bytes if size else None,
                    cover_netns=not in_template,
                ),
            ),
            cgroups=self.cgroups.make(netns, size, how.name) if size else [],
            # the hosts files' tmpfs too: a template made before it was (again) lacks it
            mounts=lambda device: self.machine.mounts.for_dyno(device, self.machine.hosts.device),
        )
        # someone unmounted it: a new one, before the files
        if self.machine.hosts.lost() and (why := bridges.hosts_in_memory(self.machine)):
            self.say(f"warning: the dynos' hosts files' tmpfs was unmounted: {why}")
        chosen = sandbox.ready(spawn)  # here: it may remake the mount template, and say so
        return self.spawner.call(_spawn_from_own_table, chosen, env, output_path, stdio)

    async def kill_inside(self, dyno: Running) -> None:
        """SIGKILL to every process of the dyno (see dyno_pids_in): its pid namespace's init first
        among them, whose death makes the kernel kill the rest of that namespace."""
        await self.signal_inside(dyno, signal.SIGKILL)

    async def signal_inside(
        self, dyno: Running, sig: signal.Signals, skip: Pids = NO_PIDS, via_init: bool = False
    ) -> list[int]:
        """Send sig to every process of the dyno but those in skip, found in a /proc scan
        shared with whoever asked at the same time (scans.py: many dynos stopping at once scan
        once), each checked to be the dyno's still right before its signal; those signalled
        (inside.signal_dyno_in: with via_init, its init passes it on)."""
        table = await self.scans.fresh()
        return await self.worker.run(signal_dyno_in, dyno, table, sig, skip, via_init)

    async def still_starting(self, dyno: Running) -> bool:
        """inside.still_starting: one read of /proc/PID/status."""
        return still_starting(dyno)

    async def pids_inside(self, dyno: Running) -> list[int]:
        """The dyno's processes (dyno_pids_in), from a shared /proc scan (scans.py) made off the
        event loop and off the kernel thread."""
        return dyno_pids_in(dyno, await self.scans.fresh())

    def cgroup_usage(self, group: str, above: int | None = None) -> cgroup.Usage | None:
        return self.cgroups.usage(group, above)

    # ---------------------------------------------------------------- firewall and reconcile
    async def apply_firewall(self, live: Iterable[DynoNetwork]) -> None:
        """The whole ruleset, rebuilt from the facts, replacing what is there atomically."""
        await self.worker.run(ruleset.apply, self.machine, list(live))

    async def nft_generation(self) -> int:
        """The host's nftables ruleset generation (one more at every commit, anyone's)."""
        return await self.worker.run(nfevents.generation)

    async def firewall_intact(self) -> bool:
        """Are our tables there with every rule and every set element we put in them?"""
        return await self.worker.run(ruleset.intact, self.machine)

    async def restore_firewall(self, live: Iterable[DynoNetwork]) -> int:
        """Re-apply the whole firewall, then cut the tracked flows it refuses (connections
        opened while it was missing would live on in conntrack); how many."""
        return await self.worker.run(ruleset.restore, self.machine, list(live))

    @staticmethod
    async def existing_veths(veths: Iterable[str]) -> set[str]:
        """Which of these veths the kernel still has (`ip link show VETH`, as a stat of
        /sys/class/net/VETH each): as cheap with 4,000 dynos as with one, unlike listing
        every link of the host."""
        return {v for v in veths if os.path.exists(os.path.join(SYS_NET, v))}

    async def remove_unknown(self, live: Iterable[DynoNetwork]) -> None:
        """Namespaces, veths and bridge addresses with our prefix that no live dyno owns."""
        await self.worker.run(sweep.remove_unknown, self.machine, list(live))

    async def remove_unknown_cgroups(self, groups: Iterable[str]) -> None:
        """Groups with our prefix below the daemon's cgroup that are not in groups (left by a
        daemon killed with SIGKILL): their processes are killed, the groups removed."""
        await self.worker.run(self.cgroups.remove_all_but, set(groups))

    def bridge_indexes(self) -> set[int]:
        return bridge_indexes(self.machine.nets())

    async def bridges_up(self) -> dict[str, bool]:
        """`cat /sys/class/net/BRIDGE/flags` of each open bridge: is it up. One short job of the
        kernel thread (the open shards live there), every second."""
        return await self.worker.run(sweep.bridges_up, self.machine)

    async def missing_gateways(
        self, dynos: list[DynoNetwork], whole: bool = False
    ) -> list[DynoNetwork]:
        """Of these, those whose gateway routes are not the first to their destinations, from
        one listing of the whole table (`whole`) or of their bridges' routes (kernel/sweep.py)."""
        return await self.worker.run(sweep.missing_gateways, self.machine, dynos, whole)

    async def restore_gateways(
        self, live: Iterable[DynoNetwork], whole: bool = False
    ) -> dict[str, str]:
        """Put back the gateway routes and neighbour entries of every kept dyno (someone may
        have removed them, or put others first); an older dynod's gateway address becomes
        routes (sweep.py). Those put back (""), or that could not be (why), by namespace."""
        return await self.worker.run(sweep.restore_gateways, self.machine, list(live), whole)


def _spawn_from_own_table(
    how: sandbox.Ready, env: Mapping[str, str], output_path: str, stdio: DynoEnds | None
) -> subprocess.Popen[bytes]:
    """sandbox.spawn on the spawn thread, an attached one-off's ends borrowed into its table."""
    if stdio is None:
        return sandbox.spawn(how, env, output_path)
    with borrowed([stdio.stdin, stdio.stdout, stdio.stderr]) as (stdin, stdout, stderr):
        return sandbox.spawn(how, env, output_path, DynoEnds(stdin, stdout, stderr, stdio.tty))
