"""The bare kernel floor at density: what the 1st, the 1,000th and the Nth bare setup cost when
the earlier ones are all kept, the reference for `density.py`'s growth target.

    sudo .venv/bin/python bench/density_floor.py [-n 4000] [--shard-ports 256] [--steps dynod]
        [--json]

The same steps as `dyno_lifecycle.py`'s floor (pyroute2 on one thread: `ip netns add`, a veth
with its peer made in the namespace as eth0 on a bridge, the gateway /30 on the bridge, lo and
eth0 up, the address, the default route, `ping_group_range`), N times one after another, every
namespace kept, on bridges of --shard-ports ports each as dynod shards a space (a bridge takes
at most 1,024). No process, no firewall, no state. Reported: each setup's time at #1, #1,000
and #N as the median of the 20 up to it (#1: of the first 20), as density.py reports the
daemon's kernel part, and #N / #1. With `--steps dynod`, the daemon's own kernel steps
instead (dynod/kernel/network.py attach(): how its kernel part alone scales). Everything it
made (namespaces, veths, bridges, all named with a random `bfl` prefix; addresses in a free
10.X.0.0/16) is removed on the way out, on error or Ctrl-C too, and checked.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import sys
import time

from density import WINDOW, free_space_range, median_window, window_of
from dyno_lifecycle import configure_inside, leftovers, ms_since, sweep
from pyroute2 import IPRoute
from run_support import sigterm_as_interrupt

from dynod.kernel import network
from dynod.kernel.addressing import SHARD_PORTS, Pool
from netns import namespace, nsid
from netns.rtnl import Rtnl


class DenseFloor:
    """N bare setups, all kept, on bridges of `per_bridge` ports."""

    def __init__(self, prefix: str, network: ipaddress.IPv4Network, per_bridge: int) -> None:
        self.prefix = prefix
        self.network = network
        self.per_bridge = per_bridge
        self.ipr = IPRoute()
        self.bridges: list[int] = []

    def bridge(self, seq: int) -> int:
        """The index of the bridge of setup `seq`, made (STP off, no IPv6) when first needed."""
        shard = seq // self.per_bridge
        while len(self.bridges) <= shard:
            name = f"{self.prefix}b{len(self.bridges)}"
            self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            index = self.ipr.link_lookup(ifname=name)[0]
            self.ipr.link("set", index=index, state="up")
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                f.write("1")
            self.bridges.append(index)
        return self.bridges[shard]

    def setup(self, seq: int) -> float:
        master = self.bridge(seq)  # not timed: a bridge is made once per shard
        name = f"{self.prefix}-{seq:x}"
        base = self.network.network_address + 4 * (1 + seq)
        gateway, address = str(base + 1), str(base + 2)
        began = time.perf_counter()
        namespace.create(name)
        fd = os.open(namespace.path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.ipr.link(
                "add",
                ifname=name,
                kind="veth",
                master=master,
                peer={"ifname": "eth0", "net_ns_fd": fd},
            )
        finally:
            os.close(fd)
        self.ipr.link("set", index=self.ipr.link_lookup(ifname=name)[0], state="up")
        self.ipr.addr("add", index=master, address=gateway, prefixlen=30)
        configure_inside(name, address, gateway)
        return ms_since(began)

    def close(self) -> None:
        self.ipr.close()


class DaemonSteps(DenseFloor):
    """The same, with the daemon's own kernel steps instead (`--steps dynod`):
    dynod/kernel/network.py's attach() on its netlink socket (netns/rtnl.py: one queue each way,
    the port's sysctls, isolation and FDB entry, the inside configured), on bridges made as
    dynod makes a network's shards. Still no process, no firewall, no state: how the kernel part
    alone scales, apart from the processes and the CPU they share with it."""

    def __init__(self, prefix: str, network_: ipaddress.IPv4Network, per_bridge: int) -> None:
        super().__init__(prefix, network_, per_bridge)
        self.pool = Pool(str(network_))
        self.rtnl = Rtnl()
        self.nsids = nsid.Descending()  # the daemon's namespace ids (netns/nsid.py)

    def bridge(self, seq: int) -> int:
        shard = seq // self.per_bridge
        while len(self.bridges) <= shard:
            name = f"{self.prefix}b{len(self.bridges)}"
            self.bridges.append(network.ensure_shard_bridge(self.ipr, name, self.pool))
        return self.bridges[shard]

    def setup(self, seq: int) -> float:
        master = self.bridge(seq)  # not timed: a bridge is made once per shard
        dyno = network.Attachment(
            f"{self.prefix}-{seq:x}",
            f"{self.prefix}v{seq:x}",
            self.pool.subnet(seq + 1),
            self.pool.bridge_mac,
        )
        began = time.perf_counter()
        network.attach(self.rtnl, master, dyno, self.nsids, ipv6=True)
        return ms_since(began)

    def close(self) -> None:
        self.rtnl.close()
        super().close()


def measure(n: int, per_bridge: int, quiet: bool, steps: str = "pyroute2") -> dict[str, object]:
    prefix = f"bfl{random.randrange(16**3):03x}"
    space = ipaddress.IPv4Network(free_space_range())
    floor = (DaemonSteps if steps == "dynod" else DenseFloor)(prefix, space, per_bridge)
    times: list[float] = []
    problems: list[str] = []
    # where the daemon would: its names in memory when /run is on disk (namespace.py)
    namespace.names_in_memory()
    try:
        for seq in range(n):
            times.append(floor.setup(seq))
            if not quiet and (seq + 1) % 250 == 0:
                recent = median_window(times, seq + 1)
                print(f"{seq + 1} bare setups, last {WINDOW}: {recent:.1f} ms", file=sys.stderr)
    finally:
        floor.close()
        began = time.monotonic()
        sweep(prefix)  # the namespaces (their veths go with them), then the bridges and the tmpfs
        left = leftovers(prefix)
        if any(left.values()):
            problems.append(f"left behind: {left}")
        cleanup_s = time.monotonic() - began
    at = {k: median_window(times, k) for k in (1, 1000, len(times)) if k <= len(times)}
    return {
        "n": len(times),
        "bridges": len(floor.bridges),
        "setup_ms": at,
        "last_over_first": at[len(times)] / at[1] if times else None,
        "cleanup_s": cleanup_s,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=4000, help="bare setups (default 4000)")
    parser.add_argument(
        "--shard-ports", type=int, default=SHARD_PORTS, help="ports per bridge (dynod's default)"
    )
    parser.add_argument(
        "--steps",
        choices=("pyroute2", "dynod"),
        default="pyroute2",
        help="the bare pyroute2 steps (the floor), or the daemon's own kernel steps",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the bench makes namespaces and bridges\nfix: run it as root", file=sys.stderr)
        return 1
    if not 1 <= args.n <= 16000 or not 1 <= args.shard_ports <= 1000:
        print(
            "error: -n must be 1..16000, --shard-ports 1..1000\nfix: pick others",
            file=sys.stderr,
        )
        return 1
    with sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
        out = measure(args.n, args.shard_ports, args.quiet, args.steps)
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            what = "dynod's kernel steps" if args.steps == "dynod" else "bare floor"
            print(f"{what}, {out['n']} setups kept, {out['bridges']} bridges")
            for k, v in out["setup_ms"].items():  # type: ignore[attr-defined]
                print(f"  setup at #{k}: {v:.2f} ms (median of {WINDOW}: {window_of(f'#{k}')})")
            ratio, cleanup = out["last_over_first"], out["cleanup_s"]
            print(f"  last / first: {ratio:.2f}x; cleanup {cleanup:.1f} s")
            for problem in out["problems"]:  # type: ignore[attr-defined]
                print(f"  problem: {problem}")
        return 1 if out["problems"] else 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
