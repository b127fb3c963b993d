"""What a user is told when the kernel refuses a dyno's network: the problem in words and a
fix, whatever the kernel said (a netlink errno, an OSError, a DynodError of the kernel side)."""

from __future__ import annotations

import errno
import os

from dynod.errors import DynodError

# errno -> (what it means for a dyno's network, what to do)
KNOWN = {
    errno.EXFULL: (
        "a bridge of its network has no free port (a bridge takes at most 1,023)",
        "restart the daemon with a smaller --shard-ports (dynos per bridge), or stop some dynos",
    ),
    errno.ENOMEM: (
        "the host is out of kernel memory",
        "stop some dynos, or give the host more memory",
    ),
    errno.ENOSPC: (
        "the host is out of a kernel resource (a table or a limit is full)",
        "stop some dynos, or raise the limit named in `dmesg`",
    ),
    errno.EMFILE: (
        "the daemon has no file descriptor left",
        "raise the daemon's open-files limit (LimitNOFILE= in its unit, `ulimit -n`)",
    ),
    errno.ENFILE: (
        "the host has no file descriptor left",
        "raise `sysctl fs.file-max`, or stop some dynos",
    ),
    errno.EEXIST: (
        "a kernel object with its name exists already",
        "restart the daemon: its reconcile removes what it made and no dyno owns",
    ),
}
OTHER_FIX = (
    "see the daemon's log and `dmesg` for the kernel's reason; if the host's network was "
    "changed by hand, restart the daemon"
)


def _errno(exc: BaseException) -> int | None:
    """NetlinkError has .code, OSError .errno."""
    for attr in ("code", "errno"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


def network_refused(name: str, exc: BaseException) -> DynodError:
    """The error for a start refused while its network was being set up."""
    if isinstance(exc, DynodError):
        return DynodError(
            f"could not set up the network of {name}: {exc.problem}",
            exc.fix or OTHER_FIX,
            status=exc.status,
        )
    code = _errno(exc)
    if code in KNOWN:
        meaning, fix = KNOWN[code]
        return DynodError(
            f"could not set up the network of {name}: {meaning} ({os.strerror(code)})",
            fix,
            status=503,
        )
    return DynodError(f"could not set up the network of {name}: {exc}", OTHER_FIX, status=500)
