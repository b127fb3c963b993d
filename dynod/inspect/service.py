"""`GET /v1/inspect[?app=A|space=S]` (`dynod inspect`): the live topology, read from the kernel
on its worker thread and set against the state (inspect/build.py flags every difference)."""

from __future__ import annotations

from typing import Any

from dynod.control.networks import Networks
from dynod.dns.registry import Registry
from dynod.errors import DynodError, NotFound
from dynod.inspect import build, look
from dynod.kernel.host import Kernel
from dynod.kernel.machine import Net
from dynod.state.store import State
from netns.nftables import Nft


class InspectService:
    def __init__(self, state: State, kernel: Kernel, networks: Networks, registry: Registry):
        self.state = state
        self.kernel = kernel
        self.networks = networks
        self.registry = registry

    async def inspect(self, app: str | None, space: str | None) -> dict[str, Any]:
        if app and space:
            raise DynodError(
                "--app and --space both given", "give one of them, or neither for everything"
            )
        keys, scope = self._scope(app, space)
        nets = [self.kernel.machine.net(k) for k in keys if self._open(k)]
        neighbours = [
            build.WantedDyno(d.app, d.name, d.space, d.state, self.networks.of(d))
            for d in self.state.dynos()
            if d.space in keys and self._open(d.space)
        ]
        dynos = [d for d in neighbours if app is None or d.app == app]
        dns = {n.key: self.registry.records(n.key) for n in nets if n.key}
        prefix = self.kernel.names.prefix
        m = self.kernel.machine

        def read() -> tuple[look.Look, dict[str, set[str]] | None, dict[str, tuple[str, ...]]]:
            # on the kernel thread: the netlink socket, Machine.expected and the open shards
            # live there
            shards = {n.key: tuple(n.shard_bridge(s) for s in sorted(n.shards)) for n in nets}
            nft = m.nft or Nft()
            try:
                seen = look.look(
                    m.worker.ipr,
                    nft,
                    prefix,
                    {n.bridge for n in nets} | {d.network.port_bridge for d in dynos},
                    [d.network.netns for d in dynos],
                )
            finally:
                if nft is not m.nft:
                    nft.close()
            expected = m.expected
            elements = (
                None if expected is None else {k: set(v) for k, v in expected.elements.items()}
            )
            return seen, elements, shards

        seen, elements, shards = await m.worker.run(read)
        wanted = build.Wanted(
            prefix=prefix,
            scope=scope,
            networks=[_wanted_net(n, shards.get(n.key, ())) for n in nets],
            dynos=dynos,
            elements=elements,
            dns=dns,
            everything=not (app or space),
            neighbours=neighbours,
        )
        return build.build(seen, wanted).to_json()

    def _scope(self, app: str | None, space: str | None) -> tuple[list[str], str]:
        """The networks asked about, and how to name the scope."""
        if app:
            found = self.state.app(app)
            if found is None:
                raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
            return [found.space], f"app {app}"
        if space:
            if self.state.space(space) is None:
                raise NotFound(f"no space named {space!r}", "`dynod spaces` lists the spaces")
            return [space], f"space {space}"
        return ["", *sorted(s.name for s in self.state.spaces())], "everything"

    def _open(self, key: str) -> bool:
        return key == "" or key in self.kernel.machine.spaces


def _wanted_net(net: Net, shards: tuple[str, ...]) -> build.WantedNet:
    own = net.pool.bridge
    return build.WantedNet(
        key=net.key,
        bridge=net.bridge,
        cidr=str(net.pool.network),
        address=own.gateway,
        prefixlen=own.prefixlen,
        nat_ip=net.nat_ip,
        shards=shards,
    )
