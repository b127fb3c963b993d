"""The host-wide objects (kernel thread): forwarding, the Common Runtime's and the spaces'
bridges with their resolv.conf, and their removal when the daemon leaves."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess

from pyroute2 import IPRoute

from dynod.errors import DynodError
from dynod.kernel import firewall, network, ruleset
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.machine import Machine, Net
from netns import addresses, links, namespace, record, sysctl, textfile
from netns.nftables import Nft


def prepare_host(m: Machine) -> list[str]:
    """`sysctl -w net.ipv4.ip_forward=1`, the Common Runtime's bridge, /run/netns in memory
    where /run is on disk (netns/namespace.py names_in_memory), the dynos' hosts files in
    memory (netns/hosts.py in_memory), the dynos' mount template (kernel/mounts.py); warnings."""
    check_range_is_free(m.worker.ipr, m.common.pool.network, m.common.bridge)
    m.nft = Nft()
    if sysctl.read("net.ipv4.ip_forward") != "1":
        sysctl.write("net.ipv4.ip_forward", 1)
    make_bridge(m, m.common)
    warnings = ruleset.foreign_drop_policies(m.nft, m.layout.table) + m.cgroups.find()
    try:  # before the template, which drops /run/netns's mounts
        namespace.names_in_memory()
    except OSError as exc:  # only slower without it: say so, and go on
        warnings.append(f"/run/netns stays on disk ({exc}): each start writes its name there")
    if why := hosts_in_memory(m):  # before the template too, which must show it
        warnings.append(why)
    try:
        m.mounts.make()
    except (OSError, subprocess.SubprocessError) as exc:  # each start tries again (mounts.py)
        warnings.append(f"no mount template ({exc}): dynos copy the host's mounts")
    return warnings


def hosts_in_memory(m: Machine) -> str:
    """The dynos' hosts files' tmpfs (netns/hosts.py in_memory); why they stay on disk, if they
    do ("": in memory). Only slower on disk: the caller says so, and goes on."""
    try:
        if m.hosts.in_memory():
            return ""
        return (
            f"{m.hosts.directory} stays on disk: it holds an older dynod's files (they go with "
            "its dynos); each start writes its dyno's hosts files there"
        )
    except OSError as exc:
        return f"{m.hosts.directory} stays on disk ({exc})"


def make_bridge(m: Machine, net: Net) -> None:
    net.index = network.ensure_bridge(m.worker.ipr, net.bridge, net.pool)
    # What dynos of this network find in /etc/resolv.conf (bound over it in their own
    # mount namespace): dynod's DNS, and no search or ndots lines, the names are complete.
    os.makedirs(m.resolv_dir, mode=0o755, exist_ok=True)
    path = m.resolv_path(net.bridge)
    text = f"# dynod: DNS on the {net.bridge} bridge\nnameserver {net.address}\n"
    record.note("mkdir", "-p", "-m", "755", m.resolv_dir)
    textfile.replace(path, text, 0o644)


def add_space(m: Machine, net: Net, live: list[DynoNetwork] | None) -> None:
    """The space's bridge; with live, the whole firewall re-applied with it, or neither."""
    check_range_is_free(m.worker.ipr, net.pool.network, net.bridge)
    make_bridge(m, net)
    m.spaces[net.key] = net
    if live is None:
        return
    try:
        ruleset.apply(m, live)
    except BaseException:
        del m.spaces[net.key]
        network.remove_bridge(m.worker.ipr, net.bridge)
        raise


def remove_space(m: Machine, key: str, live: list[DynoNetwork]) -> None:
    """The firewall without the space, then `ip link del BRIDGE` and its resolv.conf."""
    net = m.spaces.pop(key)
    try:
        ruleset.apply(m, live)
    except BaseException:
        m.spaces[key] = net  # nothing changed: the space is still whole
        raise
    for bridge, _ in reversed(net.open_shards()):
        network.remove_bridge(m.worker.ipr, bridge)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(m.resolv_path(net.bridge))
        record.note("rm", m.resolv_path(net.bridge))


def remove_host_objects(m: Machine) -> None:
    """`nft delete table ...`, every veth and bridge of ours, our cgroups and resolv.confs,
    the dynos' mount template and fstab files, and /run/netns's tmpfs if it is dynod's and
    empty."""
    nft = m.nft or Nft()
    nft.run(firewall.remove(m.layout))
    nft.close()
    m.nft = None
    # Veths of namespaces deleted moments ago may still be being destroyed by the kernel;
    # the daemon leaves nothing behind, so it deletes them itself.
    ipr = m.worker.ipr
    for veth in network.existing_veths(ipr, m.names):
        links.delete(ipr, veth)
    for bridge in network.existing_bridges(ipr, m.names) | {m.common.bridge}:
        network.remove_bridge(ipr, bridge)
    for net in m.nets():
        net.shards.clear()
    m.cgroups.release()
    m.mounts.remove()
    m.hosts.remove_all()
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(m.resolv_dir)
    namespace.release_memory()


def check_range_is_free(
    ipr: IPRoute, wanted: ipaddress.IPv4Network, own_bridge: str | None
) -> None:
    """Refuse a range that a route of the host already covers (a LAN on 172.16/12 or 10/8 is
    common): dynos would shadow those hosts, or never be reached. A route through our own bridge
    of that name or one of its shards (`NAME-N`, left by a previous run) does not count."""
    ours: set[int] = set()
    if own_bridge:
        shards = re.compile(rf"{re.escape(own_bridge)}(-[0-9]+)?")
        for name in links.names_matching(ipr, shards):
            index = links.index_of(ipr, name)
            if index is not None:
                ours.add(index)
    for routed, oif in addresses.ipv4_routes(ipr):
        if routed.prefixlen == 0 or oif in ours or not routed.overlaps(wanted):
            continue
        device = links.name_of(ipr, oif) if oif else "?"
        raise DynodError(
            f"the range {wanted} overlaps the route to {routed} on {device}",
            "choose a free range (--cidr)",
        )
