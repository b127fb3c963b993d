"""Config vars through the real CLI and daemon: set, get and unset; a dyno sees a value with a
newline and `=`; a change restarts exactly the app's dynos; no value reaches a log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.support import PYTHON, DaemonProc, running_daemon

pytestmark = pytest.mark.root

SECRET = "pa=ss\nword-Zq9x"  # a newline and an `=`; written to no log, so findable if it is
# A worker that prints a digest of $V (never $V itself: its output is in the log).
DIGEST = (
    f"{PYTHON} -u -c 'import hashlib, os, time; "
    'print("digest", hashlib.sha256(os.environ.get("V", "").encode()).hexdigest()); '
    "time.sleep(600)'"
)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def env_via_router(d: DaemonProc, app: str) -> dict[str, Any]:
    status, body = d.via_router(app)
    assert status == 200, (status, body)
    env: dict[str, Any] = json.loads(body)["env"]
    return env


def pids(d: DaemonProc, app: str) -> dict[str, int]:
    return {x["name"]: x["pid"] for x in d.dynos(app)}


def test_set_get_unset_restart_exactly_the_app_and_no_value_in_any_log() -> None:
    with running_daemon() as d:
        web = d.run_app("cfg")
        d.run("cfg", "worker", DIGEST)
        d.run("other", "worker", DIGEST)
        d.wait_for(lambda: digest("") in d.output("cfg", "worker.1"), "the worker's first digest")
        before = {"cfg": pids(d, "cfg"), "other": pids(d, "other")}

        done = d.cli("config:set", "--app", "cfg", f"V={SECRET}", "PLAIN=1")
        assert done.returncode == 0, done.stderr
        assert done.stderr == "Setting V, PLAIN and restarting cfg... done, v2\n"

        after = pids(d, "cfg")
        assert all(after[name] != pid for name, pid in before["cfg"].items()), (before, after)
        assert pids(d, "other") == before["other"]  # another app's dyno keeps its process
        d.wait_for(lambda: d.dyno("cfg", "web.1")["state"] == "up", "web.1 up again")
        assert d.dyno("cfg", "web.1")["port"] != web["port"]  # a new PORT, as on a restart
        env = env_via_router(d, "cfg")
        assert env["V"] == SECRET and env["PLAIN"] == "1" and env["DYNO"] == "web.1"
        d.wait_for(lambda: digest(SECRET) in d.output("cfg", "worker.1"), "the new digest")

        got = d.cli("config:get", "--app", "cfg", "V")
        assert got.returncode == 0 and got.stdout == SECRET + "\n"
        listing = d.cli("config", "--app", "cfg", "--json")
        assert json.loads(listing.stdout) == {"PLAIN": "1", "V": SECRET}
        assert json.loads(d.cli("config", "--app", "other", "--json").stdout) == {}

        unset = d.cli("config:unset", "--app", "cfg", "V")
        assert (
            unset.returncode == 0 and "Unsetting V and restarting cfg... done, v3" in unset.stderr
        )
        assert "V" not in env_via_router_when_up(d, "cfg")

        logs = d.cli("logs", "--app", "cfg", "-n", "1000").stdout
        assert "Set V, PLAIN config vars" in logs and "Release v2 created" in logs
        assert "Restarting" in logs
        for text in (logs, d.log(), (d.dir / "state" / "dynod.log").read_text()):
            assert "pa=ss" not in text and "word-Zq9x" not in text


def env_via_router_when_up(d: DaemonProc, app: str) -> dict[str, Any]:
    d.wait_for(lambda: d.dyno(app, "web.1")["state"] == "up", "web.1 up")
    return env_via_router(d, app)


def test_run_e_wins_for_its_dyno_platform_names_are_refused_and_bad_input_changes_nothing() -> None:
    with running_daemon() as d:
        d.run_app("prec")
        assert d.cli("config:set", "--app", "prec", "WHO=config").returncode == 0
        one = d.cli(
            "run", "--app", "prec", "--type", "once", "-e", "WHO=run", "--",
            "sh", "-c", 'echo "who=$WHO"',
        )  # fmt: skip
        assert one.returncode == 0 and one.stdout.strip() == "who=run", one.stderr
        assert env_via_router_when_up(d, "prec")["WHO"] == "config"

        pid = d.dyno("prec", "web.1")["pid"]
        for args, problem in [
            (["PORT=80"], "PORT is set by the platform"),
            (["OK=1", "BAD-NAME=1"], "invalid config var name 'BAD-NAME'"),
            (["NOVALUE"], "'NOVALUE' is not NAME=VALUE"),
        ]:
            refused = d.cli("config:set", "--app", "prec", *args)
            assert refused.returncode == 1 and problem in refused.stderr, refused.stderr
            assert "fix: " in refused.stderr
        missing = d.cli("config:set", "--app", "nope", "A=1")
        assert missing.returncode == 1 and "no app named 'nope'" in missing.stderr
        assert json.loads(d.cli("config", "-a", "prec", "--json").stdout) == {"WHO": "config"}
        assert d.dyno("prec", "web.1")["pid"] == pid  # nothing was restarted


# What a dyno prints of the four variables the caller passes on.
SHOW = 'echo "env=$PATH|$TZ|$LANG|$LC_ALL"'


def test_config_vars_win_over_the_caller_s_path_lang_lc_all_and_tz() -> None:
    """defaults < the caller's PATH, LANG, LC_ALL, TZ < config vars < run -e < platform: for a
    one-off (`run`), a detached process dyno (`run --type`) and a formation dyno (`ps:scale`)."""
    caller = {"TZ": "Europe/Paris", "LANG": "fr_FR.UTF-8", "LC_ALL": "fr_FR.UTF-8"}
    with running_daemon() as d:
        (d.app_dir / "Procfile").write_text(f"worker: sh -c '{SHOW}; exec sleep 600'\n")
        assert d.cli("apps:create", "envs", "--dir", str(d.app_dir), cwd="/").returncode == 0
        one = d.cli("run", "--app", "envs", "--no-tty", "--", SHOW, env=caller)
        assert one.returncode == 0, one.stderr
        path = one.stdout.strip().removeprefix("env=").split("|")[0]
        assert one.stdout.strip() == f"env={path}|Europe/Paris|fr_FR.UTF-8|fr_FR.UTF-8"

        config = ["TZ=UTC", "PATH=/x:/usr/bin:/bin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8"]
        assert d.cli("config:set", "--app", "envs", *config).returncode == 0
        want = "env=/x:/usr/bin:/bin|UTC|C.UTF-8|C.UTF-8"
        one = d.cli("run", "--app", "envs", "--no-tty", "--", SHOW, env=caller)
        assert one.returncode == 0 and one.stdout.strip() == want, (one.stdout, one.stderr)
        scaled = d.cli("ps:scale", "--app", "envs", "worker=1", cwd="/", env=caller)
        assert scaled.returncode == 0, scaled.stderr
        detached = d.cli(
            "run", "--app", "envs", "--type", "clock", "--detach", "--", f"{SHOW}; exec sleep 600",
            env=caller,
        )  # fmt: skip
        assert detached.returncode == 0, detached.stderr
        for name in ("worker.1", "clock.1"):
            d.wait_for(lambda n=name: want in d.output("envs", n), f"{name}'s environment")

        # `run -e` wins over a config var, for its dyno only
        tokyo = d.cli(
            "run", "--app", "envs", "--no-tty", "-e", "TZ=Asia/Tokyo", "--", SHOW, env=caller
        )
        assert tokyo.stdout.strip() == "env=/x:/usr/bin:/bin|Asia/Tokyo|C.UTF-8|C.UTF-8"
        # without the config var, the caller's value is back
        assert d.cli("config:unset", "--app", "envs", "TZ").returncode == 0
        one = d.cli("run", "--app", "envs", "--no-tty", "--", SHOW, env=caller)
        assert one.stdout.strip() == "env=/x:/usr/bin:/bin|Europe/Paris|C.UTF-8|C.UTF-8"
