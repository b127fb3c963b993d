"""What `dynod trace FROM TO [tcp|udp|icmp] [PORT]` asks, checked once for the CLI and the API:
the ends' spelling (a dyno `APP/TYPE.N`, `host`, `router` or an IPv4 address), the protocol and
the port. Which dyno or address an end is, the daemon finds (trace/ends.py)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from dynod.api.requests import json_type, object_with, text
from dynod.errors import DynodError
from dynod.rules import names

PROTOCOLS = ("tcp", "udp", "icmp")
HOST, ROUTER = "host", "router"
DEFAULT_WAIT = 1.0  # seconds the probe waits for an answer
MAX_WAIT = 30.0
ENDS_HELP = "APP/TYPE.N (e.g. sushi/web.1, or web.1 with --app), host, router or an IPv4 address"


@dataclass(frozen=True)
class TraceRequest:
    """POST /v1/traces."""

    source: str
    target: str
    protocol: str = "tcp"
    port: int | None = None
    wait: float = DEFAULT_WAIT

    @classmethod
    def from_body(cls, body: Any) -> TraceRequest:
        fields = object_with(body, "from", "to", "protocol", "port", "wait")
        protocol = text(fields, "protocol") if fields.get("protocol") is not None else "tcp"
        port = fields.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise DynodError(
                f"the field 'port' must be a port number, and it is JSON {json_type(port)}",
                'send it as a number, e.g. {"port": 8080}, or leave it out',
            )
        wait = fields.get("wait", DEFAULT_WAIT)
        if isinstance(wait, bool) or not isinstance(wait, int | float):
            raise DynodError(
                f"the field 'wait' must be a number of seconds, and it is JSON {json_type(wait)}",
                'send it as a number, e.g. {"wait": 1}, or leave it out',
            )
        return cls.checked(text(fields, "from"), text(fields, "to"), protocol, port, float(wait))

    @classmethod
    def checked(
        cls, source: str, target: str, protocol: str, port: int | None, wait: float
    ) -> TraceRequest:
        """Every field's spelling and range, or DynodError."""
        check_end(source, "FROM")
        check_end(target, "TO")
        protocol = check_protocol(protocol)
        if port is not None:
            check_port(port, protocol)
        if not (math.isfinite(wait) and 0.1 <= wait <= MAX_WAIT):
            raise DynodError(
                f"cannot wait {wait} seconds for the probe's answer",
                f"give --wait from 0.1 to {MAX_WAIT:g} seconds",
            )
        return cls(source, target, protocol, port, wait)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"from": self.source, "to": self.target, "protocol": self.protocol}
        if self.port is not None:
            body["port"] = self.port
        if self.wait != DEFAULT_WAIT:
            body["wait"] = self.wait
        return body


def check_end(word: str, which: str) -> str:
    """FROM or TO as written: a dyno APP/TYPE.N, host, router or an IPv4 address."""
    if word in (HOST, ROUTER):
        return word
    with_app = dyno_name(word)
    if with_app is not None:
        return word
    try:
        ipaddress.IPv4Address(word)
    except ValueError:
        if "/" not in word and "." in word and not word[0].isdigit():
            raise DynodError(
                f"{which} {word!r} names a dyno but not its app",
                f"write APP/{word}, or give --app APP",
            ) from None
        raise DynodError(f"{which} {word!r} is not a place to trace", f"give {ENDS_HELP}") from None
    return word


def dyno_name(word: str) -> tuple[str, str] | None:
    """APP/TYPE.N -> (app, TYPE.N); None if the word is not written as a dyno; DynodError if
    it is, with an invalid app or dyno name."""
    app, slash, dyno = word.partition("/")
    if not slash:
        return None
    names.check_app(app)
    names.parse_dyno_name(dyno)
    return app, dyno


def with_app(word: str, app: str | None) -> str:
    """`web.1 --app sushi` is `sushi/web.1`; other words stay as they are."""
    if app is None or word in (HOST, ROUTER) or "/" in word:
        return word
    try:
        ipaddress.IPv4Address(word)
        return word
    except ValueError:
        return f"{app}/{word}"


def check_protocol(word: str) -> str:
    protocol = word.lower()
    if protocol not in PROTOCOLS:
        raise DynodError(f"unknown protocol {word!r}", "give tcp, udp or icmp (tcp when left out)")
    return protocol


def check_port(port: int, protocol: str) -> int:
    if protocol == "icmp":
        raise DynodError("icmp has no ports", "leave the port out, or trace tcp or udp")
    if not 1 <= port <= 65535:
        raise DynodError(f"no such port: {port}", "give a port from 1 to 65535")
    return port


def parse_words(words: tuple[str, ...] | list[str]) -> tuple[str, int | None]:
    """The CLI's optional `[tcp|udp|icmp] [PORT]`: a lone number is a TCP port."""
    if len(words) > 2:
        raise DynodError(
            f"too many words after FROM and TO: {' '.join(words)}",
            "write dynod trace FROM TO [tcp|udp|icmp] [PORT]",
        )
    protocol, port = "tcp", None
    rest = list(words)
    if rest and not rest[0].isdigit():
        protocol = check_protocol(rest.pop(0))
    if rest:
        if not rest[0].isdigit():
            raise DynodError(f"not a port: {rest[0]!r}", "give a port number, e.g. 8080")
        port = check_port(int(rest[0]), protocol)
    return protocol, port
