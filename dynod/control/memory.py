"""Dyno sizes at run time: each sized dyno's memory against its quota (R14), and the kernel's
OOM kills in its cgroup (R15), as Heroku's dyno manager and log-runtime-metrics report them."""

from __future__ import annotations

import asyncio
import time

from dynod.control.networks import group, running
from dynod.control.say import Say
from dynod.kernel.protocol import KernelSide
from dynod.rules import sizes
from dynod.state.store import Dyno, State
from netns import cgroup

# Each sized dyno's cgroup is read once per interval, but not all at once: the dynos take turns
# in slices (by id), one slice every SLICE_EVERY seconds. A read is about 0.2 ms of a thread's
# CPU, holding the GIL between its files: all 4,000 dynos' at once was 0.3-0.7 s in which every
# start beside it took 2.5x as long (bench/README.md, "Fourteenth round"), and `density.py`'s
# last 20 starts read 2.3x its first 20 whenever that burst fell among them.
SLICE_EVERY = 1.0


class MemoryWatch:
    def __init__(self, state: State, kernel: KernelSide, say: Say, interval: float) -> None:
        """interval: seconds between two samples of one dyno (--metrics-interval)."""
        self.state = state
        self.kernel = kernel
        self.say = say
        self._oom_seen: dict[int, int] = {}  # per dyno: OOM kills in its cgroup already told
        self._began = time.time()
        self.slices = max(1, round(interval / SLICE_EVERY))
        self.tick = interval / self.slices  # seconds between two calls of sample()
        self._turn = 0  # the slice the next sample() reads

    def usage(self, dyno: Dyno) -> cgroup.Usage | None:
        """What a sized dyno's cgroup holds now; None for a dyno without a size."""
        sized = group(dyno)
        return None if sized is None else self.kernel.cgroup_usage(sized)

    def forget(self, dyno_id: int) -> None:
        self._oom_seen.pop(dyno_id, None)

    async def sample(self) -> None:
        """One slice's turn (call it every `tick` seconds): Heroku's behaviour, over the quota,
        `Process running mem=...` and R14 at every sample; at the hard limit the kernel
        OOM-kills inside the dyno's cgroup, and that is R15: the whole dyno is killed and, like
        any crash, restarted. The slice's cgroups are read off the event loop; a dyno's row is
        read only when there is something to say about it."""
        turn, self._turn = self._turn, (self._turn + 1) % self.slices
        sized = self.state.sized_running(self.slices, turn)
        if not sized:
            return  # no thread to wake and wait for (with thousands of unsized dynos too)
        # under the quota (most dynos, most samples), one number is enough (cgroup.usage)
        found = await asyncio.to_thread(
            lambda: [
                self.kernel.cgroup_usage(netns, sizes.SIZES[size].quota_mb * sizes.MB)
                for _, netns, size, _ in sized
            ]
        )
        # still starting or up after the reads (one query of the slice, not a row per dyno)
        present = {dyno_id for dyno_id, _, _, _ in self.state.sized_running(self.slices, turn)}
        for (dyno_id, _netns, size_name, created_at), usage in zip(sized, found, strict=True):
            if usage is None or dyno_id not in present:
                continue  # no group (any more), or stopped meanwhile
            size = sizes.SIZES[size_name]
            oom = self._oom_news(dyno_id, created_at, usage)
            if not oom and usage.memory <= size.quota_mb * sizes.MB:
                continue  # most dynos, most samples: nothing to say, no row read
            dyno = self.state.dyno(dyno_id)
            if dyno is None:
                continue
            if oom:
                self._tell_oom(dyno, usage)
                await self.kernel.kill_inside(running(dyno))
                continue
            self.say(dyno, sizes.running_line(size, usage.memory))
            self.say(dyno, sizes.R14)

    def check_oom(self, dyno: Dyno, usage: cgroup.Usage | None) -> bool:
        """Log R15 if the kernel OOM-killed in the dyno's cgroup since we last looked (usage:
        its cgroup as just read). A dyno adopted from an earlier daemon starts from the count
        it has: those were told then."""
        if usage is None or not self._oom_news(dyno.id, dyno.created_at, usage):
            return False
        self._tell_oom(dyno, usage)
        return True

    def _oom_news(self, dyno_id: int, created_at: float, usage: cgroup.Usage) -> bool:
        """OOM kills in the group since the last look (and the count kept for the next)."""
        made_here = created_at >= self._began  # so was its cgroup: it counts from 0
        seen = self._oom_seen.setdefault(dyno_id, 0 if made_here else usage.oom_kills)
        self._oom_seen[dyno_id] = usage.oom_kills
        return usage.oom_kills > seen

    def _tell_oom(self, dyno: Dyno, usage: cgroup.Usage) -> None:
        size = sizes.SIZES[dyno.size]
        # The kernel kills at the group's limit, so that is what it held then (what is left
        # now, after the kill, says nothing).
        self.say(dyno, sizes.running_line(size, max(usage.memory, size.hard_mb * sizes.MB)))
        self.say(dyno, sizes.R15)
        self.say(dyno, sizes.KILLED)
