"""The fast path's one-pass header rules give what the general ones give (`router.headers`)."""

from __future__ import annotations

import random
import re

import h11
import pytest

from dynod.router.fastheaders import request_head_bytes, response_plan
from dynod.router.frames import request_head
from dynod.router.headers import (
    forward_request_headers,
    forward_response_headers,
    new_request_id,
)

NAMES = [
    b"Host",
    b"Accept",
    b"X-Forwarded-For",
    b"x-forwarded-for",
    b"Via",
    b"Connection",
    b"Keep-Alive",
    b"X-Request-Id",
    b"X-Request-Start",
    b"Content-Length",
    b"Proxy-Authorization",
    b"TE",
    b"X-Custom",
    b"Cookie",
]
VALUES = [b"", b"1.2.3.4", b"close", b"keep-alive, X-Custom", b"Host, close", b"x", b"a b"]


def random_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    headers = [(b"Host", b"sushi.localhost")]
    for _ in range(rng.randrange(8)):
        name = rng.choice(NAMES[1:])
        value = rng.choice(VALUES)
        if name == b"Connection":
            value = rng.choice([b"close", b"keep-alive, X-Custom", b"Host, Cookie", b"via"])
        if name == b"Content-Length":
            value = b"0"
        headers.insert(rng.randrange(len(headers) + 1), (name, value))
    return headers


@pytest.mark.parametrize("seed", range(200))
def test_request_head_bytes_is_forward_request_headers_framed(seed: int) -> None:
    rng = random.Random(seed)
    raw = random_headers(rng)
    expected = request_head(
        b"GET",
        b"/a?b",
        forward_request_headers(
            raw, client_ip="10.1.2.3", listen_port=5000, request_start_ms=1234, request_id="rid"
        ),
    )
    got = request_head_bytes(
        b"GET",
        b"/a?b",
        raw,
        client_ip=b"10.1.2.3",
        listen_port=b"5000",
        request_start_ms=1234,
        request_id=b"rid",
    )
    assert got == expected


@pytest.mark.parametrize("seed", range(200))
def test_response_plan_is_forward_response_headers(seed: int) -> None:
    rng = random.Random(seed)
    raw = [(n, v) for n, v in random_headers(rng) if n != b"Host"]
    if rng.random() < 0.3:
        raw.append((b"Transfer-Encoding", b"chunked"))
    plan = response_plan(raw)
    assert plan.headers == forward_response_headers(raw, upgrade=False)
    lowers = {n.lower() for n, _ in raw}
    assert plan.length == (b"content-length" in lowers)
    assert plan.chunked == (b"transfer-encoding" in lowers)
    closes = any(n.lower() == b"connection" and b"close" in v.lower() for n, v in raw)
    assert plan.asks_close == closes


def test_new_request_ids_are_uuid4s() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in ids:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid
        )


def test_request_head_is_h11_s() -> None:
    raw = [(b"Host", b"a"), (b"X-A", b"1")]
    assert request_head(b"GET", b"/", raw) == h11.Connection(h11.CLIENT).send(
        h11.Request(method=b"GET", target=b"/", headers=raw)
    )


def test_log_line_escapes_are_cached_only_for_short_values() -> None:
    from dynod.router import logline

    long_path = "/" + "a" * 300 + '"'
    entry = logline.RequestLog(method="GET", path=long_path, host="h", request_id="r", fwd="f")
    line = logline.format_log_line(entry)
    assert 'path="/' + "a" * 300 + '\\""' in line
    assert long_path not in logline._quoted_cache
    short = logline.RequestLog(method="GET", path='/x"y', host="h", request_id="r", fwd="f")
    assert 'path="/x\\"y"' in logline.format_log_line(short)
    assert logline._quoted_cache['/x"y'] == '"/x\\"y"'
