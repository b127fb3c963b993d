"""Starting a program inside a network namespace (`ip netns exec NAME argv...`).

fork/vfork copies the namespaces of the calling thread, so a child started while this thread is
inside the namespace is born there: no helper process, no setns in the child.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from netns import mntns, namespace, record


def popen_inside(
    name: str,
    argv: Sequence[str],
    shown_stdio: str = "",
    mounts: str = "",
    **popen_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """`ip netns exec NAME ARGV...`, started from this thread while it is inside NAME.
    shown_stdio is how the recorder shows the child's stdin, stdout and stderr (the Popen's
    are file descriptors), e.g. `</dev/null >>FILE 2>&1`. With `mounts` (a mount namespace's
    file: `ip netns exec NAME nsenter --mount=MOUNTS ARGV...`), the child is born in that
    mount namespace too, the thread having entered it (netns/mntns.py thread_entered)."""
    in_mounts = mntns.thread_entered(mounts) if mounts else contextlib.nullcontext()
    process: subprocess.Popen[bytes] | None = None
    try:
        with namespace.entered(name), in_mounts:  # the network's first: its name is in /run/netns
            process = subprocess.Popen(list(argv), **popen_kwargs)
    except BaseException:
        if process is not None:  # started, but the thread could not switch back: none of it
            process.kill()
            process.wait()
        raise
    if record.active():
        shown = mntns.entered(mounts, argv) if mounts else argv
        record.note_text(as_typed(name, shown, popen_kwargs, shown_stdio))
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


# Runs as root in the new namespaces: mounts what the fstab file lists (netns/fstab.py: the
# given resolv.conf bound over /etc/resolv.conf, so the host's file is never changed and a
# symlinked one has its target covered, in this mount namespace only; their own empty /tmp,
# /dev/shm, /var/tmp and /run/lock, as lock files of one program are none of another's business;
# an empty /run/netns, as the names of other namespaces are none of its business; a /sys that
# shows its own network namespace's links, as `ip netns exec` does), all in one exec of mount(8);
# binds the kept directory back in if it was under one of the private directories; then becomes
# the program. The kept directory is opened before the private mounts cover it, and must be the
# very inode the caller checked (device:inode), so a directory swapped for a symlink meanwhile is
# refused. The caller's umask is not the program's: the usual 022 (the directories made here for
# the kept one must be traversable, and the program's files are its own business).
ISOLATE = """
umask 022
keep=$1 keep_id=$2 fstab=$3
shift 3
case "$keep" in /tmp/*|/dev/shm/*|/var/tmp/*|/run/lock/*)
    exec 3<"$keep" || exit 126
    if [ "$(stat -L -c %d:%i /proc/self/fd/3)" != "$keep_id" ]; then
        echo "$keep changed while the program was being started" >&2
        exit 126
    fi;;
esac
mount -a -T "$fstab" || exit 126
case "$keep" in /tmp/*|/dev/shm/*|/var/tmp/*|/run/lock/*)
    mkdir -p "$keep" || exit 126
    mount --no-canonicalize --bind /proc/self/fd/3 "$keep" || exit 126
    exec 3<&-;;
esac
exec "$@"
"""


def own_namespaces(argv: Sequence[str], keep: str, keep_id: str, fstab: str) -> list[str]:
    """`unshare --pid --fork --mount --mount-proc --ipc --uts`, then `mount -a -T FSTAB` (the
    sandbox's private mounts, netns/fstab.py: empty /tmp, /dev/shm, /var/tmp, /run/lock of
    their sizes, a read-only resolv.conf, its own /sys): the program sees only its own
    processes, IPC objects and temporary files, and cannot address (ptrace, signal, read
    /proc/PID/environ of) processes outside. The directory `keep` (whose "device:inode" is
    keep_id) stays visible where it is, even under /tmp. unshare itself waits in the parent
    namespace, ignores SIGTERM and SIGINT, and exits with the program's status."""
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
        fstab,
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
