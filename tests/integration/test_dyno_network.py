"""dynod/kernel/network.py's attach() on the kernel, without a daemon: a first start's IPv6 is
set before the dyno's links go up."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from dynod.kernel import network
from dynod.kernel.addressing import Pool
from netns import links, sysctl
from netns.rtnl import Rtnl
from tests.support import sh, sweep, unique_prefix

pytestmark = pytest.mark.root

POOL = "10.255.249.0/24"  # a test range: its gateway routes go with the test's bridge


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique_prefix()
    yield p
    assert sweep(p) == {}, "the test left objects behind"


def _inside(netns: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", netns, *argv).stdout


def _disabled(netns: str) -> dict[str, str]:
    return {
        conf: _inside(netns, "sysctl", "-n", f"net.ipv6.conf.{conf}.disable_ipv6").strip()
        for conf in ("all", "default", "lo", "eth0")
    }


def _carrier(netns: str) -> bool:
    return _inside(netns, "cat", "/sys/class/net/eth0/carrier").strip() == "1"


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_first_start_without_ipv6_never_gets_an_ipv6_address(
    prefix: str, ipv6: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With IPv6 off (DNS discovery), attach() turns it off before lo and eth0 go up (read
    inside the namespace as each goes up), so they never get ::1 or a link-local address: none
    right after, nor once eth0 has its carrier (when the kernel would give it one). Turned off
    later, as the spawn did, the kernel first made both, then removed them. With IPv6 on, it is
    on as they go up, and lo has ::1."""
    if not network.new_namespaces_have_ipv6():
        pytest.skip("new namespaces get no IPv6 here: the spawn sets all four values")
    as_they_go_up: list[str] = []
    set_up = links.set_up

    def watched_set_up(rtnl: Rtnl, index: int) -> None:
        as_they_go_up.append(sysctl.read("net.ipv6.conf.all.disable_ipv6"))  # inside it
        set_up(rtnl, index)

    monkeypatch.setattr(links, "set_up", watched_set_up)
    pool = Pool(POOL)
    dyno = network.Attachment(f"{prefix}-d", f"{prefix}-1", pool.subnet(1), pool.bridge_mac)
    rtnl = Rtnl()
    try:
        with IPRoute() as ipr:
            bridge = network.ensure_shard_bridge(ipr, f"{prefix}b", pool)
            network.attach(rtnl, bridge, dyno, ipv6=ipv6)
            try:
                assert as_they_go_up == ["0" if ipv6 else "1"] * 2  # lo, eth0
                ipv6_addresses = _inside(dyno.netns, "ip", "-6", "-o", "addr", "show")
                if ipv6:
                    assert "lo    inet6 ::1/128" in ipv6_addresses, ipv6_addresses
                    assert set(_disabled(dyno.netns).values()) == {"0"}
                    return
                assert ipv6_addresses == ""
                assert _disabled(dyno.netns) == dict.fromkeys(("all", "default", "lo", "eth0"), "1")
                deadline = time.monotonic() + 5
                while not _carrier(dyno.netns) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _carrier(dyno.netns)
                time.sleep(0.2)  # the kernel's link-local address comes with the carrier event
                assert _inside(dyno.netns, "ip", "-6", "-o", "addr", "show") == ""
                up_links = _inside(dyno.netns, "ip", "-o", "link", "show", "up")
                assert "lo:" in up_links and "eth0@" in up_links  # up all the same
            finally:
                # the veth first: a deleted namespace's goes later, when the kernel gets to it
                sh("ip", "link", "del", dyno.veth, check=False)
                network.detach(rtnl, bridge, dyno)
    finally:
        rtnl.close()
        sh("ip", "link", "del", f"{prefix}b", check=False)
