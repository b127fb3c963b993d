"""Control groups: limits on the memory, the number of tasks and the CPU share of a group of
processes, as a person would set them in a shell (`mkdir`, `echo N > FILE`, `cat`, `rmdir` under
/sys/fs/cgroup).

Two layouts exist:

- cgroup v2, one unified tree (Debian 12's default). A cgroup hands controllers to its children
  through its `cgroup.subtree_control`, and one that does may hold no processes itself (the
  "no internal processes" rule): the caller moves itself into a leaf of its own cgroup first.
- cgroup v1, one tree per controller (`memory`, `pids`, `cpu`), each mounted on its own. A group
  is then a directory of the same name in each tree.

Groups are only ever made below the calling process's own cgroup (read from /proc/self/cgroup),
so a delegated subtree (systemd's `Delegate=yes`) is all this needs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import time
from dataclasses import dataclass

from netns import record

CONTROLLERS = ("memory", "pids", "cpu")
EMPTY_WAIT = 2.0  # seconds a group may take to empty after its last task was killed


class Unavailable(Exception):
    """No usable memory, pids and cpu controllers below our own cgroup; says why and what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes: above this the kernel reclaims, then OOM-kills inside the group
    tasks: int  # processes and threads
    cpu_weight: int  # 1..10000 on cgroup v2's scale (100 is every cgroup's default)


@dataclass(frozen=True)
class Usage:
    # bytes of anonymous memory, tmpfs/shared memory and swap (no file cache); from
    # usage(above=...) at most `above`, a bound that may count the file cache too
    memory: int
    oom_kills: int  # tasks the kernel's OOM killer has killed in the group so far


@dataclass(frozen=True)
class Tree:
    """Where our own cgroup is: v2 one directory; v1 one directory per controller."""

    version: int
    bases: tuple[tuple[str, str], ...]  # (controller, directory of our own cgroup in its tree)

    def base(self, controller: str) -> str:
        return dict(self.bases)[controller]

    def directories(self, name: str) -> list[str]:
        """The group's directory in every tree (one on v2)."""
        return sorted({os.path.join(base, name) for _, base in self.bases})


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    """`echo VALUE > PATH`."""
    with open(path, "w") as f:
        f.write(value)
    record.note_text(f"echo {shlex.quote(value)} > {shlex.quote(path)}")


def _mkdir(path: str) -> None:
    """`mkdir -p PATH`."""
    os.makedirs(path, exist_ok=True)
    record.note("mkdir", "-p", path)


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, type, super options) of every cgroup mount in a mountinfo file."""
    found = []
    for line in _read(mountinfo).splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _below(mount_point: str, root: str, path: str) -> str:
    """Our cgroup's directory: its path is relative to the root of what is mounted there."""
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return os.path.normpath(os.path.join(mount_point, path.lstrip("/")))


def discover(
    leaf: str = "",
    proc_cgroup: str = "/proc/self/cgroup",
    mountinfo: str = "/proc/self/mountinfo",
) -> Tree:
    """`cat /proc/self/cgroup` and `findmnt -t cgroup,cgroup2`: our own cgroup, in the v2 tree
    when it offers memory, pids and cpu there, else in the v1 trees of those controllers. On v2
    a process already in its `leaf` (put there by prepare() before a restart, or by the service
    manager) has the leaf's parent as its own cgroup."""
    v1_paths: dict[str, str] = {}
    v2_path = None
    for line in _read(proc_cgroup).splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            v2_path = path
        for controller in controllers.split(","):
            v1_paths[controller] = path
    mounts = _mounts(mountinfo)
    for root, point, kind, _ in mounts:
        if kind == "cgroup2" and v2_path is not None:
            base = _below(point, root, v2_path)
            if leaf and os.path.basename(base) == leaf:
                base = os.path.dirname(base)
            with contextlib.suppress(OSError):
                offered = set(_read(os.path.join(base, "cgroup.controllers")).split())
                if set(CONTROLLERS) <= offered:
                    return Tree(2, tuple((c, base) for c in CONTROLLERS))
    bases = []
    for controller in CONTROLLERS:
        for root, point, kind, options in mounts:
            if kind == "cgroup" and controller in options and controller in v1_paths:
                bases.append((controller, _below(point, root, v1_paths[controller])))
                break
    if len(bases) == len(CONTROLLERS):
        return Tree(1, tuple(bases))
    missing = sorted(set(CONTROLLERS) - {c for c, _ in bases})
    raise Unavailable(
        f"the {', '.join(missing)} cgroup controller(s) are available neither in the cgroup v2 "
        "tree below this process's own cgroup nor as cgroup v1 hierarchies",
        "run the daemon under systemd with Delegate=yes (vagrant/dynod.service), or on a host "
        "whose cgroup v2 tree offers memory, pids and cpu",
    )


def prepare(tree: Tree, leaf: str) -> None:
    """v2 only: `echo +memory +pids +cpu > BASE/cgroup.subtree_control`, after moving this
    process into BASE/leaf when BASE holds processes (the "no internal processes" rule)."""
    if tree.version != 2:
        return
    base = tree.base("memory")
    control = os.path.join(base, "cgroup.subtree_control")
    if set(CONTROLLERS) <= set(_read(control).split()):
        return
    wanted = " ".join(f"+{c}" for c in CONTROLLERS)
    try:
        _write(control, wanted)
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise _refused(base, exc) from exc
    own = os.path.join(base, leaf)
    try:
        _mkdir(own)
        _write(os.path.join(own, "cgroup.procs"), str(os.getpid()))
        _write(control, wanted)
    except OSError as exc:
        # others share the cgroup: back where this process was, and no leaf left behind
        with contextlib.suppress(OSError):
            _write(os.path.join(base, "cgroup.procs"), str(os.getpid()))
            os.rmdir(own)
        raise _refused(base, exc) from exc


def release(tree: Tree, leaf: str) -> None:
    """v2 only, undoing prepare() once no child group is left: `echo -memory -pids -cpu >
    BASE/cgroup.subtree_control`, this process back into BASE, `rmdir BASE/leaf`. Without it a
    service manager could not put the next daemon into BASE (a cgroup that hands controllers
    to children may hold no processes). Best effort: other children (another daemon's) keep
    the controllers on, and then this process stays in its leaf."""
    if tree.version != 2:
        return
    base = tree.base("memory")
    own = os.path.join(base, leaf)
    if not os.path.isdir(own):
        return
    with contextlib.suppress(OSError):
        _write(os.path.join(base, "cgroup.subtree_control"), "-memory -pids -cpu")
        _write(os.path.join(base, "cgroup.procs"), str(os.getpid()))
        os.rmdir(own)
        record.note("rmdir", own)


def _refused(base: str, exc: OSError) -> Unavailable:
    return Unavailable(
        f"cannot hand the memory, pids and cpu controllers of {base} to child cgroups: "
        f"{exc.strerror} (other processes share this cgroup, or it is not delegated)",
        "run the daemon in a cgroup of its own with Delegate=yes (vagrant/dynod.service)",
    )


def create(tree: Tree, name: str, limits: Limits) -> list[str]:
    """`mkdir BASE/NAME` and its limits; returns the files a single-threaded process writes 0
    (itself) into to join: cgroup.procs on v2, `tasks` on v1. v2: memory.max, memory.swap.max
    0, pids.max, cpu.weight. v1: memory.limit_in_bytes (and memsw, so no swap beyond it),
    pids.max, cpu.shares.

    Why `tasks` on v1: a write to cgroup.procs moves a whole thread group, so the kernel takes
    the global cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period and
    holds every fork and exit of the machine meanwhile, under cgroup_mutex (the next dyno's
    `mkdir` waited 6-8 ms for it on a busy host: bench/README.md, "Tenth round"). Writing 0 to
    `tasks` moves only the calling thread, which recent kernels do without that lock (6.18
    here), and older ones with it as before; the joiners are single-threaded shells
    (netns/exec.py JOIN_GROUPS), so the thread is the process, and everything it starts after
    is born in the groups. v2's `cgroup.threads` works only in threaded subtrees: v2 keeps
    cgroup.procs."""
    for directory in tree.directories(name):
        _mkdir(directory)
    memory, pids, cpu = (os.path.join(tree.base(c), name) for c in CONTROLLERS)
    if tree.version == 2:
        _write(os.path.join(memory, "memory.max"), str(limits.memory))
        _write_if_there(os.path.join(memory, "memory.swap.max"), "0")
        _write(os.path.join(cpu, "cpu.weight"), str(limits.cpu_weight))
    else:
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory))
        _write_if_there(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(limits.memory))
        # v1's shares are on a 1024 scale where v2's weight is on 100
        _write(os.path.join(cpu, "cpu.shares"), str(max(2, limits.cpu_weight * 1024 // 100)))
    _write(os.path.join(pids, "pids.max"), str(limits.tasks))
    join = "cgroup.procs" if tree.version == 2 else "tasks"
    return [os.path.join(d, join) for d in tree.directories(name)]


def _write_if_there(path: str, value: str) -> None:
    """Swap accounting may be compiled out (or off: swapaccount=0): then there is none to cap."""
    if os.path.exists(path):
        _write(path, value)


def _stat(path: str) -> dict[str, int]:
    pairs = (line.split() for line in _read(path).splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def usage(tree: Tree, name: str, above: int | None = None) -> Usage:
    """`cat memory.stat` (anon + shmem + swap: what the processes hold, tmpfs files included,
    the page cache not) and the OOM-kill counter (v2 memory.events, v1 memory.oom_control).

    With `above`, the group's whole charge is read first, one number (v2 memory.current +
    memory.swap.current, v1 memory.memsw.usage_in_bytes, or memory.usage_in_bytes without swap
    accounting): the page counter, which also counts the page cache and pages charged ahead,
    so never less than the above. When it is at most `above`, it is the answer's memory (a
    bound: "not over") and memory.stat is not read, the costly file to make and to parse (a
    third of the reads' time, for what most samples of most dynos need)."""
    group = os.path.join(tree.base("memory"), name)
    if above is not None:
        bound = _charge(tree, group)
        if bound is not None and bound <= above:
            return Usage(bound, _oom_kills(tree, group))
    stat = _stat(os.path.join(group, "memory.stat"))
    if tree.version == 2:
        swap = 0
        with contextlib.suppress(FileNotFoundError):
            swap = int(_read(os.path.join(group, "memory.swap.current")))
        memory = stat.get("anon", 0) + stat.get("shmem", 0) + swap
    else:
        memory = stat.get("total_rss", 0) + stat.get("total_shmem", 0) + stat.get("total_swap", 0)
    return Usage(memory, _oom_kills(tree, group))


def _oom_kills(tree: Tree, group: str) -> int:
    """Tasks the kernel's OOM killer has killed in the group (v2 memory.events, v1
    memory.oom_control)."""
    counters = "memory.events" if tree.version == 2 else "memory.oom_control"
    return _stat(os.path.join(group, counters)).get("oom_kill", 0)


def _charge(tree: Tree, group: str) -> int | None:
    """The group's page counter, swap included where it is counted; None if unreadable."""
    try:
        if tree.version == 2:
            swap = 0
            with contextlib.suppress(FileNotFoundError):
                swap = int(_read(os.path.join(group, "memory.swap.current")))
            return int(_read(os.path.join(group, "memory.current"))) + swap
        try:
            return int(_read(os.path.join(group, "memory.memsw.usage_in_bytes")))
        except FileNotFoundError:
            if not os.path.isdir(group):
                raise
            return int(_read(os.path.join(group, "memory.usage_in_bytes")))
    except ValueError:
        return None


def remove(tree: Tree, name: str) -> None:
    """`kill -9 $(cat cgroup.procs)` then `rmdir` in every tree; a group that is gone is fine.
    Killed tasks leave the group a moment after the signal, so an rmdir that finds it busy is
    tried again for up to EMPTY_WAIT seconds."""
    for directory in tree.directories(name):
        _kill_all(directory)
    deadline = time.monotonic() + EMPTY_WAIT
    for directory in tree.directories(name):
        while True:
            try:
                os.rmdir(directory)
                record.note("rmdir", directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def _kill_all(directory: str) -> None:
    try:
        pids = [int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        record.note("kill", "-KILL", *(str(p) for p in pids))


def names(tree: Tree, start: str) -> set[str]:
    """`ls BASE`: child groups whose name begins with `start`, in any tree."""
    found = set()
    for _, base in tree.bases:
        with contextlib.suppress(FileNotFoundError):
            found |= {
                entry.name
                for entry in os.scandir(base)
                if entry.is_dir(follow_symlinks=False) and entry.name.startswith(start)
            }
    return found
