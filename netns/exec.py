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


# Runs as root in the new namespaces: binds the given resolv.conf over /etc/resolv.conf (the host's
# file is never changed; a symlinked one has its target covered, in this mount namespace only),
# gives them their own empty /tmp, /dev/shm and /var/tmp,
# an empty /run/netns (the names of other namespaces are none of its business), and a /sys that
# shows its own network namespace's links (as `ip netns exec` does); binds the kept directory
# back in if it was under one of the private directories; then becomes the program. The kept
# directory is opened before the private mounts cover it, and must be the very inode the
# caller checked (device:inode), so a directory swapped for a symlink meanwhile is refused.
# The caller's umask is not the program's: the usual 022 (the directories made here for the
# kept one must be traversable, and the program's files are its own business).
ISOLATE = """
umask 022
keep=$1 keep_id=$2 resolv=$3
shift 3
if [ -n "$resolv" ]; then
    mount --bind -o ro "$resolv" /etc/resolv.conf || exit 126
fi
case "$keep" in /tmp/*|/dev/shm/*|/var/tmp/*)
    exec 3<"$keep" || exit 126
    if [ "$(stat -L -c %d:%i /proc/self/fd/3)" != "$keep_id" ]; then
        echo "$keep changed while the program was being started" >&2
        exit 126
    fi;;
esac
for dir in /tmp /dev/shm /var/tmp; do
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dir" || exit 126
done
if [ -d /run/netns ]; then
    mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /run/netns || exit 126
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys || exit 126
case "$keep" in /tmp/*|/dev/shm/*|/var/tmp/*)
    mkdir -p "$keep" || exit 126
    mount --no-canonicalize --bind /proc/self/fd/3 "$keep" || exit 126
    exec 3<&-;;
esac
exec "$@"
"""


def own_namespaces(argv: Sequence[str], keep: str, keep_id: str, resolv: str = "") -> list[str]:
    """`unshare --pid --fork --mount --mount-proc --ipc --uts` with private temporary directories:
    the program sees only its own processes, IPC objects and temporary files, and cannot address
    (ptrace, signal, read /proc/PID/environ of) processes outside. The directory `keep` (whose
    "device:inode" is keep_id) stays visible where it is, even under /tmp. unshare itself
    waits in the parent namespace, ignores SIGTERM and SIGINT, and exits with the program's
    status. A non-empty `resolv` is a file bound read-only over /etc/resolv.conf."""
    return [
        "unshare",
        "--pid",
        "--fork",
        "--mount",
        "--propagation",
        "private",
        "--mount-proc",
        "--ipc",
        "--uts",
        "--",
        "/bin/sh",
        "-c",
        ISOLATE,
        "isolate",
        keep,
        keep_id,
        resolv,
        *argv,
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
