"""A sandbox's own /etc/hosts, and the fstab file (netns/fstab.py) that binds it in with the
sandbox's other private mounts: one pair per sandbox, in one directory, named after the
sandbox's network namespace. Written before it starts, removed when it goes.

A sandbox has a hostname of its own (set in its UTS namespace, netns/exec.py isolated), which
must resolve inside it, as Docker makes sure with the /etc/hosts it writes for each container:
a program that looks its own name up (Java's `InetAddress.getLocalHost()`, `hostname -f`,
Erlang's short names) would otherwise ask DNS for it, and wait for an answer that, offline,
never comes. The host's /etc/hosts is never changed: the sandbox's file is bound over it in the
sandbox's mount namespace only, read-only.

The directory is a tmpfs of the caller's (in_memory), as Podman keeps such files in its run
directory (on /run, a tmpfs where systemd runs): each start writes three files and each stop
removes them, and on an ext4 without a journal (a small VM's root, as on this project's test
machines) every new inode is looked for past each inode deleted in the last 60 s (360 s while
its inode table block is dirty): with the daemon's whole state directory in memory, a start
through the API took 1.35-1.50x the kernel floor, against 1.79-2.32x on disk (bench/README.md,
"Eleventh round"). Files in memory also cost no disk writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex

from netns import _libc, fstab, mntns, namespace, record, textfile

FILES = (".hosts", ".hostname", ".fstab")
SUFFIXES = (*FILES, *(f"{s}.new" for s in FILES))


def text(hostname: str, address: str) -> str:
    """`/etc/hosts` of a sandbox: localhost, and its own name at its own address."""
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )


class Files:
    """`DIR/NAME.hosts` and `DIR/NAME.hostname` (0644: read by the sandbox's user through its
    /etc/hosts and /etc/hostname) and `DIR/NAME.fstab` (root's) for each sandbox NAME."""

    def __init__(self, directory: str, source: str = "") -> None:
        self.directory = directory
        self.source = source  # the name of in_memory()'s tmpfs
        self.device: int | None = None  # its st_dev, while it is the one in_memory() found

    def in_memory(self) -> bool:
        """`mkdir -p DIR; mount -t tmpfs -o mode=700,nosuid,nodev,noexec SOURCE DIR` unless
        DIR is in memory already: a dynod's tmpfs mounted there (a killed daemon's, with its
        dynos' files: kept, and swept by remove_all_but; the state directory's lock makes it
        this daemon's to keep), or a state directory on a tmpfs. The filesystem is found by
        its device, not its path (a state directory reached through a symlink). Files on disk
        (an older dynod's) are not hidden: then nothing is mounted. Returns whether DIR is in
        memory."""
        self.device = None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        record.note("mkdir", "-p", "-m", "700", self.directory)
        found = os.stat(self.directory).st_dev
        fstype, source = mntns.mount_of(found)
        if fstype in namespace.MEMORY_TYPES:
            if (
                fstype == "tmpfs"
                and source.startswith("dynod-")
                and os.path.ismount(self.directory)
            ):
                self.device = found
            return True
        if os.listdir(self.directory):
            return False
        flags = _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC
        _libc.mount(self.source, self.directory, "tmpfs", flags, "mode=700")
        # shown as the test it was: run again, it leaves memory, or files there, alone
        where, source = shlex.quote(self.directory), shlex.quote(self.source)
        record.note_text(
            f'case "$(stat -f -c %T {where})" in tmpfs|ramfs) ;; *) [ -n "$(ls -A {where})" ] '
            f"|| mount -t tmpfs -o mode=700,nosuid,nodev,noexec {source} {where};; esac"
        )
        self.device = os.stat(self.directory).st_dev
        return True

    def lost(self) -> bool:
        """Was in_memory()'s tmpfs unmounted since (`stat -c %d DIR`)? Its files are gone with
        it (a running sandbox keeps its own, bound in): in_memory() mounts a new one."""
        if self.device is None:
            return False
        try:
            return os.stat(self.directory).st_dev != self.device
        except FileNotFoundError:
            return True

    def write(self, name: str, hostname: str, address: str, mounts: fstab.Private) -> str:
        """The files of `name` (replaced if there): the fstab file's path, whose lines are
        `mounts`' and the binds of the hosts and hostname files over /etc/hosts and
        /etc/hostname."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        record.note("mkdir", "-p", "-m", "700", self.directory)
        hosts = os.path.join(self.directory, f"{name}.hosts")
        textfile.replace(hosts, text(hostname, address), 0o644)
        named = os.path.join(self.directory, f"{name}.hostname")
        textfile.replace(named, f"{hostname}\n", 0o644)
        listed = fstab.text(dataclasses.replace(mounts, hosts=hosts, hostname=named))
        path = os.path.join(self.directory, f"{name}.fstab")
        textfile.replace(path, listed, 0o600)
        return path

    def remove(self, name: str) -> None:
        """`rm -f DIR/NAME.hosts DIR/NAME.hostname DIR/NAME.fstab` (and a half-written one's
        `.new`). A file that cannot be removed (a read-only state directory) is left for the
        next daemon start's sweep: what follows it (a cgroup, the daemon's stop) goes on."""
        for suffix in SUFFIXES:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name + suffix))
        record.note("rm", "-f", *(os.path.join(self.directory, name + s) for s in FILES))

    def names(self) -> set[str]:
        """The sandboxes that have files here."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        return {e[: -len(s)] for e in entries for s in SUFFIXES if e.endswith(s)}

    def remove_all_but(self, keep: set[str]) -> None:
        """The files of every sandbox not in keep (left by a daemon killed with SIGKILL)."""
        for name in self.names() - keep:
            self.remove(name)

    def remove_all(self) -> None:
        """`rm -r DIR`, in_memory()'s tmpfs unmounted first (`umount -l DIR`: a sandbox's
        bind keeps its own file, not the mount)."""
        self.remove_all_but(set())
        if self.device is not None and not self.lost():
            with contextlib.suppress(OSError):
                _libc.umount2(self.directory, _libc.MNT_DETACH)
                record.note("umount", "-l", self.directory)
        self.device = None
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
