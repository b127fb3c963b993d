"""Issue 7 item 4 against a real daemon: its open file limit, and a router flooded with idle
connections by one client while the API, `run` and other clients keep working."""

from __future__ import annotations

import contextlib
import http.client
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynod.api.client import Client
from dynod.errors import DynodError
from tests.support import DaemonProc, running_daemon

pytestmark = pytest.mark.root

UNIT = Path(__file__).resolve().parents[2] / "vagrant" / "dynod.service"
SYSTEMD_DEFAULT_SOFT = 1024  # systemd's default soft RLIMIT_NOFILE for services
HOSTILE = "127.0.0.2"
OTHER = "127.0.0.3"


def open_files_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a process, as /proc/PID/limits says."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    return soft, hard


@contextlib.contextmanager
def soft_open_files(soft: int) -> Iterator[None]:
    """This test process's soft limit set to `soft` (what children inherit), then restored."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1]
    target = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_daemon_raises_its_open_file_limit() -> None:
    unit = UNIT.read_text()
    assert "\nLimitNOFILE=65536\n" in unit
    daemon = DaemonProc()
    try:
        with soft_open_files(SYSTEMD_DEFAULT_SOFT):  # what the daemon inherits
            daemon.start()
        assert daemon.proc is not None
        soft, hard = open_files_limit(daemon.proc.pid)
        assert soft >= 65536 or soft == hard, (soft, hard)
        assert soft > SYSTEMD_DEFAULT_SOFT
    finally:
        found = daemon.close()
        assert not found, found


def hold_connections(port: int, count: int, budget: float = 15.0) -> list[socket.socket]:
    """Up to `count` idle connections to the router from HOSTILE (bounded in time)."""
    held: list[socket.socket] = []
    deadline = time.monotonic() + budget
    while len(held) < count and time.monotonic() < deadline:
        sock = socket.socket()
        try:
            sock.bind((HOSTILE, 0))
            sock.settimeout(0.5)
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


def still_open(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read, not closed
    except OSError:
        return False


def get_via_router(daemon: DaemonProc, app: str) -> int:
    """The status of GET / of `app` through the router, asked from OTHER."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", daemon.router_port, timeout=10, source_address=(OTHER, 0)
    )
    try:
        conn.request("GET", "/", headers={"Host": f"{app}.localhost"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_idle_router_connections_from_one_client_leave_everything_else_usable() -> None:
    """600 idle connections (against a soft limit of 1,024) used to freeze the router, `dynod
    run` and `dynod status`.  Here the daemon's limit is put back to systemd's default after
    start-up, and one client opens 1,100: beyond its share they are closed at once, and the
    API, a new dyno and another client's requests all still work."""
    own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with running_daemon() as daemon:
        assert daemon.proc is not None
        web = daemon.run_app("flooded", "web")
        assert get_via_router(daemon, "flooded") == 200
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (SYSTEMD_DEFAULT_SOFT, own_hard))
        wanted = min(1100, own_hard - 200) if own_hard != resource.RLIM_INFINITY else 1100
        held: list[socket.socket] = []
        with soft_open_files(max(own_soft, wanted + 200)):
            try:
                held = hold_connections(daemon.router_port, wanted)
                assert len(held) > SYSTEMD_DEFAULT_SOFT - 100, len(held)
                time.sleep(0.5)
                kept = sum(still_open(sock) for sock in held)
                assert kept <= 64, kept  # the client's share
                api = Client(daemon.socket, timeout=5)
                for _ in range(5):
                    assert api.call("GET", "/v1/status")
                assert get_via_router(daemon, "flooded") == 200
                other = daemon.run("flooded", "worker", "sleep 30")
                assert other["name"] == "worker.1"
                daemon.stop_dyno("flooded", "worker.1")
                # no flood of accept() tracebacks (there were 218,672 in seconds), one line
                # about the refused client at most
                log = daemon.log()
                assert "Traceback" not in log and log.count("refusing connections") <= 2, log[
                    -3000:
                ]
            finally:
                for sock in held:
                    sock.close()
        daemon.stop_dyno("flooded", web["name"])


def test_the_api_refuses_bad_run_fields() -> None:
    """Issue 7 item 8 through a real daemon: `"sudo_uid": -1` (root!) and `"detach": "no"`."""
    with running_daemon() as daemon:
        body = {"type": "worker", "command": "true", "cwd": str(daemon.app_dir)}
        for extra, field in (
            ({"sudo_uid": -1, "sudo_gid": 0}, "sudo_uid"),
            ({"sudo_uid": True, "sudo_gid": True}, "sudo_uid"),
            ({"detach": "no"}, "detach"),
        ):
            with pytest.raises(DynodError) as err:
                daemon.client.call("POST", "/v1/apps/edgy/dynos", body | extra)
            assert f"'{field}'" in err.value.problem, err.value
        assert daemon.dynos() == []
