"""How much a dyno's network costs to set up and tear down, through dynod and on the bare kernel.

    sudo .venv/bin/python bench/dyno_lifecycle.py [-n 200] [--rounds 4] [--json]

What is measured, per dyno, on two sides run in the same invocation:

* **dynod**: a real `dynod daemon` subprocess (its own state dir, socket, prefix, range, bridge
  and nftables tables, so it never meets another daemon on the machine) starts N `worker` dynos
  (`sleep 600`) one after another through the API, then stops them one after another.
  - *kernel part*: the daemon's own measurement, `setup_ms` in the POST answer and
    `teardown_ms` in the DELETE answer. Setup is the namespace, veth, bridge port, addresses,
    route, sysctl, firewall set element and state row, without spawning the process; teardown
    is the firewall element, gateway routes, namespace and state row, without waiting for the
    process to exit. This is what the targets below are about.
  - *API end-to-end*: the whole HTTP call over the Unix socket as the client sees it. It adds
    spawning the process (setup) or SIGTERM and waiting for the process to be gone (teardown),
    plus the HTTP round trip. Its setup has a target too (below).
* **floor**: the same kernel work with nothing around it: pyroute2 in this process, on one
  dedicated thread (as the daemon's kernel worker), namespaces created and entered in-thread
  with netns.namespace (what the daemon uses too, so both pay the same setns/unshare/mount),
  and otherwise a minimal hand-written sequence:

      setup:    namespace.create(NS)
                link add HOST type veth peer eth0 netns NS master BRIDGE; link set HOST up
                addr add GATEWAY/30 dev BRIDGE
                inside NS: lo up, eth0 up, addr add ADDRESS/30 dev eth0,
                           route add default via GATEWAY, net.ipv4.ping_group_range
      teardown: addr del GATEWAY/30 dev BRIDGE; namespace.delete(NS)

  No MAC addresses chosen, no bridge port isolation or static FDB entry, no neighbour flush, no
  firewall, no state, no API. It is the least any implementation has to do to give a process
  its own addressed and routed eth0 on a bridge, so `daemon kernel part / floor` is the price of
  everything dynod adds for safety and bookkeeping. Targets (issue 11, second round): the
  kernel part of a setup within 1.3x the floor, the whole API call within 1.6x the floor's
  setup, the kernel part of a teardown within 3 ms (medians).

The machine is shared and noisy, so the two sides run in alternating rounds (N/rounds dynos per
side per round, the side that goes first alternating too), after a short warm-up that is not
counted. Neither side overlaps the other in time.

The script reports, it never asserts: it exits 0 unless something broke. Everything it made is
removed on the way out, on error or Ctrl-C too: the floor's namespaces, veths and bridge, and the
daemon (SIGTERM, which makes it remove its dynos, bridge and tables; SIGKILL after 30 s, then a
sweep of whatever it left) and its temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from run_support import Interrupted, machine, signals_ignored, sigterm_as_interrupt

from dynod.api.client import Client
from dynod.claim import LOCK_DIR
from dynod.errors import DynodError
from dynod.kernel.mounts import directory_of
from netns import mntns, namespace
from netns.nftables import Nft, NftError

T = TypeVar("T")

APP = "bench"
PROCESS_TYPE = "worker"
COMMAND = "sleep 600"
GRACE = 2  # seconds from SIGTERM to SIGKILL, for the daemon and each DELETE
# Issue 11, item 3 (second round): the kernel part of a setup within 1.3x the floor, the whole
# API call within 1.6x the floor's setup, the kernel part of a teardown within 3 ms.
SETUP_TARGET_RATIO = 1.3
API_TARGET_RATIO = 1.6
TEARDOWN_TARGET_MS = 3.0
START_TIMEOUT = 30.0
KILL_AFTER = 30.0
LINKS_GONE_TIMEOUT = 30.0
RANGE = ipaddress.IPv4Network("172.31.0.0/16")  # both sides take a block of it
MAX_N = 4000


# ---------------------------------------------------------------------------- numbers
@dataclass
class Series:
    setup: list[float] = field(default_factory=list)
    teardown: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values) if values else float("nan"),
        "p99": percentile(values, 99),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "count": len(values),
    }


def ms_since(began: float) -> float:
    return 1000 * (time.perf_counter() - began)


# ---------------------------------------------------------------------------- names and ranges
def random_prefix() -> str:
    """`bch` + 3 hex digits: 6 characters, a valid dynod prefix, unlikely to be in use."""
    return f"bch{random.randrange(16**3):03x}"


def block_prefixlen(slots: int) -> int:
    """A /22 (255 dynos plus the bridge's /30) or larger if that many /30s do not fit."""
    return min(22, 32 - (4 * slots - 1).bit_length())


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route and address of the host namespace (any table), to stay clear of them."""
    found: list[ipaddress.IPv4Network] = []
    with IPRoute() as ipr:
        for msg in ipr.get_routes(family=socket.AF_INET):
            dst = msg.get_attr("RTA_DST")
            if dst and msg["dst_len"]:
                found.append(ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}", strict=False))
        for msg in ipr.get_addr(family=socket.AF_INET):
            found.append(
                ipaddress.IPv4Network(
                    f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}", strict=False
                )
            )
    return found


def pick_ranges(prefixlen: int) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    """Two distinct random blocks of 172.31.0.0/16 that overlap nothing the host routes."""
    taken = host_networks()
    free = [
        block
        for block in RANGE.subnets(new_prefix=prefixlen)
        if not any(block.overlaps(net) for net in taken)
    ]
    if len(free) < 2:
        raise RuntimeError(f"no two free /{prefixlen} blocks left in {RANGE}")
    daemon_range, floor_range = random.sample(free, 2)
    return daemon_range, floor_range


# ---------------------------------------------------------------------------- leftovers
def prefix_lock(prefix: str) -> str:
    """The daemon's lock file for its prefix (dynod/claim.py): removed at its stop, left by
    a SIGKILL."""
    return os.path.join(LOCK_DIR, f"dynod-{prefix}.lock")


def leftovers(prefix: str) -> dict[str, list[str]]:
    """What `ip netns list`, `ip -o link` and `nft list tables` show with the prefix in it,
    and the daemon's mounts and lock file."""
    with IPRoute() as ipr:
        link_names = [str(m.get_attr("IFLA_IFNAME") or "") for m in ipr.get_links()]
    try:
        with Nft() as nft:
            tables = [f"{family} {name}" for family, name in nft.tables() if prefix in name]
    except NftError as exc:
        tables = [f"(could not list nftables tables: {exc})"]
    return {
        "netns": [n for n in namespace.names() if prefix in n],
        "links": sorted(n for n in link_names if prefix in n),
        "nft tables": tables,
        "mount template": mntns.mount_points(directory_of(prefix)),
        "hosts files' tmpfs": mntns.mounted_as(f"dynod-{prefix}"),  # netns/hosts.py in_memory
        "lock file": [path for path in (prefix_lock(prefix),) if os.path.exists(path)],
    }


def anything(found: dict[str, list[str]]) -> bool:
    return any(found.values())


def wait_links_gone(prefix: str, keep: set[str], timeout: float) -> None:
    """Deleting a namespace destroys its veth pair asynchronously: wait until the kernel has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with IPRoute() as ipr:
            names = {str(m.get_attr("IFLA_IFNAME") or "") for m in ipr.get_links()}
        if not {n for n in names if n.startswith(prefix)} - keep:
            return
        time.sleep(0.1)


def sweep(prefix: str) -> None:
    """Remove whatever is left with the prefix: for after a daemon that had to be SIGKILLed (or
    a floor that broke half-way). Processes are killed only inside our own namespaces, which
    hold nothing but the `sleep` dynos this bench started."""
    for name in namespace.names(prefix):
        for pid in namespace.pids_inside(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        namespace.delete(name)
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            name = str(msg.get_attr("IFLA_IFNAME") or "")
            kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if name.startswith(prefix) and kind != "bridge":
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=msg["index"])
    wait_links_gone(prefix, set(), LINKS_GONE_TIMEOUT)
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            if str(msg.get_attr("IFLA_IFNAME") or "").startswith(prefix):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=msg["index"])
    with contextlib.suppress(NftError), Nft() as nft:
        for family, table in nft.tables():
            if table == prefix and family in ("bridge", "inet"):
                nft.run(f"delete table {family} {table}")
    mntns.remove(directory_of(prefix))  # the daemon's mount template (kernel/mounts.py)
    for point in mntns.mounted_as(f"dynod-{prefix}"):  # its hosts files' tmpfs
        mntns.unmount(point)
    namespace.release_memory()  # its tmpfs on /run/netns, if it made one and it is empty
    with contextlib.suppress(FileNotFoundError):  # the daemon is gone: no one holds it
        os.unlink(prefix_lock(prefix))


# ---------------------------------------------------------------------------- the floor
def configure_inside(name: str, address: str, gateway: str) -> None:
    """The floor's steps inside the namespace (in-thread setns): lo and eth0 up, the address,
    the default route, `ping_group_range`."""
    with namespace.entered(name):
        inner = IPRoute()
        try:
            lo = inner.link_lookup(ifname="lo")[0]
            eth0 = inner.link_lookup(ifname="eth0")[0]
            inner.link("set", index=lo, state="up")
            inner.link("set", index=eth0, state="up")
            inner.addr("add", index=eth0, address=address, prefixlen=30)
            inner.route("add", dst="0.0.0.0/0", gateway=gateway)
            with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
                f.write("0 2147483647")
        finally:
            inner.close()


class Floor:
    """The bare kernel steps, on one dedicated thread with its own host netlink socket."""

    def __init__(self, prefix: str, network: ipaddress.IPv4Network) -> None:
        self.prefix = f"{prefix}f"  # netns and veths: <prefix>f-<n>; not the daemon's <prefix>-
        self.bridge = f"{prefix}f0"
        self.network = network
        self.slots = network.num_addresses // 4
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{prefix}-floor")
        self._ipr: IPRoute | None = None
        self._bridge_index: int | None = None
        self._seq = 0
        self._live: list[str] = []
        self.stop = threading.Event()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def _ipr_here(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def prepare(self) -> None:
        """The bridge, set up like dynod's (STP off, no forward delay, no IPv6); not timed."""
        ipr = self._ipr_here()
        ipr.link("add", ifname=self.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
        self._bridge_index = ipr.link_lookup(ifname=self.bridge)[0]
        ipr.link("set", index=self._bridge_index, state="up")
        with open(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6", "w") as f:
            f.write("1")

    def _addresses(self, seq: int) -> tuple[str, str]:
        base = self.network.network_address + 4 * (1 + seq % (self.slots - 1))
        return str(base + 1), str(base + 2)

    def setup(self, seq: int) -> float:
        ipr = self._ipr_here()
        assert self._bridge_index is not None
        name = f"{self.prefix}-{seq:x}"
        gateway, address = self._addresses(seq)
        began = time.perf_counter()
        namespace.create(name)
        self._live.append(name)
        fd = os.open(namespace.path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link(
                "add",
                ifname=name,
                kind="veth",
                master=self._bridge_index,
                peer={"ifname": "eth0", "net_ns_fd": fd},
            )
        finally:
            os.close(fd)
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        ipr.addr("add", index=self._bridge_index, address=gateway, prefixlen=30)
        configure_inside(name, address, gateway)
        return ms_since(began)

    def teardown(self, seq: int) -> float:
        ipr = self._ipr_here()
        name = f"{self.prefix}-{seq:x}"
        gateway, _ = self._addresses(seq)
        began = time.perf_counter()
        ipr.addr("del", index=self._bridge_index, address=gateway, prefixlen=30)
        namespace.delete(name)
        elapsed = ms_since(began)
        self._live.remove(name)
        return elapsed

    def round(self, count: int) -> Series:
        """On the floor's thread: count setups one after another, then their teardowns."""
        series = Series()
        seqs = []
        for _ in range(count):
            if self.stop.is_set():
                break
            seq = self._seq
            self._seq += 1
            series.setup.append(self.setup(seq))
            seqs.append(seq)
        for seq in seqs:
            if self.stop.is_set():
                break
            series.teardown.append(self.teardown(seq))
        return series

    def run_round(self, count: int) -> Series:
        return self.call(self.round, count)

    def _cleanup_here(self) -> None:
        ipr = self._ipr_here()
        for name in list(self._live):
            if self._bridge_index is not None:
                seq = int(name.rsplit("-", 1)[1], 16)
                with contextlib.suppress(NetlinkError):
                    ipr.addr(
                        "del",
                        index=self._bridge_index,
                        address=self._addresses(seq)[0],
                        prefixlen=30,
                    )
            namespace.delete(name)
            self._live.remove(name)
        for msg in ipr.get_links():
            name = str(msg.get_attr("IFLA_IFNAME") or "")
            if name.startswith(f"{self.prefix}-"):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=msg["index"])
        wait_links_gone(f"{self.prefix}-", set(), LINKS_GONE_TIMEOUT)
        with contextlib.suppress(NetlinkError):
            found = ipr.link_lookup(ifname=self.bridge)
            if found:
                ipr.link("del", index=found[0])
        ipr.close()
        self._ipr = None

    def close(self) -> None:
        """Stop after the current dyno, remove everything, end the thread."""
        self.stop.set()
        try:
            self.call(self._cleanup_here)
        finally:
            self._pool.shutdown(wait=True)


# ---------------------------------------------------------------------------- the daemon
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dynod_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "dynod")
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which("dynod")
    if found:
        return [found]
    return [sys.executable, "-c", "from dynod.cli.main import main; main()"]


class DaemonSide:
    """A `dynod daemon` of our own, and the API calls that start and stop dynos through it."""

    def __init__(
        self,
        prefix: str,
        network: ipaddress.IPv4Network,
        workdir: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.prefix = prefix
        self.extra = extra  # more `dynod daemon` options (bench/density.py's --shard-ports)
        self.network = network
        self.workdir = workdir
        self.socket = os.path.join(workdir, "api.sock")
        self.client = Client(self.socket, timeout=60)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path = os.path.join(workdir, "daemon.stderr")
        self.exit_status: int | None = None
        self.killed = False
        self.kill_after = KILL_AFTER  # SIGTERM to SIGKILL when stopping the daemon

    def start(self) -> None:
        argv = [
            *dynod_command(),
            "--socket",
            self.socket,
            "daemon",
            "--state-dir",
            os.path.join(self.workdir, "state"),
            "--prefix",
            self.prefix,
            "--cidr",
            str(self.network),
            "--router-host",
            "127.0.0.1",
            "--router-port",
            str(free_port()),
            "--grace",
            str(GRACE),
            "--quiet",
            *self.extra,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Its own session: a Ctrl-C reaches the bench only, which then stops the daemon.
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dynod daemon exited with status {self.process.returncode} at start:\n"
                    + self.stderr_tail()
                )
            try:
                Client(self.socket, timeout=2).call("GET", "/v1/status")
                return
            except (DynodError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dynod daemon did not answer within {START_TIMEOUT:g} s:\n"
                    + self.stderr_tail()
                )
            time.sleep(0.05)

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def run_round(self, count: int) -> tuple[Series, Series]:
        """count dynos started one after another, then stopped one after another.
        Returns (the daemon's kernel part, the client-side API calls)."""
        kernel, api = Series(), Series()
        started: list[str] = []
        # On an error half-way the dynos stay: the daemon's SIGTERM shutdown stops them all.
        for _ in range(count):
            began = time.perf_counter()
            answer = self.client.call(
                "POST",
                f"/v1/apps/{APP}/dynos",
                {"type": PROCESS_TYPE, "command": COMMAND, "cwd": "/", "env": {}, "detach": True},
            )
            api.setup.append(ms_since(began))
            started.append(str(answer["name"]))
            kernel.setup.append(float(answer["setup_ms"]))
        for name in started:
            began = time.perf_counter()
            answer = self.client.call("DELETE", f"/v1/apps/{APP}/dynos/{name}?grace={GRACE}")
            api.teardown.append(ms_since(began))
            teardown = (answer.get("teardown_ms") or {}).get(name)
            if teardown is None:
                raise RuntimeError(f"DELETE {name} answered no teardown_ms: {answer}")
            kernel.teardown.append(float(teardown))
        return kernel, api

    def stop(self) -> None:
        """SIGTERM (the daemon stops its dynos and removes what it made), SIGKILL after 30 s."""
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.kill_after)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    self.process.kill()
                    self.process.wait()
            self.exit_status = self.process.returncode
        finally:
            if self._log is not None:
                self._log.close()


# ---------------------------------------------------------------------------- running it
@dataclass
class Results:
    n: int
    rounds: int
    warmup: int
    prefix: str
    daemon_range: str
    floor_range: str
    daemon_kernel: Series = field(default_factory=Series)
    daemon_api: Series = field(default_factory=Series)
    floor: Series = field(default_factory=Series)

    def numbers(self) -> dict[str, Any]:
        sides = {
            "daemon_kernel": self.daemon_kernel,
            "daemon_api": self.daemon_api,
            "floor": self.floor,
        }
        out: dict[str, Any] = {
            "n": self.n,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "prefix": self.prefix,
            "daemon_range": self.daemon_range,
            "floor_range": self.floor_range,
            "machine": machine(),
            "setup_ms": {k: summary(v.setup) for k, v in sides.items()},
            "teardown_ms": {k: summary(v.teardown) for k, v in sides.items()},
        }
        setup_ratio = (
            out["setup_ms"]["daemon_kernel"]["median"] / out["setup_ms"]["floor"]["median"]
        )
        teardown_ratio = (
            out["teardown_ms"]["daemon_kernel"]["median"] / out["teardown_ms"]["floor"]["median"]
        )
        teardown_median = out["teardown_ms"]["daemon_kernel"]["median"]
        api_ratio = out["setup_ms"]["daemon_api"]["median"] / out["setup_ms"]["floor"]["median"]
        out["ratios"] = {"setup": setup_ratio, "api_setup": api_ratio, "teardown": teardown_ratio}
        out["targets"] = {
            "setup_ratio_max": SETUP_TARGET_RATIO,
            "api_setup_ratio_max": API_TARGET_RATIO,
            "teardown_median_ms_max": TEARDOWN_TARGET_MS,
        }
        out["verdicts"] = {
            "setup": "PASS" if setup_ratio <= SETUP_TARGET_RATIO else "OVER",
            "api_setup": "PASS" if api_ratio <= API_TARGET_RATIO else "OVER",
            "teardown": "PASS" if teardown_median <= TEARDOWN_TARGET_MS else "OVER",
        }
        return out


def round_sizes(n: int, rounds: int) -> list[int]:
    return [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]


def extend(target: Series, more: Series) -> None:
    target.setup.extend(more.setup)
    target.teardown.extend(more.teardown)


def progress(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def measure(results: Results, floor: Floor, daemon: DaemonSide, quiet: bool) -> None:
    if results.warmup:
        progress(quiet, f"warm-up: {results.warmup} per side, not counted")
        floor.run_round(results.warmup)
        daemon.run_round(results.warmup)
    for index, size in enumerate(round_sizes(results.n, results.rounds)):
        order = ("floor", "daemon") if index % 2 == 0 else ("daemon", "floor")
        for side in order:
            began = time.monotonic()
            if side == "floor":
                extend(results.floor, floor.run_round(size))
            else:
                kernel, api = daemon.run_round(size)
                extend(results.daemon_kernel, kernel)
                extend(results.daemon_api, api)
            progress(
                quiet,
                f"round {index + 1}/{results.rounds}: {side:6} {size} dynos up and down "
                f"in {time.monotonic() - began:.1f} s",
            )


def run(n: int, rounds: int, warmup: int, quiet: bool) -> tuple[Results, list[str]]:
    """Measure both sides, clean up whatever happens. Returns the results and the problems
    cleanup found (things left behind by the daemon, or by us)."""
    prefix = random_prefix()
    while anything(leftovers(prefix)):
        prefix = random_prefix()
    prefixlen = block_prefixlen(n + warmup + 1)
    daemon_range, floor_range = pick_ranges(prefixlen)
    results = Results(n, rounds, warmup, prefix, str(daemon_range), str(floor_range))
    problems: list[str] = []
    workdir = tempfile.mkdtemp(prefix="dynod-bench-")
    floor = Floor(prefix, floor_range)
    daemon = DaemonSide(prefix, daemon_range, workdir)
    progress(
        quiet,
        f"prefix {prefix}: daemon {daemon_range} (bridge {prefix}0), "
        f"floor {floor_range} (bridge {floor.bridge}); work dir {workdir}",
    )
    try:
        with sigterm_as_interrupt():
            floor.call(floor.prepare)
            daemon.start()
            measure(results, floor, daemon, quiet)
    finally:
        with signals_ignored():
            try:
                floor.close()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                problems.append(f"floor cleanup failed: {exc!r}")
            daemon.stop()
            if daemon.killed:
                problems.append(f"dynod daemon did not stop within {KILL_AFTER:g} s: SIGKILLed")
            elif daemon.exit_status not in (None, 0):
                problems.append(
                    f"dynod daemon exited with status {daemon.exit_status}:\n"
                    + daemon.stderr_tail()
                )
            wait_links_gone(prefix, set(), 5.0)  # veths of the last namespaces
            left = leftovers(prefix)
            if anything(left):
                problems.append(f"left behind after the daemon stopped (swept): {left}")
                sweep(prefix)
                left = leftovers(prefix)
                if anything(left):
                    problems.append(f"still there after the sweep: {left}")
            shutil.rmtree(workdir, ignore_errors=True)
            for problem in problems:
                print(f"warning: {problem}", file=sys.stderr)
    return results, problems


# ---------------------------------------------------------------------------- output
def table(numbers: dict[str, Any]) -> str:
    rows = [
        ("daemon, kernel part", "daemon_kernel"),
        ("daemon, API end-to-end", "daemon_api"),
        ("floor (bare pyroute2)", "floor"),
    ]
    s, t = numbers["setup_ms"], numbers["teardown_ms"]
    lines = [
        f"dyno lifecycle: {numbers['n']} dynos per side in {numbers['rounds']} alternating "
        f"rounds ({numbers['warmup']} warm-up each, not counted); {numbers['machine']}",
        "",
        f"{'':24} {'setup ms':>19}   {'teardown ms':>19}",
        f"{'':24} {'median':>9} {'p99':>9}   {'median':>9} {'p99':>9}",
    ]
    for label, key in rows:
        lines.append(
            f"{label:24} {s[key]['median']:9.2f} {s[key]['p99']:9.2f}   "
            f"{t[key]['median']:9.2f} {t[key]['p99']:9.2f}"
        )
    r, v = numbers["ratios"], numbers["verdicts"]
    lines += [
        "",
        f"daemon kernel part / floor (medians): setup {r['setup']:.2f}x, "
        f"teardown {r['teardown']:.2f}x",
        f"setup target: <= {SETUP_TARGET_RATIO:.1f}x floor          -> {r['setup']:.2f}x  "
        f"{v['setup']}",
        f"API setup target: <= {API_TARGET_RATIO:.1f}x floor      -> {r['api_setup']:.2f}x  "
        f"{v['api_setup']}",
        f"teardown target: median <= {TEARDOWN_TARGET_MS:g} ms         -> "
        f"{t['daemon_kernel']['median']:.2f} ms  {v['teardown']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Dyno network setup/teardown latency: dynod versus bare pyroute2.",
    )
    parser.add_argument("-n", type=int, default=200, help="dynos per side (default 200)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating rounds per side (default 4)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="uncounted dynos per side first (default 2)"
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= MAX_N:
        parser.error(f"-n must be between 1 and {MAX_N}")
    if not 1 <= args.rounds <= args.n:
        parser.error("--rounds must be between 1 and -n")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if os.geteuid() != 0:
        print("error: run as root (namespaces, links, a daemon of its own)", file=sys.stderr)
        return 2
    try:
        results, problems = run(args.n, args.rounds, args.warmup, quiet=args.json)
    except KeyboardInterrupt:
        print("interrupted; everything the bench made was removed", file=sys.stderr)
        return 130
    except Interrupted:
        print("terminated; everything the bench made was removed", file=sys.stderr)
        return 143
    numbers = results.numbers()
    numbers["cleanup_problems"] = problems
    if args.json:
        print(json.dumps(numbers, indent=2))
    else:
        print(table(numbers))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
