"""A dyno's first process as the kernel shields it (dynod/kernel/inside.py): a real init of a
pid namespace of its own, started as the daemon starts one (netns/exec.py isolated())."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from dynod.kernel import processes, sandbox
from dynod.kernel.facts import Running
from dynod.kernel.inside import dyno_pids_in, signal_dyno_in, still_starting
from netns import exec as netns_exec
from netns import namespace
from tests.support import unique_prefix

pytestmark = pytest.mark.root

# No TERM handler until a line comes on stdin; then one, and a child to wait for.
INIT = 'read line; trap "exit 7" TERM; echo trapped; sleep 30 & wait'


def _started_as_init(argv: list[str], net: str = "", isolate: bool = True) -> subprocess.Popen[str]:
    """argv as the first process of a pid namespace of its own (in the network namespace net,
    if given; without isolate, in the host's pid namespace), started from a thread of its own,
    as the daemon's spawn thread starts a dyno: the thread that starts it works from / after."""
    born: list[subprocess.Popen[str]] = []
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}

    def start() -> None:
        if net:
            born.append(netns_exec.popen_inside(net, argv, isolate=isolate, **pipes))
            return
        with netns_exec.isolated():
            born.append(subprocess.Popen(argv, **pipes))  # type: ignore[call-overload]

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


# A dyno's processes: a child of its own user, one in a pid namespace nested in its own, and one
# of another user.
DYNO = (
    "sleep 30 & unshare --pid --fork sleep 30 &"
    " setpriv --reuid=65534 --regid=65534 --clear-groups sleep 30 & echo started; wait"
)


def test_a_signal_via_the_init_is_left_to_it_for_what_its_kill_reaches() -> None:
    """signal_dyno_in: with via_init, the processes the init's `kill -TERM -1` reaches (its
    user's, in its pid namespace or one nested in it) are left to it; another user's process
    is signalled by the daemon; without via_init, or for a dyno of a daemon before (its
    `unshare --pid --fork` recorded, outside the namespace it made), each one is."""
    assert "kill -TERM -1" in sandbox.DYNO_INIT
    net = f"{unique_prefix()}-ns"
    namespace.create(net)  # the nested one is found through it, as in a dyno
    try:
        _check_left_to_init(net, ["sh", "-c", DYNO], True)
        _check_left_to_init(net, ["unshare", "--pid", "--fork", "sh", "-c", DYNO], False)
    finally:
        namespace.delete(net)


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _all_sleep(pids: list[int]) -> bool:
    """Whether the three children are `sleep` already (exec'd, setpriv's switch done)."""
    names = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            return False
    return sorted(names).count("sleep") == 3


def _check_left_to_init(net: str, argv: list[str], as_init: bool) -> None:
    init = _started_as_init(argv, net, isolate=as_init)
    dyno = Running(net, init.pid, processes.start_time(init.pid))
    try:
        assert init.stdout is not None and init.stdout.readline() == "started\n"
        deadline = time.monotonic() + 10
        while True:  # until all have started, unshare's child and setpriv's switch too
            table = namespace.scan()
            everyone = sorted(dyno_pids_in(dyno, table))
            others = [p for p in everyone if _owner(p) not in (0, None)]
            wanted = 5 if as_init else 6  # an older dyno's `unshare` outside, too
            if len(everyone) == wanted and len(others) == 1 and _all_sleep(everyone):
                break
            assert time.monotonic() < deadline, everyone
            time.sleep(0.02)
        expected = [init.pid, *others] if as_init else everyone
        via = signal_dyno_in(dyno, table, signal.SIGCONT, via_init=True)
        assert sorted(via) == sorted(expected)
        assert sorted(signal_dyno_in(dyno, table, signal.SIGCONT)) == everyone
        rest = frozenset(everyone) - {init.pid}
        assert signal_dyno_in(dyno, table, signal.SIGCONT, skip=rest) == [init.pid]
    finally:
        # every process of it (an `unshare` outside dying leaves the namespace it made alive)
        signal_dyno_in(dyno, namespace.scan(), signal.SIGKILL)
        init.kill()
        init.wait()


# Counts the SIGTERMs it gets for 2 s, then says how many.
COUNTER = (
    "/usr/bin/python3 -c 'import signal, time\n"
    "got = []\n"
    "signal.signal(signal.SIGTERM, lambda *_: got.append(1))\n"
    'print("ready", flush=True)\n'
    "time.sleep(2)\n"
    'print("got", len(got), flush=True)\''
)


def test_the_init_passes_sigterm_on_once_however_often_it_hears_it() -> None:
    """DYNO_INIT as a dyno's init: a SIGTERM to it reaches the command, once, also when the init
    hears it twice (the daemon's second send to an init that heard the first after all)."""
    init = _started_as_init(["sh", "-c", sandbox.DYNO_INIT, COUNTER, "/"])
    try:
        assert init.stdin is not None and init.stdout is not None
        init.stdin.close()  # the environment: none
        assert init.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 5
        while still_starting(_running(init)):
            assert time.monotonic() < deadline, "the init never handled SIGTERM"
            time.sleep(0.01)
        os.kill(init.pid, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(init.pid, signal.SIGTERM)
        assert init.stdout.readline() == "got 1\n"
        # (it would then wait for every process of its /proc: the host's one here, not its own)
    finally:
        init.kill()
        init.wait()


def test_a_process_gone_since_the_scan_is_not_signalled() -> None:
    """A PID the scan listed whose process has exited since (its pidfd cannot be opened) is
    neither signalled nor an error."""
    init = _started_as_init(["sh", "-c", "echo started; sleep 30"])
    try:
        assert init.stdout is not None and init.stdout.readline() == "started\n"
        dyno = Running(f"dynod-none-{os.getpid()}", init.pid, processes.start_time(init.pid))
        ns = os.stat(f"/proc/{init.pid}/ns/pid").st_ino
        table = namespace.Table(net={}, pid={ns: [init.pid, _reaped_pid()]})
        assert signal_dyno_in(dyno, table, signal.SIGCONT) == [init.pid]
    finally:
        init.kill()
        init.wait()


def _reaped_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
