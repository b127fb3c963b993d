"""A dyno's life after its row is in the state: network and process up, output read, exits seen,
crashes restarted, and stops done Heroku's way.

Every change to one dyno (start, restart, stop) runs under that dyno's lock, so a stop that
arrives while the dyno is still starting waits for the start to finish, then undoes all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Coroutine
from typing import Any

from dynod.config import Config
from dynod.control import launch
from dynod.dns.registry import Registry, dns_env
from dynod.errors import DynodError
from dynod.kernel import processes
from dynod.kernel.protocol import KernelSide
from dynod.logs.book import LogBook, OutputFile, OutputLimit, shared_puncher
from dynod.rules import names, sizes
from dynod.state.store import Dyno, State

POLL = 0.1
RESTART_CAP = 20 * 60.0  # Heroku's longest cool-off between crash restarts
KILL_WAIT = 5.0


def were_removed(removed: list[str]) -> str:
    """["veth x"] -> "veth x was removed"; two of them "... and ... were removed"."""
    return f"{' and '.join(removed)} {'was' if len(removed) == 1 else 'were'} removed"


def restart_delay(restarts: int) -> float:
    """Seconds before restarting a dyno that crashed after `restarts` restarts: at once the
    first time, as on Heroku, then 1, 2, 4... seconds, up to 20 minutes."""
    return 0.0 if restarts == 0 else min(RESTART_CAP, 2.0 ** (restarts - 1))


class Supervisor:
    def __init__(
        self,
        state: State,
        kernel: KernelSide,
        log: LogBook,
        config: Config,
        registry: Registry,
    ) -> None:
        self.state = state
        self.kernel = kernel
        self.registry = registry  # DNS names: registered before a process starts
        self.log = log
        self.config = config
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._outputs: dict[int, OutputFile] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._booting: set[int] = set()  # web dynos waiting to bind PORT
        self._warned: set[int] = set()  # ...told that they bound an unreachable address
        self._broken: set[int] = set()  # dynos whose network someone removed: being killed
        self._tasks: set[asyncio.Task[Any]] = set()
        # Kernel-side cost of recent setups and teardowns (network, firewall, state): what
        # bench/dyno_lifecycle.py compares with the bare pyroute2 floor.
        self.timings: dict[int, dict[str, float]] = {}
        self._oom_seen: dict[int, int] = {}  # per dyno: OOM kills in its cgroup already told
        self._began = time.time()

    # ---------------------------------------------------------------- bookkeeping
    def _lock(self, dyno_id: int) -> asyncio.Lock:
        return self._locks.setdefault(dyno_id, asyncio.Lock())

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the supervisor keeps (so it is not garbage-collected) and cancels at close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _say(self, dyno: Dyno, text: str) -> None:
        self.log.emit(dyno.app, f"heroku[{dyno.name}]", text)

    def _set_state(self, dyno: Dyno, new: str) -> None:
        old = dyno.state
        if old != new:
            self.state.update_dyno(dyno, state=new)
            self._say(dyno, f"State changed from {old} to {new}")

    def _record_timing(self, dyno: Dyno, what: str, began: float) -> None:
        self.timings.setdefault(dyno.id, {})[what] = 1000 * (time.perf_counter() - began)
        while len(self.timings) > 1000:  # only recent ones are asked for
            del self.timings[next(iter(self.timings))]

    def forget(self, dyno: Dyno) -> None:
        """Drop the dyno from the state (its /30 drains) and its output file from the disk."""
        self.registry.unregister(dyno)
        self.state.remove_dyno(dyno)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dyno.log_path)
        reader = self._outputs.pop(dyno.id, None)
        if reader is not None:
            reader.close()
        self._exits.pop(dyno.id, None)
        self._locks.pop(dyno.id, None)
        self._booting.discard(dyno.id)
        self._warned.discard(dyno.id)
        self._broken.discard(dyno.id)
        self._oom_seen.pop(dyno.id, None)

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------- starting
    async def launch(self, dyno: Dyno) -> None:
        """Network, firewall and process for a dyno whose row was just inserted. Shielded: a
        caller that goes away (or a shutdown) never leaves a start half done."""
        await asyncio.shield(self.background(self._launch(dyno)))

    async def _launch(self, dyno: Dyno) -> None:
        async with self._lock(dyno.id):
            began = time.perf_counter()
            try:
                await self._attach(dyno)
            except Exception as exc:
                self.forget(dyno)
                raise DynodError(
                    f"could not set up the network of {dyno.name}: {exc}", status=500
                ) from exc
            self._record_timing(dyno, "setup_ms", began)
            try:
                self.registry.register(dyno)
                await self._spawn(dyno)
            except Exception as exc:
                self.registry.unregister(dyno)
                await self.kernel.detach(dyno)
                self.forget(dyno)
                raise DynodError(f"could not start {dyno.name}: {exc}", status=500) from exc

    async def _attach(self, dyno: Dyno) -> None:
        await self.kernel.attach(dyno, self.state.dynos)

    async def _spawn(self, dyno: Dyno) -> None:
        self._say(dyno, f"Starting process with command `{dyno.command}`")
        app = self.state.app(dyno.app)
        # The environment and IPv6 follow the app's discovery setting as of this start.
        with_dns = bool(dyno.space and app is not None and app.dns_discovery)
        env = launch.process_env(dyno, dns_env(dyno) if with_dns else {})
        popen = await self.kernel.spawn(dyno, env, dyno.log_path, ipv6=not with_dns)
        self._children[dyno.id] = popen
        self.state.update_dyno(
            dyno, pid=popen.pid, pid_start=processes.start_time(popen.pid), started_at=time.time()
        )
        self._outputs.setdefault(dyno.id, self._reader(dyno))
        self._watch_exit(dyno)
        if dyno.type == names.WEB_TYPE:
            self._booting.add(dyno.id)
        else:
            self._set_state(dyno, "up")

    @staticmethod
    def _reader(dyno: Dyno) -> OutputFile:
        # A foreground dyno's output is also read by its `dynod run`, at the terminal's pace:
        # the last 2 windows stay on disk for it (each reader skips what the other punched).
        keep = 0 if dyno.detached else 2 * OutputFile.WINDOW
        return OutputFile(
            dyno.log_path, dyno.log_offset, keep=keep, limit=OutputLimit(), puncher=shared_puncher()
        )

    def adopt(self, dyno: Dyno) -> None:
        """A dyno found alive after a daemon restart: read its output and watch its exit."""
        self._outputs[dyno.id] = self._reader(dyno)
        self._watch_exit(dyno)
        if dyno.type == names.WEB_TYPE and dyno.state == "starting":
            self._booting.add(dyno.id)
        if dyno.state in ("starting", "up"):
            self.registry.register(dyno)
        self._say(dyno, f"Adopted again (pid {dyno.pid})")

    # ---------------------------------------------------------------- exits and crashes
    def _watch_exit(self, dyno: Dyno) -> None:
        """pidfd_open gives a file that becomes readable when the process exits, for our own
        children and adopted processes alike: no polling, no SIGCHLD races."""
        assert dyno.pid is not None
        loop = asyncio.get_running_loop()
        self._exits[dyno.id] = loop.create_future()
        try:
            pidfd = os.pidfd_open(dyno.pid)
        except ProcessLookupError:
            loop.call_soon(self._on_exit, dyno.id)
            return

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._on_exit(dyno.id)

        loop.add_reader(pidfd, exited)

    def _on_exit(self, dyno_id: int) -> None:
        status = self._reap(dyno_id)
        dyno = self.state.dyno(dyno_id)
        if dyno is not None:
            # The last output first: whoever waits for the exit has every line by then.
            self.drain_output(dyno, final=True)
            self._check_oom(dyno)  # an exit the kernel's OOM killer caused is an R15
            self._say(dyno, "Process exited" + ("" if status is None else f" with status {status}"))
        future = self._exits.get(dyno_id)
        if future is not None and not future.done():
            future.set_result(status)
        if dyno is not None and dyno.state != "stopping":
            self.background(self._after_exit(dyno_id))

    def _reap(self, dyno_id: int) -> int | None:
        popen = self._children.pop(dyno_id, None)
        if popen is None:
            return None  # adopted: not our child, its status went to init
        status = popen.wait()
        return 128 - status if status < 0 else status  # a signal, as a shell reports it (143)

    async def _after_exit(self, dyno_id: int) -> None:
        dyno = self.state.dyno(dyno_id)
        if dyno is None or dyno.state == "stopping":
            return
        if not dyno.detached:
            # `dynod run` in the foreground: the dyno ends with its process, like `heroku run`.
            await self.stop(dyno, 0)
            return
        async with self._lock(dyno_id):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state in ("stopping", "crashed"):
                return
            self._set_state(dyno, "crashed")
            self.registry.unregister(dyno)
            await self.kernel.kill_inside(dyno)
            self.schedule_restart(dyno)

    def schedule_restart(self, dyno: Dyno) -> None:
        """Restart a crashed dyno after a cool-off that doubles with each crash (at once the first
        time, as on Heroku, up to 20 minutes)."""
        if not self.config.restart_crashed:
            return
        delay = restart_delay(dyno.restarts)
        loop = asyncio.get_running_loop()
        self._timers[dyno.id] = loop.call_later(
            delay, lambda: self.background(self._restart(dyno.id))
        )

    async def _restart(self, dyno_id: int) -> None:
        self._timers.pop(dyno_id, None)
        async with self._lock(dyno_id):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state != "crashed":
                return
            old_web = self.kernel.web(dyno)
            self.state.update_dyno(
                dyno, restarts=dyno.restarts + 1, port=launch.choose_port() if dyno.port else None
            )
            self._set_state(dyno, "starting")
            try:
                new_web = self.kernel.web(dyno)
                if old_web and new_web:
                    await self.kernel.move_web(old_web, new_web)
                await self._repair_network(dyno)
                self.registry.register(dyno)
                await self._spawn(dyno)
            except Exception as exc:  # noqa: BLE001 - a failed restart is another crash
                self._say(dyno, f"Restart failed: {exc}")
                self.registry.unregister(dyno)
                self._set_state(dyno, "crashed")
                self.schedule_restart(dyno)

    # ---------------------------------------------------------------- stopping
    async def stop(self, dyno: Dyno, grace: float | None = None) -> None:
        """SIGTERM to every process of the dyno, SIGKILL after the grace period, then its
        namespace, links, address and firewall entries go."""
        timer = self._timers.pop(dyno.id, None)
        if timer is not None:
            timer.cancel()
        async with self._lock(dyno.id):
            current = self.state.dyno(dyno.id)
            if current is None:
                return  # stopped meanwhile
            await self._stop(current, self.config.grace if grace is None else grace)

    async def _stop(self, dyno: Dyno, grace: float) -> None:
        # Heroku's order: the state change first, then the signals and the exit.
        self._say(dyno, f"State changed from {dyno.state} to down")
        self.state.update_dyno(dyno, state="stopping")
        self.registry.unregister(dyno)  # no new connections are sent its way
        await self._terminate(dyno, grace)
        self.drain_output(dyno, final=True)
        began = time.perf_counter()
        await self.kernel.detach(dyno)
        self.forget(dyno)
        self._record_timing(dyno, "teardown_ms", began)

    async def _terminate(self, dyno: Dyno, grace: float) -> None:
        if not await self.kernel.signal_inside(dyno, signal.SIGTERM):
            return
        self._say(dyno, "Stopping all processes with SIGTERM")
        if await self._wait_empty(dyno, grace):
            return
        self._say(
            dyno,
            "Error R12 (Exit timeout) -> At least one process failed to exit within "
            f"{grace:g} seconds of SIGTERM",
        )
        self._say(dyno, "Stopping remaining processes with SIGKILL")
        await self.kernel.kill_inside(dyno)
        await self._wait_empty(dyno, KILL_WAIT)

    async def _wait_empty(self, dyno: Dyno, timeout: float) -> bool:
        """Wait until no process is left in the dyno's namespace. The main process's exit is
        signalled at once (pidfd); what it leaves behind is looked for with a growing delay."""
        deadline = time.monotonic() + timeout
        future = self._exits.get(dyno.id)
        if future is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout)
        delay = 0.002
        while True:
            if not await self.kernel.pids_inside(dyno):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.05)

    async def wait_exit(self, dyno: Dyno) -> int | None:
        future = self._exits.get(dyno.id)
        return None if future is None else await asyncio.shield(future)

    # ---------------------------------------------------------------- output and boot
    def start_loops(self) -> None:
        self.background(self._forever(self._read_all_output))
        self.background(self._forever(self._check_boots))
        self.background(self._watch_health())
        self.background(self._sample_memory_forever())

    async def _forever(self, step: Any) -> None:
        """Run step every POLL seconds; one failure is logged, never the end of the loop."""
        while True:
            await asyncio.sleep(POLL)
            try:
                await step()
            except Exception as exc:  # noqa: BLE001
                self.log.emit(None, "dynod", f"error in {step.__name__}: {exc!r}")

    async def _read_all_output(self) -> None:
        # A stat per dyno; the state is read only for dynos that wrote something. Each reader
        # reads at most READ_BUDGET bytes and hands over at most its rate limit of lines, so a
        # flooding dyno costs one bounded slice of a poll, and the others still get theirs.
        for dyno_id, reader in list(self._outputs.items()):
            if self._outputs.get(dyno_id) is not reader:
                continue  # forgotten while an earlier dyno's lines were handed over
            offset = reader.offset
            lines = reader.read_lines()
            report = reader.overflow()
            dyno = self.state.dyno(dyno_id) if reader.offset != offset or report else None
            if dyno is None:
                continue
            self._emit_output(dyno, lines, report)
            self.state.update_dyno(dyno, log_offset=reader.offset)
            await asyncio.sleep(0)  # the API and the router between two dynos' output

    def drain_output(self, dyno: Dyno, final: bool = False) -> None:
        """The output not read yet: bounded like a poll (flush reads at most the window)."""
        reader = self._outputs.get(dyno.id)
        if reader is None:
            return
        lines = reader.flush() if final else reader.read_lines()
        self._emit_output(dyno, lines, reader.overflow(final=final))
        if reader.offset != dyno.log_offset and self.state.dyno(dyno.id) is not None:
            self.state.update_dyno(dyno, log_offset=reader.offset)

    def _emit_output(self, dyno: Dyno, lines: list[str], report: str | None) -> None:
        for line in lines:
            self.log.emit(dyno.app, f"app[{dyno.name}]", line)
        if report:
            # Logplex's source for L10 is itself: heroku[logplex], for the dyno's app.
            self.log.emit(dyno.app, "heroku[logplex]", report)

    # ---------------------------------------------------------------- memory (dyno sizes)
    async def _sample_memory_forever(self) -> None:
        """Every metrics_interval seconds, each sized dyno's memory against its quota."""
        while True:
            await asyncio.sleep(self.config.metrics_interval)
            try:
                await self._sample_memory()
            except Exception as exc:  # noqa: BLE001 - one failure is not the end of sampling
                self.log.emit(None, "dynod", f"error sampling dyno memory: {exc!r}")

    async def _sample_memory(self) -> None:
        """Heroku's behaviour: over the quota, `Process running mem=...` and R14 at every
        sample; at the hard limit the kernel OOM-kills inside the dyno's cgroup, and that is
        R15: the whole dyno is killed and, like any crash, restarted."""
        for dyno in self.state.dynos():
            if not dyno.size or dyno.state not in ("starting", "up"):
                continue
            if self._check_oom(dyno):
                await self.kernel.kill_inside(dyno)
                continue
            usage = self.kernel.cgroup_usage(dyno)
            size = sizes.SIZES[dyno.size]
            if usage is not None and usage.memory > size.quota_mb * sizes.MB:
                self._say(dyno, sizes.running_line(size, usage.memory))
                self._say(dyno, sizes.R14)

    def _check_oom(self, dyno: Dyno) -> bool:
        """Log R15 if the kernel OOM-killed in the dyno's cgroup since we last looked. A dyno
        adopted from an earlier daemon starts from the count it has: those were told then."""
        usage = self.kernel.cgroup_usage(dyno)
        if usage is None:
            return False
        made_here = dyno.created_at >= self._began  # so was its cgroup: it counts from 0
        seen = self._oom_seen.setdefault(dyno.id, 0 if made_here else usage.oom_kills)
        self._oom_seen[dyno.id] = usage.oom_kills
        if usage.oom_kills <= seen:
            return False
        size = sizes.SIZES[dyno.size]
        # The kernel kills at the group's limit, so that is what it held then (what is left
        # now, after the kill, says nothing).
        self._say(dyno, sizes.running_line(size, max(usage.memory, size.hard_mb * sizes.MB)))
        self._say(dyno, sizes.R15)
        self._say(dyno, sizes.KILLED)
        return True

    async def _check_boots(self) -> None:
        """Web dynos are up once something listens on PORT; R10 if not within boot_timeout."""
        now = time.time()
        for dyno_id in list(self._booting):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state != "starting" or not dyno.pid:
                self._booting.discard(dyno_id)
                continue
            bound = processes.listening_addresses(dyno.pid, dyno.port or 0)
            if processes.reachable_on(bound, dyno.ip):
                self._booting.discard(dyno_id)
                self._set_state(dyno, "up")
            elif bound and dyno_id not in self._warned:
                self._warned.add(dyno_id)
                self._say(
                    dyno,
                    f"Web process listens on {', '.join(sorted(bound))}:{dyno.port}, which the "
                    "router cannot reach: bind 0.0.0.0 (or $HEROKU_PRIVATE_IP)",
                )
            elif dyno.started_at and now - dyno.started_at > self.config.boot_timeout:
                self._booting.discard(dyno_id)
                self._say(
                    dyno,
                    "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within "
                    f"{self.config.boot_timeout:g} seconds of launch",
                )
                self._say(dyno, "Stopping process with SIGKILL")
                await self.kernel.kill_inside(dyno)

    # ---------------------------------------------------------------- health
    async def _watch_health(self) -> None:
        """Every health_interval seconds, check that no dyno's network was removed under it."""
        while True:
            await asyncio.sleep(self.config.health_interval)
            try:
                await self._check_health()
            except Exception as exc:  # noqa: BLE001 - keep watching
                self.log.emit(None, "dynod", f"error in the health check: {exc!r}")

    async def _check_health(self) -> None:
        """A stat of /run/netns/NAME and /sys/class/net/VETH per running dyno. A dyno being
        started, restarted or stopped (its lock is held) is skipped: its objects come and go."""
        for dyno in self.state.dynos():
            if dyno.state not in ("starting", "up") or not dyno.pid or dyno.id in self._broken:
                continue
            if self._lock(dyno.id).locked() or not self.kernel.removed_objects(dyno):
                continue
            await self._on_network_removed(dyno.id)

    async def _on_network_removed(self, dyno_id: int) -> None:
        """Someone deleted the dyno's veth or its namespace's name (`ip link del`, `ip netns
        delete`): it can no longer be reached, or no longer be found by name. Treat it as a
        crash: kill every process (found by its pid namespace, not by the name), then the exit
        is handled as any other: a detached dyno is restarted with the usual backoff on a
        rebuilt network (_repair_network), a foreground one ends."""
        async with self._lock(dyno_id):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state not in ("starting", "up"):
                return
            removed = self.kernel.removed_objects(dyno)
            if not removed:
                return
            self._broken.add(dyno_id)
            self._say(
                dyno,
                f"Error: the dyno's {were_removed(removed)} by someone else; "
                "stopping all processes with SIGKILL",
            )
            await self.kernel.kill_inside(dyno)

    async def _repair_network(self, dyno: Dyno) -> None:
        """Before a restart: a network with a removed part is rebuilt whole."""
        self._broken.discard(dyno.id)
        removed = self.kernel.removed_objects(dyno)
        if removed:
            self._say(dyno, f"Rebuilding its network ({' and '.join(removed)} gone)")
            await self.kernel.rebuild(dyno)
