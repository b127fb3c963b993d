"""The topology `dynod inspect` shows: a plain value, made by the daemon (inspect/build.py) from
the kernel's live objects and the state, sent as JSON and drawn by the renderers (text, dot,
html) in the CLI. Every field holds what the kernel holds; `problems` lists each place where
that differs from what the state says should be there."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Port:
    """A bridge port (the host end of a veth): `bridge -d link show dev NAME`."""

    name: str
    index: int
    peer_index: int | None  # eth0's ifindex in the dyno's namespace
    isolated: bool
    learning: bool
    flood: bool
    dyno: str  # "app/type.N" of the dyno it belongs to, "" when none does
    fdb: tuple[str, ...] = ()  # static MACs the bridge has on this port


@dataclass(frozen=True)
class Bridge:
    """A dyno network's bridge: `ip -d link show NAME; ip -4 addr show dev NAME`."""

    name: str
    index: int | None  # None: the state has it but the kernel does not
    network: str  # "" for the Common Runtime, else the space's name
    cidr: str
    addresses: tuple[str, ...]  # its own /30 first, then the dynos' gateways (local routes)
    ports: tuple[Port, ...] = ()
    nat_ip: str | None = None  # a space's NAT address; None: masquerade behind the host


@dataclass(frozen=True)
class Dyno:
    """One dyno as the state has it and as its namespace looks: `ip -n NETNS addr; route`."""

    app: str
    name: str  # type.N
    space: str
    state: str
    netns: str
    netns_exists: bool
    veth: str
    veth_index: int | None
    eth0_index: int | None
    address: str | None  # eth0's address as the kernel has it (ADDRESS/PREFIXLEN)
    gateway: str  # the gateway the state gave it
    routes: tuple[str, ...]  # `ip -n NETNS route` lines
    bridge: str
    web_port: int | None
    dns: tuple[str, ...] = ()  # the names that resolve to it

    @property
    def label(self) -> str:
        return f"{self.app}/{self.name}"


@dataclass(frozen=True)
class NftSet:
    """A set or map of dynod's tables: `nft list set FAMILY TABLE NAME`'s elements."""

    family: str
    table: str
    name: str
    elements: tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    """A difference between the state and the kernel."""

    kind: str  # missing, stray or wrong
    subject: str  # what it is about: "veth dynod-3", "set inet dynod web", ...
    detail: str  # what differs, and the command that shows it

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


@dataclass(frozen=True)
class Topology:
    prefix: str
    scope: str  # "everything", "app sushi" or "space acme"
    bridges: tuple[Bridge, ...]
    dynos: tuple[Dyno, ...]
    sets: tuple[NftSet, ...]
    dns: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # network -> name -> IPs
    problems: tuple[Problem, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Topology:
        def bridge(b: dict[str, Any]) -> Bridge:
            ports = tuple(Port(**(p | {"fdb": tuple(p["fdb"])})) for p in b["ports"])
            return Bridge(**(b | {"addresses": tuple(b["addresses"]), "ports": ports}))

        def dyno(d: dict[str, Any]) -> Dyno:
            return Dyno(**(d | {"routes": tuple(d["routes"]), "dns": tuple(d["dns"])}))

        return Topology(
            prefix=data["prefix"],
            scope=data["scope"],
            bridges=tuple(bridge(b) for b in data["bridges"]),
            dynos=tuple(dyno(d) for d in data["dynos"]),
            sets=tuple(NftSet(**(s | {"elements": tuple(s["elements"])})) for s in data["sets"]),
            dns={k: dict(v) for k, v in data["dns"].items()},
            problems=tuple(Problem(**p) for p in data["problems"]),
        )

    def dynos_on(self, bridge: str) -> list[Dyno]:
        return self._on_bridge.get(bridge, [])

    def gateway_of(self, bridge: str, address: str) -> Dyno | None:
        """The first dyno on `bridge` whose gateway is `address` (no prefix length)."""
        return self._gateways.get((bridge, address))

    # Indexes built once per topology (not fields: to_json and == ignore them), so that the
    # renderers look a dyno up by its bridge or gateway without a scan per address.
    @cached_property
    def _on_bridge(self) -> dict[str, list[Dyno]]:
        found: dict[str, list[Dyno]] = {}
        for d in self.dynos:
            found.setdefault(d.bridge, []).append(d)
        return found

    @cached_property
    def _gateways(self) -> dict[tuple[str, str], Dyno]:
        found: dict[tuple[str, str], Dyno] = {}
        for d in self.dynos:
            found.setdefault((d.bridge, d.gateway), d)
        return found


def element_text(value: Any) -> str:
    """One set or map element as `nft list` prints it: "dynod-1" . 0a:58:.. . 172.16.0.6."""
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(element_text(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{element_text(low)}-{element_text(high)}"
        if "elem" in value:
            return element_text(value["elem"]["val"])
    if isinstance(value, list) and len(value) == 2:
        return f"{element_text(value[0])} : {element_text(value[1])}"
    return str(value)
