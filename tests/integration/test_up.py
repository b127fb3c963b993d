"""`dynod up` through the real CLI against a real daemon: the Procfile's dynos start, their output
comes prefixed, .env becomes config vars, Ctrl-C stops them all, the first dyno that ends ends
the session with its status, --detach returns and ps:wait waits."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from dynod.cli.up import app_name_for
from dynod.errors import DynodError
from tests.support import PYTHON, DaemonProc, running_daemon

pytestmark = pytest.mark.root

WEB = """
import http.server, os
print("web says", os.environ.get("GREETING", "-").replace("\\n", "/"), flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])),
                                http.server.SimpleHTTPRequestHandler).serve_forever()
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProc]:
    with running_daemon() as d:
        yield d


@contextlib.contextmanager
def project(daemon: DaemonProc, procfile: str, env: str | None = None) -> Iterator[Path]:
    """A directory with a Procfile (and .env) that the dynos' user can read; its app is
    destroyed at the end, whatever happened."""
    where = Path(tempfile.mkdtemp(prefix=f"{daemon.prefix}-shop-", dir="/tmp"))
    where.chmod(0o755)
    (where / "web.py").write_text(WEB)
    (where / "Procfile").write_text(procfile)
    if env is not None:
        (where / ".env").write_text(env)
    for f in where.iterdir():
        f.chmod(0o644)
    try:
        yield where
    finally:
        with contextlib.suppress(DynodError):
            daemon.client.call("DELETE", f"/v1/apps/{app_of(where)}")
        for f in where.iterdir():
            f.unlink()
        where.rmdir()


def app_of(where: Path) -> str:
    return app_name_for(str(where))


def start_up(daemon: DaemonProc, where: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DYNOD_SOCKET": daemon.socket, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-m", "dynod", "up", *args],
        cwd=where,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_until(proc: subprocess.Popen[bytes], wanted: list[str], timeout: float = 60) -> str:
    """Its stdout until every wanted text has appeared (or it ends, or the time is up)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while not all(w.encode() in seen for w in wanted) and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_up_prefixes_output_reads_env_and_ctrl_c_stops_all(daemon: DaemonProc) -> None:
    procfile = f"web: {PYTHON} -u web.py\nworker: echo worker-hi; exec sleep 600\n"
    env = '# the shop\nexport GREETING="hello\\nworld"\nPLAIN=x # a comment\n'
    with project(daemon, procfile, env) as where:
        proc = start_up(daemon, where)
        try:
            out = read_until(proc, ["web says hello/world", "worker.1 | worker-hi"])
            assert "web.1    | web says hello/world" in out, out  # padded to worker.1's width
            assert "worker.1 | worker-hi" in out, out
            assert "\x1b[" not in out  # a pipe gets no colours
            app = app_of(where)
            config = daemon.client.call("GET", f"/v1/apps/{app}/config-vars")["vars"]
            assert config == {"GREETING": "hello\nworld", "PLAIN": "x"}
            assert {d["name"] for d in daemon.dynos(app)} == {"web.1", "worker.1"}
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
            assert daemon.dynos(app) == []
            formation = {p["type"]: p["quantity"] for p in daemon.client.formation(app)}
            assert formation == {"web": 0, "worker": 0}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_ctrl_c_shows_what_the_dynos_print_as_they_stop(daemon: DaemonProc) -> None:
    """`up` returns only once each dyno's last lines (printed on SIGTERM) and its "Process
    exited" are shown, not as soon as the scale to 0 answers."""
    procfile = (
        "worker: trap 'echo bye-on-term; exit 0' TERM; echo worker-hi; "
        "while :; do sleep 0.1; done\n"
    )
    with project(daemon, procfile) as where:
        proc = start_up(daemon, where)
        try:
            out = read_until(proc, ["worker.1 | worker-hi"])
            assert "worker.1 | worker-hi" in out, out
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=60)
            assert proc.returncode == 130
            lines = rest.decode(errors="replace").splitlines()
            assert "worker.1 | bye-on-term" in lines, lines
            assert "worker.1 | heroku: Process exited with status 0" in lines, lines
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_dyno_that_ends_ends_the_session_with_its_status(daemon: DaemonProc) -> None:
    procfile = f"web: {PYTHON} -u web.py\nworker: echo leaving; sleep 1; exit 3\n"
    with project(daemon, procfile) as where:
        proc = start_up(daemon, where)
        try:
            assert proc.wait(90) == 3
            assert proc.stderr is not None
            assert "worker.1 ended (status 3)" in proc.stderr.read().decode()
            assert daemon.dynos(app_of(where)) == []
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_detach_then_ps_wait_and_an_unchanged_env_makes_no_release(daemon: DaemonProc) -> None:
    with project(daemon, f"web: {PYTHON} -u web.py\n", "A=1\n") as where:
        proc = start_up(daemon, where, "--detach", "web=2")
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert b"dynod ps:wait --app" in out
        app = app_of(where)
        waited = daemon.cli("ps:wait", "--app", app, cwd=str(where))
        assert waited.returncode == 0, waited.stderr
        dynos = {d["name"]: d["pid"] for d in daemon.dynos(app)}
        assert set(dynos) == {"web.1", "web.2"}
        release = daemon.client.call("GET", f"/v1/apps/{app}/config-vars")["version"]
        again = daemon.cli("up", "--detach", "web=2", cwd=str(where))
        assert again.returncode == 0, again.stderr
        assert "from the env file" not in again.stderr  # nothing differed: nothing set
        assert daemon.client.call("GET", f"/v1/apps/{app}/config-vars")["version"] == release
        assert {d["name"]: d["pid"] for d in daemon.dynos(app)} == dynos  # no restart


def test_bad_input_is_refused_before_anything_changes(daemon: DaemonProc) -> None:
    with project(daemon, f"web: {PYTHON} -u web.py\n", "GOOD=1\nthis is no assignment\n") as where:
        app = app_of(where)
        bad_env = daemon.cli("up", cwd=str(where))
        assert bad_env.returncode == 1
        assert ".env, line 2: is not NAME=VALUE" in bad_env.stderr
        unknown = daemon.cli("up", "-e", "/dev/null", "clock=1", cwd=str(where))
        assert unknown.returncode == 1
        assert "no 'clock' process type" in unknown.stderr
        missing = daemon.cli("up", "-f", "Nope", cwd=str(where))
        assert "error: no Procfile at" in missing.stderr
        apps = {a["name"] for a in daemon.client.call("GET", "/v1/apps")}
        assert app not in apps


def test_on_a_terminal_prefixes_are_coloured_and_ctrl_c_stops_all(daemon: DaemonProc) -> None:
    """A real terminal: `up` runs in a pty, and Ctrl-C is the byte a user's key sends."""
    procfile = "worker: echo ready; exec sleep 600\n"
    with project(daemon, procfile) as where:
        env = {**os.environ, "DYNOD_SOCKET": daemon.socket, "PATH": "/usr/bin:/bin"}
        env.pop("NO_COLOR", None)
        pid, fd = pty.fork()
        if pid == 0:  # the child: `dynod up` with the pty as its terminal
            os.chdir(where)
            os.execve(sys.executable, [sys.executable, "-m", "dynod", "up"], env)
        try:
            seen = b""
            wanted = click.style("worker.1 |", fg="cyan").encode() + b" ready"
            deadline = time.monotonic() + 60
            while wanted not in seen and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.5)[0]:
                    seen += os.read(fd, 65536)
            assert wanted in seen, seen
            os.write(fd, b"\x03")  # Ctrl-C
            _, status = os.waitpid(pid, 0)
            pid = 0
            assert os.waitstatus_to_exitcode(status) == 130
            assert daemon.dynos(app_of(where)) == []
        finally:
            if pid:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)


def test_sigterm_stops_every_dyno_too(daemon: DaemonProc) -> None:
    with project(daemon, "worker: echo up-and-running; exec sleep 600\n") as where:
        proc = start_up(daemon, where)
        try:
            assert "worker.1 | up-and-running" in read_until(proc, ["| up-and-running"])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 130
            assert daemon.dynos(app_of(where)) == []
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
