"""The CLI and the API's routing for spaces, apps, features and trusted IPs, without root.

Argument errors are caught before the daemon is asked. For the rest, the real ApiServer runs on a
temporary socket in front of a fake daemon with the daemon's method names: this checks routes,
body checks and the CLI's output, not what the daemon does (the root tests do that).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import pwd
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dynod.api.client import api_path
from dynod.api.requests import RunRequest
from dynod.api.server import ApiServer
from dynod.cli.main import main
from dynod.control import launch
from dynod.errors import DynodError, NotFound
from dynod.rules import names

# ---------------------------------------------------------------- validators


@pytest.mark.parametrize("good", ["acme", "a-b", "abc", "1abc", "acme-prod-2"])
def test_space_names_accepted(good: str) -> None:
    assert names.check_space(good) == good


@pytest.mark.parametrize("bad", ["", "ab", "Acme", "a--b", "-ab", "ab-", "a_b", "a.b", "acme "])
def test_space_names_refused(bad: str) -> None:
    with pytest.raises(DynodError) as err:
        names.check_space(bad)
    assert "invalid space name" in err.value.problem and err.value.fix


def test_cidrs_are_canonical_and_host_bits_are_refused_with_the_range_meant() -> None:
    assert names.check_cidr("203.0.113.0/24") == "203.0.113.0/24"
    assert names.check_cidr("0.0.0.0/0") == "0.0.0.0/0"
    assert names.check_cidr("198.51.100.7") == "198.51.100.7/32"
    with pytest.raises(DynodError) as err:
        names.check_cidr("203.0.113.5/24")
    assert "host bits" in err.value.problem and "203.0.113.0/24" in err.value.fix
    for bad in ("", "x", "10.0.0.0/33", "::/0", " 10.0.0.0/8", "10.0.0.0/8 "):
        with pytest.raises(DynodError):
            names.check_cidr(bad)


def test_space_ranges_are_private_slash16s() -> None:
    for good in ("10.1.0.0/16", "172.20.0.0/16", "192.168.0.0/16"):
        assert names.check_space_cidr(good) == good
    for bad in ("10.1.0.0/17", "10.0.0.0/8", "11.0.0.0/16", "10.1.2.0/16", "nope"):
        with pytest.raises(DynodError):
            names.check_space_cidr(bad)


def test_nat_addresses() -> None:
    assert names.check_nat_ip("192.0.2.10") == "192.0.2.10"
    for bad in ("", "x", "127.0.0.1", "0.0.0.0", "169.254.0.1", "224.0.0.1", "10.0.0.0/8", "::1"):
        with pytest.raises(DynodError):
            names.check_nat_ip(bad)


def test_upstream_resolvers() -> None:
    assert names.parse_upstream("192.0.2.53") == ("192.0.2.53", 53)
    assert names.parse_upstream("192.0.2.53:5353") == ("192.0.2.53", 5353)
    assert names.parse_upstream("2001:db8::53") == ("2001:db8::53", 53)
    assert names.parse_upstream("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    assert names.parse_upstream("[::1]") == ("::1", 53)
    for bad in ("", "dns.example", "1.1.1.1:", "1.1.1.1:0", "1.1.1.1:65536", "1.1.1.1:+53",
                "[1.1.1.1]:53", "[::1]x", "[::1]:", "0.0.0.0"):  # fmt: skip
        with pytest.raises(DynodError):
            names.parse_upstream(bad)


def test_api_paths_quote_each_segment_whole() -> None:
    assert api_path("spaces") == "/v1/spaces"
    assert (
        api_path("spaces", "acme", "trusted-ips", "10.0.0.0/8")
        == "/v1/spaces/acme/trusted-ips/10.0.0.0%2F8"
    )
    assert api_path("dynos", app="sushi", x=None) == "/v1/dynos?app=sushi"


# ---------------------------------------------------------------- CLI refusals before the daemon

NO_DAEMON = ["--socket", "/nonexistent/dynod.sock"]


def cli(*args: str, socket_path: str | None = None) -> Result:
    where = ["--socket", socket_path] if socket_path else NO_DAEMON
    return CliRunner().invoke(main, [*where, *args])


def refused(result: Result, problem: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert f"error: {problem}" in result.stderr, result.stderr
    assert "fix: " in result.stderr
    assert result.stdout == ""


def test_without_a_daemon_the_cli_says_how_to_start_it() -> None:
    for command in (["spaces"], ["apps"], ["trusted-ips", "--space", "acme"]):
        result = cli(*command)
        refused(result, "the dynod daemon is not running")
        assert "dynod daemon" in result.stderr


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["spaces:create", "Acme"], "invalid space name 'Acme'"),
        (["spaces:create", "acme", "--cidr", "10.1.0.0/24"], "invalid space range"),
        (["spaces:create", "acme", "--cidr", "10.1.0.1/16"], "invalid space range"),
        (["spaces:create", "acme", "--nat-ip", "127.0.0.1"], "127.0.0.1 cannot be a NAT address"),
        (["spaces:destroy", "acme", "--confirm", "acne"], "--confirm acne does not match"),
        (["apps:create", "sushi", "--internal-routing"], "internal routing exists only in"),
        (["apps:create", "Sushi"], "invalid app name"),
        (["apps:create", "sushi", "--space", "a--b"], "invalid space name"),
        (["apps:destroy", "api", "--confirm", "apx"], "--confirm apx does not match"),
        (["features", "--app", "x"], "invalid app name"),
        (["trusted-ips:add", "203.0.113.1/24", "--space", "acme"], "invalid trusted IP range"),
        (["trusted-ips:remove", "nope", "--space", "acme"], "invalid trusted IP range"),
        (["trusted-ips", "--space", "A"], "invalid space name"),
        (["daemon", "--upstream", "dns.example"], "invalid DNS resolver 'dns.example'"),
    ],
)
def test_refused_before_asking_the_daemon(args: list[str], problem: str) -> None:
    refused(cli(*args), problem)


def test_required_options_are_click_usage_errors() -> None:
    for args in (["features"], ["features:enable", "x"], ["trusted-ips:add", "1.2.3.4"]):
        result = cli(*args)
        assert result.exit_code == 2 and "Missing option" in result.stderr


# ---------------------------------------------------------------- API and CLI over a fake daemon

DNS = "spaces-dns-discovery"


class FakeDaemon:
    """The daemon's Private Spaces methods over dicts (no kernel, no checks beyond names)."""

    def __init__(self) -> None:
        self.spaces: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []

    def _space(self, name: str) -> dict[str, Any]:
        if name not in self.spaces:
            raise NotFound(f"no space named {name!r}", "`dynod spaces` lists the spaces")
        return self.spaces[name]

    def _app(self, name: str) -> dict[str, Any]:
        if name not in self.apps:
            raise NotFound(f"no app named {name!r}", "`dynod apps` lists the apps")
        return self.apps[name]

    async def create_space(self, name: str, cidr: str | None, nat_ip: str | None) -> dict:
        self.calls.append(("create_space", name, cidr, nat_ip))
        names.check_space(name)
        n = len(self.spaces) + 1
        cidr = names.check_space_cidr(cidr) if cidr else f"10.{n}.0.0/16"
        bridge = cidr.split("/")[0][:-1] + "1"
        self.spaces[name] = {
            "name": name,
            "cidr": cidr,
            "bridge": f"dynods{n}",
            "dns": bridge,
            "router": f"{bridge}:80",
            "nat_ip": nat_ip or "192.0.2.10",
            "trusted_ips": ["0.0.0.0/0"],
        }
        return (await self.spaces_info())[-1]

    async def spaces_info(self) -> list[dict]:
        return [
            s | {"apps": sorted(a for a, x in self.apps.items() if x["space"] == s["name"])}
            for s in self.spaces.values()
        ]

    async def destroy_space(self, name: str) -> None:
        self._space(name)
        if any(a["space"] == name for a in self.apps.values()):
            raise DynodError(f"space {name} has apps", "destroy them first", status=409)
        del self.spaces[name]

    async def create_app(self, name: str, space: str | None, internal_routing: bool) -> dict:
        self.calls.append(("create_app", name, space, internal_routing))
        if space is not None:
            self._space(space)
        self.apps[name] = {
            "name": name,
            "space": space,
            "internal_routing": internal_routing,
            "features": {DNS: space is not None},
            "dynos": 0,
        }
        return self.apps[name]

    async def destroy_app(self, name: str) -> dict:
        self._app(name)
        del self.apps[name]
        return {"stopped": ["web.1", "worker.1"] if name == "busy" else []}

    async def apps_info(self) -> list[dict]:
        return list(self.apps.values())

    async def features(self, app: str) -> list[dict]:
        on = self._app(app)["features"][DNS]
        return [{"name": DNS, "enabled": on, "description": "DNS names for the space's dynos"}]

    async def set_feature(self, app: str, feature: str, enabled: bool) -> dict:
        self.calls.append(("set_feature", app, feature, enabled))
        if feature != DNS:
            raise NotFound(f"no feature {feature!r}", f"`dynod features --app {app}` lists them")
        self._app(app)["features"][DNS] = enabled
        return {"name": DNS, "enabled": enabled, "note": "DNS answers change now."}

    async def trusted_ips(self, space: str) -> list[str]:
        return list(self._space(space)["trusted_ips"])

    async def add_trusted_ip(self, space: str, cidr: str) -> list[str]:
        self.calls.append(("add_trusted_ip", space, cidr))
        self._space(space)["trusted_ips"].append(names.check_cidr(cidr))
        return await self.trusted_ips(space)

    async def remove_trusted_ip(self, space: str, cidr: str) -> list[str]:
        self.calls.append(("remove_trusted_ip", space, cidr))
        ranges = self._space(space)["trusted_ips"]
        if cidr not in ranges:
            raise NotFound(f"{space} does not trust {cidr}", "`dynod trusted-ips` lists them")
        ranges.remove(cidr)
        return await self.trusted_ips(space)


class FakeApi:
    def __init__(self, path: str, daemon: FakeDaemon) -> None:
        self.path = path
        self.daemon = daemon

    def cli(self, *args: str) -> Result:
        return cli(*args, socket_path=self.path)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("localhost")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        conn.sock = sock
        conn.request(method, path, body=body)
        response = conn.getresponse()
        answer = response.status, json.loads(response.read())
        conn.close()
        return answer


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApi]:
    daemon = FakeDaemon()
    server = ApiServer(daemon)  # type: ignore[arg-type]
    path = str(tmp_path / "api.sock")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start(path, None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield FakeApi(path, daemon)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def ok(result: Result) -> list[str]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout.splitlines()


def test_spaces_create_list_destroy(api: FakeApi) -> None:
    assert ok(api.cli("spaces")) == ["no spaces (`dynod spaces:create NAME` creates one)"]
    assert ok(api.cli("spaces:create", "acme", "--cidr", "10.7.0.0/16")) == [
        "created space acme: 10.7.0.0/16, bridge dynods1, DNS 10.7.0.1, router 10.7.0.1:80, "
        "NAT 192.0.2.10"
    ]
    assert api.daemon.calls[-1] == ("create_space", "acme", "10.7.0.0/16", None)
    created = json.loads(
        api.cli("spaces:create", "zeta", "--nat-ip", "192.0.2.20", "--json").stdout
    )
    assert created["name"] == "zeta" and created["nat_ip"] == "192.0.2.20"
    ok(api.cli("apps:create", "sushi", "--space", "acme"))
    assert ok(api.cli("spaces")) == [
        "NAME  CIDR         BRIDGE   DNS       NAT         APPS",
        "acme  10.7.0.0/16  dynods1  10.7.0.1  192.0.2.10  sushi",
        "zeta  10.2.0.0/16  dynods2  10.2.0.1  192.0.2.20  -",
    ]
    assert json.loads(api.cli("spaces", "--json").stdout)[0]["apps"] == ["sushi"]
    busy = api.cli("spaces:destroy", "acme")
    assert busy.exit_code == 1 and "error: space acme has apps" in busy.stderr
    assert ok(api.cli("spaces:destroy", "zeta", "--confirm", "zeta")) == ["destroyed space zeta"]
    refused(api.cli("spaces:destroy", "zeta"), "no space named 'zeta'")


def test_apps_create_list_destroy(api: FakeApi) -> None:
    assert ok(api.cli("apps"))[0].startswith("no apps")
    ok(api.cli("spaces:create", "acme"))
    assert ok(api.cli("apps:create", "web-app")) == ["created web-app in the common runtime"]
    assert ok(api.cli("apps:create", "api", "-s", "acme", "--internal-routing")) == [
        "created api in space acme with internal routing"
    ]
    assert api.daemon.calls[-1] == ("create_app", "api", "acme", True)
    assert ok(api.cli("apps:create", "busy", "--space", "acme")) == ["created busy in space acme"]
    assert ok(api.cli("apps")) == [
        "NAME     SPACE           ROUTING   FEATURES              DYNOS",
        "web-app  common runtime  external  -                     0",
        "api      acme            internal  spaces-dns-discovery  0",
        "busy     acme            external  spaces-dns-discovery  0",
    ]
    assert json.loads(api.cli("apps", "--json").stdout)[1]["internal_routing"] is True
    assert ok(api.cli("apps:destroy", "busy")) == ["destroyed busy (stopped web.1, worker.1)"]
    assert ok(api.cli("apps:destroy", "api", "--confirm", "api")) == [
        "destroyed api (it had no dynos)"
    ]
    refused(api.cli("apps:destroy", "api"), "no app named 'api'")
    refused(api.cli("apps:create", "xyz", "--space", "nowhere"), "no space named 'nowhere'")


def test_features(api: FakeApi) -> None:
    ok(api.cli("spaces:create", "acme"))
    ok(api.cli("apps:create", "sushi", "--space", "acme"))
    assert ok(api.cli("features", "--app", "sushi")) == [
        "FEATURE               STATE    DESCRIPTION",
        "spaces-dns-discovery  enabled  DNS names for the space's dynos",
    ]
    assert ok(api.cli("features:disable", DNS, "-a", "sushi")) == [
        "disabled spaces-dns-discovery on sushi",
        "DNS answers change now.",
    ]
    assert api.daemon.calls[-1] == ("set_feature", "sushi", DNS, False)
    assert json.loads(api.cli("features", "-a", "sushi", "--json").stdout)[0]["enabled"] is False
    assert ok(api.cli("features:enable", DNS, "--app", "sushi"))[0] == (
        "enabled spaces-dns-discovery on sushi"
    )
    refused(api.cli("features:enable", "nope", "--app", "sushi"), "no feature 'nope'")


def test_trusted_ips(api: FakeApi) -> None:
    ok(api.cli("spaces:create", "acme"))
    assert ok(api.cli("trusted-ips", "--space", "acme")) == ["0.0.0.0/0"]
    added = ok(api.cli("trusted-ips:add", "203.0.113.0/24", "--space", "acme"))
    assert added[:2] == [
        "added 203.0.113.0/24 to acme's trusted IP ranges",
        "acme trusts: 0.0.0.0/0, 203.0.113.0/24",
    ]
    assert added[2].startswith("note: 0.0.0.0/0 trusts every address")
    assert ok(api.cli("trusted-ips:add", "198.51.100.7", "-s", "acme"))[0] == (
        "added 198.51.100.7/32 to acme's trusted IP ranges"
    )
    # the CIDR's slash travels as %2F and reaches the daemon whole
    assert ok(api.cli("trusted-ips:remove", "0.0.0.0/0", "--space", "acme")) == [
        "removed 0.0.0.0/0 from acme's trusted IP ranges",
        "acme trusts: 203.0.113.0/24, 198.51.100.7/32",
    ]
    assert api.daemon.calls[-1] == ("remove_trusted_ip", "acme", "0.0.0.0/0")
    ok(api.cli("trusted-ips:remove", "203.0.113.0/24", "--space", "acme"))
    assert ok(api.cli("trusted-ips:remove", "198.51.100.7", "--space", "acme")) == [
        "removed 198.51.100.7/32 from acme's trusted IP ranges",
        "acme trusts no IP ranges now: only clients inside it reach its apps",
    ]
    assert json.loads(api.cli("trusted-ips", "--space", "acme", "--json").stdout) == []
    refused(api.cli("trusted-ips", "--space", "nowhere"), "no space named 'nowhere'")


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


# ---------------------------------------------------------------- issue 7 item 8: API edge cases


def test_space_names_are_at_most_30_characters() -> None:
    assert names.check_space("a" * 30) == "a" * 30
    for bad in ("a" * 31, "a" * 10_000):
        with pytest.raises(DynodError) as err:
            names.check_space(bad)
        assert "invalid space name" in err.value.problem and "3 to 30 characters" in err.value.fix
        assert len(err.value.problem) < 100  # a huge name is not echoed whole


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "1000", [1000], 1 << 32, 0xFFFFFFFF])
def test_sudo_ids_must_be_real_ids(bad: Any) -> None:
    for field in ("sudo_uid", "sudo_gid"):
        request = {"sudo_uid": 1000, "sudo_gid": 1000, field: bad}
        with pytest.raises(DynodError) as err:
            launch.dyno_user(RunRequest.parse("app", request), 0, 0, "nobody")
        assert repr(field) in err.value.problem and err.value.fix and err.value.status == 400


def test_sudo_uid_never_gives_root() -> None:
    nobody = pwd.getpwnam("nobody")
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 1000, "sudo_gid": 1001}), 0, 0, "nobody"
    ) == (1000, 1001)
    # sudo called by root: the configured user, never uid 0
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 0, "sudo_gid": 0}), 0, 0, "nobody"
    ) == (
        nobody.pw_uid,
        nobody.pw_gid,
    )
    assert launch.dyno_user(RunRequest.parse("app", {}), 0, 0, "nobody") == (
        nobody.pw_uid,
        nobody.pw_gid,
    )
    # a caller that is not root runs its dynos as itself, whatever it sends
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 5, "sudo_gid": 5}), 1000, 1000, "nobody"
    ) == (1000, 1000)


class RunDaemon(FakeDaemon):
    """Refuses every run after recording it: the tests check what reaches the daemon."""

    async def run_dyno(self, request: RunRequest, uid: int, gid: int) -> Any:
        self.calls.append(("run_dyno", request))
        raise DynodError("fake daemon: not running dynos", "")


@pytest.fixture
def run_api(tmp_path: Path) -> Iterator[FakeApi]:
    daemon = RunDaemon()
    server = ApiServer(daemon)  # type: ignore[arg-type]
    path = str(tmp_path / "api.sock")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start(path, None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeApi(path, daemon)
    fake.server = server  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


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
