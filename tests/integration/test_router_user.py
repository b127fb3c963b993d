"""The router's worker processes run as a user of their own with no capability (dynod/router/
workers.py, netns/identity.py), even from a checkout only its owner can read (another user's,
as a clone in a home directory of 0700), and the firewall lets that user, and no other, reach a
web dyno's PORT from the host."""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import site
import socket
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.support import PYTHON, DaemonProc, running_daemon, sh

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
OWNER = 4242  # the copy's owner: any user but root


def workers(daemon: DaemonProc) -> list[psutil.Process]:
    assert daemon.proc is not None
    children = psutil.Process(daemon.proc.pid).children(recursive=True)
    return [p for p in children if "dynod.router.worker" in " ".join(p.cmdline())]


def status(pid: int) -> dict[str, str]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        found[key] = value.strip()
    return found


def first_line(port: int, raw: bytes) -> bytes:
    """Send `raw` to the router and read its answer's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def reaches(uid: int, ip: str, port: int) -> bool:
    """Does a host process of this user connect to IP:PORT (a dyno's)?"""
    code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=2).close()"
    user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return sh(*user, PYTHON, "-c", code, check=False).returncode == 0


def test_workers_run_as_their_own_user_with_no_capability_from_a_checkout_its_owner_reads() -> None:
    code = Path(tempfile.mkdtemp(prefix="dynod-code-", dir="/tmp"))  # 0700
    try:
        for package in ("dynod", "netns"):
            shutil.copytree(
                ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        # another user's, as a clone in a home directory: root reads it only with
        # CAP_DAC_READ_SEARCH (the workers keep it until their imports are done)
        for folder, _dirs, files in os.walk(code):
            for name in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(name, OWNER, OWNER)
        assert code.stat().st_mode & 0o777 == 0o700
        # the system's Python, with the venv's packages on its path but not its .pth files: the
        # venv's editable install would find this checkout's dynod wherever the copy cannot
        # be read, and so hide what the workers could not read
        packages = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
        env = dict(os.environ, PYTHONPATH=f"{code}{os.pathsep}{packages}")
        with running_daemon(cwd=str(code), python=PYTHON, env=env) as d:
            web = d.run_app("owner", "web")
            assert d.via_router("owner")[0] == 200
            found = workers(d)
            assert found, "no router worker"
            pids = {p.pid for p in found}
            uids = set()
            for p in found:
                held = status(p.pid)
                uid = int(held["Uid"].split()[0])
                assert set(held["Uid"].split()) == {str(uid)}, held["Uid"]
                assert set(held["Gid"].split()) == {str(uid)}, held["Gid"]
                assert held["Groups"] == ""
                for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                    assert int(held[caps], 16) == 0, (caps, held[caps])
                assert held["NoNewPrivs"] == "1"
                uids.add(uid)
            (uid,) = uids
            assert 61184 <= uid <= 65519
            with pytest.raises(KeyError):
                pwd.getpwuid(uid)
            # where systemd is PID 1 the id's dynamic-user lock is held, so it gives the id to
            # no service; released with the daemon
            lock = Path(f"/run/systemd/dynamic-uid/{uid}")
            if Path("/run/systemd/system").is_dir():
                assert lock.read_text() == f"dynod-router-{d.prefix}\n"
                probe = os.open(lock, os.O_RDONLY)
                try:
                    with pytest.raises(BlockingIOError):
                        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                finally:
                    os.close(probe)
            else:
                assert not lock.exists()
            said = d.client.call("GET", "/v1/status")["workers"]
            assert said == f"{len(found)} router processes, as uid {uid} (no capability)"
            rule = sh("nft", "list", "chain", "inet", d.prefix, "output").stdout
            assert f"meta skuid {uid} ip daddr . tcp dport @web accept" in rule
            # the router's every path, after the change of user: none imports or reads a file
            # of the checkout (the worker could not), and none ends a worker
            port = d.router_port
            host = b"Host: owner.localhost\r\n"
            assert first_line(port, b"GET / HTTP/1.0\r\n" + host + b"\r\n").endswith(b" 200 OK")
            chunked = (
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            # the body reaches the dyno (the h11 path), which does not take a POST
            assert b" 501 " in first_line(port, b"POST / HTTP/1.1\r\n" + host + chunked)
            smuggled = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            assert b" 400 " in first_line(port, b"GET / HTTP/1.1\r\n" + host + smuggled)
            huge = b"X: " + b"a" * 70000 + b"\r\n\r\n"
            assert b" 431 " in first_line(port, b"GET / HTTP/1.1\r\n" + host + huge)
            assert d.via_router("nobody-here")[0] == 404
            d.client.call("POST", "/v1/apps", {"name": "idle"})
            assert d.via_router("idle")[0] == 503  # H14: no web dyno
            d.wait_for(lambda: 'code=H14 desc="No web processes running"' in d.log(), "H14")
            assert {p.pid for p in workers(d)} == pids
            assert "router worker" not in d.log()  # none exited, none was started again
            # from the host, the workers' user reaches a web dyno's PORT; root (no mark) and
            # the dynos' user do not
            ip, dyno_port = web["ip"], int(web["port"])
            assert reaches(uid, ip, dyno_port)
            assert not reaches(0, ip, dyno_port)
            assert not reaches(pwd.getpwnam("nobody").pw_uid, ip, dyno_port)
        assert not lock.exists()
    finally:
        shutil.rmtree(code)
