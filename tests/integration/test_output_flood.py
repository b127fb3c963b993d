"""One dyno's output must not take the daemon down (issue 7 item 3): floods against a real daemon.

Every flood is bounded in time: a test stops its dynos (and the daemon) when it is done, and each
wait has a deadline, so a daemon that cannot cope fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

import psutil
import pytest

from dynod.api.client import Client
from dynod.logs import book as logs
from tests.support import SYSTEM_PATH, DaemonProc, running_daemon

pytestmark = pytest.mark.root

L10 = re.compile(
    r"heroku\[logplex\]: Error L10 \(output buffer overflow\): (\d+) messages"
    r"(?: and (\d+) unread bytes)? dropped since \S+\+00:00\.$"
)
FLOODS = {
    "worker": "yes",  # 2-byte lines: the most lines a second
    "clock": "yes 'a line of a log flood that is longer than yes writes by default'",
    "beat": "yes \"$(head -c 3000 /dev/zero | tr '\\0' x)\"",  # 3 kB lines: the most bytes
}


def status_latencies(d: DaemonProc, calls: int) -> list[float]:
    """Seconds GET /v1/status takes, `calls` times in a row (a call that times out fails)."""
    client = Client(d.socket, timeout=10)
    took = []
    for _ in range(calls):
        began = time.perf_counter()
        client.call("GET", "/v1/status")
        took.append(time.perf_counter() - began)
        time.sleep(0.02)
    return took


def allocated(path: Path) -> int:
    """Bytes of disk the file really uses (punched holes take none)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def app_lines(text: str, name: str) -> int:
    return sum(1 for line in text.splitlines() if f" app[{name}]: " in line)


def test_the_api_answers_while_three_dynos_flood_and_stopping_one_is_quick() -> None:
    with running_daemon() as d:
        daemon = psutil.Process(d.proc.pid if d.proc else 0)
        rss_before = daemon.memory_info().rss
        started = {}
        for ptype, command in FLOODS.items():
            dyno = d.run("flood", ptype, command)
            started[dyno["name"]] = Path(dyno["log_path"])
        flood_began = time.monotonic()
        time.sleep(1.0)  # a backlog builds up

        took = status_latencies(d, 40)
        median, p90 = statistics.median(took), statistics.quantiles(took, n=10)[-1]
        assert median < 0.1 and p90 < 0.1, f"median {median:.3f}s p90 {p90:.3f}s: {took}"

        # Disk: what each dyno's file really uses stays near the window, not the flood's size.
        biggest = max(allocated(path) for path in started.values())
        rss_during = daemon.memory_info().rss
        for _ in range(10):
            time.sleep(0.2)
            biggest = max(biggest, *(allocated(path) for path in started.values()))
            rss_during = max(rss_during, daemon.memory_info().rss)
        assert biggest < 512 << 20, f"a flooding dyno's output file uses {biggest >> 20} MiB"
        assert rss_during - rss_before < 150 << 20, (rss_before >> 20, rss_during >> 20)

        # Stopping a flooding dyno reads at most the window, not the backlog.
        began = time.monotonic()
        Client(d.socket, timeout=30).call("DELETE", "/v1/apps/flood/dynos/worker.1?grace=2")
        assert time.monotonic() - began < 5, time.monotonic() - began
        flooded_for = time.monotonic() - flood_began

        log = Path(d.state_dir, "dynod.log").read_text(errors="replace")
        for name in ("worker.1", "clock.1", "beat.1"):
            # lines a second: the burst, then the rate (with a margin for the clock)
            most = logs.LINE_BURST + logs.LINES_PER_SECOND * (flooded_for + 2)
            assert 0 < app_lines(log, name) <= most, (name, app_lines(log, name), most)
        reports = [L10.search(line) for line in log.splitlines() if "Error L10" in line]
        assert reports and all(reports), [line for line in log.splitlines() if "L10" in line][:3]
        assert any(m and m.group(2) for m in reports), "skipped bytes were never reported"
        assert sum(int(m.group(1)) for m in reports if m) > 10_000
        # the daemon's own log keeps to its rotation bound
        assert os.stat(Path(d.state_dir, "dynod.log")).st_size <= logs.LOG_MAX
        Client(d.socket, timeout=30).call("DELETE", "/v1/apps/flood/dynos?grace=2")


def test_a_foreground_flood_is_bounded_and_the_stream_says_what_it_skipped() -> None:
    with running_daemon() as d:
        body = {
            "type": "run",
            # 300 MB in a second or so, far more than the client below reads in that time
            "command": "yes | head -c 300000000; echo done",
            "cwd": str(d.app_dir),
            "env": {"PATH": SYSTEM_PATH},
            "detach": False,
        }
        client = Client(d.socket, timeout=30)
        deadline = time.monotonic() + 90
        lines = 0
        notices: list[dict[str, object]] = []
        status = None
        last = ""
        latencies: list[float] = []
        for raw in client.lines("/v1/apps/chatty/dynos", "POST", body):
            assert time.monotonic() < deadline, f"still streaming after 90 s ({lines} lines)"
            message = json.loads(raw)
            if "dropped" in message:
                notices.append(message)
            elif "lines" in message:
                batch = message["lines"]
                crossed = lines // 20_000 != (lines + len(batch)) // 20_000
                if batch and crossed and len(latencies) < 10:
                    latencies += status_latencies(d, 1)
                lines += len(batch)
                last = str(batch[-1]) if batch else last
            elif "exit" in message:
                status = message["exit"]
                break
        assert status == 0 and last == "done", (status, last)
        assert lines < 50_000_000  # 150 M lines were written
        assert notices, "the stream skipped bytes and did not say so"
        skipped = sum(int(str(n["skipped_bytes"])) for n in notices)
        assert skipped > 100_000_000, skipped
        assert all(
            str(n["line"]).startswith("Error L10 (output buffer overflow): ") for n in notices
        )
        if latencies:
            assert statistics.median(latencies) < 0.1, latencies


def test_a_backlog_left_while_the_daemon_was_down_is_skipped_not_read() -> None:
    """The issue's worst case: a dyno floods while the daemon is dead, and the new daemon finds
    a backlog of GBs. It must start, answer and stop the dyno as quickly as with no backlog."""
    with running_daemon() as d:
        dyno = d.run("flood", "worker", "yes")
        path = Path(dyno["log_path"])
        d.kill9()
        deadline = time.monotonic() + 20
        while os.stat(path).st_size < 1 << 30 and time.monotonic() < deadline:
            time.sleep(0.1)  # at least 1 GB unread (or 20 s of flooding, on a slow disk)
        backlog = os.stat(path).st_size
        began = time.monotonic()
        d.start(timeout=20)
        assert time.monotonic() - began < 10
        took = status_latencies(d, 20)
        assert statistics.median(took) < 0.1, took
        d.wait_for(
            lambda: "Error L10" in Path(d.state_dir, "dynod.log").read_text(errors="replace"),
            "the skipped backlog reported",
        )
        daemon = psutil.Process(d.proc.pid if d.proc else 0)
        assert daemon.memory_info().rss < 300 << 20, daemon.memory_info().rss
        began = time.monotonic()
        Client(d.socket, timeout=30).call("DELETE", "/v1/apps/flood/dynos/worker.1?grace=2")
        assert time.monotonic() - began < 5
        log = Path(d.state_dir, "dynod.log").read_text(errors="replace")
        skipped = sum(int(m.group(2) or 0) for m in map(L10.search, log.splitlines()) if m)
        assert skipped > backlog - (64 << 20), (skipped, backlog)
