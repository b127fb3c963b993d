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
- a block inside another namespace (`own_instance`, which `namespace.entered` opens) gets a
  fresh instance at its first setting (about 0.05 ms), whose lookups meet no other namespace.
Where the kernel has no such instances (before 5.2) or refuses one, /proc is used, as before.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from netns import _libc, record

_host_lock = threading.Lock()
_host_root: int | None = None  # the instance of threads in the process's own namespace
_instances_work = True  # False once the kernel refused one: /proc from then on


class _Blocks(threading.local):
    """Per thread, the `own_instance` blocks it is in: each one's instance, or None until its
    first setting."""

    def __init__(self) -> None:
        self.roots: list[int | None] = []


_blocks = _Blocks()


def _open_root() -> int:
    """`mount -t proc proc DIR` without DIR: a procfs instance seen by no one else."""
    global _instances_work
    if _instances_work:
        try:
            return _libc.new_instance("proc")
        except OSError:
            _instances_work = False
    return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def root() -> int:
    """The directory fd (a procfs instance's root) this thread looks its settings up in."""
    global _host_root
    roots = _blocks.roots
    if roots:
        inside = roots[-1]
        if inside is None:
            inside = roots[-1] = _open_root()
        return inside
    if _host_root is None:
        with _host_lock:
            if _host_root is None:
                _host_root = _open_root()
    return _host_root


@contextlib.contextmanager
def own_instance() -> Iterator[None]:
    """For a block this thread runs inside another network namespace: its settings are looked
    up in a procfs instance of its own, closed when the block ends."""
    _blocks.roots.append(None)
    try:
        yield
    finally:
        root = _blocks.roots.pop()
        if root is not None:
            os.close(root)


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
