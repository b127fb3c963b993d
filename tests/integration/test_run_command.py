"""`dynod run`'s words after `--` read as `heroku run` reads them, through the real CLI and
daemon: `sh -c 'a b'` keeps its script whole; a command that is one plain program runs in its
shell's place (processes.in_place), anything else under its shell as before."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from tests.support import running_daemon, sh

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


def _tree(netns: str) -> list[tuple[int, int, list[str]]]:
    """(pid, parent pid, argv) of each process in the namespace, as seen from the host."""
    found = []
    for pid in map(int, sh("ip", "netns", "pids", netns).stdout.split()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
        except (FileNotFoundError, ProcessLookupError):
            continue  # a process of the chain that exited meanwhile
        found.append((pid, parent, argv))
    return sorted(found)


def test_a_plain_command_takes_its_shells_place_and_anything_else_keeps_it() -> None:
    with running_daemon() as d:
        d.run("tree", "plain", "sleep $NAP", env={"NAP": "301"})
        d.run("tree", "listed", "sleep 302; true")
        d.run("tree", "quoted", "sleep '303'")
        seen: dict[str, list[tuple[int, int, list[str]]]] = {}

        def settled(ptype: str) -> bool:
            seen[ptype] = _tree(d.netns("tree", f"{ptype}.1"))
            return any(argv[:1] == ["sleep"] for _, _, argv in seen[ptype])

        for ptype in ("plain", "listed", "quoted"):
            d.wait_for(lambda p=ptype: settled(p), f"{ptype}'s sleep")
        # `sleep $NAP`: the init shell and sleep, its child, the word expanded as before
        (init, _, init_argv), (_, parent, argv) = seen["plain"]
        assert init_argv[:2] == ["/bin/sh", "-c"] and argv == ["sleep", "301"]
        assert parent == init
        # a list, and a quoted word: the shell that runs the command stays between them
        for ptype, nap in (("listed", "302"), ("quoted", "303")):
            argvs = [argv for _, _, argv in seen[ptype]]
            assert len(argvs) == 3 and ["sleep", nap] in argvs, argvs
            assert sum(argv[:2] == ["/bin/sh", "-c"] for argv in argvs) == 2, argvs
        # the status is the program's, and its errors read as they did
        status, lines = d.run_once("tree", "once", "ls /nonexistent-dynod-dir")
        assert status == 2 and any("nonexistent-dynod-dir" in line for line in lines), lines
        # a stop's SIGTERM ends the program, whose status is the dyno's
        sleep_pid = seen["plain"][1][0]
        d.stop_dyno("tree", "plain.1", grace=5)
        assert not os.path.exists(f"/proc/{sleep_pid}")
        lines = [line for line in d.log().splitlines() if "plain.1" in line]
        assert not any("R12" in line for line in lines), lines
        assert any("Process exited with status 143" in line for line in lines), lines


def test_a_program_that_ends_cleanly_on_sigterm_is_stopped_without_a_crash_note() -> None:
    """With no shell between, a stop's status is the program's: 0 from one that handles SIGTERM
    (as on Heroku), where the shell said 143; a stop within the first seconds is no crash."""
    with running_daemon() as d:
        script = d.app_dir / "graceful"
        script.write_text("#!/bin/sh\ntrap 'echo bye; exit 0' TERM\necho hi\nsleep 60 & wait\n")
        script.chmod(0o755)
        d.run("calm", "worker", "./graceful")
        d.wait_for(lambda: "hi" in d.output("calm", "worker.1"), "the program's first line")
        d.stop_dyno("calm", "worker.1", grace=5)
        lines = [line for line in d.log().splitlines() if "worker.1" in line]
        assert any("Process exited with status 0" in line for line in lines), lines
        assert not any("keep running" in line or "R12" in line for line in lines), lines


def test_a_stopped_dyno_s_output_has_no_line_of_its_init_shell() -> None:
    """dash, the dyno's init, said `Terminated` for its command's end at about one stop in
    three (an app line Heroku never shows): five stops, none (fails before, but for 0.4 %)."""
    with running_daemon() as d:
        for _ in range(5):
            name = d.run("quiet", "worker", "sleep 600")["name"]
            netns = d.netns("quiet", name)
            d.wait_for(
                lambda n=netns: any(argv[:1] == ["sleep"] for _, _, argv in _tree(n)),
                f"{name}'s sleep",
            )
            d.stop_dyno("quiet", name, grace=5)
        lines = [line for line in d.log().splitlines() if " app[worker." in line]
        assert lines == [], lines
        assert d.log().count("Process exited with status 143") == 5
