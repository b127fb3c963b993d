"""A process's own user: a user id nobody on the host has, and the change of a root process to
it (`setpriv --reuid=UID --regid=UID --clear-groups`, done in the process itself).

The ids are those systemd gives its DynamicUser services (61184-65519): no name in /etc/passwd
or /etc/group, so no file on the host is theirs, and no login or service runs as one.
"""

from __future__ import annotations

import grp
import os
import pwd
import zlib

FIRST, LAST = 61184, 65519  # systemd's dynamic users (systemd.exec(5), DynamicUser=)


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


def unused_uid(seed: str, taken: set[int] | None = None) -> int:
    """A user id of the dynamic range with no user or group of that number and no process
    running as it: the first free one from a point that `seed` picks (a daemon's prefix, so
    two daemons on one host start from different ids). RuntimeError when the range is full."""
    taken = running_uids() if taken is None else taken
    size = LAST - FIRST + 1
    start = zlib.crc32(seed.encode()) % size
    for step in range(size):
        uid = FIRST + (start + step) % size
        if uid not in taken and not _named(uid):
            return uid
    raise RuntimeError(f"every user id from {FIRST} to {LAST} is in use")


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
