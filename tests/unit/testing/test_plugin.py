"""The plugin without a daemon: a user who is not root is told how to start one, and the tests
that need it are skipped (a pytest subprocess on a tiny project)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dynod.testing.daemon import router_url

REPO = Path(__file__).resolve().parent.parent.parent.parent

NOT_ROOT = "import os\nos.geteuid = lambda: 1000  # as a user, not root\n"
TEST = "def test_needs_a_daemon(dynod_app):\n    raise AssertionError('must not run')\n"


def test_without_a_daemon_a_user_is_told_how_to_start_one(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(NOT_ROOT)
    (tmp_path / "test_tiny.py").write_text(TEST)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]  # the plugin: its entry point
        + ["-rs", "--rootdir", str(tmp_path), "--dynod-socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout
    assert f"no dynod daemon answers on {tmp_path / 'none.sock'}" in run.stdout
    assert "sudo dynod daemon" in run.stdout


def test_the_router_url_is_reached_on_loopback() -> None:
    assert router_url({"router": "0.0.0.0:5000"}) == "http://127.0.0.1:5000"
    assert router_url({"router": "127.0.0.1:41234"}) == "http://127.0.0.1:41234"
