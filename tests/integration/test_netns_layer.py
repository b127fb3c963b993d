"""The kernel layer on its own: namespaces entered in-thread, veths born inside, nftables."""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dynod.kernel.mounts import directory_of
from netns import addresses, fstab, links, mntns, namespace, nfevents, nsid, removals, sysctl
from netns import exec as netns_exec
from netns.nftables import Nft, NftError
from netns.rtnl import Route, Rtnl
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


def _queues(link: Any) -> tuple[int, int]:
    """(allocated TX queues, RX queues) of a link as pyroute2 reads it (`ip -d link show`)."""
    return link.get_attr("IFLA_NUM_TX_QUEUES"), link.get_attr("IFLA_NUM_RX_QUEUES")


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
            assert _queues(eth0) == (1, 1)
        namespace.delete(name)
        # deleting the namespace is enough: the kernel destroys both ends of the veth with it
        deadline = time.monotonic() + 10
        while links.index_of(ipr, f"{prefix}-1") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert links.index_of(ipr, f"{prefix}-1") is None
        links.delete(ipr, f"{prefix}br")


def test_the_lean_netlink_socket_makes_what_the_commands_say(prefix: str) -> None:
    """netns/rtnl.py packs its own messages: each call leaves the kernel as `ip`, `bridge` and
    pyroute2 read it back, and a refusal is pyroute2's NetlinkError with the kernel's errno."""
    name, port_name, bridge_name = f"{prefix}-ns", f"{prefix}-1", f"{prefix}br"
    namespace.create(name)
    rtnl = Rtnl()
    try:
        with IPRoute() as ipr:
            bridge = links.ensure_bridge(ipr, bridge_name)
            port = links.add_veth_into_netns(
                rtnl,
                host_name=port_name,
                host_mac="0a:59:01:02:03:05",
                master=bridge,
                peer_name="eth0",
                peer_mac="0a:58:01:02:03:05",
                netns=name,
            )
            (host_end,) = ipr.get_links(port)
            assert host_end.get_attr("IFLA_IFNAME") == port_name
            assert host_end.get_attr("IFLA_ADDRESS") == "0a:59:01:02:03:05"
            assert host_end.get_attr("IFLA_MASTER") == bridge and host_end["flags"] & 1  # up
            # one queue each way, made so (not cut down after, which waits for RCU)
            assert _queues(host_end) == (1, 1)
            with namespace.entered(name), IPRoute() as inner:
                assert _queues(inner.get_links(2)[0]) == (1, 1)
            links.set_arp_ignore(rtnl, port, 8)
            assert sysctl.read(f"net.ipv4.conf.{port_name}.arp_ignore") == "8"
            default = sysctl.read("net.ipv4.conf.default.arp_announce")
            assert sysctl.read(f"net.ipv4.conf.{port_name}.arp_announce") == default  # only that
            links.isolate_bridge_port(rtnl, port)
            shown = sh("bridge", "-d", "link", "show", "dev", port_name)
            assert "isolated on" in shown and "learning off" in shown and "flood off" in shown
            links.add_fdb_entry(rtnl, port, "0a:58:01:02:03:05")
            fdb = sh("bridge", "fdb", "show", "dev", port_name)
            assert f"0a:58:01:02:03:05 master {bridge_name} static" in fdb
            addresses.add(rtnl, bridge, "10.255.254.1", 30)
            addresses.add(rtnl, bridge, "10.255.254.1", 30)  # there already: no error
            assert [str(a) for a in addresses.ipv4_on(ipr, bridge)] == ["10.255.254.1/30"]
            sh(
                "ip",
                "neigh",
                "replace",
                "10.255.254.2",
                "lladdr",
                "0a:58:01:02:03:05",
                "dev",
                bridge_name,
            )
            addresses.forget_neighbour(rtnl, bridge, "10.255.254.2")
            assert "10.255.254.2" not in sh("ip", "neigh", "show", "dev", bridge_name)
            addresses.forget_neighbour(rtnl, bridge, "10.255.254.2")  # gone already: fine
            with pytest.raises(NetlinkError) as refused:
                rtnl.link("add", ifname=port_name, kind="veth", peer={"ifname": "x"})
            assert refused.value.code == 17  # EEXIST, as IPRoute reports it
            with namespace.entered(name):
                inner = Rtnl()
                try:
                    assert links.index_of(inner, "eth0") == 2
                    links.set_up(inner, links.LOOPBACK_INDEX)
                    links.set_up(inner, 2)
                    addresses.add(inner, 2, "10.255.254.2", 30)
                    addresses.add_default_route(inner, "10.255.254.1")
                finally:
                    inner.close()
            routes = sh("ip", "-n", name, "-4", "route", "show", "default")
            assert routes.split() == [
                "default",
                "via",
                "10.255.254.1",
                "dev",
                "eth0",
                "proto",
                "static",
            ]
            assert "inet 10.255.254.2/30 scope global eth0" in sh("ip", "-n", name, "addr")
            assert "LOOPBACK,UP" in sh("ip", "-n", name, "link", "show", "lo")
            assert addresses.delete(rtnl, bridge, "10.255.254.1", 30) is True
            assert addresses.delete(rtnl, bridge, "10.255.254.1", 30) is False
            assert links.delete(rtnl, port_name) is True
            assert links.delete(rtnl, port_name) is False
            links.delete(ipr, bridge_name)
    finally:
        rtnl.close()
        namespace.delete(name)


def _intact(routes: list[Route], wanted: tuple[Route, Route]) -> bool:
    """addresses.gateway_intact of a listing."""
    return addresses.gateway_intact(addresses.routes_by_key(routes), wanted)


def test_a_gateway_made_of_routes_is_the_hosts_and_each_side_knows_the_others_mac(
    prefix: str,
) -> None:
    """addresses.add_gateway: the host answers to the gateway and sends from it, with no
    address on the bridge; the namespace behind it reaches it with no ARP (both neighbour
    entries pinned); deleting it twice is no error, and nothing of it is left."""
    name, port_name, bridge_name = f"{prefix}-ns", f"{prefix}-1", f"{prefix}br"
    gateway, address, network = "10.255.253.1", "10.255.253.2", "10.255.253.0"
    namespace.create(name)
    rtnl = Rtnl()
    try:
        with IPRoute() as ipr:
            bridge = links.ensure_bridge(ipr, bridge_name)
            bridge_mac = "0a:5a:0a:ff:fd:00"
            links.set_address(ipr, bridge, bridge_mac)
            port = links.add_veth_into_netns(
                rtnl,
                host_name=port_name,
                host_mac="0a:59:0a:ff:fd:02",
                master=bridge,
                peer_name="eth0",
                peer_mac="0a:58:0a:ff:fd:02",
                netns=name,
            )
            links.isolate_bridge_port(rtnl, port)
            links.add_fdb_entry(rtnl, port, "0a:58:0a:ff:fd:02")
            addresses.add_gateway(rtnl, bridge, gateway, network, 30)
            addresses.add_gateway(rtnl, bridge, gateway, network, 30)  # there already: fine
            addresses.pin_neighbour(rtnl, bridge, address, "0a:58:0a:ff:fd:02")
            assert addresses.ipv4_on(ipr, bridge) == []
            assert addresses.local_gateways(rtnl.routes())[bridge] == [gateway]
            assert gateway in addresses.local_ipv4(ipr, rtnl.routes())
            assert f"{network}/30" in addresses.static_sources(rtnl.routes())[bridge]
            local = sh("ip", "route", "show", "table", "local", "dev", bridge_name)
            assert f"local {gateway} proto static scope host" in local
            main = sh("ip", "route", "show", "dev", bridge_name)
            assert f"{network}/30 proto static scope link src {gateway}" in main
            # the bridge's own routes, filtered by the kernel, of any protocol: not another
            # device's
            sh("ip", "route", "add", "10.255.252.0/30", "dev", "lo", "proto", "static")
            sh("ip", "route", "add", "10.255.254.0/30", "dev", bridge_name)  # proto boot
            wanted = addresses.gateway_routes(gateway, network, 30, bridge)
            try:
                own = rtnl.routes_through(bridge)
                assert {(r.dst, r.dst_len, r.source, r.proto) for r in own} == {
                    (gateway, 32, gateway, 4),
                    (network, 30, gateway, 4),
                    ("10.255.254.0", 30, "", 3),
                }
                assert _intact(own, wanted)
                if rtnl.filters:  # (a kernel before 4.20 lists the whole table, filtered here)
                    assert addresses.routes_through(rtnl, bridge + 1000) is None  # gone
            finally:
                sh("ip", "route", "del", "10.255.252.0/30", "dev", "lo")
                sh("ip", "route", "del", "10.255.254.0/30", "dev", bridge_name)
            # another route to the /30: before the gateway's (it replaced it without the source,
            # through the bridge or another device, or was prepended), the one a lookup meets, so
            # the gateway is not intact, and put_back_gateway makes it first again, alone; after
            # it (appended), or of another tos, it is never met by the host's lookups: intact,
            # and left alone
            target = [f"{network}/30"]
            for how, words, intact in (
                ("replace", ["dev", bridge_name, "proto", "static"], False),
                ("prepend", ["dev", bridge_name, "proto", "boot"], False),
                ("replace", ["dev", "lo"], False),  # the bridge's listing does not show it
                # through the bridge, from the gateway, but to another next hop
                ("replace", ["via", address, "dev", bridge_name, "onlink", "src", gateway], False),
                ("append", ["dev", bridge_name, "proto", "boot"], True),
                ("prepend", ["tos", "0x10", "dev", bridge_name], True),
            ):
                sh("ip", "route", how, *target, *words)
                listed = rtnl.routes()
                assert _intact(listed, wanted) is intact
                if intact:
                    sh("ip", "route", "del", *target, *words)
                    continue
                addresses.put_back_gateway(
                    rtnl, addresses.routes_by_key(rtnl.routes_through(bridge)), wanted
                )
                listed = rtnl.routes()
                assert _intact(listed, wanted), how
                assert [r for r in listed if r.dst == network] == [wanted[1]], (how, words)
            # and the local route, replaced (proto boot, no source)
            sh("ip", "route", "replace", "local", gateway, "dev", bridge_name, "table", "local")
            listed = rtnl.routes_through(bridge)
            assert not _intact(listed, wanted)
            addresses.put_back_gateway(rtnl, addresses.routes_by_key(listed), wanted)
            assert [r for r in rtnl.routes_through(bridge) if r.dst == gateway] == [wanted[0]]
            main = sh("ip", "route", "show", "dev", bridge_name)
            assert f"{network}/30 proto static scope link src {gateway}" in main
            with namespace.entered(name):
                inner = Rtnl()
                try:
                    links.set_up(inner, 2)
                    addresses.add(inner, 2, address, 30)
                    addresses.pin_neighbour(inner, 2, gateway, bridge_mac)
                    addresses.add_default_route(inner, gateway)
                finally:
                    inner.close()
            pinned = sh("ip", "-n", name, "neigh", "show", gateway)
            assert f"{gateway} dev eth0 lladdr {bridge_mac} PERMANENT" in pinned
            # the host answers from the gateway, found without ARP on either side
            echo = subprocess.run(
                ["ip", "netns", "exec", name, "ping", "-c", "1", "-W", "2", gateway],
                capture_output=True,
                text=True,
            )
            assert echo.returncode == 0, echo.stdout + echo.stderr
            assert f"{address} dev {bridge_name} lladdr 0a:58:0a:ff:fd:02 PERMANENT" in sh(
                "ip", "neigh", "show", address
            )
            addresses.delete_gateway(rtnl, bridge, gateway, network, 30)
            addresses.delete_gateway(rtnl, bridge, gateway, network, 30)  # gone already: fine
            assert bridge not in addresses.local_gateways(rtnl.routes())
            assert bridge not in addresses.static_sources(rtnl.routes())
            assert gateway not in sh("ip", "route", "show", "table", "all", "dev", bridge_name)
            links.delete(rtnl, port_name)
            links.delete(ipr, bridge_name)
    finally:
        # even when it failed: the links (and every route through the bridge with them), and
        # a route of the test's through lo
        for argv in (
            ["link", "del", port_name],
            ["link", "del", bridge_name],
            ["route", "del", "10.255.252.0/30", "dev", "lo"],
            ["route", "del", f"{network}/30", "dev", "lo"],
        ):
            subprocess.run(["ip", *argv], capture_output=True)  # gone already: fine
        rtnl.close()
        namespace.delete(name)


def test_namespace_ids_go_down_and_a_veth_made_after_carries_the_id_given(prefix: str) -> None:
    """netns/nsid.py on the kernel, in a namespace of the test's standing in for the host's:
    ids from the top down, one in use by someone else skipped, a daemon started again counting
    on below, none below the floor; a veth made after carries the id given (link-netnsid)."""
    host, veth = f"{prefix}-host", f"{prefix}v"
    peers = [f"{prefix}-p{n}" for n in range(6)]
    for name in (host, *peers):
        namespace.create(name)
    try:
        with namespace.entered(host):
            rtnl = Rtnl()
            try:
                ids = nsid.Descending(top=1000, floor=996)
                assert nsid.listed(rtnl) == []
                assert ids.give_next(rtnl, peers[0]) == 1000
                nsid.give(rtnl, peers[1], 999)  # someone else's
                assert ids.give_next(rtnl, peers[2]) == 998
                fd = namespace.open_fd(peers[2])
                try:
                    rtnl.link("add", ifname=veth, kind="veth", peer={"net_ns_fd": fd})
                finally:
                    os.close(fd)
                again = nsid.Descending(top=1000, floor=996)
                assert again.give_next(rtnl, peers[3]) == 997
                assert again.give_next(rtnl, peers[4]) == 996
                assert again.give_next(rtnl, peers[5]) is None
                assert nsid.listed(rtnl) == [996, 997, 998, 999, 1000]
                with pytest.raises(NetlinkError) as refused:
                    nsid.give(rtnl, peers[5], 1000)
                assert refused.value.code == errno.EEXIST
            finally:
                rtnl.close()
        (link,) = json.loads(sh("ip", "-n", host, "-j", "link", "show", veth))
        assert link["link_netnsid"] == 998
        listed = sh("ip", "-n", host, "netns", "list-id")
        assert f"nsid 997 (iproute2 netns name: {peers[3]})" in listed, listed
    finally:
        for name in (host, *peers):
            namespace.delete(name)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


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


def _device(fd: int) -> int:
    return os.fstat(fd).st_dev


def test_settings_are_looked_up_in_procfs_instances_of_their_own(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's settings go through one instance that is not /proc's superblock; blocks
    inside namespaces through another, replaced every ROTATE blocks and closed once replaced
    or once its thread ends; both show the same kernel values as /proc (each namespace's)."""
    monkeypatch.setattr(sysctl, "ROTATE", 2)
    name = f"{prefix}-ns"
    namespace.create(name)
    try:
        proc = os.stat("/proc").st_dev
        host = _device(sysctl.root())
        assert host != proc
        assert sysctl.read("net.ipv4.ip_default_ttl") == _proc_value("net/ipv4/ip_default_ttl")
        open_before = _open_fds()
        seen: list[int] = []
        # each instance seen is held open until compared: a closed one's device number is
        # free for the next one made (as 41 and 41 once were)
        held: list[int] = []

        def blocks() -> None:
            for ttl in (31, 32, 33, 34, 35):
                with namespace.entered(name):
                    held.append(os.dup(sysctl.root()))
                    seen.append(_device(held[-1]))
                    assert seen[-1] not in (proc, host)
                    sysctl.write("net.ipv4.ip_default_ttl", ttl)

        worker = threading.Thread(target=blocks)
        worker.start()
        worker.join()
        for fd in held:
            os.close(fd)
        assert seen[0] == seen[1] != seen[2] == seen[3] != seen[4]  # two blocks an instance
        _wait_for(lambda: _open_fds() == open_before)  # replaced ones and the thread's: closed
        value = subprocess.run(
            ["ip", "netns", "exec", name, "cat", "/proc/sys/net/ipv4/ip_default_ttl"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert value == "35"
        assert _proc_value("net/ipv4/ip_default_ttl") != "35"  # the host's untouched
    finally:
        namespace.delete(name)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.01)


def _proc_value(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()


def test_settings_fall_back_to_proc_without_instances(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel without fsopen (or one that refuses it): /proc, and the settings still land."""
    name = f"{prefix}-ns"

    def refused(fstype: str) -> int:
        raise OSError(38, "fsopen: Function not implemented")

    monkeypatch.setattr(sysctl._libc, "new_instance", refused)
    monkeypatch.setattr(sysctl, "_instances_work", True)
    namespace.create(name)
    try:
        with namespace.entered(name):
            sysctl._inside.held = None  # this thread's instance from an earlier test
            assert _device(sysctl.root()) == os.stat("/proc").st_dev
            sysctl.write("net.ipv4.ip_default_ttl", 44)
            assert _proc_value("net/ipv4/ip_default_ttl") == "44"
        assert sysctl._instances_work is False
    finally:
        namespace.delete(name)


def test_replacing_an_instance_keeps_no_namespace_alive(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances replaced at every block (ROTATE 1), with the closing thread made during these
    blocks: once the namespaces' names are gone, the kernel frees them and their veths."""
    monkeypatch.setattr(sysctl, "ROTATE", 1)
    monkeypatch.setattr(sysctl, "_closer", None)  # made again, here
    names = [f"{prefix}-n{i}" for i in range(3)]

    def blocks() -> None:
        for name in names:
            namespace.create(name)
            subprocess.run(
                ["ip", "link", "add", f"{name}h", "type", "veth", "peer", "eth0", "netns", name],
                check=True,
            )
            for _ in range(2):
                with namespace.entered(name):
                    sysctl.write("net.ipv4.ping_group_range", "0 2147483647")
        for name in names:
            namespace.delete(name)

    worker = threading.Thread(target=blocks)
    worker.start()
    worker.join()
    _wait_for(lambda: not any(os.path.exists(f"/sys/class/net/{n}h") for n in names))


def test_the_sandbox_mounts_its_own_where_the_host_already_has_a_tmpfs(tmp_path: Path) -> None:
    """`mount -a` skips what is already mounted: the sandbox's /tmp, /dev/shm, /run/lock and
    /sys are its own even where the host has a tmpfs of the usual name there (systemd's
    /run/lock and /tmp, Debian's /dev/shm). All in a throwaway mount and network namespace
    (whose /var/tmp and /run/lock play the host's: the files are under /tmp)."""
    resolv = tmp_path / "a dir" / "resolv.conf"  # a blank in the path: escaped in the file
    resolv.parent.mkdir()
    resolv.write_text("nameserver 127.0.0.53\n")
    source = f"dynod-{unique_prefix()}"
    mounts = fstab.Files(str(tmp_path / "fstab")).path(
        fstab.Private(source, resolv=str(resolv), tmpfs_size=4 * 1024 * 1024)
    )
    report = (
        "cat /proc/self/mountinfo; echo --; cat /etc/resolv.conf;"
        " stat -f -c %b*%S /tmp /dev/shm /var/tmp /run/lock;"
        " touch /etc/resolv.conf 2>/dev/null && echo resolv-writable || echo resolv-ro"
    )
    root = os.stat("/")
    chain = netns_exec.sandboxed(["sh", "-c", report], "/", f"{root.st_dev}:{root.st_ino}", mounts)
    # the host as systemd makes it: a tmpfs "tmpfs" on /var/tmp and /run/lock
    host_like = 'mount -t tmpfs tmpfs /var/tmp && mount -t tmpfs tmpfs /run/lock && exec "$@"'
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "sh",
            "-c",
            host_like,
            "host",
            *chain,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    table, _, rest = done.stdout.partition("--\n")
    top = {}  # mount point: (fstype, source) of the last one mounted there, the one seen
    for line in table.splitlines():
        mine, _, theirs = line.partition(" - ")
        top[mine.split()[4]] = tuple(theirs.split()[:2])
    for target in ("/tmp", "/dev/shm", "/var/tmp", "/run/lock"):
        assert top[target] == ("tmpfs", source), (target, table)
    assert top["/sys"] == ("sysfs", source), table
    assert top["/proc"] == ("proc", source), table
    resolv_seen, *sizes, writable = rest.splitlines()
    assert resolv_seen == "nameserver 127.0.0.53"
    mb = 1024 * 1024  # blocks*block size: their own sizes, not the host-like mounts' (half the RAM)
    assert [eval(size) for size in sizes] == [4 * mb, 4 * mb, 4 * mb, fstab.LOCK_SIZE]
    assert writable == "resolv-ro"


def test_a_thread_starts_a_child_as_the_init_of_namespaces_of_its_own() -> None:
    """exec.isolated: the child started in the block is the first process (pid 1) of a new pid
    namespace, in new mount (every mount private: the host's /run/netns is shared), IPC and
    UTS namespaces; the thread itself never left its pid namespace, is back in its own mount,
    IPC and UTS namespaces after, and its next child is born in the host's pid namespace."""
    kinds = ("pid", "mnt", "ipc", "uts")
    namespace.ensure_run_dir()  # /run/netns, shared as `ip netns add` makes it
    with open("/proc/self/mountinfo") as f:
        assert " shared:" in f.read()  # what the copy must not keep
    host = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in kinds}
    seen: dict[str, object] = {}
    show = (
        'echo "$$"; for k in pid mnt ipc uts; do readlink /proc/self/ns/$k; done;'
        " grep -c ' shared:' /proc/self/mountinfo || true"
    )

    def worker() -> None:
        try:
            with netns_exec.isolated():
                seen["thread pid inside"] = os.readlink("/proc/thread-self/ns/pid")
                child = subprocess.run(["sh", "-c", show], capture_output=True, text=True)
            seen["child"] = child.stdout.split()
            seen["after"] = {k: os.readlink(f"/proc/thread-self/ns/{k}") for k in kinds}
            seen["next"] = subprocess.run(
                ["readlink", "/proc/self/ns/pid"], capture_output=True, text=True
            ).stdout.strip()
        except BaseException as exc:  # noqa: BLE001 - reported below
            seen["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert "error" not in seen, seen["error"]
    init, *namespaces, shared = seen["child"]  # type: ignore[misc]
    assert init == "1" and shared == "0", seen
    assert all(ns != host[kind] for kind, ns in zip(kinds, namespaces, strict=True)), seen
    assert seen["thread pid inside"] == host["pid"]
    assert seen["after"] == host and seen["next"] == host["pid"]


def test_a_thread_starts_a_child_in_a_mount_namespace_and_comes_back(prefix: str) -> None:
    """mntns.thread_entered: a child started in the block is born in the template (as
    `nsenter --mount=FILE` would put it there); the thread is back in its own mount namespace
    after, working from /, the other threads never left theirs nor their directory, and a
    thread the entering thread started since (it shares its root and cwd) does not keep it
    from entering again."""
    directory = directory_of(prefix)
    mntns.private_dir(directory)
    try:
        template = mntns.make(os.path.join(directory, "mnt"), [namespace.RUN_DIR]).path
        wanted = os.stat(template).st_ino
        main_home = os.stat("/proc/thread-self/ns/mnt").st_ino
        seen: dict[str, object] = {}

        def look() -> list[object]:
            with mntns.thread_entered(template):
                inside = os.stat("/proc/thread-self/ns/mnt").st_ino
                seen["main while inside"] = os.stat(
                    f"/proc/{os.getpid()}/task/{main}/ns/mnt"
                ).st_ino
                child = subprocess.run(
                    ["readlink", "/proc/self/ns/mnt"], capture_output=True, text=True, check=True
                )
            return [
                inside,
                child.stdout.strip(),
                os.stat("/proc/thread-self/ns/mnt").st_ino,
                os.getcwd(),
            ]

        def worker() -> None:
            try:
                first = look()
                bystander = threading.Thread(target=lambda: None)  # shares this thread's fs
                bystander.start()
                bystander.join()
                seen["runs"] = [first, look()]
            except BaseException as exc:  # noqa: BLE001 - reported below
                seen["error"] = exc

        main = threading.get_native_id()
        main_cwd = os.getcwd()
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
        assert "error" not in seen, seen["error"]
        for inside, child, after, cwd in seen["runs"]:  # type: ignore[attr-defined]
            assert inside == wanted and child == f"mnt:[{wanted}]"
            assert after == main_home and cwd == "/"
        assert seen["main while inside"] == main_home and os.getcwd() == main_cwd
        assert os.stat("/proc/thread-self/ns/mnt").st_ino == main_home
    finally:
        mntns.remove(directory)


def test_the_generation_moves_at_each_commit_and_each_event_carries_it(prefix: str) -> None:
    """nfevents.generation() (NFT_MSG_GETGEN) and the monitor's commits, in a namespace of the
    test's own (nobody else commits there): the firewall guard skips reading the tables when
    the generation is the last one its monitor saw (control/guard.py)."""
    name = f"{prefix}-gen"
    namespace.create(name)
    try:
        with namespace.entered(name):
            events = nfevents.NftEvents()
            nft = Nft()
            try:
                before = nfevents.generation()
                assert nfevents.generation() == before  # asking commits nothing
                nft.run("add table inet t")
                nft.run("add chain inet t c")
                after = nfevents.generation()
                commits = events.read()
            finally:
                nft.close()
                events.close()
        assert after == before + 2
        assert [c.generation for c in commits] == [before + 1, before + 2]
        assert all(c.ours() for c in commits)
    finally:
        namespace.delete(name)


def test_deletions_of_names_and_links_are_seen_as_they_happen(prefix: str) -> None:
    """netns/removals.py: `ip netns delete`, `ip link del`, `ip route del` and a route's `ip
    route replace` wake the watch (its one fd), a new name, link or route does not; the links
    and routes are those of the namespace it was opened in (here a test namespace, nobody
    else's)."""
    name, other = f"{prefix}-rm", f"{prefix}-rm2"
    namespace.create(name)
    try:
        with namespace.entered(name):
            watch = removals.Removals()
        try:
            assert not watch.drain() and watch.current()
            subprocess.run(
                ["ip", "-n", name, "link", "add", "rm0", "type", "veth", "peer", "name", "rm1"],
                check=True,
            )
            subprocess.run(["ip", "-n", name, "link", "set", "rm0", "up"], check=True)
            # lo, for the routes below: it has its carrier at once (a veth's comes later, from
            # the kernel's link watch, which then changes the routes through it)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
            namespace.create(other)
            # made and changed, not removed: nothing queued, so an event loop is not even woken
            assert not select.select([watch.fileno()], [], [], 0.3)[0]
            assert not watch.drain()
            # a route made wakes nothing; one deleted does, and is told apart (take_routes)
            subprocess.run(
                ["ip", "-n", name, "route", "add", "10.8.8.0/24", "dev", "lo"], check=True
            )
            assert not select.select([watch.fileno()], [], [], 0.3)[0]
            subprocess.run(
                ["ip", "-n", name, "route", "del", "10.8.8.0/24", "dev", "lo"], check=True
            )
            assert select.select([watch.fileno()], [], [], 5)[0]
            assert not watch.drain() and watch.take_routes() == [("10.8.8.0", 24)]
            assert watch.take_routes() == []
            # a route made with `replace` is new: nothing; one replaced (changed) is told too
            subprocess.run(
                ["ip", "-n", name, "route", "replace", "10.8.9.0/24", "dev", "lo"], check=True
            )
            assert not select.select([watch.fileno()], [], [], 0.3)[0]
            subprocess.run(
                [
                    "ip",
                    "-n",
                    name,
                    "route",
                    "replace",
                    "10.8.9.0/24",
                    "dev",
                    "lo",
                    "proto",
                    "static",
                ],
                check=True,
            )
            assert select.select([watch.fileno()], [], [], 5)[0]
            assert not watch.drain() and watch.take_routes() == [("10.8.9.0", 24)]
            assert watch.take_unaddressed() == set()  # no address went
            # an address removed: its routes are told, and its device (lo: 1)
            subprocess.run(
                ["ip", "-n", name, "addr", "add", "10.8.7.1/24", "dev", "lo"], check=True
            )
            subprocess.run(
                ["ip", "-n", name, "addr", "del", "10.8.7.1/24", "dev", "lo"], check=True
            )
            assert select.select([watch.fileno()], [], [], 5)[0]
            assert not watch.drain() and ("10.8.7.1", 32) in (watch.take_routes() or [])
            assert watch.take_unaddressed() == {1} and watch.take_unaddressed() == set()
            subprocess.run(["ip", "-n", name, "link", "del", "rm0"], check=True)
            assert select.select([watch.fileno()], [], [], 5)[0]  # an event loop would wake
            assert watch.drain() and not watch.drain()
            namespace.delete(other)
            assert select.select([watch.fileno()], [], [], 5)[0]
            assert watch.drain() and not watch.broken and watch.current()
        finally:
            watch.close()
    finally:
        namespace.delete(other)
        namespace.delete(name)


def _disk_directory() -> str:
    """A new directory on a filesystem that is not memory: the temporary directory's, or
    /var/tmp's, or else the checkout's (a clone is on disk)."""
    for base in (tempfile.gettempdir(), "/var/tmp", str(Path(__file__).parent)):
        if namespace.holding_mount(base)[1] not in namespace.MEMORY_TYPES:
            return tempfile.mkdtemp(prefix="dynod-test-", dir=base)
    raise AssertionError("no directory on disk to test with")


def _mount_flags(directory: str) -> tuple[str, str]:
    """(per-mount options, optional fields) of the mount at directory, the topmost."""
    found = ("", "")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == directory:
                found = (fields[5], " ".join(fields[6 : fields.index("-")]))
    return found


def test_names_live_in_memory_where_their_directory_is_on_disk() -> None:
    base = _disk_directory()
    names = os.path.join(base, "netns")  # made by it, as /run/netns may not exist yet
    try:
        assert namespace.names_in_memory(names) is True
        assert namespace.holding_mount(names) == (names, "tmpfs", namespace.MEMORY_SOURCE)
        options, optional = _mount_flags(names)
        assert {"nosuid", "nodev", "noexec"} <= set(options.split(","))
        assert "shared:" in optional  # as `ip netns add` makes /run/netns
        assert oct(os.stat(names).st_mode & 0o777) == "0o755"
        assert namespace.names_in_memory(names) is False  # memory already: nothing more
        Path(names, "someone").touch()
        assert namespace.release_memory(names) is False  # a name in it keeps it
        assert namespace.holding_mount(names)[0] == names
        os.unlink(os.path.join(names, "someone"))
        assert namespace.release_memory(names) is True
        # what is left is `ip netns add`'s shared bind of the directory on itself: names made
        # after still go on a shared mount point
        point, fstype, _ = namespace.holding_mount(names)
        assert point == names and fstype not in namespace.MEMORY_TYPES
        assert "shared:" in _mount_flags(names)[1]
        assert namespace.release_memory(names) is False
    finally:
        while namespace.holding_mount(names)[0] == names:
            subprocess.run(["umount", names], check=True)
        shutil.rmtree(base)


def test_names_of_someone_else_and_someone_elses_mount_are_left_alone() -> None:
    base = _disk_directory()
    with_names, mounted = os.path.join(base, "with-names"), os.path.join(base, "mounted")
    try:
        os.makedirs(with_names)
        Path(with_names, "theirs").touch()
        assert namespace.names_in_memory(with_names) is False
        assert namespace.holding_mount(with_names)[0] != with_names  # never hidden
        os.makedirs(mounted)
        subprocess.run(["mount", "-t", "tmpfs", "theirs", mounted], check=True)
        assert namespace.names_in_memory(mounted) is False  # memory already
        assert namespace.release_memory(mounted) is False  # empty, but not dynod's
        assert namespace.holding_mount(mounted) == (mounted, "tmpfs", "theirs")
    finally:
        while namespace.holding_mount(mounted)[0] == mounted:
            subprocess.run(["umount", mounted], check=True)
        shutil.rmtree(base)


def test_a_name_whose_file_went_before_its_mount_is_made_again(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another daemon's stop may unmount an empty /run/netns tmpfs between the file and the
    mount (release_memory): the file went with it, and create() makes it once more."""
    name = f"{prefix}-ns"
    real_mount = namespace._libc.mount
    went: list[str] = []

    def file_gone_first(source: str, target: str, fstype: str | None, flags: int) -> None:
        if not went and target == namespace.path(name):
            went.append(target)
            os.unlink(target)  # as the unmount of its tmpfs would
        real_mount(source, target, fstype, flags)

    namespace.ensure_run_dir()
    monkeypatch.setattr(namespace._libc, "mount", file_gone_first)
    namespace.create(name)
    monkeypatch.undo()
    try:
        assert went == [namespace.path(name)]
        home = os.stat("/proc/thread-self/ns/net").st_ino
        assert namespace.inode(name) != home  # a namespace of its own is mounted there
    finally:
        namespace.delete(name)


_FILL_LOW_NUMBERS = """
import os, resource, sys
sys.path.insert(0, {root!r})
from netns import descriptors
from netns.nftables import Nft, NftError, _load
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
lift = sys.argv[1] == "lifted"
# a transaction (libmnl's batch path, the one that select()s), which leaves nothing behind
batch = "add table inet {table}; delete table inet {table}"
while True:  # what the daemon keeps per dyno, 1,100 of them
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    fd = descriptors.lifted(fd) if lift else fd
    if fd >= descriptors.FD_SETSIZE + 100:
        break
if sys.argv[2] == "unguarded":  # libnftables as it is, its socket above 1023
    lib = _load()
    ctx = lib.nft_ctx_new(0)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    print(lib.nft_run_cmd_from_buffer(ctx, batch.encode()), flush=True)
    sys.exit(0)
try:
    Nft().run(batch)
except NftError as exc:
    print("refused:", exc)
    sys.exit(3)
print("ran")
"""


def test_libnftables_needs_a_descriptor_below_1024(prefix: str) -> None:
    """libmnl select()s on the context's socket: glibc aborts the process when its number is
    above 1023. The daemon keeps what it holds per dyno above that range, and a context that
    would get such a number is refused instead of killing the daemon."""
    script = _FILL_LOW_NUMBERS.format(root=str(Path(__file__).parents[2]), table=prefix)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", script, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    unguarded = run("low", "unguarded")
    assert unguarded.returncode == -signal.SIGABRT, unguarded
    assert "FD_SETSIZE" in unguarded.stderr
    refused = run("low", "guarded")
    assert refused.returncode == 3 and "no file descriptor below 1024" in refused.stdout
    lifted = run("lifted", "guarded")
    assert lifted.returncode == 0 and lifted.stdout.strip() == "ran", lifted
