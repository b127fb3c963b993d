"""`headers.forward_request_headers` and `forward_response_headers` in one pass each, for the
fast path's requests (no Transfer-Encoding, no Upgrade): the same headers in the same order,
which `tests/unit/router/test_fastheaders.py` holds them to. The general versions walk the
headers once per question (hop-by-hop names, each appended header); these were a tenth of a
fast-path request."""

from __future__ import annotations

from dynod.router.headers import _HOP_BY_HOP, _NEVER_HOP_BY_HOP, _ROUTER_OWNED, VIA, Headers

__all__ = ["ResponsePlan", "request_head_bytes", "response_plan"]

_REQUEST_DROP = _HOP_BY_HOP | _ROUTER_OWNED
_RESPONSE_DROP = _HOP_BY_HOP | {b"via"}


def _dropped(raw: Headers, lowers: list[bytes], base: frozenset[bytes]) -> frozenset[bytes]:
    """`base` and the names listed in Connection (but Host and Content-Length)."""
    if b"connection" not in lowers:
        return base
    tokens = {
        token.strip().lower()
        for (_, value), lower in zip(raw, lowers, strict=True)
        if lower == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    return base | (tokens - _NEVER_HOP_BY_HOP)


def request_head_bytes(
    method: bytes,
    target: bytes,
    raw: Headers,
    *,
    client_ip: bytes,
    listen_port: bytes,
    request_start_ms: int,
    request_id: bytes,
    lowers: list[bytes] | None = None,
) -> bytes:
    """The head h11 writes for ``Request(method, target, forward_request_headers(raw, ...))``;
    `lowers`: the names of `raw` lowercased, when the caller has them."""
    if lowers is None:
        lowers = [name.lower() for name, _ in raw]
    drop = _dropped(raw, lowers, _REQUEST_DROP)
    host = b""
    lines = []
    forwarded_for: list[bytes] = []
    via: list[bytes] = []
    for (name, value), lower in zip(raw, lowers, strict=True):
        if lower in drop:
            if lower == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lower == b"via":
                via.append(value)
        elif lower == b"host":
            host += b"%s: %s\r\n" % (name, value)
        else:
            lines.append(b"%s: %s\r\n" % (name, value))
    prior_for = b", ".join(forwarded_for)
    prior_via = b", ".join(via)
    return b"%s %s HTTP/1.1\r\n%s%sX-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % (
        method,
        target,
        host,
        b"".join(lines),
        prior_for + b", " + client_ip if prior_for else client_ip,
    ) + b"X-Forwarded-Port: %s\r\nX-Request-Start: %d\r\nX-Request-Id: %s\r\nVia: %s\r\n\r\n" % (
        listen_port,
        request_start_ms,
        request_id,
        prior_via + b", " + VIA if prior_via else VIA,
    )


class ResponsePlan:
    """What the fast path needs from a response head, in one pass."""

    __slots__ = ("asks_close", "chunked", "headers", "length")

    def __init__(self, headers: Headers, length: bool, chunked: bool, asks_close: bool) -> None:
        self.headers = headers  # = forward_response_headers(raw, upgrade=False)
        self.length = length  # a Content-Length came
        self.chunked = chunked  # a Transfer-Encoding came
        self.asks_close = asks_close  # Connection: close


def response_plan(raw: Headers) -> ResponsePlan:
    lowers = [name.lower() for name, _ in raw]
    drop = _dropped(raw, lowers, _RESPONSE_DROP)
    out = []
    via: list[bytes] = []
    asks_close = False
    for (name, value), lower in zip(raw, lowers, strict=True):
        if lower in drop:
            if lower == b"via":
                via.append(value)
            elif lower == b"connection" and b"close" in value.lower():
                asks_close = True
        else:
            out.append((name, value))
    prior = b", ".join(via)
    out.append((b"Via", prior + b", " + VIA if prior else VIA))
    return ResponsePlan(
        out, b"content-length" in lowers, b"transfer-encoding" in lowers, asks_close
    )
