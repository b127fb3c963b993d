"""A dyno's processes ending: its main process's exit seen through a pidfd (our own child's
reaped for its status, an adopted one's not), and a stop's SIGTERM, grace period and SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

from dynod.control.networks import running
from dynod.control.say import Say
from dynod.kernel.protocol import KernelSide
from dynod.state.store import Dyno
from netns import descriptors

KILL_WAIT = 5.0
# How long after a stop that found an attached one-off's init alone the daemon looks again for
# its command (forked since the scan: a fork and its exec of sh take about a millisecond)
COMMAND_FORK_WAIT = 0.02
EARLY_EXIT = 10.0  # a process dyno that ends this soon after its start, with 0, was likely misread


class Exits:
    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._futures: dict[int, asyncio.Future[int | None]] = {}

    def child(self, dyno_id: int, popen: subprocess.Popen[bytes]) -> None:
        self._children[dyno_id] = popen

    def watch(self, dyno: Dyno, on_exit: Callable[[int], None]) -> None:
        """pidfd_open gives a file that becomes readable when the process exits, for our own
        children and adopted processes alike: no polling, no SIGCHLD races."""
        assert dyno.pid is not None
        loop = asyncio.get_running_loop()
        self._futures[dyno.id] = loop.create_future()
        try:
            pidfd = descriptors.lifted(os.pidfd_open(dyno.pid))
        except ProcessLookupError:
            loop.call_soon(on_exit, dyno.id)
            return

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            on_exit(dyno.id)

        loop.add_reader(pidfd, exited)

    def reap(self, dyno_id: int) -> int | None:
        popen = self._children.pop(dyno_id, None)
        if popen is None:
            return None  # adopted: not our child, its status went to init
        status = popen.wait()
        return 128 - status if status < 0 else status  # a signal, as a shell reports it (143)

    def settle(self, dyno_id: int, status: int | None) -> None:
        """Whoever waits for the exit learns its status now."""
        future = self._futures.get(dyno_id)
        if future is not None and not future.done():
            future.set_result(status)

    def future(self, dyno_id: int) -> asyncio.Future[int | None] | None:
        return self._futures.get(dyno_id)

    async def wait(self, dyno_id: int) -> int | None:
        future = self._futures.get(dyno_id)
        return None if future is None else await asyncio.shield(future)

    def forget(self, dyno_id: int) -> None:
        self._futures.pop(dyno_id, None)


def early_exit_note(dyno: Dyno, status: int | None, now: float) -> str | None:
    """What to tell the user when a detached dyno's process ended with status 0 within its first
    seconds: a process dyno must keep running, so that is a crash, and the usual cause is a
    command line read differently than meant (`sh -c exec server` runs `exec` alone). Not for
    a dyno being stopped or restarted: a program that ends cleanly on SIGTERM exits 0."""
    if not dyno.detached or status != 0 or dyno.started_at is None or dyno.state == "stopping":
        return None
    seconds = now - dyno.started_at
    if seconds > EARLY_EXIT:
        return None
    return (
        f"The process ended with status 0 {seconds:.1f}s after its start: a process dyno must "
        f"keep running, so that is a crash. Its command was read as: /bin/sh -c {dyno.command!r}. "
        "Of several words after `--`, only those with a space or a '\"' are double-quoted; "
        "to pass a command line as is, give it as one word"
    )


async def terminate(kernel: KernelSide, exits: Exits, say: Say, dyno: Dyno, grace: float) -> None:
    """SIGTERM to every process of the dyno; R12 and SIGKILL for what outlives the grace. A
    dyno stopped while it is still starting gets its SIGTERM again once its first process
    handles it: the kernel drops the first one (its init has no handler yet), and its command,
    started just after, would otherwise run on until the SIGKILL."""
    deadline = time.monotonic() + grace
    # A detached dyno's init passes SIGTERM on to every process of its pid namespace (DYNO_INIT);
    # an attached one's cannot (its command runs in the foreground, and sh runs a trap only
    # once that has ended), so the daemon signals them all.
    via_init = dyno.detached
    unheard = await kernel.still_starting(running(dyno))
    sent = await kernel.signal_inside(running(dyno), signal.SIGTERM, via_init=via_init)
    if not sent:
        return
    say(dyno, "Stopping all processes with SIGTERM")
    if unheard or await kernel.still_starting(running(dyno)):
        # all but the first process heard it: none of them gets a second one
        heard = frozenset(sent) - {dyno.pid}
        sent = [*sent, *await term_once_heard(kernel, exits, dyno, deadline, heard, via_init)]
    if not via_init and set(sent) == {dyno.pid}:
        # An attached one-off's init alone was found: it runs its handler only once its
        # foreground command has ended, so a command forked since the scan is told here.
        await asyncio.sleep(COMMAND_FORK_WAIT)
        await kernel.signal_inside(running(dyno), signal.SIGTERM, skip=frozenset(sent))
    if await wait_empty(kernel, exits, dyno, max(0.0, deadline - time.monotonic())):
        return
    say(
        dyno,
        "Error R12 (Exit timeout) -> At least one process failed to exit within "
        f"{grace:g} seconds of SIGTERM",
    )
    say(dyno, "Stopping remaining processes with SIGKILL")
    await kernel.kill_inside(running(dyno))
    await wait_empty(kernel, exits, dyno, KILL_WAIT)


async def term_once_heard(
    kernel: KernelSide,
    exits: Exits,
    dyno: Dyno,
    deadline: float,
    heard: frozenset[int],
    via_init: bool,
) -> list[int]:
    """SIGTERM again to the first process of a dyno, which may have dropped the first one, and to
    every process started since (not in `heard`: the command, when it began meanwhile), once
    the first process handles SIGTERM (checked with a growing delay), unless it ended first or
    the grace ran out; those signalled."""
    delay = 0.002
    while await kernel.still_starting(running(dyno)):
        future = exits.future(dyno.id)
        if (future is not None and future.done()) or time.monotonic() >= deadline:
            return []
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.05)
    return await kernel.signal_inside(running(dyno), signal.SIGTERM, skip=heard, via_init=via_init)


async def wait_empty(kernel: KernelSide, exits: Exits, dyno: Dyno, timeout: float) -> bool:
    """Wait until no process is left in the dyno's namespace. The main process's exit is
    signalled at once (pidfd); what it leaves behind is looked for with a growing delay."""
    deadline = time.monotonic() + timeout
    future = exits.future(dyno.id)
    if future is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), timeout)
    delay = 0.002
    while True:
        if not await kernel.pids_inside(running(dyno)):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.05)
