"""The registry sends the DNS server one dyno's names on its start and stop, and what the server
then serves is what a whole rebuild (`records`) would give."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from dynod.dns.registry import Registry
from dynod.state.store import App, Dyno

NETWORK = ("10.1.0.0/16", "10.1.0.1")


class FakeState:
    def __init__(self, apps: list[App]) -> None:
        self.apps = {app.name: app for app in apps}

    def app(self, name: str) -> App | None:
        return self.apps.get(name)

    def apps_in(self, space: str) -> list[App]:
        return sorted((a for a in self.apps.values() if a.space == space), key=lambda a: a.name)


class FakeServer:
    """Serves what it was told, as the real server does: set_scope replaces, update_scope
    patches."""

    def __init__(self) -> None:
        self.scopes: dict[str, dict[str, list[str]]] = {}
        self.calls: list[tuple[str, object]] = []

    def set_scope(self, scope: str, network: str, records: dict[str, list[str]]) -> None:
        self.calls.append(("set", scope))
        self.scopes[scope] = dict(records)

    def update_scope(self, scope: str, changes: dict[str, Sequence[str] | None]) -> None:
        # as lists: the registry sends a formation's addresses packed (a Sequence[str])
        sent = {name: None if a is None else list(a) for name, a in changes.items()}
        self.calls.append(("update", sent))
        records = self.scopes[scope]
        for name, addresses in changes.items():
            if addresses is None:
                records.pop(name, None)
            else:
                records[name] = list(addresses)

    def remove_scope(self, scope: str) -> None:
        self.scopes.pop(scope, None)


def dyno(id: int, app: str, ptype: str, number: int, ip: str, space: str = "tokyo") -> Dyno:
    return Dyno(
        id=id, app=app, type=ptype, number=number, state="up", slot=id, ip=ip, port=None,
        pid=None, pid_start=None, netns="", veth="", command="", cwd="", uid=0, gid=0,
        space=space,
    )  # fmt: skip


def world() -> tuple[FakeState, FakeServer, Registry]:
    state = FakeState(
        [
            App("sushi", space="tokyo", dns_discovery=True),
            App("tuna", space="tokyo", dns_discovery=True),
            App("quiet", space="tokyo", dns_discovery=False),
        ]
    )
    server = FakeServer()
    registry = Registry(state, server, lambda space: NETWORK)  # type: ignore[arg-type]
    registry.publish("tokyo")
    return state, server, registry


def test_a_start_and_a_stop_send_two_names() -> None:
    _, server, registry = world()
    server.calls.clear()
    web1 = dyno(1, "sushi", "web", 1, "10.1.0.6")
    registry.register(web1)
    registry.register(dyno(2, "sushi", "web", 2, "10.1.0.10"))
    registry.unregister(web1)
    assert server.calls == [
        ("update", {"web.sushi.app.localspace": ["10.1.0.6"], "1.web.sushi.app.localspace": [
            "10.1.0.6"]}),
        ("update", {"web.sushi.app.localspace": ["10.1.0.6", "10.1.0.10"],
                    "2.web.sushi.app.localspace": ["10.1.0.10"]}),
        ("update", {"web.sushi.app.localspace": ["10.1.0.10"], "1.web.sushi.app.localspace": None}),
    ]  # fmt: skip
    assert server.scopes["tokyo"] == registry.records("tokyo")


def test_an_app_without_discovery_sends_nothing() -> None:
    _, server, registry = world()
    server.calls.clear()
    registry.register(dyno(1, "quiet", "web", 1, "10.1.0.6"))
    assert server.calls == []


def test_the_first_dyno_of_an_unpublished_space_publishes_it() -> None:
    _, server, registry = world()
    registry.forget_space("tokyo")
    registry.register(dyno(1, "sushi", "web", 1, "10.1.0.6"))
    assert server.calls[-1] == ("set", "tokyo")
    assert server.scopes["tokyo"] == registry.records("tokyo")


def test_random_starts_stops_and_changes_serve_what_a_rebuild_would() -> None:
    """Types differing only in case share names (DNS is case-insensitive), dynos share numbers
    while one replaces another, a dyno re-registers with another address: in every case the
    names served equal `records`, in the same order."""
    state, server, registry = world()
    rng = random.Random(3)
    live: dict[int, Dyno] = {}
    for step in range(600):
        if live and rng.random() < 0.4:
            registry.unregister(live.pop(rng.choice(list(live))))
        elif live and rng.random() < 0.2:
            id = rng.choice(list(live))
            live[id] = dataclasses.replace(live[id], ip=f"10.1.{step // 200}.{step % 200 + 2}")
            registry.register(live[id])
        else:
            id = rng.randint(1, 60)
            app = rng.choice(["sushi", "tuna", "quiet"])
            ptype = rng.choice(["web", "Web", "worker"])
            live[id] = dyno(
                id, app, ptype, rng.randint(1, 4), f"10.1.{step // 200}.{step % 200 + 2}"
            )
            registry.register(live[id])
        if step == 300:  # discovery turned on: the apps service publishes the space whole
            state.apps["quiet"] = App("quiet", space="tokyo", dns_discovery=True)
            registry.publish("tokyo")
        assert server.scopes["tokyo"] == registry.records("tokyo"), step
