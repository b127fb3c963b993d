"""cli/formation.py: `dynod ps` the way `heroku ps` prints it (sizes, times, one block per
type of the formation, then the dynos outside it)."""

from __future__ import annotations

import calendar
from typing import Any

from dynod.cli.formation import render, since, size_label


def test_size_labels() -> None:
    assert size_label("standard-1x") == "Standard-1X"
    assert size_label("performance-l-ram") == "Performance-L-RAM"
    assert size_label("eco") == "Eco"
    assert size_label("") == "no size"


def test_since() -> None:
    stamp = float(calendar.timegm((2026, 11, 25, 21, 0, 0)))
    assert since(stamp, stamp + 5) == "2026/11/25 21:00:00 +0000 (~ 5s ago)"
    assert since(stamp, stamp + 190) == "2026/11/25 21:00:00 +0000 (~ 3m ago)"
    assert since(stamp, stamp + 7300) == "2026/11/25 21:00:00 +0000 (~ 2h ago)"
    assert since(stamp, stamp + 3 * 86400) == "2026/11/25 21:00:00 +0000 (~ 3d ago)"
    assert since(None) == "-"


def dyno(name: str, formation: bool, **more: Any) -> dict[str, Any]:
    ptype = name.split(".")[0]
    return {
        "name": name,
        "type": ptype,
        "state": "up",
        "formation": formation,
        "started_at": None,
        "ip": "172.16.0.6",
        "port": 4000 if ptype == "web" else None,
        "pid": 42,
        "size": "standard-1x",
        "command": "sleep 1000",
        "memory_mb": None,
    } | more


def test_render_groups_the_formation_then_the_rest() -> None:
    processes = [
        {"type": "web", "command": "python3 server.py", "quantity": 2, "size": "standard-1x"},
        {"type": "clock", "command": "sleep 1", "quantity": 0, "size": "standard-1x"},
    ]
    dynos = [dyno("web.1", True), dyno("web.2", True), dyno("web.3", False), dyno("run.1", False)]
    lines = render("", processes, dynos)
    assert lines[0] == "=== web (Standard-1X): python3 server.py (2)"
    assert lines[1].startswith("web.1: up -  172.16.0.6:4000  pid 42  mem -")
    assert lines[2].startswith("web.2: up")
    assert "=== run: one-off processes (1)" in lines
    assert "=== web: outside the formation (1)" in lines
    assert any(line.startswith("web.3 (Standard-1X): up -: sleep 1000") for line in lines)
    assert not any("clock" in line for line in lines)  # scaled to 0, no dyno: not shown
    assert render("sushi: ", processes, [])[0].startswith("=== sushi: web (Standard-1X)")
