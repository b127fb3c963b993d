"""`dynod inspect --format html`: one self-contained page a learner opens in a browser. The CSS
and the drawing (SVG) are inline; it loads nothing, no font, no script, no image, so it works
with no network at all. Each bridge is drawn with its ports, each port's veth and the dyno's
namespace under it; the tables below hold the same facts, the nftables sets, the DNS names and
every difference from the state."""

from __future__ import annotations

from html import escape

from dynod.inspect.model import Bridge, Dyno, Port, Topology
from dynod.inspect.text import address_label, dyno_lines, network_name, port_flags

COLUMN = 300  # width of one dyno's column in the drawing
CHAR = 7.5  # width of one character of the drawing's 12px monospace text
LINE = 15  # height of one line of text
PAD = 10

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; vertical-align: top;
         font-family: monospace; font-size: 0.9em; white-space: pre-line; }
th { background: #eef; }
.problem { color: #a00; font-weight: bold; }
.ok { color: #070; }
svg text { font-family: monospace; font-size: 12px; }
svg .bridge { fill: #cde4ff; stroke: #357; }
svg .port { fill: #fff; stroke: #357; }
svg .netns { fill: #dfd; stroke: #363; }
svg .bad { fill: #fcc; stroke: #a00; }
svg .veth { stroke: #333; stroke-width: 2; }
svg .gone { stroke: #a00; stroke-width: 2; stroke-dasharray: 6 4; }
"""


def _text(x: int, y: int, lines: list[str], css: str = "") -> str:
    spans = "".join(
        f'<tspan x="{x}" y="{y + i * LINE}">{escape(line)}</tspan>' for i, line in enumerate(lines)
    )
    return f'<text class="{css}">{spans}</text>'


def _rect(x: int, y: int, w: int, h: int, css: str) -> str:
    return f'<rect class="{css}" x="{x}" y="{y}" width="{w}" height="{h}" rx="6"/>'


def _port_lines(port: Port) -> list[str]:
    return [f"port {port.name} #{port.index}", port_flags(port)] + [
        f"fdb {mac} static" for mac in port.fdb
    ]


def drawing(top: Topology, bridge: Bridge) -> str:
    """An SVG of one bridge: its box on top, a column per dyno (and per stray port) below."""
    dynos = top.dynos_on(bridge.name)
    ports = {p.name: p for p in bridge.ports}
    strays = [p for p in bridge.ports if not p.dyno]
    columns = max(len(dynos) + len(strays), 1)
    width = columns * COLUMN + PAD
    nat = f"NAT {bridge.nat_ip}" if bridge.nat_ip else "masquerade"
    head = [
        f"bridge {bridge.name} #{bridge.index}"
        if bridge.index
        else f"! bridge {bridge.name} MISSING",
        f"{network_name(bridge.network)}, {bridge.cidr}, {nat}",
        *[address_label(top, bridge, a) for a in bridge.addresses],
    ]
    width = max(width, int(max(len(line) for line in head) * CHAR) + 4 * PAD)
    bridge_h = len(head) * LINE + PAD
    parts = [
        _rect(PAD, PAD, width - 2 * PAD, bridge_h, "bridge" if bridge.index else "bad"),
        _text(2 * PAD, PAD + LINE, head),
    ]
    port_y = PAD + bridge_h + 30
    bottom = port_y
    for i, dyno in enumerate(dynos):
        x = PAD + i * COLUMN
        mid = x + COLUMN // 2
        port = ports.get(dyno.veth)
        ns_y = port_y + 4 * LINE + 40
        if port is None:
            parts.append(
                f'<line class="gone" x1="{mid}" y1="{PAD + bridge_h}" x2="{mid}" y2="{ns_y}"/>'
            )
            parts.append(_text(mid + 6, port_y + LINE, [f"! veth {dyno.veth} MISSING"], "problem"))
        else:
            lines = _port_lines(port)
            parts.append(
                f'<line class="veth" x1="{mid}" y1="{PAD + bridge_h}" x2="{mid}" y2="{ns_y}"/>'
            )
            parts.append(_rect(x + PAD, port_y, COLUMN - 2 * PAD, len(lines) * LINE + 8, "port"))
            parts.append(_text(x + 2 * PAD, port_y + LINE, lines))
            veth = [f"veth #{port.index}", f"⇄ eth0 #{port.peer_index}"]
            parts.append(_text(mid + 6, ns_y - 8 - LINE, veth))
        lines = dyno_lines(dyno)
        h = len(lines) * LINE + PAD
        css = "netns" if dyno.netns_exists and dyno.address else "bad"
        parts.append(_rect(x + PAD, ns_y, COLUMN - 2 * PAD, h, css))
        parts.append(_text(x + 2 * PAD, ns_y + LINE, lines))
        bottom = max(bottom, ns_y + h)
    for j, port in enumerate(strays):
        x = PAD + (len(dynos) + j) * COLUMN
        lines = [*_port_lines(port), "! stray: no dyno owns it"]
        mid = x + COLUMN // 2
        parts.append(
            f'<line class="gone" x1="{mid}" y1="{PAD + bridge_h}" x2="{mid}" y2="{port_y}"/>'
        )
        parts.append(_rect(x + PAD, port_y, COLUMN - 2 * PAD, len(lines) * LINE + 8, "bad"))
        parts.append(_text(x + 2 * PAD, port_y + LINE, lines))
        bottom = max(bottom, port_y + len(lines) * LINE + 8)
    height = bottom + PAD
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="bridge {escape(bridge.name)}">' + "".join(parts) + "</svg>"
    )


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _dyno_row(dyno: Dyno) -> list[str]:
    return [
        dyno.label,
        dyno.state,
        network_name(dyno.space),
        dyno.netns + ("" if dyno.netns_exists else " (MISSING)"),
        f"{dyno.veth} #{dyno.veth_index}" if dyno.veth_index else f"{dyno.veth} (MISSING)",
        f"#{dyno.eth0_index}" if dyno.eth0_index else "-",
        dyno.address or "-",
        dyno.gateway,
        "; ".join(dyno.routes),
        str(dyno.web_port or "-"),
        " ".join(dyno.dns),
    ]


def render(top: Topology) -> str:
    title = f"dynod inspect ({top.scope}), prefix {top.prefix}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if top.problems:
        out.append(
            f'<p class="problem">{len(top.problems)} difference(s) between the state and the '
            'kernel: see <a href="#problems">below</a>.</p>'
        )
    else:
        out.append('<p class="ok">The kernel holds what the state says: no differences.</p>')
    for bridge in top.bridges:
        out.append(f'<h2 id="bridge-{escape(bridge.name)}">bridge {escape(bridge.name)}</h2>')
        out.append(drawing(top, bridge))
        out.append(
            _table(
                ["port", "ifindex", "peer (eth0)", "flags", "fdb", "dyno"],
                [
                    [
                        p.name,
                        str(p.index),
                        str(p.peer_index),
                        port_flags(p),
                        " ".join(p.fdb),
                        p.dyno or "! none (stray)",
                    ]
                    for p in bridge.ports
                ],
            )
        )
    out.append("<h2>dynos</h2>")
    out.append(
        _table(
            [
                "dyno",
                "state",
                "network",
                "netns",
                "veth",
                "eth0",
                "address",
                "gateway",
                "routes",
                "web PORT",
                "DNS names",
            ],
            [_dyno_row(d) for d in top.dynos],
        )
    )
    out.append("<h2>nftables sets</h2>")
    out.append(
        _table(
            ["set", "elements"],
            [
                [f"{s.family} {s.table} {s.name}", "\n".join(s.elements) or "(empty)"]
                for s in top.sets
            ],
        )
    )
    if top.dns:
        out.append("<h2>DNS names</h2>")
        out.append(
            _table(
                ["network", "name", "addresses"],
                [
                    [network_name(key), name, ", ".join(ips)]
                    for key, records in sorted(top.dns.items())
                    for name, ips in sorted(records.items())
                ],
            )
        )
    out.append('<h2 id="problems">differences from the state</h2>')
    if top.problems:
        out.append(
            _table(
                ["kind", "what", "detail"],
                [[p.kind, p.subject, p.detail] for p in top.problems],
            )
        )
    else:
        out.append('<p class="ok">none</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
