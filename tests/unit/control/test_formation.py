"""The formation service (control/formation.py) on the fake kernel side: scale checks all and
stores all or nothing, convergence starts the lowest free numbers and stops the highest, leaves
manual and foreground dynos alone, and replaces what vanished; restart and stop (no root)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from dynod.api.requests import RunRequest
from dynod.control.dynos import DynoService
from dynod.control.formation import FormationService, ScaleRequest
from dynod.errors import DynodError
from dynod.logs.book import LogBook
from dynod.rules import formation
from dynod.state.store import App, State
from tests.unit.control.worlds import AllocatingKernel, services

PROCFILE = {
    "web": "sleep 30",
    "worker": "sleep 30",
    "clock": "sleep 30",
    "release": "true",  # Heroku's release phase: in many Procfiles, never scaled
}


class World(SimpleNamespace):
    state: State
    kernel: AllocatingKernel
    dynos: DynoService
    formation: FormationService
    log: LogBook


@pytest.fixture
def world(tmp_path: object) -> Iterator[World]:
    with services(str(tmp_path)) as made:
        service = FormationService(made.config, made.state, made.dynos, made.supervisor, made.log)
        made.state.add_app(App("sushi", dir="/"))
        yield World(
            state=made.state, kernel=made.kernel, dynos=made.dynos, formation=service, log=made.log
        )


def scale(world: World, *changes: str, commands: dict[str, str] | None = None) -> object:
    request = ScaleRequest(
        "sushi",
        formation.parse_changes(changes),
        PROCFILE if commands is None else commands,
        "/",
        {"PATH": "/usr/bin:/bin"},
    )
    return world.formation.scale(request, os.getuid(), os.getgid())


def names(world: World, formation_only: bool = True) -> list[str]:
    return [
        d.name
        for d in world.state.dynos("sushi")
        if (d.formation or not formation_only) and d.state != "stopping"
    ]


def test_scale_up_down_lowest_free_numbers_and_highest_stopped(world: World) -> None:
    async def test() -> None:
        shown = await scale(world, "web=2", "worker=1")
        assert shown == [
            {"type": "web", "command": "sleep 30", "quantity": 2, "size": None},
            {"type": "worker", "command": "sleep 30", "quantity": 1, "size": None},
        ]
        assert names(world) == ["web.1", "web.2", "worker.1"]
        assert world.formation.formations() == {"sushi": shown}  # every app's, in one read
        await scale(world, "web+2")
        assert names(world) == ["web.1", "web.2", "web.3", "web.4", "worker.1"]
        # a gap is filled from the lowest number
        (web2,) = [d for d in world.state.dynos("sushi") if d.name == "web.2"]
        await world.formation.supervisor.stop(web2)
        await world.formation.converge("sushi")
        assert names(world) == ["web.1", "web.2", "web.3", "web.4", "worker.1"]
        await scale(world, "web-3", "worker=0")
        assert names(world) == ["web.1"]
        await scale(world, "web=0")
        assert names(world) == [] and world.kernel.links == set()

    asyncio.run(test())


def test_refused_scales_change_nothing(world: World) -> None:
    async def test() -> None:
        await scale(world, "worker=1")
        before = (names(world), [p.to_json() for p in world.state.formation("sushi")])
        refusals = [
            (("web=1", "nosuch=1"), None, "no 'nosuch' process type"),
            (("worker-2",), None, "would have -1 dynos"),
            (("web=60", "clock=40"), None, "at most 100"),
            (("web=1",), {"web": "no-such-program-here"}, "no-such-program-here"),
        ]
        for changes, commands, says in refusals:
            with pytest.raises(DynodError, match=says):
                await scale(world, *changes, commands=commands)
            after = (names(world), [p.to_json() for p in world.state.formation("sushi")])
            assert after == before

    asyncio.run(test())


def test_manual_and_foreground_dynos_are_left_alone(world: World) -> None:
    async def test() -> None:
        manual = await world.dynos.run(
            RunRequest("sushi", "worker", "sleep 30"), os.getuid(), os.getgid()
        )
        attached = await world.dynos.run(
            RunRequest("sushi", "worker", "sleep 30", detach=False), os.getuid(), os.getgid()
        )
        await scale(world, "worker=2")
        # the formation's dynos never take a manual dyno's name
        assert names(world) == ["worker.3", "worker.4"]
        await scale(world, "worker=0")
        assert names(world, formation_only=False) == [manual.name, attached.name]
        restarted = await world.formation.restart("sushi", None)
        assert restarted == [manual.name]  # not the foreground one
        assert names(world, formation_only=False) == ["worker.1", "worker.2"]

    asyncio.run(test())


def test_ps_restart_restarts_in_place_with_the_formation_s_command_now(world: World) -> None:
    """Heroku's restart: the same dyno (row, name, namespace, veth, address), a new process; a
    crashed dyno starts now; a formation dyno takes its type's command as stored now."""

    async def test() -> None:
        await scale(world, "web=1", "worker=1")
        before = {d.name: d for d in world.state.dynos("sushi")}
        (worker,) = [d for d in before.values() if d.type == "worker"]
        world.formation.supervisor._set_state(worker, "crashed")  # waiting for its backoff
        calls = len(world.kernel.calls)
        await scale(world, "web=1", commands={**PROCFILE, "web": "sleep 31"})  # same quantity
        restarted = await world.formation.restart("sushi", None)
        assert sorted(restarted) == ["web.1", "worker.1"]
        after = {d.name: d for d in world.state.dynos("sushi")}
        assert set(after) == set(before)
        for name, old in before.items():
            new = after[name]
            assert (new.id, new.netns, new.veth, new.ip) == (old.id, old.netns, old.veth, old.ip)
            assert new.state in ("starting", "up") and new.pid and new.pid != old.pid
        assert after["web.1"].command == "sleep 31" and after["worker.1"].command == "sleep 30"
        # No network was taken down or made again.
        done = [what for what, _, _ in world.kernel.calls[calls:]]
        assert "attach" not in done and "detach" not in done, done

    asyncio.run(test())


def test_ps_restart_of_a_foreground_dyno_stops_it(world: World) -> None:
    """A new process of an attached dyno would have no terminal: it is stopped, as before."""

    async def test() -> None:
        attached = await world.dynos.run(
            RunRequest("sushi", "worker", "sleep 30", detach=False), os.getuid(), os.getgid()
        )
        assert await world.formation.restart("sushi", attached.name) == [attached.name]
        assert world.state.dynos("sushi") == []

    asyncio.run(test())


def test_ps_restart_chooses_under_the_lock_what_a_scale_left(world: World) -> None:
    """A scale that holds the app's lock when a restart comes: the restart waits, then restarts
    what is left (no error about a dyno the scale removed)."""

    async def test() -> None:
        await scale(world, "web=2")
        lock = world.formation._lock("sushi")
        await lock.acquire()
        restart = asyncio.create_task(world.formation.restart("sushi", "web"))
        await asyncio.sleep(0.05)  # the restart chose, by the old code, and waits for the lock
        # what the scale does meanwhile: web=1 with a new command
        await world.formation.supervisor.stop(world.dynos.find("sushi", "web.2"))
        (web,) = world.state.formation("sushi")
        web.quantity, web.command = 1, "sleep 31"
        world.state.set_formation([web])
        lock.release()
        assert await restart == ["web.1"]
        (web1,) = world.state.dynos("sushi")
        assert web1.command == "sleep 31"

    asyncio.run(test())


def test_a_restart_that_is_cancelled_does_not_stay_counted_as_restarting(world: World) -> None:
    async def test() -> None:
        await scale(world, "web=1")
        (web,) = world.state.dynos("sushi")
        supervisor = world.formation.supervisor
        restart = asyncio.create_task(supervisor.restart(web))
        while not supervisor.restarting:
            await asyncio.sleep(0)
        restart.cancel()
        with pytest.raises(asyncio.CancelledError):
            await restart
        assert supervisor.restarting == set()

    asyncio.run(test())


def test_a_dyno_restarting_for_a_config_change_is_not_replaced_by_converge(
    world: World,
) -> None:
    """A config change restarts dynos outside the formation's lock: while one is "stopping"
    for its restart, converging sees it as still there and starts no other."""

    async def test() -> None:
        await scale(world, "web=1")
        (web,) = world.state.dynos("sushi")
        restart = asyncio.create_task(world.formation.supervisor.restart(web))
        while (current := world.state.dyno(web.id)) is not None and current.state != "stopping":
            await asyncio.sleep(0)
        assert await world.formation.converge("sushi") == []
        assert [d.name for d in world.state.dynos("sushi")] == ["web.1"]
        assert await restart
        assert names(world) == ["web.1"]

    asyncio.run(test())


def test_ps_stop_of_a_formation_dyno_starts_it_again(world: World) -> None:
    async def test() -> None:
        await scale(world, "web=2")
        first = {d.name: d.id for d in world.state.dynos("sushi")}
        answer = await world.formation.stop("sushi", "web.1")
        assert answer == {"stopped": ["web.1"], "replaced": ["web.1"]}
        again = {d.name: d.id for d in world.state.dynos("sushi")}
        assert set(again) == {"web.1", "web.2"} and again["web.1"] != first["web.1"]
        with pytest.raises(DynodError, match="no worker dynos"):
            await world.formation.stop("sushi", "worker")
        await world.formation.scale_to_zero("sushi")
        await world.formation.converge("sushi")
        assert names(world) == []

    asyncio.run(test())


def test_a_start_that_fails_is_reported_once_and_retried(world: World) -> None:
    async def test() -> None:
        await scale(world, "worker=1")
        # what a restarted daemon may find: a formation of 3 whose dynos cannot start
        (process,) = world.state.formation("sushi")
        process.quantity = 3
        world.state.set_formation([process])
        world.kernel.fail_spawn = "no such directory"
        for _ in range(2):
            failed = await world.formation.converge("sushi")
            assert len(failed) == 2
        said = [x.text for x in world.log.recent(lambda line: line.source == "dynod", 10)]
        # once per reason (worker.2's and worker.3's), not once per attempt
        assert len([t for t in said if "could not start a worker dyno" in t]) == 2
        assert names(world) == ["worker.1"]
        world.kernel.fail_spawn = ""  # the next convergence makes it
        assert await world.formation.converge("sushi") == []
        assert names(world) == ["worker.1", "worker.2", "worker.3"]

    asyncio.run(test())


def test_scaling_down_needs_no_procfile(world: World) -> None:
    async def test() -> None:
        await scale(world, "worker=3")
        await scale(world, "worker-1", commands={})
        assert names(world) == ["worker.1", "worker.2"]
        with pytest.raises(DynodError, match=r"no 'worker' process type \(it has: none\)"):
            await scale(world, "worker+1", commands={})
        await scale(world, "worker=0", commands={})
        assert names(world) == []
        assert [p.command for p in world.state.formation("sushi")] == ["sleep 30"]

    asyncio.run(test())


def test_scaling_one_type_never_hands_the_others_to_the_caller(world: World) -> None:
    """Found by an adversarial review: scaling `web` from another directory (another user's
    Procfile) rewrote `worker`'s command and user, so `worker` ran the caller's code."""

    async def test() -> None:
        await scale(world, "worker=1")
        before = {p.type: p for p in world.state.formation("sushi")}["worker"]
        theirs = ScaleRequest(
            "sushi",
            formation.parse_changes(["web=1"]),
            {"web": PROCFILE["web"], "worker": "id; sleep 999"},
            "/tmp",
            {"PATH": "/usr/bin:/bin"},
        )
        await world.formation.scale(theirs, os.getuid(), os.getgid())
        after = {p.type: p for p in world.state.formation("sushi")}
        assert after["worker"] == before
        assert after["web"].cwd == "/tmp"  # the scaled type is the caller's

    asyncio.run(test())
