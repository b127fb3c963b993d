"""A dyno's sandbox chain with many network namespaces on the host: copying the host's mount
table (one bind mount per namespace under /run/netns) against copying the daemon's template.

    sudo .venv/bin/python bench/spawn_mounts.py [-n 2000] [--runs 40] [--json]

Runs the chain a dyno's process starts with (`sh -c ISOLATE ... true` born in new pid, mount,
IPC and UTS namespaces, as `unshare --pid --fork --mount --propagation private --ipc --uts`
would start it: netns/exec.py isolated()), without the user switch and the cgroups, from inside
one network namespace, `--runs` times each way, interleaved: first with the host's own
namespaces only, then with -n more (`ip netns add`, a random `bsm` prefix). "host" as before
(unshare copies the host's mounts), "template" as now (born in the template, as `nsenter
--mount=TEMPLATE unshare ...`: the starting thread enters it, netns/mntns.py); and the copy alone
(`unshare --mount --propagation private true`) both ways. Reported: the median and p90 wall time
of each, in ms, the median CPU time of all its processes (the starting thread's unshare is not
in it: the same both ways), and the mounts each copy holds, with their `struct mount`s' size
(mnt_cache's object size).
Everything it made is removed on the way out (on error, Ctrl-C, SIGTERM too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

from run_support import machine, signals_ignored, sigterm_as_interrupt

from netns import exec as netns_exec
from netns import fstab, mntns, namespace


def chain(mounts: str) -> list[str]:
    """The dyno's chain around `true`, with the private mounts listed in the file `mounts`."""
    root = os.stat("/")
    return netns_exec.sandboxed(["true"], "/", f"{root.st_dev}:{root.st_ino}", mounts)


def mounts_seen(template: str | None) -> int:
    """How many mounts the chain's namespace holds (`wc -l /proc/self/mountinfo` inside it)."""
    argv = ["unshare", "--mount", "--propagation", "private", "cat", "/proc/self/mountinfo"]
    if template is not None:
        argv = mntns.entered(template, argv)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return len(out.splitlines())


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(netns: str, argv: list[str], template: str) -> tuple[float, float]:
    """Started from inside the namespace, as the daemon starts a dyno (its own /sys is mounted
    for the namespace's links), born in the template when one is given (as the daemon's thread
    starts it); until it exits. Wall time and the CPU time of all its processes, in ms."""
    cpu, began = children_cpu(), time.perf_counter()
    process = netns_exec.popen_inside(
        netns, argv, mounts=template, isolate=True, stdin=subprocess.DEVNULL
    )
    if process.wait(60) != 0:
        raise RuntimeError(f"the chain exited {process.returncode}: {argv}")
    return 1000 * (time.perf_counter() - began), 1000 * (children_cpu() - cpu)


COPY_ALONE = ["unshare", "--mount", "--propagation", "private", "true"]


def mount_objects() -> tuple[int, int]:
    """The kernel's live mount structures and the size of one (`grep mnt_cache
    /proc/slabinfo`: active objects, object size). Weighing copies by the change in live
    objects is hopeless on a busy machine (any start elsewhere copies the host's table too):
    a copy's mounts times the size of one is reported instead."""
    with open("/proc/slabinfo") as f:
        for line in f:
            fields = line.split()
            if fields[0] == "mnt_cache":
                return int(fields[1]), int(fields[3])
    raise RuntimeError("no mnt_cache in /proc/slabinfo")


def measure(
    netns: str, template: str, mounts: tuple[str, str], runs: int
) -> dict[str, dict[str, float]]:
    """The whole chain and the copy alone (`unshare --mount --propagation private true`), each
    from the host's table and through the template."""
    ways = {  # argv, and the mount namespace it is born in ("": the host's)
        "chain, host": (chain(mounts[0]), ""),
        "chain, template": (chain(mounts[1]), template),
        "copy alone, host": (COPY_ALONE, ""),
        "copy alone, template": (COPY_ALONE, template),
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    cpus: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(runs):  # interleaved: the machine's load weighs on all alike
        for way, (argv, born_in) in ways.items():
            wall, cpu = timed(netns, argv, born_in)
            times[way].append(wall)
            cpus[way].append(cpu)
    return {
        way: {
            "median_ms": round(statistics.median(values), 2),
            "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))], 2),
            "cpu_median_ms": round(statistics.median(cpus[way]), 2),
            "mounts": (seen := mounts_seen(None if way.endswith("host") else template)),
            "mount_kib": round(seen * mount_objects()[1] / 1024, 1),
        }
        for way, values in times.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="extra namespaces (default 2000)")
    parser.add_argument("--runs", type=int, default=40, help="chains per way and count")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: sudo .venv/bin/python bench/spawn_mounts.py")
    prefix = "bsm" + secrets.token_hex(3)
    directory = f"/run/{prefix}"
    made: list[str] = []
    files = fstab.Files(tempfile.mkdtemp(prefix=f"{prefix}-"))
    results: dict[str, object] = {"machine": machine(), "extra_namespaces": args.n}
    try:
        with sigterm_as_interrupt():
            namespace.ensure_run_dir()
            mntns.private_dir(directory)
            template = mntns.make(os.path.join(directory, "mnt"), [namespace.RUN_DIR]).path
            # the chain's fstab outside a template and in one (which covers /run/netns)
            mounts = (
                files.path(fstab.Private(prefix)),
                files.path(fstab.Private(prefix, cover_netns=False)),
            )
            probe = f"{prefix}-probe"
            namespace.create(probe)
            made.append(probe)
            results["with 0 extra"] = measure(probe, template, mounts, args.runs)
            for seq in range(args.n):
                name = f"{prefix}-{seq}"
                namespace.create(name)
                made.append(name)
            results[f"with {args.n} extra"] = measure(probe, template, mounts, args.runs)
    finally:
        with signals_ignored():
            for name in made:
                namespace.delete(name)
            mntns.remove(directory)
            files.remove()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
