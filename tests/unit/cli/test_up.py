"""`dynod up`'s pieces that need no daemon: the app name from a directory, the plan from the
Procfile and TYPE=N, the prefixed (and coloured) lines, and which log lines end a session."""

from __future__ import annotations

import threading

import click
import pytest

from dynod.cli.prefix import Prefixer, parse
from dynod.cli.up import Session, app_name_for, plan
from dynod.errors import DynodError


@pytest.mark.parametrize(
    ("directory", "name"),
    [
        ("/home/ann/shop", "shop"),
        ("/srv/My_Shop 2", "my-shop-2"),
        ("/x/2024-shop-", "shop"),
        ("/x/" + "a" * 40, "a" * 30),
        ("/x/a-" + "b" * 27 + "-c", "a-" + "b" * 27),  # cut at 30, no dash at the end
    ],
)
def test_the_app_name_follows_herokus_rule(directory: str, name: str) -> None:
    assert app_name_for(directory) == name


def test_a_directory_name_with_no_usable_letters_asks_for_app() -> None:
    with pytest.raises(DynodError) as err:
        app_name_for("/srv/42")
    assert "--app" in err.value.fix


def test_the_plan_is_one_of_each_type_or_the_arguments() -> None:
    commands = {"web": "a", "worker": "b", "release": "c"}
    assert plan(commands, (), "Procfile") == {"web": 1, "worker": 1}
    assert plan(commands, ("web=2", "worker=0"), "Procfile") == {"web": 2, "worker": 0}
    with pytest.raises(DynodError, match="no 'clock' process type"):
        plan(commands, ("clock=1",), "Procfile")
    with pytest.raises(DynodError, match="runs nothing"):
        plan(commands, ("web=0",), "Procfile")
    with pytest.raises(DynodError, match="takes TYPE=N"):
        plan(commands, ("web+1",), "Procfile")


def test_prefixes_are_aligned_and_plain_without_a_terminal() -> None:
    p = Prefixer(colour=False)
    p.expect(["web.1", "worker.1"])
    assert p.format("web.1", "hi") == "web.1    | hi"
    assert p.format("worker.1", "yo") == "worker.1 | yo"
    assert p.format("clock.10", "") == "clock.10 |"


def test_each_dyno_has_its_colour_on_a_terminal() -> None:
    p = Prefixer(colour=True)
    p.expect(["web.1", "web.2"])
    web1, web2 = p.format("web.1", "a"), p.format("web.2", "b")
    assert web1 == click.style("web.1 |", fg="cyan") + " a"
    assert web2 == click.style("web.2 |", fg="yellow") + " b"
    assert click.unstyle(web2) == "web.2 | b"


def test_log_lines_are_parsed() -> None:
    line = parse("2026-11-25T22:00:00.000001+00:00 heroku[web.1]: Process exited with status 3\n")
    assert line is not None
    assert (line.platform, line.name, line.text) == (True, "web.1", "Process exited with status 3")
    assert parse("not a log line") is None


def _session() -> Session:
    return Session(Prefixer(colour=False), since="2026-11-25T22:00:00.000000+00:00")


def test_the_first_exit_ends_the_session_but_a_restart_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = _session()
    t = "2026-11-25T22:00:01.000000+00:00"
    s.line("2026-11-25T21:00:00.000000+00:00 heroku[web.1]: Process exited with status 9")
    assert not s.ended.is_set()  # before the session: history
    s.line(f"{t} heroku[web.1]: State changed from up to starting")
    s.line(f"{t} heroku[web.1]: Process exited with status 143")
    assert not s.ended.is_set()  # a restart on purpose (config:set, ps:restart)
    s.line(f"{t} app[worker.1]: Process exited with status 4")
    assert not s.ended.is_set()  # the dyno's own output, not the platform's
    s.line(f"{t} heroku[worker.1]: Process exited with status 4")
    assert s.ended.is_set() and (s.who, s.status) == ("worker.1", 4)
    out = capsys.readouterr().out
    assert "worker.1 | heroku: Process exited with status 4" in out
    assert "status 9" not in out


def test_drained_waits_for_each_formation_dyno_s_process_exited_line() -> None:
    """Once its dynos are stopped, `up` returns only after each one's "Process exited" was
    shown (its last output comes before that line), or after the bound."""
    s = Session(
        Prefixer(colour=False),
        since="2026-11-25T22:00:00.000000+00:00",
        types=frozenset({"web", "worker"}),
    )
    t = "2026-11-25T22:00:01.000000+00:00"
    s.line(f"{t} heroku[web.1]: Starting process with command `x`")
    s.line(f"{t} app[worker.1]: hello")
    s.line(f"{t} heroku[run.1]: Starting process with command `y`")  # not the formation's
    assert not s.drained(0)
    s.line(f"{t} heroku[web.1]: Process exited with status 143")
    assert not s.drained(0)  # worker.1 still runs
    s.stopping = True

    def later() -> None:
        s.line(f"{t} app[worker.1]: bye")
        s.line(f"{t} heroku[worker.1]: Process exited with status 0")

    threading.Timer(0.05, later).start()
    assert s.drained(30)  # woken by the line, long before the bound
    s.line(f"{t} heroku[web.1]: Starting process with command `x`")  # a restart: it runs again
    assert not s.drained(0)
