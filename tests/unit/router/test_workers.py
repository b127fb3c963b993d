"""The router as worker processes (dynod.router.workers): they serve the daemon's listening
socket with the table it pushes, send their log lines back, are started again when one dies,
and are gone after close()."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psutil
import pytest

from dynod.router import workers as workers_module
from dynod.router.routes import AppChanged, AppRoute, Backend, DynoMoved, RouteTable
from dynod.router.workers import RouterWorkers
from tests.unit.router.test_proxy import echo_backend, fetch, run, serve

TIMEOUT = 15.0


@asynccontextmanager
async def workers(
    count: int, batches: list[int] | None = None, said: list[str] | None = None
) -> AsyncIterator[tuple[RouterWorkers, list[tuple[str, str | None]]]]:
    """`batches`: take the workers' lines a batch at a time (as the daemon does), noting each
    batch's size there; else a line at a time. `said`: the lines for the daemon's log."""
    lines: list[tuple[str, str | None]] = []

    def take_batch(items: list[tuple[str, str | None]]) -> None:
        assert batches is not None
        batches.append(len(items))
        lines.extend(items)

    router = RouterWorkers(
        lambda line, app: lines.append((line, app)),
        count=count,
        log_batch=take_batch if batches is not None else None,
        say=said.append if said is not None else None,
    )
    await router.start("127.0.0.1", 0)
    try:
        yield router, lines
    finally:
        pids = router.pids()
        await router.close()
        assert not [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]


async def until(check: object, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def get_until_200(port: int) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        response, _ = await fetch(port)
        if response.status_code == 200:
            return
        assert asyncio.get_running_loop().time() < deadline, response
        await asyncio.sleep(0.05)


async def until_503(port: int) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while (await fetch(port))[0].status_code != 503:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


def test_workers_route_by_the_pushed_table_and_log_through_the_daemon() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as port, workers(2) as (router, lines):
            backend = Backend("web.1", "127.0.0.1", port)
            assert len(router.pids()) == 2
            response, _ = await fetch(router.port)
            assert response.status_code == 404  # no table yet: no app
            router.update(RouteTable({"sushi": AppRoute((backend,))}))
            await get_until_200(router.port)
            for _ in range(10):
                response, _ = await fetch(router.port)
                assert response.status_code == 200
            await until(lambda: len(lines) >= 12, "log lines")
            ok = [(line, app) for line, app in lines if " status=200 " in line]
            assert len(ok) == 11 and all(app == "sushi" for _, app in ok)
            assert all(line.startswith("at=info method=GET ") for line, _ in ok)
            router.update(RouteTable({"sushi": AppRoute(())}))
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while (await fetch(router.port))[0].status_code != 503:  # H14 once every worker knows
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)

    run(main(), timeout=60)


def test_a_workers_log_lines_reach_the_daemon_in_batches() -> None:
    async def main() -> None:
        batches: list[int] = []
        async with serve(echo_backend("web.1")) as port, workers(1, batches) as (router, lines):
            router.update(RouteTable({"sushi": AppRoute((Backend("web.1", "127.0.0.1", port),))}))
            await get_until_200(router.port)
            await asyncio.gather(*(fetch(router.port) for _ in range(40)))
            await until(lambda: len([x for x in lines if " status=200 " in x[0]]) >= 41, "lines")
            assert all(app == "sushi" for line, app in lines if " status=200 " in line)
            # 41 requests' lines, fewer calls: lines that came in one frame went in one call.
            assert sum(batches) == len(lines) and len(batches) < len(lines), batches

    run(main(), timeout=60)


def test_a_worker_that_dies_is_started_again_with_the_table() -> None:
    said: list[str] = []

    async def main() -> None:
        async with serve(echo_backend("web.1")) as port, workers(1, said=said) as (router, _):
            router.update(RouteTable({"sushi": AppRoute((Backend("web.1", "127.0.0.1", port),))}))
            await get_until_200(router.port)
            assert router.running() == 1
            (first,) = router.pids()
            os.kill(first, signal.SIGKILL)
            await until(lambda: router.running() == 0 or router.pids() != [first], "its end")
            await until(lambda: router.pids() and router.pids() != [first], "a new worker")
            await get_until_200(router.port)
            assert router.running() == 1
            # the daemon's log says so (a worker that keeps dying is otherwise invisible)
            assert len(said) == 1
            assert said[0].startswith("warning: router worker 0 exited with status -9")
            assert "starting it again in 0.5 s" in said[0]

    run(main(), timeout=60)


def test_what_a_worker_printed_as_it_died_comes_before_the_line_about_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that prints and exits at once, leaving a process that holds the pipe: its
    lines, the last one without a newline, are in the daemon's log before the line about its
    exit, although the pipe's end comes later."""
    monkeypatch.setattr(workers_module, "WORKER", "tests.unit.router.dying_worker")
    said: list[str] = []

    async def main() -> None:
        async with workers(1, said=said):
            await until(lambda: any(line.startswith("warning: ") for line in said), "its end")

    run(main(), timeout=60)
    deadline = time.monotonic() + TIMEOUT
    while [
        p
        for p in psutil.process_iter(["cmdline"])
        if "dying-worker-child" in (p.info["cmdline"] or [])
    ]:
        assert time.monotonic() < deadline, "the dying worker's child is still there"
        time.sleep(0.1)
    assert said[:4] == [
        "router worker 0: starting",
        "router worker 0: Traceback (most recent call last):",
        "router worker 0: ValueError: the reason it ended",
        said[3],
    ]
    assert said[3].startswith("warning: router worker 0 exited with status 1 "), said


def test_workers_route_by_the_changes_pushed_and_a_new_one_gets_the_table_they_made() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as port, workers(1) as (router, _):
            backend = Backend("web.1", "127.0.0.1", port)
            empty = RouteTable({"sushi": AppRoute(())})
            router.update(empty, [AppChanged("sushi", AppRoute(()))])
            await until_503(router.port)  # the worker is connected and has the app
            serving = empty.with_dyno("sushi", "web.1", backend)
            router.update(serving, [DynoMoved("sushi", "web.1", backend)])
            await get_until_200(router.port)  # the worker was sent the change alone
            (first,) = router.pids()
            os.kill(first, signal.SIGKILL)
            await until(lambda: router.pids() and router.pids() != [first], "a new worker")
            await get_until_200(router.port)  # the new one got the whole table
            router.update(empty, [DynoMoved("sushi", "web.1", None)])
            await until_503(router.port)  # H14: out of the backends

    run(main(), timeout=60)


def test_a_worker_sent_a_change_its_table_cannot_take_starts_again_with_the_whole() -> None:
    said: list[str] = []

    async def main() -> None:
        async with serve(echo_backend("web.1")) as port, workers(1, said=said) as (router, _):
            backend = Backend("web.1", "127.0.0.1", port)
            (first,) = router.pids()
            router.update(RouteTable({"sushi": AppRoute(())}))
            await until_503(router.port)  # it is connected and has a table
            table = RouteTable({"sushi": AppRoute((backend,))})
            router.update(table, [DynoMoved("no-such-app", "web.1", backend)])  # astray
            await until(lambda: router.pids() and router.pids() != [first], "a new worker")
            await get_until_200(router.port)  # the new one routes by the whole table
            # why it ended, from its standard error, before the line about its exit
            assert said[0].startswith("router worker 0: a route change it cannot apply ("), said
            assert said[1].startswith("warning: router worker 0 exited with status 0"), said

    run(main(), timeout=60)


def test_round_robin_holds_across_workers() -> None:
    """Consecutive requests alternate over the app's dynos whichever worker accepts them."""

    async def main() -> None:
        async with (
            serve(echo_backend("web.1")) as p1,
            serve(echo_backend("web.2")) as p2,
            workers(2) as (router, _),
        ):
            b1, b2 = Backend("web.1", "127.0.0.1", p1), Backend("web.2", "127.0.0.1", p2)
            router.update(RouteTable({"sushi": AppRoute((b1, b2))}))
            for _ in range(4):  # until both workers have the table, whichever accepts
                await get_until_200(router.port)
            seen = [json.loads((await fetch(router.port))[1])["dyno"] for _ in range(8)]
            assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), seen

    run(main(), timeout=60)
