"""The click commands (dynod/cli/main.py), without root: argument errors are caught before the
daemon is asked; the rest runs over the real API server in front of a fake daemon."""

from __future__ import annotations

import json

import pytest

from tests.unit.fake_daemon import DNS, FakeApi, cli, ok, refused


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
