"""Formations on the real kernel (issue 9): ps:scale from the app's Procfile, convergence (up,
down, after a SIGKILLed daemon), ps, ps:restart, ps:stop, manual dynos beside the formation,
bad input that changes nothing, and ps:wait's success, timeout and crash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import (
    PYTHON,
    SYSTEM_PATH,
    DaemonProc,
    netns_names,
    port_elements,
    running_daemon,
)

pytestmark = pytest.mark.root


def router_get(d: DaemonProc, app: str) -> tuple[int, str]:
    status, body = d.via_router(app)
    return status, json.loads(body)["dyno"] if status < 400 and body.startswith(b"{") else ""


PROCFILE = f"web: {PYTHON} echo_app.py\nworker: sleep 1000\n# a comment\n\nclock: sleep 1000\n"
ENV = {"PATH": SYSTEM_PATH}


def scale(d: DaemonProc, app: str, *changes: str) -> subprocess.CompletedProcess[str]:
    # run from / : the Procfile is read from the app's recorded directory, not from here
    return d.cli("ps:scale", "--app", app, *changes, cwd="/", env=ENV)


def names_of(d: DaemonProc, app: str, formation: bool | None = None) -> list[str]:
    return [
        x["name"]
        for x in d.dynos(app)
        if formation is None or x["formation"] is formation and x["state"] != "stopping"
    ]


def formation_of(d: DaemonProc, app: str) -> dict[str, int]:
    return {p["type"]: p["quantity"] for p in d.client.formation(app)}


def make_app(d: DaemonProc, app: str, procfile: str = PROCFILE) -> None:
    (d.app_dir / "Procfile").write_text(procfile)
    created = d.cli("apps:create", app, "--dir", str(d.app_dir), cwd="/")
    assert created.returncode == 0, created.stderr
    info = d.cli("apps:info", app, cwd="/")
    assert f"Directory: {d.app_dir}" in info.stdout


def all_up(d: DaemonProc, app: str, count: int) -> bool:
    dynos = d.dynos(app)
    return len(dynos) == count and all(x["state"] == "up" for x in dynos)


def test_scale_ps_restart_stop_and_manual_dynos() -> None:
    with running_daemon() as d:
        make_app(d, "form")
        done = scale(d, "form", "web=2", "worker=1")
        assert done.returncode == 0, done.stderr
        assert "now running" in done.stdout and "web at 2" in done.stdout
        assert names_of(d, "form", formation=True) == ["web.1", "web.2", "worker.1"]
        waited = d.cli("ps:wait", "--app", "form", "--timeout", "30")
        assert waited.returncode == 0, waited.stderr
        # ready means served: the router reaches both web dynos of the formation
        assert {router_get(d, "form") for _ in range(4)} == {(200, "web.1"), (200, "web.2")}
        ps = d.cli("ps", "--app", "form").stdout
        assert re.search(rf"^=== web \([\w -]+\): {PYTHON} echo_app.py \(2\)$", ps, re.M), ps
        assert re.search(
            r"^web\.1: up \d{4}/\d\d/\d\d \d\d:\d\d:\d\d \+0000 \(~ \d+s ago\)", ps, re.M
        )
        assert re.search(r"^=== worker \([\w -]+\): sleep 1000 \(1\)$", ps, re.M), ps
        assert [x["formation"] for x in json.loads(d.cli("ps", "--app", "form", "--json").stdout)]

        # web+1 takes the lowest free number; web-2 stops the highest-numbered ones
        assert scale(d, "form", "web+1").returncode == 0
        assert names_of(d, "form", formation=True) == ["web.1", "web.2", "web.3", "worker.1"]
        assert scale(d, "form", "web-2").returncode == 0
        assert names_of(d, "form", formation=True) == ["web.1", "worker.1"]

        # a manual dyno of a formation type: outside it, never stopped by it, its own name
        manual = d.cli("run", "--app", "form", "--type", "worker", "--detach", "--", "sleep 999")
        assert manual.returncode == 0, manual.stderr
        assert manual.stdout.split()[0] == "worker.2"
        assert scale(d, "form", "worker=0").returncode == 0
        assert names_of(d, "form") == ["web.1", "worker.2"]
        ps = d.cli("ps", "--app", "form").stdout
        assert "=== worker: outside the formation (1)" in ps
        assert re.search(r"^worker\.2 \([\w -]+\): up .*: sleep 999", ps, re.M), ps

        # ps:restart: in place, as on Heroku: same names, namespaces and addresses, new
        # processes; the manual dyno too
        before = {x["name"]: x for x in d.dynos("form")}
        inodes = {n: os.stat(f"/run/netns/{x['netns']}").st_ino for n, x in before.items()}
        restarted = d.cli("ps:restart", "--app", "form")
        assert restarted.returncode == 0, restarted.stderr
        after = {x["name"]: x for x in d.dynos("form")}
        assert set(after) == set(before)
        for name, old in before.items():
            new = after[name]
            assert new["pid"] != old["pid"], name
            assert (new["id"], new["netns"], new["ip"]) == (old["id"], old["netns"], old["ip"])
            # the namespace is the same one, not one made again under the same name
            assert os.stat(f"/run/netns/{new['netns']}").st_ino == inodes[name], name
        waited = d.cli("ps:wait", "--app", "form", "--timeout", "30")
        assert waited.returncode == 0, waited.stderr
        assert router_get(d, "form") == (200, "web.1")  # routed to its new process and PORT

        # ps:stop: the formation's dyno comes back, the manual one stays stopped
        stopped = d.cli("ps:stop", "web.1", "--app", "form")
        assert stopped.returncode == 0 and "starts web.1 again" in stopped.stdout
        assert names_of(d, "form", formation=True) == ["web.1"]
        assert d.cli("ps:stop", "worker", "--app", "form").returncode == 0
        assert names_of(d, "form") == ["web.1"]

        # `dynod stop --app` (every dyno) scales the formation to 0 first
        assert d.cli("stop", "--app", "form").returncode == 0
        time.sleep(2.5)  # longer than one convergence period: nothing comes back
        assert d.dynos("form") == [] and formation_of(d, "form") == {"web": 0, "worker": 0}


@pytest.mark.parametrize(
    ("changes", "procfile", "says"),
    [
        (["nosuch=1"], PROCFILE, "has no 'nosuch' process type (it has: web, worker, clock)"),
        (["web=-1"], PROCFILE, "cannot read 'web=-1' as a scale"),
        (["worker=60", "clock=41"], PROCFILE, "at most 100"),
        (["web=1", "worker=2"], "web: sleep 1\nworker sleep 1\n", "line 2: 'worker sleep 1'"),
        (["web=1"], "web: no-such-program-here\n", "no-such-program-here"),
        (["run=1"], "run: sleep 1\n", "one-off dynos"),
    ],
)
def test_bad_input_changes_nothing(changes: list[str], procfile: str, says: str) -> None:
    with running_daemon() as d:
        make_app(d, "bad")
        assert scale(d, "bad", "worker=1").returncode == 0
        (d.app_dir / "Procfile").write_text(procfile)
        refused = scale(d, "bad", *changes)
        assert refused.returncode == 1
        assert says in refused.stderr and "fix: " in refused.stderr, refused.stderr
        assert formation_of(d, "bad") == {"worker": 1}
        assert names_of(d, "bad") == ["worker.1"]
        missing = scale(d, "nosuchapp", "web=1")
        assert missing.returncode == 1 and "no app named 'nosuchapp'" in missing.stderr


def test_scaling_up_and_down_20_times_leaves_no_kernel_objects() -> None:
    with running_daemon() as d:
        make_app(d, "churn")
        before = netns_names()
        for _ in range(20):
            assert scale(d, "churn", "web=1", "worker=2").returncode == 0
            assert len(d.dynos("churn")) == 3
            assert scale(d, "churn", "web=0", "worker=0").returncode == 0
        assert d.dynos("churn") == []
        assert {n for n in netns_names() - before if n.startswith(d.prefix)} == set()
        veths = re.compile(rf"^{d.prefix}-[0-9a-f]+$")

        def no_veth_left() -> bool:  # the kernel destroys a deleted namespace's veth lazily
            links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
            return not [w for w in re.findall(r"^\d+: ([^:@]+)", links, re.M) if veths.match(w)]

        d.wait_for(no_veth_left, "no veth of ours left", timeout=10)
        assert port_elements(d.prefix) == set()


def test_a_daemon_killed_during_a_scale_converges_after_restart() -> None:
    with running_daemon() as d:
        make_app(d, "killed")
        cli = subprocess.Popen(
            [sys.executable, "-m", "dynod", "--socket", d.socket, "ps:scale", "--app", "killed"]
            + ["worker=6", "web=1"],
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**ENV, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        try:
            d.wait_for(lambda: len(d.dynos("killed")) >= 2, "the scale under way")
            d.kill9()
        finally:
            cli.communicate(timeout=30)
        d.start()
        d.wait_for(lambda: all_up(d, "killed", 7), "converged after the restart", timeout=60)
        assert names_of(d, "killed", formation=True) == ["web.1"] + [
            f"worker.{n}" for n in range(1, 7)
        ]


def test_ps_wait_success_timeout_and_crash() -> None:
    with running_daemon() as d:
        procfile = f"web: {PYTHON} echo_app.py\ncrashy: echo about to fail; exit 3\n"
        make_app(d, "waits", procfile)
        assert scale(d, "waits", "web=1").returncode == 0
        ok = d.cli("ps:wait", "--app", "waits", "--timeout", "30")
        assert ok.returncode == 0 and "web.1" in ok.stdout, ok.stderr
        # a web dyno that never listens: the timeout, and its log lines
        (d.app_dir / "Procfile").write_text("web: sleep 1000\n")
        assert scale(d, "waits", "web=0").returncode == 0
        assert scale(d, "waits", "web=1").returncode == 0
        late = d.cli("ps:wait", "--app", "waits", "--timeout", "2")
        assert late.returncode == 1
        assert "not up after 2 s: web.1 is starting" in late.stderr, late.stderr
        assert "heroku[web.1]: Starting process with command `sleep 1000`" in late.stderr
        # a crash
        (d.app_dir / "Procfile").write_text(procfile)
        assert scale(d, "waits", "web=0", "crashy=1").returncode == 0
        crashed = d.cli("ps:wait", "--app", "waits", "--timeout", "60")
        assert crashed.returncode == 1
        assert "error: crashy.1 crashed" in crashed.stderr, crashed.stderr
        assert "app[crashy.1]: about to fail" in crashed.stderr
        assert "Process exited with status 3" in crashed.stderr
