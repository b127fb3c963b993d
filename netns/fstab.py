"""A sandbox's private mounts (netns/exec.py ISOLATE) as one fstab(5) file, which the sandbox
mounts with one `mount -a -T FILE`.

One exec of mount(8) instead of one per mount: each costs about 1 ms of CPU (the program and its
libraries loaded, the mount table read), and seven of them were most of a start's CPU, which on a
small machine competes with the daemon and with the next start (bench/README.md).

`mount -a` skips an entry whose source and target are already mounted, so every proc, tmpfs and
sysfs line carries the caller's own source name (`dynod-PREFIX`): the host's /proc ("proc"),
/run/lock ("tmpfs") or /sys ("sysfs") is never taken for the sandbox's own and left in place. A
name is never mounted where it is about to be mounted: a sandbox's mount namespace is copied from
the host's (or the template's), never from another sandbox's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass

from netns import record, textfile

LOCK_SIZE = 5 * 1024 * 1024  # /run/lock: lock files only (Debian mounts its own with 5 MB)
TMP_DIRS = ("/tmp", "/dev/shm", "/var/tmp")  # private and empty, writable by anyone (1777)
LOCK_DIR = "/run/lock"
NETNS_DIR = "/run/netns"
RESOLV = "/etc/resolv.conf"
HOSTS = "/etc/hosts"
HOSTNAME = "/etc/hostname"


@dataclass(frozen=True)
class Private:
    """What a sandbox mounts over the host's files."""

    source: str  # the name every tmpfs and sysfs line shows as its source (see above)
    resolv: str = ""  # a file bound read-only over /etc/resolv.conf; "": none
    hosts: str = ""  # a file bound read-only over /etc/hosts; "": none (netns/hosts.py)
    hostname: str = ""  # a file bound read-only over /etc/hostname; "": none
    tmpfs_size: int | None = None  # bytes of /tmp, /dev/shm and /var/tmp each; None: the default
    lock_size: int = LOCK_SIZE
    # an empty /run/netns of its own; False where the sandbox's mounts are copied from a
    # template that covers it already (netns/mntns.py DROP)
    cover_netns: bool = True


def text(mounts: Private) -> str:
    """The fstab lines, in mount order: a /proc of the sandbox's own pid namespace (mounted by
    a process of it: what `unshare --mount-proc` does), the resolv.conf, hosts and hostname
    binds, an empty /tmp, /dev/shm and /var/tmp, /run/lock and /run/netns where the host has them
    (/run/netns unless covered already), a /sys of the sandbox's own network namespace
    (read-only)."""
    size = "" if mounts.tmpfs_size is None else f",size={mounts.tmpfs_size}"
    lines = [_line(mounts.source, "/proc", "proc", "nosuid,nodev,noexec")]
    # the binds first: a file under /tmp (a state directory there) is hidden once it is covered
    if mounts.resolv:
        lines.append(_bind(mounts.resolv, RESOLV))
    # (a bind needs its target: a host without /etc/hosts or /etc/hostname gets none there)
    for source, target in ((mounts.hosts, HOSTS), (mounts.hostname, HOSTNAME)):
        if source and os.path.exists(target):
            lines.append(_bind(source, target))
    for directory in TMP_DIRS:
        lines.append(_line(mounts.source, directory, "tmpfs", f"mode=1777,nosuid,nodev{size}"))
    if os.path.isdir(LOCK_DIR):
        options = f"mode=1777,nosuid,nodev,noexec,size={mounts.lock_size}"
        lines.append(_line(mounts.source, LOCK_DIR, "tmpfs", options))
    if mounts.cover_netns and os.path.isdir(NETNS_DIR):
        lines.append(_line(mounts.source, NETNS_DIR, "tmpfs", "mode=755,nosuid,nodev,noexec"))
    lines.append(_line(mounts.source, "/sys", "sysfs", "ro,nosuid,nodev,noexec"))
    return "".join(f"{line}\n" for line in lines)


def _bind(source: str, target: str) -> str:
    return _line(source, target, "none", "bind,ro")


def _line(source: str, target: str, fstype: str, options: str) -> str:
    return f"{escape(source)} {escape(target)} {fstype} {options} 0 0"


def escape(field: str) -> str:
    """fstab(5)'s octal escapes for what would split or end a field."""
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        field = field.replace(char, code)
    return field


class Files:
    """fstab files by content, each written once into `directory` (root's, 0700) and reused,
    for sandboxes that share their mounts (bench/spawn_mounts.py's; the daemon writes one per
    dyno, beside its hosts file: netns/hosts.py). One that went is written again."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._paths: dict[str, str] = {}

    def path(self, mounts: Private) -> str:
        """The file that lists these mounts, as the host is now."""
        content = text(mounts)
        path = self._paths.get(content)
        if path is None or not os.path.exists(path):
            path = self._write(content)
        return path

    def _write(self, content: str) -> str:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        path = os.path.join(self.directory, f"{digest}.fstab")
        record.note("mkdir", "-p", "-m", "700", self.directory)
        textfile.replace(path, content, 0o600)
        self._paths[content] = path
        return path

    def remove(self) -> None:
        """`rm -r DIR`"""
        self._paths.clear()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)
