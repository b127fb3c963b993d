"""What the daemon asks of the kernel, for the Common Runtime: every method here runs its work on
the single kernel thread (netns.worker), never on the event loop's.

The daemon decides *when* (lifecycle, reconcile); this module knows *what* that means in netlink
calls and nftables transactions, in terms of the netns/ plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping

from dynod import firewall, launch, names, network, processes
from dynod.addressing import Pool
from dynod.errors import DynodError
from dynod.state import Dyno
from netns import addresses, links, namespace, sysctl
from netns import exec as netns_exec
from netns.nftables import Nft, NftError
from netns.worker import KernelWorker

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# The dyno's first process, already its own user, and the init of its pid namespace. It reads the
# environment from stdin (so nothing running as root ever sees it: LD_PRELOAD and the like),
# enters the directory, and runs the command in the background with stdin on /dev/null.
# As init it is shielded by the kernel from every signal it has no handler for; it handles
# SIGTERM only to learn that the dyno is being stopped. Then it waits until every other process
# of the dyno has exited (they all got SIGTERM and have the grace period; the daemon SIGKILLs
# them after it), so a graceful shutdown is never cut short. When the command exits on its own
# it exits at once, with the command's status, and the kernel kills whatever the command left.
DYNO_INIT = """
. /dev/stdin || exit 126
cd -- "$1" || exit 126
stopping=
trap 'stopping=yes' TERM
/bin/sh -c "$0" </dev/null &
main=$!
while :; do
    wait "$main"
    status=$?
    kill -0 "$main" 2>/dev/null || break
done
if [ -n "$stopping" ]; then
    while set -- /proc/[0-9]*; [ "$#" -gt 1 ]; do sleep 0.01; done
fi
exit "$status"
"""


class CommonRuntimeKernel:
    def __init__(self, prefix: str, cidr: str) -> None:
        self.names = network.Names(prefix)
        self.pool = Pool(cidr)
        self.layout = firewall.Layout(
            table=prefix,
            bridge=self.names.bridge,
            port_glob=self.names.port_glob,
            cidr=str(self.pool.network),
        )
        self.worker = KernelWorker(f"{prefix}-kernel")
        self._nft: Nft | None = None
        self._bridge: int | None = None
        self._rules = -1  # rules in our tables when we last applied them
        self.touched = False  # whether anything was made that shutdown must remove

    # ---------------------------------------------------------------- host-wide objects
    async def prepare_host(self) -> list[str]:
        """Forwarding on, the bridge; returns warnings about other firewalls."""
        self.touched = True
        return await self.worker.run(self._prepare_host)

    def _prepare_host(self) -> list[str]:
        self._check_range_is_free()
        self._nft = Nft()
        if sysctl.read("net.ipv4.ip_forward") != "1":
            sysctl.write("net.ipv4.ip_forward", 1)
        self._bridge = network.ensure_bridge(self.worker.ipr, self.names, self.pool)
        return foreign_drop_policies(self._nft, self.layout.table)

    def _check_range_is_free(self) -> None:
        """Refuse a range that a route of the host already covers (a LAN on 172.16/12 is common):
        dynos would shadow those hosts, or never be reached."""
        ipr = self.worker.ipr
        ours = links.index_of(ipr, self.names.bridge)  # a previous run's bridge is ours
        for routed, oif in addresses.ipv4_routes(ipr):
            if routed.prefixlen == 0 or oif == ours or not routed.overlaps(self.pool.network):
                continue
            device = links.name_of(ipr, oif) if oif else "?"
            raise DynodError(
                f"the dyno range {self.pool.network} overlaps the route to {routed} on {device}",
                "start the daemon with a free range, e.g. --cidr 172.30.0.0/16",
            )

    async def remove_host_objects(self) -> None:
        await self.worker.run(self._remove_host_objects)

    def _remove_host_objects(self) -> None:
        nft = self._nft or Nft()
        nft.run(firewall.remove(self.layout))
        nft.close()
        self._nft = None
        # Veths of namespaces deleted moments ago may still be being destroyed by the kernel;
        # the daemon leaves nothing behind, so it deletes them itself.
        for veth in network.existing_veths(self.worker.ipr, self.names):
            links.delete(self.worker.ipr, veth)
        network.remove_bridge(self.worker.ipr, self.names)

    def close(self) -> None:
        self.worker.close()

    # ---------------------------------------------------------------- one dyno
    def port(self, dyno: Dyno) -> firewall.Port:
        return firewall.Port(dyno.veth, self.pool.subnet(dyno.slot).dyno_mac, dyno.ip)

    @staticmethod
    def web(dyno: Dyno) -> firewall.WebTarget | None:
        if dyno.type == names.WEB_TYPE and dyno.port:
            return firewall.WebTarget(dyno.ip, dyno.port)
        return None

    def _attachment(self, dyno: Dyno) -> network.Attachment:
        return network.Attachment(dyno.netns, dyno.veth, self.pool.subnet(dyno.slot))

    def _nftables(self) -> Nft:
        assert self._nft is not None, "prepare_host() first"
        return self._nft

    async def attach(self, dyno: Dyno) -> None:
        """The dyno's namespace, veth, /30, route and sysctls, and its firewall elements; all
        or nothing (NftError when the firewall refused the elements)."""
        await self.worker.run(self._attach, dyno)

    def _attach(self, dyno: Dyno) -> None:
        assert self._bridge is not None
        # Firewall elements first: they are plain data, harmless before the port exists, and
        # a refusal then leaves nothing in the network to undo.
        self._nftables().run(firewall.add_dyno(self.layout, self.port(dyno), self.web(dyno)))
        try:
            network.attach(self.worker.ipr, self._bridge, self._attachment(dyno))
        except BaseException:
            with contextlib.suppress(NftError):
                self._nftables().run(
                    firewall.remove_dyno(self.layout, self.port(dyno), self.web(dyno))
                )
            raise

    async def detach(self, dyno: Dyno) -> None:
        """Firewall elements, gateway address and namespace (and so the veth) go."""
        await self.worker.run(self._detach, dyno)

    def _detach(self, dyno: Dyno) -> None:
        with contextlib.suppress(NftError):  # elements already gone: nothing to remove
            self._nftables().run(firewall.remove_dyno(self.layout, self.port(dyno), self.web(dyno)))
        network.detach(self.worker.ipr, self._bridge, self._attachment(dyno))

    async def move_web(self, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
        """A restarted web dyno's new PORT replaces the old one, in one transaction."""
        text = firewall.close_web(self.layout, old) + firewall.open_web(self.layout, new)
        await self.worker.run(self._nftables().run, text)

    async def kill_inside(self, netns: str) -> None:
        await self.worker.run(_kill_inside, netns)

    async def signal_inside(self, netns: str, sig: signal.Signals) -> int:
        """Send sig to every process in the namespace, found and signalled in one go (a PID
        found now is signalled now, not after it could have been reused); how many."""
        return await self.worker.run(_signal_inside, netns, sig)

    @staticmethod
    async def pids_inside(netns: str) -> list[int]:
        """`ip netns pids NS`: a /proc scan, off the event loop and off the kernel thread."""
        return await asyncio.to_thread(namespace.pids_inside, netns)

    async def spawn(
        self, dyno: Dyno, env: Mapping[str, str], output_path: str
    ) -> subprocess.Popen[bytes]:
        """`ip netns exec NS setpriv ... /bin/sh -c COMMAND >>OUTPUT 2>&1 </dev/null`."""
        return await self.worker.run(self._spawn, dyno, env, output_path)

    @staticmethod
    def _spawn(dyno: Dyno, env: Mapping[str, str], output_path: str) -> subprocess.Popen[bytes]:
        # Checked again at every start, on the very inodes handed down: the directory may have
        # been swapped for a symlink since the last one.
        dir_fd = launch.open_dir_as(dyno.cwd, dyno.uid, dyno.gid)
        try:
            checked = os.fstat(dir_fd)
        finally:
            os.close(dir_fd)
        argv = netns_exec.own_namespaces(
            netns_exec.drop_privileges_argv(
                dyno.uid, dyno.gid, ["/bin/sh", "-c", DYNO_INIT, dyno.command, dyno.cwd]
            ),
            keep=dyno.cwd,
            keep_id=f"{checked.st_dev}:{checked.st_ino}",
        )
        env_fd = os.memfd_create("dyno-env", os.MFD_CLOEXEC)
        out_fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(env_fd, processes.env_script(env).encode())
            os.lseek(env_fd, 0, os.SEEK_SET)
            return netns_exec.popen_inside(
                dyno.netns,
                argv,
                cwd="/",  # the dyno's directory is entered by the dyno's user, not by root
                env={"PATH": SAFE_PATH},
                stdin=env_fd,
                stdout=out_fd,
                stderr=out_fd,
                start_new_session=True,  # its own session: Ctrl-C on a terminal never reaches it
                close_fds=True,
            )
        finally:
            os.close(env_fd)
            os.close(out_fd)

    # ---------------------------------------------------------------- reconcile
    async def existing_veths(self) -> set[str]:
        return await self.worker.run(lambda: network.existing_veths(self.worker.ipr, self.names))

    async def apply_firewall(self, live: Iterable[Dyno]) -> None:
        """The whole ruleset, rebuilt from the state, replacing what is there atomically."""
        await self.worker.run(self._apply_firewall, list(live))

    def _apply_firewall(self, dynos: list[Dyno]) -> None:
        web = [w for w in (self.web(d) for d in dynos) if w is not None]
        self._nftables().run(firewall.ruleset(self.layout, [self.port(d) for d in dynos], web))
        self._rules = self._rule_count()

    def _rule_count(self) -> int:
        """Rules in both of our tables; -1 when one is missing."""
        total = 0
        for family in ("bridge", "inet"):
            try:
                listing = json.loads(
                    self._nftables().run(f"list table {family} {self.layout.table}", as_json=True)
                )
            except NftError:
                return -1
            total += sum(1 for item in listing["nftables"] if "rule" in item)
        return total

    async def firewall_intact(self) -> bool:
        """Are our tables there with every rule we put in them?"""
        return await self.worker.run(lambda: self._rule_count() == self._rules)

    async def remove_unknown(self, live: Iterable[Dyno]) -> None:
        """Namespaces, veths and bridge addresses with our prefix that no live dyno owns."""
        await self.worker.run(self._remove_unknown, list(live))

    def _remove_unknown(self, live: list[Dyno]) -> None:
        ipr = self.worker.ipr
        known_netns = {d.netns for d in live}
        for name in namespace.names(f"{self.layout.table}-"):
            if self.names.owns_netns(name) and name not in known_netns:
                _kill_inside(name)
                namespace.delete(name)
        known_veths = {d.veth for d in live}
        for veth in network.existing_veths(ipr, self.names):
            if veth not in known_veths:
                links.delete(ipr, veth)
        assert self._bridge is not None
        wanted = {self.pool.bridge.gateway} | {self.pool.subnet(d.slot).gateway for d in live}
        for iface in addresses.ipv4_on(ipr, self._bridge):
            if iface.ip in self.pool.network and str(iface.ip) not in wanted:
                addresses.delete(ipr, self._bridge, str(iface.ip), iface.network.prefixlen)

    async def restore_gateways(self, live: Iterable[Dyno]) -> None:
        """Put back the gateway address of every kept dyno (someone may have removed it)."""
        await self.worker.run(self._restore_gateways, list(live))

    def _restore_gateways(self, live: list[Dyno]) -> None:
        assert self._bridge is not None
        for dyno in live:
            subnet = self.pool.subnet(dyno.slot)
            addresses.add(self.worker.ipr, self._bridge, subnet.gateway, subnet.prefixlen)


def _signal_inside(netns: str, sig: signal.Signals) -> int:
    pids = namespace.pids_inside(netns)
    processes.signal_all(pids, sig)
    return len(pids)


def _kill_inside(netns: str) -> None:
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
