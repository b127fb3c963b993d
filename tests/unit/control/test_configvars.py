"""The config var service (control/configvars.py) on the fake kernel side: a change is one
release, restarts exactly the app's running process dynos with the new environment, logs names
and never values, and a refused change stores nothing (no root)."""

from __future__ import annotations

import asyncio

import pytest

from dynod.control import launch
from dynod.control.configvars import ConfigService
from dynod.errors import DynodError, NotFound
from dynod.state.store import App, Dyno
from tests.unit.control.test_supervisor import World, run
from tests.unit.control.test_supervisor import world as world  # noqa: F401 - the fixture
from tests.unit.control.worlds import until

SECRET = "s3cr=t\nline two"
PRINT_A = 'printf \'A=<%s>\\n\' "$A"; echo "DYNO=$DYNO"; exec sleep 30'


def service(world: World) -> ConfigService:
    return ConfigService(world.state, world.supervisor, world.log)


def in_app(world: World, dyno: Dyno, app: str) -> Dyno:
    world.state.add_app(App(app))
    world.state.update_dyno(dyno, app=app)
    return dyno


def test_a_change_restarts_exactly_the_apps_running_process_dynos(world: World) -> None:
    async def test() -> None:
        config = service(world)
        mine = [world.dyno(PRINT_A), world.dyno(PRINT_A, ptype="web")]
        theirs = in_app(world, world.dyno(PRINT_A), "other")
        one_off = world.dyno("exec sleep 30", detached=False)
        for dyno in [*mine, theirs, one_off]:
            await world.launch(dyno)
        await until(lambda: all("A=<>" in world.output(d) for d in mine))
        pids = {d.id: world.row(d).pid for d in [*mine, theirs, one_off]}  # type: ignore[union-attr]

        done = await config.change("app", {"A": SECRET})

        assert done["version"] == 2 and done["vars"] == {"A": SECRET}
        assert sorted(done["restarted"]) == sorted(d.name for d in mine)
        for dyno in mine:
            row = world.row(dyno)
            assert row is not None and row.pid != pids[dyno.id]
            await until(lambda d=dyno: "A=<s3cr=t" in world.output(d))  # type: ignore[misc]
            assert "line two>" in world.output(dyno)
            said = world.said(dyno)
            assert "Restarting" in said and "Stopping all processes with SIGTERM" in said
        for dyno in (theirs, one_off):  # another app's dyno and a one-off keep their process
            row = world.row(dyno)
            assert row is not None and row.pid == pids[dyno.id] and row.restarts == 0
        assert config.get("other")["vars"] == {}
        await config.change("app", {"A": None})
        assert config.get("app") == {"vars": {}, "version": 3}

    run(world, test)


def test_names_are_logged_values_never(world: World) -> None:
    async def test() -> None:
        config = service(world)
        world.state.add_app(App("app"))
        await config.change("app", {"TOKEN": SECRET, "B": "plain-value-b"})
        await config.change("app", {"TOKEN": None})
        lines = [line.text for line in world.log.recent(lambda line: True, 1000)]
        assert "Set TOKEN, B config vars" in lines and "Unset TOKEN config vars" in lines
        assert "Release v3 created" in lines
        assert not [t for t in lines if "s3cr" in t or "plain-value-b" in t]

    run(world, test)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, "no config vars given"),
        ({"A": "1", "PORT": "80"}, "PORT is set by the platform"),
        ({"HEROKU_DNS_APP_NAME": "x"}, "set by the platform"),
        ({"A-B": "1"}, "invalid config var name"),
        ({"A": "x\0y"}, "holds a NUL byte"),
        ({"A": "x" * 40_000}, "would take over 32 kB"),
    ],
)
def test_a_refused_change_stores_nothing(
    world: World, changes: dict[str, str | None], problem: str
) -> None:
    world.state.add_app(App("app"))
    with pytest.raises(DynodError, match=problem) as raised:
        asyncio.run(service(world).change("app", changes))
    assert "x\0y" not in raised.value.problem and "xxxx" not in raised.value.problem
    assert service(world).get("app") == {"vars": {}, "version": 1}


def test_an_unknown_app_is_not_found(world: World) -> None:
    with pytest.raises(NotFound, match="no app named 'nope'"):
        service(world).get("nope")


def test_precedence_defaults_then_caller_then_config_then_run_env_then_platform(
    world: World,
) -> None:
    dyno = world.dyno("true", ptype="web")
    dyno.env = {"FROM_RUN": "run", "SHARED": "run"}
    dyno.inherited = {"LANG": "de_DE.UTF-8", "TZ": "Europe/Paris", "LC_ALL": "C", "PATH": "/c"}
    config = {"SHARED": "config", "LANG": "fr_FR.UTF-8", "ONLY_CONFIG": "c", "TZ": "UTC"}
    env = launch.process_env(dyno, config, {"HEROKU_DNS_APP_NAME": "dns"})
    assert env["SHARED"] == "run"  # `run -e` wins for that one dyno
    assert env["LANG"] == "fr_FR.UTF-8" and env["TZ"] == "UTC"  # config wins over the caller
    assert env["LC_ALL"] == "C" and env["PATH"] == "/c"  # the caller's win over the defaults
    dyno.inherited = {}
    env = launch.process_env(dyno, config, {"HEROKU_DNS_APP_NAME": "dns"})
    assert env["ONLY_CONFIG"] == "c" and env["FROM_RUN"] == "run"
    assert env["PORT"] == str(dyno.port) and env["DYNO"] == dyno.name
    assert env["HEROKU_DNS_APP_NAME"] == "dns" and env["PATH"] == launch.DEFAULT_PATH
