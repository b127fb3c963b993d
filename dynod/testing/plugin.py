"""dynod's pytest plugin: `dynod_app` and `dynod_space` fixtures that make throwaway apps and
Private Spaces on a real dynod daemon and destroy them after the test, passed or failed.

    def test_home_page(dynod_app):
        app = dynod_app("path/to/app")          # its Procfile's web=1, up and listening
        assert app.get("/").status == 200       # through the router, Host: APP.localhost

The daemon: the one answering on --dynod-socket ($DYNOD_SOCKET, /run/dynod.sock); if none
does and pytest runs as root, a throwaway daemon for the session; otherwise the tests that use
the fixtures are skipped, saying how to start one. Active through the `pytest11` entry point
(installing dynod) or `-p dynod.testing.plugin`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dynod.api.client import Client, api_path
from dynod.config import socket_path
from dynod.errors import DynodError
from dynod.rules import names
from dynod.testing.app import TestApp, unique
from dynod.testing.daemon import HOW_TO_START, Daemon, session_daemon

AppFactory = Callable[..., TestApp]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dynod")
    group.addoption(
        "--dynod-socket",
        default=None,
        help="The dynod daemon's API socket (default: $DYNOD_SOCKET or /run/dynod.sock); as "
        "root with no daemon there, a throwaway daemon runs for the session.",
    )


@pytest.fixture(scope="session")
def dynod_daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    path = request.config.getoption("--dynod-socket") or socket_path()
    with session_daemon(path) as daemon:
        if daemon is None:
            pytest.skip(HOW_TO_START.format(socket=path))
        yield daemon


@pytest.fixture
def dynod_space(dynod_daemon: Daemon) -> Iterator[Callable[..., str]]:
    """Factory: `dynod_space()` creates a throwaway Private Space and returns its name; it is
    destroyed after the test (after the apps in it)."""
    client = dynod_daemon.client
    made: list[str] = []

    def create(name: str | None = None) -> str:
        space = name or unique("space")
        client.call("POST", api_path("spaces"), {"name": space})
        made.append(space)
        return space

    yield create
    for space in reversed(made):
        with contextlib.suppress(DynodError):
            client.call("DELETE", api_path("spaces", space))


@pytest.fixture
def dynod_app(dynod_daemon: Daemon, dynod_space: Any) -> Iterator[AppFactory]:
    """Factory: `dynod_app(directory, formation={"web": 1}, space=None, config={},
    internal_routing=False, name=None, timeout=60)` creates a throwaway app, sets its config
    vars, scales its formation from the Procfile in directory and waits until every dyno is up
    (`ps:wait`). The app is destroyed after the test, also when the test failed."""
    client = dynod_daemon.client
    made: list[str] = []

    def create(
        directory: str | os.PathLike[str],
        formation: dict[str, int] | None = None,
        space: str | None = None,
        config: dict[str, str] | None = None,
        internal_routing: bool = False,
        name: str | None = None,
        timeout: float = 60,
    ) -> TestApp:
        where = os.path.abspath(directory)
        app = name or unique(_stem(where))
        body: dict[str, Any] = {"name": app, "dir": where}
        if space:
            body["space"] = space
        if internal_routing:
            body["internal_routing"] = True
        client.call("POST", api_path("apps"), body)
        made.append(app)
        if config:
            client.call("PATCH", api_path("apps", app, "config-vars"), dict(config))
        made_app = TestApp(client, app, dynod_daemon.router_url, where, space)
        made_app.scale({"web": 1} if formation is None else formation)
        _wait(client, app, timeout)
        return made_app

    yield create
    for app in reversed(made):
        with contextlib.suppress(DynodError):
            client.call("DELETE", api_path("apps", app))


def _stem(directory: str) -> str:
    """The directory's name as the start of an app name (Heroku's rule), or `app`."""
    return names.stem(os.path.basename(directory))[:20].rstrip("-") or "app"


def _wait(client: Client, app: str, timeout: float) -> None:
    result = client.wait(app, timeout)
    if not result["ready"]:
        log = "\n".join(result.get("log") or [])
        pytest.fail(f"{app} did not come up: {result['problem']}\n{log}", pytrace=False)
