"""Kernel settings under /proc/sys (`sysctl -w`).

Settings under net/ belong to the network namespace of the thread that opens the file, so a
thread inside `namespace.entered()` changes the namespace's value, not the host's.

The files are opened in procfs instances of our own, not through /proc. Every network namespace
has the same names under /proc/sys/net (net, ipv4, conf, all, eth0...), and in one procfs
superblock the directory cache hashes all of them to the same chains, which every lookup walks
past: through /proc a write from the host cost 0.014 ms with no other namespace and 0.17 ms with
1,000, and the first write in a new namespace walked each of its path's chains in full. Since
Linux 5.8 each mount of proc is a superblock of its own, with its own entries (it is the same
kernel data: an instance shows the namespace of the thread that looks):
- a thread in its own namespace uses one instance for the life of the process, whose entries are
  only that namespace's;
- blocks inside other namespaces (`own_instance`, which `namespace.entered` opens) share a
  thread's second instance for ROTATE blocks, then get a new one: its lookups meet the entries
  of at most ROTATE other namespaces (a deleted namespace's entries leave every instance).
  A retired instance is closed on a thread of its own: the last close of a mount waits for an
  RCU grace period (0.05 ms, up to 0.7 ms on a busy machine), which a start need not wait for.
Where the kernel has no such instances (before 5.2) or refuses one, /proc is used, as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
from collections.abc import Iterator

from netns import _libc, record

ROTATE = 16  # blocks inside namespaces per instance

_host_lock = threading.Lock()
_host_root: int | None = None  # the instance of threads in the process's own namespace
_instances_work = True  # False once the kernel refused one: /proc from then on
_retired: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None


class _Instance:
    """A procfs instance's fd, retired when dropped: by rotation, or with the thread's locals
    when the thread ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        _retire(self.fd)


class _Inside(threading.local):
    """Per thread: how deep in `own_instance` blocks it is, and the instance they share."""

    def __init__(self) -> None:
        self.depth = 0
        self.held: _Instance | None = None
        self.blocks = 0  # blocks since self.held was made


_inside = _Inside()


def _open_root() -> int:
    """`mount -t proc proc DIR` without DIR: a procfs instance seen by no one else."""
    global _instances_work
    if _instances_work:
        try:
            return _libc.new_instance("proc")
        except OSError as exc:
            # no such instances here (an old kernel, a seccomp filter, no CAP_SYS_ADMIN): /proc
            # from then on; a passing shortage (EMFILE, ENOMEM) only this once
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                _instances_work = False
    return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _close_retired() -> None:
    while True:
        os.close(_retired.get())


def _retire(fd: int) -> None:
    global _closer
    with _host_lock:
        if _closer is None:
            try:
                closer = threading.Thread(target=_close_retired, name="procfs-closer", daemon=True)
                closer.start()
            except RuntimeError:  # the interpreter is shutting down: no new threads
                os.close(fd)
                return
            _closer = closer
    _retired.put(fd)


def root() -> int:
    """The directory fd (a procfs instance's root) this thread looks its settings up in."""
    global _host_root
    if _inside.depth:
        if _inside.held is None:
            _inside.held = _Instance(_open_root())
        return _inside.held.fd
    if _host_root is None:
        with _host_lock:
            if _host_root is None:
                _host_root = _open_root()
    return _host_root


@contextlib.contextmanager
def own_instance() -> Iterator[None]:
    """For a block this thread runs inside another network namespace: its settings are looked
    up in the thread's instance for such blocks, which is replaced every ROTATE blocks. To be
    entered before the thread switches namespace: a replaced instance goes to the closing
    thread, made on first use, and a thread is born in its maker's namespace (it would keep a
    dyno's namespace, and its veth, alive for the life of the process)."""
    if _inside.depth == 0:
        _inside.blocks += 1
        if _inside.blocks > ROTATE:
            _inside.held, _inside.blocks = None, 1  # retired as it is dropped
    _inside.depth += 1
    try:
        yield
    finally:
        _inside.depth -= 1


def _path(key: str) -> str:
    return "sys/" + key.replace(".", "/")


def read(key: str) -> str:
    fd = os.open(_path(key), os.O_RDONLY | os.O_CLOEXEC, dir_fd=root())
    with open(fd, closefd=True) as f:
        return f.read().strip()


def write(key: str, value: str | int) -> None:
    """`sysctl -w KEY=VALUE`."""
    fd = os.open(_path(key), os.O_WRONLY | os.O_CLOEXEC, dir_fd=root())
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
    record.note("sysctl", "-w", f"{key}={value}")
