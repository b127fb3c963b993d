"""The supervisor's health check (dynod/control/supervisor.py) over a fake state and kernel: which
dynos it stops when a part of their network was removed. No root needed."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from dynod.config import Config
from dynod.control import health
from dynod.control.supervisor import Supervisor
from dynod.kernel.addressing import Pool
from dynod.kernel.facts import DynoNetwork, Removed, Running
from dynod.kernel.machine import Net
from dynod.logs.book import LogBook
from dynod.state.store import Dyno
from tests.unit.rows import dyno

BRIDGE_INDEX = 7  # the fake network's bridge, as bridge_indexes() says


class FakeState:
    def __init__(self, dynos: list[Dyno]) -> None:
        self._dynos = {d.id: d for d in dynos}

    def dynos(self) -> list[Dyno]:
        return list(self._dynos.values())

    def dyno(self, dyno_id: int) -> Dyno | None:
        return self._dynos.get(dyno_id)

    def running_networks(self) -> list[tuple[int, str, str]]:
        return [
            (d.id, d.netns, d.veth)
            for d in self._dynos.values()
            if d.state in ("starting", "up") and d.pid
        ]


class FakeKernel:
    def __init__(self, broken: set[int]) -> None:
        self.broken = {f"v{i}" for i in broken}
        self.killed: list[int | None] = []
        self.gateways_lost: set[str] = set()  # netns whose gateway routes someone removed
        self.bridge_down = False  # restore_gateways refused, as the kernel refuses the routes
        self.restored: list[list[str]] = []
        self.wholes: list[bool] = []  # each look: from the whole table?
        self.blocked: dict[str, str] = {}  # netns whose routes a route before them keeps out
        self.gateway_listings = 0
        self.bridges: dict[str, bool] = {"fake0": True}  # what bridges_up() says

    def net(self, key: str) -> Net:
        return Net(key, "fake0", Pool("172.16.0.0/12"))

    def bridge_indexes(self) -> set[int]:
        return {BRIDGE_INDEX}

    def removed_objects(self, d: DynoNetwork) -> Removed:
        return Removed(veth=d.veth) if d.veth in self.broken else Removed()

    def missing_objects(self, dynos: list[tuple[int, str, str]]) -> list[int]:
        return [i for i, _, veth in dynos if veth in self.broken]

    async def kill_inside(self, d: Running) -> None:
        self.killed.append(d.pid)

    async def bridges_up(self) -> dict[str, bool]:
        return dict(self.bridges)

    async def missing_gateways(
        self, dynos: list[DynoNetwork], whole: bool = False
    ) -> list[DynoNetwork]:
        self.gateway_listings += 1
        self.wholes.append(whole)
        return [d for d in dynos if d.netns in self.gateways_lost]

    async def restore_gateways(
        self, live: list[DynoNetwork], whole: bool = False
    ) -> dict[str, str]:
        if self.bridge_down:
            raise OSError(100, "Network is down")
        self.restored.append(sorted(d.netns for d in live))
        done = {
            d.netns: self.blocked.get(d.netns, "")
            for d in live
            if d.netns in self.gateways_lost or d.netns in self.blocked
        }
        self.gateways_lost -= {netns for netns, why in done.items() if not why}
        return done


def over(state: FakeState, kernel: FakeKernel) -> Supervisor:
    """A supervisor over the fake state and kernel, its log kept in memory."""
    return Supervisor(state, kernel, LogBook(None, echo=None), Config(), None)  # type: ignore[arg-type]


def test_the_health_check_kills_only_running_dynos_with_a_removed_part() -> None:
    dynos = [
        dyno(id=1, pid=10, veth="v1"),  # up, broken: killed
        dyno(id=2, pid=20, veth="v2"),  # up, whole: left alone
        dyno(id=3, pid=30, veth="v3", state="crashed"),  # its restart repairs it
        dyno(id=4, pid=40, veth="v4", state="stopping"),  # being torn down
        dyno(id=5, pid=None, veth="v5", state="starting"),  # network still being built
        dyno(id=6, pid=60, veth="v6", type="worker"),  # locked: a start or stop is under way
    ]
    kernel = FakeKernel({1, 3, 4, 5, 6})
    log = LogBook(None, echo=None)
    sup = Supervisor(FakeState(dynos), kernel, log, Config(), None)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with sup._lock(6):
            await sup.health.check()
        await sup.health.check()  # already handled: not killed twice

    asyncio.run(scenario())
    assert kernel.killed == [10, 60]  # the pids of dynos 1 and 6
    said = [str(line) for line in log.recent(lambda _: True, 10)]
    assert any(
        "heroku[web.1]: Error: the dyno's veth v1 was removed by someone else; stopping all "
        "processes with SIGKILL" in line
        for line in said
    ), said


class FakeRemovals:
    """A deletions' watch: drain() answers from `deleted`, then forgets it; take_routes() from
    `routes` (None: route events were lost)."""

    def __init__(self) -> None:
        self.broken = False
        self.deleted = False
        self.routes: list[tuple[str, int]] | None = []
        self.unaddressed: set[int] = set()  # take_unaddressed()
        self.read, self.write = os.pipe()
        os.set_blocking(self.read, False)

    def fileno(self) -> int:
        return self.read

    def current(self) -> bool:
        return not self.broken

    def drain(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            os.read(self.read, 64)
        deleted, self.deleted = self.deleted, False
        return deleted

    def take_routes(self) -> list[tuple[str, int]] | None:
        taken, self.routes = self.routes, []
        return taken

    def take_unaddressed(self) -> set[int]:
        taken, self.unaddressed = self.unaddressed, set()
        return taken

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class ListingKernel(FakeKernel):
    def __init__(self, broken: set[int], watches: bool) -> None:
        super().__init__(broken)
        self.watches = watches
        self.opened: list[FakeRemovals] = []
        self.listings = 0

    def missing_objects(self, dynos: list[tuple[int, str, str]]) -> list[int]:
        self.listings += 1
        return super().missing_objects(dynos)

    def removal_events(self) -> FakeRemovals | None:
        if not self.watches:
            return None
        self.opened.append(FakeRemovals())
        return self.opened[-1]


def test_with_a_deletions_watch_it_lists_only_after_a_deletion_or_at_the_backstop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
    kernel = ListingKernel({1}, watches=True)
    dynos = [dyno(id=1, pid=10, veth="v1")]
    sup = over(FakeState(dynos), kernel)

    async def scenario() -> list[int]:
        sup.health.watch()
        events = kernel.opened[0]
        seen = []
        await sup.health.check()  # the first: a listing
        seen.append(kernel.listings)
        for _ in range(5):  # nothing deleted: no listing
            now[0] += 1
            await sup.health.check()
        seen.append(kernel.listings)
        events.deleted = True  # someone deleted something
        now[0] += 1
        await sup.health.check()
        seen.append(kernel.listings)
        now[0] += health.BACKSTOP  # the backstop, whatever the watch says
        await sup.health.check()
        seen.append(kernel.listings)
        events.broken = True  # /run/netns moved or covered: a new watch, and a listing
        await sup.health.check()
        seen.append(kernel.listings)
        await sup.health.check()  # the new watch is quiet
        seen.append(kernel.listings)
        await sup.close()
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2, 3, 4, 4]
    assert len(kernel.opened) == 2
    assert kernel.killed == [10]


def test_a_missing_dyno_skipped_while_locked_is_listed_again_next_time() -> None:
    kernel = ListingKernel({1}, watches=True)
    dynos = [dyno(id=1, pid=10, veth="v1")]
    sup = over(FakeState(dynos), kernel)

    async def scenario() -> None:
        sup.health.watch()
        async with sup._lock(1):  # a start or a stop under way: skipped
            await sup.health.check()
        await sup.health.check()  # no event since, but it was skipped: listed again
        await sup.close()

    asyncio.run(scenario())
    assert kernel.listings == 2 and kernel.killed == [10]


def test_without_a_watch_it_lists_every_time() -> None:
    kernel = ListingKernel(set(), watches=False)
    sup = Supervisor(
        FakeState([dyno(id=1, pid=10)]), kernel, LogBook(None, echo=None), Config(), None
    )  # type: ignore[arg-type]

    async def scenario() -> None:
        sup.health.watch()
        for _ in range(3):
            await sup.health.check()

    asyncio.run(scenario())
    assert kernel.listings == 3


def test_a_deletion_seen_while_the_listing_kills_a_dyno_is_listed_next_time() -> None:
    class KillAndDelete(ListingKernel):
        async def kill_inside(self, d: Running) -> None:
            await super().kill_inside(d)
            self.opened[-1].deleted = True  # someone deletes another dyno's veth meanwhile
            os.write(self.opened[-1].write, b"x")
            await asyncio.sleep(0.01)  # the event loop reads the watch

    kernel = KillAndDelete({1}, watches=True)
    dynos = [dyno(id=1, pid=10, veth="v1")]
    sup = over(FakeState(dynos), kernel)

    async def scenario() -> None:
        sup.health.watch()
        await sup.health.check()  # lists, kills dyno 1; a deletion comes meanwhile
        await sup.health.check()  # so it lists again
        await sup.health.check()  # and no more
        await sup.close()

    asyncio.run(scenario())
    assert kernel.listings == 2 and kernel.killed == [10]


def two_web_dynos() -> tuple[ListingKernel, LogBook, Supervisor]:
    """web.1 (netns n1) and web.2 (n2) running, over a kernel with a deletions watch; the log
    kept in memory."""
    kernel = ListingKernel(set(), watches=True)
    dynos = [
        dyno(id=1, pid=10, veth="v1", netns="n1"),
        dyno(id=2, pid=20, veth="v2", netns="n2", number=2, slot=2),
    ]
    log = LogBook(None, echo=None)
    sup = Supervisor(FakeState(dynos), kernel, log, Config(), None)  # type: ignore[arg-type]
    return kernel, log, sup


def test_gateway_routes_someone_removed_are_put_back_once_the_bridge_is_up() -> None:
    """A deletion of a dyno's gateway route (the watch's take_routes()), or a bridge whose state
    changed (taken down, which no route event tells), makes the next check list the gateways
    (that dyno's, or all); a dyno missing its own gets it back, with a line in its log; while
    its bridge is down the kernel refuses, which is said once and tried again at every check.
    Otherwise they are not listed."""
    kernel, log, sup = two_web_dynos()

    async def scenario() -> list[int]:
        sup.health.watch()
        events = kernel.opened[0]
        listings = []
        await sup.health.check()  # the first check looks at them, whatever the watch says
        listings.append(kernel.gateway_listings)
        await sup.health.check()  # no route deleted: not listed
        listings.append(kernel.gateway_listings)
        kernel.gateways_lost = {"n2"}
        kernel.bridge_down = True
        events.routes = [gateway_routes(sup, 2)[0]]
        await sup.health.check()  # refused: said, and looked at again
        await sup.health.check()  # refused again: not said again
        listings.append(kernel.gateway_listings)
        kernel.bridge_down = False
        await sup.health.check()  # put back
        await sup.health.check()  # nothing due any more
        listings.append(kernel.gateway_listings)
        kernel.bridges = {"fake0": False}  # taken down: no route event says so (fib_table_flush)
        await sup.health.check()  # its state changed: listed
        await sup.health.check()  # the same state: not listed again
        listings.append(kernel.gateway_listings)
        await sup.close()
        return listings

    assert asyncio.run(scenario()) == [1, 1, 3, 4, 5]
    assert kernel.restored == [["n2"]] and kernel.gateways_lost == set()
    said = [str(x) for x in log.recent(lambda _: True, 10) if "gateway routes" in str(x)]
    assert len(said) == 2, said
    assert "cannot be put back yet (Network is down); trying again" in said[0]
    assert said[1].endswith("(`ip route del` or `replace`, or its bridge taken down); put back")


class GatewayListingKernel(ListingKernel):
    """Which dynos each look at the gateways was about."""

    def __init__(self) -> None:
        super().__init__(set(), watches=True)
        self.looked_at: list[list[str]] = []

    async def missing_gateways(
        self, dynos: list[DynoNetwork], whole: bool = False
    ) -> list[DynoNetwork]:
        self.looked_at.append(sorted(d.netns for d in dynos))
        return await super().missing_gateways(dynos)


def gateway_routes(sup: Supervisor, dyno_id: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """The (destination, prefix length) of the dyno's two gateway routes, as a deletion of
    them is heard."""
    found = sup.state.dyno(dyno_id)
    assert found is not None
    return sup.networks.of(found).gateway_routes


class CountingState(FakeState):
    """Which dynos' rows were read."""

    def __init__(self, dynos: list[Dyno]) -> None:
        super().__init__(dynos)
        self.reads: list[int] = []

    def dyno(self, dyno_id: int) -> Dyno | None:
        self.reads.append(dyno_id)
        return super().dyno(dyno_id)


async def first_look(sup: Supervisor, kernel: ListingKernel) -> FakeRemovals:
    """The watch opened and the first check's look at every dyno made: its deletions' watch."""
    sup.health.watch()
    await sup.health.check()
    return kernel.opened[0]


def three_dynos() -> list[Dyno]:
    return [
        dyno(id=i, pid=10 * i, veth=f"v{i}", netns=f"n{i}", number=i, slot=i) for i in (1, 2, 3)
    ]


def test_dynos_left_out_of_a_look_at_the_gateways_are_looked_at_again_alone() -> None:
    """A dyno being restarted, stopped or killed (its lock held, its row still running) is left
    out; a look at all the gateways that left one out used to look at all of them again at the
    next tick, and so at every tick while restarts came one after another (45-95 ms at
    3,000-4,000 dynos). Now the next tick looks at the one left out, alone."""
    kernel = GatewayListingKernel()
    sup = over(FakeState(three_dynos()), kernel)

    async def scenario() -> None:
        sup.health.watch()
        async with sup._lock(2):  # being restarted when the first look comes
            await sup.health.check()
        async with sup._lock(3):  # the next restart, at the next tick
            await sup.health.check()
        async with sup._lock(1):  # and the next
            await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n3"], ["n2"]]


def test_a_dyno_left_out_and_missing_its_gateway_gets_it_back_at_the_next_tick() -> None:
    kernel = GatewayListingKernel()
    log = LogBook(None, echo=None)
    sup = Supervisor(FakeState(three_dynos()), kernel, log, Config(), None)  # type: ignore[arg-type]

    async def scenario() -> None:
        sup.health.watch()
        await sup.health.check()
        kernel.gateways_lost = {"n2", "n3"}
        kernel.opened[0].routes = [gateway_routes(sup, 2)[1], gateway_routes(sup, 3)[0]]
        async with sup._lock(3):  # being stopped or started: its routes come and go
            await sup.health.check()
        await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n2"], ["n3"]]
    assert kernel.restored == [["n2"], ["n3"]] and kernel.gateways_lost == set()


def test_a_refusing_bridge_s_dynos_alone_are_tried_again() -> None:
    kernel = GatewayListingKernel()
    sup = over(FakeState(three_dynos()), kernel)

    async def scenario() -> None:
        sup.health.watch()
        await sup.health.check()
        kernel.gateways_lost = {"n1"}
        kernel.bridge_down = True
        kernel.opened[0].routes = list(gateway_routes(sup, 1))
        await sup.health.check()  # refused
        await sup.health.check()  # refused again: dyno 1 only
        kernel.bridge_down = False
        await sup.health.check()  # put back
        await sup.health.check()  # nothing owed
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n1"], ["n1"], ["n1"]]
    assert kernel.restored == [["n1"]]


@pytest.mark.parametrize(
    ("after", "looked"),
    [
        ({"fake0": True, "fake1": True}, False),  # a new shard: its dynos get routes as they start
        ({"fake0": True, "fake1": False}, True),  # a new one, but down
        ({"fake0": False}, True),  # taken down
        ({}, True),  # deleted
    ],
)
def test_only_a_bridge_that_went_or_changed_sets_off_a_look_at_the_gateways(
    after: dict[str, bool], looked: bool
) -> None:
    """A new shard every 256 dynos used to set off a look at all the gateways."""
    assert health.bridge_went_or_changed({"fake0": True}, after) is looked
    kernel = GatewayListingKernel()
    sup = over(FakeState(three_dynos()), kernel)

    async def scenario() -> None:
        sup.health.watch()
        await sup.health.check()
        kernel.bridges = after
        await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert len(kernel.looked_at) == 1 + looked


def test_the_backstop_waits_while_dynos_are_being_started_at_most_another_backstop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backstop's listing is O(dynos) (50-260 ms at 4,000): while starts or stops come one
    after another it waits for a quiet second, at most BACKSTOP seconds more. A deletion heard
    is listed at once, busy or not."""
    now = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
    kernel = ListingKernel(set(), watches=True)
    sup = over(FakeState(three_dynos()), kernel)

    async def scenario() -> list[int]:
        sup.health.watch()
        seen = []
        await sup.health.check()  # the first: a listing
        now[0] += health.BACKSTOP
        sup.last_change = now[0] - 0.5  # a start began half a second ago
        await sup.health.check()  # due, but busy: it waits
        seen.append(kernel.listings)
        now[0] += 1
        sup.last_change = now[0] - 2  # quiet for 2 s
        await sup.health.check()  # listed now
        seen.append(kernel.listings)
        now[0] += health.BACKSTOP
        for _ in range(3):  # starts one after another, for ever
            now[0] += health.BACKSTOP / 3
            sup.last_change = now[0] - 0.1
            await sup.health.check()
        seen.append(kernel.listings)  # BACKSTOP late: listed all the same
        kernel.opened[0].deleted = True
        now[0] += 1
        sup.last_change = now[0] - 0.1
        await sup.health.check()  # a deletion: at once
        seen.append(kernel.listings)
        await sup.close()
        return seen

    assert asyncio.run(scenario()) == [1, 2, 3, 4]


def test_a_start_or_a_stop_tells_when_it_began() -> None:
    sup = Supervisor(FakeState([]), FakeKernel(set()), LogBook(None, echo=None), Config(), None)  # type: ignore[arg-type]
    assert sup.health._busy(1000.0) is False
    sup.last_change = 999.5
    assert sup.health._busy(1000.0) is True


def test_a_dyno_whose_stop_begins_while_the_routes_are_listed_gets_none_back() -> None:
    """Its lock is taken between the listing and the putting back: left for the next tick
    (by then stopped, or running again and given its routes)."""

    class StopDuringListing(GatewayListingKernel):
        async def missing_gateways(
            self, dynos: list[DynoNetwork], whole: bool = False
        ) -> list[DynoNetwork]:
            found = await super().missing_gateways(dynos)
            if len(self.looked_at) == 1:
                await sup._lock(2).acquire()  # its stop begins meanwhile
            return found

    kernel = StopDuringListing()
    sup = over(FakeState(three_dynos()), kernel)

    async def scenario() -> None:
        sup.health.watch()
        kernel.gateways_lost = {"n1", "n2"}
        await sup.health.check()
        assert kernel.restored == [["n1"]]
        sup._lock(2).release()  # its stop gave up: still running
        await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert kernel.restored == [["n1"], ["n2"]] and kernel.looked_at[1] == ["n2"]


def test_a_deleted_route_sets_off_a_look_at_its_dyno_alone_and_a_stop_s_at_none() -> None:
    """Each stop deletes its dyno's two gateway routes, and the watch hears every deletion: it
    used to set off a look at every dyno's gateways at the next tick (O(dynos), 45-95 ms at
    4,000), so during a mass stop at every tick. Now a deleted route names its dyno: a running
    one is looked at alone; a stopped one (or a route of no dyno's) sets off nothing. Lost
    route events, and the bridge's address deleted (which flushes every route through the
    bridge without telling of them), set off a look at all."""
    kernel = GatewayListingKernel()
    dynos = three_dynos()
    state = FakeState(dynos)
    sup = over(state, kernel)

    async def scenario() -> None:
        events = await first_look(sup, kernel)  # the first look: all of them
        stopped = gateway_routes(sup, 3)
        dynos[2].state = "down"  # stopped: its stop deleted its routes
        events.routes = [*stopped, ("10.99.0.0", 24)]  # and someone deleted a route of theirs
        await sup.health.check()
        kernel.gateways_lost = {"n2"}
        events.routes = [gateway_routes(sup, 2)[0]]  # someone deleted web.2's local route
        await sup.health.check()
        events.routes = None  # events lost
        await sup.health.check()
        # `ip addr del` of the bridge's address: its own routes, no dyno's, and an address gone
        events.routes = [("172.16.0.1", 32), ("172.16.0.3", 32)]
        events.unaddressed = {BRIDGE_INDEX}
        await sup.health.check()
        # an address added and removed on a device that is not ours: nothing
        events.routes, events.unaddressed = [("192.0.2.1", 32)], {BRIDGE_INDEX + 1}
        await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n2"], ["n1", "n2"], ["n1", "n2"]]
    assert kernel.restored == [["n2"]]


def test_a_crashed_dyno_s_gateway_is_looked_at_once_it_runs_again() -> None:
    """A restart keeps the network as it is, and no look at the gateways includes a dyno that
    is not running: a route deleted while it waited for its restart (its own deletion heard, or
    a look at every dyno after lost events) came back only at the backstop. Its restart
    (repair()) now has it looked at once it runs; while it waits, nothing is read for it."""
    kernel = GatewayListingKernel()
    dynos = three_dynos()
    state = CountingState(dynos)
    sup = over(state, kernel)

    async def scenario() -> None:
        events = await first_look(sup, kernel)
        dynos[1].state = "crashed"  # web.2 waits for its restart
        dynos[2].state = "down"  # web.3 is stopped
        kernel.gateways_lost = {"n2", "n3"}
        events.routes = [gateway_routes(sup, 2)[0], gateway_routes(sup, 3)[0]]
        await sup.health.check()  # neither runs: nothing listed
        events.routes = None  # and then events lost: every running dyno, web.1 alone
        state.reads.clear()
        await sup.health.check()
        await sup.health.check()
        assert 2 not in state.reads  # nothing read for it while it waits
        async with sup._lock(2):  # its restart, under its lock as _respawn is
            await sup.health.repair(dynos[1])
            dynos[1].state = "up"
            await sup.health.check()  # still locked: waits
        await sup.health.check()  # web.2 looked at, alone
        await sup.health.check()  # nothing owed any more
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n1"], ["n2"]]
    assert kernel.restored == [["n2"]]


def test_dynos_being_stopped_wait_for_their_stop_without_their_rows_being_read() -> None:
    """During a mass stop thousands of dynos' deletions name them while their locks are held:
    they wait for the next tick without a read of their row each tick, and go with the dyno."""

    kernel = GatewayListingKernel()
    state = CountingState(three_dynos())
    sup = over(state, kernel)

    async def scenario() -> None:
        events = await first_look(sup, kernel)
        events.routes = [gateway_routes(sup, 2)[0], gateway_routes(sup, 3)[1]]
        state.reads.clear()
        async with sup._lock(2), sup._lock(3):  # their stops under way
            await sup.health.check()
            await sup.health.check()
        assert state.reads == []  # no row read while they were locked
        for dyno_id in (2, 3):  # stopped: gone from the state, forgotten
            gone = state._dynos.pop(dyno_id)
            sup._locks.pop(gone.id)  # as Supervisor.forget does
            sup.health.forget(gone.id)
        assert sup.health._gateways_owed == set()
        await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"]]
    assert sup.health._gateways_owed == set() and 2 not in sup._locks


def test_a_dyno_forgotten_while_the_routes_are_listed_is_dropped_without_a_lock() -> None:
    """Its stop (its lock held) left it to the next tick; it ends and is forgotten while the
    others' routes are listed, so the id comes back owed: the next tick drops it, reading its
    (gone) row once, and makes no lock for it."""

    class ForgetDuringListing(GatewayListingKernel):
        async def missing_gateways(
            self, dynos: list[DynoNetwork], whole: bool = False
        ) -> list[DynoNetwork]:
            found = await super().missing_gateways(dynos)
            if len(self.looked_at) == 2:  # web.2's stop ends meanwhile
                sup._locks.pop(2).release()
                state._dynos.pop(2)
                sup.health.forget(2)
            return found

    kernel = ForgetDuringListing()
    state = CountingState(three_dynos())
    sup = over(state, kernel)

    async def scenario() -> None:
        events = await first_look(sup, kernel)
        events.routes = [gateway_routes(sup, 1)[0], gateway_routes(sup, 2)[0]]
        await sup._lock(2).acquire()  # its stop under way
        await sup.health.check()  # web.1 listed; web.2 waits, and is forgotten meanwhile
        assert sup.health._gateways_owed == {2}
        state.reads.clear()
        await sup.health.check()
        assert sup.health._gateways_owed == set() and state.reads == [2]
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n1"]]
    assert 2 not in sup._locks


def test_an_address_gone_looks_at_all_when_the_bridges_cannot_be_told() -> None:
    class Unsure(GatewayListingKernel):
        def bridge_indexes(self) -> set[int]:
            raise RuntimeError("dictionary changed size during iteration")

    kernel = Unsure()
    sup = over(FakeState(three_dynos()), kernel)

    async def scenario() -> None:
        events = await first_look(sup, kernel)
        events.routes = [("10.99.0.0", 24), gateway_routes(sup, 2)[0]]
        await sup.health.check()  # a route of no dyno's and none's address: web.2 alone
        events.routes, events.unaddressed = [("10.99.0.1", 32)], {BRIDGE_INDEX + 1}
        await sup.health.check()  # an address gone, whose device cannot be told: all
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n2"], ["n1", "n2", "n3"]]


def test_a_dyno_being_started_stays_owed_through_a_look_at_every_dyno() -> None:
    """A look at every dyno (a bridge's state changed, lost events, the backstop) reads the
    running ones: a dyno being started has no pid yet and is left out. If its route was
    deleted meanwhile, it is still looked at once it runs, not only at the backstop."""
    kernel = GatewayListingKernel()
    dynos = three_dynos()
    sup = over(FakeState(dynos), kernel)

    async def scenario() -> None:
        events = await first_look(sup, kernel)
        dynos[1].state, dynos[1].pid = "starting", None  # web.2 being started
        async with sup._lock(2):
            events.routes = [gateway_routes(sup, 2)[1]]
            kernel.bridges = {"fake0": False}  # and a look at every dyno at the same tick
            await sup.health.check()
        dynos[1].state, dynos[1].pid = "up", 20
        await sup.health.check()
        await sup.close()

    asyncio.run(scenario())
    assert kernel.looked_at == [["n1", "n2", "n3"], ["n1", "n3"], ["n2"]]


def test_a_dyno_whose_routes_are_blocked_is_said_once_and_tried_again_alone() -> None:
    """A route before the gateway's that cannot be removed (restore_gateways says which dyno,
    and why): that dyno's log says so once, the others on its bridge are put back, and it is
    looked at again, alone, at every check until it is put back."""
    kernel, log, sup = two_web_dynos()

    async def scenario() -> None:
        sup.health.watch()
        events = kernel.opened[0]
        await sup.health.check()
        kernel.gateways_lost = {"n1", "n2"}
        kernel.blocked = {"n2": "a route to 172.16.0.8/30 comes first"}
        events.routes = [gateway_routes(sup, 1)[0], gateway_routes(sup, 2)[0]]
        await sup.health.check()  # n1 put back; n2 blocked: said
        await sup.health.check()  # n2 alone, blocked again: not said again
        await sup.health.check()
        kernel.blocked = {}
        await sup.health.check()  # put back
        await sup.health.check()  # nothing due any more
        await sup.close()

    asyncio.run(scenario())
    # the first look, at every dyno, reads the whole table; the look at two dynos whose routes
    # went, their bridges' routes; a blocked dyno's, the whole table again (what keeps its
    # routes out may be a route through another device)
    assert kernel.wholes == [True, False, True, True, True]
    assert kernel.restored == [["n1", "n2"], ["n2"], ["n2"], ["n2"]]
    assert kernel.gateways_lost == set()
    said = [str(x) for x in log.recent(lambda _: True, 10) if "gateway routes" in str(x)]
    assert len(said) == 3, said
    assert "heroku[web.1]" in said[0] and said[0].endswith("; put back")
    assert "heroku[web.2]" in said[1]
    assert "cannot be put back yet (a route to 172.16.0.8/30 comes first)" in said[1]
    assert "heroku[web.2]" in said[2] and said[2].endswith("; put back")
