"""Heroku's router error codes and its log line per request (``at=info method=GET ...``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "H12",
    "H13",
    "H14",
    "H15",
    "H17",
    "H18",
    "H19",
    "H25",
    "H27",
    "H28",
    "H99",
    "HerokuError",
    "RequestLog",
    "format_log_line",
]


@dataclass(frozen=True)
class HerokuError:
    code: str
    desc: str
    status: int = 503


H12 = HerokuError("H12", "Request timeout")
H13 = HerokuError("H13", "Connection closed without response")
H14 = HerokuError("H14", "No web processes running")
H15 = HerokuError("H15", "Idle connection")
H17 = HerokuError("H17", "Poorly formatted HTTP response")
H18 = HerokuError("H18", "Server Request Interrupted")
H19 = HerokuError("H19", "Backend connection timeout")
H27 = HerokuError("H27", "Client Request Interrupted", 499)
H25 = HerokuError("H25", "HTTP Restriction", 400)
H28 = HerokuError("H28", "Client Connection Idle", 499)
H99 = HerokuError("H99", "Platform error")


@dataclass(slots=True)
class RequestLog:
    """Everything that goes into one router log line.

    ``None`` renders as an empty value (``dyno= connect=``), as Heroku does when no dyno was
    involved.  ``bytes`` counts response body bytes relayed from the dyno, so it stays None
    for 404/H14 and is 0 for a 503 produced after a dyno was picked.
    """

    method: str = ""
    path: str = ""
    host: str = ""
    request_id: str = ""
    fwd: str = ""
    dyno: str | None = None
    connect_ms: int | None = None
    service_ms: int | None = None
    status: int = 0
    bytes: int | None = None
    error: HerokuError | None = None
    protocol: str = "http"
    emitted: bool = field(default=False, compare=False)
    app: str | None = field(default=None, compare=False)  # set once resolve() knows the app


_UNSAFE_BARE = re.compile(r'[^\x21-\x7e]|["\\]')
_UNSAFE_QUOTED = re.compile(r'[^\x20-\x7e]|["\\]')


def request_log(method: bytes, target: bytes, host: bytes, request_id: str, fwd: str) -> RequestLog:
    """The log entry of a request, as far as its head tells, on either of the router's paths:
    the Host without its port (an IPv6 literal kept whole), lowercase."""
    name = host.decode("latin-1")
    return RequestLog(
        method=method.decode("ascii", "replace"),
        path=target.decode("ascii", "backslashreplace"),
        host=(name.rsplit(":", 1)[0] if not name.startswith("[") else name).lower(),
        request_id=request_id,
        fwd=fwd,
    )


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\" + char if char in '"\\' else f"%{ord(char) & 0xFF:02X}"


# Escaped values by their text: hosts, addresses, dynos and paths repeat from one request to the
# next, and a dictionary look-up is a tenth of a substitution. Bounded: cleared when full, and
# only short values kept (a client's 16 KiB paths must not fill it with megabytes).
_CACHE_SIZE = 4096
_CACHE_LONGEST = 256
_bare_cache: dict[str, str] = {}
_quoted_cache: dict[str, str] = {}


def _bare(value: str | None) -> str:
    # Unquoted values must not contain spaces or quotes, or log parsers would split them.
    if value is None:
        return ""
    escaped = _bare_cache.get(value)
    if escaped is None:
        if len(value) > _CACHE_LONGEST:
            return _UNSAFE_BARE.sub(_escape, value)
        if len(_bare_cache) >= _CACHE_SIZE:
            _bare_cache.clear()
        escaped = _bare_cache[value] = _UNSAFE_BARE.sub(_escape, value)
    return escaped


def _quoted(value: str) -> str:
    escaped = _quoted_cache.get(value)
    if escaped is None:
        if len(value) > _CACHE_LONGEST:
            return '"' + _UNSAFE_QUOTED.sub(_escape, value) + '"'
        if len(_quoted_cache) >= _CACHE_SIZE:
            _quoted_cache.clear()
        escaped = _quoted_cache[value] = '"' + _UNSAFE_QUOTED.sub(_escape, value) + '"'
    return escaped


def format_log_line(entry: RequestLog) -> str:
    """Render the message part of a ``heroku[router]`` log line."""
    error = entry.error
    at = "at=info" if error is None else f'at=error code={error.code} desc="{error.desc}"'
    connect = "" if entry.connect_ms is None else f"{entry.connect_ms}ms"
    service = "" if entry.service_ms is None else f"{entry.service_ms}ms"
    return (
        f"{at} method={_bare(entry.method)} path={_quoted(entry.path)} "
        f"host={_bare(entry.host)} request_id={_UNSAFE_BARE.sub(_escape, entry.request_id)} "
        f"fwd={_quoted(entry.fwd)} dyno={_bare(entry.dyno)} connect={connect} "
        f"service={service} status={entry.status} "
        f"bytes={'' if entry.bytes is None else entry.bytes} protocol={entry.protocol}"
    )


# --------------------------------------------------------------------------- headers
