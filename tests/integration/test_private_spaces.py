"""Private Spaces end to end: spaces A and B and a Common Runtime app behind one real daemon.

DNS questions are asked from inside the dynos' own namespaces (so the source address is the
dyno's), connections are opened there too, and the "internet", the upstream resolver and the
router's external client are namespaces this module makes.
"""

from __future__ import annotations

import ipaddress
import json
import random
import shlex
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dynod.testing.daemon import free_space_cidr
from tests.support import PYTHON, DaemonProc, InternetHost, netns_exec, read, sh

pytestmark = pytest.mark.root

WORKER_PORT = 5000  # a fixed port, as Heroku's docs suggest for discovery
UPSTREAM_NAME = "www.example.test"
UPSTREAM_ADDRESS = "203.0.113.77"

# Asks one DNS question from inside a namespace (as root there: only the source address
# matters) and prints the reply as JSON.
DIG = """
import json, sys
from dnslib import DNSRecord
name, qtype, server, tcp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
reply = DNSRecord.parse(DNSRecord.question(name, qtype).send(server, 53, tcp=tcp, timeout=5))
print(json.dumps({
    "rcode": reply.header.rcode, "tc": reply.header.tc, "aa": reply.header.aa,
    "qname": str(reply.q.qname), "count": len(reply.rr),
    "answers": [[str(r.rname), r.ttl, str(r.rdata)] for r in reply.rr if r.rtype == 1],
}))
"""

NOERROR, NXDOMAIN = 0, 3


@dataclass
class Spaces:
    daemon: DaemonProc
    inet: InternetHost  # the internet, with the fake upstream resolver
    client: InternetHost  # an outside client of the router
    a: dict[str, Any]  # `dynod spaces` entries
    b: dict[str, Any]
    nat_a: str
    web1: dict[str, Any]  # sushi (space A, discovery on)
    web2: dict[str, Any]
    worker: dict[str, Any]
    api: dict[str, Any]  # api (space A, internal routing)
    quiet: dict[str, Any]  # quiet (space A, discovery off)
    other: dict[str, Any]  # other (space B)
    cr: dict[str, Any]  # cr (Common Runtime)

    def ns(self, dyno: dict[str, Any]) -> str:
        return self.daemon.netns(dyno["app"], dyno["name"])

    def dig(
        self, dyno: dict[str, Any], name: str, qtype: str = "A", tcp: bool = False
    ) -> dict[str, Any]:
        server = self.dns_of(dyno)
        result = sh(
            "ip", "netns", "exec", self.ns(dyno), sys.executable, "-c", DIG,
            name, qtype, server, "1" if tcp else "0",
        )  # fmt: skip
        return json.loads(result.stdout)

    def dns_of(self, dyno: dict[str, Any]) -> str:
        space = {self.a["name"]: self.a, self.b["name"]: self.b}.get(dyno.get("space") or "")
        if space is not None:
            return space["dns"]
        return str(ipaddress.IPv4Network(self.daemon.cidr).network_address + 1)

    def ips(self, dyno: dict[str, Any], name: str) -> list[str]:
        return [ip for _, _, ip in self.dig(dyno, name)["answers"]]


def _dyno(daemon: DaemonProc, app: str, ptype: str, space: str, **env: str) -> dict[str, Any]:
    dyno = daemon.run_app(app, ptype, env={"APP_PORT": str(WORKER_PORT), **env})
    dyno["space"] = space
    return dyno


@pytest.fixture(scope="module")
def sp() -> Iterator[Spaces]:
    inet = InternetHost()
    client = InternetHost()
    while client.host_ip == inet.host_ip:
        client = InternetHost()
    daemon: DaemonProc | None = None
    try:
        # The space's NAT address: a second address of the host, on the link to the internet
        # (from the benchmarking block 198.18.0.0/15, which no real host uses).
        nat_a = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"
        client.start(routes=[])
        daemon = DaemonProc(router_host=client.host_ip, upstream=f"{inet.ip}:53")
        cidr_a = free_space_cidr()
        cidr_b = cidr_a
        while cidr_b == cidr_a:
            cidr_b = free_space_cidr()
        inet.start(routes=[f"{nat_a}/32", daemon.cidr, cidr_a, cidr_b])
        sh("ip", "addr", "add", f"{nat_a}/32", "dev", inet.link)
        inet.serve_dns({UPSTREAM_NAME: UPSTREAM_ADDRESS})
        daemon.start()
        a_name, b_name = f"{daemon.prefix}a", f"{daemon.prefix}b"
        check = daemon.cli("spaces:create", a_name, "--cidr", cidr_a, "--nat-ip", nat_a)
        assert check.returncode == 0, check.stderr
        check = daemon.cli("spaces:create", b_name, "--cidr", cidr_b)
        assert check.returncode == 0, check.stderr
        spaces = {s["name"]: s for s in daemon.client.call("GET", "/v1/spaces")}
        # Replies to space B's NAT address (the host's own source address) come back too.
        sh("ip", "-n", inet.netns, "route", "add", spaces[b_name]["nat_ip"], "via", inet.host_ip)
        for args in (
            ["sushi", "--space", a_name],
            ["api", "--space", a_name, "--internal-routing"],
            ["quiet", "--space", a_name],
            ["other", "--space", b_name],
        ):
            check = daemon.cli("apps:create", *args)
            assert check.returncode == 0, check.stderr
        check = daemon.cli("features:disable", "spaces-dns-discovery", "--app", "quiet")
        assert check.returncode == 0, check.stderr
        yield Spaces(
            daemon=daemon,
            inet=inet,
            client=client,
            a=spaces[a_name],
            b=spaces[b_name],
            nat_a=nat_a,
            web1=_dyno(daemon, "sushi", "web", a_name),
            web2=_dyno(daemon, "sushi", "web", a_name),
            worker=_dyno(daemon, "sushi", "worker", a_name),
            api=_dyno(daemon, "api", "web", a_name),
            quiet=_dyno(daemon, "quiet", "worker", a_name),
            other=_dyno(daemon, "other", "worker", b_name),
            cr=_dyno(daemon, "classic", "worker", ""),
        )
    finally:
        found = daemon.close() if daemon is not None else {}
        inet.close()
        client.close()
        assert not found, f"the daemon left kernel objects behind: {found}"


def _connect(sp: Spaces, source: dict[str, Any], ip: str, port: int, proto: str = "tcp") -> bool:
    """From inside source's namespace: does a TCP connection (or a UDP datagram that the
    target's app logs) get through?"""
    if proto == "tcp":
        code = f"import socket\nsocket.create_connection(({ip!r}, {port}), timeout=2).close()\n"
        return netns_exec(sp.ns(source), code).returncode == 0
    token = f"probe-{random.randrange(1 << 30)}"
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.sendto({token!r}.encode(), ({ip!r}, {port}))\n"
    )
    assert netns_exec(sp.ns(source), code).returncode == 0
    time.sleep(0.5)
    return token in sp.daemon.log()


def _run(sp: Spaces, app: str, code: str, **env: str) -> tuple[int | None, str]:
    """A one-off dyno of app running Python code as the dyno's user; its exit and output."""
    status, lines = sp.daemon.run_once(
        app, "run", f"{PYTHON} -c {shlex.quote(code)}", env=env or None
    )
    return status, "\n".join(lines)


# ---------------------------------------------------------------- DNS answers
def test_formation_name_answers_every_dyno_of_the_type_with_ttl_0(sp: Spaces) -> None:
    reply = sp.dig(sp.worker, "web.sushi.app.localspace")
    assert reply["rcode"] == NOERROR and reply["aa"]
    assert sorted(ip for _, _, ip in reply["answers"]) == sorted([sp.web1["ip"], sp.web2["ip"]])
    assert {ttl for _, ttl, _ in reply["answers"]} == {0}


def test_dyno_name_answers_that_dyno(sp: Spaces) -> None:
    assert sp.ips(sp.worker, "1.web.sushi.app.localspace") == [sp.web1["ip"]]
    assert sp.ips(sp.worker, "2.web.sushi.app.localspace") == [sp.web2["ip"]]
    assert sp.ips(sp.web1, "1.worker.sushi.app.localspace") == [sp.worker["ip"]]


def test_names_are_case_insensitive(sp: Spaces) -> None:
    reply = sp.dig(sp.worker, "1.WEB.Sushi.App.LocalSpace")
    assert [ip for _, _, ip in reply["answers"]] == [sp.web1["ip"]]
    assert reply["qname"] == "1.WEB.Sushi.App.LocalSpace."


def test_answers_rotate_from_query_to_query(sp: Spaces) -> None:
    firsts = [sp.ips(sp.worker, "web.sushi.app.localspace")[0] for _ in range(4)]
    assert set(firsts) == {sp.web1["ip"], sp.web2["ip"]}


def test_names_with_names_below_exist_without_an_address(sp: Spaces) -> None:
    """RFC 8020: NXDOMAIN would deny web.sushi.app.localspace too (unbound's
    harden-below-nxdomain); they answer NOERROR with no data, in the asker's space only."""
    for name in ("sushi.app.localspace", "app.localspace", "localspace"):
        reply = sp.dig(sp.worker, name)
        assert reply["rcode"] == NOERROR and reply["count"] == 0, name
    assert sp.dig(sp.cr, "sushi.app.localspace")["rcode"] == NXDOMAIN


def test_the_zone_name_server_is_the_askers_dns_address(sp: Spaces) -> None:
    for asker in (sp.worker, sp.other):
        assert sp.ips(asker, "ns.localspace") == [sp.dns_of(asker)]


def test_unknown_names_are_nxdomain(sp: Spaces) -> None:
    for name in (
        "nope.sushi.app.localspace",
        "9.web.sushi.app.localspace",
        "web.nosuchapp.app.localspace",
        "anything.localspace",
    ):
        assert sp.dig(sp.worker, name)["rcode"] == NXDOMAIN, name


def test_other_types_of_a_known_name_are_noerror_without_data(sp: Spaces) -> None:
    for qtype in ("AAAA", "MX", "TXT"):
        reply = sp.dig(sp.worker, "web.sushi.app.localspace", qtype)
        assert reply["rcode"] == NOERROR and reply["count"] == 0, qtype


def test_answers_are_scoped_to_the_askers_space(sp: Spaces) -> None:
    # space B, the Common Runtime: sushi's names do not exist for them
    for asker in (sp.other, sp.cr):
        assert sp.dig(asker, "web.sushi.app.localspace")["rcode"] == NXDOMAIN
    # and B's own names work in B, not in A
    assert sp.ips(sp.other, "1.worker.other.app.localspace") == [sp.other["ip"]]
    assert sp.dig(sp.worker, "1.worker.other.app.localspace")["rcode"] == NXDOMAIN


def test_an_app_with_discovery_off_has_no_names(sp: Spaces) -> None:
    assert sp.dig(sp.worker, "worker.quiet.app.localspace")["rcode"] == NXDOMAIN
    features = sp.daemon.cli("features", "--app", "quiet")
    assert "spaces-dns-discovery" in features.stdout and "disabled" in features.stdout


def test_other_names_are_forwarded_to_the_upstream(sp: Spaces) -> None:
    for asker in (sp.worker, sp.cr):
        assert sp.ips(asker, UPSTREAM_NAME) == [UPSTREAM_ADDRESS]
        assert sp.dig(asker, "missing.example.test")["rcode"] == NXDOMAIN
    reply = sp.dig(sp.worker, UPSTREAM_NAME, tcp=True)
    assert [ip for _, _, ip in reply["answers"]] == [UPSTREAM_ADDRESS]


def test_dynos_resolve_through_their_own_resolv_conf(sp: Spaces) -> None:
    host_resolv = read("/etc/resolv.conf")
    code = (
        "import socket\n"
        "print(open('/etc/resolv.conf').read().replace('\\n', '|'))\n"
        "print('resolved', socket.gethostbyname('1.web.sushi.app.localspace'))\n"
        f"print('upstream', socket.gethostbyname({UPSTREAM_NAME!r}))\n"
    )
    status, output = _run(sp, "sushi", code)
    assert status == 0, output
    assert f"nameserver {sp.a['dns']}" in output
    assert "search" not in output and "ndots" not in output
    assert f"resolved {sp.web1['ip']}" in output
    assert f"upstream {UPSTREAM_ADDRESS}" in output
    assert read("/etc/resolv.conf") == host_resolv


# ---------------------------------------------------------------- environment and IPv6
ENV_AND_IPV6 = (
    "import json, os\n"
    "keys = [k for k in os.environ if k.startswith('HEROKU_')]\n"
    "inet6 = open('/proc/net/if_inet6').read() if os.path.exists('/proc/net/if_inet6') else ''\n"
    "print('REPORT', json.dumps({k: os.environ[k] for k in keys} | {'ipv6': inet6.strip()}))\n"
)


def _report(sp: Spaces, app: str) -> dict[str, str]:
    status, output = _run(sp, app, ENV_AND_IPV6)
    assert status == 0, output
    return json.loads(output.split("REPORT ", 1)[1].splitlines()[0])


def test_discovery_apps_get_dns_variables_and_no_ipv6(sp: Spaces) -> None:
    report = _report(sp, "sushi")
    assert report["HEROKU_DNS_FORMATION_NAME"] == "run.sushi.app.localspace"
    assert report["HEROKU_DNS_DYNO_NAME"].endswith(".run.sushi.app.localspace")
    assert report["HEROKU_DNS_APP_NAME"] == "sushi.app.localspace"
    assert ipaddress.IPv4Address(report["HEROKU_PRIVATE_IP"]) in ipaddress.IPv4Network(sp.a["cidr"])
    assert report["ipv6"] == ""  # no ::1, no link-local address


def test_web_dynos_see_their_own_names(sp: Spaces) -> None:
    status, body = _http_from(sp, sp.worker, f"http://{sp.web1['ip']}:{sp.web1['port']}/")
    assert status == 200
    env = body["env"]
    assert env["HEROKU_DNS_DYNO_NAME"] == "1.web.sushi.app.localspace"
    assert env["HEROKU_DNS_FORMATION_NAME"] == "web.sushi.app.localspace"
    assert env["HEROKU_PRIVATE_IP"] == sp.web1["ip"]
    assert env["PORT"] == str(sp.web1["port"]) and env["DYNO"] == "web.1"


def test_discovery_off_keeps_ipv6_and_only_the_private_ip(sp: Spaces) -> None:
    report = _report(sp, "quiet")
    assert "HEROKU_PRIVATE_IP" in report
    assert not any(k.startswith("HEROKU_DNS_") for k in report)
    assert "00000000000000000000000000000001" in report["ipv6"]  # ::1 on lo


def test_common_runtime_dynos_get_no_space_variables(sp: Spaces) -> None:
    report = _report(sp, "classic")
    assert not [k for k in report if k != "ipv6"]


def test_toggling_discovery_changes_answers_at_once_and_env_at_next_start(sp: Spaces) -> None:
    daemon = sp.daemon
    try:
        result = daemon.cli("features:disable", "spaces-dns-discovery", "--app", "sushi")
        assert result.returncode == 0, result.stderr
        assert "next start" in result.stdout
        assert sp.dig(sp.worker, "web.sushi.app.localspace")["rcode"] == NXDOMAIN
        assert "HEROKU_DNS_DYNO_NAME" not in _report(sp, "sushi")
    finally:
        daemon.cli("features:enable", "spaces-dns-discovery", "--app", "sushi")
    assert sp.ips(sp.worker, "1.web.sushi.app.localspace") == [sp.web1["ip"]]
    assert "HEROKU_DNS_DYNO_NAME" in _report(sp, "sushi")


# ---------------------------------------------------------------- registration timing
def test_record_exists_before_the_process_starts_and_goes_with_the_stop(sp: Spaces) -> None:
    # The process resolves its own name as its first act: the record must already be there.
    code = (
        "import os, socket\n"
        "print('self', socket.gethostbyname(os.environ['HEROKU_DNS_DYNO_NAME']))\n"
        "print('private', os.environ['HEROKU_PRIVATE_IP'])\n"
    )
    status, output = _run(sp, "sushi", code)
    assert status == 0, output
    lines = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    assert lines["self"] == lines["private"]
    # run.N is gone with its dyno
    sp.daemon.wait_for(
        lambda: not [d for d in sp.daemon.dynos("sushi") if d["type"] == "run"], "run dyno gone"
    )
    assert sp.dig(sp.worker, "run.sushi.app.localspace")["rcode"] == NXDOMAIN


def test_no_stale_or_duplicate_answers_while_dynos_come_and_go(sp: Spaces) -> None:
    daemon = sp.daemon
    for _ in range(3):
        started = [daemon.run("sushi", "churn", "sleep 600") for _ in range(3)]
        answer = sp.ips(sp.worker, "churn.sushi.app.localspace")
        assert sorted(answer) == sorted(d["ip"] for d in started)
        daemon.stop_dyno("sushi", started[0]["name"], grace=0)
        answer = sp.ips(sp.worker, "churn.sushi.app.localspace")
        assert sorted(answer) == sorted(d["ip"] for d in started[1:])
        for dyno in started[1:]:
            daemon.stop_dyno("sushi", dyno["name"], grace=0)
        assert sp.dig(sp.worker, "churn.sushi.app.localspace")["rcode"] == NXDOMAIN


def test_big_answers_set_tc_and_come_whole_over_tcp(sp: Spaces) -> None:
    daemon = sp.daemon
    check = daemon.cli("apps:create", "bulk", "--space", sp.a["name"])
    assert check.returncode == 0, check.stderr
    rules_before = _rule_count(daemon.prefix)
    try:
        started = [daemon.run("bulk", "many", "sleep 600") for _ in range(50)]
        udp = sp.dig(sp.worker, "many.bulk.app.localspace")
        assert udp["tc"] == 1
        tcp = sp.dig(sp.worker, "many.bulk.app.localspace", tcp=True)
        assert tcp["tc"] == 0
        assert sorted(ip for _, _, ip in tcp["answers"]) == sorted(d["ip"] for d in started)
        # 50 more dynos, not one more rule
        assert _rule_count(daemon.prefix) == rules_before
    finally:
        result = daemon.cli("apps:destroy", "bulk")
    assert result.returncode == 0, result.stderr
    assert sp.dig(sp.worker, "many.bulk.app.localspace")["rcode"] == NXDOMAIN
    leftover = [n for n in sh("ip", "netns", "list").stdout.split() if ".many." in n]
    assert not leftover


def _rule_count(table: str) -> int:
    total = 0
    for family in ("inet", "bridge"):
        listing = json.loads(sh("nft", "-j", "list", "table", family, table).stdout)
        total += sum(1 for item in listing["nftables"] if "rule" in item)
    return total


# ---------------------------------------------------------------- traffic
def test_dynos_of_a_space_reach_each_other_on_any_port(sp: Spaces) -> None:
    ip = sp.worker["ip"]
    assert _connect(sp, sp.web1, ip, WORKER_PORT)  # HTTP server of the worker
    assert _connect(sp, sp.web1, ip, WORKER_PORT + 1)  # its other TCP port
    assert _connect(sp, sp.web1, ip, WORKER_PORT, "udp")
    # another app of the same space, another type
    assert _connect(sp, sp.quiet, ip, WORKER_PORT)
    ping = sh("ip", "netns", "exec", sp.ns(sp.web1), "ping", "-c1", "-W2", ip, check=False)
    assert ping.returncode == 0, ping.stdout


def test_a_dyno_bound_to_its_private_ip_is_reachable_in_its_space(sp: Spaces) -> None:
    dyno = _dyno(sp.daemon, "sushi", "private", sp.a["name"], BIND_PRIVATE_IP="1")
    try:
        assert _connect(sp, sp.worker, dyno["ip"], WORKER_PORT)
        assert not _connect(sp, sp.other, dyno["ip"], WORKER_PORT)
    finally:
        sp.daemon.stop_dyno("sushi", dyno["name"], grace=0)


def test_nothing_reaches_a_space_from_another_space_the_common_runtime_or_the_host(
    sp: Spaces,
) -> None:
    ip = sp.worker["ip"]
    for source in (sp.other, sp.cr):
        assert not _connect(sp, source, ip, WORKER_PORT), source["app"]
        assert not _connect(sp, source, ip, WORKER_PORT, "udp"), source["app"]
        ping = sh("ip", "netns", "exec", sp.ns(source), "ping", "-c1", "-W1", ip, check=False)
        assert ping.returncode != 0
    # space A cannot reach B either
    assert not _connect(sp, sp.worker, sp.other["ip"], WORKER_PORT)
    # the host, and the internet
    code = f"import socket; socket.create_connection(({ip!r}, {WORKER_PORT}), timeout=2)"
    assert sh(PYTHON, "-c", code, check=False).returncode != 0
    inet = sh("ip", "netns", "exec", sp.inet.netns, PYTHON, "-c", code, check=False)
    assert inet.returncode != 0


def test_a_space_dyno_reaches_only_its_own_bridge_services(sp: Spaces) -> None:
    # B's dyno cannot use A's DNS or A's internal router; nor any other host port.
    assert not _connect(sp, sp.other, sp.a["dns"], 80)
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
        "from dnslib import DNSRecord\n"
        f"s.sendto(DNSRecord.question('x.example.test').pack(), ({sp.a['dns']!r}, 53))\n"
        "s.recvfrom(512)\n"
    )
    probe = sh("ip", "netns", "exec", sp.ns(sp.other), sys.executable, "-c", code, check=False)
    assert probe.returncode != 0
    # nor the router's external address (it listens there; only the bridge address is open)
    assert not _connect(sp, sp.worker, sp.client.host_ip, sp.daemon.router_port)


def test_root_in_a_space_dyno_cannot_spoof_its_way_into_another_space(sp: Spaces) -> None:
    """Root inside B's dyno takes an address of space A and tries A's worker."""
    ns = sp.ns(sp.other)
    spoofed = str(ipaddress.IPv4Address(sp.worker["ip"]) + 4)
    sh("ip", "-n", ns, "addr", "add", f"{spoofed}/32", "dev", "eth0")
    try:
        code = (
            "import socket\n"
            "s = socket.socket()\n"
            f"s.bind(({spoofed!r}, 0)); s.settimeout(2)\n"
            f"s.connect(({sp.worker['ip']!r}, {WORKER_PORT}))\n"
        )
        assert netns_exec(ns, code).returncode != 0
    finally:
        sh("ip", "-n", ns, "addr", "del", f"{spoofed}/32", "dev", "eth0", check=False)


def test_outbound_leaves_from_the_spaces_nat_address(sp: Spaces) -> None:
    def seen_from(dyno: dict[str, Any]) -> str:
        code = (
            "import socket\n"
            f"c = socket.create_connection(({sp.inet.ip!r}, {sp.inet.port}), timeout=5)\n"
            "print(c.recv(100).decode())\n"
        )
        result = netns_exec(sp.ns(dyno), code)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert seen_from(sp.worker) == sp.nat_a == sp.a["nat_ip"]
    assert seen_from(sp.other) == sp.b["nat_ip"]
    assert seen_from(sp.cr) == sp.inet.host_ip  # masqueraded behind the host
    listing = sp.daemon.cli("spaces")
    assert sp.nat_a in listing.stdout and sp.a["cidr"] in listing.stdout


# ---------------------------------------------------------------- router
def _http_from(sp: Spaces, dyno: dict[str, Any], url: str) -> tuple[int, dict[str, Any]]:
    """GET url from inside a dyno's namespace (as root there; name resolution by dnslib)."""
    code = (
        "import json, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=10)\n"
        "    print(json.dumps([r.status, json.loads(r.read())]))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps([e.code, {'body': e.read().decode()}]))\n"
    )
    result = netns_exec(sp.ns(dyno), code)
    assert result.returncode == 0, result.stderr
    status, body = json.loads(result.stdout)
    return status, body


def _router_get(sp: Spaces, app: str, source: str | None = None) -> tuple[int, str]:
    """GET http://APP.localhost/ through the router's external address, from the host or from
    inside the client namespace (an outside client)."""
    url = f"http://{sp.client.host_ip}:{sp.daemon.router_port}/"
    code = (
        "import urllib.request, urllib.error\n"
        f"req = urllib.request.Request({url!r}, headers={{'Host': '{app}.localhost'}})\n"
        "try:\n"
        "    r = urllib.request.urlopen(req, timeout=10); print(r.status, r.read()[:60])\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read()[:80])\n"
    )
    if source is None:
        result = sh(PYTHON, "-c", code)
    else:
        result = sh("ip", "netns", "exec", source, PYTHON, "-c", code)
    status, _, body = result.stdout.strip().partition(" ")
    return int(status), body


def test_internal_app_is_served_to_its_space_through_the_router(sp: Spaces) -> None:
    code = (
        "import json, urllib.request\n"
        "r = urllib.request.urlopen('http://api.herokuapp.localspace/', timeout=10)\n"
        "print('GOT', r.status, json.loads(r.read())['dyno'])\n"
    )
    status, output = _run(sp, "sushi", code)
    assert status == 0, output
    assert "GOT 200 web.1" in output
    sp.daemon.wait_for(
        lambda: "host=api.herokuapp.localspace" in sp.daemon.log(), "the router's line"
    )


def test_internal_app_does_not_exist_outside_its_space(sp: Spaces) -> None:
    status, body = _router_get(sp, "api")
    assert status == 404
    status, _ = _router_get(sp, "api", sp.client.netns)
    assert status == 404
    assert sp.dig(sp.other, "api.herokuapp.localspace")["rcode"] == NXDOMAIN
    lines = [line for line in sp.daemon.log().splitlines() if "host=api.localhost" in line]
    assert lines and "status=404" in lines[-1]


def test_trusted_ip_ranges_limit_who_reaches_a_spaces_apps(sp: Spaces) -> None:
    daemon, space, client = sp.daemon, sp.a["name"], sp.client
    assert _router_get(sp, "sushi", client.netns)[0] == 200  # 0.0.0.0/0 by default
    add = daemon.cli("trusted-ips:add", "203.0.113.0/24", "--space", space)
    assert add.returncode == 0, add.stderr
    remove = daemon.cli("trusted-ips:remove", "0.0.0.0/0", "--space", space)
    assert remove.returncode == 0, remove.stderr
    try:
        status, body = _router_get(sp, "sushi", client.netns)
        assert status == 403 and "trusted" in body

        def refusal_logged() -> bool:  # router workers send their log lines in batches
            log = [line for line in daemon.log().splitlines() if f'fwd="{client.ip}"' in line]
            return "status=403" in log[-1]

        daemon.wait_for(refusal_logged, "the router's 403 line")
        # dynos of the space are never refused
        code = (
            "import urllib.request\n"
            "r = urllib.request.urlopen('http://sushi.herokuapp.localspace/', timeout=10)\n"
            "print('GOT', r.status)\n"
        )
        status, output = _run(sp, "quiet", code)
        assert status == 0 and "GOT 200" in output, output
        daemon.cli("trusted-ips:add", f"{client.ip}/32", "--space", space)
        assert _router_get(sp, "sushi", client.netns)[0] == 200  # at once
        listing = daemon.cli("trusted-ips", "--space", space)
        assert f"{client.ip}/32" in listing.stdout and "0.0.0.0/0" not in listing.stdout
    finally:
        daemon.cli("trusted-ips:add", "0.0.0.0/0", "--space", space)
        for cidr in ("203.0.113.0/24", f"{client.ip}/32"):
            daemon.cli("trusted-ips:remove", cidr, "--space", space)
    assert _router_get(sp, "sushi", client.netns)[0] == 200


def test_trusted_ip_ranges_are_capped_at_twenty(sp: Spaces) -> None:
    daemon, space = sp.daemon, sp.b["name"]
    added = [f"192.0.2.{4 * i}/30" for i in range(19)]  # with 0.0.0.0/0: 20
    try:
        for cidr in added:
            assert daemon.cli("trusted-ips:add", cidr, "--space", space).returncode == 0
        refused = daemon.cli("trusted-ips:add", "198.18.0.0/15", "--space", space)
        assert refused.returncode != 0 and "20" in refused.stderr
        bad = daemon.cli("trusted-ips:add", "203.0.113.5/24", "--space", space)
        assert bad.returncode != 0 and "203.0.113.0/24" in bad.stderr
    finally:
        for cidr in added:
            daemon.cli("trusted-ips:remove", cidr, "--space", space)
    assert daemon.client.call("GET", f"/v1/spaces/{space}/trusted-ips") == ["0.0.0.0/0"]


# ---------------------------------------------------------------- spaces and apps
def test_bad_space_requests_get_clear_errors(sp: Spaces) -> None:
    daemon = sp.daemon
    cases = [
        (["spaces:create", "Bad_Name"], "space name"),
        (["spaces:create", "okname", "--cidr", "10.1.0.0/24"], "/16"),
        (["spaces:create", "okname", "--cidr", "8.8.0.0/16"], "/16"),
        (["spaces:create", "okname", "--cidr", sp.a["cidr"]], "overlaps"),
        (["spaces:create", "okname", "--cidr", "172.31.0.0/16"], "overlaps"),
        (["spaces:create", "okname", "--nat-ip", "203.0.113.250"], "not an address of this host"),
        (["spaces:create", sp.a["name"]], "already exists"),
        (["spaces:destroy", sp.a["name"]], "still has apps"),
        (["spaces:destroy", "nosuchspace"], "no space"),
        (["apps:create", "loner", "--internal-routing"], "Private Space"),
        (["apps:create", "sushi"], "already exists"),
        (["apps:create", "lost", "--space", "nosuchspace"], "no space"),
        (["features:enable", "spaces-dns-discovery", "--app", "classic"], "Private Space"),
        (["features:enable", "no-such-feature", "--app", "sushi"], "no-such-feature"),
    ]
    before = daemon.client.call("GET", "/v1/spaces")
    for args, expected in cases:
        result = daemon.cli(*args)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
        assert "fix:" in result.stderr, (args, result.stderr)
    assert daemon.client.call("GET", "/v1/spaces") == before
    assert not any(a["name"] in ("loner", "lost") for a in daemon.client.call("GET", "/v1/apps"))


def test_apps_lists_space_internal_routing_and_features(sp: Spaces) -> None:
    apps = {a["name"]: a for a in sp.daemon.client.call("GET", "/v1/apps")}
    assert apps["api"]["space"] == sp.a["name"] and apps["api"]["internal_routing"]
    assert apps["sushi"]["features"]["spaces-dns-discovery"] is True
    assert apps["quiet"]["features"]["spaces-dns-discovery"] is False
    assert apps["classic"]["space"] is None
    listing = sp.daemon.cli("apps").stdout
    assert "api" in listing and sp.a["name"] in listing


def test_a_space_gets_the_next_free_range_and_goes_away_whole(sp: Spaces) -> None:
    daemon = sp.daemon
    name = f"{daemon.prefix}c"
    created = daemon.cli("spaces:create", name, "--json")
    assert created.returncode == 0, created.stderr
    space = next(s for s in daemon.client.call("GET", "/v1/spaces") if s["name"] == name)
    network = ipaddress.IPv4Network(space["cidr"])
    assert network.prefixlen == 16 and network.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
    for other in (sp.a, sp.b):
        assert not network.overlaps(ipaddress.IPv4Network(other["cidr"]))
    assert sh("ip", "link", "show", space["bridge"]).returncode == 0
    daemon.cli("apps:create", "brief", "--space", name)
    dyno = daemon.run("brief", "worker", "sleep 600")
    netns = daemon.netns("brief", dyno["name"])
    destroyed = daemon.cli("apps:destroy", "brief")
    assert destroyed.returncode == 0 and "worker.1" in destroyed.stdout
    assert netns not in sh("ip", "netns", "list").stdout
    assert daemon.cli("spaces:destroy", name).returncode == 0
    assert sh("ip", "link", "show", space["bridge"], check=False).returncode != 0
    elements = sh("nft", "list", "set", "inet", daemon.prefix, "bridges").stdout
    assert space["bridge"] not in elements


def test_space_urls_quote_cidrs(sp: Spaces) -> None:
    path = f"/v1/spaces/{sp.b['name']}/trusted-ips/{urllib.parse.quote('10.9.9.0/24', safe='')}"
    with pytest.raises(Exception) as refused:
        sp.daemon.client.call("DELETE", path)
    assert "not a trusted IP range" in str(refused.value)


def test_a_sigkilled_daemon_brings_its_spaces_back() -> None:
    """After SIGKILL the next daemon rebuilds each space (bridge, firewall, DNS, internal
    router) from the state and adopts the space's dynos; nothing is lost."""
    daemon = DaemonProc()
    try:
        daemon.start()
        space = f"{daemon.prefix}r"
        created = daemon.cli("spaces:create", space, "--cidr", free_space_cidr())
        assert created.returncode == 0, created.stderr
        assert daemon.cli("apps:create", "kept", "--space", space).returncode == 0
        worker = _dyno(daemon, "kept", "worker", space)
        web = daemon.run_app("kept", "web")
        info = daemon.client.call("GET", f"/v1/spaces/{space}")
        daemon.kill9()
        daemon.start()
        assert daemon.dyno("kept", "worker.1")["pid"] == worker["pid"]  # adopted, not restarted
        assert daemon.client.call("GET", f"/v1/spaces/{space}") == info
        code = (
            "import json, socket, urllib.request\n"
            "print('dns', socket.gethostbyname('1.worker.kept.app.localspace'))\n"
            "r = urllib.request.urlopen('http://kept.herokuapp.localspace/', timeout=10)\n"
            "print('router', json.loads(r.read())['dyno'])\n"
        )
        status, lines = daemon.run_once("kept", "run", f"{PYTHON} -c {shlex.quote(code)}")
        output = "\n".join(lines)
        assert status == 0, output
        assert f"dns {worker['ip']}" in output and "router web.1" in output
        assert web["state"] == "up"
    finally:
        found = daemon.close()
    assert not found, f"the daemon left kernel objects behind: {found}"
