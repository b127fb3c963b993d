"""The root daemon: owns every kernel object, the state, the router and the API.

Start-up order matters: take the lock, open the state, reconcile the kernel with it (adopt live
dynos, clean dead ones and anything the state does not know), re-apply the firewall, and only
then listen. Shutdown (SIGTERM, SIGINT) stops every dyno and removes everything dynod made.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from dynod import names, processes
from dynod.config import Config
from dynod.errors import DynodError, NotFound
from dynod.kernel import CommonRuntimeKernel
from dynod.logs import LogBook, OutputFile
from dynod.router import Backend, Router
from dynod.state import Dyno, State
from netns import namespace

POLL = 0.1
PORT_RANGE = (3000, 60999)
RESTART_CAP = 20 * 60.0


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.kernel = CommonRuntimeKernel(config.prefix, config.cidr)
        self.names = self.kernel.names
        self.pool = self.kernel.pool
        self.state: State | None = None
        self.log: LogBook | None = None
        self._lock_fd: int | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._outputs: dict[int, OutputFile] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._stopping: dict[int, asyncio.Task[None]] = {}
        self._restarts: dict[int, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Kernel-side cost of the last setups and teardowns (network, firewall, state): what
        # bench/dyno_lifecycle.py compares with the bare pyroute2 floor.
        self.timings: dict[int, dict[str, float]] = {}
        self._stop_event = asyncio.Event()
        self.router: Router | None = None
        self.api: Any = None

    # ---------------------------------------------------------------- start and stop
    async def serve(self) -> None:
        # Handlers first: a SIGTERM during start-up still ends in shutdown(), which removes
        # whatever start-up had made by then.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_event.set)
        try:
            await self.start()
        except BaseException:
            await self.shutdown(stop_dynos=False)
            raise
        try:
            await self._stop_event.wait()
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        self._stop_event.set()

    async def start(self) -> None:
        self._preflight()
        os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(self._output_dir, mode=0o700, exist_ok=True)
        self._take_lock()
        self._check_socket_free()
        self.state = State(self.config.state_dir)
        self.log = LogBook(
            os.path.join(self.config.state_dir, "dynod.log"),
            echo=sys.stderr if self.config.echo_logs else None,
        )
        for warning in await self.kernel.prepare_host():
            self.log.emit(None, "dynod", f"warning: {warning}")
        await self._reconcile()
        await self.kernel.apply_firewall(self.state.dynos())
        from dynod.api import ApiServer

        self.router = Router(
            self._resolve,
            lambda text: self.log.emit(None, "heroku[router]", text),
            socket_mark=self.kernel.layout.router_mark,
        )
        await self.router.start(self.config.router_host, self.config.router_port)
        self.api = ApiServer(self)
        await self.api.start(self.config.socket, self._socket_group())
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._pump_output()))
        self._tasks.append(loop.create_task(self._watch_boot()))
        self.log.emit(
            None,
            "dynod",
            f"daemon ready: api {self.config.socket}, router "
            f"{self.config.router_host}:{self.router.port}, range {self.pool.network}, "
            f"bridge {self.names.bridge}",
        )

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise DynodError(
                "dynod daemon must run as root: it creates namespaces, links and nftables tables",
                "start it with `sudo dynod daemon`",
            )
        if shutil.which("setpriv") is None:
            raise DynodError(
                "setpriv is missing (dynos use it to drop privileges)",
                "install util-linux: apt-get install util-linux",
            )

    @property
    def _output_dir(self) -> str:
        return os.path.join(self.config.state_dir, "output")

    def _take_lock(self) -> None:
        path = os.path.join(self.config.state_dir, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode().strip() or "?"
            os.close(fd)
            raise DynodError(
                f"another dynod daemon (pid {owner}) already uses {self.config.state_dir}",
                "stop it first, or give this one its own --state-dir, --socket and --prefix",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _check_socket_free(self) -> None:
        path = self.config.socket
        if not os.path.exists(path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # left by a daemon that died: nobody answers on it
            return
        finally:
            probe.close()
        raise DynodError(
            f"another dynod daemon is already listening on {path}",
            "stop it first, or give this one another --socket",
        )

    def _socket_group(self) -> int | None:
        try:
            return grp.getgrnam(self.config.socket_group).gr_gid
        except KeyError:
            return None

    async def shutdown(self, stop_dynos: bool = True) -> None:
        """Stop every dyno and remove what this daemon made.

        After a failed start (stop_dynos=False) running dynos are left alone, with the kernel
        objects they need, for the next start to adopt: a daemon that cannot start must not
        take down what runs."""
        if self._lock_fd is None:
            return  # never got as far as owning anything
        if self.log is not None:
            self.log.emit(None, "dynod", "shutting down: stopping every dyno")
        for handle in self._restarts.values():
            handle.cancel()
        if self.api is not None:
            await self.api.close()
        if self.router is not None:
            await self.router.close()
        keep = not stop_dynos and self.state is not None and bool(self.state.dynos())
        if stop_dynos and self.state is not None:
            await asyncio.gather(
                *(self.stop_dyno(d, self.config.grace) for d in self.state.dynos()),
                return_exceptions=True,
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.kernel.touched and not keep:
            await self.kernel.remove_host_objects()
        self.kernel.close()
        if self.log is not None:
            self.log.emit(None, "dynod", "stopped")
            self.log.close()
        if self.state is not None:
            self.state.close()
        os.close(self._lock_fd)
        self._lock_fd = None

    # ---------------------------------------------------------------- reconcile
    async def _reconcile(self) -> None:
        """Make the kernel match the state after a restart, even one after SIGKILL."""
        live: list[Dyno] = []
        for dyno in self.state.dynos():
            if dyno.state != "crashed" and processes.is_alive(dyno.pid, dyno.pid_start) and (
                namespace.exists(dyno.netns)
            ):
                live.append(dyno)
                continue
            self.log.emit(dyno.app, f"heroku[{dyno.name}]", "Cleaned up after daemon restart")
            await self.kernel.kill_inside(dyno.netns)
            await self.kernel.detach(dyno)
            self._forget(dyno)
        await self.kernel.remove_unknown(live)
        for dyno in live:
            self._outputs[dyno.id] = OutputFile(dyno.log_path, dyno.log_offset)
            self._watch_exit(dyno)
            self.log.emit(dyno.app, f"heroku[{dyno.name}]", f"Adopted again (pid {dyno.pid})")
        await self._sweep_draining()

    async def _sweep_draining(self) -> None:
        """A drained /30 is free again once the kernel has destroyed its dyno's veth."""
        draining = self.state.draining()
        if not draining:
            return
        present = await self.kernel.existing_veths()
        self.state.drained([slot for slot, veth in draining.items() if veth not in present])

    async def run_dyno(self, request: dict[str, Any], peer_uid: int, peer_gid: int) -> Dyno:
        app = names.check_app(str(request.get("app", "")))
        ptype = names.check_process_type(str(request.get("type", "")))
        command = str(request.get("command") or "")
        cwd = str(request.get("cwd") or "/")
        uid, gid = self._dyno_user(request, peer_uid, peer_gid)
        env = self._dyno_env(request.get("env") or {}, uid)
        processes.check_command(command, cwd, env["PATH"])
        await self._sweep_draining()
        # From here to insert_dyno nothing awaits, so concurrent runs cannot pick the same
        # number or /30.
        self.state.add_app(app)
        number = names.lowest_free_number(self.state.numbers_taken(app, ptype))
        subnet = self.pool.allocate(self.state.slots_unavailable())
        dyno_id = self.state.next_dyno_id()
        dyno = Dyno(
            id=dyno_id,
            app=app,
            type=ptype,
            number=number,
            state="starting",
            slot=subnet.slot,
            ip=subnet.address,
            port=self._choose_port() if ptype == names.WEB_TYPE else None,
            pid=None,
            pid_start=None,
            netns=self.names.netns(app, f"{ptype}.{number}"),
            veth=self.names.veth(dyno_id),
            command=command,
            cwd=cwd,
            uid=uid,
            gid=gid,
            env=env,
            detached=bool(request.get("detach", True)),
            log_path=os.path.join(self._output_dir, f"{dyno_id}.out"),
            created_at=time.time(),
        )
        began = time.perf_counter()
        self.state.insert_dyno(dyno)
        try:
            await self.kernel.attach(dyno)
        except BaseException as exc:
            self._forget(dyno)
            raise DynodError(
                f"could not set up the network of {dyno.name}: {exc}", status=500
            ) from exc
        self._record_timing(dyno, "setup_ms", began)
        try:
            await self._spawn(dyno)
        except BaseException as exc:
            await self.kernel.detach(dyno)
            self._forget(dyno)
            raise DynodError(f"could not start {dyno.name}: {exc}", status=500) from exc
        return dyno

    def _forget(self, dyno: Dyno) -> None:
        """Drop the dyno from the state (its /30 drains) and its output file from the disk."""
        self.state.remove_dyno(dyno)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dyno.log_path)

    def _record_timing(self, dyno: Dyno, what: str, began: float) -> None:
        self.timings.setdefault(dyno.id, {})[what] = 1000 * (time.perf_counter() - began)
        while len(self.timings) > 1000:  # only recent ones are asked for
            del self.timings[next(iter(self.timings))]

    def _dyno_user(self, request: dict[str, Any], peer_uid: int, peer_gid: int) -> tuple[int, int]:
        """Dynos run as whoever asked, never as root: a root caller's dynos run as the user
        sudo was called by, or as the configured unprivileged user."""
        if peer_uid != 0:
            return peer_uid, peer_gid
        sudo_uid, sudo_gid = request.get("sudo_uid"), request.get("sudo_gid")
        if isinstance(sudo_uid, int) and isinstance(sudo_gid, int) and sudo_uid != 0:
            return sudo_uid, sudo_gid
        try:
            entry = pwd.getpwnam(self.config.dyno_user)
        except KeyError:
            raise DynodError(
                f"user {self.config.dyno_user!r} does not exist",
                "create it, or start the daemon with --dyno-user NAME",
                status=500,
            ) from None
        if entry.pw_uid == 0:
            raise DynodError("dynos never run as root", "give --dyno-user an unprivileged user")
        return entry.pw_uid, entry.pw_gid

    def _dyno_env(self, given: dict[str, Any], uid: int) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        try:
            entry = pwd.getpwuid(uid)
            env |= {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
        except KeyError:
            env["HOME"] = "/"
        for key, value in given.items():
            processes.check_env_name(str(key))
            if "\0" in str(value):
                raise DynodError(f"the value of {key} holds a NUL byte", "remove it")
            env[str(key)] = str(value)
        return env

    def _choose_port(self) -> int:
        """Like Heroku, a different PORT for every dyno and restart: apps must read $PORT."""
        return random.randint(*PORT_RANGE)

    def _dyno_process_env(self, dyno: Dyno) -> dict[str, str]:
        env = dict(dyno.env)
        env["DYNO"] = dyno.name
        if dyno.port:
            env["PORT"] = str(dyno.port)
        return env

    async def _spawn(self, dyno: Dyno) -> None:
        self.log.emit(
            dyno.app, f"heroku[{dyno.name}]", f"Starting process with command `{dyno.command}`"
        )
        popen = await self.kernel.spawn(dyno, self._dyno_process_env(dyno), dyno.log_path)
        self._children[dyno.id] = popen
        self.state.update_dyno(
            dyno,
            pid=popen.pid,
            pid_start=processes.start_time(popen.pid),
            started_at=time.time(),
        )
        self._outputs.setdefault(dyno.id, OutputFile(dyno.log_path, dyno.log_offset))
        self._watch_exit(dyno)
        if dyno.type != names.WEB_TYPE:
            self._set_state(dyno, "up")

    def _set_state(self, dyno: Dyno, new: str) -> None:
        old = dyno.state
        if old == new:
            return
        self.state.update_dyno(dyno, state=new)
        self.log.emit(dyno.app, f"heroku[{dyno.name}]", f"State changed from {old} to {new}")

    # ---------------------------------------------------------------- watching processes
    def _watch_exit(self, dyno: Dyno) -> None:
        """pidfd_open gives a file that becomes readable when the process exits, for our own
        children and adopted processes alike: no polling, no SIGCHLD races."""
        assert dyno.pid is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        self._exits[dyno.id] = future
        try:
            pidfd = os.pidfd_open(dyno.pid)
        except ProcessLookupError:
            loop.call_soon(self._on_exit, dyno.id, None)
            return

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._on_exit(dyno.id, pidfd)

        loop.add_reader(pidfd, exited)

    def _on_exit(self, dyno_id: int, _: int | None) -> None:
        popen = self._children.pop(dyno_id, None)
        status = popen.wait() if popen is not None else None
        if status is not None and status < 0:
            status = 128 - status  # killed by a signal: report it as a shell would (143)
        dyno = self.state.dyno(dyno_id)
        if dyno is not None:
            # The last output first: whoever waits for the exit has every line by then.
            self._drain_output(dyno, final=True)
            text = "Process exited" if status is None else f"Process exited with status {status}"
            self.log.emit(dyno.app, f"heroku[{dyno.name}]", text)
        future = self._exits.get(dyno_id)
        if future is not None and not future.done():
            future.set_result(status)
        if dyno is None:
            return
        if dyno.state == "stopping":
            return  # stop_dyno() takes it from here
        loop = asyncio.get_running_loop()
        if not dyno.detached:
            # `dynod run` in the foreground: the dyno ends with its process, like `heroku run`.
            self._stopping[dyno.id] = loop.create_task(self._stop(dyno, 0))
            return
        self._set_state(dyno, "crashed")
        self._stopping[dyno.id] = loop.create_task(self._crashed(dyno))

    async def _crashed(self, dyno: Dyno) -> None:
        """Kill what is left of the crashed dyno's processes, then restart it after a cool-off
        that doubles with each crash (0 s first, as Heroku does, up to 20 minutes)."""
        try:
            await self.kernel.kill_inside(dyno.netns)
            if not self.config.restart_crashed:
                return
            delay = 0.0 if dyno.restarts == 0 else min(RESTART_CAP, 2.0 ** (dyno.restarts - 1))
            loop = asyncio.get_running_loop()
            self._restarts[dyno.id] = loop.call_later(
                delay, lambda: loop.create_task(self._restart(dyno.id))
            )
        finally:
            self._stopping.pop(dyno.id, None)

    async def _restart(self, dyno_id: int) -> None:
        self._restarts.pop(dyno_id, None)
        dyno = self.state.dyno(dyno_id)
        if dyno is None or dyno.state != "crashed":
            return
        old_web = self.kernel.web(dyno)
        new_port = self._choose_port() if dyno.port else None
        self.state.update_dyno(dyno, restarts=dyno.restarts + 1, port=new_port)
        new_web = self.kernel.web(dyno)
        if old_web and new_web:
            await self.kernel.move_web(old_web, new_web)
        self._set_state(dyno, "starting")
        try:
            await self._spawn(dyno)
        except Exception as exc:  # noqa: BLE001 - a failed restart is a crash, logged
            self.log.emit(dyno.app, f"heroku[{dyno.name}]", f"Restart failed: {exc}")
            self._set_state(dyno, "crashed")

    async def _watch_boot(self) -> None:
        """Web dynos are up once something listens on PORT; R10 if not within boot_timeout."""
        while True:
            await asyncio.sleep(POLL)
            now = time.time()
            for dyno in self.state.dynos():
                if dyno.state != "starting" or dyno.type != names.WEB_TYPE or not dyno.pid:
                    continue
                if processes.listens_on(dyno.pid, dyno.port or 0):
                    self._set_state(dyno, "up")
                elif dyno.started_at and now - dyno.started_at > self.config.boot_timeout:
                    self.log.emit(
                        dyno.app,
                        f"heroku[{dyno.name}]",
                        f"Error R10 (Boot timeout) -> Web process failed to bind to $PORT "
                        f"within {self.config.boot_timeout:g} seconds of launch",
                    )
                    self.log.emit(dyno.app, f"heroku[{dyno.name}]", "Stopping process with SIGKILL")
                    await self.kernel.kill_inside(dyno.netns)

    async def _pump_output(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            for dyno in self.state.dynos():
                self._drain_output(dyno)

    def _drain_output(self, dyno: Dyno, final: bool = False) -> None:
        reader = self._outputs.get(dyno.id)
        if reader is None:
            return
        lines = reader.flush() if final else reader.read_lines()
        for line in lines:
            self.log.emit(dyno.app, f"app[{dyno.name}]", line)
        if reader.offset != dyno.log_offset:
            self.state.update_dyno(dyno, log_offset=reader.offset)

    # ---------------------------------------------------------------- stopping
    async def stop_dyno(self, dyno: Dyno, grace: float | None = None) -> None:
        """SIGTERM to every process of the dyno, SIGKILL after the grace period, then remove
        its namespace, links, address and firewall entries."""
        running = self._stopping.get(dyno.id)
        if running is not None:
            await asyncio.shield(running)
            dyno = self.state.dyno(dyno.id) or dyno
            if self.state.dyno(dyno.id) is None:
                return
        handle = self._restarts.pop(dyno.id, None)
        if handle is not None:
            handle.cancel()
        task = asyncio.get_running_loop().create_task(
            self._stop(dyno, self.config.grace if grace is None else grace)
        )
        self._stopping[dyno.id] = task
        await asyncio.shield(task)

    async def _stop(self, dyno: Dyno, grace: float) -> None:
        try:
            previous = dyno.state
            self.state.update_dyno(dyno, state="stopping")
            pids = await asyncio.to_thread(namespace.pids_inside, dyno.netns)
            if pids:
                self.log.emit(
                    dyno.app, f"heroku[{dyno.name}]", "Stopping all processes with SIGTERM"
                )
                processes.signal_all(pids, signal.SIGTERM)
                if not await self._wait_empty(dyno, grace):
                    self.log.emit(
                        dyno.app,
                        f"heroku[{dyno.name}]",
                        f"Error R12 (Exit timeout) -> At least one process failed to exit within "
                        f"{grace:g} seconds of SIGTERM",
                    )
                    self.log.emit(
                        dyno.app, f"heroku[{dyno.name}]", "Stopping all processes with SIGKILL"
                    )
                    await self.kernel.kill_inside(dyno.netns)
                    await self._wait_empty(dyno, 5.0)
            future = self._exits.get(dyno.id)
            if future is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), 5.0)
            self._drain_output(dyno, final=True)
            began = time.perf_counter()
            await self.kernel.detach(dyno)
            self._forget(dyno)
            self._record_timing(dyno, "teardown_ms", began)
            self.log.emit(
                dyno.app, f"heroku[{dyno.name}]", f"State changed from {previous} to down"
            )
        finally:
            self._stopping.pop(dyno.id, None)
            self._outputs.pop(dyno.id, None)
            self._exits.pop(dyno.id, None)

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
            if not await asyncio.to_thread(namespace.pids_inside, dyno.netns):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.05)

    async def wait_exit(self, dyno: Dyno) -> int | None:
        future = self._exits.get(dyno.id)
        if future is None:
            return None
        return await asyncio.shield(future)

    # ---------------------------------------------------------------- queries
    def find(self, app: str, dyno_name: str) -> Dyno:
        names.check_app(app)
        if not self.state.app_exists(app):
            raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
        ptype, number = names.parse_dyno_name(dyno_name)
        dyno = self.state.find_dyno(app, ptype, number)
        if dyno is None:
            raise NotFound(
                f"no dyno {dyno_name} in app {app}", f"`dynod ps --app {app}` lists its dynos"
            )
        return dyno

    def app_dynos(self, app: str) -> list[Dyno]:
        names.check_app(app)
        if not self.state.app_exists(app):
            raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
        return self.state.dynos(app)

    def _resolve(self, app: str, client: str) -> list[Backend] | None:
        if not self.state.app_exists(app):
            return None
        return [
            Backend(d.name, d.ip, d.port)
            for d in self.state.dynos(app)
            if d.type == names.WEB_TYPE and d.state == "up" and d.port
        ]

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "socket": self.config.socket,
            "router": f"{self.config.router_host}:{self.router.port if self.router else 0}",
            "range": str(self.pool.network),
            "bridge": self.names.bridge,
            "prefix": self.config.prefix,
            "state_dir": self.config.state_dir,
        }

    def busy(self, dyno_id: int) -> bool:
        return dyno_id in self._stopping


