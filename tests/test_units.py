"""Pure logic: names, addresses, firewall text, log lines. No root needed."""

from __future__ import annotations

import ipaddress

import pytest

from dynod.errors import DynodError
from dynod.kernel import firewall, processes
from dynod.kernel.addressing import Pool, mac_for
from dynod.kernel.network import Names
from dynod.logs.book import LogBook, split_output, timestamp
from dynod.rules import names


@pytest.mark.parametrize("good", ["sushi", "abc", "my-app-2", "a" + "b" * 28 + "c"])
def test_app_names_heroku_accepts(good: str) -> None:
    assert names.check_app(good) == good


@pytest.mark.parametrize("bad", ["", "ab", "Sushi", "1app", "app-", "a_b", "a" * 31, "sushi.x"])
def test_app_names_heroku_refuses(bad: str) -> None:
    with pytest.raises(DynodError) as err:
        names.check_app(bad)
    assert "invalid app name" in err.value.problem and err.value.fix


@pytest.mark.parametrize("bad", ["", "web.1", "a b", "x" * 129, "release"])
def test_process_types_refused(bad: str) -> None:
    with pytest.raises(DynodError):
        names.check_process_type(bad)


def test_process_types_accepted() -> None:
    for good in ("web", "worker", "clock_2", "Web-X", "x" * 128):
        assert names.check_process_type(good) == good


def test_dyno_names_and_numbers() -> None:
    assert names.parse_dyno_name("web.1") == ("web", 1)
    assert names.parse_dyno_name("my_worker.12") == ("my_worker", 12)
    for bad in ("web", "web.0", "web.x", ".1", "web.01"):
        with pytest.raises(DynodError):
            names.parse_dyno_name(bad)
    assert names.lowest_free_number(set()) == 1
    assert names.lowest_free_number({1, 2, 4}) == 3


def test_procfile_parsing() -> None:
    text = "# comment\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n\nworker:python w.py\nbad line\n"
    assert names.parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "python w.py",
    }


def test_pool_carves_slash30s_and_skips_the_bridge_slot() -> None:
    pool = Pool("172.16.0.0/12")
    assert pool.size == 2**18
    assert pool.bridge.gateway == "172.16.0.1"
    first = pool.allocate(set())
    assert first.slot == 1 and first.network == ipaddress.IPv4Network("172.16.0.4/30")
    assert (first.gateway, first.address) == ("172.16.0.5", "172.16.0.6")
    assert pool.allocate({1, 2}).address == "172.16.0.14"
    assert pool.allocate({2}).slot == 1  # the lowest free


def test_pool_exhaustion_error_names_the_fix() -> None:
    pool = Pool("10.0.0.0/28")
    assert pool.size == 4
    with pytest.raises(DynodError) as err:
        pool.allocate({1, 2, 3})
    assert "no free /30 left in 10.0.0.0/28" in err.value.problem and "--cidr" in err.value.fix
    with pytest.raises(DynodError):
        Pool("10.0.0.0/30")


def test_macs_are_derived_from_the_address() -> None:
    assert mac_for("172.16.0.6", 0x58) == "0a:58:ac:10:00:06"
    pool = Pool("172.16.0.0/12")
    s = pool.subnet(1)
    assert s.dyno_mac != s.host_mac
    assert pool.subnet(1).dyno_mac == Pool("172.16.0.0/12").subnet(1).dyno_mac


def test_kernel_names_fit_and_are_prefixed() -> None:
    n = Names("dynod")
    assert n.bridge == "dynod0"
    assert n.veth(0xFFFFFFFF) == "dynod-ffffffff" and len(Names("abcdef").veth(0xFFFFFFFF)) == 15
    assert n.veth_pattern.fullmatch("dynod-1a") and not n.veth_pattern.fullmatch("dynodx-1a")
    assert n.netns("sushi", "web", 1) == "dynod-sushi.web.1"
    assert n.netns("abc-web", "x", 1) != n.netns("abc", "web-x", 1)
    assert n.owns_netns("dynod-sushi.web.1") and not n.owns_netns("dynodx-sushi.web.1")
    for bad in ("Dynod", "d", "toolongx", "1ab", "a-b"):
        with pytest.raises(ValueError):
            Names(bad)


def test_firewall_text_keeps_per_dyno_facts_in_sets() -> None:
    common = firewall.Network("dynod0", "172.16.0.0/12", "172.16.0.1")
    layout = firewall.Layout(table="dynod", port_glob="dynod-*", common=common)
    spaces = tuple(
        firewall.Network(f"dynods{i}", f"10.{i}.0.0/16", f"10.{i}.0.1", f"192.0.2.{i}")
        for i in range(1, 6)
    )
    with_spaces = firewall.Layout(table="dynod", port_glob="dynod-*", common=common, spaces=spaces)
    ports = [
        firewall.Port(
            f"dynod-{i:x}", mac_for(f"172.16.0.{4 * i + 2}", 0x58), f"172.16.0.{4 * i + 2}"
        )
        for i in range(1, 40)
    ]
    web = [firewall.WebTarget(p.ip, 5000 + i) for i, p in enumerate(ports)]
    small = firewall.ruleset(layout, ports[:1], web[:1])
    large = firewall.ruleset(layout, ports, web)
    rules = [line for line in large.splitlines() if "@" in line or "drop" in line]
    assert rules == [line for line in small.splitlines() if "@" in line or "drop" in line]
    assert large.count("dynod-") > small.count("dynod-")  # only the elements grew
    spaced = firewall.ruleset(with_spaces, ports, web)
    assert rules == [line for line in spaced.splitlines() if "@" in line or "drop" in line]
    assert '"dynods5" . "dynods5"' in spaced and "10.5.0.0/16 : 192.0.2.5" in spaced
    assert '"dynods5" . 10.5.0.1 . tcp . 80' in spaced
    assert '"dynod0" . 172.16.0.1 . tcp . 80' not in spaced  # no internal router there
    assert "ip saddr 172.16.0.0/12 masquerade" in large
    assert "meta mark 0x6479 ip daddr . tcp dport @web accept" in large
    assert firewall.add_dyno(layout, ports[0], web[0]) == (
        'add element bridge dynod ports { "dynod-1" . 0a:58:ac:10:00:06 . 172.16.0.6 }\n'
        "add element inet dynod web { 172.16.0.6 . 5000 }\n"
    )
    assert "delete element bridge dynod ports" in firewall.remove_dyno(layout, ports[0])
    assert firewall.remove(layout).count("delete table") == 2


def test_output_is_cut_into_lines_and_long_lines_split() -> None:
    lines, rest = split_output(b"", b"one\ntwo\r\nthr")
    assert (lines, rest) == (["one", "two"], b"thr")
    lines, rest = split_output(rest, b"ee\n")
    assert (lines, rest) == (["three"], b"")
    lines, rest = split_output(b"", b"x" * 25_000 + b"\n")
    assert [len(x) for x in lines] == [10_000, 10_000, 5_000] and rest == b""
    lines, _ = split_output(b"", b"\xff\xfebad\n")
    assert lines == ["\\xff\\xfebad"]


def test_log_lines_have_heroku_format(tmp_path: object) -> None:
    stamp = timestamp()
    assert stamp.endswith("+00:00") and len(stamp) == len("2026-11-21T12:00:00.123456+00:00")
    book = LogBook(None, echo=None)
    line = book.emit("sushi", "app[web.1]", "hello")
    text = str(line)
    assert text.endswith(" app[web.1]: hello") and text.split(" ")[0].endswith("+00:00")
    assert book.recent(lambda x: x.app == "sushi", 10) == [line]
    assert book.recent(lambda x: x.app == "other", 10) == []


def test_command_checks(tmp_path: object) -> None:
    processes.check_command("sh -c 'exit 0'", "/", "/usr/bin:/bin")
    processes.check_command("FOO=1 BAR=2 true", "/", "/usr/bin:/bin")
    processes.check_command("exec sleep 1", "/", "/usr/bin:/bin")
    processes.check_command("$HOME/bin/x", "/", "/usr/bin:/bin")
    for bad, words in [
        ("nosuchprog-q", "command not found"),
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


def test_a_default_drop_firewall_elsewhere_is_reported() -> None:
    from dynod.kernel.host import foreign_drop_policies

    class FakeNft:
        def ruleset(self) -> list[dict[str, object]]:
            return [
                {"table": {"family": "inet", "name": "filter"}},
                {
                    "chain": {
                        "family": "inet",
                        "table": "filter",
                        "name": "forward",
                        "hook": "forward",
                        "policy": "drop",
                    }
                },
                {
                    "chain": {
                        "family": "inet",
                        "table": "filter",
                        "name": "output",
                        "hook": "output",
                        "policy": "drop",
                    }
                },
                {
                    "chain": {
                        "family": "inet",
                        "table": "dynod",
                        "name": "input",
                        "hook": "input",
                        "policy": "drop",
                    }
                },
                {
                    "chain": {
                        "family": "ip",
                        "table": "nat",
                        "name": "input",
                        "hook": "input",
                        "policy": "accept",
                    }
                },
            ]

    warnings = foreign_drop_policies(FakeNft(), "dynod")  # type: ignore[arg-type]
    assert len(warnings) == 1
    assert "table inet filter chain forward drops forward traffic" in warnings[0]


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


def test_output_file_reads_new_lines_and_gives_read_space_back(tmp_path) -> None:
    import os

    from dynod.logs.book import OutputFile

    path = tmp_path / "dyno.out"
    with open(path, "ab", buffering=0) as dyno:
        reader = OutputFile(str(path), 0)
        assert reader.read_lines() == []
        dyno.write(b"first\nsec")
        assert reader.read_lines() == ["first"]
        dyno.write(b"ond\n" + b"x" * 99 + b"\n")
        assert reader.read_lines() == ["second", "x" * 99]
        block = (b"y" * 1023 + b"\n") * 1024  # 1 MiB a write
        for _ in range(6):
            dyno.write(block)
            while reader.read_lines():
                pass
        size = os.stat(path).st_size
        assert size > 6 << 20  # offsets stay valid: the file keeps its size...
        assert os.stat(path).st_blocks * 512 < 3 << 20  # ...but what was read is given back
        dyno.write(b"tail without newline")
        assert reader.read_lines() == [] and reader.flush() == ["tail without newline"]


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


V1_SCHEMA = """
CREATE TABLE apps (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE dynos (
    id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL REFERENCES apps(name),
    type TEXT NOT NULL, number INTEGER NOT NULL, state TEXT NOT NULL,
    slot INTEGER NOT NULL UNIQUE, ip TEXT NOT NULL, port INTEGER, pid INTEGER, pid_start REAL,
    netns TEXT NOT NULL UNIQUE, veth TEXT NOT NULL UNIQUE, command TEXT NOT NULL,
    cwd TEXT NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, env TEXT NOT NULL,
    detached INTEGER NOT NULL, restarts INTEGER NOT NULL DEFAULT 0, log_path TEXT NOT NULL,
    log_offset INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
    UNIQUE (app, type, number));
CREATE TABLE draining (slot INTEGER PRIMARY KEY, veth TEXT NOT NULL);
INSERT INTO apps VALUES ('sushi', 1.0);
INSERT INTO dynos (id, app, type, number, state, slot, ip, port, netns, veth, command, cwd, uid,
    gid, env, detached, log_path, created_at)
  VALUES (7, 'sushi', 'web', 1, 'up', 1, '172.16.0.6', 3000, 'dynod-sushi.web.1', 'dynod-7',
    'x', '/', 1000, 1000, '{}', 1, '/tmp/x', 1.0);
INSERT INTO draining VALUES (2, 'dynod-9');
UPDATE sqlite_sequence SET seq = 9 WHERE name = 'dynos';
"""


def test_an_issue_2_state_is_upgraded_without_losing_a_dyno(tmp_path) -> None:
    import sqlite3

    from dynod.state.store import State

    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(V1_SCHEMA)
    db.close()
    state = State(str(tmp_path))
    try:
        (dyno,) = state.dynos()
        assert (dyno.id, dyno.name, dyno.space, dyno.slot) == (7, "web.1", "", 1)
        app = state.app("sushi")
        assert app is not None and app.space == "" and not app.dns_discovery
        assert state.draining() == {("", 2): "dynod-9"}
        assert state.next_dyno_id() == 10  # no veth name is handed out twice
        assert state.slots_unavailable("") == {1, 2} and state.slots_unavailable("acme") == set()
    finally:
        state.close()
    State(str(tmp_path)).close()  # opening it again changes nothing


def test_space_ranges_are_picked_and_checked() -> None:
    from dynod.rules import spaces

    used = [ipaddress.IPv4Network("10.0.0.0/16"), ipaddress.IPv4Network("10.1.5.0/24")]
    assert str(spaces.next_free_range(used)) == "10.2.0.0/16"
    with pytest.raises(DynodError) as err:
        spaces.check_range_free(ipaddress.IPv4Network("10.1.0.0/16"), {"space acme": used[1]})
    assert "overlaps space acme" in err.value.problem
    assert spaces.allows([ipaddress.IPv4Network("0.0.0.0/0")], "198.51.100.7")
    assert not spaces.allows([ipaddress.IPv4Network("203.0.113.0/24")], "198.51.100.7")
    assert not spaces.allows([ipaddress.IPv4Network("0.0.0.0/0")], "::1")
    with pytest.raises(DynodError) as err:
        spaces.check_nat_address("198.51.100.9", {"192.0.2.2"}, [])
    assert "not an address of this host" in err.value.problem
