"""`dynod inspect --format dot`: the topology for graphviz (`dot -Tsvg`): one cluster per bridge,
with its ports, each port's veth to its dyno's namespace, and the differences from the state in a
red note."""

from __future__ import annotations

from dynod.inspect.model import Bridge, Dyno, Port, Topology
from dynod.inspect.text import address_label, network_name, port_flags


def quote(text: str) -> str:
    """A DOT string: quotes and backslashes escaped, lines joined with DOT's \\l (left)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\l") + ("\\l" if "\n" in text else "") + '"'


def _id(*parts: str) -> str:
    return quote(":".join(parts))


def _dyno_label(dyno: Dyno) -> str:
    lines = [f"netns {dyno.netns}", f"{dyno.label} ({dyno.state})"]
    if not dyno.netns_exists:
        lines.append("! namespace MISSING")
    lines.append(f"eth0 #{dyno.eth0_index} {dyno.address}" if dyno.eth0_index else "! no eth0")
    lines.extend(dyno.routes)
    if dyno.web_port:
        lines.append(f"web: $PORT {dyno.web_port}")
    lines.extend(f"dns {name}" for name in dyno.dns)
    return "\n".join(lines)


def _port_label(port: Port) -> str:
    lines = [f"port {port.name} #{port.index}", port_flags(port)]
    lines.extend(f"fdb {mac} static" for mac in port.fdb)
    if not port.dyno:
        lines.append("! stray: no dyno owns it")
    return "\n".join(lines)


def _bridge(top: Topology, bridge: Bridge) -> list[str]:
    nat = f"NAT {bridge.nat_ip}" if bridge.nat_ip else "masquerade"
    head = f"bridge {bridge.name} ({network_name(bridge.network)}, {bridge.cidr}, {nat})"
    if bridge.index is None:
        head = f"! bridge {bridge.name} MISSING"
    out = [f"  subgraph {_id('cluster', bridge.name)} {{", f"    label={quote(head)};"]
    addresses = "\n".join(
        [f"bridge {bridge.name} #{bridge.index}"]
        + [address_label(top, bridge, a) for a in bridge.addresses]
    )
    out.append(
        f"    {_id('br', bridge.name)} [shape=box, style=filled, fillcolor=lightblue, "
        f"label={quote(addresses)}];"
    )
    ports = {p.name: p for p in bridge.ports}
    for port in bridge.ports:
        color = "white" if port.dyno else "salmon"
        out.append(
            f"    {_id('port', port.name)} [shape=box, style=filled, fillcolor={color}, "
            f"label={quote(_port_label(port))}];"
        )
        out.append(f"    {_id('br', bridge.name)} -- {_id('port', port.name)};")
    for dyno in top.dynos_on(bridge.name):
        color = "palegreen" if dyno.netns_exists else "salmon"
        out.append(
            f'    {_id("ns", dyno.netns)} [shape=box, style="rounded,filled", '
            f"fillcolor={color}, label={quote(_dyno_label(dyno))}];"
        )
        owned = ports.get(dyno.veth)
        if owned is None:
            out.append(
                f"    {_id('br', bridge.name)} -- {_id('ns', dyno.netns)} "
                f"[style=dashed, color=red, label={quote(f'veth {dyno.veth} MISSING')}];"
            )
        else:
            edge = f"veth #{owned.index} ⇄ eth0 #{owned.peer_index}"
            out.append(
                f"    {_id('port', owned.name)} -- {_id('ns', dyno.netns)} [label={quote(edge)}];"
            )
    out.append("  }")
    return out


def render(top: Topology) -> str:
    out = [
        f"graph {quote('dynod ' + top.prefix)} {{",
        f"  label={quote(f'dynod inspect ({top.scope}), prefix {top.prefix}')};",
        "  labelloc=t; rankdir=TB; fontname=monospace;",
        "  node [fontname=monospace, fontsize=10]; edge [fontname=monospace, fontsize=9];",
    ]
    for bridge in top.bridges:
        out.extend(_bridge(top, bridge))
    sets = "\n".join(
        f"{s.family} {s.table} {s.name}:" + "".join(f"\n  {e}" for e in s.elements)
        for s in top.sets
    )
    out.append(f"  sets [shape=note, label={quote('nftables sets' + chr(10) + sets)}];")
    if top.dns:
        dns = "\n".join(
            f"{name} -> {', '.join(ips)}"
            for records in top.dns.values()
            for name, ips in sorted(records.items())
        )
        out.append(f"  dns [shape=note, label={quote('DNS names' + chr(10) + dns)}];")
    if top.problems:
        text = "\n".join(f"! {p}" for p in top.problems)
        out.append(
            f"  problems [shape=note, color=red, fontcolor=red, "
            f"label={quote('differences from the state' + chr(10) + text)}];"
        )
    out.append("}")
    return "\n".join(out) + "\n"
