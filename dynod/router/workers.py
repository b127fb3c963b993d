"""The router as worker processes: one per core, started and supervised by the daemon.

The daemon keeps the router's interface (`update`, `start`, `listen`, `unlisten`, `close`,
`port`) but does no HTTP itself: its event loop stays free for the API, the supervisor and DNS
whatever the load on the router. It binds every listening socket (the main port, and port 80 on
each space's address) and hands each worker a copy (SCM_RIGHTS), so the workers share each
accept queue and need no right to bind. Each change of the route table goes to every worker at
once, as what changed (a worker that starts gets the whole table; `wire`); their log lines
come back in batches and go into the daemon's log book, one line per request as before, and so
does what a worker prints on its standard error (worker_stderr.py).

Workers parse what any client sends, so they run with no privilege: ``python -m
dynod.router.worker`` under ``setpriv`` with every capability dropped but CAP_SETUID,
CAP_SETGID and CAP_DAC_READ_SEARCH, and no_new_privs; once it has imported all it runs (read
with CAP_DAC_READ_SEARCH: the checkout may be readable by its owner alone, root's or a user's
home), the worker becomes `user`, a user id of its own that no name, process or service of the
host has (netns/identity.py), and so loses all three. The firewall lets that user's
connections to a web dyno's PORT through (`meta skuid`), as it does the in-daemon router's
socket mark (SO_MARK, which needs CAP_NET_ADMIN); no other user's. Root, with no capability
left, would still own every file root owns (/etc/cron.d among them); a user no dyno runs as
cannot signal or trace them.
A worker that exits is started again (after 0.5 s, doubling to 30 s while it keeps dying) and
gets the current table and sockets; the daemon's stop ends them (SIGTERM, then SIGKILL), and a
daemon that dies closes their control sockets, which ends them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dynod.router.limits import MAX_CLIENT_CONNECTIONS
from dynod.router.routes import RouteChange, RouteTable
from dynod.router.server import Router
from dynod.router.turns import shared_turns_file
from dynod.router.wire import changes_frame, read_frame, send_listen, table_frame
from dynod.router.worker_stderr import StderrRelay

__all__ = ["AnyRouter", "RouterWorkers"]

_logger = logging.getLogger(__name__)

WORKER = "dynod.router.worker"  # the module a worker runs (`python -m`)
RESTART_FIRST, RESTART_MOST = 0.5, 30.0
STOP_GRACE = 2.0
LAST_WORDS = 1.0  # seconds an exited worker's standard error may take to reach its end


class _Worker:
    """One worker process and the daemon's ends of its two channels."""

    def __init__(self, popen: subprocess.Popen[bytes], ctl: socket.socket, chan: socket.socket):
        self.popen = popen
        self.ctl = ctl
        self.chan = chan
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.stderr: asyncio.BaseTransport | None = None
        self.started = time.monotonic()


class RouterWorkers:
    def __init__(
        self,
        log: Callable[[str, str | None], object],
        *,
        count: int,
        user: int | None = None,
        socket_mark: int | None = None,
        max_client_connections: int = MAX_CLIENT_CONNECTIONS,
        log_batch: Callable[[list[tuple[str, str | None]]], object] | None = None,
        say: Callable[[str], object] | None = None,
    ) -> None:
        """`log(line, app)` takes each request's line; `log_batch([(line, app), ...])`, when
        given, takes a worker's batch at once instead (the daemon writes it in one go). `user`:
        the user id the workers run as (a root daemon's; None: the daemon's own, as a test's
        daemon that is not root); `socket_mark`: the mark their sockets carry (None: none);
        `say(text)`: a line for the daemon's log (a worker's exit)."""
        self._log = log
        self._log_batch = log_batch
        self._say = say
        self.count = max(1, count)
        self.user = user
        self.socket_mark = socket_mark
        self.max_client_connections = max_client_connections
        self.port = 0
        self._table = RouteTable()
        self._sockets: dict[str, socket.socket] = {}  # "main" or a space's address -> listening
        self._workers: dict[int, _Worker] = {}  # slot -> worker
        self._delays: dict[int, float] = {}  # slot -> its last restart delay
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._turns_fd = -1  # the shared round-robin counters (router/turns.py), from start()

    # -- the router's interface ----------------------------------------------------------

    def update(self, table: RouteTable, changes: Sequence[RouteChange] | None = None) -> None:
        """Route by `table` from now on. `changes`: what made it out of the last one, sent
        instead of the whole table (None: send it whole)."""
        self._table = table
        if changes is not None and not changes:
            return
        data = table_frame(table) if changes is None else changes_frame(changes)
        for worker in self._workers.values():
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(data)

    async def start(self, host: str, port: int) -> None:
        self._closing = False
        sock = _listening(host, port)
        self._sockets["main"] = sock
        self.port = sock.getsockname()[1]
        if self._turns_fd < 0:
            self._turns_fd = shared_turns_file()
        for slot in range(self.count):
            self._spawn(slot)

    async def listen(self, host: str, port: int) -> None:
        if host in self._sockets:
            return
        sock = _listening(host, port)
        self._sockets[host] = sock
        for worker in self._workers.values():
            _send(worker, host, sock)

    async def unlisten(self, host: str) -> None:
        sock = self._sockets.pop(host, None)
        if sock is None:
            return
        for worker in self._workers.values():
            _send(worker, host, None)
        sock.close()

    async def close(self) -> None:
        self._closing = True
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.popen.send_signal(signal.SIGTERM)
        for worker in workers:
            await _reap(worker.popen, STOP_GRACE)
            await self._detach(worker)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        if self._turns_fd >= 0:
            os.close(self._turns_fd)
            self._turns_fd = -1

    # -- the workers ---------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        chan, chan_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        settings = {
            "ctl_fd": ctl_child.fileno(),
            "listen_fd": chan_child.fileno(),
            "turns_fd": self._turns_fd,
            "user": self.user,
            "socket_mark": self.socket_mark,
            # A client's share is split between the workers, which share its connections: a
            # client address holds at most max_client_connections in all, as with one router.
            "max_client_connections": -(-self.max_client_connections // self.count),
        }
        try:
            popen = subprocess.Popen(
                [*_dropped_privileges(self.user), sys.executable, "-m", WORKER,
                 json.dumps(settings)],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # into the daemon's log: _watch
                pass_fds=(ctl_child.fileno(), chan_child.fileno(), self._turns_fd),
                env=_environment(),
                start_new_session=True,  # a Ctrl-C reaches the daemon, which stops them
            )  # fmt: skip
        finally:
            ctl_child.close()
            chan_child.close()
        worker = _Worker(popen, ctl, chan)
        self._workers[slot] = worker
        watcher = asyncio.create_task(self._watch(slot, worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _relay_logs(self, items: list[list[Any]]) -> None:
        if self._log_batch is not None:
            self._log_batch([(str(line), app) for line, app in items])
            return
        for line, app in items:
            self._log(str(line), app)

    async def _watch(self, slot: int, worker: _Worker) -> None:
        """Feed the worker its table and sockets, relay its log lines and what it prints;
        restart it if it dies."""
        assert worker.popen.stderr is not None
        relay = StderrRelay(slot, self._said)
        worker.stderr, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: relay, worker.popen.stderr
        )
        reader, writer = await asyncio.open_connection(sock=worker.ctl)
        worker.writer = writer
        writer.write(table_frame(self._table))  # whole: it knows nothing yet
        for key, sock in self._sockets.items():
            _send(worker, key, sock)
        try:
            while (message := await read_frame(reader)) is not None:
                self._relay_logs(message.get("logs", ()))
        except (OSError, ValueError) as exc:  # reset, or a frame it could not have meant
            _logger.warning("router worker %d: control channel broken: %s", slot, exc)
            with contextlib.suppress(ProcessLookupError):
                worker.popen.kill()
        status = await _reap(worker.popen, STOP_GRACE)
        # its last words before the line about its end (a process it left may hold the pipe)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(relay.ended), LAST_WORDS)
        relay.finish()
        await self._detach(worker)
        if self._closing or self._workers.get(slot) is not worker:
            return
        # A worker that lived long starts again at once; one that keeps dying (a broken install)
        # waits twice as long each time, up to RESTART_MOST: its own life says nothing of that.
        lived = time.monotonic() - worker.started
        last = self._delays.get(slot, RESTART_FIRST / 2)
        delay = RESTART_FIRST if lived > RESTART_MOST else min(RESTART_MOST, 2 * last)
        self._delays[slot] = delay
        self._said(
            f"warning: router worker {slot} exited with status {status} after {lived:.1f} s; "
            f"starting it again in {delay:.1f} s"
        )
        await asyncio.sleep(delay)
        if not self._closing and self._workers.get(slot) is worker:
            self._spawn(slot)

    def _said(self, text: str) -> None:
        """A line for the daemon's log."""
        if self._say is not None:
            self._say(text)
        else:
            _logger.warning("%s", text)

    async def _detach(self, worker: _Worker) -> None:
        if worker.writer is not None:
            worker.writer.close()
        else:
            worker.ctl.close()
        worker.chan.close()
        if worker.stderr is not None:
            worker.stderr.close()
        elif worker.popen.stderr is not None:  # stopped before its relay began
            worker.popen.stderr.close()

    def pids(self) -> list[int]:
        return [w.popen.pid for w in self._workers.values()]

    def running(self) -> int:
        """How many worker processes are running now (not exited and waiting to start again)."""
        return sum(1 for w in self._workers.values() if w.popen.poll() is None)


def _send(worker: _Worker, key: str, sock: socket.socket | None) -> None:
    try:
        send_listen(worker.chan, key, sock)
    except OSError as exc:  # the worker is gone; its restart gets every socket again
        _logger.warning("router worker %d: cannot hand it %s: %s", worker.popen.pid, key, exc)


def _listening(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _dropped_privileges(user: int | None) -> list[str]:
    """`setpriv --inh-caps=-all --bounding-set=-all,+setuid,+setgid,+dac_read_search
    --no-new-privs --`: root with the two capabilities the change to `user` needs, and the one
    that reads its code wherever it is (worker.py: all three go with the change, once its
    imports are done), and no way to gain any back. No user (a daemon that is not root):
    nothing to drop. RuntimeError without setpriv (util-linux): a worker must not run as
    root."""
    if user is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is not installed: the router cannot drop root")
    return [
        setpriv,
        "--inh-caps=-all",
        "--bounding-set=-all,+setuid,+setgid,+dac_read_search",
        "--no-new-privs",
        "--",
    ]


def _environment() -> dict[str, str]:
    """The daemon's environment, with the path to this copy of dynod (a checkout or a venv)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


async def _reap(popen: subprocess.Popen[bytes], grace: float) -> int | None:
    """Wait for the worker's exit without blocking the loop; SIGKILL after `grace`."""
    deadline = time.monotonic() + grace
    while popen.poll() is None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            deadline = float("inf")
        await asyncio.sleep(0.02)
    return popen.returncode


# What the daemon holds: the router in its own loop, or its worker processes.
AnyRouter = Router | RouterWorkers
