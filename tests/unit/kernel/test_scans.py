"""One /proc scan shared by many askers (dynod/kernel/scans.py), and a dyno's processes found
in it (dynod/kernel/inside.py). No root needed."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from dynod.kernel import processes, scans
from dynod.kernel.facts import Running
from dynod.kernel.inside import dyno_pids_in
from netns import namespace


def test_askers_at_the_same_time_share_one_scan_and_a_later_one_gets_a_new_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[int] = []
    release = threading.Event()

    def scan() -> namespace.Table:
        started.append(len(started))
        release.wait(5)
        return namespace.Table({len(started): [1]}, {})

    monkeypatch.setattr(scans.namespace, "scan", scan)

    async def test() -> None:
        shared = scans.SharedScans()
        first = [asyncio.ensure_future(shared.fresh()) for _ in range(50)]
        while not started:  # the first scan is running: askers from now on need a later one
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(shared.fresh()) for _ in range(50)]
        release.set()
        early, late = await asyncio.gather(*first), await asyncio.gather(*later)
        assert len(started) == 2
        assert all(t is early[0] for t in early) and all(t is late[0] for t in late)
        assert early[0] is not late[0] and late[0].net == {2: [1]}

    asyncio.run(test())


def test_a_scan_failure_reaches_every_asker_and_the_next_ask_scans_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def scan() -> namespace.Table:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no /proc")
        return namespace.Table({}, {})

    monkeypatch.setattr(scans.namespace, "scan", scan)

    async def test() -> None:
        shared = scans.SharedScans()
        got = await asyncio.gather(shared.fresh(), shared.fresh(), return_exceptions=True)
        assert [type(g) for g in got] == [OSError, OSError]
        assert (await shared.fresh()).net == {}

    asyncio.run(test())


def test_a_dyno_s_processes_come_from_the_table() -> None:
    """Our own process, alive with its start time, is found; with a stale start time (its
    PID reused) nothing is; a missing namespace name finds nothing by name."""
    me = os.getpid()
    start = processes.start_time(me)
    table = namespace.scan()
    assert me in table.net[os.stat("/proc/self/ns/net").st_ino]
    assert dyno_pids_in(Running("tstunit-no-such-namespace", me, start), table) == [me]
    assert dyno_pids_in(Running("tstunit-no-such-namespace", me, 1.0), table) == []
