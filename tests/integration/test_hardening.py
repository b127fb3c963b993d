"""Issue 7, items 2 and 7: the daemon's state is root's alone, read from inside a dyno; a dyno
whose veth or namespace name is removed under it is noticed, stopped whole, and restarted."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import stat
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import PYTHON, DaemonProc, running_daemon, sh

pytestmark = pytest.mark.root

PROBE = """
import os, sys
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        print("READ", path)
    except OSError as exc:
        print("REFUSED", path, type(exc).__name__)
"""


# ---------------------------------------------------------------- item 2: the state directory
@contextlib.contextmanager
def daemon_with_state_outside_tmp() -> Iterator[DaemonProc]:
    """A daemon whose state directory is where a dyno could see it (a dyno has a private /tmp,
    which would hide the test daemon's usual state directory), under an open (0755) parent: only
    the daemon's own modes can keep dynos out."""
    parent = tempfile.mkdtemp(prefix="dynod-test-", dir="/var/lib")
    os.chmod(parent, 0o755)
    daemon = DaemonProc()
    daemon.state_dir = os.path.join(parent, "state")
    try:
        with running_daemon_proc(daemon) as d:
            yield d
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@contextlib.contextmanager
def running_daemon_proc(daemon: DaemonProc) -> Iterator[DaemonProc]:
    try:
        yield daemon.start()
    finally:
        found = daemon.close()
        if found:
            raise AssertionError(f"the daemon left kernel objects behind: {found}")


def probe_from_dyno(d: DaemonProc, paths: list[str]) -> dict[str, str]:
    """Each path as a dyno (running as its unprivileged user) finds it: READ or REFUSED ..."""
    script = Path(d.app_dir) / "probe.py"
    script.write_text(PROBE)
    script.chmod(0o644)
    status, lines = d.run_once("probe", "run", f"{PYTHON} probe.py {' '.join(paths)}")
    assert status == 0, lines
    return {line.split()[1]: line for line in lines if line.split()[0] in ("READ", "REFUSED")}


def secret_paths(d: DaemonProc, worker: dict[str, object]) -> list[str]:
    state = d.state_dir
    paths = [
        state,
        f"{state}/state.db",
        f"{state}/state.db-wal",
        f"{state}/dynod.log",
        f"{state}/output",
        str(worker["log_path"]),
        f"{state}/resolv",
        f"{state}/hosts",
    ]
    for path in paths:
        assert os.path.exists(path), path  # refused must not mean "not there"
    return paths


def modes(root: str) -> dict[str, int]:
    found = {root: stat.S_IMODE(os.lstat(root).st_mode)}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            found[path] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def assert_private(root: str) -> None:
    for path, mode in modes(root).items():
        if os.path.isdir(path):
            assert mode == 0o700, f"{path} is {mode:o}"
        elif path.endswith(".conf") and os.path.basename(os.path.dirname(path)) == "resolv":
            assert mode == 0o644, f"{path} is {mode:o}: dynos read it as /etc/resolv.conf"
        elif path.endswith((".hosts", ".hostname")) and path.split("/")[-2] == "hosts":
            assert mode == 0o644, f"{path} is {mode:o}: its dyno reads it in /etc"
        else:
            assert mode == 0o600, f"{path} is {mode:o}"


def test_a_dyno_cannot_read_the_state_the_log_or_other_dynos_output() -> None:
    with daemon_with_state_outside_tmp() as d:
        worker = d.run(
            "vault",
            "worker",
            "echo connecting with the secret; sleep 600",
            env={"SECRET_DB_URL": "postgres://u:hunter2@db/x"},
        )
        d.wait_for(lambda: "connecting" in d.output("vault", worker["name"]), "worker output")
        paths = secret_paths(d, worker)
        seen = probe_from_dyno(d, [*paths, "/etc/resolv.conf", "/etc/hosts"])
        for path in paths:
            assert "REFUSED" in seen[path] and "PermissionError" in seen[path], seen[path]
        # What dynos must read still reads: their resolv.conf and hosts files are bound over
        # /etc/resolv.conf and /etc/hosts.
        assert seen["/etc/resolv.conf"].startswith("READ"), seen
        assert seen["/etc/hosts"].startswith("READ"), seen
        assert_private(d.state_dir)


def test_an_open_state_directory_of_an_older_daemon_is_made_private_at_start() -> None:
    with daemon_with_state_outside_tmp() as d:
        worker = d.run("vault", "worker", "echo hello; sleep 600", env={"SECRET": "s3cret"})
        d.wait_for(lambda: "hello" in d.output("vault", worker["name"]), "worker output")
        d.kill9()
        # What an older dynod left: everything readable by everyone.
        for path in modes(d.state_dir):
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        old = Path(d.state_dir) / "output" / "999.out"
        old.write_text("an old dyno's output\n")
        old.chmod(0o644)
        d.start()
        assert_private(d.state_dir)
        assert "readable by root only" in d.log()
        seen = probe_from_dyno(d, [*secret_paths(d, worker), str(old)])
        assert all("REFUSED" in line for line in seen.values()), seen
        assert d.dyno("vault", worker["name"])["state"] == "up"  # adopted, still running


def test_dynos_keep_the_usual_umask_while_the_daemon_keeps_its_files_private() -> None:
    with running_daemon() as d:
        status, lines = d.run_once("mask", "run", "umask; touch /tmp/f; stat -c %a /tmp/f")
        assert status == 0 and lines[-2:] == ["0022", "644"], lines


# ---------------------------------------------------------------- item 7: objects removed
FAST = ["--health-interval", "0.1"]


def dyno_processes(dyno: dict[str, object]) -> list[int]:
    """As root, outside dynod: the recorded process and every process of its pid namespace."""
    first = int(str(dyno["pid"]))
    wanted = os.stat(f"/proc/{first}/ns/pid_for_children").st_ino
    found = [first]
    if wanted == os.stat("/proc/self/ns/pid").st_ino:
        # never for a dyno's first process (born in its own); were it the host's, every
        # process of the machine would be in it
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == wanted:
                    found.append(int(entry))
    return found


@pytest.fixture
def doomed() -> Iterator[list[psutil.Process]]:
    """Processes a test saw in a dyno: whatever still lives at the end (the test failed) is
    killed, also those a daemon can no longer find by name. psutil refuses a reused PID."""
    found: list[psutil.Process] = []
    yield found
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def remember(doomed: list[psutil.Process], pids: list[int]) -> list[int]:
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            doomed.append(psutil.Process(pid))
    return pids


def alive(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
    return left


def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


# A worker with a child that left its session, as a daemonizing program does.
WORKER = "setsid sleep 600 & sleep 600"


def start_worker(
    d: DaemonProc, app: str, doomed: list[psutil.Process]
) -> tuple[dict[str, object], list[int]]:
    worker = d.run(app, "worker", WORKER)
    d.wait_for(lambda: len(dyno_processes(d.dyno(app, worker["name"]))) >= 4, "worker children")
    worker = d.dyno(app, worker["name"])
    return worker, remember(doomed, dyno_processes(worker))


def test_a_deleted_veth_is_a_crash_and_the_dyno_comes_back_on_a_rebuilt_network(
    doomed: list[psutil.Process],
) -> None:
    with running_daemon(extra=FAST) as d:
        web = d.run_app("sushi", "web")
        old = remember(doomed, dyno_processes(web))
        sh("ip", "link", "del", str(web["veth"]))
        d.wait_for(lambda: f"veth {web['veth']} was removed" in d.log(), "the removal noticed")
        assert not wait_gone(old), "the old processes are still alive"
        d.wait_for(
            lambda: (
                d.dyno("sushi", "web.1")["restarts"] == 1
                and d.dyno("sushi", "web.1")["state"] == "up"
            ),
            "restarted and up",
        )
        log = d.log()
        assert "heroku[web.1]: State changed from up to crashed" in log
        assert f"Rebuilding its network (veth {web['veth']} gone)" in log
        assert os.path.exists(f"/sys/class/net/{web['veth']}")
        # The rebuilt network works: the router reaches the new process through it.
        d.wait_for(lambda: d.output("sushi", "web.1").count("listening on") == 2, "listening")
        request = urllib.request.Request(
            f"http://127.0.0.1:{d.router_port}/", headers={"Host": "sushi.localhost"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


def test_a_deleted_netns_name_ends_every_process_and_ps_says_crashed(
    doomed: list[psutil.Process],
) -> None:
    with running_daemon(extra=[*FAST, "--no-restart"]) as d:
        worker, pids = start_worker(d, "sushi", doomed)
        sh("ip", "netns", "delete", str(worker["netns"]))
        d.wait_for(lambda: d.dyno("sushi", "worker.1")["state"] == "crashed", "ps: crashed")
        assert not wait_gone(pids), "processes of the dyno outlived its namespace's name"
        assert f"network namespace {worker['netns']} was removed by someone else" in d.log()
        d.stop_dyno("sushi", "worker.1")
        assert d.dynos("sushi") == []


def test_stop_ends_every_process_after_the_netns_name_was_deleted(
    doomed: list[psutil.Process],
) -> None:
    # No health check in the way: stop alone must find the processes without the name.
    with running_daemon(extra=["--health-interval", "3600"]) as d:
        worker, pids = start_worker(d, "sushi", doomed)
        sh("ip", "netns", "delete", str(worker["netns"]))
        d.stop_dyno("sushi", "worker.1", grace=1)
        assert alive(pids) == []  # when stop answers, not later
        assert d.dynos("sushi") == []
        d.wait_for(lambda: not os.path.exists(f"/sys/class/net/{worker['veth']}"), "veth gone")


def test_a_foreground_dyno_ends_when_its_veth_is_deleted(doomed: list[psutil.Process]) -> None:
    with running_daemon(extra=FAST) as d, concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(d.run_once, "sushi", "run", WORKER, 60)
        d.wait_for(lambda: d.dyno("sushi", "run.1")["state"] == "up", "one-off up")
        dyno = d.dyno("sushi", "run.1")
        pids = remember(doomed, dyno_processes(dyno))
        sh("ip", "link", "del", str(dyno["veth"]))
        status, _ = running.result(timeout=30)
        assert status == 137  # SIGKILL, as a shell reports it
        assert not wait_gone(pids)
        d.wait_for(lambda: d.dynos("sushi") == [], "the one-off is gone")


def test_a_daemon_restart_finds_a_dyno_whose_netns_name_was_deleted_meanwhile(
    doomed: list[psutil.Process],
) -> None:
    with running_daemon(extra=FAST) as d:
        worker, pids = start_worker(d, "sushi", doomed)
        d.kill9()
        sh("ip", "netns", "delete", str(worker["netns"]))
        d.start()
        assert not wait_gone(pids), "processes of the dyno survived the restart"
        d.wait_for(
            lambda: (
                d.dyno("sushi", "worker.1")["state"] == "up"
                and d.dyno("sushi", "worker.1")["restarts"] == 1
            ),
            "restarted on a rebuilt network",
        )
        assert os.path.exists(f"/run/netns/{worker['netns']}")
        assert "removed while the daemon was down" in d.log()
