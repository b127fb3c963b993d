"""Dyno sizes on the host: one cgroup per sized dyno, below the daemon's own cgroup (v1 or v2,
netns/cgroup.py), named as the dyno's namespace."""

from __future__ import annotations

from dynod.errors import DynodError
from dynod.rules import sizes
from netns import cgroup


class DynoCgroups:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # None: sizes are not enforced, and problem says why.
        self.tree: cgroup.Tree | None = None
        self.problem: str | None = "not looked for yet"

    @property
    def leaf(self) -> str:
        """cgroup v2: the daemon's own place below its cgroup, so the cgroup can hand its
        controllers to the dynos' groups (PREFIX.daemon: no dyno's name, those are PREFIX-...)."""
        return f"{self.prefix}.daemon"

    def find(self) -> list[str]:
        """The daemon's own cgroup, ready for dyno groups below it; a warning when it is not."""
        try:
            tree = cgroup.discover(self.leaf)
            cgroup.prepare(tree, self.leaf)
        except cgroup.Unavailable as exc:
            self.problem = exc.problem
            return [f"dyno sizes are not enforced: {exc.problem}; fix: {exc.fix}"]
        self.tree, self.problem = tree, None
        return []

    def make(self, group: str, size: sizes.Size, owner: str) -> list[str]:
        """`mkdir` the dyno's group(s) and write its limits; the directories to enter. A dyno's
        group is named as its namespace: PREFIX-APP.TYPE.N, unique while it lives."""
        if self.tree is None:
            raise DynodError(
                f"{owner} has size {size.name}, but this daemon has no cgroups: {self.problem}",
                "stop the dyno and run it again without --size",
            )
        return cgroup.create(self.tree, group, size.limits)

    def remove(self, group: str) -> None:
        if self.tree is not None:
            cgroup.remove(self.tree, group)

    def usage(self, group: str, above: int | None = None) -> cgroup.Usage | None:
        """What the dyno's processes hold now (a few small cgroupfs reads: no netlink, safe
        anywhere), or only a bound of it if that is at most `above` (cgroup.usage); None when
        its group is not there (yet)."""
        if self.tree is None:
            return None
        try:
            return cgroup.usage(self.tree, group, above)
        except FileNotFoundError:
            return None

    def remove_all_but(self, keep: set[str]) -> None:
        """Groups with our prefix that are not in keep: their processes killed, groups removed."""
        if self.tree is None:
            return
        for name in cgroup.names(self.tree, f"{self.prefix}-") - keep:
            cgroup.remove(self.tree, name)

    def release(self) -> None:
        """Everything below the daemon's cgroup goes, and the daemon leaves its leaf (v2)."""
        self.remove_all_but(set())
        if self.tree is not None:
            cgroup.release(self.tree, self.leaf)
