"""A template mount namespace: a persistent copy of this one without some mount points, which
`unshare --mount` then copies instead of this one (`nsenter --mount=FILE unshare --mount ...`).

`unshare --mount` copies every mount of the caller's namespace, and a host with N network
namespaces has N bind mounts under /run/netns: each copy costs O(N) time and kernel memory, and
holds the kernel's global mount lock meanwhile. A copy made once, without /run/netns's mount,
costs the same whatever N.

The template is made as `ip netns` makes its directory: a private mount point of its own
(`mount --bind DIR DIR; mount --make-private DIR`: the kernel refuses to bind a mount namespace
where propagation could copy it into itself), then `unshare --mount=DIR/mnt --propagation slave
sh -c DROP drop PATH...` (below). As a slave it still receives the mounts made later on the host
where the host's mounts are shared (as systemd makes them), but those on the parents of the paths
it dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from netns import _libc, record

MS_PRIVATE = 1 << 18
# unshare(1)'s bind of the new namespace onto FILE is refused (EINVAL) when the new namespace is
# numbered below the caller's (the kernel's check against binding a namespace into an older
# one, mnt_ns_loop). Linux 6.18 numbers namespaces from per-CPU batches, so one made on another
# CPU than the caller's own namespace was can be numbered below it: from a mount namespace
# other than the host's first (a systemd unit's private one, a test's `unshare --mount`), 29
# callers in 40 failed five tries in a row. Made on the CPU that made the caller's namespace, it
# is numbered above: after a refusal, make() tries once pinned to each CPU it may use (`taskset
# -c N`), which was 0 failures in 40. The host's first namespace is numbered below them all.


@dataclass(frozen=True)
class Template:
    """A template made by make(): where it is, which namespace it is (the file's device and
    inode: a stat tells whether it is still the one made), and the filesystems it shows
    (st_dev of each of its mounts: a directory on another one was mounted after it)."""

    path: str
    identity: tuple[int, int]
    devices: frozenset[int]

    def intact(self) -> bool:
        """Is the file still this namespace (`stat -L -c %d:%i FILE`)? Not if someone
        unmounted it or its directory, or made another in its place."""
        try:
            found = os.stat(self.path)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == self.identity

    def shows(self, device: int) -> bool:
        return device in self.devices


def private_dir(path: str) -> None:
    """`mkdir -p DIR; mount --bind DIR DIR; mount --make-private DIR`."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    record.note("mkdir", "-p", path)
    _libc.mount(path, path, "none", _libc.MS_BIND)
    record.note("mount", "--bind", path, path)
    _libc.mount("", path, "none", MS_PRIVATE)
    record.note("mount", "--make-private", path)


# Runs in the new template: drops each DIR's mount (and all below it). Where the host's mounts
# are shared (systemd's), DIR's mount (a bind of DIR onto itself) is a peer of its parent's, so
# every name mounted under DIR has a second copy on the parent, uncovered here once DIR's mount
# is gone, and the parent would go on receiving each new one: those copies go too, and the
# parent stops receiving the host's mounts (dynos whose directory is on a filesystem mounted
# since get a new template: dynod/kernel/mounts.py). Then DIR is covered with an empty
# read-only tmpfs: what the directory itself holds (`ip netns add`'s files) stays unseen, in
# every copy, without each copy mounting its own over the host's DIR (one mount per start).
# Every mount stacked on DIR goes (a daemon's tmpfs of names on `ip netns add`'s bind mount:
# netns/namespace.py names_in_memory), so findmnt -T names the mount that holds DIR.
DROP = """
for dir; do
    umount -l "$dir" || exit 1
    while mountpoint -q "$dir"; do umount -l "$dir" || exit 1; done
    awk -v dir="$dir/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r point; do umount -l "$point" 2>/dev/null; done
    mount --make-private "$(findmnt -n -o TARGET -T "$dir" | head -n 1)" || exit 1
    mount -t tmpfs -o ro,mode=755,nosuid,nodev,noexec,size=4k empty "$dir" || exit 1
done
"""


def make(path: str, without: Sequence[str]) -> Template:
    """`touch FILE; unshare --mount=FILE --propagation slave sh -c DROP drop DIR...`, FILE in a
    private_dir(). Each DIR must be a mount point here; in the template it is an empty
    read-only tmpfs. Undone on failure."""
    if not os.path.exists(path):
        with open(path, "a"):
            pass
        record.note("touch", path)
    argv = ["unshare", f"--mount={path}", "--propagation", "slave", "sh", "-c", DROP, "drop"]
    argv += without
    cpus = sorted(os.sched_getaffinity(0))
    tries = [argv, *(["taskset", "-c", str(cpu), *argv] for cpu in cpus)]
    for attempt, tried in enumerate(tries):
        result = subprocess.run(tried, capture_output=True, text=True, check=False, timeout=30)
        if result.returncode == 0:
            break
        unmount(path)  # unshare binds FILE before it runs the program: the copy is whole
        if "failed: Invalid argument" not in result.stderr or attempt == len(tries) - 1:
            raise OSError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    record.note(*argv)
    try:
        found = os.stat(path)
        return Template(path, (found.st_dev, found.st_ino), frozenset(devices(path)))
    except BaseException:
        unmount(path)
        raise


def devices(path: str) -> set[int]:
    """The filesystems the namespace shows: `nsenter --mount=FILE cat /proc/self/mountinfo`'s
    device column (major:minor), as st_dev numbers."""
    out = subprocess.run(
        ["nsenter", f"--mount={path}", "cat", "/proc/self/mountinfo"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    found = set()
    for line in out.splitlines():
        major, minor = line.split()[2].split(":")
        found.add(os.makedev(int(major), int(minor)))
    return found


def unmount(path: str) -> bool:
    """`umount -l PATH`; False when PATH was no mount point (or is gone)."""
    try:
        _libc.umount2(path, _libc.MNT_DETACH)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return False
        raise
    record.note("umount", "-l", path)
    return True


def remove(directory: str) -> None:
    """`umount -l DIR/*; umount -l DIR; rm -r DIR`: every template in a private_dir(), the
    mount point, the directory (whatever a daemon killed midway left of them)."""
    if not os.path.isdir(directory):
        return  # none, or someone else's file: not a template
    for name in sorted(os.listdir(directory)):
        while unmount(os.path.join(directory, name)):  # stacked by a killed older daemon
            pass
    while unmount(directory):  # stacked binds, if a killed daemon left one under another
        pass
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(directory)):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
        record.note("rm", "-r", directory)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, its paths and source unescaped."""

    device: str  # major:minor, as st_dev reads
    point: str
    fstype: str
    source: str


def mounts() -> list[Mount]:
    """This thread's mount namespace's mounts, in mount order (`findmnt -l`)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype, source = fields[fields.index("-") + 1 :][:2]
            found.append(Mount(fields[2], _unescaped(fields[4]), fstype, _unescaped(source)))
    return found


def mount_points(directory: str) -> list[str]:
    """The mount points of this namespace at or under directory (`findmnt -R DIR`), each
    as often as it is mounted there."""
    points = [m.point for m in mounts()]
    return sorted(p for p in points if p == directory or p.startswith(directory + "/"))


def mount_of(device: int) -> tuple[str, str]:
    """(type, source) of the filesystem whose st_dev is `device`: the first mount with its
    major:minor (`findmnt`), ("", "") if none."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    return next(((m.fstype, m.source) for m in mounts() if m.device == wanted), ("", ""))


def mounted_as(source: str) -> list[str]:
    """The mount points of the mounts named `source` (`findmnt -n -o TARGET -S SOURCE`): what
    a daemon killed before its stop left (netns/hosts.py in_memory's tmpfs), for a sweep."""
    return [m.point for m in mounts() if m.source == source]


def _unescaped(field: str) -> str:
    """mountinfo's octal escapes (`\\040` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@contextlib.contextmanager
def thread_entered(path: str) -> Iterator[None]:
    """`nsenter --mount=FILE` for the calling thread only: a process it starts in the block is
    born in the template (fork copies the calling thread's namespaces), without an nsenter of
    its own (an exec, about 1.4 ms of CPU per start).

    setns(2) into a mount namespace is refused to a thread that shares its root and working
    directory with others (all of a process's threads do, and a thread shares them with the
    threads it starts): the thread first gets its own, `unshare(CLONE_FS)`, every time (a
    no-op when it already has them alone). Entering moves its root and working directory to
    the namespace's root, and so does coming back: from the first block on, the thread works
    from `/` (the daemon's paths are absolute; its other threads keep their directory).

    A thread that cannot come back aborts the process (_libc.setns_back): stuck in the
    template, it would make every later mount (`ip netns add`) there."""
    _libc.unshare(_libc.CLONE_FS)
    home = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _libc.setns(target, _libc.CLONE_NEWNS)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _libc.setns_back(home, _libc.CLONE_NEWNS, "mount")
    finally:
        os.close(home)


def entered(path: str, argv: Sequence[str]) -> list[str]:
    """`nsenter --mount=FILE ARGV...`: argv runs in the template. setns(2) into a mount
    namespace moves the caller's root and working directory to the namespace's root: argv
    starts in its `/`."""
    return ["nsenter", f"--mount={path}", "--", *argv]
