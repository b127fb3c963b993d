"""A template mount namespace: a persistent copy of this one without some mount points, which
`unshare --mount` then copies instead of this one (`nsenter --mount=FILE unshare --mount ...`).

`unshare --mount` copies every mount of the caller's namespace, and a host with N network
namespaces has N bind mounts under /run/netns: each copy costs O(N) time and kernel memory, and
holds the kernel's global mount lock meanwhile. A copy made once, without /run/netns's mount,
costs the same whatever N.

The template is made as `ip netns` makes its directory: a private mount point of its own
(`mount --bind DIR DIR; mount --make-private DIR`: the kernel refuses to bind a mount namespace
where propagation could copy it into itself), then `unshare --mount=DIR/mnt --propagation slave
umount -l PATH...`. As a slave it still receives the mounts made later on the host (where the
host's mounts are shared, as systemd makes them), but under the paths it dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from netns import _libc, record

MS_PRIVATE = 1 << 18


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


def make(path: str, without: Sequence[str]) -> Template:
    """`touch FILE; unshare --mount=FILE --propagation slave umount -l PATH...`, FILE in a
    private_dir(). Each PATH must be a mount point here. Undone on failure."""
    with open(path, "a"):
        pass
    record.note("touch", path)
    argv = ["unshare", f"--mount={path}", "--propagation", "slave", "umount", "-l", *without]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        unmount(path)  # unshare binds FILE before it runs the program: the copy is whole
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
        unmount(os.path.join(directory, name))
    while unmount(directory):  # stacked binds, if a killed daemon left one under another
        pass
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(directory)):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
        record.note("rm", "-r", directory)


def mount_points(directory: str) -> list[str]:
    """The mount points of this namespace at or under directory (`findmnt -R DIR`), each
    as often as it is mounted there."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted(p for p in points if p == directory or p.startswith(directory + "/"))


def entered(path: str, argv: Sequence[str]) -> list[str]:
    """`nsenter --mount=FILE ARGV...`: argv runs in the template. setns(2) into a mount
    namespace moves the caller's root and working directory to the namespace's root: argv
    starts in its `/`."""
    return ["nsenter", f"--mount={path}", "--", *argv]
