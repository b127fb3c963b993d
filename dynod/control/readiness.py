"""`ps:wait`: until every dyno of an app's formation (and every other detached process dyno of
the app) is up, web dynos listening on their PORT where the router reaches them; or until one
crashes, or the time is up. What a CI script runs between `dynod up --detach` and its tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dynod.kernel import processes
from dynod.logs.book import LogBook, about
from dynod.rules import names
from dynod.state.store import Dyno, Process, State

WAIT_POLL = 0.1  # seconds between looks at the dynos
LOG_LINES = 20  # of the failing dyno, shown with the failure
# Ready only once everything has stayed up this long: a process that exits right after it
# starts (a worker's typo) is a crash to report, not an app that is up.
SETTLE = 1.0


def pending(formation: list[Process], dynos: list[Dyno]) -> list[tuple[str, Dyno | None]]:
    """What is not ready yet, each with the dyno it is about (None: a dyno not made yet)."""
    waiting: list[tuple[str, Dyno | None]] = []
    for process in formation:
        have = sum(1 for d in dynos if d.formation and d.type == process.type)
        if have < process.quantity:
            waiting.append((f"{process.type}: {have} of {process.quantity} dynos exist", None))
    for dyno in dynos:
        if dyno.state != "up":
            waiting.append((f"{dyno.name} is {dyno.state}", dyno))
        elif dyno.type == names.WEB_TYPE and not listening(dyno):
            waiting.append((f"{dyno.name} does not listen on its PORT {dyno.port}", dyno))
    return waiting


def listening(dyno: Dyno) -> bool:
    """Checked again here rather than trusted from the boot watch: the process may have
    closed its socket since it went up."""
    if not dyno.pid or not dyno.port:
        return False
    return processes.reachable_on(processes.listening_addresses(dyno.pid, dyno.port), dyno.ip)


async def wait(state: State, log: LogBook, app: str, timeout: float) -> dict[str, Any]:
    """{"ready": true, "dynos": [...]}, or {"ready": false, "problem", "dyno", "log"}."""
    baseline = {d.id: d.restarts for d in state.dynos(app)}  # a higher count later: a crash
    deadline = time.monotonic() + timeout
    ready_since: float | None = None
    while True:
        if state.app(app) is None:
            return _failed(log, app, f"the app {app} was destroyed", None)
        dynos = [d for d in state.dynos(app) if d.detached]
        for dyno in dynos:
            if dyno.state == "crashed" or dyno.restarts > baseline.get(dyno.id, 0):
                return _failed(log, app, f"{dyno.name} crashed", dyno)
        waiting = pending(state.formation(app), dynos)
        now = time.monotonic()
        if waiting:
            ready_since = None
        elif ready_since is None:
            ready_since = now
        elif now - ready_since >= SETTLE:
            return {"ready": True, "dynos": [d.name for d in dynos]}
        if waiting and now >= deadline:
            problem, stuck = waiting[0]
            return _failed(log, app, f"not up after {timeout:g} s: {problem}", stuck)
        await asyncio.sleep(WAIT_POLL)


def _failed(log: LogBook, app: str, problem: str, dyno: Dyno | None) -> dict[str, Any]:
    name = dyno.name if dyno is not None else None
    return {
        "ready": False,
        "problem": problem,
        "dyno": name,
        "log": [str(line) for line in log.recent(about(app, name), LOG_LINES)],
    }
