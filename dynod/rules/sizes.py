"""Dyno sizes: Heroku's names, memory quotas, hard memory limits and process limits, and the log
lines Heroku writes about them.

Sources (Heroku Dev Center, checked 2026-11):
- memory quotas and CPU shares: "Dyno Types" (devcenter.heroku.com/articles/dyno-types):
  Eco, Basic and Standard-1X 512 MB, Standard-2X 1 GB, Performance-M and Private-M 2.5 GB,
  Private-S 1 GB, -L 14 GB, -L-RAM 30 GB, -XL 62 GB, -2XL 126 GB; CPU share 1x, 2x, dedicated;
- the hard limits, at which the dyno manager logs R15 and restarts the dyno: "Dyno Memory
  Behavior" (devcenter.heroku.com/articles/dyno-memory-behavior): two times the quota for Eco,
  Basic, Standard and Performance-M/-L, 1.2 times for Performance-L-RAM, -XL and -2XL, the quota
  itself for Private and Shield dynos;
- processes and threads: "Dyno Scaling and Process Limits"
  (devcenter.heroku.com/articles/dyno-scaling-and-process-limits, December 2024): 256 for Eco,
  Basic and Standard-1X, 512 for Standard-2X and Private-S, 16384 for -M and Performance-L-RAM,
  32768 for -L and -XL, 65536 for -2XL (that page gives Private/Shield-L-RAM no number; they get
  Performance-L-RAM's);
- log lines: "Error Codes" R14 and R15 and "log-runtime-metrics" (`Process running
  mem=594M(109.6%)`, then `Error R14 (Memory quota exceeded)`).

The CPU weight is the relative share under contention (cgroup cpu.weight, 100 = a Standard-1X):
the "Compute" column's lower figure times 100, capped at the kernel's 10000.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynod.errors import DynodError
from netns.cgroup import Limits

MB = 1024 * 1024
DEFAULT = "standard-1x"  # what `heroku run` and a new process type get on Standard dynos


@dataclass(frozen=True)
class Size:
    name: str
    quota_mb: int  # R14 above this
    hard_mb: int  # R15 and a restart here: the kernel's limit for the group
    tasks: int  # processes and threads
    cpu_weight: int

    @property
    def limits(self) -> Limits:
        return Limits(memory=self.hard_mb * MB, tasks=self.tasks, cpu_weight=self.cpu_weight)

    @property
    def tmpfs_bytes(self) -> int:
        """Each of /tmp, /dev/shm and /var/tmp: up to the quota. Their files are memory charged
        to the dyno's cgroup, so together they still never pass the hard limit."""
        return self.quota_mb * MB


def _size(name: str, quota: int, hard_factor: float, tasks: int, compute: int) -> Size:
    return Size(name, quota, int(quota * hard_factor), tasks, min(10000, compute * 100))


_PERFORMANCE = [
    # suffix, quota MB, R15 factor, tasks, compute
    ("m", 2560, 2.0, 16384, 12),
    ("l", 14336, 2.0, 32768, 50),
    ("l-ram", 30720, 1.2, 16384, 24),
    ("xl", 63488, 1.2, 32768, 50),
    ("2xl", 129024, 1.2, 65536, 100),
]

SIZES: dict[str, Size] = {
    s.name: s
    for s in [
        _size("eco", 512, 2.0, 256, 1),
        _size("basic", 512, 2.0, 256, 1),
        _size("standard-1x", 512, 2.0, 256, 1),
        _size("standard-2x", 1024, 2.0, 512, 2),
        *(_size(f"performance-{p}", q, f, t, c) for p, q, f, t, c in _PERFORMANCE),
        *(
            _size(f"{tier}-{p}", q, 1.0, t, c)
            for tier in ("private", "shield")
            for p, q, f, t, c in [("s", 1024, 1.0, 512, 12), *_PERFORMANCE]
        ),
    ]
}

ALIASES = {"1x": "standard-1x", "2x": "standard-2x", "free": "eco", "hobby": "basic"}


def parse(name: object) -> Size:
    """A size by Heroku's name, any case (`Standard-1X`), or the old 1X/2X/free/hobby names."""
    if not isinstance(name, str) or not name.strip():
        raise DynodError("the size must be a dyno type name", f"for example --size {DEFAULT}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SIZES:
        raise DynodError(
            f"unknown dyno size {name!r}",
            f"use one of: {', '.join(SIZES)} (`dynod run --help`)",
        )
    return SIZES[key]


def choose(requested: object, unavailable: str | None) -> str:
    """The size a new dyno gets: the requested one, else the default. Without cgroups
    (`unavailable` says why) a dyno runs unlimited, with no size, unless one was asked for:
    that is refused rather than silently not enforced."""
    if requested is None or requested == "":
        return "" if unavailable else DEFAULT
    size = parse(requested)
    if unavailable:
        raise DynodError(
            f"dyno sizes cannot be enforced on this host: {unavailable}",
            "run without --size (the dyno then has no limits), or see the daemon's start-up "
            "warning for how to give it cgroups",
        )
    return size.name


def running_line(size: Size, memory: int) -> str:
    """Heroku's `Process running mem=594M(109.6%)`: MB, and the share of the quota."""
    return f"Process running mem={memory // MB}M({100 * memory / (size.quota_mb * MB):.1f}%)"


R14 = "Error R14 (Memory quota exceeded)"
R15 = "Error R15 (Memory quota vastly exceeded)"
KILLED = "Stopping process with SIGKILL"
