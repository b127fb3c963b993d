"""One dyno's network on the host (kernel thread): its firewall elements and its namespace,
veth, /30 and route (kernel/network.py says the commands), all or nothing."""

from __future__ import annotations

import contextlib

from dynod.kernel import firewall, network, ruleset
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.machine import Machine
from netns import links
from netns.nftables import NftError


def _attachment(dyno: DynoNetwork) -> network.Attachment:
    return network.Attachment(dyno.netns, dyno.veth, dyno.subnet)


def attach(m: Machine, dyno: DynoNetwork) -> None:
    bridge = m.bridge_index(dyno.bridge)
    # Firewall elements first: they are plain data, harmless before the port exists, and
    # a refusal then leaves nothing in the network to undo.
    m.nftables().run(firewall.add_dyno(m.layout, dyno.port, dyno.web))
    ruleset.expect(m, dyno, present=True)
    try:
        network.attach(m.worker.ipr, bridge, _attachment(dyno))
    except BaseException:
        with contextlib.suppress(NftError):
            m.nftables().run(firewall.remove_dyno(m.layout, dyno.port, dyno.web))
        ruleset.expect(m, dyno, present=False)
        raise


def detach(m: Machine, dyno: DynoNetwork) -> None:
    with contextlib.suppress(NftError):  # elements already gone: nothing to remove
        m.nftables().run(firewall.remove_dyno(m.layout, dyno.port, dyno.web))
    ruleset.expect(m, dyno, present=False)
    index = m.bridge_index(dyno.bridge) if m.is_open(dyno.bridge) else None
    network.detach(m.worker.ipr, index, _attachment(dyno))


def rebuild(m: Machine, dyno: DynoNetwork) -> None:
    detach(m, dyno)
    # A namespace whose name was deleted dies with its last process, and the kernel
    # destroys its veth a moment later: the name must be free for the new one now.
    links.delete(m.worker.ipr, dyno.veth)
    attach(m, dyno)
