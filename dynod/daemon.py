"""The root daemon: owns every kernel object, the state, the router and the API.

Start-up order matters: take the locks, open the state, reconcile the kernel with it (adopt live
dynos, clean dead ones and anything the state does not know), re-apply the firewall, and only
then listen. Shutdown (SIGTERM, SIGINT) stops every dyno and removes everything dynod made.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import os
import shutil
import signal
import socket
import stat
import sys
import time
from typing import Any

from dynod import launch, names, processes
from dynod.config import Config
from dynod.errors import DynodError, NotFound
from dynod.kernel import CommonRuntimeKernel
from dynod.logs import LogBook
from dynod.router import Backend, Router
from dynod.state import Dyno, State
from dynod.supervisor import Supervisor
from netns import namespace

FIREWALL_CHECK = 2.0  # seconds between checks that nobody removed dynod's nftables tables
LOCK_DIR = "/run"


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.kernel = CommonRuntimeKernel(config.prefix, config.cidr)
        self.names = self.kernel.names
        self.pool = self.kernel.pool
        self.state: State | None = None
        self.log: LogBook | None = None
        self.supervisor: Supervisor | None = None
        self.router: Router | None = None
        self.api: Any = None
        self._lock_fds: list[int] = []
        self._stop_event = asyncio.Event()

    # ---------------------------------------------------------------- start and stop
    async def serve(self) -> None:
        # The kernel thread and the event loop hand the GIL to each other many times per dyno;
        # Python's default 5 ms switch interval would add up to that much to every handoff.
        sys.setswitchinterval(0.0005)
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

    async def start(self) -> None:
        self._preflight()
        os.makedirs(self._output_dir, mode=0o700, exist_ok=True)
        self._take_locks()
        self._check_socket_free()
        self.state = State(self.config.state_dir)
        self.log = LogBook(
            os.path.join(self.config.state_dir, "dynod.log"),
            echo=sys.stderr if self.config.echo_logs else None,
        )
        self.supervisor = Supervisor(self.state, self.kernel, self.log, self.config)
        for warning in await self.kernel.prepare_host():
            self.log.emit(None, "dynod", f"warning: {warning}")
        to_stop = await self._reconcile()
        await self.kernel.apply_firewall(self.state.dynos())
        from dynod.api import ApiServer

        log = self.log
        self.router = Router(
            self._resolve,
            lambda text, app: log.emit(app, "heroku[router]", text),
            socket_mark=self.kernel.layout.router_mark,
        )
        await self.router.start(self.config.router_host, self.config.router_port)
        self.api = ApiServer(self)
        await self.api.start(self.config.socket, self._socket_group())
        self.supervisor.start_loops()
        self.supervisor.background(self._guard_firewall())
        for dyno in to_stop:
            self.supervisor.background(self.supervisor.stop(dyno))
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
        for tool, package in (("setpriv", "util-linux"), ("unshare", "util-linux")):
            if shutil.which(tool) is None:
                raise DynodError(f"{tool} is missing (dynos need it)", f"apt-get install {package}")

    @property
    def _output_dir(self) -> str:
        return os.path.join(self.config.state_dir, "output")

    def _take_locks(self) -> None:
        """One daemon per state directory, and one per prefix: a second daemon with the same
        prefix would take the first one's namespaces for leftovers and remove them."""
        self._lock(
            os.path.join(self.config.state_dir, "lock"),
            f"another dynod daemon (pid {{owner}}) already uses {self.config.state_dir}",
        )
        self._lock(
            self._prefix_lock_path,
            f"another dynod daemon (pid {{owner}}) already uses the prefix {self.config.prefix!r}",
        )

    @property
    def _prefix_lock_path(self) -> str:
        return os.path.join(LOCK_DIR, f"dynod-{self.config.prefix}.lock")

    def _lock(self, path: str, problem: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode().strip() or "?"
            os.close(fd)
            raise DynodError(
                problem.format(owner=owner),
                "stop it first, or give this one its own --state-dir, --socket and --prefix",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fds.append(fd)

    def _check_socket_free(self) -> None:
        path = self.config.socket
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise DynodError(
                f"{path} exists and is not a socket", "remove it, or give another --socket"
            )
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
        if not self._lock_fds:
            return  # never got as far as owning anything
        if self.log is not None:
            self.log.emit(None, "dynod", "shutting down: stopping every dyno")
        if self.api is not None:
            await self.api.close()
        if self.router is not None:
            await self.router.close()
        keep = not stop_dynos and self.state is not None and bool(self.state.dynos())
        if self.supervisor is not None and self.state is not None:
            if stop_dynos:
                await asyncio.gather(
                    *(self.supervisor.stop(d) for d in self.state.dynos()),
                    return_exceptions=True,
                )
            await self.supervisor.close()
        if self.kernel.touched and not keep:
            await self.kernel.remove_host_objects()
        self.kernel.close()
        if self.log is not None:
            self.log.emit(None, "dynod", "stopped")
            self.log.close()
        if self.state is not None:
            self.state.close()
        if len(self._lock_fds) == 2:  # both ours: the prefix's lock file is ours to remove
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._prefix_lock_path)
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds = []

    # ---------------------------------------------------------------- reconcile
    async def _reconcile(self) -> list[Dyno]:
        """Make the kernel match the state after a restart, even one after SIGKILL.

        Live dynos are adopted; crashed ones keep their namespace and are restarted; anything
        else is cleaned. Returns the dynos to stop once started: those that were being stopped,
        and foreground ones, whose `dynod run` lost its stream with the old daemon."""
        assert self.state is not None and self.supervisor is not None
        kept: list[Dyno] = []
        to_stop: list[Dyno] = []
        for dyno in self.state.dynos():
            exists = namespace.exists(dyno.netns)
            alive = exists and processes.is_alive(dyno.pid, dyno.pid_start)
            if alive and dyno.state != "crashed":
                kept.append(dyno)
                self.supervisor.adopt(dyno)
                # caught mid-stop, or a foreground dyno whose `dynod run` lost its stream
                if dyno.state == "stopping" or not dyno.detached:
                    to_stop.append(dyno)
            elif exists and dyno.state == "crashed":
                kept.append(dyno)
                await self.kernel.kill_inside(dyno.netns)
                self.supervisor.schedule_restart(dyno)
            else:
                self.log_dyno(dyno, "Cleaned up after daemon restart")
                await self.kernel.kill_inside(dyno.netns)
                await self.kernel.detach(dyno)
                self.supervisor.forget(dyno)
        await self.kernel.remove_unknown(kept)
        await self.kernel.restore_gateways(kept)
        await self._sweep_draining()
        return to_stop

    def log_dyno(self, dyno: Dyno, text: str) -> None:
        assert self.log is not None
        self.log.emit(dyno.app, f"heroku[{dyno.name}]", text)

    async def _sweep_draining(self) -> None:
        """A drained /30 is free again once the kernel has destroyed its dyno's veth."""
        assert self.state is not None
        draining = self.state.draining()
        if not draining:
            return
        present = await self.kernel.existing_veths()
        self.state.drained([slot for slot, veth in draining.items() if veth not in present])

    async def _guard_firewall(self) -> None:
        """`nft flush ruleset` or a firewall reload removes dynod's tables (docker/for-linux#1472):
        notice, and put the whole firewall back from the state."""
        assert self.state is not None and self.log is not None
        while True:
            await asyncio.sleep(FIREWALL_CHECK)
            try:
                if not await self.kernel.firewall_intact():
                    self.log.emit(
                        None,
                        "dynod",
                        "warning: dynod's nftables tables were changed by someone "
                        "else (nft flush ruleset?); re-applying them from the state",
                    )
                    await self.kernel.apply_firewall(self.state.dynos())
            except Exception as exc:  # noqa: BLE001 - keep guarding
                self.log.emit(None, "dynod", f"error: re-applying the firewall: {exc}")

    # ---------------------------------------------------------------- dynos
    async def run_dyno(self, request: dict[str, Any], peer_uid: int, peer_gid: int) -> Dyno:
        assert self.state is not None and self.supervisor is not None
        app = names.check_app(str(request.get("app", "")))
        ptype = names.check_process_type(str(request.get("type", "")))
        command = str(request.get("command") or "")
        cwd = os.path.abspath(str(request.get("cwd") or "/"))
        uid, gid = launch.dyno_user(request, peer_uid, peer_gid, self.config.dyno_user)
        env = launch.dyno_env(request.get("env") or {}, uid)
        launch.check_can_enter(cwd, uid, gid)
        processes.check_command(command, cwd, env["PATH"])
        await self._sweep_draining()
        # From here to insert_dyno nothing awaits, so concurrent runs cannot pick the same
        # number or /30; the app is created only once its first dyno has a /30.
        number = names.lowest_free_number(self.state.numbers_taken(app, ptype))
        subnet = self.pool.allocate(self.state.slots_unavailable())
        self.state.add_app(app)
        dyno_id = self.state.next_dyno_id()
        dyno = self.state.insert_dyno(
            Dyno(
                id=dyno_id,
                app=app,
                type=ptype,
                number=number,
                state="starting",
                slot=subnet.slot,
                ip=subnet.address,
                port=launch.choose_port() if ptype == names.WEB_TYPE else None,
                pid=None,
                pid_start=None,
                netns=self.names.netns(app, ptype, number),
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
        )
        await self.supervisor.launch(dyno)
        return dyno

    async def stop_dyno(self, dyno: Dyno, grace: float | None = None) -> None:
        assert self.supervisor is not None
        await self.supervisor.stop(dyno, grace)

    def background(self, coro: Any) -> None:
        assert self.supervisor is not None
        self.supervisor.background(coro)

    async def wait_exit(self, dyno: Dyno) -> int | None:
        assert self.supervisor is not None
        return await self.supervisor.wait_exit(dyno)

    @property
    def timings(self) -> dict[int, dict[str, float]]:
        assert self.supervisor is not None
        return self.supervisor.timings

    # ---------------------------------------------------------------- queries
    def find(self, app: str, dyno_name: str) -> Dyno:
        assert self.state is not None
        ptype, number = names.parse_dyno_name(dyno_name)
        self.app_dynos(app)
        dyno = self.state.find_dyno(app, ptype, number)
        if dyno is None:
            raise NotFound(
                f"no dyno {dyno_name} in app {app}", f"`dynod ps --app {app}` lists its dynos"
            )
        return dyno

    def app_dynos(self, app: str) -> list[Dyno]:
        assert self.state is not None
        names.check_app(app)
        if not self.state.app_exists(app):
            raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
        return self.state.dynos(app)

    def _resolve(self, app: str, client: str) -> list[Backend] | None:
        assert self.state is not None
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
