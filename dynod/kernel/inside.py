"""A dyno's processes, found and signalled: `ip netns pids NS`, and the processes of the pid
namespace its recorded process made. Plain /proc reads and kill(2): any thread."""

from __future__ import annotations

import contextlib
import os
import signal

from dynod.kernel import processes
from dynod.kernel.facts import Running
from netns import namespace


def dyno_pids_in(dyno: Running, table: namespace.Table) -> list[int]:
    """Every process of a dyno, also when its namespace's name was deleted (`ip netns delete`
    while it runs: the namespace lives on, held by its processes), from a scan of /proc that
    many questions share (scans.py).

    The dyno's recorded process is the first of its pid namespace (its init, pid 1 there), or,
    for a dyno started by a daemon before that, the `unshare --pid --fork` that made the
    namespace and waits outside it; either way its /proc/PID/ns/pid_for_children is the dyno's
    pid namespace (init's children are born in its own). Every process in that namespace
    belongs to the dyno, and a dyno's processes cannot leave it. Also the recorded process
    itself, and whatever is in the named network namespace (a process that root put there with
    `ip netns exec`, or one whose first process is gone)."""
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        found.update(table.net.get(namespace.inode(dyno.netns), ()))
    if dyno.pid is not None and processes.is_alive(dyno.pid, dyno.pid_start):
        found.add(dyno.pid)
        children = _child_pid_namespace(dyno.pid)
        if children is not None:
            found.update(table.pid.get(children, ()))
    return sorted(found)


def _child_pid_namespace(pid: int) -> int | None:
    target = namespace.inode_of(pid, "pid_for_children")
    if target is None or target == namespace.inode_of(os.getpid(), "pid"):
        return None  # gone, or no pid namespace of its own
    return target


def signal_dyno_in(dyno: Running, table: namespace.Table, sig: signal.Signals) -> int:
    """`kill -SIG` every process of the dyno (dyno_pids_in), found in a shared scan: each one is
    checked to be in the dyno's network or pid namespace still, right before its signal (its
    PID may have been reused since the scan); how many were signalled."""
    try:
        net = namespace.inode(dyno.netns)
    except FileNotFoundError:
        net = None
    children = None
    if dyno.pid is not None and processes.is_alive(dyno.pid, dyno.pid_start):
        children = _child_pid_namespace(dyno.pid)
    sent = 0
    for pid in dyno_pids_in(dyno, table):
        if not _still_in(pid, dyno.pid, net, children):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent += 1
    return sent


def _still_in(pid: int, own: int | None, net: int | None, children: int | None) -> bool:
    if pid == own:
        return True  # the recorded process, checked alive (by its start time) just now
    if net is not None and namespace.inode_of(pid, "net") == net:
        return True
    return children is not None and namespace.inode_of(pid, "pid") == children


def kill_namespace(netns: str, table: namespace.Table) -> None:
    """`ip netns pids NS | xargs kill -KILL`, for namespaces no dyno of the state owns; `table`
    is one /proc scan shared by every namespace a sweep removes."""
    try:
        inode = namespace.inode(netns)
    except FileNotFoundError:
        return
    processes.signal_all(table.net.get(inode, []), signal.SIGKILL)
