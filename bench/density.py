"""Many dynos on one host: what the 1st, the 1,000th and the 4,000th dyno cost, and what the
daemon and the kernel hold with them all running.

    sudo .venv/bin/python bench/density.py [-n 4000] [--shard-ports 256] [--budget 1800] [--json]

A temporary `dynod daemon` (its own state dir, socket, prefix, ranges, bridges and nftables
tables) gets a Private Space (a free 10.X.0.0/16) with one app, and N `worker` dynos running
`sleep 3600` are started in it one after another through the API: so the DNS registry holds N
names and the space is sharded over N / --shard-ports bridges. Reported:

* setup at dyno #1, #1,000 and #N: the daemon's own kernel part (`setup_ms`) and the whole
  API call, each as the median of the 20 dynos up to that one, and #1's of the first 20 (#1
  alone until the sixth round: single calls are noisy on a shared machine, and the first one
  pays one-time costs); target: #N's kernel part at most 1.5x #1's. Since the eighteenth round
  those 20 are the last of 20 groups of 3 starts, each group after a random pause of 0.2-0.6 s
  (PAUSE_S; before, the 20 ran back to back, in about 0.2 s); the medians of the 20
  back-to-back starts beside each window (before it, after it for #1), when none of them is in
  another window, are reported too;
* the daemon's RSS, before the first dyno and with all N;
* kernel memory per dyno: /proc/meminfo's Slab + KernelStack + PageTables + Percpu with all N
  running, less before, divided by N (and MemAvailable's drop per dyno, which includes the
  dynos' own processes);
* `dynod ps` (the CLI, a new process, as a user types it) and GET /v1/dynos, the median of 3;
* one DNS answer with an N-name registry: `1.worker.APP.app.localspace` asked from inside the
  last dyno's namespace, UDP, the median of 200 queries one after another;
* what else the machine did during the first and the last window (their groups, not their
  pauses) and during the back-to-back starts beside them: how busy its CPUs were, and the CPU
  the kernel's threads took, with the busiest one (MachineShare);
* one sysfs mount in a new network namespace, with no dyno and with N: each dyno's /sys is one,
  and the kernel walks every sysfs superblock of the machine to make it (sysfs_mount_us);
* how long stopping every dyno takes (`dynod stop --app APP`, one API call);
* that nothing with the bench's prefix is left afterwards (namespaces, links, nftables tables,
  cgroups).

Bounded: starting stops at --budget seconds whatever N was reached (and says so). Everything is
removed on the way out, on error or Ctrl-C too: the daemon gets SIGTERM (it stops its dynos and
removes what it made), SIGKILL after a time that grows with N, then a sweep of whatever it left
(namespaces and their processes, links, tables, cgroups). The only kernel limit it needs above
Debian's defaults is none at 4,000 (pid_max 32,768 holds 3 processes a dyno; the daemon raises
its own open-file limit); the script checks pid_max first and refuses an N it cannot hold.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from dyno_lifecycle import (
    DaemonSide,
    host_networks,
    leftovers,
    ms_since,
    random_prefix,
    sweep,
)
from run_support import Interrupted, machine, signals_ignored, sigterm_as_interrupt

from dynod.api.client import Client
from dynod.kernel.addressing import SHARD_PORTS
from netns import cgroup

APP = "dense"
COMMAND = "sleep 3600"
WINDOW = 20  # dynos per reported setup figure
MARKS = (1, 1000)  # and N
# A reported window is 20 groups of GROUP starts back to back, each group after a random pause:
# the last start of each group is timed. So its 20 timed starts sample 20 moments of the machine
# spread over about 8 s, not one moment of 0.2 s (20 starts back to back): a host thread that
# takes a CPU for a fraction of a second every half second (this VM's DAMON, `kdamond`) otherwise
# lands on all 20 or none, and decides the window's median alone. Each timed start comes right
# after other starts, as in a back-to-back run: what a start leaves the kernel and the daemon to
# finish after it answers (workqueues, RCU, the dyno's own exec) meets the next one, and the CPUs
# idle during the pause are woken by the first starts, not the timed one. Random, not fixed: a
# fixed pause near a multiple of such a thread's period would meet it at the same phase every
# time. The 20 starts before each window (after it, for #1) run back to back as all the others
# do, and are reported beside it.
PAUSE_S = (0.2, 0.6)
GROUP = 3  # starts after each pause; the last of them is timed
DNS_QUERIES = 200
# At most: its init shell (pid 1 of its pid namespace), sleep, and the `sh -c` of a command that is
# not one plain program (`sleep 3600` takes its shell's place: processes.in_place, so 2 here)
PROCESSES_PER_DYNO = 3
KERNEL_FIELDS = ("Slab", "KernelStack", "PageTables", "Percpu")
SETUP_TARGET = 1.5  # #N within this many times #1

RESOLVE = r"""
import json, statistics, sys, time
from dnslib import DNSRecord, QTYPE
server, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
query = DNSRecord.question(name)
times, answers = [], set()
for _ in range(count):
    began = time.perf_counter()
    reply = DNSRecord.parse(query.send(server, 53, timeout=2))
    times.append((time.perf_counter() - began) * 1e6)
    answers |= {str(r.rdata) for r in reply.rr if r.rtype == QTYPE.A}
print(json.dumps({"median_us": statistics.median(times), "answers": sorted(answers)}))
"""


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    found = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            found[key] = int(value.split()[0])
    return found


def kernel_kb(info: dict[str, int]) -> int:
    return sum(info.get(k, 0) for k in KERNEL_FIELDS)


def free_space_range() -> str:
    taken = host_networks()
    free = [
        f"10.{n}.0.0/16"
        for n in range(100, 250)
        if not any(ipaddress.IPv4Network(f"10.{n}.0.0/16").overlaps(t) for t in taken)
    ]
    return random.choice(free)


def free_common_range() -> ipaddress.IPv4Network:
    taken = host_networks()
    blocks = ipaddress.IPv4Network("172.31.0.0/16").subnets(new_prefix=24)
    return random.choice([b for b in blocks if not any(b.overlaps(t) for t in taken)])


def median_window(values: list[float], upto: int) -> float:
    """The median of the WINDOW values ending at dyno #upto (1-based); for a dyno before
    #WINDOW, of the first WINDOW (#1: dynos 1-20, not dyno #1 alone)."""
    start = max(0, upto - WINDOW)
    chunk = values[start : max(upto, WINDOW)]
    return statistics.median(chunk) if chunk else float("nan")


def window_range(mark: int) -> range:
    """The WINDOW dyno numbers (1-based) ending at #mark, the first WINDOW for an earlier one:
    #1 -> 1-20, #1000 -> 981-1000 (median_window's)."""
    start = max(1, mark - WINDOW + 1)
    return range(start, max(mark, start + WINDOW - 1) + 1)


def paced_range(mark: int) -> range:
    """The dyno numbers of the paced window reported at #mark: WINDOW groups of GROUP starts
    ending at #mark, the first ones for an earlier one (#1 -> 1-60, #4000 -> 3941-4000); each
    group's first start comes after a pause, its last is timed (PAUSE_S)."""
    start = max(1, mark - GROUP * WINDOW + 1)
    return range(start, start + GROUP * WINDOW)


def back_to_back_range(mark: int, paced: set[int], reached: int) -> range:
    """The WINDOW starts beside the paced window at #mark that ran back to back, none paused:
    those just before it, or just after it for the first window; empty if they overlap a paced
    window or were not all reached."""
    window = paced_range(mark)
    if window.start > WINDOW:
        beside = range(window.start - WINDOW, window.start)
    else:
        beside = range(window.stop, window.stop + WINDOW)
    if beside.stop - 1 > reached or paced.intersection(beside):
        return range(0)
    return beside


def cpu_ticks() -> tuple[int, int, int]:
    """/proc/stat's first line: all the CPUs' ticks (user to steal: guest time is in user
    already), their idle and iowait ones, and their steal (the hypervisor ran something else:
    busy for the guest)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return sum(fields), fields[3] + fields[4], fields[7]


def process_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Each named process's CPU time (user + system, its threads'; 0 once it is gone)."""
    found = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            found[name] = times.user + times.system
        except psutil.Error:
            found[name] = 0.0
    return found


def kernel_thread_ticks(pids: list[int] | None = None) -> dict[int, tuple[str, int]]:
    """Each kernel thread's (a child of kthreadd, pid 2) name and CPU ticks (utime + stime)."""
    found = {}
    for pid in pids if pids is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        fields = rest.split()
        if pid == 2 or fields[1] == "2":
            found[pid] = (name, int(fields[11]) + int(fields[12]))
    return found


class MachineShare:
    """What else the machine did while a window's starts ran: how busy its CPUs were, and the
    CPU the kernel's own threads took (kworkers, ksoftirqd, and on some VMs kdamond: DAMON's
    page sampling walks every mapping of a sampled page, so with a shared library mapped by
    every dyno's processes it grows with the dynos). The starts share the CPUs with them: on
    2 vCPUs a back-to-back run keeps them 70-99 % busy (bench/README.md, "Fifteenth round").
    It adds up the spans from each begin() to the next end(): a paced window's groups, not
    its pauses. The kernel threads are those found before the first dyno (`kernel_threads`):
    listing them again among thousands of processes would take longer than a window. Beside
    them: the CPU of the named `processes` (the daemon, the bench), the hypervisor's steal, and
    the rest (every other process: the dynos' start-up chains, anything else running)."""

    def __init__(self, kernel_threads: list[int], processes: dict[str, int]) -> None:
        self.kernel_threads = kernel_threads
        self.processes = processes
        self.seconds = 0.0
        self.spent = self.idle = self.steal = 0  # all CPUs' ticks: all, idle, stolen
        self.used: dict[int, int] = {}  # ticks by kernel thread
        self.names: dict[int, str] = {}
        self.process_seconds: dict[str, float] = dict.fromkeys(processes, 0.0)
        self._began: tuple[float, tuple[int, int, int], dict[int, tuple[str, int]]] | None = None
        self._began_processes: dict[str, float] = {}

    def begin(self) -> None:
        threads = kernel_thread_ticks(self.kernel_threads)
        self._began_processes = process_seconds(self.processes)
        self._began = (time.monotonic(), cpu_ticks(), threads)

    def end(self) -> None:
        assert self._began is not None
        began, (total, idle, steal), threads = self._began
        self.seconds += time.monotonic() - began
        now_total, now_idle, now_steal = cpu_ticks()
        self.spent += now_total - total
        self.idle += now_idle - idle
        self.steal += now_steal - steal
        for name, seconds in process_seconds(self.processes).items():
            self.process_seconds[name] += max(0.0, seconds - self._began_processes[name])
        for pid, (name, ticks) in kernel_thread_ticks(list(threads)).items():
            self.used[pid] = self.used.get(pid, 0) + ticks - threads[pid][1]
            self.names[pid] = name
        self._began = None

    def close(self) -> None:
        """Ends a span still open (a window the budget cut short)."""
        if self._began is not None:
            self.end()

    def result(self) -> dict[str, Any]:
        hz = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}  # CPUs by name (the same name twice is summed)
        for pid, ticks in self.used.items():
            share = ticks / hz / self.seconds if self.seconds else 0.0
            used[self.names[pid]] = used.get(self.names[pid], 0.0) + share
        top = max(used, key=lambda name: used[name], default="")
        wall = self.seconds or float("inf")
        busy = (self.spent - self.idle) / hz / wall  # CPUs, steal included
        processes = {name: used_s / wall for name, used_s in self.process_seconds.items()}
        steal = self.steal / hz / wall
        return {
            "seconds": self.seconds,
            "cpus_busy": 1 - self.idle / self.spent if self.spent else 0.0,
            "kernel_threads_cpus": sum(used.values()),
            "busiest_kernel_thread": [top, used.get(top, 0.0)],
            **{f"{name}_cpus": share for name, share in processes.items()},
            "steal_cpus": steal,
            "rest_cpus": max(0.0, busy - sum(used.values()) - sum(processes.values()) - steal),
        }


SYSFS_PROBE = r"""
import ctypes, os, statistics, sys, tempfile, time
libc = ctypes.CDLL(None, use_errno=True)
target = tempfile.mkdtemp()
found = []
try:
    for _ in range(3):
        began = time.perf_counter()
        if libc.mount(b"sysfs", target.encode(), b"sysfs", 0, None):
            raise OSError(ctypes.get_errno(), "mount -t sysfs")
        found.append((time.perf_counter() - began) * 1e6)
        libc.umount2(target.encode(), 2)
finally:
    os.rmdir(target)
print(statistics.median(found))
"""


def sysfs_mount_us() -> float:
    """One `mount -t sysfs` in a new network and mount namespace (what each dyno's /sys is),
    the median of 5: the kernel looks for an existing superblock of that namespace's by walking
    every sysfs superblock of the machine (sget_fc), one a dyno, so it grows with them."""
    found = []
    for _ in range(5):
        probe = subprocess.run(
            ["unshare", "--net", "--mount", "--propagation", "private"]
            + [sys.executable, "-c", SYSFS_PROBE],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        found.append(float(probe.stdout))
    return statistics.median(found)


def cli(daemon: DaemonSide, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DYNOD_SOCKET": daemon.socket}
    return subprocess.run(
        [sys.executable, "-m", "dynod", *args], capture_output=True, text=True, env=env, timeout=120
    )


def timed_ms(fn: Any, times: int = 3) -> float:
    found = []
    for _ in range(times):
        began = time.perf_counter()
        fn()
        found.append(ms_since(began))
    return statistics.median(found)


def remove_cgroups(prefix: str) -> list[str]:
    """Dyno cgroups a SIGKILLed daemon left (it makes them below its own, the bench's)."""
    try:
        tree = cgroup.discover()
    except cgroup.Unavailable:
        return []
    left = sorted(cgroup.names(tree, f"{prefix}-"))
    for name in left:
        cgroup.remove(tree, name)
    return left


def check_limits(n: int) -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    in_use = len(psutil.pids())
    if in_use + PROCESSES_PER_DYNO * n > 0.9 * pid_max:
        raise SystemExit(
            f"error: {n} dynos need about {PROCESSES_PER_DYNO * n} processes and {in_use} run "
            f"already; kernel.pid_max is {pid_max}\nfix: a smaller -n, or raise kernel.pid_max"
        )


def measure(n: int, shard_ports: int, budget: float, quiet: bool) -> dict[str, Any]:
    prefix = random_prefix()
    workdir = tempfile.mkdtemp(prefix=f"dynod-density-{prefix}-")
    os.chmod(workdir, 0o755)
    daemon = DaemonSide(prefix, free_common_range(), workdir, ("--shard-ports", str(shard_ports)))
    daemon.kill_after = 60 + n * 0.1
    out: dict[str, Any] = {"n_wanted": n, "shard_ports": shard_ports, "machine": machine()}
    problems: list[str] = []
    out["problems"] = problems
    try:
        before = meminfo()
        daemon.start()
        assert daemon.process is not None
        proc = psutil.Process(daemon.process.pid)
        space = f"{prefix}s"
        made = cli(daemon, "spaces:create", space, "--cidr", free_space_range())
        if made.returncode:
            raise RuntimeError(made.stderr)
        made = cli(daemon, "apps:create", APP, "--space", space)
        if made.returncode:
            raise RuntimeError(made.stderr)
        out["rss_mb_empty"] = proc.memory_info().rss / 2**20
        sysfs = {"#0": sysfs_mount_us()}
        kernel_setup: list[float] = []
        api_setup: list[float] = []
        started: list[dict[str, Any]] = []
        deadline = time.monotonic() + budget
        body = {"type": "worker", "command": COMMAND, "cwd": "/", "env": {}, "detach": True}
        machine_during: dict[str, Any] = {}
        # #1,000's window is not paced where #N's overlaps it (N up to 1,059): their groups would
        # not line up; nor are #1's and #N's apart below 120 dynos (a quick run's)
        planned = [
            mark
            for mark in dict.fromkeys((*MARKS, n))
            if mark <= n and (mark in (1, n) or paced_range(mark).stop <= paced_range(n).start)
        ]
        paced = {number for mark in planned for number in paced_range(mark) if number <= n}
        pause_before = {number for mark in planned for number in paced_range(mark)[0::GROUP]}
        # what else the machine did during the first and the last window (their groups, not their
        # pauses), and during the back-to-back starts beside each: by label, the dynos whose
        # start begins a span, and those whose start ends one
        watch: dict[str, tuple[set[int], set[int]]] = {}
        for mark in dict.fromkeys((1, n)):
            window = paced_range(mark)
            label = f"#{window.start}-#{min(window[-1], n)} (its groups)"
            timed = set(window[GROUP - 1 :: GROUP]) | ({n} & set(window))
            watch[label] = (set(window[0::GROUP]), timed)
            beside = back_to_back_range(mark, paced, n)
            if beside:
                watch[f"#{beside.start}-#{beside[-1]} back to back"] = ({beside[0]}, {beside[-1]})
        kernel_threads = list(kernel_thread_ticks())
        measured = {"daemon": daemon.process.pid, "bench": os.getpid()}
        shares = {label: MachineShare(kernel_threads, measured) for label in watch}
        for number in range(1, n + 1):
            if time.monotonic() > deadline:
                problems.append(f"budget of {budget:g} s reached at {number - 1} dynos")
                break
            if number in pause_before:
                time.sleep(random.uniform(*PAUSE_S))
            for label, (firsts, _) in watch.items():
                if number in firsts:
                    shares[label].begin()
            began = time.perf_counter()
            answer = daemon.client.call("POST", f"/v1/apps/{APP}/dynos", body)
            api_setup.append(ms_since(began))
            kernel_setup.append(float(answer["setup_ms"]))
            started.append(answer)
            for label, (_, lasts) in watch.items():
                if number in lasts:
                    shares[label].end()
            if not quiet and number % 250 == 0:
                print(
                    f"{number} dynos, last 20: kernel {median_window(kernel_setup, number):.1f} "
                    f"ms, API {median_window(api_setup, number):.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
        reached = len(started)
        out["n"] = reached
        for label, share in shares.items():
            share.close()  # a span the budget cut short: up to the last start
            if share.seconds:
                machine_during[label] = share.result()
        marks = [m for m in dict.fromkeys((*MARKS, reached)) if m <= reached]
        out["setup_ms"] = {
            f"#{m}": setup_figure(kernel_setup, api_setup, m, paced, (reached, n)) for m in marks
        }
        first, last = out["setup_ms"]["#1"], out["setup_ms"][f"#{reached}"]
        out["setup_ratio_last_to_first"] = last["kernel"] / first["kernel"]
        if not (first["paced"] and last["paced"]):
            out["verdict"] = f"not comparable: the window at #{reached} was not paced (cut short)"
        elif out["setup_ratio_last_to_first"] <= SETUP_TARGET:
            out["verdict"] = "PASS"
        else:
            out["verdict"] = "OVER"
        out["setup_ms_back_to_back"] = back_to_back(kernel_setup, api_setup, marks, paced, reached)
        b2b_first, b2b_last = (out["setup_ms_back_to_back"].get(f"#{m}") for m in (1, reached))
        if b2b_first and b2b_last and b2b_first["dynos"] != b2b_last["dynos"]:
            out["back_to_back_ratio_last_to_first"] = b2b_last["kernel"] / b2b_first["kernel"]
        out["series_ms"] = {"kernel": kernel_setup, "api": api_setup, "paced": sorted(paced)}
        out["machine_during"] = machine_during
        time.sleep(2)  # the last dynos' processes settle
        sysfs[f"#{reached}"] = sysfs_mount_us()
        out["sysfs_mount_us"] = sysfs
        during = meminfo()
        out["rss_mb"] = proc.memory_info().rss / 2**20
        out["kernel_kb_per_dyno"] = (kernel_kb(during) - kernel_kb(before)) / reached
        out["available_kb_per_dyno"] = (before["MemAvailable"] - during["MemAvailable"]) / reached
        out["bridges"] = sorted(
            name for name in os.listdir("/sys/class/net") if name.startswith(f"{prefix}s")
        )
        out["ps_cli_ms"] = timed_ms(lambda: cli(daemon, "ps", "--app", APP))
        out["ps_api_ms"] = timed_ms(lambda: daemon.client.call("GET", f"/v1/dynos?app={APP}"))
        spaces = daemon.client.call("GET", "/v1/spaces")
        dns = next(s["dns"] for s in spaces if s["name"] == space)
        asked = subprocess.run(
            ["ip", "netns", "exec", started[-1]["netns"], sys.executable, "-c", RESOLVE, dns]
            + [f"1.worker.{APP}.app.localspace", str(DNS_QUERIES)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if asked.returncode:
            problems.append(f"DNS query failed: {asked.stderr.strip()}")
        else:
            answer = json.loads(asked.stdout)
            out["dns_answer_us"] = answer["median_us"]
            if answer["answers"] != [started[0]["ip"]]:
                problems.append(f"DNS answered {answer['answers']}, not {started[0]['ip']}")
        began = time.perf_counter()
        # one call for every dyno: minutes at 4,000, longer than the client's usual 60 s
        Client(daemon.socket, timeout=120 + reached).call("DELETE", f"/v1/apps/{APP}/dynos?grace=5")
        out["stop_all_s"] = time.perf_counter() - began
        out["rss_mb_after_stop"] = proc.memory_info().rss / 2**20
    except (KeyboardInterrupt, Interrupted) as exc:
        problems.append(f"interrupted: {exc!r}")
    except Exception as exc:
        problems.append(f"failed: {exc!r}")
    finally:
        with signals_ignored():
            daemon.stop()
            if daemon.killed:
                problems.append("the daemon did not stop in time: SIGKILLed")
            left = leftovers(prefix)
            cgroups_left = remove_cgroups(prefix)
            if any(left.values()) or cgroups_left:
                problems.append(f"left behind (now swept): {left}, cgroups {cgroups_left}")
                sweep(prefix)
            out["left_behind"] = {**left, "cgroups": cgroups_left}
            after = meminfo()
            out["kernel_kb_not_returned"] = kernel_kb(after) - kernel_kb(before)
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def setup_figure(
    kernel: list[float], api: list[float], mark: int, paced: set[int], ends: tuple[int, int]
) -> dict[str, Any]:
    """The medians reported at dyno #mark: of the timed starts of its paced window (the last of
    each group; dyno #1 alone if -n is 1); of the WINDOW back-to-back starts up to it if that
    window was not paced all through (the budget cut the run short). ends: (reached, n)."""
    reached, n = ends
    window = paced_range(mark)
    upto = [number for number in window if number <= reached]
    if upto and paced.issuperset(upto) and (window[-1] <= reached or reached == n):
        timed = [number for number in window[GROUP - 1 :: GROUP] if number <= reached] or upto
        return {
            "kernel": statistics.median(kernel[number - 1] for number in timed),
            "api": statistics.median(api[number - 1] for number in timed),
            "dynos": f"#{upto[0]}-#{upto[-1]}, the last start of each group of {GROUP}, each "
            f"group after a pause of {PAUSE_S[0]:g}-{PAUSE_S[1]:g} s",
            "paced": True,
        }
    window = window_range(mark)
    return {
        "kernel": median_window(kernel, mark),
        "api": median_window(api, mark),
        "dynos": f"#{window.start}-#{min(window[-1], reached)}, back to back",
        "paced": False,
    }


def back_to_back(
    kernel: list[float], api: list[float], marks: list[int], paced: set[int], reached: int
) -> dict[str, dict[str, Any]]:
    """The medians of the back-to-back starts beside each reported window, by its mark."""
    found: dict[str, dict[str, Any]] = {}
    for mark in dict.fromkeys(marks):
        beside = back_to_back_range(mark, paced, reached)
        if beside:
            cut = slice(beside.start - 1, beside.stop - 1)
            found[f"#{mark}"] = {
                "dynos": f"#{beside.start}-#{beside.stop - 1}",
                "kernel": statistics.median(kernel[cut]),
                "api": statistics.median(api[cut]),
            }
    return found


def window_of(mark: str) -> str:
    """The dynos a reported median is of: #1 -> "#1-#20", #1000 -> "#981-#1000"."""
    window = window_range(int(mark.lstrip("#")))
    return f"#{window.start}-#{window.stop - 1}"


def table(out: dict[str, Any]) -> str:
    lines = [f"density: {out.get('n', 0)} dynos in one space ({out['machine']})"]
    for mark, value in out.get("setup_ms", {}).items():
        lines.append(
            f"  setup at dyno {mark:>6}: kernel {value['kernel']:6.2f} ms, "
            f"API {value['api']:6.2f} ms (median of {value['dynos']})"
        )
    for mark, value in out.get("setup_ms_back_to_back", {}).items():
        lines.append(
            f"  beside dyno {mark:>6}: kernel {value['kernel']:6.2f} ms, "
            f"API {value['api']:6.2f} ms (median of {WINDOW} back to back: {value['dynos']})"
        )
    if "back_to_back_ratio_last_to_first" in out:
        lines.append(
            "  back to back, last / first kernel part: "
            f"{out['back_to_back_ratio_last_to_first']:.2f}x"
        )
    if "setup_ratio_last_to_first" in out:
        lines.append(
            f"  last / first kernel part: {out['setup_ratio_last_to_first']:.2f}x "
            f"(target <= {SETUP_TARGET}x): {out['verdict']}"
        )
    for mark, during in out.get("machine_during", {}).items():
        top, share = during["busiest_kernel_thread"]
        lines.append(
            f"  the machine during {mark}: CPUs {during['cpus_busy']:.0%} busy, "
            f"kernel threads {during['kernel_threads_cpus']:.2f} CPU (most: {top} {share:.2f}), "
            f"daemon {during['daemon_cpus']:.2f}, bench {during['bench_cpus']:.2f}, "
            f"steal {during['steal_cpus']:.2f}, the rest {during['rest_cpus']:.2f}"
        )
    if "sysfs_mount_us" in out:
        shown = ", ".join(f"{us:.0f} us at {m}" for m, us in out["sysfs_mount_us"].items())
        lines.append(f"  one sysfs mount in a new network namespace (a dyno's /sys): {shown}")
    for key, text in (
        ("bridges", "bridges of the space"),
        ("rss_mb_empty", "daemon RSS, no dyno (MB)"),
        ("rss_mb", "daemon RSS, all dynos (MB)"),
        ("kernel_kb_per_dyno", "kernel memory per dyno (kB: Slab+KernelStack+PageTables+Percpu)"),
        ("available_kb_per_dyno", "MemAvailable per dyno (kB, with its processes)"),
        ("ps_cli_ms", "`dynod ps --app` (ms)"),
        ("ps_api_ms", "GET /v1/dynos (ms)"),
        ("dns_answer_us", "one DNS answer, N-name registry (us)"),
        ("stop_all_s", "stopping every dyno (s)"),
        ("left_behind", "left behind"),
        ("problems", "problems"),
    ):
        if key in out:
            value = out[key]
            shown = f"{value:.1f}" if isinstance(value, float) else value
            lines.append(f"  {text}: {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=4000, help="dynos to start (default 4000)")
    parser.add_argument(
        "--shard-ports", type=int, default=SHARD_PORTS, help="dynos per bridge (dynod's default)"
    )
    parser.add_argument("--budget", type=float, default=1800, help="seconds for starting")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--series", metavar="FILE", help="write every start's kernel part and API time (JSON)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the bench makes namespaces and bridges\nfix: run it as root", file=sys.stderr)
        return 1
    if not 1 <= args.n <= 16000:
        print("error: -n must be 1..16000 (a /16 space)\nfix: pick another -n", file=sys.stderr)
        return 1
    check_limits(args.n)
    with sigterm_as_interrupt():
        out = measure(args.n, args.shard_ports, args.budget, args.quiet)
    series = out.pop("series_ms", None)
    if args.series and series is not None:
        with open(args.series, "w") as f:
            json.dump(series, f)
    print(json.dumps(out, indent=2) if args.json else table(out))
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
