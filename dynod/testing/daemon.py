"""The daemon a test session uses: one that answers on the socket, or, for root, a throwaway
one started for the session (its own prefix, state dir, socket, Common Runtime range and router
port on 127.0.0.1) and stopped at the end (SIGINT: it stops every dyno and removes its objects)."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dynod.api.client import Client
from dynod.errors import DynodError

HOW_TO_START = (
    "no dynod daemon answers on {socket}: start one (`sudo dynod daemon`), point "
    "--dynod-socket (or $DYNOD_SOCKET) at one, or run pytest as root to get a throwaway daemon"
)


@dataclass
class Daemon:
    socket: str
    router_url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes] | None = None  # set when this session started it
    home: str = ""  # its temp dir (state, socket, log)

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=120)

    def log(self) -> str:
        path = os.path.join(self.home, "daemon.log")
        if not self.home or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


def router_url(status: dict[str, object]) -> str:
    """The router's address from `dynod status` (`0.0.0.0:5000` is reached on 127.0.0.1)."""
    host, _, port = str(status["router"]).rpartition(":")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def running(path: str) -> Daemon | None:
    try:
        status = Client(path, timeout=10).call("GET", "/v1/status")
    except (DynodError, OSError):
        return None
    return Daemon(path, router_url(status))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_range() -> str:
    """A /24 of 172.31/16 that no route of the host covers (another daemon may hold one)."""
    return f"172.31.{_unrouted('172.31.', 2, range(256))}.0/24"


def free_space_cidr() -> str:
    """A 10.X.0.0/16 (X from 100 to 199) that no route of the host covers: another daemon may
    hold a space there (one picked at random collided about once in fifty test runs)."""
    return f"10.{_unrouted('10.', 1, range(100, 200))}.0.0/16"


def _unrouted(start: str, octet: int, choices: range) -> int:
    """One of `choices` that no IPv4 route of the host starting with `start` has as its octet
    number `octet` (`ip -4 route show table all`); any of them when all are taken."""
    routed = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    ).stdout
    taken = {word.split(".")[octet] for word in routed.split() if word.startswith(start)}
    free = [n for n in choices if str(n) not in taken]
    return random.choice(free or list(choices))


def start_throwaway(timeout: float = 60) -> Daemon:
    prefix = "pt" + secrets.token_hex(2)[:3]
    home = tempfile.mkdtemp(prefix=f"dynod-pytest-{prefix}-")
    sock = os.path.join(home, "api.sock")
    port = free_port()
    argv = [sys.executable, "-m", "dynod", "--socket", sock, "daemon", "--quiet"]
    argv += ["--state-dir", os.path.join(home, "state"), "--prefix", prefix]
    argv += ["--cidr", free_range(), "--router-host", "127.0.0.1", "--router-port", str(port)]
    with open(os.path.join(home, "daemon.log"), "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    daemon = Daemon(sock, f"http://127.0.0.1:{port}", proc, home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_text = daemon.log()
            shutil.rmtree(home, ignore_errors=True)
            raise RuntimeError(f"the throwaway dynod daemon exited {proc.returncode}:\n{log_text}")
        if running(sock) is not None:
            return daemon
        time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(f"the throwaway dynod daemon did not answer within {timeout:g}s")


@contextlib.contextmanager
def session_daemon(path: str) -> Iterator[Daemon | None]:
    """Yields the daemon at path, a throwaway one (root), or None (then tests are skipped)."""
    found = running(path)
    if found is not None or os.geteuid() != 0:
        yield found
        return
    started = start_throwaway()
    try:
        yield started
    finally:
        started.stop()
