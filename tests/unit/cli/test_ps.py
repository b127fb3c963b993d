"""`dynod ps` of every app over a fake daemon: two API calls (the dynos, every formation), not
one per app, and each app's formation and dynos in its own section."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynod.state.store import Dyno, Process
from tests.unit.conftest import serving
from tests.unit.fake_daemon import FakeApi, FakeDaemon, ok


class _Formation:
    def __init__(self, daemon: PsDaemon) -> None:
        self.d = daemon

    def formation(self, app: str) -> list[dict[str, Any]]:
        self.d.calls.append(("formation", app))
        return [p.to_json() for p in self.d.processes if p.app == app]

    def formations(self) -> dict[str, list[dict[str, Any]]]:
        self.d.calls.append(("formations",))
        found: dict[str, list[dict[str, Any]]] = {}
        for p in self.d.processes:
            found.setdefault(p.app, []).append(p.to_json())
        return found


class _Dynos:
    def __init__(self, daemon: PsDaemon) -> None:
        self.d = daemon

    def ps(self, app: str | None = None) -> list[dict[str, Any]]:
        self.d.calls.append(("ps", app))
        return [d.to_json() for d in self.d.dynos if app is None or d.app == app]


def dyno(app: str, ptype: str, number: int, formation: bool) -> Dyno:
    return Dyno(
        id=number, app=app, type=ptype, number=number, state="up", slot=number,
        ip=f"10.0.0.{number * 4 + 2}", port=None, pid=100 + number, pid_start=1.0,
        netns=f"ns{number}", veth=f"v{number}", command="sleep 9", cwd="/", uid=1, gid=1,
        started_at=time.time(), formation=formation,
    )  # fmt: skip


class PsDaemon(FakeDaemon):
    def __init__(self) -> None:
        super().__init__()
        self.processes = [
            Process(f"app{n}", "worker", "sleep 9", 1, "/", 1, 1) for n in range(0, 30, 2)
        ]
        self.dynos = [dyno(f"app{n}", "worker", n + 1, n % 2 == 0) for n in range(30)]
        self.formation_service = _Formation(self)


@pytest.fixture
def ps_api(tmp_path: Path) -> Iterator[FakeApi]:
    daemon = PsDaemon()
    with serving(daemon, tmp_path) as fake:
        fake.server.endpoints.dynos = _Dynos(daemon)  # type: ignore[attr-defined]
        yield fake


def test_ps_of_every_app_asks_twice_whatever_the_number_of_apps(ps_api: FakeApi) -> None:
    lines = ok(ps_api.cli("ps"))
    assert ps_api.daemon.calls == [("ps", None), ("formations",)]
    assert lines[0] == "=== app0: worker (no size): sleep 9 (1)"
    assert lines[1].startswith("worker.1: up ")
    assert "=== app1: worker: outside the formation (1)" in lines
    assert sum(line.startswith("=== ") for line in lines) == 30
    ps_api.daemon.calls.clear()
    lines = ok(ps_api.cli("ps", "--app", "app2"))
    assert ps_api.daemon.calls == [("ps", "app2"), ("formation", "app2")]
    assert lines[0] == "=== worker (no size): sleep 9 (1)" and len(lines) == 2
