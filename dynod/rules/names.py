"""Heroku's naming rules for apps, process types, dynos and spaces; address syntax.

The CLI checks with these before it calls the daemon, and the daemon checks again with the same
functions: one rule, one message.
"""

from __future__ import annotations

import ipaddress
import re

from dynod.errors import DynodError

APP_NAME = re.compile(r"^[a-z][a-z0-9-]{1,28}[a-z0-9]$")
PROCESS_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DYNO_NAME = re.compile(r"^([A-Za-z0-9_-]{1,128})\.([1-9][0-9]{0,5})$")
# Heroku's Platform API rule for space names: no leading, trailing or doubled dash.  The API
# schema gives no maximum length; dynod takes Heroku's app name limit, 30 characters.
SPACE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))+[a-z0-9]$")
SPACE_NAME_MAX = 30
# A space's range: a /16 of a private (RFC 1918) block, as on Heroku.
SPACE_PREFIXLEN = 16
PRIVATE_BLOCKS = tuple(
    ipaddress.IPv4Network(b) for b in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
DNS_PORT = 53  # the space's resolver, on its bridge address; and an upstream's default
# A private space's router, for apps with internal routing: http://APP.app.localspace
INTERNAL_ROUTER_PORT = 80

# Dynos of these types never take router traffic or run as long-lived processes.
RELEASE_TYPE = "release"
WEB_TYPE = "web"
ONE_OFF_TYPE = "run"  # `dynod run` attached, as `heroku run`: run.1, run.2, ...


def stem(text: str) -> str:
    """Heroku's app-name rule applied to any text: lowercase; every run of other characters
    becomes one '-'; what comes before the first letter is dropped. `My_Shop 2` -> `my-shop-2`.
    The caller cuts it to its length (and drops a '-' left at the end)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return re.sub(r"^[^a-z]+", "", name)


def check_app(name: str) -> str:
    if not APP_NAME.fullmatch(name or ""):
        raise DynodError(
            f"invalid app name {name!r}",
            "use 3 to 30 characters: lowercase letters, digits and dashes, "
            "starting with a letter and not ending with a dash",
        )
    return name


def check_process_type(ptype: str) -> str:
    if not PROCESS_TYPE.fullmatch(ptype or ""):
        raise DynodError(
            f"invalid process type {ptype!r}",
            "use 1 to 128 letters, digits, '_' or '-', as in a Procfile (web, worker, clock)",
        )
    if ptype == RELEASE_TYPE:
        raise DynodError(
            "the release process type is not a long-running dyno",
            "give the process another type, e.g. --type worker",
        )
    return ptype


def parse_dyno_name(name: str) -> tuple[str, int]:
    """'web.1' -> ('web', 1)."""
    match = DYNO_NAME.fullmatch(name or "")
    if not match:
        raise DynodError(
            f"invalid dyno name {name!r}", "dyno names are TYPE.NUMBER, e.g. web.1 or worker.2"
        )
    return match.group(1), int(match.group(2))


def lowest_free_number(taken: set[int]) -> int:
    """Dyno numbers start at 1 and reuse the lowest one free, as web.1, web.2 ... on Heroku."""
    number = 1
    while number in taken:
        number += 1
    return number


def check_routing(space: str | None, internal_routing: bool) -> None:
    """Internal routing is a Private Space's: an app in the Common Runtime cannot have it."""
    if internal_routing and not space:
        raise DynodError(
            "internal routing exists only in Private Spaces",
            "give --space SPACE too (`dynod spaces` lists the spaces), "
            "or leave --internal-routing out",
        )


def check_space(name: str) -> str:
    if not SPACE_NAME.fullmatch(name or "") or len(name) > SPACE_NAME_MAX:
        shown = repr(name) if len(name or "") <= 40 else f"{name[:40]!r}... ({len(name)} chars)"
        raise DynodError(
            f"invalid space name {shown}",
            f"use 3 to {SPACE_NAME_MAX} characters: lowercase letters, digits and single "
            "dashes, starting and ending with a letter or digit (e.g. acme or acme-prod)",
        )
    return name


def check_cidr(text: str, what: str = "IP range") -> str:
    """An IPv4 range in CIDR notation, as its canonical text ('203.0.113.0/24').

    A bare address is its /32. Host bits set are refused rather than silently cleared: the
    fix names the range that was probably meant.
    """
    try:
        network = ipaddress.IPv4Network(text or "", strict=False)
    except ValueError:
        raise DynodError(
            f"invalid {what} {text!r}",
            "give an IPv4 range in CIDR notation, e.g. 203.0.113.0/24, or one address (1.2.3.4)",
        ) from None
    if str(network.network_address) != text.partition("/")[0]:
        raise DynodError(
            f"invalid {what} {text!r}: it has host bits set",
            f"give the range's first address: {network}",
        )
    return str(network)


def check_space_cidr(text: str) -> str:
    """A space's range: a private /16 ('10.1.0.0/16')."""
    cidr = check_cidr(text, "space range")
    network = ipaddress.IPv4Network(cidr)
    if network.prefixlen != SPACE_PREFIXLEN or not any(
        network.subnet_of(block) for block in PRIVATE_BLOCKS
    ):
        raise DynodError(
            f"invalid space range {text}: a space takes a /16 of a private block",
            "give a /16 inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, e.g. 10.1.0.0/16; "
            "or give none, and the space gets the next free /16 of 10.0.0.0/8",
        )
    return cidr


def check_nat_ip(text: str) -> str:
    """The syntax of a NAT address (the daemon checks that it is an address of this host)."""
    try:
        address = ipaddress.IPv4Address(text or "")
    except ValueError:
        raise DynodError(
            f"invalid NAT address {text!r}",
            "give an IPv4 address of this host (`ip -4 addr` lists them), e.g. 192.0.2.10",
        ) from None
    if (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise DynodError(
            f"{text} cannot be a NAT address: dynos' traffic could not leave the host from it",
            "give an address of the host's uplink (`ip -4 addr` lists them), "
            "or none, for the source address of the host's default route",
        )
    return str(address)


def parse_upstream(text: str) -> tuple[str, int]:
    """A DNS resolver: 'IP', 'IP:PORT', an IPv6 address, or '[IPv6]:PORT' -> (ip, port)."""
    text = text or ""
    host, sep, port_text = text, "", ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        sep, port_text = rest[:1], rest[1:]
        if not bracket or ":" not in host or rest and sep != ":":
            host = ""  # '[' only for IPv6, and only ':PORT' after ']'
    elif text.count(":") == 1:
        host, sep, port_text = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
        if sep and not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(port_text)
        port = int(port_text) if sep else DNS_PORT
    except ValueError:
        address, port = None, 0
    if address is None or not 0 < port < 65536:
        raise DynodError(
            f"invalid DNS resolver {text!r}",
            "give an IP address, optionally with a port: 192.0.2.53, 192.0.2.53:5353, "
            "2001:db8::53 or [2001:db8::53]:5353",
        )
    if address.is_unspecified:
        raise DynodError(
            f"invalid DNS resolver {text!r}: {address} is no resolver's address",
            "give the address a resolver listens on, e.g. 127.0.0.53 or 1.1.1.1",
        )
    return str(address), port
