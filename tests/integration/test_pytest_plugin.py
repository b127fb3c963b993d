"""dynod's pytest plugin, run as a user's project runs it: a pytest subprocess on a tiny project.
Its apps are destroyed after a failing test too; with no daemon answering, root gets a throwaway
daemon for the session that leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PYTHON, leftovers, running_daemon

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent.parent

WEB = """
import http.server, os
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])),
                                http.server.SimpleHTTPRequestHandler).serve_forever()
"""

FAILING_TEST = """
from pathlib import Path

HERE = Path(__file__).parent


def test_fails_on_purpose(dynod_app):
    app = dynod_app(HERE / "site")
    (HERE / "made").write_text(app.name)
    assert app.get("/web.py").status == 200
    assert [d["name"] for d in app.dynos()] == ["web.1"]
    assert False, "failing on purpose"
"""

PASSING_TEST = """
from pathlib import Path

HERE = Path(__file__).parent


def test_an_app_on_a_throwaway_daemon(dynod_app, dynod_daemon):
    prefix = dynod_daemon.client.call("GET", "/v1/status")["prefix"]
    (HERE / "made").write_text(prefix + " " + dynod_daemon.home)
    app = dynod_app(HERE / "site")
    assert app.get("/web.py").status == 200
"""


@contextlib.contextmanager
def tiny_project(test: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="dynod-plugin-", dir="/tmp"))
    try:
        site = where / "site"
        site.mkdir()
        (site / "web.py").write_text(WEB)
        (site / "Procfile").write_text(f"web: {PYTHON} -u web.py\n")
        for path in (where, site):
            path.chmod(0o755)
        (where / "test_tiny.py").write_text(test)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def pytest_run(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DYNOD_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]  # the plugin: its entry point
        + ["-q", "--rootdir", str(where), *args, str(where)],
        capture_output=True,
        text=True,
        cwd=where,
        env=env,
        timeout=300,
    )


def test_teardown_destroys_the_app_of_a_failing_test() -> None:
    with running_daemon() as daemon, tiny_project(FAILING_TEST) as where:
        run = pytest_run(where, "--dynod-socket", daemon.socket)
        assert run.returncode == 1, run.stdout + run.stderr
        assert "1 failed" in run.stdout and "failing on purpose" in run.stdout, run.stdout
        made = (where / "made").read_text()
        assert made.startswith("site-")
        assert made not in {a["name"] for a in daemon.client.call("GET", "/v1/apps")}
        assert daemon.dynos() == []


def test_root_gets_a_throwaway_daemon_that_leaves_nothing(tmp_path: Path) -> None:
    with tiny_project(PASSING_TEST) as where:
        run = pytest_run(where, "--dynod-socket", str(tmp_path / "nobody-here.sock"))
        assert run.returncode == 0, run.stdout + run.stderr
        prefix, home = (where / "made").read_text().split()
        assert prefix.startswith("pt")
        assert leftovers(prefix) == {}
        assert not os.path.exists(home)  # its state, socket and log are gone
