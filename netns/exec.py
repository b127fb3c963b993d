"""Starting a program inside a network namespace (`ip netns exec NAME argv...`), and in
namespaces of its own (`unshare --pid --fork --mount --ipc --uts`).

fork/vfork copies the namespaces of the calling thread, so a child started while this thread is
inside the namespace is born there: no helper process, no setns in the child. The same holds for
the namespaces a thread unshares for itself: its next child is born in them, the first process
(pid 1) of a new pid namespace, with no `unshare` process waiting for it outside.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from netns import _libc, mntns, namespace, record

# What a thread unshares for the children it starts in isolated(), with their kinds' files in
# /proc/thread-self/ns, which it goes back to: pid_for_children is the namespace its children
# are born in (its own processes stay where they are).
OWN_KINDS = (
    ("mnt", _libc.CLONE_NEWNS),
    ("ipc", _libc.CLONE_NEWIPC),
    ("uts", _libc.CLONE_NEWUTS),
    ("pid_for_children", _libc.CLONE_NEWPID),
)
# isolated() as one would type it: the same namespaces, unshare's own process waiting outside
UNSHARE = ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--ipc", "--uts"]


def popen_inside(
    name: str,
    argv: Sequence[str],
    shown_stdio: str = "",
    mounts: str = "",
    isolate: bool = False,
    hostname: str = "",
    **popen_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """`ip netns exec NAME ARGV...`, started from this thread while it is inside NAME.
    shown_stdio is how the recorder shows the child's stdin, stdout and stderr (the Popen's
    are file descriptors), e.g. `</dev/null >>FILE 2>&1`. With `mounts` (a mount namespace's
    file: `ip netns exec NAME nsenter --mount=MOUNTS ARGV...`), the child is born in that
    mount namespace too, the thread having entered it (netns/mntns.py thread_entered). With
    `isolate`, it is born in new pid, mount (a copy of that one), IPC and UTS namespaces, as the
    first process of its pid namespace (`... unshare --pid --fork --mount --propagation private
    --ipc --uts -- ARGV...`, but no unshare process: isolated()), with `hostname` (if any) as
    the name of its UTS namespace."""
    in_mounts = mntns.thread_entered(mounts) if mounts else contextlib.nullcontext()
    in_own = isolated(hostname) if isolate else contextlib.nullcontext()
    process: subprocess.Popen[bytes] | None = None
    try:
        # the network's first: its name is in /run/netns
        with namespace.entered(name), in_mounts, in_own:
            process = subprocess.Popen(list(argv), **popen_kwargs)
    except BaseException:
        if process is not None:  # started, but the thread could not switch back: none of it
            process.kill()
            process.wait()
        raise
    if record.active():
        if isolate and hostname:  # unshare(1) names no host: a shell in between does
            argv = ["sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
        shown = [*UNSHARE, "--", *argv] if isolate else list(argv)
        shown = mntns.entered(mounts, shown) if mounts else shown
        record.note_text(as_typed(name, shown, popen_kwargs, shown_stdio))
    return process


@contextlib.contextmanager
def isolated(hostname: str = "") -> Iterator[None]:
    """`unshare --pid --mount --propagation private --ipc --uts` for the calling thread only: a
    process it starts in the block is born in new namespaces of those kinds (the first process
    of the pid namespace: its init), copied from the thread's mounts, which are made private
    in the copy, so no mount of the child's reaches the namespace it was copied from. The thread
    itself stays in its pid namespace (unshare(2) of a pid namespace is for the children), and
    goes back to its own mount, IPC and UTS namespaces and children's pid namespace after the
    block (aborting the process if it cannot: _libc.setns_back). With a hostname, the new UTS
    namespace is given it (`hostname NAME` in it): the child's, not the host's.

    A new mount namespace needs the thread's root and working directory of its own
    (`unshare(CLONE_FS)`, as in mntns.thread_entered); coming back moves them to `/`. One
    child per block: a second would be born into the first one's pid namespace."""
    _libc.unshare(_libc.CLONE_FS)
    homes: list[tuple[int, int, str]] = []
    try:
        for kind, flag in OWN_KINDS:
            fd = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            homes.append((fd, flag, kind))
        flags = 0
        for _, flag in OWN_KINDS:
            flags |= flag
        _libc.unshare(flags)  # all of them or none (unshare(2) is atomic)
        try:
            # unshare(1)'s --propagation private: `mount --make-rprivate /` in the copy
            _libc.mount("none", "/", None, _libc.MS_REC | _libc.MS_PRIVATE)
            if hostname:
                socket.sethostname(hostname)  # this thread's UTS namespace is the new one
            yield
        finally:
            for fd, flag, kind in reversed(homes):
                _libc.setns_back(fd, flag, kind.removesuffix("_for_children"))
    finally:
        for fd, _, _ in homes:
            os.close(fd)


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


# `echo 0 > FILE` for each file before `--` (0 is the writer itself: v1's `tasks` or v2's
# cgroup.procs, netns/cgroup.py create), then the rest of the arguments are "$@": the writer, a
# single-threaded shell, and every process it starts after, is in those groups.
JOIN_GROUPS = """
while [ "$1" != -- ]; do
    echo 0 > "$1" || exit 126
    shift
done
shift
"""

# Runs as root as the first process of the new namespaces (isolated()): first joins the given
# cgroups (`echo 0 > GROUP/tasks`, or cgroup.procs, for each: 0 is the writer itself), so every
# process it starts is born in them and none escapes them; mounts what the fstab file lists
# (netns/fstab.py: its own /proc, of its pid namespace; the given resolv.conf bound over
# /etc/resolv.conf, so the host's file is never changed and a symlinked one has its target covered,
# in this mount namespace only; its own /etc/hosts and /etc/hostname, the same way (netns/hosts.py);
# their own empty /tmp, /dev/shm, /var/tmp and /run/lock, as lock files of one program are none of
# another's business; an empty /run/netns, as the names of other namespaces are none of its
# business; a /sys that shows its own network namespace's links, as `ip netns exec` does), all in
# one exec of mount(8); binds the kept directory back in if it was under one of the private
# directories; then becomes the program. The kept directory is opened before the private mounts
# cover it, and must be the very inode the caller checked (device:inode), so a directory swapped for
# a symlink meanwhile is refused. The caller's umask is not the program's: the usual 022 (the
# directories made here for the kept one must be traversable, and the program's files are its own
# business). SIGTERM is ignored until the program is run (and back to its default for it): a stop
# that lands meanwhile must not kill a `mount` half-way (the start would fail, 126); the program is
# told again (dynod/control/exits.py term_once_heard).
ISOLATE = (
    """
trap '' TERM
umask 022
keep=$1 keep_id=$2 fstab=$3
shift 3
"""
    + JOIN_GROUPS
    + """
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
trap - TERM
exec "$@"
"""
)


def sandboxed(
    argv: Sequence[str], keep: str, keep_id: str, fstab: str, cgroups: Sequence[str] = ()
) -> list[str]:
    """`sh -c ISOLATE`, to be started in namespaces of its own (popen_inside's `isolate`): joins the
    cgroups (their `tasks` or cgroup.procs files), then `mount -a -T FSTAB` (the sandbox's private
    mounts, netns/fstab.py: its /proc, empty /tmp, /dev/shm, /var/tmp, /run/lock of their sizes, a
    read-only resolv.conf, /etc/hosts and /etc/hostname, its own /sys), then runs argv: the program
    sees only its own processes, IPC objects and temporary files, and cannot address (ptrace,
    signal, read /proc/PID/environ of) processes outside. The directory `keep` (whose "device:inode"
    is keep_id) stays visible where it is, even under /tmp."""
    return ["/bin/sh", "-c", ISOLATE, "isolate", keep, keep_id, fstab, *cgroups, "--", *argv]


# Runs as root on the host before anything else: joins the groups, then becomes the program, so
# every process it starts is born in those groups and none escapes them.
JOIN = JOIN_GROUPS + 'exec "$@"\n'


def in_cgroups(procs_files: Sequence[str], argv: Sequence[str]) -> list[str]:
    """`sh -c 'echo 0 > GROUP/tasks; exec ARGV'` (or cgroup.procs): argv, and all it starts, in
    the groups."""
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
