"""The daemon's template mount namespace (netns/mntns.py): the host's mounts without
/run/netns's, which every dyno's `unshare --mount` copies instead of the host's. The host has
one bind mount per dyno under /run/netns; copying them made each start cost O(dynos) in time
and kernel memory, under the kernel's global mount lock. A dyno never sees them anyway: its
sandbox covers /run/netns with an empty tmpfs (netns/exec.py ISOLATE).

Made at the daemon's start in /run/dynod-PREFIX/mnt (a stale one, left by a killed daemon, is
removed first), removed at its clean stop. Checked at every spawn (a stat): when someone
unmounted it, or the dyno's directory is on a filesystem mounted after it (which reaches it only
where the host's mounts are shared, as systemd makes them), it is made again; when that fails,
the dyno copies the host's mounts, as before, and the daemon says so in its log. Kernel thread
only."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from netns import mntns, namespace

RUN = "/run"
# templates stacked on DIR/mnt unmounted before a new one at most (by earlier daemons, if any:
# this one leaves none)
STACKED = 16
RETRY = 10.0  # seconds between attempts to make it again after one failed (none in between)


def directory_of(prefix: str) -> str:
    """Where a daemon of that prefix keeps its template: /run/dynod-PREFIX (a private mount)."""
    return os.path.join(RUN, f"dynod-{prefix}")


class MountTemplate:
    def __init__(self, prefix: str, say: Callable[[str], object]) -> None:
        self.directory = directory_of(prefix)
        self.path = os.path.join(self.directory, "mnt")
        self.say = say  # a line for the daemon's log (any thread)
        self.made: mntns.Template | None = None
        # devices of dynos' directories that a template made since did not list either (a
        # btrfs subvolume's st_dev is not its mount's): not a reason to make it again
        self.unlisted: set[int] = set()
        self.retry_at = 0.0  # time.monotonic() after which a failed make is tried again

    def make(self) -> mntns.Template:
        """At the daemon's start: `mkdir -p DIR; mount --bind DIR DIR; mount --make-private
        DIR; touch DIR/mnt; unshare --mount=DIR/mnt --propagation slave sh -c DROP drop
        /run/netns` (netns/mntns.py), anything left there by an earlier daemon removed first."""
        self.made = None
        self.unlisted.clear()
        mntns.remove(self.directory)
        namespace.ensure_run_dir()  # /run/netns must be a mount point of its own to be dropped
        mntns.private_dir(self.directory)
        try:
            self.made = mntns.make(self.path, [namespace.RUN_DIR])
        except BaseException:
            mntns.remove(self.directory)
            raise
        return self.made

    def remake(self) -> mntns.Template:
        """Made again, the one there (if any) unmounted first: only this thread opens DIR/mnt,
        right before a spawn (netns/mntns.py thread_entered), so no start is on its way to the
        old one, and the old one would hold the host's filesystems of its day until the stop.
        The private directory is made again if it went."""
        self.unlisted.clear()
        if self.directory not in mntns.mount_points(self.directory):
            mntns.remove(self.directory)
            mntns.private_dir(self.directory)
        for _ in range(STACKED):
            if not mntns.unmount(self.path):
                break
        namespace.ensure_run_dir()
        self.made = mntns.make(self.path, [namespace.RUN_DIR])
        return self.made

    def remove(self) -> None:
        """`umount -l DIR/mnt; umount -l DIR; rm -r DIR`; what is in the way (someone's
        directory in it) is said, and the daemon's stop goes on."""
        self.made = None
        try:
            mntns.remove(self.directory)
        except OSError as exc:
            self.say(f"warning: the dynos' mount template {self.directory} was not removed: {exc}")

    def for_dyno(self, device: int, *more: int | None) -> str:
        """The template for a dyno whose directory is on `device` (st_dev), and whose mounts
        bind files from the filesystems `more` (None: none), made again if it is broken or
        lacks one of them; "" (copy the host's mounts) if it cannot be made."""
        made = self.made
        wanted = [device, *(d for d in more if d is not None)]
        missing = [d for d in wanted if not made or (not made.shows(d) and d not in self.unlisted)]
        if made is not None and made.intact():
            if not missing:
                return made.path
            number = f"{os.major(missing[0])}:{os.minor(missing[0])}"
            why = f"had no mount of device {number} (mounted since)"
        elif made is not None:
            why = "unmounted or replaced by someone else"
        else:
            why = "missing"
        if time.monotonic() < self.retry_at:
            return ""  # the last attempt failed moments ago, and said so
        try:
            made = self.remake()
        except (OSError, subprocess.SubprocessError) as exc:
            self.retry_at = time.monotonic() + RETRY
            self.say(
                f"warning: the dynos' mount template {self.path} was {why} and could not be "
                f"made again ({exc}): dynos copy the host's mounts, /run/netns's too, until "
                f"it can be (tried again at a start at least {RETRY:g} s later)"
            )
            return ""
        self.say(f"the dynos' mount template {self.path} was {why}: made again")
        self.unlisted.update(d for d in wanted if not made.shows(d))
        return made.path
