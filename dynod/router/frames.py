"""The bytes the fast path writes, framed by hand exactly as h11 frames them on the proven path
(`dynod.router.proxy`, `dynod.router.pages`): the request head to a dyno, the response head to
a client, chunks, and the router's own pages. `tests/unit/router/test_frames.py` holds each
against h11's own output."""

from __future__ import annotations

from dynod.router.headers import VIA, Headers
from dynod.router.logline import HerokuError
from dynod.router.peer import reason

__all__ = [
    "CHUNKED_END",
    "error_page",
    "rejection",
    "request_head",
    "response_head",
]

CHUNKED_END = b"0\r\n\r\n"


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """``METHOD target HTTP/1.1`` and the headers, Host first (as h11 writes a request)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers if name.lower() == b"host"]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers if name.lower() != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(status: int, reason_phrase: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def _error_body(error: HerokuError) -> bytes:
    return (
        "<!DOCTYPE html><html><head><title>Application Error</title></head><body>"
        f"<h1>Application Error</h1><p>{error.desc} ({error.code})</p></body></html>\n"
    ).encode()


def page(error: HerokuError | None, text: bytes) -> tuple[bytes, Headers]:
    """The body and headers of a page the router writes itself, on either path: `text` as plain
    text, or Heroku's HTML error page."""
    if error is None:
        body, ctype = text, b"text/plain; charset=utf-8"
    else:
        body, ctype = _error_body(error), b"text/html; charset=utf-8"
    headers = [
        (b"Content-Type", ctype),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-cache, no-store"),
        (b"Via", VIA),
    ]
    return body, headers


def error_page(status: int, error: HerokuError | None, text: bytes, close: bool) -> bytes:
    """`pages.send_error_page`'s answer, framed: the fast path's."""
    body, headers = page(error, text)
    if close:
        headers.append((b"Connection", b"close"))
    return response_head(status, reason(status), headers) + body


def rejection(status: int) -> bytes:
    """`pages.send_rejection`'s answer to a request the router could not read (408 here)."""
    body = reason(status).lower() + b"\n"
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Connection", b"close"),
    ]
    return response_head(status, reason(status), headers) + body
