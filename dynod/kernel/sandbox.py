"""A dyno's process: its sandbox (its user, own pid/mount namespaces, a private /tmp, its
resolv.conf, its cgroups) and how it is started. Networking is not here (kernel/network.py)."""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dynod.kernel import directory, processes
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.stdio import DynoEnds
from dynod.rules.sizes import Size
from netns import exec as netns_exec
from netns import record

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# The dyno's first process, already its own user, and the init of its pid namespace. It reads the
# environment from stdin (so nothing running as root ever sees it: LD_PRELOAD and the like),
# enters the directory, and runs the command in the background with stdin on /dev/null (a
# command that is one plain program `exec`s it in that shell's place: processes.in_place).
# As init it is shielded by the kernel from every signal it has no handler for. It handles
# SIGTERM, from right after it started the command (so a config var named like its own variable
# reaches the command intact), to learn that the dyno is being stopped and to pass the SIGTERM on,
# once, to every other process of the dyno (`kill -TERM -1`; the daemon signals only it, see
# inside.signal_dyno_in's via_init, as a scan of /proc would miss a process forked meanwhile; a
# SIGTERM the kernel dropped before the handler was in is sent again once it is: exits.py
# term_once_heard). A `wait` a SIGTERM cuts short returns 143 (128 + 15) whatever the command
# does, so after a SIGTERM it waits again, until a wait ends with no SIGTERM heard: dash, the
# /bin/sh this runs as on Debian, answers a finished job's own status at every wait. It used to
# ask `kill -0` instead, and a command that exits 0 on SIGTERM was reported as 143 when it
# ended between the two. (bash answers 127, not a child, after the first wait: as /bin/sh, a
# SIGTERM right after the command's end would report 127.)
# Its own stderr goes to /dev/null once the command runs (the command keeps
# the dyno's): what it would say then is a job's end, dash's `Terminated` at one stop in
# three, which is not the app's output (bash -c, as on Heroku, execs and says nothing). Then it
# waits until every other process of the dyno has exited (they have the grace period; the daemon
# SIGKILLs them after it), so a graceful shutdown is never cut short. When the command exits on
# its own it exits at once, with the command's status, and the kernel kills whatever it left.
DYNO_INIT = """
. /dev/stdin || exit 126
cd -- "$1" || exit 126
/bin/sh -c "$0" </dev/null &
main=$!
exec 2>/dev/null
dynod_stopping=
trap 'dynod_heard=yes
[ -n "$dynod_stopping" ] || { dynod_stopping=yes; kill -TERM -1 2>/dev/null; }' TERM
while :; do
    dynod_heard=
    wait "$main"
    status=$?
    [ -n "$dynod_heard" ] || break
done
if [ -n "$dynod_stopping" ]; then
    while set -- /proc/[0-9]*; [ "$#" -gt 1 ]; do sleep 0.01; done
fi
exit "$status"
"""


# An attached one-off dyno's first process: the same, but its stdin, stdout and stderr are the
# user's (a terminal's slave or pipes the daemon relays), so the environment comes on another
# fd ($2, passed down by number: dash's redirections take one digit, so it cannot be moved or
# closed; it is emptied once read). The command runs in the foreground, so it keeps stdin and
# the terminal's default signals (an `&` job of a non-interactive shell ignores SIGINT); a stop
# heard before it began ends the dyno instead (143, as SIGTERM would have). Its variable is set
# before the command: a config var named dynod_stopping reaches an attached command empty.
ATTACHED_INIT = """
. "/dev/fd/$2" || exit 126
: > "/dev/fd/$2"
cd -- "$1" || exit 126
dynod_stopping=
trap 'dynod_stopping=yes' TERM
[ -z "$dynod_stopping" ] || exit 143
/bin/sh -c "$0"
status=$?
if [ -n "$dynod_stopping" ]; then
    while set -- /proc/[0-9]*; [ "$#" -gt 1 ]; do sleep 0.01; done
fi
exit "$status"
"""
ENV_FD_FLOOR = 10  # above the fds the sandbox's script uses (ISOLATE's 3)


@dataclass(frozen=True)
class Launch:
    """What the control side asks a dyno's process to be started with (but its environment):
    the kernel side turns it into a Spawn on the dyno's network."""

    name: str  # TYPE.N, for messages
    network: DynoNetwork
    command: str
    cwd: str
    uid: int
    gid: int
    size: Size | None  # its limits; None: none
    ipv6: bool  # IPv6 on in its namespace (DNS discovery turns it off)


@dataclass(frozen=True)
class Spawn:
    """Everything the process of one dyno is started with, but its environment (secrets)."""

    netns: str
    command: str
    cwd: str
    uid: int
    gid: int
    hostname: str  # its UTS namespace's name (netns/exec.py isolated)
    # the file of its private mounts (netns/fstab.py), for `mount -a -T FSTAB`, for a chain
    # born in a template (True: /run/netns is covered there) or in the host's mounts (False)
    fstab: Callable[[bool], str]
    cgroups: list[str]  # the group directories to enter first; []: none
    # the template mount namespace to copy for a dyno whose directory is on this device
    # (st_dev); "": the host's (kernel/mounts.py)
    mounts: Callable[[int], str]


@dataclass(frozen=True)
class Ready:
    """A Spawn whose directory is checked and whose mount template and fstab file are chosen
    (ready(), on the kernel thread: choosing may make files and mounts, and say so in the
    daemon's log). spawn() needs nothing more than these values, so it can run on the spawn
    thread, whose descriptor table is its own (netns/spawner.py)."""

    how: Spawn
    keep_id: str  # "device:inode" of the directory checked
    template: str  # the mount namespace to copy ("": the host's)
    fstab: str  # its private mounts' file


def ready(how: Spawn) -> Ready:
    """The directory checked again at every start, on the very inode handed down (it may have
    been swapped for a symlink since the last one); its mount template and its fstab file:
    the chain is born in a copy of the template's mounts, not of the host's (every dyno's
    /run/netns mount), `nsenter --mount=TEMPLATE unshare --mount ...`, the nsenter done by the
    thread that starts it."""
    checked = _checked_dir(how)
    template = how.mounts(checked.st_dev)
    return Ready(how, f"{checked.st_dev}:{checked.st_ino}", template, how.fstab(bool(template)))


def spawn(
    ready: Ready, env: Mapping[str, str], output_path: str, stdio: DynoEnds | None = None
) -> subprocess.Popen[bytes]:
    """`ip netns exec NS nsenter --mount=TEMPLATE unshare ... sh -c ISOLATE ... setpriv ...
    /bin/sh -c DYNO_INIT COMMAND CWD >>OUTPUT 2>&1`, the
    environment on stdin (a memfd), in its own session, as the dyno's user. With `stdio` (an
    attached one-off), its fds 0-2 are those, the environment comes on another fd, and on a
    terminal `setsid --ctty` makes the terminal its controlling one in a session of its own."""
    how = ready.how
    if stdio is not None:
        return _spawn_attached(ready, env, stdio)
    argv = _argv(ready, ["/bin/sh", "-c", DYNO_INIT, processes.in_place(how.command), how.cwd])
    env_fd = os.memfd_create("dyno-env", os.MFD_CLOEXEC)
    try:
        out_fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except BaseException:
        os.close(env_fd)  # on the spawn thread, whose table every later child copies
        raise
    try:
        os.write(env_fd, processes.env_script(env).encode())
        os.lseek(env_fd, 0, os.SEEK_SET)
        record.note_text(
            "# the dyno's environment (its config vars) goes to it on stdin, as a shell script "
            "in a memfd; it is not shown here"
        )
        return netns_exec.popen_inside(
            how.netns,
            argv,
            shown_stdio=f"</dev/null >>{shlex.quote(output_path)} 2>&1",
            mounts=ready.template,
            isolate=True,
            hostname=how.hostname,
            cwd="/",  # the dyno's directory is entered by the dyno's user, not by root
            env={"PATH": SAFE_PATH},
            stdin=env_fd,
            stdout=out_fd,
            stderr=out_fd,
            start_new_session=True,  # its own session: Ctrl-C on a terminal never reaches it
            close_fds=True,
        )
    finally:
        os.close(env_fd)
        os.close(out_fd)


def _checked_dir(how: Spawn) -> os.stat_result:
    """The dyno's directory's stat, checked again at every start, on the very inode handed
    down: it may have been swapped for a symlink since the last one."""
    dir_fd = directory.open_as(how.cwd, how.uid, how.gid)
    try:
        return os.fstat(dir_fd)
    finally:
        os.close(dir_fd)


def _argv(ready: Ready, inner: list[str]) -> list[str]:
    """The chain that starts `inner`, to be born in namespaces of its own (popen_inside's
    `isolate`): its cgroups joined, its mounts made, its privileges dropped."""
    how = ready.how
    return netns_exec.sandboxed(
        netns_exec.drop_privileges_argv(how.uid, how.gid, inner),
        keep=how.cwd,
        keep_id=ready.keep_id,
        fstab=ready.fstab,
        cgroups=how.cgroups,
    )


def _spawn_attached(
    ready: Ready, env: Mapping[str, str], stdio: DynoEnds
) -> subprocess.Popen[bytes]:
    how = ready.how
    # Its streams are its own, as grantpt(3) gives a login its terminal: so it can reopen them
    # (/dev/stdin, the path `tty` prints), which root's 0600 pipes and 0620 pty refuse.
    for fd in {stdio.stdin, stdio.stdout, stdio.stderr}:
        os.fchown(fd, how.uid, -1 if stdio.tty else how.gid)
    memfd = os.memfd_create("dyno-env", os.MFD_CLOEXEC)
    try:
        env_fd = fcntl.fcntl(memfd, fcntl.F_DUPFD_CLOEXEC, ENV_FD_FLOOR)
    finally:
        os.close(memfd)
    try:
        os.write(env_fd, processes.env_script(env).encode())
        command = processes.in_place(how.command)
        inner = ["/bin/sh", "-c", ATTACHED_INIT, command, how.cwd, str(env_fd)]
        if stdio.tty:
            # setsid(2), then TIOCSCTTY on stdin: the slave is the terminal of the dyno's
            # session, so Ctrl-C typed by the user reaches its foreground processes.
            inner = ["setsid", "--ctty", *inner]
        return netns_exec.popen_inside(
            how.netns,
            _argv(ready, inner),
            mounts=ready.template,
            isolate=True,
            hostname=how.hostname,
            cwd="/",
            env={"PATH": SAFE_PATH},
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            # On a terminal `setsid --ctty` makes the session: setsid(1) forks when its caller
            # leads a process group already, and the dyno's first process must not (its exit
            # would end the pid namespace), so it is not made a leader here. Until setsid its
            # root stage (the cgroup join, `mount -a`) is in the daemon's process group: a
            # Ctrl-C on a daemon run in a terminal reaches it too, and ends that start with the
            # daemon, which is stopping then anyway (pid 1 itself ignores it: an init).
            start_new_session=not stdio.tty,
            close_fds=True,
            pass_fds=(env_fd,),
        )
    finally:
        os.close(env_fd)
