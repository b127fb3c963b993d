"""A dyno's processes, found and signalled: `ip netns pids NS`, and the processes of the pid
namespace its recorded process made. Plain /proc reads and kill(2): any thread."""

from __future__ import annotations

import signal

from dynod.kernel import processes
from dynod.kernel.facts import Running
from netns import namespace


def dyno_pids(dyno: Running) -> list[int]:
    """Every process of a dyno, also when its namespace's name was deleted (`ip netns delete`
    while it runs: the namespace lives on, held by its processes).

    The dyno's recorded process is `unshare --pid --fork`; every process whose pid namespace
    is the one unshare made for its children belongs to the dyno, and a dyno's processes cannot
    leave it. Also unshare itself, and whatever is in the named network namespace (a process
    that root put there with `ip netns exec`, or one whose unshare is gone)."""
    found: set[int] = set(namespace.pids_inside(dyno.netns))
    if dyno.pid is not None and processes.is_alive(dyno.pid, dyno.pid_start):
        found.add(dyno.pid)
        found.update(namespace.pids_in_child_pid_namespace(dyno.pid))
    return sorted(found)


def signal_dyno(dyno: Running, sig: signal.Signals) -> int:
    """`kill -SIG` every process of the dyno, found and signalled in one go; how many."""
    pids = dyno_pids(dyno)
    processes.signal_all(pids, sig)
    return len(pids)


def kill_namespace(netns: str) -> None:
    """`ip netns pids NS | xargs kill -KILL`, for namespaces no dyno of the state owns."""
    processes.signal_all(namespace.pids_inside(netns), signal.SIGKILL)
