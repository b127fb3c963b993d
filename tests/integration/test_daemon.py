"""The daemon's life: crashes and restarts, bad input, limits, and leaving nothing behind."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from dynod.errors import DynodError
from dynod.kernel.addressing import Pool
from netns import namespace, nsid
from tests.support import (
    DaemonProc,
    gateway_of,
    leftovers,
    port_elements,
    read,
    running_daemon,
    sh,
    unique_prefix,
)

pytestmark = pytest.mark.root


def router_get(daemon: DaemonProc, app: str) -> tuple[int, str]:
    status, body = daemon.via_router(app)
    return status, json.loads(body)["dyno"] if status < 400 and body.startswith(b"{") else ""


def test_sigkilled_daemon_adopts_live_dynos_and_cleans_dead_ones() -> None:
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        doomed = d.run("sushi", "worker", "sleep 600")
        d.kill9()
        # While the daemon is dead: the worker dies, and junk with the daemon's prefix appears.
        os.kill(doomed["pid"], signal.SIGKILL)
        sh("ip", "netns", "add", f"{d.prefix}-junk-web.9")
        sh(
            "ip",
            "link",
            "add",
            f"{d.prefix}-ffff",
            "type",
            "veth",
            "peer",
            "name",
            f"{d.prefix}-fffe",
        )
        # a gateway no dyno has (routes, and the dyno's entry), and a /30's route alone
        bridge, pool = f"{d.prefix}0", Pool(d.cidr)
        stray, lone = pool.subnet(50), pool.subnet(51)
        for subnet in (stray, lone):
            gateway, routed = subnet.gateway, str(subnet.network)
            sh("ip", "route", "add", "local", gateway, "dev", bridge, "table", "local",
               "proto", "static", "src", gateway)  # fmt: skip
            sh("ip", "route", "add", routed, "dev", bridge, "proto", "static", "scope", "link",
               "src", gateway)  # fmt: skip
        sh("ip", "neigh", "replace", stray.address, "lladdr", stray.dyno_mac, "dev", bridge,
           "nud", "permanent")  # fmt: skip
        sh("ip", "route", "del", "local", lone.gateway, "dev", bridge, "table", "local")
        assert psutil.pid_exists(web["pid"])
        d.start()
        routes = sh("ip", "route", "show", "table", "all", "dev", bridge).stdout
        held = set(routes.split())
        for gone in (stray.gateway, stray.network, lone.network, gateway_of(doomed["ip"])):
            assert str(gone) not in held, (gone, routes)
        assert f"local {gateway_of(web['ip'])} " in routes
        pinned = sh("ip", "neigh", "show", "dev", bridge, "nud", "permanent").stdout
        assert pinned.split() == [web["ip"], "lladdr", Pool(d.cidr).subnet(1).dyno_mac, "PERMANENT"]
        dynos = {x["name"]: x for x in d.dynos("sushi")}
        assert list(dynos) == ["web.1"], dynos
        assert dynos["web.1"]["pid"] == web["pid"] and dynos["web.1"]["state"] == "up"
        assert router_get(d, "sushi") == (200, "web.1")
        names = sh("ip", "netns", "list").stdout
        assert d.netns("sushi", "worker.1") not in names
        assert f"{d.prefix}-junk-web.9" not in names
        assert f"{d.prefix}-ffff" not in sh("ip", "-o", "link").stdout
        allowed = {ip for _, _, ip in port_elements(d.prefix)}
        assert allowed == {web["ip"]}, allowed
        log = d.log()
        assert "heroku[web.1]: Adopted again" in log
        assert "heroku[worker.1]: Cleaned up after daemon restart" in log
        # The adopted dyno is still supervised: its output still flows, and stopping it works.
        marker = f"/after-restart-{random.randrange(10**6)}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{d.router_port}{marker}", headers={"Host": "sushi.localhost"}
        )
        urllib.request.urlopen(request, timeout=10).read()
        d.wait_for(lambda: marker in d.output("sushi", "web.1"), "output of the adopted dyno")
        assert d.stop_dyno("sushi", "web.1")["stopped"] == ["web.1"]
        assert not psutil.pid_exists(web["pid"]) or psutil.Process(web["pid"]).status() == "zombie"


def namespace_ids() -> dict[str, int]:
    """`ip netns list-id`: each named namespace's id in the host's."""
    found = {}
    for line in sh("ip", "netns", "list-id").stdout.splitlines():
        match = re.fullmatch(r"nsid (\d+) \(iproute2 netns name: (\S+)\)", line.strip())
        if match:
            found[match[2]] = int(match[1])
    return found


def host_end_nsid(netns: str) -> int:
    """The id the host's end of the dyno's veth gives the namespace of its other end
    (`ip -d link show`'s link-netnsid): what each notification about that link carries."""
    inner = sh("ip", "-n", netns, "-o", "link", "show", "eth0").stdout
    host_index = re.search(r"eth0@if(\d+):", inner)
    assert host_index, inner
    (link,) = [
        link
        for link in json.loads(sh("ip", "-j", "link", "show").stdout)
        if link["ifindex"] == int(host_index[1])
    ]
    return int(link["link_netnsid"])


def test_each_dyno_namespace_gets_an_id_below_every_earlier_one_across_a_sigkill() -> None:
    """The kernel finds a namespace's id by walking the host's ids upwards (netns/nsid.py): the
    daemon gives each new dyno's namespace an id below all it gave before, from the top of the
    range, before its veth exists, so the veth's notifications carry that id and find it first.
    A daemon started again after SIGKILL counts on from below what its adopted dyno kept."""
    with running_daemon() as d:
        d.run("ids", "worker", "sleep 600")
        d.run("ids", "worker", "sleep 600")
        first, second = (d.netns("ids", f"worker.{n}") for n in (1, 2))
        ids = namespace_ids()
        assert nsid.FLOOR <= ids[second] < ids[first] <= nsid.TOP, ids
        assert host_end_nsid(first) == ids[first] and host_end_nsid(second) == ids[second]
        d.kill9()
        d.start()
        assert [x["name"] for x in d.dynos("ids")] == ["worker.1", "worker.2"]
        d.run("ids", "worker", "sleep 600")
        third = d.netns("ids", "worker.3")
        ids = namespace_ids()
        assert nsid.FLOOR <= ids[third] < ids[second] < ids[first], ids
        assert host_end_nsid(third) == ids[third]
        explained = d.cli(
            "run", "--detach", "--explain", "--app", "ids", "--type", "worker", "--", "sleep", "600"
        )
        assert re.search(
            rf"^ip netns set {re.escape(d.netns('ids', 'worker.4'))} \d+$", explained.stdout, re.M
        ), explained.stdout


def test_a_gateway_an_older_dynod_made_an_address_becomes_routes_at_the_next_start() -> None:
    """An older dynod gave each dyno's gateway an address on the bridge, whose ARP answers told
    the dyno its MAC. A daemon started on its dynos (after a SIGKILL and an upgrade) pins every
    gateway's MAC in its dyno, deletes every such address, then makes the routes: every dyno is
    still reached. With two dynos a bridge, the second bridge's two are the only addresses of
    theirs, and deleting the last one flushes every route through it (fib_disable_ip): a route
    made between two deletions would be lost (fails when converted one dyno at a time)."""
    with running_daemon(extra=["--shard-ports", "2"]) as d:
        webs = [d.run_app("legacy", "web") for _ in range(4)]
        assert router_get(d, "legacy")[0] == 200
        d.kill9()
        held = []
        for i, web in enumerate(webs):  # what an older dynod left: addresses, learned entries
            ns, gateway = d.netns("legacy", web["name"]), gateway_of(web["ip"])
            bridge = f"{d.prefix}0" if i < 2 else f"{d.prefix}0-1"  # slots 1-2, then 3-4
            subnet = ipaddress.IPv4Network(f"{web['ip']}/30", strict=False)
            sh("ip", "route", "del", str(subnet), "dev", bridge)
            sh("ip", "route", "del", "local", gateway, "dev", bridge, "table", "local")
            sh("ip", "neigh", "del", web["ip"], "dev", bridge)
            sh("ip", "addr", "add", f"{gateway}/30", "dev", bridge)
            sh("ip", "-n", ns, "neigh", "del", gateway, "dev", "eth0")
            held.append((web, ns, gateway, subnet, bridge))
        d.start()
        for web, ns, gateway, subnet, bridge in held:
            assert gateway not in sh("ip", "-o", "-4", "addr", "show", "dev", bridge).stdout
            local = sh("ip", "route", "show", "table", "local", "dev", bridge).stdout
            assert f"local {gateway} proto static" in local, (web["name"], local)
            routed = sh("ip", "route", "show", str(subnet), "dev", bridge).stdout
            assert f"src {gateway}" in routed, (web["name"], routed)
            pinned = sh("ip", "-n", ns, "neigh", "show", gateway, "dev", "eth0").stdout
            assert "PERMANENT" in pinned, (web["name"], pinned)
            host_side = sh("ip", "neigh", "show", web["ip"], "dev", bridge).stdout
            assert "PERMANENT" in host_side, (web["name"], host_side)
        # the router reaches every one of them (it takes them in turn)
        answered: set[str] = set()
        for _ in range(200):
            status, name = router_get(d, "legacy")
            assert status == 200, (status, name)
            answered.add(name)
            if len(answered) == len(webs):
                break
        assert answered == {w["name"] for w in webs}


def test_daemon_stop_leaves_no_kernel_object_or_process() -> None:
    daemon = DaemonProc()
    try:
        daemon.start()
        pids = [
            daemon.run_app("sushi", "web")["pid"],
            daemon.run("sushi", "worker", "sleep 600")["pid"],
        ]
        assert leftovers(daemon.prefix)
        assert daemon.terminate() == 0
        deadline = time.monotonic() + 5
        while leftovers(daemon.prefix) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(daemon.prefix) == {}
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert "dynod: stopped" in daemon.log()
    finally:
        daemon.close()


def _nft_table_items(prefix: str, kind: str) -> list[dict]:
    items = []
    for family in ("bridge", "inet"):
        listing = json.loads(sh("nft", "-j", "list", "table", family, prefix).stdout)
        items += [item[kind] for item in listing["nftables"] if kind in item]
    return items


def web_elements(prefix: str) -> set[tuple[str, int]]:
    listing = json.loads(sh("nft", "-j", "list", "set", "inet", prefix, "web").stdout)
    return {
        tuple(e["concat"])
        for item in listing["nftables"]
        for e in item.get("set", {}).get("elem", [])
    }


def nft_rules(prefix: str) -> list[str]:
    """The rules' expressions, without their counters' values."""
    return sorted(
        json.dumps([e for e in rule["expr"] if "counter" not in e])
        for rule in _nft_table_items(prefix, "rule")
    )


def nft_elements(prefix: str) -> int:
    return sum(len(s.get("elem", [])) for s in _nft_table_items(prefix, "set"))


def test_eth0_index_stays_small_after_300_dynos() -> None:
    with running_daemon(cidr=f"172.31.{os.getpid() % 64 * 4}.0/22") as d:

        def start(i: int) -> dict:
            return d.run("churn", "worker", "sleep 600")

        rules_before = nft_rules(d.prefix)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(3):
                list(pool.map(start, range(100)))
                # 100 dynos: the firewall holds 100 more set elements and not one more rule
                assert nft_rules(d.prefix) == rules_before
                assert nft_elements(d.prefix) >= 100
                d.stop_dyno("churn", grace=1)
        dyno = d.run("fresh", "worker", "sleep 600")
        ns = d.netns("fresh", dyno["name"])
        index = int(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/ifindex").stdout)
        host_index = int(read(f"/sys/class/net/{d.prefix}-{dyno['id']:x}/ifindex"))
        assert index < 256
        assert host_index > 300  # the host's counter did grow: the check means something


def test_pool_exhaustion_is_a_clear_error_and_disturbs_nothing() -> None:
    with running_daemon(cidr=f"172.31.{os.getpid() % 250}.16/28") as d:
        running = [d.run("tiny", "worker", "sleep 600") for _ in range(3)]
        with pytest.raises(DynodError) as err:
            d.run("tiny", "worker", "sleep 600")
        assert err.value.status == 503
        assert "no free /30 left" in err.value.problem and "--cidr" in err.value.fix
        assert [x["pid"] for x in d.dynos("tiny")] == [x["pid"] for x in running]
        # a freed /30 comes back once its dyno is fully torn down
        d.stop_dyno("tiny", "worker.2")
        d.wait_for(
            lambda: d.run("tiny", "worker", "sleep 600")["ip"] == running[1]["ip"],
            "the freed /30 reused",
            timeout=10,
        )


def test_reused_address_is_reached_without_stale_neighbour() -> None:
    with running_daemon(cidr=f"172.31.{os.getpid() % 250}.32/29") as d:
        first = d.run_app("reuse", "web")
        assert router_get(d, "reuse") == (200, "web.1")
        bridge = f"{d.prefix}0"
        d.stop_dyno("reuse")
        assert first["ip"] not in sh("ip", "neigh", "show", "dev", bridge).stdout
        second = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                second = d.run_app("reuse", "web")
                break
            except DynodError:
                time.sleep(0.05)  # the old veth is still being destroyed
        assert second is not None and second["ip"] == first["ip"]
        assert router_get(d, "reuse") == (200, "web.1")


def test_bad_input_gets_clear_errors_and_disturbs_nothing() -> None:
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        cases = [
            (["run", "--app", "Sushi", "--", "true"], "invalid app name"),
            (["run", "--app", "ab", "--", "true"], "invalid app name"),
            (["run", "--app", "sushi", "--type", "bad.type", "--", "true"], "invalid process type"),
            (
                ["run", "--app", "sushi", "--type", "w", "--", "no-such-program-xyz", "--x"],
                "command not found: no-such-program-xyz",
            ),
            (["run", "--app", "sushi", "--type", "w", "--", "./missing.sh"], "command not found"),
            (["run", "--app", "sushi", "--type", "w", "-d"], "no Procfile"),
            (["stop", "--app", "nosuchapp", "web.1"], "no app named 'nosuchapp'"),
            (["stop", "--app", "sushi", "web.7"], "no dyno web.7 in app sushi"),
            (["stop", "--app", "sushi", "web"], "invalid dyno name"),
            (["ps", "--app", "nosuchapp"], "no app named 'nosuchapp'"),
            (["run", "--app", "sushi", "-e", "NOEQUALS", "--", "true"], "invalid --env"),
        ]
        for argv, message in cases:
            result = d.cli(*argv)
            assert result.returncode != 0, argv
            assert message in result.stderr, (argv, result.stderr)
            assert "fix:" in result.stderr, (argv, result.stderr)
        (d.app_dir / "Procfile").write_text("web: python3 -m http.server $PORT\n")
        result = d.cli("run", "--app", "sushi", "--type", "clock", "-d")
        assert "has no 'clock' process type (it has: web)" in result.stderr
        dynos = d.dynos("sushi")
        assert [(x["name"], x["pid"], x["state"]) for x in dynos] == [("web.1", web["pid"], "up")]
        assert router_get(d, "sushi") == (200, "web.1")


def test_cli_without_daemon_says_how_to_start_it(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dynod", "--socket", "/tmp/dynod-no-such.sock", "ps"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "daemon is not running" in result.stderr and "sudo dynod daemon" in result.stderr


def test_second_daemon_on_the_same_socket_is_refused() -> None:
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        second = DaemonProc()
        try:
            argv = second.argv()
            argv[argv.index("--socket") + 1] = d.socket
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert result.returncode == 1
            assert f"already listening on {d.socket}" in result.stderr
            assert "fix:" in result.stderr
        finally:
            assert second.close() == {}
        # and a second daemon on the same state directory
        argv = second.argv()
        argv[argv.index("--state-dir") + 1] = d.state_dir
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "already uses" in result.stderr
        assert d.dyno("sushi", "web.1")["pid"] == web["pid"]
        assert router_get(d, "sushi") == (200, "web.1")


def _readable_copy_of_dynod(target: Path) -> str:
    """dynod and its dependencies where an unprivileged user can read them (the checkout and
    its virtualenv may sit in root's home)."""
    import click
    import dnslib
    import h11
    import httptools
    import psutil as ps
    import pyroute2
    import uvloop

    import dynod
    import netns

    for module in (dynod, netns, click, dnslib, h11, httptools, ps, pyroute2, uvloop):
        source = Path(module.__file__).parent
        shutil.copytree(source, target / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(target)


def dynod_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """`setpriv --reuid=nobody python3 -m dynod ARGS...`, from a copy nobody can read."""
    copy = Path(tempfile.mkdtemp(prefix="dynod-nobody-", dir="/tmp"))
    try:
        copy.chmod(0o755)
        return subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-m",
                "dynod",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": _readable_copy_of_dynod(copy)},
        )
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_daemon_refuses_to_run_without_root() -> None:
    prefix = unique_prefix()
    result = dynod_as_nobody(
        "--socket",
        f"/tmp/{prefix}.sock",
        "daemon",
        "--state-dir",
        f"/tmp/{prefix}-state",
        "--prefix",
        prefix,
    )
    assert result.returncode == 1, result.stderr
    assert "must run as root" in result.stderr and "sudo dynod daemon" in result.stderr
    assert leftovers(prefix) == {}
    assert not os.path.exists(f"/tmp/{prefix}-state")


def test_foreground_run_streams_output_and_returns_its_status() -> None:
    with running_daemon() as d:
        result = d.cli(
            "run",
            "--app",
            "sushi",
            "--type",
            "once",
            "--",
            "echo hello from $DYNO; echo oops >&2; exit 3",
        )
        assert result.returncode == 3
        assert "hello from once.1" in result.stdout and "oops" in result.stdout
        assert d.dynos("sushi") == []
        assert leftovers(d.netns("sushi", "once.1")) == {}


def start_foreground_run(d: DaemonProc) -> subprocess.Popen[str]:
    """`dynod run --app sushi --type fg -- ...` in the foreground, once its dyno has started."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynod",
            "run",
            "--app",
            "sushi",
            "--type",
            "fg",
            "--",
            "echo started; sleep 600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(d.app_dir),
        env={**os.environ, "DYNOD_SOCKET": d.socket},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    return proc


def test_foreground_run_stops_its_dyno_on_ctrl_c() -> None:
    with running_daemon() as d:
        proc = start_foreground_run(d)
        try:
            pid = d.dyno("sushi", "fg.1")["pid"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
        finally:
            proc.kill()
        assert d.dynos("sushi") == []
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_detached_run_ps_and_stop_through_the_cli() -> None:
    with running_daemon() as d:
        (d.app_dir / "Procfile").write_text("web: /usr/bin/python3 -u echo_app.py\n")
        first = d.cli("run", "--app", "sushi", "--type", "web", "--detach", "--json")
        assert first.returncode == 0, first.stderr
        second = d.cli(
            "run",
            "--app",
            "sushi",
            "--detach",
            "--",
            "/usr/bin/python3",
            "-m",
            "http.server",
            "$PORT",
        )
        assert second.returncode == 0, second.stderr
        name, ip, port = second.stdout.split()
        assert name == "web.2" and port.startswith("PORT=")
        one = json.loads(first.stdout)
        assert one["name"] == "web.1" and one["port"] and one["ip"] != ip
        d.wait_for(lambda: all(x["state"] == "up" for x in d.dynos("sushi")), "both up")
        seen = {router_get(d, "sushi")[0] for _ in range(4)}
        assert seen == {200}
        ps = d.cli("ps", "--app", "sushi")
        assert "web.1" in ps.stdout and "web.2" in ps.stdout and ip in ps.stdout
        stop = d.cli("stop", "--app", "sushi", "--grace", "2")
        assert stop.returncode == 0 and "web.1" in stop.stdout and "web.2" in stop.stdout
        assert d.dynos("sushi") == []
        # a freed number is reused from the lowest
        again = json.loads(d.cli("run", "--app", "sushi", "-d", "--json").stdout)
        assert again["name"] == "web.1"


def test_grace_period_then_sigkill() -> None:
    with running_daemon() as d:
        d.run("stubborn", "worker", "trap '' TERM; echo ready; while true; do sleep 0.1; done")
        d.wait_for(lambda: "ready" in d.output("stubborn", "worker.1"), "trap set")
        began = time.monotonic()
        d.stop_dyno("stubborn", "worker.1", grace=1)
        assert 1 <= time.monotonic() - began < 10
        log = d.log()
        assert "Error R12 (Exit timeout)" in log
        assert "Stopping remaining processes with SIGKILL" in log
        assert leftovers(d.netns("stubborn", "worker.1")) == {}


def test_crashed_dyno_is_restarted_with_a_new_port() -> None:
    with running_daemon() as d:
        d.run("crashy", "web", "/usr/bin/python3 -u echo_app.py & sleep 2; exit 1")
        d.wait_for(lambda: d.dyno("crashy", "web.1")["state"] == "up", "up")
        first_port = d.dyno("crashy", "web.1")["port"]
        d.wait_for(lambda: "State changed from up to crashed" in d.log(), "a crash")
        d.wait_for(lambda: d.dyno("crashy", "web.1")["restarts"] >= 1, "a restart")
        d.wait_for(lambda: d.dyno("crashy", "web.1")["state"] == "up", "up again")
        again = d.dyno("crashy", "web.1")
        assert again["port"] != first_port
        assert router_get(d, "crashy") == (200, "web.1")  # the router and firewall followed
        web = {ip_port[1] for ip_port in web_elements(d.prefix)}
        assert web == {again["port"]}


def test_unprivileged_dyno_can_ping_its_own_loopback() -> None:
    with running_daemon() as d:
        code = (
            "import socket,struct;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM,"
            "socket.IPPROTO_ICMP);s.settimeout(2);"
            "s.sendto(struct.pack('!BBHHH',8,0,0,0,1),('127.0.0.1',0));s.recvfrom(64);print('pong')"
        )
        status, lines = d.run_once("pinger", "run", f'/usr/bin/python3 -c "{code}"')
        assert status == 0 and lines == ["pong"], lines


def test_environment_reaches_the_dyno_intact_and_not_its_launcher() -> None:
    with running_daemon() as d:
        tricky = 'it\'s "quoted" $HOME `id`\nsecond line'
        names = "('TRICKY', 'LD_PRELOAD', 'DYNO', 'PORT')"
        code = f"import os,json;print(json.dumps({{k: os.environ.get(k) for k in {names}}}))"
        status, lines = d.run_once(
            "envy",
            "web",
            f'/usr/bin/python3 -c "{code}"',
            env={"TRICKY": tricky, "LD_PRELOAD": "/nonexistent/dynod-test.so"},
        )
        assert status == 0, lines
        seen = json.loads(lines[-1])
        assert seen["TRICKY"] == tricky and seen["DYNO"] == "web.1" and seen["PORT"].isdigit()
        assert seen["LD_PRELOAD"] == "/nonexistent/dynod-test.so"
        # setpriv (root) and the shell that reads the environment ran without it: only the
        # command's own /bin/sh and python saw LD_PRELOAD, so ld.so complained twice, not 4 times
        assert sum("cannot be preloaded" in line for line in lines) == 2
        result = d.cli("run", "--app", "envy", "-e", "BAD-NAME=1", "--", "true")
        assert result.returncode == 1 and "invalid environment variable name" in result.stderr


def test_sigterm_during_start_up_still_cleans_up() -> None:
    daemon = DaemonProc()
    try:
        log = open(daemon.log_path, "ab")  # noqa: SIM115
        daemon.proc = subprocess.Popen(daemon.argv(), stdout=log, stderr=log)
        log.close()
        bridge = f"/sys/class/net/{daemon.prefix}0"
        deadline = time.monotonic() + 20
        while not os.path.exists(bridge) and time.monotonic() < deadline:
            time.sleep(0.001)
        daemon.proc.send_signal(signal.SIGTERM)  # start-up has made the bridge, maybe more
        assert daemon.proc.wait(30) in (0, 1)
        assert leftovers(daemon.prefix) == {}
    finally:
        assert daemon.close() == {}


def test_a_range_the_host_already_routes_is_refused() -> None:
    prefix = unique_prefix()
    third = random.randrange(256)
    sh("ip", "link", "add", f"{prefix}-a", "type", "veth", "peer", "name", f"{prefix}-b")
    try:
        sh("ip", "addr", "add", f"172.31.{third}.1/24", "dev", f"{prefix}-a")
        sh("ip", "link", "set", f"{prefix}-a", "up")
        daemon = DaemonProc(cidr=f"172.31.{third}.0/25")
        try:
            result = subprocess.run(daemon.argv(), capture_output=True, text=True, timeout=30)
        finally:
            assert daemon.close() == {}
        assert result.returncode == 1
        assert f"overlaps the route to 172.31.{third}.0/24 on {prefix}-a" in result.stderr
        assert "--cidr" in result.stderr
    finally:
        sh("ip", "link", "del", f"{prefix}-a", check=False)


def test_the_cli_refuses_users_outside_the_dynod_group() -> None:
    with running_daemon() as d:
        mode = os.stat(d.socket).st_mode & 0o777
        assert mode in (0o600, 0o660)  # root, and the dynod group when it exists
        result = dynod_as_nobody("--socket", d.socket, "ps")
        assert result.returncode == 1
        assert "permission denied" in result.stderr and "dynod group" in result.stderr


def test_a_stop_racing_a_start_leaves_nothing_running() -> None:
    marker = str(random.randrange(10**6, 10**7))
    with running_daemon() as d:

        def stop_as_soon_as_it_exists() -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    d.stop_dyno("racer", "worker.1", grace=1)
                    return
                except DynodError:
                    time.sleep(0.0005)  # not inserted yet

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _ in range(10):
                stopper = pool.submit(stop_as_soon_as_it_exists)
                # the stop waits for the start to finish, so the start itself never fails
                assert d.run("racer", "worker", f"sleep {marker}")["name"] == "worker.1"
                stopper.result()
                d.wait_for(lambda: d.dynos("racer") == [], "no dyno left")
        time.sleep(0.2)
        stray = [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
        assert stray == []
        assert not [n for n in sh("ip", "netns", "list").stdout.split() if "racer" in n]
        d.wait_for(
            lambda: not [x for x in leftovers(d.prefix).get("links", []) if x != f"{d.prefix}0"],
            "no veth left",
        )


def test_a_second_daemon_with_the_same_prefix_is_refused() -> None:
    with running_daemon() as d:
        worker = d.run("sushi", "worker", "sleep 600")
        second = DaemonProc(prefix=d.prefix)  # its own socket, state directory and range
        try:
            result = subprocess.run(second.argv(), capture_output=True, text=True, timeout=30)
        finally:
            shutil.rmtree(second.dir, ignore_errors=True)
            shutil.rmtree(second.app_dir, ignore_errors=True)
        assert result.returncode == 1
        assert f"already uses the prefix '{d.prefix}'" in result.stderr
        assert d.dyno("sushi", "worker.1")["pid"] == worker["pid"]
        assert d.dyno("sushi", "worker.1")["state"] == "up"
        assert d.netns("sushi", "worker.1") in sh("ip", "netns", "list").stdout


def test_a_flushed_firewall_is_put_back() -> None:
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        worker = d.run_app("sushi", "worker", env={"APP_PORT": "7000"})
        # what `nft flush ruleset` or a firewall reload would do to dynod's tables
        sh("nft", "delete", "table", "inet", d.prefix)
        sh("nft", "delete", "table", "bridge", d.prefix)
        d.wait_for(
            lambda: {ip for _, _, ip in port_elements(d.prefix)} == {web["ip"], worker["ip"]},
            "the firewall re-applied",
            timeout=10,
        )
        assert "re-applying them from the state" in d.log()
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex((worker["ip"], 7000)) != 0  # isolation is back
        assert router_get(d, "sushi") == (200, "web.1")
        assert d.run("sushi", "worker", "sleep 600")["name"] == "worker.2"


def test_a_crashed_dyno_survives_a_daemon_restart_and_is_restarted() -> None:
    with running_daemon() as d:
        d.run("flaky", "worker", "echo attempt; exit 1")
        d.wait_for(lambda: d.dyno("flaky", "worker.1")["restarts"] >= 2, "a few crashes")
        d.wait_for(lambda: d.dyno("flaky", "worker.1")["state"] == "crashed", "crashed")
        before = d.dyno("flaky", "worker.1")
        d.kill9()
        d.start()
        d.wait_for(
            lambda: d.dyno("flaky", "worker.1")["restarts"] > before["restarts"],
            "restarted by the new daemon",
            timeout=30,
        )
        after = d.dyno("flaky", "worker.1")
        assert after["ip"] == before["ip"] and after["id"] == before["id"]
        d.wait_for(
            lambda: d.log().count("app[worker.1]: attempt") > before["restarts"] + 1,
            "the restarted process's output",
        )


def test_logs_apps_status_and_the_raw_api() -> None:
    with running_daemon() as d:
        d.run_app("sushi", "web")
        assert router_get(d, "sushi") == (200, "web.1")
        d.wait_for(lambda: "http-hit" in d.output("sushi", "web.1"), "the request logged")
        logs = d.cli("logs", "--app", "sushi", "-n", "50")
        assert logs.returncode == 0, logs.stderr
        lines = logs.stdout.splitlines()
        assert any(" heroku[web.1]: State changed from starting to up" in x for x in lines)
        assert any(" app[web.1]: http-hit " in x for x in lines)
        assert any(" heroku[router]: at=info method=GET" in x for x in lines)
        router_only = d.cli("logs", "--app", "sushi", "--dyno", "router").stdout.splitlines()
        assert router_only and all("heroku[router]" in x for x in router_only)
        assert d.cli("logs", "-n", "0").stdout == ""
        apps = {a["name"]: a for a in json.loads(d.cli("apps", "--json").stdout)}
        assert apps["sushi"]["dynos"] == 1 and apps["sushi"]["space"] is None
        status = d.cli("status").stdout
        assert d.prefix in status and d.cidr in status
        # the API is plain HTTP and JSON on the socket, as Docker's is
        raw = sh("curl", "-sS", "--unix-socket", d.socket, "http://dynod/v1/dynos?app=sushi")
        assert [x["name"] for x in json.loads(raw.stdout)] == ["web.1"]
        missing = sh("curl", "-sS", "--unix-socket", d.socket, "http://dynod/v1/nope")
        assert "no such endpoint" in json.loads(missing.stdout)["error"]


def test_a_run_right_after_a_flush_rebuilds_the_firewall_first() -> None:
    with running_daemon() as d:
        first = d.run("sushi", "worker", "sleep 600")
        sh("nft", "delete", "table", "bridge", d.prefix)  # before the guard notices
        second = d.run("sushi", "worker", "sleep 600")
        assert {ip for _, _, ip in port_elements(d.prefix)} == {first["ip"], second["ip"]}


GRACEFUL = """
import signal, subprocess, sys, time
helper = subprocess.Popen(["/bin/sh", "-c", "trap 'sleep 1; echo helper-done; exit 0' TERM; "
                           "sleep 600 & wait"])
def stop(*_):
    print("got-sigterm", flush=True)
    time.sleep(1.5)
    print("clean-exit", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_a_stop_right_after_a_start_reaches_the_command() -> None:
    """Stopped while its chain still starts (the API answers once the process is started, the
    chain's root stage takes milliseconds more): the kernel drops a SIGTERM to the dyno's init
    before its handler is in, so the daemon sends it again once it is, and the init passes on a
    stop heard before the command began. Every stop ends by SIGTERM: no R12, no SIGKILL (before:
    each of them waited out the grace)."""
    with running_daemon() as d:
        for _ in range(6):
            name = d.run("hasty", "worker", "sleep 600")["name"]
            d.stop_dyno("hasty", name, grace=5)
        log = d.log()
        assert "Error R12" not in log and "SIGKILL" not in log
        assert log.count("Process exited with status 143") == 6, log
        # the init's own words are not the app's: config vars of those names change nothing
        names = {"stopping": "a", "dynod_stopping": "b", "main": "c"}
        d.run("hasty", "worker", 'echo "got $stopping$dynod_stopping$main"; exec sleep 600', names)
        d.wait_for(lambda: "got abc" in d.output("hasty", "worker.1"), "started")
        time.sleep(0.3)
        assert d.dyno("hasty", "worker.1")["state"] == "up"


def test_a_dyno_that_handles_sigterm_gets_its_grace_period() -> None:
    with running_daemon(grace=10) as d:
        (d.app_dir / "graceful.py").write_text(GRACEFUL)
        (d.app_dir / "graceful.py").chmod(0o644)
        d.run("polite", "worker", "/usr/bin/python3 -u graceful.py")
        d.wait_for(lambda: "ready" in d.output("polite", "worker.1"), "ready")
        began = time.monotonic()
        d.stop_dyno("polite", "worker.1", grace=10)
        took = time.monotonic() - began
        out = d.output("polite", "worker.1")
        assert "got-sigterm" in out and "clean-exit" in out and "helper-done" in out, out
        assert 1.4 < took < 9, took  # it had its 1.5 s, and no SIGKILL was needed
        log = d.log()
        assert "Error R12" not in log
        down = log.index("heroku[worker.1]: State changed from up to down")
        assert down < log.index("heroku[worker.1]: Stopping all processes with SIGTERM")


def test_foreground_run_streams_every_line_of_a_large_output() -> None:
    with running_daemon() as d:
        result = d.cli("run", "--app", "chatty", "--type", "run", "--", "seq 1 300000")
        assert result.returncode == 0, result.stderr[-500:]
        lines = result.stdout.splitlines()
        assert len(lines) == 300000 and lines[0] == "1" and lines[-1] == "300000"
        assert lines == [str(i) for i in range(1, 300001)]


def test_the_directory_is_checked_again_at_every_restart(tmp_path: Path) -> None:
    secret_dir = Path(
        tempfile.mkdtemp(prefix="dynod-secret-", dir="/root" if os.path.isdir("/root") else "/tmp")
    )
    secret_dir.chmod(0o700)
    (secret_dir / "secret.txt").write_text("root-only")
    try:
        with running_daemon() as d:
            work = d.app_dir / "work"
            work.mkdir(mode=0o755)
            body = {
                "type": "worker",
                "command": "cat secret.txt; sleep 1; exit 1",
                "cwd": str(work),
                "env": {"PATH": "/usr/bin:/bin"},
                "detach": True,
            }
            d.client.call("POST", "/v1/apps/swapper/dynos", body)
            d.wait_for(lambda: "No such file" in d.output("swapper", "worker.1"), "first run")
            work.rmdir()
            work.symlink_to(secret_dir)  # as the dyno's user could, between two restarts
            d.wait_for(lambda: "Restart failed" in d.log(), "a refused restart", timeout=20)
            assert "root-only" not in d.output("swapper", "worker.1")
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


def test_dynos_have_their_own_ipc_objects() -> None:
    with running_daemon() as d:
        before = sh("ipcs", "-q").stdout
        status, lines = d.run_once("ipc", "run", "ipcmk -Q && ipcs -q | grep -c 0x")
        assert status == 0 and lines[-1] == "1", lines  # its own queue, and only that one
        assert sh("ipcs", "-q").stdout == before


def test_a_foreground_dyno_is_stopped_when_its_daemon_died() -> None:
    with running_daemon() as d:
        proc = start_foreground_run(d)
        try:
            d.kill9()
            assert proc.wait(30) == 1
        finally:
            proc.kill()
        d.start()
        d.wait_for(lambda: d.dynos("sushi") == [], "the orphaned foreground dyno stopped")


def test_a_web_dyno_bound_to_loopback_is_not_up_and_is_told_why() -> None:
    with running_daemon(extra=["--boot-timeout", "3"]) as d:
        d.run("loopy", "web", "/usr/bin/python3 -m http.server --bind 127.0.0.1 $PORT")
        d.wait_for(lambda: "which the router cannot reach" in d.log(), "the hint")
        assert d.dyno("loopy", "web.1")["state"] == "starting"
        assert router_get(d, "loopy")[0] == 503
        d.wait_for(lambda: "Error R10 (Boot timeout)" in d.log(), "R10", timeout=10)


def test_names_are_in_memory_and_what_is_kept_per_dyno_is_above_select_range() -> None:
    """/run/netns on a disk filesystem gets the daemon's tmpfs while it runs, and loses it at
    its stop (netns/namespace.py names_in_memory); a dyno's pidfd and output file are kept at
    1024 and up, where they never take the low numbers libnftables needs (netns/descriptors.py),
    and out of the spawn thread's table (netns/spawner.py)."""
    run_dir = namespace.RUN_DIR
    before = namespace.holding_mount(run_dir) if os.path.isdir(run_dir) else None
    had_names = bool(before and os.listdir(run_dir))
    with running_daemon() as daemon:
        daemon.run("sushi", "worker", "sleep 600")
        holding = namespace.holding_mount(run_dir)
        assert holding[1] in namespace.MEMORY_TYPES or had_names, holding
        if before is None or (before[1] not in namespace.MEMORY_TYPES and not had_names):
            assert holding == (run_dir, "tmpfs", namespace.MEMORY_SOURCE)
        assert daemon.proc is not None
        fds = f"/proc/{daemon.proc.pid}/fd"
        kept: dict[str, list[int]] = {}
        for number in os.listdir(fds):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(os.path.join(fds, number))
                kind = "pidfd" if target == "anon_inode:[pidfd]" else target
                kept.setdefault(kind, []).append(int(number))
        outputs = [n for target, ns in kept.items() if target.endswith(".out") for n in ns]
        assert kept.get("pidfd") and min(kept["pidfd"]) >= 1024, kept
        assert outputs and min(outputs) >= 1024, kept
        # and the thread that starts dynos' processes has a table of its own, without them
        # (netns/spawner.py): a start copies a few descriptors, not two per dyno
        tasks = f"/proc/{daemon.proc.pid}/task"
        tables: dict[str, set[str]] = {}
        for task in os.listdir(tasks):
            with contextlib.suppress(FileNotFoundError):
                tables[task] = set(os.listdir(f"{tasks}/{task}/fd"))
        # every other thread shares the table with the dyno's pidfd and output file (1024 and
        # up); the spawn thread's holds 0-2 and the signal wake-up socket (a few more during a
        # start)
        own = [t for t, fds in tables.items() if fds and max(map(int, fds)) < 1024]
        assert len(own) == 1 and len(tables[own[0]]) <= 12, tables
    if before is not None and not had_names:
        assert namespace.holding_mount(run_dir) == before
    else:
        assert namespace.holding_mount(run_dir)[2] != namespace.MEMORY_SOURCE
