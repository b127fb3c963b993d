"""The few libc calls Python 3.11's `os` module lacks: setns, unshare, mount, umount2, the
new mount API's fsopen/fsconfig/fsmount, close_range, pidfd_getfd and setfsuid.

Python 3.12 adds os.setns and os.unshare; until Debian ships it we call libc through ctypes.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.syscall.restype = ctypes.c_long

# The new mount API (Linux 5.2) has no libc wrappers in Debian 12's glibc: raw syscalls, whose
# numbers are the same on every architecture that came after it was added (x86_64, arm64...).
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
SYS_CLOSE_RANGE = 436
SYS_PIDFD_GETFD = 438
CLOSE_RANGE_ALL = 0xFFFFFFFF  # close_range's last descriptor: every one from `first` up


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int) -> None:
    """Move the calling *thread* into the namespace behind fd (setns(2))."""
    _check(_libc.setns(fd, nstype), "setns")


def setns_back(fd: int, nstype: int, what: str) -> None:
    """setns(2) back into the thread's own namespace. A thread that cannot go back would make
    every later link, mount or process in the wrong namespace, out of the host's sight: if it
    fails (only ENOMEM can), the process aborts, as the kernel gives up on what it cannot undo
    (a daemon started again adopts its dynos)."""
    try:
        setns(fd, nstype)
    except OSError as exc:
        os.write(2, f"fatal: a thread could not leave a {what} namespace: {exc}\n".encode())
        os.abort()


def setfsuid(uid: int) -> int:
    """The calling *thread*'s filesystem user id (setfsuid(2): glibc calls the kernel and
    nothing more, where setuid(2) changes every thread); the one it had."""
    return int(_libc.setfsuid(uid))


def unshare(flags: int) -> None:
    """Give the calling *thread* new namespaces of the kinds in flags (unshare(2))."""
    _check(_libc.unshare(flags), "unshare")


def mount(
    source: str, target: str, fstype: str | None, flags: int, options: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            options.encode() if options else None,
        ),
        f"mount {source} on {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def _syscall_fd(what: str, number: int, *args: object) -> int:
    fd = int(_libc.syscall(number, *args))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return fd


def new_instance(fstype: str) -> int:
    """A new instance of a filesystem that is mounted nowhere (fsopen, fsconfig CMD_CREATE,
    fsmount): an fd of its root, for openat(2). It goes away with the last fd."""
    context = _syscall_fd(f"fsopen {fstype}", SYS_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC)
    try:
        _syscall_fd(f"fsconfig {fstype}", SYS_FSCONFIG, context, FSCONFIG_CMD_CREATE, None, None, 0)
        return _syscall_fd(f"fsmount {fstype}", SYS_FSMOUNT, context, FSMOUNT_CLOEXEC, 0)
    finally:
        os.close(context)


def close_range(first: int, last: int = CLOSE_RANGE_ALL) -> None:
    """close_range(2) in the calling thread's descriptor table: first to last, both included."""
    if first <= last:
        _check(int(_libc.syscall(SYS_CLOSE_RANGE, first, last, 0)), "close_range")


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """pidfd_getfd(2): a close-on-exec duplicate, in the calling thread's table, of descriptor
    fd of the process behind pidfd (of its first thread's table)."""
    return _syscall_fd(f"pidfd_getfd {fd}", SYS_PIDFD_GETFD, pidfd, fd, 0)
