"""The kernel layer on its own: namespaces entered in-thread, veths born inside, nftables."""

from __future__ import annotations

import os
import threading
import time

import pytest
from pyroute2 import IPRoute

from netns import addresses, links, namespace, sysctl
from netns.nftables import Nft, NftError
from tests.support import sweep, unique_prefix

pytestmark = pytest.mark.root


@pytest.fixture
def prefix() -> object:
    p = unique_prefix()
    yield p
    assert sweep(p) == {}, "the test left objects behind"


def test_create_enter_and_delete_a_namespace(prefix: str) -> None:
    name = f"{prefix}-ns"
    home = os.stat("/proc/thread-self/ns/net").st_ino
    namespace.create(name)
    assert namespace.exists(name) and name in namespace.names(prefix)
    go = threading.Event()
    seen: list[int] = []

    def other_thread() -> None:
        go.wait(10)
        seen.append(os.stat("/proc/thread-self/ns/net").st_ino)

    bystander = threading.Thread(target=other_thread)
    bystander.start()
    with namespace.entered(name):
        assert os.stat("/proc/thread-self/ns/net").st_ino == namespace.inode(name)
        go.set()  # a thread that was already running stays in its namespace
        bystander.join()
        assert seen == [home]
        sysctl.write("net.ipv4.ip_default_ttl", 33)  # the namespace's own value...
        assert sysctl.read("net.ipv4.ip_default_ttl") == "33"
    assert sysctl.read("net.ipv4.ip_default_ttl") != "33"  # ...not the host's
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    with pytest.raises(FileExistsError):
        namespace.create(name)
    assert namespace.delete(name) is True
    assert namespace.delete(name) is False
    assert not namespace.exists(name)


def test_entered_switches_back_after_an_error(prefix: str) -> None:
    name = f"{prefix}-ns"
    namespace.create(name)
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(RuntimeError), namespace.entered(name):
        raise RuntimeError("boom")
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    namespace.delete(name)


def test_entered_refuses_an_event_loop_thread(prefix: str) -> None:
    import asyncio

    name = f"{prefix}-ns"
    namespace.create(name)

    async def inside_loop() -> None:
        with namespace.entered(name):
            pass

    with pytest.raises(RuntimeError, match="event loop"):
        asyncio.run(inside_loop())
    namespace.delete(name)


def test_veth_peer_is_born_inside_with_a_small_index(prefix: str) -> None:
    name = f"{prefix}-ns"
    namespace.create(name)
    with IPRoute() as ipr:
        bridge = links.ensure_bridge(ipr, f"{prefix}br")
        port = links.add_veth_into_netns(
            ipr,
            host_name=f"{prefix}-1",
            host_mac="0a:59:01:02:03:04",
            master=bridge,
            peer_name="eth0",
            peer_mac="0a:58:01:02:03:04",
            netns=name,
        )
        links.isolate_bridge_port(ipr, port)
        addresses.add(ipr, bridge, "10.255.255.1", 30)
        assert str(addresses.ipv4_on(ipr, bridge)[0]) == "10.255.255.1/30"
        assert addresses.delete(ipr, bridge, "10.255.255.1", 30) is True
        assert addresses.delete(ipr, bridge, "10.255.255.1", 30) is False
        with namespace.entered(name), IPRoute() as inner:
            assert links.index_of(inner, "eth0") == 2
            # (not /sys: sysfs shows the namespace it was mounted in, the host's)
            eth0 = inner.get_links(2)[0]
            assert eth0.get_attr("IFLA_ADDRESS") == "0a:58:01:02:03:04"
        namespace.delete(name)
        # deleting the namespace is enough: the kernel destroys both ends of the veth with it
        deadline = time.monotonic() + 10
        while links.index_of(ipr, f"{prefix}-1") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert links.index_of(ipr, f"{prefix}-1") is None
        links.delete(ipr, f"{prefix}br")


def test_nft_runs_one_transaction_and_reports_errors(prefix: str) -> None:
    nft = Nft()
    try:
        with pytest.raises(NftError, match="syntax error"):
            nft.run(f"add table inet {prefix}\nadd chain inet {prefix} c {{ bogus }}")
        # the failed transaction left nothing, not even the table of its first line
        assert ("inet", prefix) not in nft.tables()
        nft.run(f"add table inet {prefix}")
        assert ("inet", prefix) in nft.tables()
        nft.run(f"delete table inet {prefix}")
    finally:
        nft.close()
