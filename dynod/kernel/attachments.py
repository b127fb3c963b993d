"""One dyno's network on the host (kernel thread): its firewall elements and its namespace,
veth, /30 and route (kernel/network.py says the commands), all or nothing."""

from __future__ import annotations

import contextlib

from dynod.kernel import firewall, network, ruleset, shards
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.machine import Machine
from netns import links, namespace
from netns.nftables import NftError


def _attachment(dyno: DynoNetwork) -> network.Attachment:
    return network.Attachment(dyno.netns, dyno.veth, dyno.subnet, dyno.bridge_mac)


def attach(m: Machine, dyno: DynoNetwork, *, ipv6: bool) -> None:
    """The dyno's firewall elements and network (network.attach), IPv6 off inside unless
    `ipv6`: a first start passes its process's; a rebuild leaves it on, and the spawn that
    follows sets it (network.set_ipv6)."""
    bridge = _shard(m, dyno)
    # Firewall elements first: they are plain data, harmless before the port exists, and
    # a refusal then leaves nothing in the network to undo.
    m.nftables().run(firewall.add_dyno(m.layout, dyno.port, dyno.web))
    ruleset.expect(m, dyno, present=True)
    try:
        network.attach(m.worker.rtnl, bridge, _attachment(dyno), m.nsids, ipv6=ipv6)
    except BaseException:
        with contextlib.suppress(NftError):
            m.nftables().run(firewall.remove_dyno(m.layout, dyno.port, dyno.web))
        ruleset.expect(m, dyno, present=False)
        raise


def _shard(m: Machine, dyno: DynoNetwork) -> int:
    """The dyno's bridge; a shard made for it gets its firewall elements, or goes again."""
    index, made = shards.open_shard(m, dyno)
    if made:
        net = shards.network_of(m, dyno)
        try:
            ruleset.add_shard(m, net, net.shard_bridge(dyno.shard))
        except BaseException:
            shards.close_shard(m, net, dyno.shard)
            raise
    return index


def detach(m: Machine, dyno: DynoNetwork) -> None:
    try:
        unplug(m, dyno)
    finally:
        namespace.delete(dyno.netns)


def unplug(m: Machine, dyno: DynoNetwork) -> None:
    """detach() but the namespace's name: the firewall elements, the gateway's routes and the
    neighbour entry (kernel thread)."""
    with contextlib.suppress(NftError):  # elements already gone: nothing to remove
        m.nftables().run(firewall.remove_dyno(m.layout, dyno.port, dyno.web))
    ruleset.expect(m, dyno, present=False)
    net = m.network_of(dyno.bridge)
    index = net.shard_index(dyno.shard) if net is not None else None
    network.unplug(m.worker.rtnl, index, _attachment(dyno))


def rebuild(m: Machine, dyno: DynoNetwork) -> None:
    detach(m, dyno)
    # A namespace whose name was deleted dies with its last process, and the kernel
    # destroys its veth a moment later: the name must be free for the new one now.
    links.delete(m.worker.ipr, dyno.veth)
    attach(m, dyno, ipv6=True)
