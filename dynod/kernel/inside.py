"""A dyno's processes, found and signalled: `ip netns pids NS`, and the processes of the pid
namespace its recorded process made. Plain /proc reads and kill(2): any thread."""

from __future__ import annotations

import contextlib
import os
import signal

from dynod.kernel import processes
from dynod.kernel.facts import NO_PIDS, Pids, Running
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


def signal_dyno_in(
    dyno: Running,
    table: namespace.Table,
    sig: signal.Signals,
    skip: Pids = NO_PIDS,
    via_init: bool = False,
) -> list[int]:
    """`kill -SIG` every process of the dyno (dyno_pids_in) but those in skip, found in a shared
    scan: each one is checked to be in the dyno's network or pid namespace still, right before
    its signal (its PID may have been reused since the scan), through a pidfd taken before the
    checks (a PID reused during them is another process: the pidfd's signal finds its own gone);
    those signalled. With via_init, the processes of the dyno's pid namespace are left to its
    recorded process when that is their init, which passes sig on to them all (DYNO_INIT: `kill
    -TERM -1`, which, unlike a scan, no fork can race); a dyno of a daemon before that has its
    `unshare` recorded, outside the namespace, and each of its processes is signalled here."""
    try:
        net = namespace.inode(dyno.netns)
    except FileNotFoundError:
        net = None
    children = None
    if dyno.pid is not None and processes.is_alive(dyno.pid, dyno.pid_start):
        children = _child_pid_namespace(dyno.pid)
    # the pid namespace whose processes its init signals itself (None: the daemon signals them)
    left = children if via_init and _is_init_of(dyno.pid, children) else None
    owner = _owner(dyno.pid) if left is not None else None
    sent = []
    for pid in dyno_pids_in(dyno, table):
        if pid in skip:
            continue
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue  # gone since the scan
        try:
            # the recorded process (by its start time: not a reuse of its PID), or one in the
            # dyno's namespaces that its init's `kill -1` does not reach
            own = pid == dyno.pid and processes.is_alive(pid, dyno.pid_start)
            inside = _still_in(pid, net, children)
            if own or (inside and not (left is not None and _reached(pid, left, owner))):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(handle, sig)
                    sent.append(pid)
        finally:
            os.close(handle)
    return sent


def _is_init_of(pid: int | None, children: int | None) -> bool:
    """Whether pid is in the pid namespace its children are born in: the first process of its
    own (a dyno's init), not an `unshare` waiting outside the one it made."""
    return pid is not None and children is not None and namespace.inode_of(pid, "pid") == children


def _owner(pid: int | None) -> int | None:
    """The user a process runs as (`stat -c %u /proc/PID`); None when it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _reached(pid: int, left: int, owner: int | None) -> bool:
    """Whether the init's `kill -TERM -1` reaches pid: the same user (it has no privilege over
    others: a root process someone put in its namespace is signalled by the daemon), in its pid
    namespace or one nested in it (a dyno's own `unshare -p` sharing its network too)."""
    return owner is not None and _owner(pid) == owner and namespace.pid_namespace_within(pid, left)


def still_starting(dyno: Running) -> bool:
    """Whether the dyno's recorded process is the init of its pid namespace (pid 1 there) and
    has no SIGTERM handler yet (`grep -E 'NSpid|SigCgt' /proc/PID/status`): the kernel drops a
    SIGTERM sent to such an init, so a stop that lands while the dyno's chain is still starting
    (its root stage, setpriv, DYNO_INIT's first line) is not heard. False for a dyno recorded by
    an older daemon (its `unshare`, outside the namespace, never an init) and once it is gone."""
    if dyno.pid is None or not processes.is_alive(dyno.pid, dyno.pid_start):
        return False
    try:
        with open(f"/proc/{dyno.pid}/status") as f:
            fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return False  # gone meanwhile
    levels = fields.get("NSpid", "").split()
    if len(levels) < 2 or levels[-1] != "1":
        return False
    caught = int(fields.get("SigCgt", "0").strip(), 16)
    return not caught & (1 << (signal.SIGTERM - 1))


def _still_in(pid: int, net: int | None, children: int | None) -> bool:
    """Whether pid is in the dyno's network namespace (net) or pid namespace (children)."""
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
