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
