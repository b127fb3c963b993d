"""`dynod config`, `config:set`, `config:unset`, `config:get` (dynod/cli/config.py) over the real
API server in front of a fake daemon: the heroku CLI's output formats and the refusals."""

from __future__ import annotations

import json

import pytest

from tests.unit.fake_daemon import FakeApi, cli, ok, refused


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["config:set", "--app", "sushi", "1A=x"], "invalid config var name '1A'"),
        (["config:set", "--app", "sushi", "MY-VAR=x"], "invalid config var name"),
        (["config:set", "--app", "sushi", "NOEQUALS"], "'NOEQUALS' is not NAME=VALUE"),
        (["config:set", "--app", "Bad", "A=1"], "invalid app name"),
        (["config:unset", "--app", "sushi", "A-B"], "invalid config var name"),
        (["config:get", "--app", "sushi", "A B"], "invalid config var name"),
        (["config", "--app", "Bad"], "invalid app name"),
        (["config:set", "--app", "sushi", "PORT=80"], "PORT is set by the platform"),
        (
            ["config:unset", "--app", "sushi", "HEROKU_DNS_APP_NAME"],
            "HEROKU_DNS_APP_NAME is set by the platform",
        ),
    ],
)
def test_refused_before_asking_the_daemon(args: list[str], problem: str) -> None:
    refused(cli(*args), problem)


def test_set_get_unset_and_the_listing_formats(api: FakeApi) -> None:
    ok(api.cli("apps:create", "sushi"))
    result = api.cli("config:set", "--app", "sushi", "A=1", "DATABASE_URL=pg://h/db?x=y")
    assert ok(result) == ["A:            1", "DATABASE_URL: pg://h/db?x=y"]
    assert result.stderr == "Setting A, DATABASE_URL and restarting sushi... done, v2\n"
    ok(api.cli("config:set", "--app", "sushi", "PEM=line1\nline2"))
    assert ok(api.cli("config", "--app", "sushi")) == [
        "=== sushi Config Vars",
        "",
        "A:            1",
        "DATABASE_URL: pg://h/db?x=y",
        "PEM:          line1",
        "              line2",
    ]
    as_json = json.loads(api.cli("config", "--app", "sushi", "--json").stdout)
    assert as_json == {"A": "1", "DATABASE_URL": "pg://h/db?x=y", "PEM": "line1\nline2"}
    assert ok(api.cli("config", "--app", "sushi", "--shell")) == [
        "A=1",
        "DATABASE_URL='pg://h/db?x=y'",
        "PEM='line1",
        "line2'",
    ]
    # config:get prints the value as it is: its newline too
    assert api.cli("config:get", "--app", "sushi", "PEM").stdout == "line1\nline2\n"
    assert api.cli("config:get", "--app", "sushi", "NOT_SET").stdout == "\n"
    assert ok(api.cli("config:get", "--app", "sushi", "-s", "A")) == ["A=1"]
    result = api.cli("config:unset", "--app", "sushi", "A", "PEM")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == "Unsetting A, PEM and restarting sushi... done, v4\n"
    assert json.loads(api.cli("config", "-a", "sushi", "--json").stdout) == {
        "DATABASE_URL": "pg://h/db?x=y"
    }


def test_an_unknown_app_is_refused_and_changes_nothing(api: FakeApi) -> None:
    result = api.cli("config:set", "--app", "nope", "A=1")
    assert result.exit_code == 1
    assert result.stderr.startswith("Setting A and restarting nope... failed\nerror: no app named")
    assert not [c for c in api.daemon.calls if c[0] == "config"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'["A"]', "the request body is JSON array, not an object"),
        (b'{"A": 5}', "the value of 'A' is JSON number"),
        (b'{"A": {"x": "secret"}}', "the value of 'A' is JSON object"),
    ],
)
def test_the_api_refuses_bodies_without_echoing_values(
    api: FakeApi, body: bytes, problem: str
) -> None:
    ok(api.cli("apps:create", "sushi"))
    status, answer = api.request("PATCH", "/v1/apps/sushi/config-vars", body)
    assert status == 400 and problem in answer["error"]
    assert "secret" not in json.dumps(answer)
