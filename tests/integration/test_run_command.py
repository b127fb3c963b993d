"""`dynod run`'s words after `--` read as `heroku run` reads them, through the real CLI and
daemon: `sh -c 'a b'` keeps its script whole."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support import running_daemon

pytestmark = pytest.mark.root


def test_sh_c_with_a_quoted_script_runs_the_whole_script() -> None:
    with running_daemon() as d:
        foreground = d.cli("run", "--app", "sushi", "--type", "once", "--", "sh", "-c", "exit 7")
        assert foreground.returncode == 7, foreground.stderr
        detached = d.cli(
            "run", "--app", "sushi", "--type", "web", "--detach", "--",
            "sh", "-c", "exec /usr/bin/python3 -u echo_app.py",
        )  # fmt: skip
        assert detached.returncode == 0, detached.stderr
        d.wait_for(lambda: d.dyno("sushi", "web.1")["state"] == "up", "the server up")
        request = urllib.request.Request(
            f"http://127.0.0.1:{d.router_port}/", headers={"Host": "sushi.localhost"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["dyno"] == "web.1"
        dyno = d.dyno("sushi", "web.1")
        assert dyno["restarts"] == 0 and dyno["command"] == (
            'sh -c "exec /usr/bin/python3 -u echo_app.py"'
        )


def test_a_detached_dyno_that_exits_0_at_once_says_how_its_command_was_read() -> None:
    with running_daemon() as d:
        started = d.cli("run", "--app", "quick", "--type", "worker", "-d", "--", "true", "x y")
        assert started.returncode == 0, started.stderr
        d.wait_for(lambda: "keep running" in d.log(), "the note")
        assert "Its command was read as: /bin/sh -c 'true \"x y\"'" in d.log()
