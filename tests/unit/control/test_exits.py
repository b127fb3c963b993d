"""The note a detached dyno's early clean exit gets (dynod/control/exits.py)."""

from __future__ import annotations

from dynod.control.exits import EARLY_EXIT, early_exit_note
from dynod.state.store import Dyno


def dyno(detached: bool = True, started_at: float | None = 100.0) -> Dyno:
    return Dyno(
        id=1, app="sushi", type="web", number=1, state="up", slot=1, ip="10.0.0.6", port=5001,
        pid=None, pid_start=None, netns="ns", veth="veth", command="sh -c exec python3 server.py",
        cwd="/", uid=0, gid=0, detached=detached, started_at=started_at,
    )  # fmt: skip


def test_an_early_clean_exit_says_how_the_command_was_read() -> None:
    note = early_exit_note(dyno(), 0, 102.5)
    assert note is not None
    assert "status 0 2.5s after its start" in note
    assert "/bin/sh -c 'sh -c exec python3 server.py'" in note
    assert "give it as one word" in note


def test_no_note_for_a_failure_a_late_exit_a_foreground_dyno_or_an_adopted_one() -> None:
    assert early_exit_note(dyno(), 1, 101.0) is None
    assert early_exit_note(dyno(), None, 101.0) is None
    assert early_exit_note(dyno(), 0, 100.0 + EARLY_EXIT + 1) is None
    assert early_exit_note(dyno(detached=False), 0, 101.0) is None
    assert early_exit_note(dyno(started_at=None), 0, 101.0) is None
    # stopped or restarted: a program that ends cleanly on SIGTERM exits 0 (no shell between)
    stopped = dyno()
    stopped.state = "stopping"
    assert early_exit_note(stopped, 0, 101.0) is None
