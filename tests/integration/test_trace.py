"""`dynod trace` against the real kernel: verdicts and reasons for the paths the policy decides,
one trace at a time, bad input, and no trace table left behind: after each trace, after Ctrl-C
of the CLI, and after a daemon killed mid-trace (start-up sweeps it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import DaemonProc, gateway_of, leftovers, sh

pytestmark = pytest.mark.root

OTHER_PORT = "8080"  # where a worker running the echo app listens (APP_PORT)
START = 120.0  # seconds a daemon may take to start on a loaded machine (no timing is tested)


@contextlib.contextmanager
def patient_daemon(**kwargs: Any) -> Iterator[DaemonProc]:
    """running_daemon (tests/support.py), with a start-up that may be slow."""
    d = DaemonProc(**kwargs)
    try:
        yield d.start(timeout=START)
    finally:
        found = d.close()
        if found:
            raise AssertionError(f"the daemon left kernel objects behind: {found}")


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProc]:
    # --no-restart: a crashed dyno stays crashed, for the unreachable-FROM case
    with patient_daemon(extra=["--no-restart"]) as d:
        d.run_app("sushi", "web")
        d.run_app("sushi", "worker", env={"APP_PORT": OTHER_PORT})
        d.client.call("POST", "/v1/spaces", {"name": "acme"})
        d.client.call("POST", "/v1/apps", {"name": "tuna", "space": "acme"})
        d.run_app("tuna", "worker", env={"APP_PORT": OTHER_PORT})
        d.run_app("tuna", "worker", env={"APP_PORT": OTHER_PORT})
        yield d


def trace_tables(d: DaemonProc) -> list[str]:
    """Every trace table of this daemon: on the host, and in each of its dynos' namespaces."""
    name = f"{d.prefix}-trace"
    found = [f"host: {t}" for t in sh("nft", "list", "tables").stdout.splitlines() if name in t]
    for netns in os.listdir("/run/netns"):
        if netns.startswith(f"{d.prefix}-"):
            out = sh("ip", "netns", "exec", netns, "nft", "list", "tables", check=False).stdout
            found += [f"{netns}: {t}" for t in out.splitlines() if name in t]
    return found


def own_tables(d: DaemonProc) -> list[str]:
    """The host's nftables tables of this daemon (others run on a shared machine)."""
    return [t for t in sh("nft", "list", "tables").stdout.splitlines() if d.prefix in t]


def trace(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    result = d.cli("trace", *args)
    assert trace_tables(d) == []
    return result


def test_common_runtime_dyno_to_dyno_is_dropped_with_the_reason(daemon: DaemonProc) -> None:
    result = trace(daemon, "sushi/web.1", "sushi/worker.1", "tcp", OTHER_PORT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sushi/web.1 -> sushi/worker.1 tcp 8080: dropped" in out
    assert (
        f"dropped: dyno to dyno in the Common Runtime (table inet {daemon.prefix}, chain forward"
        in out
    )
    # the path: out of web.1's namespace, through the bridge table's anti-spoofing check
    assert "tracing on" in out and "from_dyno rule 1" in out
    assert f"netns {daemon.prefix}-sushi.web.1" in out
    assert "no answer" in out


def test_router_to_web_port_is_accepted(daemon: DaemonProc) -> None:
    web = daemon.dyno("sushi", "web.1")
    result = trace(daemon, "router", "web.1", "--app", "sushi")
    assert result.returncode == 0, result.stderr
    assert f"router -> sushi/web.1 tcp {web['port']}: accepted (probe: connected)" in result.stdout
    # as the router's workers send: from a socket of their user (the rule the router meets)
    assert "accepted: the router's workers (their own user) to a web dyno's PORT" in result.stdout
    # it reached web.1's own namespace
    assert f"sushi/web.1 (netns {daemon.prefix}-sushi.web.1):" in result.stdout
    as_json = json.loads(trace(daemon, "router", "sushi/web.1", "--json").stdout)
    assert as_json["verdict"]["outcome"] == "accepted"
    assert (as_json["dst"], as_json["dport"]) == (web["ip"], web["port"])
    assert any(s["hook"] == "output" and s["verdict"] == "accept" for s in as_json["steps"])


def test_the_host_without_the_routers_mark_is_refused(daemon: DaemonProc) -> None:
    web = daemon.dyno("sushi", "web.1")
    result = trace(daemon, "host", "sushi/web.1", "icmp")
    # the source the host's routing picked: the gateway of web.1's /30, on the bridge
    assert (
        f"trace icmp {gateway_of(web['ip'])} -> {web['ip']} (host -> sushi/web.1)" in result.stdout
    )
    assert "dropped: the host to a dyno: only the router" in result.stdout


def test_private_space_dyno_to_dyno_is_accepted(daemon: DaemonProc) -> None:
    result = trace(daemon, "tuna/worker.1", "tuna/worker.2", "tcp", OTHER_PORT)
    assert result.returncode == 0, result.stderr
    assert "tuna/worker.1 -> tuna/worker.2 tcp 8080: accepted (probe: connected)" in result.stdout
    assert "accepted: dyno to dyno in the same Private Space, on ports 1024-65535" in result.stdout
    ping = trace(daemon, "tuna/worker.2", "tuna/worker.1", "icmp")
    assert "accepted (probe: echo reply)" in ping.stdout
    low = trace(daemon, "tuna/worker.1", "tuna/worker.2", "tcp", "80")
    assert "dropped: dyno to dyno in the same Private Space: only ports 1024-65535" in low.stdout


def test_dyno_to_host_is_refused_but_dns_is_offered(daemon: DaemonProc) -> None:
    ssh = trace(daemon, "sushi/worker.1", "host", "tcp", "22")
    assert "sushi/worker.1 -> host tcp 22: dropped" in ssh.stdout
    assert "dropped: no other host service is offered to dynos" in ssh.stdout
    dns = trace(daemon, "sushi/worker.1", "host", "udp")
    assert "sushi/worker.1 -> host udp 53: accepted" in dns.stdout
    assert "accepted: a dynod service: DNS" in dns.stdout


def _start_slow_trace(d: DaemonProc) -> subprocess.Popen[str]:
    """A trace that waits 20 s for an answer that never comes (a dropped path)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynod", "trace", "sushi/web.1", "sushi/worker.1", OTHER_PORT]
        + ["--wait", "20"],
        env={**os.environ, "DYNOD_SOCKET": d.socket},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    d.wait_for(lambda: len(trace_tables(d)) == 4, "the trace's tables (host 2, web.1, worker.1)")
    return proc


def test_a_second_trace_is_refused_and_ctrl_c_leaves_nothing(daemon: DaemonProc) -> None:
    first = _start_slow_trace(daemon)
    try:
        second = daemon.cli("trace", "router", "sushi/web.1")
        assert second.returncode == 1
        assert "error: a trace is running: one trace at a time" in second.stderr
        assert "fix: wait for it to finish" in second.stderr
        assert len(trace_tables(daemon)) == 4  # the refusal took nothing from the first
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=20)
        assert first.returncode == 130, err
        assert "trace cancelled" in err
        daemon.wait_for(lambda: trace_tables(daemon) == [], "the trace's tables removed")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # and the daemon traces again
    again = trace(daemon, "router", "sushi/web.1")
    assert "accepted" in again.stdout


@pytest.mark.parametrize(
    ("args", "error", "fix"),
    [
        (["sushi/web.9", "host"], "no dyno web.9 in app sushi", "dynod ps --app sushi"),
        (["nope/web.1", "host"], "no app named 'nope'", "dynod apps"),
        (["web.1", "host"], "names a dyno but not its app", "--app"),
        (["sushi/web.1", "host", "sctp"], "unknown protocol 'sctp'", "tcp, udp or icmp"),
        (["sushi/web.1", "host", "icmp", "80"], "icmp has no ports", "leave the port out"),
        (["sushi/web.1", "host", "tcp", "70000"], "no such port: 70000", "1 to 65535"),
        (["sushi/web.1", "sushi/web.1"], "the same dyno", "another dyno"),
        (["host", "router"], "both the host", "between a dyno"),
        (["router", "sushi/web.1", "udp"], "only opens TCP", "trace tcp"),
        (["192.0.2.77", "host"], "neither a dyno's address nor the host's", "trace from"),
        (["sushi/web.1", "sushi/worker.1"], "which port of sushi/worker.1", "give one"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    daemon: DaemonProc, args: list[str], error: str, fix: str
) -> None:
    tables = own_tables(daemon)
    result = trace(daemon, *args)
    assert result.returncode == 1
    assert error in result.stderr and fix in result.stderr, result.stderr
    assert own_tables(daemon) == tables


def test_a_crashed_dyno_is_not_a_place_to_trace_from(daemon: DaemonProc) -> None:
    dyno = daemon.run("sushi", "crash", "exit 3")
    daemon.wait_for(
        lambda: daemon.dyno("sushi", dyno["name"])["state"] == "crashed", "the dyno crashed"
    )
    result = trace(daemon, f"sushi/{dyno['name']}", "host")
    assert result.returncode == 1
    assert f"FROM sushi/{dyno['name']} is crashed" in result.stderr
    assert "fix: wait until `dynod ps` shows it up" in result.stderr
    daemon.stop_dyno("sushi", dyno["name"])


def test_a_daemon_killed_or_stopped_mid_trace_leaves_nothing() -> None:
    with patient_daemon() as d:
        d.run_app("sushi", "web")
        d.run_app("sushi", "worker", env={"APP_PORT": OTHER_PORT})
        proc = _start_slow_trace(d)
        d.kill9()
        proc.communicate(timeout=20)
        assert len(trace_tables(d)) == 4  # what a killed daemon left
        d.start(timeout=START)
        assert trace_tables(d) == []
        assert d.dyno("sushi", "web.1")["state"] == "up"  # adopted, its namespace kept
        result = trace(d, "router", "sushi/web.1")
        assert "accepted (probe: connected)" in result.stdout
        # a daemon stopped (SIGTERM) mid-trace removes the trace's tables with the rest
        proc = _start_slow_trace(d)
        assert d.terminate() == 0
        proc.communicate(timeout=20)
        assert leftovers(d.prefix) == {}
