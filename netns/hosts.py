"""A sandbox's own /etc/hosts, and the fstab file (netns/fstab.py) that binds it in with the
sandbox's other private mounts: one pair per sandbox, in one directory, named after the
sandbox's network namespace. Written before it starts, removed when it goes.

A sandbox has a hostname of its own (set in its UTS namespace, netns/exec.py isolated), which
must resolve inside it, as Docker makes sure with the /etc/hosts it writes for each container:
a program that looks its own name up (Java's `InetAddress.getLocalHost()`, `hostname -f`,
Erlang's short names) would otherwise ask DNS for it, and wait for an answer that, offline,
never comes. The host's /etc/hosts is never changed: the sandbox's file is bound over it in the
sandbox's mount namespace only, read-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from netns import fstab, record, textfile

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

    def __init__(self, directory: str) -> None:
        self.directory = directory

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
        """`rm -r DIR`"""
        self.remove_all_but(set())
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
