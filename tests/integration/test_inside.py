"""A dyno's first process as the kernel shields it (dynod/kernel/inside.py): a real init of a
pid namespace of its own, started as the daemon starts one (netns/exec.py isolated())."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from dynod.kernel import processes
from dynod.kernel.facts import Running
from dynod.kernel.inside import dyno_pids_in, signal_dyno_in, still_starting
from netns import exec as netns_exec
from netns import namespace

pytestmark = pytest.mark.root

# No TERM handler until a line comes on stdin; then one, and a child to wait for.
INIT = 'read line; trap "exit 7" TERM; echo trapped; sleep 30 & wait'


def _started_as_init(argv: list[str]) -> subprocess.Popen[str]:
    born: list[subprocess.Popen[str]] = []

    def start() -> None:
        with netns_exec.isolated():
            born.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(10)
    return born[0]


def _running(process: subprocess.Popen[str]) -> Running:
    return Running("unused", process.pid, processes.start_time(process.pid))


def test_an_init_without_a_term_handler_is_still_starting_and_does_not_hear_sigterm() -> None:
    init = _started_as_init(["sh", "-c", INIT])
    try:
        assert still_starting(_running(init))
        os.kill(init.pid, signal.SIGTERM)  # dropped by the kernel: an init, no handler
        time.sleep(0.2)
        assert init.poll() is None and still_starting(_running(init))
        assert init.stdin is not None and init.stdout is not None
        init.stdin.write("go\n")
        init.stdin.flush()
        assert init.stdout.readline() == "trapped\n"
        assert not still_starting(_running(init))
        os.kill(init.pid, signal.SIGTERM)  # heard now
        assert init.wait(10) == 7
        assert not still_starting(_running(init))  # gone
    finally:
        init.kill()
        init.wait()


def test_a_process_that_is_no_init_is_never_still_starting() -> None:
    """A dyno recorded by an older daemon: its `unshare`, outside the namespace it made."""
    plain = subprocess.Popen(["sleep", "30"])
    try:
        assert not still_starting(_running(plain))  # no handler, but not an init
    finally:
        plain.kill()
        plain.wait()


def test_a_signal_via_the_init_is_sent_to_it_alone_and_otherwise_to_all() -> None:
    """signal_dyno_in: with via_init, the processes of the init's pid namespace are left to it
    (DYNO_INIT passes SIGTERM on with `kill -TERM -1`); without, each one is signalled."""
    init = _started_as_init(["sh", "-c", "sleep 30 & echo started; wait"])
    try:
        assert init.stdout is not None and init.stdout.readline() == "started\n"
        dyno = Running(f"dynod-none-{os.getpid()}", init.pid, processes.start_time(init.pid))
        table = namespace.scan()
        children = [p for p in dyno_pids_in(dyno, table) if p != init.pid]
        assert len(children) == 1  # the sleep
        assert signal_dyno_in(dyno, table, signal.SIGCONT, via_init=True) == [init.pid]
        everyone = signal_dyno_in(dyno, table, signal.SIGCONT)
        assert sorted(everyone) == sorted([init.pid, *children])
        skipped = signal_dyno_in(dyno, table, signal.SIGCONT, skip=frozenset(children))
        assert skipped == [init.pid]
    finally:
        init.kill()
        init.wait()
