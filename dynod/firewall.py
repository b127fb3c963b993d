"""The Common Runtime's firewall, rendered as nftables text.

Two tables, both named after the daemon's prefix and touched by nobody else:

* `bridge PREFIX` sees frames as they enter the bridge from a dyno's port, before the bridge
  learns from them or the IP stack sees them. It is the anti-spoofing layer: a frame from a
  dyno's port passes only with that dyno's own MAC and IP (ARP included); IPv6 and every other
  ethertype are dropped. It works whether br_netfilter is loaded or not.
* `inet PREFIX` is the policy at the IP layer: dyno-to-dyno routed through the host is dropped,
  nothing new reaches a dyno from the host or the outside except the router's connections to a
  web dyno's PORT, dynos reach no service on the host, and outbound traffic is masqueraded.

Ports of the bridge are also `isolated on`, so frames between two dynos never cross the bridge.
The rules are fixed; what each dyno adds is set elements, so the ruleset does not grow with the
number of dynos and every change is one atomic `nft -f` transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The router marks its sockets (SO_MARK needs CAP_NET_ADMIN): the only host traffic let through
# to a dyno is the router's, to a web dyno's PORT.
ROUTER_MARK = 0x6479


@dataclass(frozen=True)
class Port:
    """One dyno's bridge port: the host end of its veth, the dyno's MAC and IP."""

    ifname: str
    mac: str
    ip: str


@dataclass(frozen=True)
class WebTarget:
    ip: str
    port: int


@dataclass(frozen=True)
class Layout:
    """What the rules are written against: names and the range."""

    table: str  # nftables table name, the daemon's prefix
    bridge: str  # the Common Runtime bridge
    port_glob: str  # matches every dyno port's name, e.g. "dynod-*"
    cidr: str  # the Common Runtime range
    router_mark: int = ROUTER_MARK


def _port_element(port: Port) -> str:
    return f'"{port.ifname}" . {port.mac} . {port.ip}'


def _web_element(target: WebTarget) -> str:
    return f"{target.ip} . {target.port}"


def _elements(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def ruleset(layout: Layout, ports: Iterable[Port] = (), web: Iterable[WebTarget] = ()) -> str:
    """The whole of dynod's firewall, replacing what was there in one transaction.

    `add table` then `delete table` makes the text work whether or not the table existed.
    """
    t, br, glob = layout.table, layout.bridge, layout.port_glob
    port_items = [_port_element(p) for p in ports]
    web_items = [_web_element(w) for w in web]
    port_elements = f"elements = {_elements(port_items)}" if port_items else ""
    web_elements = f"elements = {_elements(web_items)}" if web_items else ""
    return f"""
add table bridge {t}
delete table bridge {t}
table bridge {t} {{
    # a dyno's port name . its MAC . its IP: the only source a frame from that port may carry
    set ports {{
        type ifname . ether_addr . ipv4_addr
        {port_elements}
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname "{glob}" jump from_dyno
    }}
    chain from_dyno {{
        ether type ip iifname . ether saddr . ip saddr @ports accept
        ether type arp iifname . ether saddr . arp saddr ip @ports \\
            iifname . arp saddr ether . arp saddr ip @ports accept
        counter drop comment "spoofed, IPv6 or other ethertype"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        # ports are isolated already; this is the second lock on the same door
        iifname "{glob}" oifname "{glob}" counter drop
    }}
}}
add table inet {t}
delete table inet {t}
table inet {t} {{
    # dyno IP . PORT of web dynos that are up: where the router may connect
    set web {{
        type ipv4_addr . inet_service
        {web_elements}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{br}" jump dyno_to_host
    }}
    chain dyno_to_host {{
        ct state established,related accept
        counter drop comment "no host service is offered to dynos"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{br}" oifname "{br}" counter drop comment "dyno to dyno"
        oifname "{br}" ct state established,related accept
        oifname "{br}" counter drop comment "outside to dyno"
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{br}" ct state established,related accept
        oifname "{br}" meta mark {layout.router_mark:#x} ip daddr . tcp dport @web accept
        oifname "{br}" counter drop comment "host to dyno, except the router to PORT"
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {layout.cidr} oifname != "{br}" masquerade
    }}
}}
"""


def remove(layout: Layout) -> str:
    """Delete both tables (and nothing else), whether or not they exist."""
    t = layout.table
    return "".join(
        f"add table {family} {t}\ndelete table {family} {t}\n" for family in ("bridge", "inet")
    )


def add_dyno(layout: Layout, port: Port, web: WebTarget | None = None) -> str:
    text = f"add element bridge {layout.table} ports {{ {_port_element(port)} }}\n"
    if web is not None:
        text += f"add element inet {layout.table} web {{ {_web_element(web)} }}\n"
    return text


def remove_dyno(layout: Layout, port: Port, web: WebTarget | None = None) -> str:
    text = f"delete element bridge {layout.table} ports {{ {_port_element(port)} }}\n"
    if web is not None:
        text += f"delete element inet {layout.table} web {{ {_web_element(web)} }}\n"
    return text


def close_web(layout: Layout, web: WebTarget) -> str:
    return f"delete element inet {layout.table} web {{ {_web_element(web)} }}\n"


def open_web(layout: Layout, web: WebTarget) -> str:
    return f"add element inet {layout.table} web {{ {_web_element(web)} }}\n"
