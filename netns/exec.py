"""Starting a program inside a network namespace (`ip netns exec NAME argv...`).

fork/vfork copies the namespaces of the calling thread, so a child started while this thread is
inside the namespace is born there: no helper process, no setns in the child.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from netns import namespace, record

LOCK_SIZE = 5 * 1024 * 1024  # /run/lock: lock files only (Debian mounts its own with 5 MB)


def popen_inside(
    name: str, argv: Sequence[str], shown_stdio: str = "", **popen_kwargs: Any
) -> subprocess.Popen[bytes]:
    """`ip netns exec NAME ARGV...`, started from this thread while it is inside NAME.
    shown_stdio is how the recorder shows the child's stdin, stdout and stderr (the Popen's
    are file descriptors), e.g. `</dev/null >>FILE 2>&1`."""
    with namespace.entered(name):
        process = subprocess.Popen(list(argv), **popen_kwargs)
    if record.active():
        record.note_text(as_typed(name, argv, popen_kwargs, shown_stdio))
    return process


def as_typed(name: str, argv: Sequence[str], popen_kwargs: dict[str, Any], stdio: str) -> str:
    """`(cd CWD && exec env -i VAR=... setsid -f ip netns exec NAME ARGV...) STDIO`: what the
    Popen does, as one shell line; -f: the shell does not wait for it."""
    words = ["ip", "netns", "exec", name, *argv]
    if popen_kwargs.get("start_new_session"):
        words = ["setsid", "-f", *words]
    env = popen_kwargs.get("env")
    if env is not None:
        words = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *words]
    line = shlex.join(words)
    cwd = popen_kwargs.get("cwd")
    if cwd is not None:
        line = f"(cd {shlex.quote(str(cwd))} && exec {line})"
    return f"{line} {stdio}".rstrip()


# Runs as root in the new namespaces: binds the given resolv.conf over /etc/resolv.conf (the host's
# file is never changed; a symlinked one has its target covered, in this mount namespace only),
# gives them their own empty /tmp, /dev/shm and /var/tmp (of `size` bytes each when given) and
# /run/lock (of `lock_size`: lock files of one program are none of another's business),
# an empty /run/netns (the names of other namespaces are none of its business), and a /sys that
# shows its own network namespace's links (as `ip netns exec` does); binds the kept directory
# back in if it was under one of the private directories; then becomes the program. The kept
# directory is opened before the private mounts cover it, and must be the very inode the
# caller checked (device:inode), so a directory swapped for a symlink meanwhile is refused.
# The caller's umask is not the program's: the usual 022 (the directories made here for the
# kept one must be traversable, and the program's files are its own business).
ISOLATE = """
umask 022
keep=$1 keep_id=$2 resolv=$3 size=$4 lock_size=$5
shift 5
if [ -n "$resolv" ]; then
    mount --bind -o ro "$resolv" /etc/resolv.conf || exit 126
fi
case "$keep" in /tmp/*|/dev/shm/*|/var/tmp/*|/run/lock/*)
    exec 3<"$keep" || exit 126
    if [ "$(stat -L -c %d:%i /proc/self/fd/3)" != "$keep_id" ]; then
        echo "$keep changed while the program was being started" >&2
        exit 126
    fi;;
esac
for dir in /tmp /dev/shm /var/tmp; do
    mount -t tmpfs -o "mode=1777,nosuid,nodev${size:+,size=$size}" tmpfs "$dir" || exit 126
done
if [ -d /run/lock ]; then
    mount -t tmpfs -o "mode=1777,nosuid,nodev,noexec,size=$lock_size" tmpfs /run/lock || exit 126
fi
if [ -d /run/netns ]; then
    mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /run/netns || exit 126
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys || exit 126
case "$keep" in /tmp/*|/dev/shm/*|/var/tmp/*|/run/lock/*)
    mkdir -p "$keep" || exit 126
    mount --no-canonicalize --bind /proc/self/fd/3 "$keep" || exit 126
    exec 3<&-;;
esac
exec "$@"
"""


def own_namespaces(
    argv: Sequence[str],
    keep: str,
    keep_id: str,
    resolv: str = "",
    tmpfs_size: int | None = None,
    lock_size: int = LOCK_SIZE,
) -> list[str]:
    """`unshare --pid --fork --mount --mount-proc --ipc --uts` with private temporary directories
    (/tmp, /dev/shm, /var/tmp: `mount -t tmpfs -o size=tmpfs_size`; /run/lock):
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
        "" if tmpfs_size is None else str(tmpfs_size),
        str(lock_size),
        *argv,
    ]


# Runs as root on the host before anything else: `echo 0 > DIR/cgroup.procs` for each given file
# (0 is the writer itself), then becomes the program, so every process it starts is born in
# those groups and none escapes them.
JOIN = """
while [ "$1" != -- ]; do
    echo 0 > "$1" || exit 126
    shift
done
shift
exec "$@"
"""


def in_cgroups(procs_files: Sequence[str], argv: Sequence[str]) -> list[str]:
    """`sh -c 'echo 0 > GROUP/cgroup.procs; exec ARGV'`: argv, and all it starts, in the groups."""
    return ["/bin/sh", "-c", JOIN, "join-cgroups", *procs_files, "--", *argv]


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
