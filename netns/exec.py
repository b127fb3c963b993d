"""Starting a program inside a network namespace (`ip netns exec NAME argv...`).

fork/vfork copies the namespaces of the calling thread, so a child started while this thread is
inside the namespace is born there: no helper process, no setns in the child.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from netns import namespace


def popen_inside(name: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    with namespace.entered(name):
        return subprocess.Popen(list(argv), **popen_kwargs)


# Runs as root in the new mount namespace: keeps a handle on the directory to keep, gives the
# namespace its own empty /tmp and /dev/shm and a /sys that shows its own network namespace's
# links (as `ip netns exec` does), binds the kept directory back in if it was under /tmp or
# /dev/shm, and becomes the program.
PRIVATE_TMP = """
exec 3<"$1" || exit 126
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp || exit 126
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || exit 126
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys || exit 126
case "$1" in /tmp/*|/dev/shm/*)
    mkdir -p "$1" && mount --no-canonicalize --bind /proc/self/fd/3 "$1" || exit 126;;
esac
exec 3<&-
shift
exec "$@"
"""


def own_pid_and_mount_namespaces(argv: Sequence[str], keep: str) -> list[str]:
    """`unshare --pid --fork --mount --mount-proc` with a private /tmp and /dev/shm: the program
    sees only its own processes and temporary files, and cannot address (ptrace, signal, read
    /proc/PID/environ of) processes outside. The directory `keep` stays visible where it is,
    even under /tmp. unshare itself waits in the parent namespace, ignores SIGTERM and SIGINT,
    and exits with the program's status."""
    return [
        "unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--mount-proc",
        "--", "/bin/sh", "-c", PRIVATE_TMP, "init", keep, *argv,
    ]


def drop_privileges_argv(uid: int, gid: int, argv: Sequence[str]) -> list[str]:
    """`setpriv` (util-linux) turns the child into uid:gid with no supplementary groups, no
    capabilities (effective, permitted, inheritable, ambient and bounding), and no_new_privs,
    so not even a setuid binary can give it privileges back."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        *argv,
    ]
