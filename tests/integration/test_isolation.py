"""Isolation against a dyno that is root in its own network namespace.

`ip netns exec NS ...` as root is the test's way to be such a dyno: it may send any frame on its
eth0 and rewrite its own neighbour table. Whatever it sends, nothing may reach a host service it
is not offered, and no spoofed packet may make the host answer another dyno.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynod.kernel import firewall
from dynod.kernel.addressing import Pool
from netns.conntrack import Flow
from tests.support import PYTHON, bridge_of, gateway_of, port_elements, running_daemon, sh

pytestmark = pytest.mark.root

GROUP_MACS = [f"01:80:c2:00:00:{n:02x}" for n in range(16)]  # every IEEE link-local group

# Sends, from a namespace's eth0 as raw frames, to every IEEE link-local group MAC: IPv4 UDP
# (spoofed sources included), an ICMP echo request spoofed as the victim, and IPv6 UDP to
# ff02::1 and to the port's link-local address. Every payload carries the token.
RAW_SENDER = r"""
import json, socket, struct, sys, time
spec = json.loads(sys.argv[1])
token = spec["token"].encode()

def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def ipv4(src, dst, proto, payload):
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", csum(head)) + head[12:] + payload

def udp4(src, dst, port, data):
    return ipv4(src, dst, 17, struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data)

def echo4(src, dst, data):
    body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + data
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return ipv4(src, dst, 1, body)

def udp6(src, dst, port, data):
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    length = 8 + len(data)
    head = struct.pack("!HHHH", 40000, port, length, 0)
    pseudo = s + d + struct.pack("!I3xB", length, 17)
    head = head[:6] + struct.pack("!H", csum(pseudo + head + data) or 0xFFFF)
    return struct.pack("!IHBB", 6 << 28, length, 17, 64) + s + d + head + data

def arp_request(own_mac, own_ip, target):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, own_mac, socket.inet_aton(own_ip),
                       b"\0" * 6, socket.inet_aton(target))

mac = lambda text: bytes.fromhex(text.replace(":", ""))
own_mac = mac(open("/sys/class/net/eth0/address").read().strip())
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind(("eth0", 0))
arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
arp.bind(("eth0", 0))
arp.settimeout(0.1)
sent = 0
for group in spec["groups"]:
    frames = []
    for src in spec["sources"]:
        for dst in spec["targets"]:
            data = token + b" udp4 " + group.encode()
            frames.append((0x0800, udp4(src, dst, spec["port"], data)))
    frames.append((0x0800, echo4(spec["victim"], spec["gateway"], token + b" echo")))
    for dst in spec["targets6"]:
        frames.append((0x86DD, udp6(spec["source6"], dst, spec["port"], token + b" udp6")))
    for dst in spec["targets"]:
        frames.append((0x0806, arp_request(own_mac, spec["sources"][0], dst)))
    for ethertype, packet in frames:
        raw.send(mac(group) + own_mac + struct.pack("!H", ethertype) + packet)
        sent += 1
# ARP replies from the port itself (the bridge answers for its addresses as usual: a frame to
# 01:80:c2:00:00:00 is bridged when STP is off)
replies = 0
deadline = time.monotonic() + 1
while time.monotonic() < deadline:
    try:
        frame = arp.recv(2048)
    except socket.timeout:
        continue
    reply = frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02"
    replies += reply and frame[22:28] == mac(spec["port_mac"])
print(json.dumps({"sent": sent, "arp_replies": replies}))
"""

# Counts, for a while, the frames on a namespace's eth0 that carry the token (the victim's
# side: an echo reply the host sent it because of a spoofed request).
SNIFFER = r"""
import socket, sys, time
token, seconds = sys.argv[1].encode(), float(sys.argv[2])
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
raw.bind(("eth0", 0))
raw.settimeout(0.1)
print("ready", flush=True)
seen = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        frame = raw.recv(65535)
    except socket.timeout:
        continue
    seen += token in frame
print(seen, flush=True)
"""

# The `ip neigh` variant: ordinary sockets once the gateway's neighbour entry is a group MAC.
NEIGH_SENDER = r"""
import socket, subprocess, sys
token, gateway, port, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
for n in range(2, 16):
    group = f"01:80:c2:00:00:{n:02x}"
    subprocess.run(["ip", "neigh", "replace", gateway, "lladdr", group, "nud", "permanent",
                    "dev", "eth0"], check=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for target in targets:
            s.sendto(f"{token} neigh {group}".encode(), (target, port))
subprocess.run(["ip", "neigh", "del", gateway, "dev", "eth0"], check=False)
print("sent")
"""


class Listeners:
    """UDP sockets on 0.0.0.0 and [::] of the host, one port: what arrives carrying a token."""

    def __init__(self) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.v4.bind(("0.0.0.0", 0))
        self.port = int(self.v4.getsockname()[1])
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.v6.bind(("::", self.port))
        for s in (self.v4, self.v6):
            s.setblocking(False)

    def received(self, token: str) -> list[str]:
        found = []
        for s in (self.v4, self.v6):
            while True:
                try:
                    data, peer = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if token.encode() in data:
                    found.append(f"{data.decode(errors='replace')} from {peer[0]}")
        return found

    def close(self) -> None:
        self.v4.close()
        self.v6.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    found = Listeners()
    try:
        yield found
    finally:
        found.close()


def eui64_link_local(mac: str) -> str:
    """The fe80:: address the kernel gives a link with this MAC (when IPv6 is on)."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:]
    groups = [f"{int.from_bytes(eui[i : i + 2], 'big'):x}" for i in range(0, 8, 2)]
    return "fe80::" + ":".join(groups)


def link_mac(name: str) -> str:
    with open(f"/sys/class/net/{name}/address") as f:
        return f.read().strip()


def start_sniffer(netns: str, token: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, PYTHON, "-c", SNIFFER, token, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def sniffed(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return int(out.strip().splitlines()[-1])


def test_frames_to_every_ieee_group_address_reach_nothing_on_the_host(
    listeners: Listeners,
) -> None:
    with running_daemon() as d:
        attacker = d.run("evil", "worker", "sleep 600")
        victim = d.run("victim", "worker", "sleep 600")
        for dyno in (attacker, victim):
            d.wait_for(lambda x=dyno: d.dyno(x["app"], x["name"])["state"] == "up", "up")
        gateway = gateway_of(attacker["ip"])
        bridge = Pool(d.cidr).bridge.gateway
        port_link_local = eui64_link_local(link_mac(attacker["veth"]))
        token = "tok" + secrets.token_hex(6)
        victim_sniffer = start_sniffer(victim["netns"], token, 4)
        spec = {
            "token": token,
            "groups": GROUP_MACS,
            "port": listeners.port,
            "sources": [attacker["ip"], victim["ip"], "8.8.8.8"],
            "targets": [gateway, bridge],
            "victim": victim["ip"],
            "gateway": gateway,
            "source6": "fe80::1",
            "targets6": ["ff02::1", port_link_local],
            "port_mac": link_mac(attacker["veth"]),
        }
        result = sh(
            "ip",
            "netns",
            "exec",
            attacker["netns"],
            PYTHON,
            "-c",
            RAW_SENDER,
            json.dumps(spec),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        sender = json.loads(result.stdout)
        assert sender["sent"] == len(GROUP_MACS) * 11
        neigh = sh(
            "ip",
            "netns",
            "exec",
            attacker["netns"],
            PYTHON,
            "-c",
            NEIGH_SENDER,
            token,
            gateway,
            str(listeners.port),
            gateway,
            bridge,
            check=False,
        )
        assert neigh.returncode == 0, neigh.stderr
        time.sleep(1)
        arrived = listeners.received(token)
        replies = sniffed(victim_sniffer)
        kinds = sorted({" ".join(line.split()[1:2] + line.split()[-1:]) for line in arrived})
        # the port takes no IPv6 at all (no link-local address to be reached at)
        assert sh("ip", "-6", "addr", "show", "dev", attacker["veth"]).stdout.strip() == ""
        arp = sender["arp_replies"]
        assert (kinds, replies, arp) == ([], 0, 0), (
            f"{len(arrived)} datagrams, {replies} echo replies, {arp} ARP replies"
        )


# ---------------------------------------------------------------- the firewall's guard
def nft_elements(table: str, family: str, name: str) -> list[Any]:
    listing = json.loads(sh("nft", "-j", "list", "set", family, table, name).stdout)
    return [e for item in listing["nftables"] for e in item.get("set", {}).get("elem", [])]


def nft_element_text(value: Any) -> str:
    return " . ".join(f'"{v}"' if str(v).startswith("tst") else str(v) for v in value["concat"])


def test_deleted_set_elements_come_back_at_once_on_the_nftables_event() -> None:
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        ports = nft_elements(d.prefix, "bridge", "ports")
        webs = nft_elements(d.prefix, "inet", "web")
        assert len(ports) == 1 and webs == [{"concat": [web["ip"], web["port"]]}]
        # a commit by someone else that leaves our tables alone is checked, and changes nothing
        harmless = f"add table inet {d.prefix}z; delete table inet {d.prefix}z"
        sh("nft", harmless)
        deleted = []
        for family, name, elements in (("bridge", "ports", ports), ("inet", "web", webs)):
            text = nft_element_text(elements[0])
            proc = subprocess.Popen(
                ["nft", "delete", "element", family, d.prefix, name, "{", text, "}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
            # The old guard polled every 2 s and counted rules only: it never saw this. The
            # new one is told of that very commit (its log names it), not by its 10 s poll.
            d.wait_for(
                lambda f=family, n=name: len(nft_elements(d.prefix, f, n)) == 1,
                f"the {name} element back",
                timeout=8,
            )
            assert f"pid {proc.pid} (nft)" in d.log()
            deleted.append(proc.pid)
        warnings = [line for line in d.log().splitlines() if "re-applying them" in line]
        assert len(warnings) == 2, warnings  # one per deletion, none for the harmless commit
        for line, pid in zip(warnings, deleted, strict=True):
            assert f"pid {pid} (nft)" in line
        assert nft_elements(d.prefix, "bridge", "ports") == ports
        assert nft_elements(d.prefix, "inet", "web") == webs


def half_request(ip: str, port: int, mark: int = 0) -> socket.socket:
    """A TCP connection with half an HTTP request sent: the server waits for the rest. With a
    mark, its packets carry it, as the router's do (SO_MARK)."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    conn.settimeout(3)
    conn.connect((ip, port))
    conn.sendall(b"GET /window HTTP/1.0\r\n")
    return conn


def finish_request(conn: socket.socket) -> bytes:
    """The rest of the request, and the first bytes of the answer (b"" when none came)."""
    try:
        conn.sendall(b"Host: x\r\n\r\n")
        conn.settimeout(3)
        return conn.recv(64)
    except OSError:
        return b""
    finally:
        conn.close()


def test_a_connection_opened_while_the_firewall_was_gone_is_cut_after_the_restore() -> None:
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        worker = d.run_app("sushi", "worker", env={"APP_PORT": "7000"})
        assert d.proc is not None
        # The daemon is frozen while the tables are gone, so the window is certain to be open.
        d.proc.send_signal(signal.SIGSTOP)
        try:
            sh("nft", "delete", "table", "inet", d.prefix)
            sh("nft", "delete", "table", "bridge", d.prefix)
            refused = half_request(worker["ip"], 7000)  # host -> a worker: never allowed
            # the router's kind of connection: marked, to a web dyno's PORT. (Whether the host's
            # conntrack saw the window's connections at all depends on whether any other table
            # kept conntrack on meanwhile: the verdicts must hold either way.)
            allowed = half_request(web["ip"], web["port"], firewall.ROUTER_MARK)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        d.wait_for(lambda: len(port_elements(d.prefix)) == 2, "the firewall re-applied", 5)
        with contextlib.suppress(AssertionError):  # if it never comes, the asserts say why
            d.wait_for(lambda: "connections it refuses" in d.log(), "the flows cut", 5)
        assert finish_request(allowed).startswith(b"HTTP/1.0 200")
        assert finish_request(refused) == b"", "a connection from the window outlived the restore"
        assert "firewall restored; cut " in d.log()  # (0 cut when conntrack was off meanwhile)
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex((worker["ip"], 7000)) != 0  # and nothing new gets through


def test_the_firewall_restore_puts_the_ports_own_settings_back() -> None:
    """Whoever removed our tables may have changed host sysctls too: `all.disable_ipv6=0`
    reaches every port. The restore writes each live port's settings again."""
    with running_daemon() as d:
        web = d.run_app("sushi", "web")
        setting = f"/proc/sys/net/ipv6/conf/{web['veth']}/disable_ipv6"
        assert Path(setting).read_text().strip() == "1"
        assert d.proc is not None
        d.proc.send_signal(signal.SIGSTOP)
        try:
            Path(setting).write_text("0")
            sh("nft", "delete", "table", "inet", d.prefix)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        d.wait_for(lambda: "firewall restored" in d.log(), "the firewall restored", 10)
        assert Path(setting).read_text().strip() == "1"


# ---------------------------------------------------------------- the probe matrix
# Each dyno runs this as its web process: TCP on PORT answers a line of HTTP, UDP on PORT echoes.
RESPONDER = """
import os, socket, threading
port = int(os.environ["PORT"])
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)
threading.Thread(target=udp, daemon=True).start()
server = socket.create_server(("0.0.0.0", port))
print("listening on", port, flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    conn.close()
"""

# Runs probes in parallel (as root where it runs, so ICMP is a raw socket) and prints, for each,
# whether it got through: a TCP handshake, a UDP echo, an ICMP echo reply.
PROBER = r"""
import json, os, socket, struct, sys, threading
TIMEOUT = 1.5

def csum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def tcp(ip, port):
    try:
        socket.create_connection((ip, port), timeout=TIMEOUT).close()
        return True
    except OSError:
        return False

def udp(ip, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        token = os.urandom(8)
        s.sendto(token, (ip, port))
        try:
            return s.recv(64) == token
        except OSError:
            return False

def icmp(ip, ident):
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(0.2)
        body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"matrix-probe"
        s.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (ip, 0))
        for _ in range(int(TIMEOUT / 0.2)):
            try:
                packet, peer = s.recvfrom(2048)
            except OSError:
                continue
            head = (packet[0] & 0x0F) * 4
            kind, _, _, got = struct.unpack("!BBHH", packet[head:head + 6])
            if peer[0] == ip and kind == 0 and got == ident:
                return True
        return False

probes = json.loads(sys.argv[1])
results = [None] * len(probes)
def run(i, probe):
    proto, ip, port = probe
    try:  # a packet the host's own output chain drops fails to send (EPERM): not through
        results[i] = (tcp(ip, port) if proto == "tcp" else udp(ip, port) if proto == "udp"
                      else icmp(ip, (os.getpid() + i) & 0xFFFF))
    except OSError:
        results[i] = False
threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(probes)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""

PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP}


class HostServices:
    """A TCP and a UDP echo service on 0.0.0.0 of the host: what a dyno must not reach."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("0.0.0.0", 0))
        self.port = int(self.tcp.getsockname()[1])
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", self.port))
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self.stopping = False
        self.threads = [
            threading.Thread(target=self._serve_tcp, daemon=True),
            threading.Thread(target=self._serve_udp, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _serve_tcp(self) -> None:
        while not self.stopping:
            with contextlib.suppress(OSError):
                self.tcp.accept()[0].close()

    def _serve_udp(self) -> None:
        while not self.stopping:
            with contextlib.suppress(OSError):
                data, peer = self.udp.recvfrom(2048)
                self.udp.sendto(data, peer)

    def close(self) -> None:
        self.stopping = True
        for t in self.threads:
            t.join(5)
        self.tcp.close()
        self.udp.close()


def probe_from(netns: str | None, probes: list[tuple[str, str, int]]) -> subprocess.Popen[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.Popen(
        [*prefix, PYTHON, "-c", PROBER, json.dumps(probes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def router_reaches(d: Any, app: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{d.router_port}/", headers={"Host": f"{app}.localhost"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200 and response.read() == b"ok"
    except OSError:
        return False


@pytest.mark.parametrize("shard_ports", [None, 1], ids=["one-bridge", "bridge-per-dyno"])
def test_probe_matrix_every_pair_host_and_router_match_the_policy(shard_ports: int | None) -> None:
    """One daemon: 2 Common Runtime dynos, a space with 2 apps, another with 1. Every ordered
    pair of dynos x TCP/UDP/ICMP, the host to each dyno, each dyno to the host (a service it is
    not offered, and its bridge's DNS), and the router to each web dyno; the verdict expected of
    each probe comes from the policy (firewall.allows), not from a table in this test. Run
    twice: every network on one bridge, and with `--shard-ports 1`, every dyno on a bridge
    (shard) of its own, so each pair of a network is on two different bridges."""
    services = HostServices()
    extra = ["--shard-ports", str(shard_ports)] if shard_ports else []
    try:
        with running_daemon(extra=extra) as d:
            (d.app_dir / "responder.py").write_text(RESPONDER)
            (d.app_dir / "responder.py").chmod(0o644)
            spaces = []
            seconds = random.sample(range(100, 200), 2)  # two /16s, as the other tests pick
            for second, name in zip(seconds, (f"{d.prefix}a", f"{d.prefix}b"), strict=True):
                cidr = f"10.{second}.0.0/16"
                check = d.cli("spaces:create", name, "--cidr", cidr)
                assert check.returncode == 0, check.stderr
                spaces.append(name)
            apps = {"mcr1": None, "mcr2": None, "msa1": spaces[0], "msa2": spaces[0]}
            apps["msb1"] = spaces[1]
            for app, space in apps.items():
                if space:
                    check = d.cli("apps:create", app, "--space", space)
                    assert check.returncode == 0, check.stderr
            dynos = [d.run(app, "web", f"{PYTHON} -u responder.py") for app in apps]
            for dyno in dynos:
                d.wait_for(
                    lambda x=dyno: "listening on" in d.output(x["app"], x["name"]), "listening"
                )
                # the router sends requests only to dynos that are up (seen bound to PORT)
                d.wait_for(lambda x=dyno: d.dyno(x["app"], x["name"])["state"] == "up", "dyno up")
            info = {s["name"]: s for s in d.client.call("GET", "/v1/spaces")}
            on = [bridge_of(x["netns"]) for x in dynos]
            if shard_ports:  # every dyno on a bridge of its own, the second of a network on -1
                base = [f"{d.prefix}0"] * 2 + [info[spaces[0]]["bridge"]] * 2
                base.append(info[spaces[1]]["bridge"])
                assert on == [b + ("-1" if n in (1, 3) else "") for n, b in enumerate(base)]
            else:
                assert len(set(on)) == 3
            common = firewall.Network(f"{d.prefix}0", d.cidr, Pool(d.cidr).bridge.gateway)
            nets = {
                name: firewall.Network(s["bridge"], s["cidr"], s["dns"], s["nat_ip"])
                for name, s in info.items()
            }
            layout = firewall.Layout(d.prefix, f"{d.prefix}-*", common, tuple(nets.values()))
            net_of = {x["ip"]: nets.get(apps[x["app"]] or "", common) for x in dynos}
            local = {n.address for n in layout.networks} | {gateway_of(x["ip"]) for x in dynos}
            web = {firewall.WebTarget(x["ip"], x["port"]) for x in dynos}

            def expected(src: str, dst: str, proto: str, port: int, marked: bool = False) -> bool:
                icmp = 8 if proto == "icmp" else None
                flow = Flow(PROTOS[proto], src, dst, None, None if icmp else port, icmp)
                return firewall.allows(layout, web, local, flow, marked=marked)

            runs: list[tuple[str, str, list[tuple[str, str, int]]]] = []
            for x in dynos:
                probes = [(p, y["ip"], y["port"]) for y in dynos if y is not x for p in PROTOS]
                host = net_of[x["ip"]].address
                probes += [(p, host, services.port) for p in PROTOS] + [("tcp", host, 53)]
                runs.append((x["ip"], x["netns"], probes))
            host_probes = [(p, y["ip"], y["port"]) for y in dynos for p in PROTOS]
            procs = [(src, probe_from(ns, probes), probes) for src, ns, probes in runs]
            procs.append(("host", probe_from(None, host_probes), host_probes))
            wrong = []
            total = allowed = 0
            for src, proc, probes in procs:
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                for (proto, dst, port), got in zip(probes, json.loads(out), strict=True):
                    from_ip = gateway_of(dst) if src == "host" else src
                    want = expected(from_ip, dst, proto, port)
                    total += 1
                    allowed += want
                    if got != want:
                        wrong.append(f"{src} -> {dst} {proto}/{port}: got {got}, expected {want}")
            for x in dynos:
                want = expected(net_of[x["ip"]].address, x["ip"], "tcp", x["port"], marked=True)
                total += 1
                allowed += want
                if router_reaches(d, x["app"]) != want:
                    wrong.append(f"router -> {x['app']}: expected {want}")
            assert total == 5 * 4 * 3 + 5 * 4 + 5 * 3 + 5
            # the policy's own count: the space's 2 dynos both ways x 3, DNS x 5, the router x 5
            assert allowed == 2 * 3 + 5 + 5
            assert wrong == [], "\n".join(wrong)
    finally:
        services.close()
