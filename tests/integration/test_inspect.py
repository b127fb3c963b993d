"""`dynod inspect` against a real daemon: a Common Runtime web dyno and a Private Space with two
dynos. Every format shows every bridge and every dyno with its address, as the kernel has them;
what is broken by hand (a veth deleted, a stray nft element, a port's flags, a stray link) is
flagged, and gone once it is put back. The HTML page is opened in headless Chromium, whose
rendered DOM must show every bridge and dyno; its screenshot is kept (DYNOD_ARTEFACTS)."""

from __future__ import annotations

import contextlib
import html
import ipaddress
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dynod.testing.daemon import free_space_cidr
from tests.support import DaemonProc, sh

pytestmark = pytest.mark.root

CHROMIUM = ("chromium", "chromium-browser")


@dataclass
class Net:
    daemon: DaemonProc
    space: str
    bridges: list[str]  # the Common Runtime's, the space's
    dynos: list[dict[str, Any]]  # as the API lists them

    def inspect(self, *args: str) -> str:
        done = self.daemon.cli("inspect", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def model(self, *args: str) -> dict[str, Any]:
        return json.loads(self.inspect("--format", "json", *args))

    def problems(self) -> list[str]:
        return [f"{p['kind']} {p['subject']}: {p['detail']}" for p in self.model()["problems"]]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    # The daemon must not repair what the tests break by hand before inspect looks: no health
    # check within the test's time, no firewall guard.
    daemon = DaemonProc(extra=["--health-interval", "3600", "--no-firewall-guard"])
    try:
        daemon.start()
        space = f"{daemon.prefix}sp"
        cidr = free_space_cidr()
        for args in (
            ["spaces:create", space, "--cidr", cidr],
            ["apps:create", "shop"],
            ["apps:create", "api", "--space", space],
            ["apps:create", "jobs", "--space", space],
        ):
            done = daemon.cli(*args)
            assert done.returncode == 0, done.stderr
        daemon.run_app("shop", "web")
        daemon.run_app("api", "web")
        daemon.run_app("jobs", "worker", env={"APP_PORT": "6000"})
        spaces = daemon.client.call("GET", "/v1/spaces")
        bridges = [daemon.client.call("GET", "/v1/status")["bridge"], spaces[0]["bridge"]]
        yield Net(daemon, space, bridges, daemon.dynos())
    finally:
        found = daemon.close()
        assert not found, f"the daemon left kernel objects behind: {found}"


def _everything_shown(net: Net, shown: str) -> None:
    for bridge in net.bridges:
        assert bridge in shown
    for dyno in net.dynos:
        assert f"{dyno['app']}/{dyno['name']}" in shown
        assert f"{dyno['ip']}/30" in shown
        assert dyno["netns"] in shown


def test_text_dot_and_html_show_every_bridge_and_dyno_with_its_address(net: Net) -> None:
    text = net.inspect()
    _everything_shown(net, text)
    assert "the kernel holds what the state says: no differences" in text
    _everything_shown(net, net.inspect("--format", "dot"))
    _everything_shown(net, net.inspect("--format", "html"))


def test_the_model_is_what_iproute2_shows(net: Net) -> None:
    """Each port's ifindex and flags, and eth0's peer, as `ip -j -d link` reads them."""
    model = net.model()
    assert model["problems"] == []
    assert [b["name"] for b in model["bridges"]] == net.bridges
    ports = {p["name"]: p for b in model["bridges"] for p in b["ports"]}
    for dyno in model["dynos"]:
        (link,) = json.loads(sh("ip", "-j", "-d", "link", "show", "dev", dyno["veth"]).stdout)
        port = ports[dyno["veth"]]
        assert port["index"] == dyno["veth_index"] == link["ifindex"]
        assert port["peer_index"] == dyno["eth0_index"] == link["link_index"]
        slave = link["linkinfo"]["info_slave_data"]
        assert (
            (port["isolated"], port["learning"], port["flood"])
            == (
                slave["isolated"],
                slave["learning"],
                slave["flood"],
            )
            == (True, False, False)
        )
        inside = json.loads(sh("ip", "-n", dyno["netns"], "-j", "addr", "show", "eth0").stdout)
        (eth0,) = inside
        assert eth0["ifindex"] == dyno["eth0_index"]
        assert eth0["link_index"] == dyno["veth_index"]
        assert f"{eth0['addr_info'][0]['local']}/30" == dyno["address"]
    sets = {f"{s['family']} {s['name']}": s["elements"] for s in model["sets"]}
    table = json.loads(sh("nft", "-j", "list", "set", "inet", net.daemon.prefix, "web").stdout)
    (web,) = [item["set"] for item in table["nftables"] if "set" in item]
    assert sorted(f"{e['concat'][0]} . {e['concat'][1]}" for e in web["elem"]) == sorted(
        sets["inet web"]
    )
    nat = sets["inet nat"]
    assert len(nat) == 1 and nat[0].startswith(model["bridges"][1]["cidr"] + " : ")
    names = model["dns"][net.space]
    api = next(d for d in net.dynos if d["app"] == "api")
    assert names["1.web.api.app.localspace"] == [api["ip"]]


def test_scope_app_and_space(net: Net) -> None:
    shop = net.model("--app", "shop")
    assert [b["name"] for b in shop["bridges"]] == net.bridges[:1]
    assert [d["app"] for d in shop["dynos"]] == ["shop"]
    space = net.model("--space", net.space)
    assert [b["name"] for b in space["bridges"]] == net.bridges[1:]
    assert sorted(d["app"] for d in space["dynos"]) == ["api", "jobs"]
    api = net.model("--app", "api")
    assert [d["app"] for d in api["dynos"]] == ["api"]
    # jobs' port and gateway on the same bridge are jobs', not strays
    assert api["problems"] == []
    assert sorted(p["dyno"] for p in api["bridges"][0]["ports"]) == ["api/web.1", "jobs/worker.1"]


def test_graphviz_draws_every_bridge_and_dyno(net: Net, tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.fail("graphviz is not installed (vagrant/provision.sh installs it)")
    image = tmp_path / "net.svg"
    done = net.daemon.cli("inspect", "--format", "svg", "-o", str(image))
    assert done.returncode == 0, done.stderr
    svg = image.read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    _everything_shown(net, html.unescape(svg))  # dot writes "-" as &#45;


def test_unknown_app_or_space_is_refused(net: Net) -> None:
    for args, problem in (
        (["--app", "nosuchapp"], "no app named 'nosuchapp'"),
        (["--space", "nosuchspace"], "no space named 'nosuchspace'"),
    ):
        done = net.daemon.cli("inspect", *args)
        assert done.returncode == 1
        assert f"error: {problem}" in done.stderr
        assert "fix: " in done.stderr
        assert done.stdout == ""


def test_a_deleted_veth_is_flagged(net: Net) -> None:
    dyno = net.daemon.run_app("jobs", "worker", env={"APP_PORT": "6001"})
    try:
        sh("ip", "link", "del", dyno["veth"])
        found = net.problems()
        assert f"missing veth {dyno['veth']}: jobs/{dyno['name']}'s; " in "\n".join(found)
        assert any(p.startswith(f"missing eth0 in {dyno['netns']}") for p in found)
        text = net.inspect()
        assert f"! veth {dyno['veth']} MISSING" in text
    finally:
        net.daemon.stop_dyno("jobs", dyno["name"])
    assert net.problems() == []


def test_a_missing_and_a_stray_route_through_a_bridge_are_flagged(net: Net) -> None:
    """A dyno's /30 is routed through its bridge (its gateway's second route): deleted by hand
    it is missing (the host cannot reach the dyno), put back without its source it is wrong,
    and a /30 routed there that is no dyno's is a stray. All gone once put back as it was."""
    dyno = next(d for d in net.dynos if d["app"] == "api")
    bridge = net.bridges[1]
    subnet = ipaddress.IPv4Network(f"{dyno['ip']}/30", strict=False)
    gateway = str(subnet.network_address + 1)
    stray = ipaddress.IPv4Network(f"{subnet.network_address + 4 * 200}/30")
    sh("ip", "route", "del", str(subnet), "dev", bridge)
    sh("ip", "route", "add", str(stray), "dev", bridge, "proto", "static", "scope", "link")
    try:
        found = net.problems()
        shown = f"`ip route show {subnet} dev {bridge}`"
        assert f"missing route {subnet}: through {bridge}; {shown}" in found
        assert f"stray route {stray}: through {bridge}, no dyno's" in found
        assert f"  ! missing route {subnet}: through {bridge}" in net.inspect()
        # put back by hand without its source: the host would send from another address
        sh("ip", "route", "add", str(subnet), "dev", bridge, "proto", "static", "scope", "link")
        said = f"wrong route {subnet}: through {bridge} has no src, the state says src {gateway}"
        assert any(p.startswith(said) for p in net.problems()), net.problems()
    finally:
        sh("ip", "route", "del", str(stray), "dev", bridge)
        sh("ip", "route", "replace", str(subnet), "dev", bridge, "proto", "static", "scope",
           "link", "src", gateway)  # fmt: skip
    assert net.problems() == []


def test_a_stray_nft_element_is_flagged(net: Net) -> None:
    table = net.daemon.prefix
    element = "{ 10.255.255.254 . 9999 }"
    sh("nft", "add", "element", "inet", table, "web", element)
    try:
        found = net.problems()
        assert found == [f"stray element 10.255.255.254 . 9999: in set inet {table} web"]
        assert "! stray element 10.255.255.254 . 9999" in net.inspect()
    finally:
        sh("nft", "delete", "element", "inet", table, "web", element)
    assert net.problems() == []


def test_a_port_with_learning_on_and_a_stray_link_are_flagged(net: Net) -> None:
    veth = net.dynos[0]["veth"]
    stray = f"{net.daemon.prefix}-ffff"
    try:
        sh("bridge", "link", "set", "dev", veth, "learning", "on")
        sh("ip", "link", "add", stray, "type", "veth", "peer", "name", f"{stray}e")
        found = net.problems()
        assert any(p.startswith(f"wrong port {veth}: learning on (should be off)") for p in found)
        assert f"stray link {stray}: no dyno of the state owns it" in found
        assert f"stray link {stray}e: no dyno of the state owns it" in found
    finally:
        sh("bridge", "link", "set", "dev", veth, "learning", "off")
        sh("ip", "link", "del", stray, check=False)  # its peer goes with it
    assert net.problems() == []


# ---------------------------------------------------------------- in a real browser
class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.svgs += tag == "svg"

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _chromium() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    reason = "Debian's chromium is not installed (vagrant/provision.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _browse(chromium: str, profile: Path, *args: str) -> str:
    """One headless Chromium run, in a process group of its own that is killed whatever
    happens (Chromium forks helpers). As root it needs --no-sandbox."""
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its helpers, if any are left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}"
    return out.decode()


def test_the_html_page_renders_every_bridge_and_dyno_in_chromium(net: Net, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "inspect.html"
    done = net.daemon.cli("inspect", "--format", "html", "-o", str(page))
    assert done.returncode == 0, done.stderr
    dom = _browse(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    parsed = _Text()
    parsed.feed(dom)
    assert parsed.svgs == len(net.bridges)
    _everything_shown(net, " ".join(parsed.parts))
    artefacts = Path(os.environ.get("DYNOD_ARTEFACTS") or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / "inspect.png"
    _browse(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1400,1600",
        "--hide-scrollbars",
        page.as_uri(),
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if page.resolve() != (artefacts / "inspect.html").resolve():  # without DYNOD_ARTEFACTS: kept
        shutil.copy(page, artefacts / "inspect.html")
    print(f"inspect screenshot: {shot}")
