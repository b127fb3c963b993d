"""The HTTP API on the Unix socket (dynod/api/server.py) over a fake daemon: status codes, body
checks and refusals, limits on nesting and slow requests. No root needed."""

from __future__ import annotations

import http.client
import socket

import pytest

from tests.unit.fake_daemon import FakeApi


def test_api_status_codes_and_single_entries(api: FakeApi) -> None:
    assert api.request("POST", "/v1/spaces", b'{"name": "acme"}')[0] == 201
    assert api.request("GET", "/v1/spaces/acme")[1]["cidr"] == "10.1.0.0/16"
    assert api.request("GET", "/v1/spaces/nope")[0] == 404
    assert api.request("POST", "/v1/apps", b'{"name": "sushi", "space": "acme"}')[0] == 201
    assert api.request("GET", "/v1/apps/sushi")[1]["space"] == "acme"
    status, ranges = api.request("POST", "/v1/spaces/acme/trusted-ips", b'{"cidr": "10.0.0.0/8"}')
    assert (status, ranges) == (201, ["0.0.0.0/0", "10.0.0.0/8"])
    assert api.request("DELETE", "/v1/spaces/acme/trusted-ips/10.0.0.0%2F8") == (200, ["0.0.0.0/0"])
    assert api.request("DELETE", "/v1/apps/sushi") == (200, {"stopped": []})
    assert api.request("DELETE", "/v1/spaces/acme") == (200, {"destroyed": "acme"})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "problem"),
    [
        ("POST", "/v1/apps", b'{"name": "xyz", "internal_routing": "yes"}', 400, "true or false"),
        ("POST", "/v1/apps", b'{"name": 5}', 400, "'name' must be a string, and it is JSON number"),
        ("POST", "/v1/apps", b"{}", 400, "'name' must be a string, and it is missing"),
        ("POST", "/v1/apps", b'{"name": "xyz", "internal-routing": 1}', 400, "unknown field"),
        ("POST", "/v1/apps", b'["xyz"]', 400, "the request body is JSON array, not an object"),
        ("POST", "/v1/apps", b"{nope", 400, "the request body is not JSON"),
        ("POST", "/v1/spaces", b'{"name": "acme", "cidr": 16}', 400, "'cidr' must be a string"),
        (
            "PUT",
            "/v1/apps/xyz/features/f",
            b"{}",
            400,
            "'enabled' must be true or false, and it is missing",
        ),
        ("PUT", "/v1/apps/xyz/features/f", b'{"enabled": 1}', 400, "JSON number 1"),
        ("POST", "/v1/spaces/acme/trusted-ips", b'{"cidr": null}', 400, "'cidr' must be a string"),
        ("PATCH", "/v1/apps", None, 405, "/v1/apps does not take PATCH"),
        ("GET", "/v1/apps/xyz/features/f", None, 405, "does not take GET"),
        ("GET", "/v1/apps//features", None, 404, "no such endpoint"),
        ("GET", "/v1/nothing", None, 404, "no such endpoint GET /v1/nothing"),
        ("GET", "/v2/apps", None, 404, "no such endpoint"),
    ],
)
def test_api_refusals(
    api: FakeApi, method: str, path: str, body: bytes | None, status: int, problem: str
) -> None:
    got, answer = api.request(method, path, body)
    assert got == status and problem in answer["error"] and answer["fix"], answer
    assert not api.daemon.calls


@pytest.mark.parametrize("bad", ['"no"', '"false"', "0", "1", "null", "[]"])
def test_detach_must_be_a_json_boolean(run_api: FakeApi, bad: str) -> None:
    body = f'{{"type": "web", "command": "true", "detach": {bad}}}'.encode()
    status, answer = run_api.request("POST", "/v1/apps/sushi/dynos", body)
    assert status == 400 and "'detach'" in answer["error"] and answer["fix"]
    assert run_api.daemon.calls == []  # refused before the daemon is asked
    for good in ("true", "false"):
        body = f'{{"type": "web", "command": "true", "detach": {good}}}'.encode()
        run_api.request("POST", "/v1/apps/sushi/dynos", body)
        assert run_api.daemon.calls[-1][1].detach is (good == "true")


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["array", "object"])
def test_deeply_nested_json_is_a_400(run_api: FakeApi, kind: str) -> None:
    try:
        status, answer = run_api.request("POST", "/v1/spaces", nested(50_000, kind))
    except (ConnectionError, http.client.HTTPException) as exc:
        raise AssertionError(f"the API dropped the connection: {exc!r}") from None
    assert status == 400 and "nested too deeply" in answer["error"] and answer["fix"]
    # the connection and the server are fine afterwards
    assert run_api.request("GET", "/v1/spaces") == (200, [])


def test_a_partial_api_request_is_timed_out(run_api: FakeApi) -> None:
    """A client that starts a request and never finishes it no longer holds its connection
    (and a file of the daemon's) for ever."""
    run_api.server.request_timeout = 0.3  # type: ignore[attr-defined]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(run_api.path)
        sock.settimeout(3)
        sock.sendall(b"POST /v1/spaces HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{")
        assert sock.recv(100) == b""  # closed
    assert run_api.request("GET", "/v1/spaces") == (200, [])
