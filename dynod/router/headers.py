"""HTTP rules of the router: which headers it forwards, adds and drops, the request id it
picks, and which app a Host or an absolute-form target names."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "APP_DOMAINS",
    "VIA",
    "Headers",
    "app_from_host",
    "forward_request_headers",
    "forward_response_headers",
    "hop_by_hop_names",
    "is_upgrade_request",
    "new_request_id",
    "pick_request_id",
    "request_id_from",
    "split_absolute_form",
    "strict_head_problem",
]

Headers = list[tuple[bytes, bytes]]

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",  # not standard, but old clients send it
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers the router owns: whatever the client sent is replaced (X-Forwarded-For and Via are
# appended to, below).
_ROUTER_OWNED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
        b"x-request-id",
        b"x-request-start",
        b"via",
    }
)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9+/=-]{20,200}")
_APP_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
VIA = b"1.1 dynod"


def _values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def _tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """Comma-separated tokens of every ``name`` header, lowercased."""
    return {
        token.strip().lower()
        for value in _values(headers, name)
        for token in value.split(b",")
        if token.strip()
    }


def _append(headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes) -> bytes:
    prior = b", ".join(_values(headers, name))
    return prior + b", " + value if prior else value


def hop_by_hop_names(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Lowercased names that must not cross the proxy: RFC 7230 6.1 plus those in Connection."""
    return set(_HOP_BY_HOP) | _tokens(headers, b"connection")


def is_upgrade_request(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    headers = list(headers)
    return bool(_values(headers, b"upgrade")) and b"upgrade" in _tokens(headers, b"connection")


# Names a sender may list in Connection that a proxy must still pass on: without Host a request
# cannot be sent at all, without Content-Length its body would be lost (RFC 9110 7.6.1: such
# fields are never meant as connection options).
_NEVER_HOP_BY_HOP = frozenset({b"host", b"content-length"})


def _end_to_end(
    headers: Sequence[tuple[bytes, bytes]], upgrade: bool, drop: Iterable[bytes]
) -> Headers:
    """Copy without hop-by-hop headers; for an upgrade, re-add Upgrade + Connection: Upgrade."""
    dropped = (hop_by_hop_names(headers) - _NEVER_HOP_BY_HOP) | set(drop)
    out = [(name, value) for name, value in headers if name.lower() not in dropped]
    if upgrade:
        out += [(b"Connection", b"Upgrade"), (b"Upgrade", b", ".join(_values(headers, b"upgrade")))]
    return out


def forward_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client_ip: str,
    listen_port: int,
    request_start_ms: int,
    request_id: str,
) -> Headers:
    """Headers to send to the dyno, given the client's (raw-cased) headers.

    Nothing asks the dyno to close: the router keeps its connections alive (`router.pool`).
    A chunked request body stays chunked (Transfer-Encoding is hop-by-hop,
    but h11 needs it to frame what we send).
    """
    upgrade = is_upgrade_request(headers)
    chunked = bool(_values(headers, b"transfer-encoding"))
    # The server refuses a request with both framings; should one ever get here, Content-Length
    # must not go on beside Transfer-Encoding (a dyno preferring it would read another body).
    out = _end_to_end(headers, upgrade, _ROUTER_OWNED | ({b"content-length"} if chunked else set()))
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    out += [
        (b"X-Forwarded-For", _append(headers, b"x-forwarded-for", client_ip.encode())),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Port", str(listen_port).encode()),
        (b"X-Request-Start", str(request_start_ms).encode()),
        (b"X-Request-Id", request_id.encode()),
        (b"Via", _append(headers, b"via", VIA)),
    ]
    return out


def forward_response_headers(headers: Sequence[tuple[bytes, bytes]], *, upgrade: bool) -> Headers:
    """Headers to send to the client; h11 re-adds framing (chunked/close) as needed."""
    out = _end_to_end(headers, upgrade, {b"via"})
    out.append((b"Via", _append(headers, b"via", VIA)))
    return out


def pick_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id if it is 20-200 chars of [A-Za-z0-9+/=-], else a uuid4."""
    return request_id_from(_values(headers, b"x-request-id"))


def request_id_from(values: Iterable[bytes]) -> str:
    """`pick_request_id`, given the values of the request's X-Request-Id headers."""
    for value in values:
        if _REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return new_request_id()


# Random bytes for request ids, drawn from the kernel 4 KiB at a time (a system call each
# request was a tenth of making an id); an id's 16 bytes are used once.
_random = b""


def _forget_random() -> None:
    global _random
    _random = b""


os.register_at_fork(after_in_child=_forget_random)  # a forked child draws its own


def new_request_id() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` gives, in a
    third of the time: 16 random bytes with the version and variant bits set."""
    global _random
    if not _random:
        _random = os.urandom(4096)
    raw, _random = bytearray(_random[:16]), _random[16:]
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ``APP.localhost`` from the host; ``APP.herokuapp.localspace`` from a Private Space's dynos,
# which dynod's DNS resolves to the space's own router address.
APP_DOMAINS = ("localhost", "herokuapp.localspace")


def app_from_host(host: str) -> str | None:
    """``Sushi.localhost:5000`` -> ``sushi``; None unless the host is ``<one label>.localhost``
    or ``<one label>.herokuapp.localspace``."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal, never an app
        return None
    host = host.rsplit(":", 1)[0].rstrip(".")
    app, dot, domain = host.partition(".")
    if not dot or domain not in APP_DOMAINS or not _APP_NAME.fullmatch(app):
        return None
    return app


_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")


def split_absolute_form(method: bytes, target: bytes) -> tuple[bytes, bytes] | None:
    """``http://other.localhost/x?y`` -> (``other.localhost``, ``/x?y``): the authority that
    replaces Host and the origin-form target for the dyno (RFC 9112 3.2.2; an empty path is
    ``/``, or ``*`` for OPTIONS, 3.2.4).  None for a target that is not absolute-form.
    ValueError for one the router cannot take: not http(s), no host, or user info."""
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None or method == b"CONNECT":
        return None
    scheme, authority, rest = match.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise ValueError(f"the scheme {scheme.decode('ascii', 'replace')} is not HTTP")
    if not authority or b"@" in authority:
        raise ValueError("the target has no host, or has user info")
    if not rest:
        rest = b"*" if method == b"OPTIONS" else b"/"
    elif not rest.startswith(b"/"):
        rest = b"/" + rest  # "http://a.localhost?q" is the path "/" and the query "q"
    return authority, rest


_BARE_LF = re.compile(rb"(?<!\r)\n")
_OBS_FOLD = re.compile(rb"\r\n[ \t]")


def strict_head_problem(buffered: bytes) -> str | None:
    """Why the request head at the start of `buffered` must be refused, or None.

    h11 accepts two things RFC 9112 lets a recipient tolerate, which a proxy must not: a bare LF
    as a line end (2.2) and obs-fold, a header line continued on the next (5.2). Were the router
    to accept them, a dyno that reads the same bytes another way could see two requests where
    the router saw one. Only the head is looked at: up to its blank line, or all that has come
    if it is not whole yet (so a head ended by a bare LF blank line is refused too)."""
    end = buffered.find(b"\r\n\r\n")
    head = buffered if end < 0 else buffered[: end + 2]
    if _BARE_LF.search(head):
        return "a line ends with a bare LF"
    if _OBS_FOLD.search(head.lstrip(b"\r\n")):
        return "a header line is folded (obs-fold)"
    return None
