"""Process inspection and checks (dynod/kernel/processes.py): commands, the environment script,
listening addresses read from /proc. No root needed."""

from __future__ import annotations

import time

import pytest

from dynod.errors import DynodError
from dynod.kernel import processes


def test_command_checks(tmp_path: object) -> None:
    processes.check_command("sh -c 'exit 0'", "/", "/usr/bin:/bin")
    processes.check_command("FOO=1 BAR=2 true", "/", "/usr/bin:/bin")
    processes.check_command("exec sleep 1", "/", "/usr/bin:/bin")
    processes.check_command("$HOME/bin/x", "/", "/usr/bin:/bin")
    # assignments alone before the first operator: nothing to look up (was refused as
    # "command not found: ;"); redirections before the program are skipped, theirs too
    processes.check_command("i=0; while [ $i -lt 3 ]; do i=$((i+1)); done", "/", "/usr/bin")
    for ok in ("> out.log echo hi", "2>&1 echo hi", "2>/dev/null X=1 echo hi", "&& true"):
        processes.check_command(ok, "/", "/usr/bin:/bin")
    for bad, words in [
        ("nosuchprog-q", "command not found: nosuchprog-q"),
        ("> log nosuchprog-q", "command not found: nosuchprog-q"),
        ("2>&1 nosuchprog-q", "command not found: nosuchprog-q"),
        ("2", "command not found: 2"),
        ("./nope", "no executable file"),
        ("", "no command"),
        ("echo 'unterminated", "cannot parse"),
    ]:
        with pytest.raises(DynodError) as err:
            processes.check_command(bad, "/", "/usr/bin:/bin")
        assert words in err.value.problem
    with pytest.raises(DynodError) as err:
        processes.check_command("true", "/no/such/dir", "/usr/bin")
    assert "does not exist" in err.value.problem


def test_env_script_quotes_any_value() -> None:
    import subprocess

    env = {"A": "plain", "B": 'it\'s "quoted" $HOME `x`', "C": "two\nlines", "D": ""}
    script = processes.env_script(env)
    show = '. /dev/stdin; for v in A B C D; do eval "printf %s\\| \\"\\$$v\\""; done'
    out = subprocess.run(
        ["/bin/sh", "-c", show],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == 'plain|it\'s "quoted" $HOME `x`|two\nlines||'
    processes.check_env_name("DATABASE_URL")
    for bad in ("1X", "A-B", "", "A B", "A=B"):
        with pytest.raises(DynodError):
            processes.check_env_name(bad)


def test_listening_addresses_are_read_from_proc(tmp_path) -> None:
    import os
    import socket

    with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        port = v4.getsockname()[1]
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", port))
        v6.listen()
        found = processes.listening_addresses(os.getpid(), port)
    assert found == {"127.0.0.1", "::"}
    assert processes.reachable_on(found, "172.16.0.6")  # through the IPv6 wildcard
    assert not processes.reachable_on({"127.0.0.1"}, "172.16.0.6")
    assert processes.reachable_on({"172.16.0.6"}, "172.16.0.6")


def test_a_command_over_the_limit_is_refused_quickly() -> None:
    began = time.monotonic()
    with pytest.raises(DynodError, match="at most 32768"):
        processes.check_command("true " + "a" * 1_000_000, "/", "/usr/bin:/bin")
    assert time.monotonic() - began < 0.5
    processes.check_command("true " + "a" * 30_000, "/", "/usr/bin:/bin")  # within it: fine


@pytest.mark.parametrize(
    "command",
    [
        "sleep 3600",
        "bundle exec puma -C config/puma.rb",
        "gunicorn app:app --bind 0.0.0.0:$PORT --workers ${WEB_CONCURRENCY:-2}",
        "/usr/bin/python3 -u app.py *.cfg",
        "  ./bin/web\t--port=5000  ",
        "~/bin/worker",
        "~deploy/bin/worker --fast",
        "sh",
        "bin/web+admin",
    ],
)
def test_one_plain_program_takes_its_shells_place(command: str) -> None:
    assert processes.in_place(command) == f"exec {command}"


@pytest.mark.parametrize(
    "command",
    [
        "",
        "   ",
        "sleep 1; true",
        "sleep 1 && true",
        "sleep 1 &",
        "sleep 1 | cat",
        "sleep 1 > log",
        "sleep 1 2>&1",
        "(sleep 1)",
        "sleep $(echo 1)",
        "sleep `echo 1`",
        "sleep '1'",
        'sleep "1"',
        "sleep \\1",
        "sleep 1 # nap",
        "sleep 1\ntrue",
        "FOO=1 sleep 1",
        "$PROGRAM --flag",
        "${PROGRAM}",
        "slee* 1",
        "-x",
        "echo hi",  # a builtin: `exec echo` would run /bin/echo instead
        "cd /tmp",
        "exec sleep 1",
        "local x",
        "true",
        "while",
        "{",
        "!",
        "source env.sh",
        "[[",
        "time sleep 1",
        "~",  # $HOME, which could be any word
        "~deploy",
        "~ /tmp",
        "+x 1",  # sh -c would take it for an option
        ":",
        ".",
        "chdir /tmp",
        "pushd /tmp",
    ],
)
def test_anything_else_keeps_its_shell(command: str) -> None:
    assert processes.in_place(command) == command


def test_in_place_runs_as_its_shell_would() -> None:
    """The same words, expanded the same way, with the same status, sh running either."""
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "NAP": "0", "LIST": "a  b"}
    for command in ("/usr/bin/printf %s: $LIST", "ls /nonexistent-dynod-dir", "sleep $NAP"):
        shown = processes.in_place(command)
        assert shown.startswith("exec ")
        before = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True)
        after = subprocess.run(["/bin/sh", "-c", shown], env=env, capture_output=True)
        assert (after.returncode, after.stdout) == (before.returncode, before.stdout)
