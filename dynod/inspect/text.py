"""`dynod inspect --format text`: the topology as a box drawing, like the README's, then the
nftables sets, the DNS names and the differences from the state."""

from __future__ import annotations

from dynod.inspect.model import Bridge, Dyno, Port, Topology

PER_ROW = 3  # dyno boxes side by side under a bridge
BOX_WIDTH = 38


def network_name(key: str) -> str:
    return "Common Runtime" if key == "" else f"space {key}"


def port_flags(port: Port) -> str:
    return ", ".join(
        [
            "isolated" if port.isolated else "NOT isolated",
            "learning on" if port.learning else "learning off",
            "flood on" if port.flood else "flood off",
        ]
    )


def box(lines: list[str], width: int, joint: int | None = None) -> list[str]:
    """Lines in a box; `joint`: the column where a line from above meets its top edge."""
    inner = width - 4
    top = ["─"] * (width - 2)
    if joint is not None and 0 < joint < width - 1:
        top[joint - 1] = "┴"
    out = ["┌" + "".join(top) + "┐"]
    for line in lines:
        out.append(f"│ {_fit(line, inner):<{inner}} │")
    out.append("└" + "─" * (width - 2) + "┘")
    return out


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def side_by_side(blocks: list[list[str]], gap: int = 2) -> list[str]:
    if not blocks:
        return []
    height = max(len(b) for b in blocks)
    widths = [max((len(line) for line in b), default=0) for b in blocks]
    rows = []
    for i in range(height):
        cells = [
            f"{(b[i] if i < len(b) else ''):<{w}}" for b, w in zip(blocks, widths, strict=True)
        ]
        rows.append((" " * gap).join(cells).rstrip())
    return rows


def dyno_lines(dyno: Dyno) -> list[str]:
    lines = [f"netns {dyno.netns}"]
    if not dyno.netns_exists:
        lines.append("! namespace MISSING")
    lines.append(f"{dyno.label} ({dyno.state})")
    lines.append(f"eth0 #{dyno.eth0_index} {dyno.address}" if dyno.eth0_index else "! no eth0")
    lines.extend(dyno.routes or ["! no routes"])
    if dyno.web_port:
        lines.append(f"web: listens on $PORT {dyno.web_port}")
    lines.extend(f"dns {name}" for name in dyno.dns)
    return lines


def _dyno_block(dyno: Dyno, port: Port | None) -> list[str]:
    half = BOX_WIDTH // 2
    if port is None:
        head = [f"! veth {dyno.veth} MISSING", "", " " * half + "╳"]
    else:
        head = [
            f"port {port.name} #{port.index}",
            f"({port_flags(port)})",
            " " * half + f"│ veth #{port.index} ⇄ eth0 #{port.peer_index}",
        ]
    return head + box(dyno_lines(dyno), BOX_WIDTH, joint=half)


def bridge_lines(top: Topology, bridge: Bridge) -> list[str]:
    dynos = top.dynos_on(bridge.name)
    ports = {p.name: p for p in bridge.ports}
    blocks = [_dyno_block(d, ports.get(d.veth)) for d in dynos]
    blocks += [
        [f"! port {p.name} #{p.index}", "stray: no dyno owns it"]
        for p in bridge.ports
        if not p.dyno
    ]
    nat = f", NAT {bridge.nat_ip}" if bridge.nat_ip else ", masquerade"
    title = f" bridge {bridge.name} #{bridge.index} ({network_name(bridge.network)}, "
    title += f"{bridge.cidr}{nat}) "
    if bridge.index is None:
        title = f" ! bridge {bridge.name} MISSING ({network_name(bridge.network)}) "
    addresses = [address_label(top, bridge, a) for a in bridge.addresses]
    n = min(max(len(blocks), 1), PER_ROW)
    width = max(BOX_WIDTH * n + 2 * (n - 1), len(title) + 6, 60)
    dash = width - 2 - len(title) - 2
    inner = box(_wrap(addresses, width - 4), width)
    inner[0] = "┌──" + title + "─" * dash + "┐"
    out = inner
    for row in range(0, len(blocks), PER_ROW):
        out.append("")
        out.extend(side_by_side(blocks[row : row + PER_ROW]))
    return out


def address_label(top: Topology, bridge: Bridge, address: str) -> str:
    """An address of a bridge, with whose it is: its own, or a dyno's gateway."""
    d = top.gateway_of(bridge.name, address.split("/")[0])
    if d is not None:
        return f"{address} ({d.label} gw)"
    if bridge.addresses and address == bridge.addresses[0]:
        return f"{address} (its own)"
    return f"{address} (! no dyno's)"


def _wrap(words: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for word in words:
        if line and len(line) + 2 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line}  {word}" if line else word
    return [*lines, line] if line or not lines else lines


def render(top: Topology) -> str:
    out = [f"dynod inspect ({top.scope}), prefix {top.prefix}", ""]
    for bridge in top.bridges:
        out.extend(bridge_lines(top, bridge))
        out.append("")
    out.append("nftables sets (nft list table FAMILY TABLE)")
    for s in top.sets:
        out.append(f"  {s.family} {s.table} {s.name}: {len(s.elements)} element(s)")
        out.extend(f"      {e}" for e in s.elements)
    if top.dns:
        out.append("")
        out.append("DNS names (dig @BRIDGE_ADDRESS NAME from a dyno of the space)")
        for key, records in sorted(top.dns.items()):
            out.append(f"  {network_name(key)}:")
            out.extend(f"      {name} -> {', '.join(ips)}" for name, ips in sorted(records.items()))
    out.append("")
    if top.problems:
        out.append(f"{len(top.problems)} difference(s) between the state and the kernel:")
        out.extend(f"  ! {p}" for p in top.problems)
    else:
        out.append("the kernel holds what the state says: no differences")
    return "\n".join(out) + "\n"
