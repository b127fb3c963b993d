"""A running dyno whose network someone removed (`ip link del VETH`, `ip netns delete NS`) is
a crashed dyno: killed, then restarted on a rebuilt network like any crash. A dyno whose
gateway's routes someone removed (`ip route del`, or `ip link set BRIDGE down`, which flushes
every route through the bridge) gets them back, once its bridge is up again."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from dynod.control.networks import Networks, running
from dynod.control.say import Say
from dynod.kernel.facts import DynoNetwork, Removed
from dynod.kernel.protocol import KernelSide, RemovalEvents
from dynod.state.store import Dyno, State

# seconds between listings when the deletions' watch says nothing was deleted (a backstop)
BACKSTOP = 30.0
# The backstop's listing waits for a quiet moment: while dynos are being started, restarted or
# stopped (one began less than QUIET seconds ago), for at most BACKSTOP seconds more. It is
# O(dynos) (50-260 ms of the kernel thread and of the event loop at 4,000 dynos), and the starts
# beside it waited for it (bench/README.md, "Fourteenth round"); what it is a backstop for can
# wait that long.
QUIET = 1.0


def were_removed(removed: Removed) -> str:
    """ "veth x was removed"; two of them "... and ... were removed"."""
    gone = removed.described()
    return f"{' and '.join(gone)} {'was' if len(gone) == 1 else 'were'} removed"


def reason(exc: Exception) -> str:
    """What the kernel said: "Network is down", not "(100, 'Network is down')" (netlink's
    errors carry their errno as `code`)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def bridge_went_or_changed(before: dict[str, bool], now: dict[str, bool]) -> bool:
    """Whether a bridge seen before went, or went down or up, since: what loses or gives back
    gateway routes without a route event. A new bridge (a new shard) is not: its dynos' routes
    are made as they start (a new shard every 256 dynos set off a look at all of them)."""
    return any(now.get(name) != up for name, up in before.items()) or not all(
        up for name, up in now.items() if name not in before
    )


class HealthWatch:
    def __init__(
        self,
        state: State,
        kernel: KernelSide,
        networks: Networks,
        say: Say,
        lock: Callable[[int], asyncio.Lock],
        locked: Callable[[int], bool],
        last_change: Callable[[], float] = lambda: float("-inf"),
    ) -> None:
        """lock(dyno_id) is the dyno's lock, held by whoever starts or stops it; locked(dyno_id),
        whether it is held, without making one for a dyno that has none (a forgotten one);
        last_change(), the time.monotonic() at which the latest start or stop began."""
        self.state = state
        self.kernel = kernel
        self.networks = networks
        self.say = say
        self.lock = lock
        self.last_change = last_change
        self.locked = locked
        self._broken: set[int] = set()  # dynos whose network someone removed: being killed
        self.events: RemovalEvents | None = None  # deletions as they happen (watch())
        self._dirty = True  # a deletion was seen since the last listing
        self._next_listing = 0.0  # time.monotonic() of the next backstop listing
        # every dyno's gateway is to be looked at: the watch was (re)opened or there is none,
        # route events were lost, a bridge's state or address changed, or the backstop is due
        self._gateways_due = True
        # Dynos whose gateway routes were deleted, and those left out of the last look (being
        # restarted, stopped or killed then, or on a bridge that refused): looked at at the next
        # tick, and only they (still from one listing of the route tables), not every dyno's
        # facts: a look at all is O(dynos), 45-95 ms at 3,000-4,000 (bench/README.md,
        # "Fourteenth round").
        self._gateways_owed: set[int] = set()
        # dynos whose routes could not be put back (their bridge refused, or a route before
        # them cannot be removed), with the reason said (once)
        self._gateways_blocked: dict[int, str] = {}
        self._bridges: dict[str, bool] = {}  # each open bridge: is it up (bridges_up())

    def watch(self) -> None:
        """Wait for deletions instead of listing every second (on the event loop); a listing
        follows."""
        self.events = self.kernel.removal_events()
        self._dirty = self._gateways_due = True
        if self.events is not None:
            asyncio.get_running_loop().add_reader(self.events.fileno(), self._on_events)

    def close(self) -> None:
        if self.events is not None:
            asyncio.get_running_loop().remove_reader(self.events.fileno())
            self.events.close()
            self.events = None

    def _on_events(self) -> None:
        if self.events is None:
            return
        if self.events.drain():
            self._dirty = True
        self._owed_for(self.events.take_routes(), self.events.take_unaddressed())

    def _owed_for(self, deleted: list[tuple[str, int]] | None, unaddressed: set[int]) -> None:
        """The dynos whose gateway routes were deleted or replaced are looked at at the next
        tick, alone: each stop deletes its own dyno's two (a look at every dyno, O(dynos),
        after each one was 45-95 ms at 4,000 dynos during a mass stop), and a stopped dyno is
        not running by then. Every dyno is looked at after lost events, or when an address went
        from one of our bridges, a shard's included (`ip addr del`, `ip addr flush`: when the
        last goes, the kernel flushes every route through the bridge, telling only of the
        address's own). Another route is not dynod's concern."""
        if deleted is None:
            self._gateways_due = True
            return
        for route in deleted:
            owner = self.networks.route_owner(*route)
            if owner is not None:
                self._gateways_owed.add(owner)
        if unaddressed:
            try:
                ours = unaddressed & self.kernel.bridge_indexes()
            except Exception:  # noqa: BLE001 - cannot tell: look at every dyno
                ours = unaddressed
            if ours:
                self._gateways_due = True

    def _nothing_deleted(self) -> bool:
        """No listing needed: the watch works, saw no deletion, and the backstop is not due
        (or can wait, QUIET). A watch of a /run/netns that someone moved, removed or covered
        is opened again."""
        if self.events is not None and not self.events.current():
            self.close()
            self.watch()
        if self.events is None:
            return False
        self._on_events()
        now = time.monotonic()
        backstop_only = not self._dirty and self._next_listing <= now
        if backstop_only and now < self._next_listing + BACKSTOP and self._busy(now):
            return True  # it can wait: dynos are being started or stopped
        if self._dirty or now >= self._next_listing:
            if now >= self._next_listing:
                self._gateways_due = True  # the backstop looks at them too
            self._dirty, self._next_listing = False, now + BACKSTOP
            return False
        return True

    def _busy(self, now: float) -> bool:
        """A start or stop began less than QUIET seconds ago."""
        return now - self.last_change() < QUIET

    def forget(self, dyno_id: int) -> None:
        self._broken.discard(dyno_id)
        self._gateways_owed.discard(dyno_id)
        self._gateways_blocked.pop(dyno_id, None)

    async def check(self) -> None:
        """Every running dyno's namespace name and veth, from one listing of /run/netns and
        /sys/class/net (not a stat of each, nor each dyno's row: every second, that was O(N) on
        the event loop, 70 ms at 4,000 dynos); a dyno missing one is looked at closer. A dyno
        being started, restarted or stopped (its lock is held) is skipped: its objects come and
        go. The listings are made only after a deletion was seen (netns/removals.py), and every
        BACKSTOP seconds (up to BACKSTOP more while dynos are being started or stopped: QUIET):
        each one costs O(dynos) (11-13 ms at 2,000), every second. Then the gateway routes:
        of every dyno after a change of a bridge's state, lost route events, or at the
        backstop; else only of the dynos whose routes were deleted and of those the last look
        left out (_put_back_gateways)."""
        if not self._nothing_deleted():
            try:
                skipped = await self._look()
            except BaseException:
                self._dirty = True  # looked at nothing: the next tick lists again
                raise
            if skipped:
                self._dirty = True  # being started or stopped: looked at again next time
        if self.events is None:
            self._gateways_due = True  # no route events: the listing is the only way to know
        # A bridge taken down loses its routes without a route event (fib_table_flush tells
        # only of routes whose source address went): its state is read at every tick instead.
        bridges = await self.kernel.bridges_up()
        if bridge_went_or_changed(self._bridges, bridges):
            self._gateways_due = True
        self._bridges = bridges
        if self._gateways_due or self._gateways_owed:
            everyone, self._gateways_due = self._gateways_due, False
            only, self._gateways_owed = self._gateways_owed, set()
            try:
                again = await self._put_back_gateways(None if everyone else only)
            except BaseException:
                self._gateways_due = True
                raise
            if everyone:  # a look at all leaves out a dyno being started (no pid yet): owed
                again |= only
            # with the dynos whose routes were deleted meanwhile (or all, _gateways_due)
            self._gateways_owed |= again

    async def _look(self) -> bool:
        """The listing: each running dyno missing a part is handled; whether one was skipped
        because its lock was held."""
        missing = self.kernel.missing_objects(self.state.running_networks())
        free, locked = self._free(missing)
        for dyno_id in free:
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state not in ("starting", "up") or not dyno.pid:
                continue
            if self.removed(dyno):
                await self._on_network_removed(dyno.id)
        return bool(locked)

    async def _put_back_gateways(self, only: set[int] | None) -> set[int]:
        """The gateway routes (and the host's entry for the dyno) of every running dyno (or of
        those in `only`) missing one, from one listing: put back in one job of the kernel
        thread, with a line in the dyno's log. The dynos to look at again at the next tick:
        those being restarted, stopped or killed (their lock held), and those whose routes
        could not be put back (a bridge that is down refuses a route through it until it is
        up; a route first that cannot be removed), said once for each reason; the others are
        put back all the same."""
        networks, again = self._unlocked_networks(only)
        if not networks:  # all of them stopped, or being stopped: nothing to list
            return again
        # A look at every dyno reads the whole table: routes through other devices (a route
        # prepended there, which no event tells of) are seen too; so does a look at a dyno
        # whose routes could not be put back (what kept them out may be such a route).
        whole = only is None or not only.isdisjoint(self._gateways_blocked)
        missing = await self.kernel.missing_gateways(list(networks.values()), whole)
        ids = {network.netns: dyno_id for dyno_id, network in networks.items()}
        # still not being stopped or killed: one whose stop began while the routes were listed
        # must not get them back (its lock is held from the start of its stop), and one stopped
        # and forgotten meanwhile (its facts gone) neither
        busy = {ids[n.netns] for n in missing if self.locked(ids[n.netns])}
        again.update(busy)
        group = [
            n
            for n in missing
            if ids[n.netns] not in busy | self._broken
            and self.networks.known(ids[n.netns]) is not None
        ]
        if not group:
            return again
        try:
            done = await self.kernel.restore_gateways(group, whole)
        except Exception as exc:  # noqa: BLE001 - none could be: looked at again
            done = {n.netns: reason(exc) for n in group}
        # (one whose routes someone put back meanwhile is in neither)
        put_back = [ids[netns] for netns, why in done.items() if not why]
        for dyno_id in put_back:
            self._gateways_blocked.pop(dyno_id, None)
        self._tell(
            put_back,
            "Warning: the dyno's gateway routes were removed or changed by someone else "
            "(`ip route del` or `replace`, or its bridge taken down); put back",
        )
        for netns, why in done.items():  # looked at again; said once for each reason
            dyno_id = ids[netns]
            if not why:
                continue
            again.add(dyno_id)
            if self._gateways_blocked.get(dyno_id) != why:
                self._gateways_blocked[dyno_id] = why
                self._tell(
                    [dyno_id],
                    "Warning: the dyno's gateway routes were removed or changed by someone "
                    f"else and cannot be put back yet ({why}); trying again every second",
                )
        return again

    def _unlocked_networks(self, only: set[int] | None) -> tuple[dict[int, DynoNetwork], set[int]]:
        """The facts of every running dyno (of those in `only`) not being started, stopped or
        killed, by id; and those to look at again at the next tick, left out because their lock
        was held."""
        found: dict[int, DynoNetwork] = {}
        waiting: set[int] = set()
        if only is None:
            running = [dyno_id for dyno_id, _, _ in self.state.running_networks()]
        else:
            running, waiting = self._running_or_waiting(only)
        free, locked = self._free(running)
        for dyno_id in free:
            network = self.networks.known(dyno_id)
            if network is None:
                dyno = self.state.dyno(dyno_id)
                if dyno is None:
                    continue
                try:
                    network = self.networks.of(dyno)
                except KeyError:  # its network is not open
                    continue
            found[dyno_id] = network
        return found, locked | waiting

    def _running_or_waiting(self, dyno_ids: set[int]) -> tuple[list[int], set[int]]:
        """Of these dynos, from each one's row (not every running dyno's, at every tick): those
        running; and those whose lock is held, to wait for (their state is changing: during a
        mass stop, thousands, whose rows are not read at every tick). Any other is dropped: a
        stopped or gone one, and a crashed one (its restart looks at it again: repair())."""
        running: list[int] = []
        waiting: set[int] = set()
        for dyno_id in sorted(dyno_ids):
            if self.locked(dyno_id):
                waiting.add(dyno_id)
                continue
            dyno = self.state.dyno(dyno_id)
            if dyno is None:
                continue
            if dyno.state in ("starting", "up") and dyno.pid:
                running.append(dyno_id)
        return running, waiting

    def _free(self, dyno_ids: list[int]) -> tuple[list[int], set[int]]:
        """Those of the dynos neither being killed (their restart rebuilds their network) nor
        being started or stopped (their lock is held: their objects come and go); and those
        left out for their lock, to be looked at again."""
        free: list[int] = []
        locked: set[int] = set()
        for dyno_id in dyno_ids:
            if dyno_id in self._broken:
                continue
            if self.locked(dyno_id):
                locked.add(dyno_id)
                continue
            free.append(dyno_id)
        return free, locked

    def _tell(self, dyno_ids: list[int], text: str) -> None:
        for dyno_id in dyno_ids:
            if (dyno := self.state.dyno(dyno_id)) is not None:
                self.say(dyno, text)

    async def _on_network_removed(self, dyno_id: int) -> None:
        """Someone deleted the dyno's veth or its namespace's name: it can no longer be
        reached, or no longer be found by name. Treat it as a crash: kill every process (found
        by its pid namespace, not by the name), then the exit is handled as any other: a
        detached dyno is restarted with the usual backoff on a rebuilt network (repair), a
        foreground one ends."""
        async with self.lock(dyno_id):
            dyno = self.state.dyno(dyno_id)
            if dyno is None or dyno.state not in ("starting", "up"):
                return
            removed = self.removed(dyno)
            if not removed:
                return
            self._broken.add(dyno_id)
            self.say(
                dyno,
                f"Error: the dyno's {were_removed(removed)} by someone else; "
                "stopping all processes with SIGKILL",
            )
            await self.kernel.kill_inside(running(dyno))

    async def repair(self, dyno: Dyno) -> None:
        """Before a restart: a network with a removed part is rebuilt whole, and its gateway is
        looked at at the next tick (once it runs): a route deleted while it was not running (a
        crashed dyno waits for its restart) was left out of every look, and a restart keeps the
        network as it is."""
        self._broken.discard(dyno.id)
        self._gateways_owed.add(dyno.id)
        removed = self.removed(dyno)
        if removed:
            self.say(dyno, f"Rebuilding its network ({' and '.join(removed.described())} gone)")
            await self.kernel.rebuild(self.networks.of(dyno))

    def removed(self, dyno: Dyno) -> Removed:
        return self.kernel.removed_objects(self.networks.of(dyno))
