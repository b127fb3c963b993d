"""A process's own user: a user id nobody on the host has, and the change of a root process to
it (`setpriv --reuid=UID --regid=UID --clear-groups`, done in the process itself).

The ids are those systemd gives its DynamicUser services (61184-65519): no name in /etc/passwd
or /etc/group, so no login or service runs as one. systemd hands them out with a lock file
each, /run/systemd/dynamic-uid/UID, held (flock) while the id is in use; taking the same lock
keeps it from giving a service the id while we hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from netns._libc import setfsuid

FIRST, LAST = 61184, 65519  # systemd's dynamic users (systemd.exec(5), DynamicUser=)
SYSTEMD = "/run/systemd"  # with system/ when systemd is PID 1 (sd_booted(3))
LOCKS = "dynamic-uid"  # its locks, one per id in use (src/core/dynamic-user.c, pick_uid())


@dataclass
class Reserved:
    """A user id held: its lock file and descriptor (None where systemd does not run)."""

    uid: int
    lock_path: str | None = None
    fd: int | None = None

    def release(self) -> None:
        """`rm /run/systemd/dynamic-uid/UID`, then the lock goes with its descriptor (as
        systemd itself lets go of an id). The directory stays: systemd may be making a lock
        of its own in it right now, and it would have made the directory itself."""
        if self.lock_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            self.lock_path = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def running_uids(proc: str = "/proc") -> set[int]:
    """The real, effective, saved and filesystem user ids of every process (`ps -eo uid,ruid`,
    from /proc/PID/status's Uid: line)."""
    found: set[int] = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(f"{proc}/{pid}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        found.update(int(uid) for uid in line.split()[1:])
                        break
        except (OSError, ValueError):  # exited meanwhile
            continue
    return found


def reserve_uid(
    seed: str, name: str, taken: set[int] | None = None, systemd: str = SYSTEMD
) -> Reserved:
    """A user id of the dynamic range with no user or group of that number, no process running
    as it and, where systemd is PID 1, its lock in /run/systemd/dynamic-uid taken and `name`
    written in it: the first free one from a point that `seed` picks (a daemon's prefix, so
    two daemons on one host start from different ids). RuntimeError when the range is full."""
    taken = running_uids() if taken is None else taken
    booted = os.path.isdir(os.path.join(systemd, "system"))
    locks = os.path.join(systemd, LOCKS)
    if booted and not os.path.isdir(locks):
        # as systemd makes it (0755: unprivileged lookups of its users read it), whatever the
        # daemon's umask
        os.makedirs(locks, exist_ok=True)
        os.chmod(locks, 0o755)
    size = LAST - FIRST + 1
    start = zlib.crc32(seed.encode()) % size
    for step in range(size):
        uid = FIRST + (start + step) % size
        if uid in taken or _named(uid):
            continue
        if not booted:
            return Reserved(uid)
        path = os.path.join(locks, str(uid))
        fd = _locked(path)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{name}\n".encode(), 0)
            return Reserved(uid, path, fd)
    raise RuntimeError(f"every user id from {FIRST} to {LAST} is in use")


def _locked(path: str) -> int | None:
    """`flock -n PATH`, as systemd takes it: the open file, locked; None when someone holds it
    (a service of systemd's, another daemon). A file unlinked between the open and the lock
    (its holder let go meanwhile) is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if os.fstat(fd).st_nlink > 0:
            return fd
        os.close(fd)


def _named(uid: int) -> bool:
    """Has this number a user or a group (`getent passwd UID`, `getent group UID`)?"""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def become(uid: int) -> None:
    """`setpriv --reuid=UID --regid=UID --clear-groups` of the calling process, which is root:
    a root process whose user ids all change to another loses every capability it had
    (capabilities(7)), and with no_new_privs (setpriv --no-new-privs, before its exec) it can
    never gain one back. RuntimeError if a capability is left."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    left = capabilities()
    if any(left.values()):
        raise RuntimeError(f"capabilities left after the change to user {uid}: {left}")


@contextlib.contextmanager
def files_as(uid: int) -> Iterator[None]:
    """`setfsuid UID` for the calling thread only (glibc's setfsuid is the bare system call),
    and back to root after: what it opens meanwhile is that user's (a socket's owner, which
    nftables matches as `meta skuid`). The root thread gets back the file capabilities the
    change took from it (capabilities(7))."""
    setfsuid(uid)
    try:
        yield
    finally:
        setfsuid(0)


def capabilities(pid: str = "self") -> dict[str, int]:
    """The capability sets a process holds (/proc/PID/status: CapInh, CapPrm, CapEff, CapAmb;
    not the bounding set, which only limits), as masks."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                found[key] = int(value.strip(), 16)
    return found
