"""The Common Runtime end to end: two web dynos and a worker behind a real daemon.

Every check goes through real kernel objects: the daemon's namespaces, veths, bridge and
nftables tables, and sockets opened inside the dynos' namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from dynod.kernel.addressing import Pool, mac_for
from tests.support import (
    DaemonProc,
    InternetHost,
    gateway_of,
    netns_exec,
    port_elements,
    read,
    sh,
)

pytestmark = pytest.mark.root

APP = "sushi"
WORKER_PORT = 7000


@dataclass
class Runtime:
    daemon: DaemonProc
    inet: InternetHost
    web1: dict[str, Any]
    web2: dict[str, Any]
    worker: dict[str, Any]

    def get(
        self, path: str = "/", headers: dict[str, str] | None = None, host: str = f"{APP}.localhost"
    ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.daemon.router_port}{path}",
            headers={"Host": host, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {"body": exc.read().decode(errors="replace")}


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    daemon = DaemonProc()
    inet = InternetHost()
    try:
        daemon.start()
        inet.start(routes=[daemon.cidr])
        web1 = daemon.run_app(APP, "web")
        web2 = daemon.run_app(APP, "web")
        worker = daemon.run_app(APP, "worker", env={"APP_PORT": str(WORKER_PORT)})
        yield Runtime(daemon, inet, web1, web2, worker)
    finally:
        inet.close()
        found = daemon.close()
        assert not found, f"the daemon left kernel objects behind: {found}"


@pytest.fixture
def attacker(rt: Runtime) -> Iterator[dict[str, Any]]:
    """A fresh worker dyno; the test acts as root inside its namespace."""
    dyno = rt.daemon.run(APP, "attacker", "sleep 600")
    dyno["netns"] = rt.daemon.netns(APP, dyno["name"])
    try:
        yield dyno
    finally:
        rt.daemon.stop_dyno(APP, dyno["name"])


def tcp_connects(netns: str | None, ip: str, port: int, timeout: float = 1.0) -> bool:
    code = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout({timeout})\n"
        f"try:\n s.connect(({ip!r},{port})); print('open')\n"
        "except Exception as e:\n print('closed', e)\n"
    )
    if netns is None:
        with socket.socket() as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                return True
            except OSError:
                return False
    return netns_exec(netns, code).stdout.startswith("open")


def udp_send(netns: str, ip: str, port: int, payload: str, source: str = "") -> None:
    bind = f"s.bind(({source!r}, 0))\n" if source else ""
    netns_exec(
        netns,
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        + bind
        + f"s.sendto({payload!r}.encode(), ({ip!r}, {port}))\n",
    )


def icmp_echo_answered(netns: str, ip: str) -> bool:
    """One ICMP echo over a datagram ICMP socket (what unprivileged `ping` uses)."""
    code = (
        "import socket,struct\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); s.settimeout(1)\n"
        f"s.sendto(struct.pack('!BBHHH', 8, 0, 0, 0, 1) + b'dynod', ({ip!r}, 0))\n"
        "try:\n s.recvfrom(1024); print('reply')\n"
        "except Exception:\n print('none')\n"
    )
    return netns_exec(netns, code).stdout.startswith("reply")


def settle(rt: Runtime) -> None:
    """Give the daemon's output pump time to read the dynos' files."""
    import time

    time.sleep(0.5)


# ---------------------------------------------------------------- dynos and the router
def test_dynos_have_their_own_namespace_veth_and_slash30(rt: Runtime) -> None:
    d = rt.daemon
    ips = {rt.web1["ip"], rt.web2["ip"], rt.worker["ip"]}
    assert len(ips) == 3
    for dyno in (rt.web1, rt.web2, rt.worker):
        ns = d.netns(APP, dyno["name"])
        out = sh("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert f"{dyno['ip']}/30" in out
        route = sh("ip", "-n", ns, "route", "show", "default").stdout
        gateway = gateway_of(dyno["ip"])
        assert f"default via {gateway} dev eth0" in route
        assert "UP" in sh("ip", "-n", ns, "link", "show", "lo").stdout
        # the gateway is the host's by routes, not by an address (netns/addresses.py)
        bridge = f"{d.prefix}0"
        bridge_addrs = sh("ip", "-o", "-4", "addr", "show", "dev", bridge).stdout
        assert gateway not in bridge_addrs
        local = sh("ip", "route", "show", "table", "local", "dev", bridge).stdout
        assert f"local {gateway} proto static scope host" in local
        subnet = ipaddress.IPv4Network(f"{dyno['ip']}/30", strict=False)
        main = sh("ip", "route", "show", f"{subnet}", "dev", bridge).stdout
        assert f"{subnet} proto static scope link src {gateway}" in main
        # each side knows the other's MAC without asking
        pinned = sh("ip", "-n", ns, "neigh", "show", gateway, "dev", "eth0").stdout
        bridge_mac = Pool(d.cidr).bridge_mac
        assert f"{gateway} lladdr {bridge_mac} PERMANENT" in pinned, pinned
        host_side = sh("ip", "neigh", "show", dyno["ip"], "dev", bridge).stdout
        assert f"{dyno['ip']} lladdr {mac_for(dyno['ip'], 0x58)} PERMANENT" in host_side, host_side
        port = sh("bridge", "-d", "link", "show", "dev", f"{d.prefix}-{dyno['id']:x}").stdout
        assert f"master {d.prefix}0" in port and "isolated on" in port


def test_dyno_processes_are_unprivileged_in_their_namespaces(rt: Runtime) -> None:
    """Every process of the dyno is the dyno's unprivileged user, with no capability at all, in
    the dyno's network namespace; the recorded one is the first of its pid namespace (pid 1
    there: no `unshare` waits for it outside as root)."""
    netns_inode = os.stat(f"/run/netns/{rt.daemon.netns(APP, 'web.1')}").st_ino
    inside = [p for p in psutil.process_iter(["name"]) if _netns_inode(p.pid) == netns_inode]
    names = sorted(p.info["name"] for p in inside)
    assert "unshare" not in names and "python3" in names, names
    assert rt.web1["pid"] in [p.pid for p in inside]
    nspid = next(
        line for line in read(f"/proc/{rt.web1['pid']}/status").splitlines() if line[:6] == "NSpid:"
    )
    assert nspid.split()[-1] == "1", nspid
    for proc in inside:
        fields = dict(
            line.split(":\t", 1)
            for line in read(f"/proc/{proc.pid}/status").splitlines()
            if ":\t" in line
        )
        assert fields["Uid"].split()[0] != "0", proc
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap].strip(), 16) == 0, (proc, cap)
        assert fields["NoNewPrivs"].strip() == "1"
        if proc.info["name"] == "python3":
            assert os.readlink(f"/proc/{proc.pid}/cwd") == str(rt.daemon.app_dir)


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def test_dynos_see_only_their_own_processes_tmp_and_links(rt: Runtime) -> None:
    """A dyno cannot address another dyno's processes (their environment holds secrets) nor
    meet it in /tmp, even when both run as the same user."""
    victim = next(
        p
        for p in psutil.process_iter(["name"])
        if p.info["name"] == "python3"
        and _netns_inode(p.pid) == os.stat(f"/run/netns/{rt.daemon.netns(APP, 'web.1')}").st_ino
    )
    code = (
        "import os;"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()));"
        f"print(os.path.exists('/proc/{victim.pid}/environ'));"
        "print(os.listdir('/tmp'));"
        "open('/tmp/left-by-run', 'w').close();"
        "print(sorted(os.listdir('/sys/class/net')))"
    )
    status, lines = rt.daemon.run_once(APP, "run", f'/usr/bin/python3 -c "{code}"')
    assert status == 0, lines
    pids = json.loads(lines[0])
    assert pids[0] == 1 and len(pids) < 6, pids  # its init, its shell, python: nothing else
    assert lines[1] == "False" or victim.pid in pids
    # its own, empty /tmp: only the way to its working directory, bound back in
    assert json.loads(lines[2].replace("'", '"')) == [rt.daemon.app_dir.parts[2]]
    assert lines[3] == "['eth0', 'lo']"  # its own links in /sys, not the host's
    assert not os.path.exists("/tmp/left-by-run")


def test_environment_dyno_and_port(rt: Runtime) -> None:
    _, first = rt.get()
    _, second = rt.get()
    envs = {first["dyno"]: first["env"], second["dyno"]: second["env"]}
    assert set(envs) == {"web.1", "web.2"}
    assert envs["web.1"]["DYNO"] == "web.1"
    assert envs["web.1"]["PORT"] == str(rt.web1["port"])
    assert envs["web.2"]["PORT"] == str(rt.web2["port"])
    assert rt.web1["port"] != rt.web2["port"]
    worker_env = json.loads(
        netns_exec(
            rt.daemon.netns(APP, "worker.1"),
            f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{WORKER_PORT}/').read().decode())",
        ).stdout
    )["env"]
    assert worker_env["DYNO"] == "worker.1" and "PORT" not in worker_env


def test_router_round_robins_over_both_web_dynos(rt: Runtime) -> None:
    seen = [rt.get()[1]["dyno"] for _ in range(6)]
    assert sorted(set(seen)) == ["web.1", "web.2"]
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), seen


def test_router_headers_and_log_line(rt: Runtime) -> None:
    status, body = rt.get(
        "/hello?x=1", headers={"X-Request-Id": "a" * 30, "X-Forwarded-Host": "evil"}
    )
    assert status == 200
    headers = {k.lower(): v for k, v in body["headers"].items()}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == str(rt.daemon.router_port)
    assert headers["x-request-id"] == "a" * 30
    assert int(headers["x-request-start"]) > 1_700_000_000_000
    assert "via" in headers and "x-forwarded-host" not in headers
    settle(rt)
    lines = [line for line in rt.daemon.log().splitlines() if "request_id=" + "a" * 30 in line]
    assert len(lines) == 1
    assert 'heroku[router]: at=info method=GET path="/hello?x=1"' in lines[0]
    assert f"host={APP}.localhost" in lines[0] and "status=200" in lines[0]
    assert "dyno=web." in lines[0] and 'fwd="127.0.0.1"' in lines[0]


def test_router_unknown_app_is_404_and_no_web_dynos_is_h14(rt: Runtime) -> None:
    assert rt.get(host="nosuchapp.localhost")[0] == 404
    rt.daemon.run("workeronly", "worker", "sleep 600")
    try:
        assert rt.get(host="workeronly.localhost")[0] == 503
        settle(rt)
        assert "code=H14" in rt.daemon.log()
    finally:
        rt.daemon.stop_dyno("workeronly")


def test_dyno_output_reaches_the_log_in_heroku_format(rt: Runtime) -> None:
    settle(rt)
    log = rt.daemon.log()
    assert f"app[web.1]: listening on {rt.web1['port']}" in log
    assert "heroku[web.1]: Starting process with command `" in log
    assert "heroku[web.1]: State changed from starting to up" in log
    line = next(x for x in log.splitlines() if "app[web.1]: listening" in x)
    stamp = line.split(" ", 1)[0]
    assert stamp.endswith("+00:00") and "T" in stamp and len(stamp.split(".")[1]) == 12


# ---------------------------------------------------------------- inbound isolation
def test_host_reaches_no_dyno_port_directly(rt: Runtime) -> None:
    """Only the router's (marked) connections reach a web dyno's PORT."""
    assert not tcp_connects(None, rt.web1["ip"], rt.web1["port"])
    assert not tcp_connects(None, rt.web1["ip"], rt.web1["port"] + 1)
    assert not tcp_connects(None, rt.worker["ip"], WORKER_PORT)
    # the router still does
    assert rt.get()[0] == 200


def test_outside_reaches_no_dyno(rt: Runtime) -> None:
    inet = rt.inet.netns
    assert not tcp_connects(inet, rt.web1["ip"], rt.web1["port"])
    assert not tcp_connects(inet, rt.worker["ip"], WORKER_PORT)
    udp_send(inet, rt.worker["ip"], WORKER_PORT, "from-outside")
    assert not icmp_echo_answered(inet, rt.web1["ip"])
    settle(rt)
    assert "from-outside" not in rt.daemon.output(APP, "worker.1")


def test_dyno_to_dyno_tcp_udp_icmp_blocked(rt: Runtime) -> None:
    worker_ns = rt.daemon.netns(APP, "worker.1")
    web_ns = rt.daemon.netns(APP, "web.1")
    assert not tcp_connects(worker_ns, rt.web1["ip"], rt.web1["port"])
    assert not tcp_connects(worker_ns, rt.web1["ip"], rt.web1["port"] + 1)
    assert not tcp_connects(web_ns, rt.worker["ip"], WORKER_PORT)
    udp_send(worker_ns, rt.web1["ip"], rt.web1["port"], "dyno-to-dyno-udp")
    assert not icmp_echo_answered(worker_ns, rt.web1["ip"])
    # the listener works: a datagram from inside its own namespace arrives
    udp_send(web_ns, "127.0.0.1", rt.web1["port"], "control-udp")
    rt.daemon.wait_for(lambda: "control-udp" in rt.daemon.output(APP, "web.1"), "control")
    assert "dyno-to-dyno-udp" not in rt.daemon.output(APP, "web.1")


def test_dynos_reach_no_host_service(rt: Runtime) -> None:
    ns = rt.daemon.netns(APP, "worker.1")
    gateway = gateway_of(rt.worker["ip"])
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        assert not tcp_connects(ns, gateway, port)
        assert not tcp_connects(ns, rt.inet.host_ip, port)
    assert not icmp_echo_answered(ns, gateway)


# ---------------------------------------------------------------- outbound
def test_outbound_is_masqueraded_behind_the_host(rt: Runtime) -> None:
    code = (
        f"import socket;s=socket.create_connection(({rt.inet.ip!r}, {rt.inet.port}), 5);"
        "print('seen-as', s.recv(100).decode())"
    )
    status, lines = rt.daemon.run_once(APP, "run", f'/usr/bin/python3 -c "{code}"')
    assert status == 0, lines
    assert f"seen-as {rt.inet.host_ip}" in lines
    assert icmp_echo_answered(rt.daemon.netns(APP, "worker.1"), rt.inet.ip)


# ---------------------------------------------------------------- a root attacker in its dyno
def test_spoofed_source_ip_is_dropped(rt: Runtime, attacker: dict[str, Any]) -> None:
    ns = attacker["netns"]
    udp_send(ns, rt.inet.ip, rt.inet.port, "legit-source")
    rt.daemon.wait_for(lambda: "legit-source" in rt.inet.udp_seen(), "legit datagram")
    sh("ip", "-n", ns, "addr", "add", f"{rt.web1['ip']}/32", "dev", "eth0")
    udp_send(ns, rt.inet.ip, rt.inet.port, "spoofed-source", source=rt.web1["ip"])
    sh("ip", "-n", ns, "addr", "add", "172.31.255.254/32", "dev", "eth0")
    udp_send(ns, rt.inet.ip, rt.inet.port, "spoofed-foreign", source="172.31.255.254")
    udp_send(ns, rt.inet.ip, rt.inet.port, "legit-again")
    rt.daemon.wait_for(lambda: "legit-again" in rt.inet.udp_seen(), "second legit datagram")
    assert "spoofed" not in rt.inet.udp_seen()


def test_spoofed_mac_is_dropped(rt: Runtime, attacker: dict[str, Any]) -> None:
    ns = attacker["netns"]
    gateway = gateway_of(attacker["ip"])
    bridge_mac = read(f"/sys/class/net/{rt.daemon.prefix}0/address").strip()

    def send_with_mac(mac: str, payload: str) -> None:
        sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
        # a MAC change empties the neighbour table; a static entry makes the IP packet leave
        # without ARP, so the test meets the IP anti-spoofing rule, not just the ARP one
        sh(
            "ip",
            "-n",
            ns,
            "neigh",
            "replace",
            gateway,
            "lladdr",
            bridge_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        )
        udp_send(ns, rt.inet.ip, rt.inet.port, payload)

    send_with_mac("0a:58:de:ad:be:ef", "spoofed-mac")
    send_with_mac(rt_mac(rt, rt.web1["ip"]), "stolen-mac")
    send_with_mac(rt_mac(rt, attacker["ip"]), "own-mac-again")  # the positive control
    rt.daemon.wait_for(lambda: "own-mac-again" in rt.inet.udp_seen(), "the control datagram")
    assert "spoofed-mac" not in rt.inet.udp_seen()
    assert "stolen-mac" not in rt.inet.udp_seen()


def rt_mac(rt: Runtime, ip: str) -> str:
    from dynod.kernel.addressing import mac_for

    return mac_for(ip, 0x58)


ARP_ATTACK = r"""
import socket, struct
def mac(s): return bytes.fromhex(s.replace(":", ""))
def ip(s): return socket.inet_aton(s)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
me = s.getsockname()[4]
for op, dst in ((2, mac(GATEWAY_MAC)), (1, b"\xff" * 6)):
    # "VICTIM_IP is at my MAC": a reply to the host, then a gratuitous request to everyone
    target_mac = b"\0" * 6 if op == 1 else dst
    target_ip = ip(VICTIM if op == 1 else GATEWAY)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, me, ip(VICTIM), target_mac, target_ip)
    s.send(dst + me + b"\x08\x06" + arp)
print("sent")
"""


def test_arp_claims_for_another_dynos_address_are_dropped(
    rt: Runtime, attacker: dict[str, Any]
) -> None:
    assert rt.get()[0] == 200  # the host has a neighbour entry for the web dynos now
    gateway = gateway_of(rt.web1["ip"])
    bridge = f"{rt.daemon.prefix}0"
    bridge_mac = read(f"/sys/class/net/{bridge}/address").strip()
    code = (
        ARP_ATTACK.replace("GATEWAY_MAC", repr(bridge_mac))
        .replace("VICTIM", repr(rt.web1["ip"]))
        .replace("GATEWAY", repr(gateway))
    )
    assert netns_exec(attacker["netns"], code).stdout.strip() == "sent"
    import time

    time.sleep(0.3)
    attacker_mac = rt_mac(rt, attacker["ip"])
    neigh = sh("ip", "neigh", "show", rt.web1["ip"], "dev", bridge).stdout
    assert attacker_mac not in neigh
    for _ in range(4):
        assert rt.get()[0] == 200


RAW_FRAMES = r"""
import socket, struct
def csum(b):
    b += b"\0" * (len(b) % 2); t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def frame(dst, payload):
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(payload), 0) + payload
    addrs = socket.inet_aton(SRC) + socket.inet_aton(DST)
    hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0) + addrs
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return dst + me + b"\x08\x00" + hdr + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
me = s.getsockname()[4]
s.send(frame(bytes.fromhex(VICTIM_MAC.replace(":", "")), b"raw-unicast"))
s.send(frame(b"\xff" * 6, b"raw-broadcast"))
print("sent")
"""


def test_raw_frames_to_another_dynos_port_do_not_arrive(
    rt: Runtime, attacker: dict[str, Any]
) -> None:
    code = (
        RAW_FRAMES.replace("VICTIM_MAC", repr(rt_mac(rt, rt.web2["ip"])))
        .replace("SRC", repr(attacker["ip"]))
        .replace("DST", repr(rt.web2["ip"]))
        .replace("PORT", str(rt.web2["port"]))
    )
    assert netns_exec(attacker["netns"], code).stdout.strip() == "sent"
    # routes and addresses the attacker adds do not help either
    ns = attacker["netns"]
    sh("ip", "-n", ns, "route", "add", f"{rt.web2['ip']}/32", "dev", "eth0")
    udp_send(ns, rt.web2["ip"], rt.web2["port"], "direct-route")
    assert not tcp_connects(ns, rt.web2["ip"], rt.web2["port"])
    udp_send(rt.daemon.netns(APP, "web.2"), "127.0.0.1", rt.web2["port"], "control-2")
    rt.daemon.wait_for(lambda: "control-2" in rt.daemon.output(APP, "web.2"), "control")
    out = rt.daemon.output(APP, "web.2")
    assert "raw-unicast" not in out and "raw-broadcast" not in out and "direct-route" not in out


# ---------------------------------------------------------------- stop
def test_stop_removes_everything_of_the_dyno(rt: Runtime) -> None:
    d = rt.daemon
    dyno = d.run_app(APP, "extra", env={"APP_PORT": "7100"})
    ns = d.netns(APP, dyno["name"])
    veth = f"{d.prefix}-{dyno['id']:x}"
    result = d.cli("stop", "--app", APP, dyno["name"], "--grace", "2")
    assert result.returncode == 0, result.stderr
    assert "stopped extra.1" in result.stdout
    assert ns not in sh("ip", "netns", "list").stdout
    d.wait_for(lambda: veth not in sh("ip", "-o", "link").stdout, "veth gone")
    gateway = gateway_of(dyno["ip"])
    bridge = f"{d.prefix}0"
    assert gateway not in sh("ip", "route", "show", "table", "local", "dev", bridge).stdout
    assert f"src {gateway}" not in sh("ip", "route", "show", "dev", bridge).stdout
    assert dyno["ip"] not in sh("ip", "neigh", "show", "dev", bridge).stdout
    assert all(veth != port and dyno["ip"] != ip for port, _, ip in port_elements(d.prefix))
    assert {ip for _, _, ip in port_elements(d.prefix)} >= {rt.web1["ip"], rt.worker["ip"]}
    import psutil

    assert not psutil.pid_exists(dyno["pid"]) or psutil.Process(dyno["pid"]).status() == "zombie"
    assert not os.path.exists(f"{d.state_dir}/output/{dyno['id']}.out")
    log = d.log()
    assert "heroku[extra.1]: Stopping all processes with SIGTERM" in log
    assert "heroku[extra.1]: State changed from up to down" in log
