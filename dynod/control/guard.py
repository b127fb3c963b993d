"""What the firewall guard (daemon.py) knows of the nftables commits since its last check: whether
its tables can have changed behind its back, without reading them.

Reading and comparing the tables costs O(dynos) on the kernel thread (114 ms at 4,000 dynos, every
starting dyno waiting behind it), so the guard's slow poll, which backs up the events, compares
them only when it must. Every commit is an event carrying the ruleset's new generation
(netns/nfevents.py). Once a check found the tables right as of a generation, and every commit
since was the daemon's own, they are still right: the poll then only asks the kernel for the
current generation, and compares the tables only when it is not the last one seen (an event
missed, or a monitor that died) or someone else committed.
"""

from __future__ import annotations

from collections.abc import Iterable

from netns.nfevents import GENERATIONS, Commit


class CommitLedger:
    def __init__(self, trusted: bool = True) -> None:
        """trusted: a commit's pid can be told for ours (nfevents.pids_are_global()); where
        it cannot, the tables are read at every poll, as before the ledger."""
        self.trusted = trusted
        self.foreign: list[Commit] = []  # commits by others (or lost events) not checked yet
        # the generation as of which the tables are known right; None: unknown (never checked,
        # someone else committed since, or a check is under way)
        self.clean: int | None = None
        self._checking = False
        self._since: int | None = None  # our last commit's generation during a check

    def saw(self, commits: Iterable[Commit]) -> bool:
        """Commits read from the monitor, in order; whether someone else's is among them."""
        for commit in commits:
            if not commit.ours():
                self.foreign.append(commit)
                self.clean = None
            elif self._checking:
                self._since = commit.generation
            elif self.clean is not None:
                self.clean = commit.generation
        return bool(self.foreign)

    def unchanged(self, current: int) -> bool:
        """Nothing to compare: the tables were right as of the current generation, or of a
        later one (a start committed between the asking and the reading of the events; every
        commit up to `current` was read from the monitor before asking, in order)."""
        if not self.trusted or self.foreign or self.clean is None:
            return False
        return (self.clean - current) % GENERATIONS < GENERATIONS // 2

    def take(self) -> list[Commit]:
        """A check starts (after `current` was asked for): the foreign commits it answers."""
        taken, self.foreign = self.foreign, []
        self.clean, self._checking, self._since = None, True, None
        return taken

    def more(self) -> list[Commit]:
        """During a check: the foreign commits seen since it started, which a restore it makes
        answers too (they stay unknown otherwise: checked() sees them)."""
        taken, self.foreign = self.foreign, []
        return taken

    def checked(self, current: int | None, right: bool) -> None:
        """The check that started after generation `current` ended: the tables were right or
        made right again (right), or it failed. Our own commits meanwhile count as clean;
        anyone else's leaves them unknown (the next check is due at once)."""
        self._checking = False
        if right and current is not None and not self.foreign:
            self.clean = current if self._since is None else self._since
        else:
            self.clean = None
