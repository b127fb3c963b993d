"""Named network namespaces, created and entered in-thread.

`ip netns add NAME` does: unshare(CLONE_NEWNET), then bind-mount /proc/self/ns/net onto
/run/netns/NAME so the namespace outlives the process. We do the same from the calling thread,
without forking a helper (pyroute2's netns.create() forks one and costs ~3x more).

A namespace belongs to a thread: setns(2) switches only the calling thread. `entered()` is the one
place that switches, and it always switches back. It refuses to run on a thread that runs an asyncio
event loop, because every coroutine on that loop would silently run in the other namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass

from netns import _libc, mntns, record, sysctl

RUN_DIR = "/run/netns"
# The source of the tmpfs a daemon mounts on /run/netns where /run is on disk (names_in_memory):
# how any daemon's stop tells it from someone else's mount (release_memory).
MEMORY_SOURCE = "dynod-netns"
MEMORY_TYPES = ("tmpfs", "ramfs")


def path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid network namespace name: {name!r}")
    return os.path.join(RUN_DIR, name)


def ensure_run_dir(directory: str = RUN_DIR) -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does.

    Shared propagation lets the bind mounts below show up in mount namespaces made later
    (a process's private /etc, say) and be unmounted everywhere at once.
    """
    try:
        os.mkdir(directory)
        os.chmod(directory, 0o755)  # as `ip netns add` makes it, whatever the caller's umask
    except FileExistsError:
        pass
    try:
        _libc.mount("", directory, "none", _libc.MS_SHARED | _libc.MS_REC)
    except OSError:
        # Not a mount point yet: `mount --bind /run/netns /run/netns; mount --make-rshared ...`
        _libc.mount(directory, directory, "none", _libc.MS_BIND | _libc.MS_REC)
        _libc.mount("", directory, "none", _libc.MS_SHARED | _libc.MS_REC)


def holding_mount(directory: str) -> tuple[str, str, str]:
    """(mount point, type, source) of the mount that holds directory, the topmost where
    several are stacked (`findmnt -T DIR`): the deepest mount point that is directory or one
    of its parents, the last mounted of those at it."""
    found = ("", "", "")
    for mount in mntns.mounts():
        point = mount.point
        if point != "/" and point != directory and not directory.startswith(point + "/"):
            continue
        if len(point) >= len(found[0]):
            found = (point, mount.fstype, mount.source)
    return found


def names_in_memory(directory: str = RUN_DIR) -> bool:
    """Where /run is on disk (a host without systemd: a container, a small VM), each name
    `ip netns add` makes is a journaled inode, and ext4 looks for a free one past every inode
    deleted in the last minutes: 0.3-1.1 ms a start, growing with the dynos started and stopped
    before (bench/README.md, "Sixth round"). /run is meant to be memory, cleared at boot
    (systemd mounts a tmpfs there): when directory is on disk and holds no name, `mkdir -p
    /run/netns; mount -t tmpfs -o mode=755,nosuid,nodev,noexec dynod-netns /run/netns; mount
    --make-shared /run/netns` (shared as `ip netns add` makes it). Names someone else made are
    never hidden: with any there, nothing is mounted. It goes on `ip netns add`'s shared bind
    mount of the directory on itself (made first if missing), so that when it is unmounted the
    directory is still the shared mount point names need. Returns whether it mounted."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if holding_mount(directory)[1] in MEMORY_TYPES or os.listdir(directory):
        return False
    ensure_run_dir(directory)
    flags = _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC
    _libc.mount(MEMORY_SOURCE, directory, "tmpfs", flags, "mode=755")
    try:
        _libc.mount("", directory, "none", _libc.MS_SHARED)
    except BaseException:
        _libc.umount2(directory, 0)
        raise
    # shown as the test it was: run again, it leaves memory, or names there, alone
    record.note_text(
        f'case "$(stat -f -c %T {directory} 2>/dev/null)" in tmpfs|ramfs) ;; *) '
        f'[ -n "$(ls -A {directory} 2>/dev/null)" ] || {{ mkdir -p {directory}; '
        f"mountpoint -q {directory} || mount --bind {directory} {directory}; "
        f"mount --make-shared {directory}; "
        f"mount -t tmpfs -o mode=755,nosuid,nodev,noexec {MEMORY_SOURCE} {directory}; "
        f"mount --make-shared {directory}; }};; esac"
    )
    return True


def release_memory(directory: str = RUN_DIR) -> bool:
    """At a daemon's stop: `umount /run/netns` when what is mounted there is names_in_memory()'s
    tmpfs (this daemon's or another's: whoever leaves it empty removes it) and it holds no name.
    A name made meanwhile by another daemon keeps it (the kernel refuses with EBUSY once its
    namespace is mounted there; create() tries again if it was not yet). Returns whether it
    unmounted."""
    point, fstype, source = holding_mount(directory)
    if (point, fstype, source) != (directory, "tmpfs", MEMORY_SOURCE) or os.listdir(directory):
        return False
    try:
        _libc.umount2(directory, 0)
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EINVAL):
            return False  # a name mounted meanwhile, or unmounted by someone else meanwhile
        raise
    record.note("umount", directory)
    return True


def _assert_not_event_loop_thread() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("refusing to switch network namespace on an event loop's thread")


@contextlib.contextmanager
def _thread_netns_fd() -> Iterator[int]:
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


_run_dir_made = False  # by this process: ensure_run_dir() once, not at every create


def create(name: str) -> None:
    """`ip netns add NAME`, done in this thread. /run/netns is made a shared mount point once
    per process (`ip netns add` does it every time): its `--make-rshared` walks every namespace
    name mounted below it (0.09 ms at 4,000), and the names mounted since are shared anyway
    (a mount below a shared one joins its peer group)."""
    global _run_dir_made
    _assert_not_event_loop_thread()
    target = path(name)
    if not _run_dir_made or not os.path.isdir(RUN_DIR):
        ensure_run_dir()
        _run_dir_made = True
    try:
        _bound(target)
    except FileNotFoundError:
        # Its file went between its creation and the mount: another daemon's stop unmounted
        # an empty tmpfs from /run/netns (release_memory) right then. Once more, on what is
        # there now (a shared mount point still, or made one again).
        ensure_run_dir()
        _bound(target)
    record.note("ip", "netns", "add", name)


def _bound(target: str) -> None:
    """The file, then a new namespace mounted on it; the file is removed if the mount fails."""
    # O_EXCL: a namespace that already exists is an error, never silently replaced.
    os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    try:
        with _thread_netns_fd() as home:
            _libc.unshare(_libc.CLONE_NEWNET)
            try:
                _libc.mount("/proc/thread-self/ns/net", target, "none", _libc.MS_BIND)
            finally:
                _libc.setns_back(home, _libc.CLONE_NEWNET, "network")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        raise


def delete(name: str) -> bool:
    """`ip netns delete NAME`: drop the name; the kernel frees the namespace, and the links in it,
    once no process or open file holds it. Returns False if there was no such namespace."""
    target = path(name)
    try:
        _libc.umount2(target, _libc.MNT_DETACH)
    except OSError as exc:
        if not os.path.exists(target):
            return False
        if exc.errno != 22:  # EINVAL: a leftover file that is not a mount point
            raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    record.note("ip", "netns", "delete", name)
    return True


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def names(prefix: str = "") -> list[str]:
    """`ip netns list`, filtered by prefix."""
    try:
        entries = os.listdir(RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if e.startswith(prefix))


def open_fd(name: str) -> int:
    """An fd on the namespace (for IFLA_NET_NS_FD or setns); the caller closes it."""
    return os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)


def inode(name: str) -> int:
    return os.stat(path(name)).st_ino


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """`ip netns exec NAME ...` for the calling thread only: run the block inside the namespace.

    Netlink sockets and processes created inside the block belong to the namespace; the thread
    is back in its own namespace when the block ends, whatever happens in it.
    """
    _assert_not_event_loop_thread()
    # sysctl's instance is replaced (and its closing thread made) here, before the switch: a
    # thread made inside the namespace would stay in it and keep it alive.
    with _thread_netns_fd() as home, sysctl.own_instance():
        target = open_fd(name)
        try:
            _libc.setns(target, _libc.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            with record.inside(name):
                yield
        finally:
            _libc.setns_back(home, _libc.CLONE_NEWNET, "network")


def pids_inside(name: str) -> list[int]:
    """Every process whose network namespace is NAME's (what `ip netns pids NAME` prints).

    A process cannot leave a network namespace without CAP_SYS_ADMIN, so this finds all of a
    contained program's processes, even those that started a new session or daemonized.
    """
    try:
        wanted = inode(name)
    except FileNotFoundError:
        return []
    return pids_in("net", wanted)


def inode_of(pid: int, kind: str) -> int | None:
    """The namespace of kind KIND ("net", "pid", "pid_for_children"...) that process PID is in
    (`stat -L -c %i /proc/PID/ns/KIND`); None when the process is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2), linux/nsfs.h: a namespace's parent, as a new fd
MAX_PID_NESTING = 33  # the kernel nests pid namespaces at most 32 deep


def pid_namespace_within(pid: int, ancestor: int) -> bool:
    """Whether process PID's pid namespace is the one of inode `ancestor` or nested in it (so a
    `kill -1` from that namespace's init reaches it): its namespace, then its parents
    (ioctl(NS_GET_PARENT), what `lsns -t pid -o NS,PNS` shows), compared. False when PID is
    gone or none of them is `ancestor` (the kernel refuses a parent above the caller's own)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for _ in range(MAX_PID_NESTING):
            if os.fstat(fd).st_ino == ancestor:
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:
                return False  # the top, or above what the caller may see
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def pids_in(kind: str, wanted: int) -> list[int]:
    """Every process whose KIND namespace is the inode `wanted`: what `lsns -t KIND` counts,
    as a /proc scan (`for p in /proc/[0-9]*; do stat -L -c %i $p/ns/KIND; done`)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/{kind}").st_ino == wanted:
                found.append(int(entry))
        except OSError:
            continue  # exited meanwhile, or a kernel thread
    return found


@dataclass(frozen=True)
class Table:
    """Every process's network and pid namespace, from one /proc scan: what `lsns -t net` and
    `lsns -t pid` would list, kept so that many questions share one scan."""

    net: dict[int, list[int]]  # namespace inode -> its processes
    pid: dict[int, list[int]]


def scan() -> Table:
    """`for p in /proc/[0-9]*; do stat -L -c %i $p/ns/net $p/ns/pid; done`, once."""
    net: dict[int, list[int]] = {}
    pid: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            net_inode = os.stat(f"/proc/{entry}/ns/net").st_ino
            pid_inode = os.stat(f"/proc/{entry}/ns/pid").st_ino
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        net.setdefault(net_inode, []).append(int(entry))
        pid.setdefault(pid_inode, []).append(int(entry))
    return Table(net, pid)


def pids_in_child_pid_namespace(pid: int) -> list[int]:
    """Every process of the pid namespace that PID's children are born in (what `unshare --pid
    --fork` makes for its child; a namespace's first process's own; `lsns -t pid` lists it),
    found without any namespace name: the processes whose /proc/P/ns/pid is PID's
    /proc/PID/ns/pid_for_children. Empty when PID is gone or its children are born in the
    caller's own namespace (that is every process of the host)."""
    target = inode_of(pid, "pid_for_children")
    if target is None or target == inode_of(os.getpid(), "pid"):
        return []
    return pids_in("pid", target)
