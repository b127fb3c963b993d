"""A dyno's life after its row is in the state: network and process up, output read, exits seen,
crashes restarted, and stops done Heroku's way.

Every change to one dyno (start, restart, stop) runs under that dyno's lock, so a stop that
arrives while the dyno is still starting waits for the start to finish, then undoes all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dynod.config import Config
from dynod.control import launch
from dynod.control.boot import BootWatch
from dynod.control.exits import Exits, early_exit_note, terminate
from dynod.control.health import HealthWatch
from dynod.control.memory import MemoryWatch
from dynod.control.networks import Networks, group, running
from dynod.control.output import Outputs
from dynod.control.refusals import network_refused
from dynod.dns.registry import Registry, dns_env
from dynod.errors import DynodError
from dynod.kernel import processes
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.protocol import KernelSide, SpawnFailed
from dynod.kernel.sandbox import Launch
from dynod.kernel.stdio import DynoEnds
from dynod.logs.book import LogBook
from dynod.rules import names, sizes
from dynod.state.store import Dyno, State

POLL = 0.1
RESTART_CAP = 20 * 60.0  # Heroku's longest cool-off between crash restarts


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
        on_change: Callable[[Dyno], None] = lambda dyno: None,
    ) -> None:
        self.state = state
        # told of each state change and each dyno forgotten: the route table is pushed anew
        self.on_change = on_change
        self.kernel = kernel
        self.registry = registry  # DNS names: registered before a process starts
        self.log = log
        self.config = config
        self.outputs = Outputs(state, log)
        self.networks = Networks(state, kernel)  # each dyno's facts, computed once
        self.memory = MemoryWatch(state, kernel, self.say, config.metrics_interval)
        self.health = HealthWatch(
            state,
            kernel,
            self.networks,
            self.say,
            self._lock,
            self._locked,
            lambda: self.last_change,
        )
        self.boot = BootWatch(state, kernel, config, self.say, self._set_state)
        self.exits = Exits()  # each dyno's main process, and its exit
        self._locks: dict[int, asyncio.Lock] = {}
        # time.monotonic() at which the latest start or stop began (the health check's
        # backstop waits for a quiet moment)
        self.last_change = float("-inf")
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # Dynos "stopping" only while their process is replaced (restart): they stay.
        self.restarting: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Kernel-side cost of recent setups and teardowns (network, firewall, state): what
        # bench/dyno_lifecycle.py compares with the bare pyroute2 floor.
        self.timings: dict[int, dict[str, float]] = {}
        # An attached one-off's standard streams (the dyno's ends), handed to its one spawn.
        self.stdio: dict[int, DynoEnds] = {}

    # ---------------------------------------------------------------- bookkeeping
    def _lock(self, dyno_id: int) -> asyncio.Lock:
        return self._locks.setdefault(dyno_id, asyncio.Lock())

    def _locked(self, dyno_id: int) -> bool:
        """Is the dyno's lock held (without making one: a forgotten dyno has none)?"""
        held = self._locks.get(dyno_id)
        return held is not None and held.locked()

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the supervisor keeps (so it is not garbage-collected) and cancels at close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def say(self, dyno: Dyno, text: str) -> None:
        self.log.emit(dyno.app, f"heroku[{dyno.name}]", text)

    def _set_state(self, dyno: Dyno, new: str) -> None:
        old = dyno.state
        if old != new:
            self.state.update_dyno(dyno, state=new)
            self.on_change(dyno)
            self.say(dyno, f"State changed from {old} to {new}")

    def _record_timing(self, dyno: Dyno, what: str, began: float) -> None:
        self.timings.setdefault(dyno.id, {})[what] = 1000 * (time.perf_counter() - began)
        self._trim_timings()

    def _trim_timings(self) -> None:
        while len(self.timings) > 1000:  # only recent ones are asked for
            del self.timings[next(iter(self.timings))]

    def forget(self, dyno: Dyno) -> None:
        """Drop the dyno from the state (its /30 drains) and its output file from the disk."""
        self.registry.unregister(dyno)
        self.state.remove_dyno(dyno)
        self.on_change(dyno)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dyno.log_path)
        self.outputs.close(dyno.id)
        self.exits.forget(dyno.id)
        self._locks.pop(dyno.id, None)
        self.boot.forget(dyno.id)
        self.health.forget(dyno.id)
        self.memory.forget(dyno.id)
        self.networks.forget(dyno.id)
        ends = self.stdio.pop(dyno.id, None)
        if ends is not None:
            ends.close()

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.outputs.shutdown()
        self.health.close()

    # ---------------------------------------------------------------- starting
    async def launch(self, dyno: Dyno, network: DynoNetwork) -> None:
        """Network, firewall and process for a dyno whose row was just inserted, on the
        network computed at its allocation. Shielded: a caller that goes away (or a shutdown)
        never leaves a start half done."""
        self.last_change = time.monotonic()
        self.networks.keep(dyno.id, network)
        await asyncio.shield(self.background(self._launch(dyno)))

    async def _launch(self, dyno: Dyno) -> None:
        """A first start: the network and the process in one job of the kernel thread
        (KernelSide.launch); its names are in DNS before the process starts."""
        async with self._lock(dyno.id):
            began = time.perf_counter()
            ends = self.stdio.pop(dyno.id, None)
            try:  # before anything is made: a refusal here leaves nothing behind
                how, env = self._process(dyno)
                self.registry.register(dyno)  # names in DNS: nothing made when it refuses
            except Exception as exc:
                if ends is not None:
                    ends.close()
                self.forget(dyno)
                if isinstance(exc, DynodError):
                    raise
                raise DynodError(f"could not start {dyno.name}: {exc}", status=500) from exc
            network = self.networks.of(dyno)
            try:
                launched = await self.kernel.launch(
                    network, self.networks.live, how, env, dyno.log_path, ends
                )
            except SpawnFailed as exc:
                cause = exc.__cause__ or exc
                self.registry.unregister(dyno)
                await self.teardown(dyno)
                self.forget(dyno)
                raise DynodError(f"could not start {dyno.name}: {cause}", status=500) from exc
            except Exception as exc:
                self.registry.unregister(dyno)
                self.forget(dyno)
                raise network_refused(dyno.name, exc) from exc
            finally:
                if ends is not None:
                    ends.close()  # the dyno has its copies: the daemon's end sees EOF at exit
            self.timings.setdefault(dyno.id, {})["setup_ms"] = 1000 * (launched.attached_at - began)
            self._trim_timings()
            self._started(dyno, launched.popen, attached=ends is not None)

    async def teardown(self, dyno: Dyno) -> None:
        """Its network goes, and its cgroup if it is sized: one job of the kernel thread."""
        await self.kernel.teardown(self.networks.of(dyno), group(dyno))

    def _process(self, dyno: Dyno) -> tuple[Launch, dict[str, str]]:
        """How the dyno's process is started, and its environment, as of this start."""
        app = self.state.app(dyno.app)
        # The environment and IPv6 follow the app's discovery setting as of this start.
        with_dns = bool(dyno.space and app is not None and app.dns_discovery)
        config = self.state.config_vars(dyno.app)
        env = launch.process_env(dyno, config, dns_env(dyno) if with_dns else {})
        how = Launch(
            name=dyno.name,
            network=self.networks.of(dyno),
            command=dyno.command,
            cwd=dyno.cwd,
            uid=dyno.uid,
            gid=dyno.gid,
            size=sizes.SIZES[dyno.size] if dyno.size else None,
            ipv6=not with_dns,
        )
        return how, env

    async def _spawn(self, dyno: Dyno) -> None:
        """A new process on the dyno's network (a restart)."""
        how, env = self._process(dyno)
        ends = self.stdio.pop(dyno.id, None)
        try:
            popen = await self.kernel.spawn(how, env, dyno.log_path, ends)
        finally:
            if ends is not None:
                ends.close()  # the dyno has its copies: the daemon's end sees EOF when it exits
        self._started(dyno, popen, attached=ends is not None)

    def _started(self, dyno: Dyno, popen: subprocess.Popen[bytes], attached: bool) -> None:
        """Its process is running: watch it, read its output, and say it is up (a web dyno
        once it listens: boot.py)."""
        self.say(dyno, f"Starting process with command `{dyno.command}`")
        self.exits.child(dyno.id, popen)
        self.state.update_dyno(
            dyno, pid=popen.pid, pid_start=processes.start_time(popen.pid), started_at=time.time()
        )
        if not attached:
            self.outputs.open(dyno)  # an attached one-off's output goes to its client only
        self.exits.watch(dyno, self._on_exit)
        if dyno.type == names.WEB_TYPE:
            self.boot.add(dyno.id)
        else:
            self._set_state(dyno, "up")

    def adopt(self, dyno: Dyno) -> None:
        """A dyno found alive after a daemon restart: read its output and watch its exit."""
        self.outputs.reopen(dyno)
        self.exits.watch(dyno, self._on_exit)
        self.networks.of(dyno)  # its facts, computed once from its row
        if dyno.type == names.WEB_TYPE and dyno.state == "starting":
            self.boot.add(dyno.id)
        if dyno.state in ("starting", "up"):
            self.registry.register(dyno)
        self.say(dyno, f"Adopted again (pid {dyno.pid})")

    # ---------------------------------------------------------------- exits and crashes
    def _on_exit(self, dyno_id: int) -> None:
        status = self.exits.reap(dyno_id)
        dyno = self.state.dyno(dyno_id)
        if dyno is not None:
            # The last output first: whoever waits for the exit has every line by then.
            self.outputs.drain(dyno, final=True)
            # an exit the kernel's OOM killer caused is an R15
            self.memory.check_oom(dyno, self.memory.usage(dyno))
            self.say(dyno, "Process exited" + ("" if status is None else f" with status {status}"))
            note = early_exit_note(dyno, status, time.time())
            if note is not None:
                self.say(dyno, note)
        self.exits.settle(dyno_id, status)
        if dyno is not None and dyno.state != "stopping":
            self.background(self._after_exit(dyno_id))

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
            await self.kernel.kill_inside(running(dyno))
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
        self.last_change = time.monotonic()
        async with self._lock(dyno_id):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state != "crashed":
                return
            self.state.update_dyno(dyno, restarts=dyno.restarts + 1)
            self._set_state(dyno, "starting")
            await self._respawn(dyno)

    async def _respawn(self, dyno: Dyno) -> None:
        """A new process on the dyno's network, with a new PORT (as on Heroku); a failure is
        another crash. Under the dyno's lock, its old process gone."""
        old = self.networks.of(dyno)
        self.state.update_dyno(dyno, port=launch.choose_port() if dyno.port else None)
        try:
            new = old.on_port(dyno.port)  # a new PORT: new facts, the same network
            if old.web and new.web:
                await self.kernel.move_web(old.web, new.web)
            self.networks.keep(dyno.id, new)
            await self.health.repair(dyno)
            self.registry.register(dyno)
            await self._spawn(dyno)
        except Exception as exc:  # noqa: BLE001 - a failed restart is another crash
            self.say(dyno, f"Restart failed: {exc}")
            self.registry.unregister(dyno)
            self._set_state(dyno, "crashed")
            self.schedule_restart(dyno)

    async def restart(
        self, dyno: Dyno, grace: float | None = None, *, crashed: bool = False
    ) -> bool:
        """Heroku's restart of a running dyno (a config change, `ps:restart`): SIGTERM, the
        grace period, then a new process with the environment of now, in the same namespace,
        with the same address and name. `crashed`: a crashed one waiting for its backoff starts
        now too (`ps:restart`). False if it was not restarted (stopping, gone)."""
        self.last_change = time.monotonic()
        async with self._lock(dyno.id):
            current = self.state.dyno(dyno.id)
            if crashed and current is not None and current.state == "crashed":
                timer = self._timers.pop(current.id, None)
                if timer is not None:
                    timer.cancel()
                self.say(current, "Restarting")
                self._set_state(current, "starting")
                await self._respawn(current)
                return True
            if current is None or current.state not in ("starting", "up"):
                return False
            self.say(current, "Restarting")
            self.say(current, f"State changed from {current.state} to starting")
            # "stopping" while the old process ends: its exit is no crash, no route points at it
            self.restarting.add(current.id)
            try:  # the mark goes whatever happens: convergence would count this dyno forever
                self.state.update_dyno(current, state="stopping")
                self.on_change(current)
                self.registry.unregister(current)
                try:
                    await terminate(self.kernel, self.exits, self.say, current, self._grace(grace))
                except Exception as exc:  # noqa: BLE001 - left "stopping", nothing picks it up
                    self.say(current, f"Restart failed: {exc}")
                    self._set_state(current, "crashed")
                    self.schedule_restart(current)
                    return True
                self.outputs.drain(current, final=True)
                self.state.update_dyno(current, state="starting")
            finally:
                self.restarting.discard(current.id)
            self.on_change(current)
            await self._respawn(current)
            return True

    def _grace(self, grace: float | None) -> float:
        return self.config.grace if grace is None else grace

    # ---------------------------------------------------------------- stopping
    async def stop(self, dyno: Dyno, grace: float | None = None) -> None:
        """SIGTERM to every process of the dyno, SIGKILL after the grace period, then its
        namespace, links, address and firewall entries go."""
        self.last_change = time.monotonic()
        timer = self._timers.pop(dyno.id, None)
        if timer is not None:
            timer.cancel()
        async with self._lock(dyno.id):
            current = self.state.dyno(dyno.id)
            if current is None:
                return  # stopped meanwhile
            await self._stop(current, self._grace(grace))

    async def _stop(self, dyno: Dyno, grace: float) -> None:
        # Heroku's order: the state change first, then the signals and the exit.
        self.say(dyno, f"State changed from {dyno.state} to down")
        self.state.update_dyno(dyno, state="stopping")
        self.on_change(dyno)  # out of the router's rotation before the signals
        self.registry.unregister(dyno)  # no new connections are sent its way
        await terminate(self.kernel, self.exits, self.say, dyno, grace)
        self.outputs.drain(dyno, final=True)
        began = time.perf_counter()
        await self.teardown(dyno)
        self.forget(dyno)
        self._record_timing(dyno, "teardown_ms", began)

    async def wait_exit(self, dyno: Dyno) -> int | None:
        return await self.exits.wait(dyno.id)

    # ---------------------------------------------------------------- output and boot
    def start_loops(self) -> None:
        self.health.watch()
        self.background(self._every(POLL, self.outputs.read_all, "reading output"))
        self.background(self._every(POLL, self.boot.check, "the boot check"))
        self.background(
            self._every(self.config.health_interval, self.health.check, "the health check")
        )
        self.background(self._every(self.memory.tick, self.memory.sample, "sampling dyno memory"))

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run step every interval seconds; one failure is logged, never the end of the loop."""
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception as exc:  # noqa: BLE001
                self.log.emit(None, "dynod", f"error in {what}: {exc!r}")
